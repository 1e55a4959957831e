//! Which upstream subscriptions the fleet's apps hold, and what became of them on the leader's
//! connection: the KV bucket [`BUCKET`], whose keys age out one lease TTL after their last
//! write, like the leases (`lease.rs`, same bucket settings).
//!
//! - `<endpoint>.i.<host>`: the keys host `<host>`'s apps hold on the endpoint, with the
//!   parameters of their subscribe frames, as JSON `{"keys":[{"key":"…","params":…}]}`. Each
//!   host writes its own when its apps' holds change and at least every third of the TTL, so a
//!   host that dies stops holding anything one TTL later.
//! - `<endpoint>.s`: each key's state on the leader's connection, written by the leader as JSON
//!   `{"term":N,"keys":{"<key>":{"state":"subscribed"},"<key>":{"state":"refused","reason":"…"}}}`.
//!
//! Endpoint and host names are escaped (`_` written `__`, `.` written `_d`), so each is one
//! token of the key and no endpoint's keys can be another's.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::lease::{open_bucket, LeaseError};
use crate::share::KeyState;

/// The KV bucket holding every endpoint's held keys and their states.
pub const BUCKET: &str = "ws-sidecar-interest";

/// A failed operation on the bucket; what the bucket holds is unknown, retry.
#[derive(Debug, thiserror::Error)]
#[error("interest bucket {BUCKET}: {0}")]
pub struct InterestError(String);

impl From<LeaseError> for InterestError {
    fn from(e: LeaseError) -> Self {
        InterestError(e.to_string())
    }
}

fn nats(e: impl std::fmt::Display) -> InterestError {
    InterestError(e.to_string())
}

/// One key a host's apps hold, with the parameters of its subscribe frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeldKey {
    /// The subscription key (`Attach` keys).
    pub key: String,
    /// The `params` of the first holder's `Attach`, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<Value>,
}

#[derive(Serialize, Deserialize)]
struct Holds {
    keys: Vec<HeldKey>,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
enum WireState {
    Pending,
    Subscribed,
    Refused { reason: String },
}

#[derive(Serialize, Deserialize)]
struct States {
    term: u64,
    keys: BTreeMap<String, WireState>,
}

/// A change of one host's held keys.
#[derive(Debug, Clone, PartialEq)]
pub enum HostEvent {
    /// `host`'s apps hold `keys` now (maybe none).
    Holds {
        /// The host's `cluster.name`.
        host: String,
        /// What its apps hold.
        keys: Vec<HeldKey>,
    },
    /// `host` holds nothing: it withdrew, or it stopped writing and its entry aged out.
    Gone {
        /// The host's `cluster.name`.
        host: String,
    },
}

/// The interest bucket, opened with the fleet's lease TTL. Cheap to clone.
#[derive(Clone)]
pub struct Interest {
    kv: kv::Store,
    ttl: Duration,
}

impl Interest {
    /// Opens the bucket, creating it with `max_age = ttl` and `replicas` copies if it does not
    /// exist.
    ///
    /// # Errors
    /// The bucket exists with another TTL, or the server refused or did not answer.
    pub async fn open(
        js: &jetstream::Context,
        ttl: Duration,
        replicas: usize,
    ) -> Result<Interest, InterestError> {
        let description = "ws-sidecar: upstream subscriptions each host's apps hold";
        let kv = open_bucket(js, BUCKET, description, ttl, replicas).await?;
        Ok(Interest { kv, ttl })
    }

    /// How long an entry lives after its last write.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Writes the keys `host`'s apps hold on `endpoint` (an empty list holds nothing).
    ///
    /// # Errors
    /// The server did not answer.
    pub async fn declare(
        &self,
        endpoint: &str,
        host: &str,
        keys: &[HeldKey],
    ) -> Result<(), InterestError> {
        let value = serde_json::to_vec(&Holds {
            keys: keys.to_vec(),
        })
        .map_err(nats)?;
        self.kv
            .put(host_key(endpoint, host), Bytes::from(value))
            .await
            .map_err(nats)?;
        Ok(())
    }

    /// Removes `host`'s entry for `endpoint`: a clean stop, so the leader lets go at once.
    ///
    /// # Errors
    /// The server did not answer (the entry then ages out).
    pub async fn withdraw(&self, endpoint: &str, host: &str) -> Result<(), InterestError> {
        self.kv.delete(host_key(endpoint, host)).await.map_err(nats)
    }

    /// Every host's held keys on `endpoint` as they are now, then each change.
    ///
    /// # Errors
    /// The server did not answer.
    pub async fn watch_hosts(&self, endpoint: &str) -> Result<HostWatch, InterestError> {
        let mut prefix = String::new();
        super::escape_into(&mut prefix, endpoint);
        prefix.push_str(".i.");
        let watch = self
            .kv
            .watch_with_history(format!("{prefix}*"))
            .await
            .map_err(nats)?;
        Ok(HostWatch { watch, prefix })
    }

