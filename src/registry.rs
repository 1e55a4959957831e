//! The set of running endpoints and the daemon-wide subscriber limit, shared by every API.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use crate::endpoint::Endpoint;

/// Endpoints by name plus the `limits.max_subscribers` budget.
pub struct Registry {
    endpoints: RwLock<BTreeMap<String, Arc<Endpoint>>>,
    /// Subscriptions open across gRPC and NDJSON.
    subscribers: Arc<AtomicUsize>,
    max_subscribers: usize,
    /// Woken when a reload adds or removes an endpoint.
    changed: tokio::sync::Notify,
    /// Why the last reload was refused (its first error); `None` once one succeeds.
    reload_refused: RwLock<Option<String>>,
}

/// Holds one unit of the subscriber budget until dropped.
pub struct SubscriberSlot {
    count: Arc<AtomicUsize>,
}

impl Drop for SubscriberSlot {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A request named an endpoint the daemon does not run. Its message names the closest one
/// (a typo), or lists the endpoints there are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownEndpoint {
    /// The name asked for.
    pub name: String,
    /// The endpoints running when it was asked, sorted.
    pub known: Vec<String>,
}

/// At most this many names are listed after an unknown one.
const LISTED: usize = 8;

impl std::fmt::Display for UnknownEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "unknown endpoint {:?}", self.name)?;
        let known = self.known.iter().map(String::as_str);
        if let Some(close) = crate::config::value::closest(&self.name, known) {
            return write!(f, "; did you mean {close:?}?");
        }
        match self.known.len() {
            0 => write!(f, "; no endpoints are configured"),
            n if n <= LISTED => write!(f, "; endpoints: {}", self.known.join(", ")),
            n => write!(
                f,
                "; endpoints: {}, … ({n} in all; `ws-sidecar status` lists them)",
                self.known[..LISTED].join(", ")
            ),
        }
    }
}

impl std::error::Error for UnknownEndpoint {}

/// Refusal when the subscriber budget is spent.
#[derive(Debug, thiserror::Error)]
#[error("too many subscribers (limits.max_subscribers = {0})")]
pub struct TooManySubscribers(pub usize);

impl Registry {
    /// A registry over the given endpoints.
    pub fn new(endpoints: Vec<Arc<Endpoint>>, max_subscribers: usize) -> Arc<Registry> {
        Arc::new(Registry {
            endpoints: RwLock::new(endpoints.into_iter().map(|e| (e.name.clone(), e)).collect()),
            subscribers: Arc::new(AtomicUsize::new(0)),
            max_subscribers,
            changed: tokio::sync::Notify::new(),
            reload_refused: RwLock::new(None),
        })
    }

    /// Records the outcome of a reload: its first error, or `None` when it was applied.
    pub fn set_reload_refused(&self, error: Option<String>) {
        *self
            .reload_refused
            .write()
            .unwrap_or_else(|e| e.into_inner()) = error;
    }

    /// Why the last reload was refused, until one succeeds: the running config is the
    /// previous one, and the file on disk is not what runs.
    pub fn reload_refused(&self) -> Option<String> {
        self.reload_refused
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The endpoint called `name`, or an error that names the ones there are.
    pub fn lookup(&self, name: &str) -> Result<Arc<Endpoint>, UnknownEndpoint> {
        let endpoints = self.endpoints.read().unwrap_or_else(|e| e.into_inner());
        endpoints.get(name).cloned().ok_or_else(|| UnknownEndpoint {
            name: name.to_owned(),
            known: endpoints.keys().cloned().collect(),
        })
    }

    /// The endpoint called `name`.
    pub fn get(&self, name: &str) -> Option<Arc<Endpoint>> {
        self.endpoints
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    /// Every endpoint, by name.
    pub fn all(&self) -> Vec<Arc<Endpoint>> {
        self.endpoints
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Adds (or replaces) an endpoint, for reload.
    pub fn insert(&self, ep: Arc<Endpoint>) {
        self.endpoints
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(ep.name.clone(), ep);
        self.changed.notify_waiters();
    }

    /// Notified when the set of endpoints changes; enable it before reading the set.
    pub fn changes(&self) -> &tokio::sync::Notify {
        &self.changed
    }

    /// Removes an endpoint, for reload.
    pub fn remove(&self, name: &str) -> Option<Arc<Endpoint>> {
        let removed = self
            .endpoints
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
        self.changed.notify_waiters();
        removed
    }

    /// Subscriptions open now across both APIs (the budget `limits.max_subscribers` caps).
    pub fn subscribers(&self) -> usize {
        self.subscribers.load(Ordering::Acquire)
    }

    /// Takes one subscriber slot, or refuses when the limit is reached.
    pub fn subscriber_slot(&self) -> Result<SubscriberSlot, TooManySubscribers> {
        let prev = self.subscribers.fetch_add(1, Ordering::AcqRel);
        let slot = SubscriberSlot {
            count: Arc::clone(&self.subscribers),
        };
        if prev >= self.max_subscribers {
            drop(slot);
            return Err(TooManySubscribers(self.max_subscribers));
        }
        Ok(slot)
    }
}

#[cfg(test)]
mod tests {
    use super::UnknownEndpoint;

    fn unknown(name: &str, known: &[&str]) -> String {
        UnknownEndpoint {
            name: name.into(),
            known: known.iter().map(|k| k.to_string()).collect(),
        }
        .to_string()
    }

    #[test]
    fn an_unknown_endpoint_names_the_closest_or_lists_the_known_ones() {
        let known = ["orders", "prices", "trades"];
        assert_eq!(
            unknown("prcies", &known),
            "unknown endpoint \"prcies\"; did you mean \"prices\"?"
        );
        assert_eq!(
            unknown("weather", &known),
            "unknown endpoint \"weather\"; endpoints: orders, prices, trades"
        );
        assert_eq!(
            unknown("x", &[]),
            "unknown endpoint \"x\"; no endpoints are configured"
        );
        let many: Vec<String> = (0..20).map(|i| format!("feed{i:02}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let text = unknown("weather", &many);
        assert!(
            text.ends_with("feed07, … (20 in all; `ws-sidecar status` lists them)"),
            "{text}"
        );
    }
}
