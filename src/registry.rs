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