    /// Publishes each key's state on the leader's connection, as the leader of `term` sees it.
    ///
    /// # Errors
    /// The server did not answer.
    pub async fn publish_states(
        &self,
        endpoint: &str,
        term: u64,
        states: &BTreeMap<String, KeyState>,
    ) -> Result<(), InterestError> {
        let keys = states
            .iter()
            .map(|(k, s)| {
                let w = match s {
                    KeyState::Pending => WireState::Pending,
                    KeyState::Subscribed => WireState::Subscribed,
                    KeyState::Refused(reason) => WireState::Refused {
                        reason: reason.clone(),
                    },
                };
                (k.clone(), w)
            })
            .collect();
        let value = serde_json::to_vec(&States { term, keys }).map_err(nats)?;
        self.kv
            .put(states_key(endpoint), Bytes::from(value))
            .await
            .map_err(nats)?;
        Ok(())
    }

    /// The states the leader published for `endpoint` now, then each new publication.
    ///
    /// # Errors
    /// The server did not answer.
    pub async fn watch_states(&self, endpoint: &str) -> Result<StateWatch, InterestError> {
        let watch = self
            .kv
            .watch_with_history(states_key(endpoint))
            .await
            .map_err(nats)?;
        Ok(StateWatch { watch })
    }
}

fn host_key(endpoint: &str, host: &str) -> String {
    let mut key = String::new();
    super::escape_into(&mut key, endpoint);
    key.push_str(".i.");
    super::escape_into(&mut key, host);
    key
}

fn states_key(endpoint: &str) -> String {
    let mut key = String::new();
    super::escape_into(&mut key, endpoint);
    key.push_str(".s");
    key
}

/// The hosts' held keys on one endpoint, as they change.
pub struct HostWatch {
    watch: kv::Watch,
    /// `<endpoint>.i.`, escaped.
    prefix: String,
}

impl HostWatch {
    /// The next change. Cancel-safe. An entry that is not valid JSON holds nothing (it is
    /// logged): another version of ws-sidecar, or not ws-sidecar's.
    ///
    /// # Errors
    /// The watch broke or ended; open a new one (it starts again with every host's entry).
    pub async fn next(&mut self) -> Result<HostEvent, InterestError> {
        let entry = match self.watch.next().await {
            Some(Ok(entry)) => entry,
            Some(Err(e)) => return Err(nats(e)),
            None => return Err(InterestError("the watch ended".into())),
        };
        let host = super::unescape(entry.key.strip_prefix(&self.prefix).unwrap_or(&entry.key));
        if entry.operation != kv::Operation::Put {
            return Ok(HostEvent::Gone { host });
        }
        match serde_json::from_slice::<Holds>(&entry.value) {
            Ok(h) => Ok(HostEvent::Holds { host, keys: h.keys }),
            Err(e) => {
                tracing::warn!(host = %host, error = %e, "ignoring a held-keys entry that is not ws-sidecar's");
                Ok(HostEvent::Gone { host })
            }
        }
    }
}

/// The key states the leader publishes for one endpoint.
pub struct StateWatch {
    watch: kv::Watch,
}

impl StateWatch {
    /// The next publication, by key (empty once the leader's entry aged out). Cancel-safe.
    ///
    /// # Errors
    /// The watch broke or ended; open a new one.
    pub async fn next(&mut self) -> Result<HashMap<Arc<str>, KeyState>, InterestError> {
        let entry = match self.watch.next().await {
            Some(Ok(entry)) => entry,
            Some(Err(e)) => return Err(nats(e)),
            None => return Err(InterestError("the watch ended".into())),
        };
        if entry.operation != kv::Operation::Put {
            return Ok(HashMap::new());
        }
        let states: States = match serde_json::from_slice(&entry.value) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "ignoring key states that are not ws-sidecar's");
                return Ok(HashMap::new());
            }
        };
        Ok(states
            .keys
            .into_iter()
            .map(|(k, w)| {
                let state = match w {
                    WireState::Pending => KeyState::Pending,
                    WireState::Subscribed => KeyState::Subscribed,
                    WireState::Refused { reason } => KeyState::Refused(reason),
                };
                (Arc::from(k), state)
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_one_token_per_name_and_never_another_endpoints() {
        assert_eq!(host_key("eu.prices", "web_1"), "eu_dprices.i.web__1");
        assert_eq!(states_key("eu.prices"), "eu_dprices.s");
        // `a` held by host `i.x` vs `a.i` held by host `x`: different keys.
        assert_ne!(host_key("a", "i.x"), host_key("a.i", "x"));
        assert_eq!(super::super::unescape("web__1_dx"), "web_1.x");
    }
}
