//! Shared subscriptions across the fleet: one upstream subscription per key for every host's
//! apps, on the leader's connection.
//!
//! - [`declare`] (every host, for the endpoint task's life): writes the keys this host's apps
//!   hold to the interest bucket whenever they change, and every third of the TTL.
//! - [`serve`] (the leader, for its term): holds every other host's declared keys in the
//!   endpoint's share, so its connection subscribes the union and unsubscribes a key when no
//!   host holds it any more, and publishes each key's state.
//! - [`mirror`] (a follower, while it follows): shows the leader's published states to this
//!   host's apps.
//!
//! Messages of a key need nothing of this: the leader tags them with their key and every host
//! reads them from the endpoint's stream, where each app's subscription takes its keys' only.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::interest::{HeldKey, HostEvent, HostWatch, Interest};
use crate::endpoint::Endpoint;
use crate::share::{Holding, KeyState, ShareError};

/// Pause before trying NATS again after an error.
const RETRY: Duration = Duration::from_millis(500);

/// Sleeps [`RETRY`]; false when stopped meanwhile.
async fn pause(stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(RETRY) => true,
        _ = stop.cancelled() => false,
    }
}

/// The keys this host's apps hold on `ep`, as declared.
fn local(ep: &Endpoint) -> Vec<HeldKey> {
    ep.share
        .local_keys()
        .into_iter()
        .map(|(key, params)| HeldKey {
            key: key.to_string(),
            params,
        })
        .collect()
}

/// Declares this host's held keys on `ep` as `host` until `stop`, then withdraws them.
pub async fn declare(ep: Arc<Endpoint>, interest: Interest, host: String, stop: CancellationToken) {
    let mut changes = ep.share.local_changes();
    let every = interest.ttl() / 3;
    // What the bucket has for this host: `None` unknown, `Some(empty)` nothing.
    let mut written: Option<Vec<HeldKey>> = None;
    let mut due = Instant::now();
    loop {
        changes.mark_unchanged();
        let keys = local(&ep);
        let fresh = written.as_ref() == Some(&keys) && Instant::now() < due;
        if !fresh {
            let wrote = if keys.is_empty() {
                // An empty entry and none hold the same; none is one less to keep alive.
                if written.as_ref().is_some_and(Vec::is_empty) {
                    Ok(())
                } else {
                    interest.withdraw(&ep.name, &host).await
                }
            } else {
                interest.declare(&ep.name, &host, &keys).await
            };
            match wrote {
                Ok(()) => {
                    due = Instant::now() + every;
                    written = Some(keys);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot declare this host's subscriptions; retrying");
                    written = None;
                    if !pause(&stop).await {
                        break;
                    }
                    continue;
                }
            }
        }
        let idle = async {
            // Nothing to keep alive while nothing is held.
            if written.as_ref().is_some_and(Vec::is_empty) {
                std::future::pending::<()>().await
            }
            tokio::time::sleep_until(due).await
        };
        tokio::select! {
            _ = stop.cancelled() => break,
            r = changes.changed() => if r.is_err() { break },
            _ = idle => {}
        }
    }
    if written.is_some_and(|w| !w.is_empty()) {
        let _ =
            tokio::time::timeout(Duration::from_secs(2), interest.withdraw(&ep.name, &host)).await;
    }
}

/// What the leader holds for one other host.
#[derive(Default)]
struct Host {
    held: HashMap<Arc<str>, Holding>,
    /// Declared keys the share refused (`max_per_connection`), tried again as others leave.
    refused: BTreeMap<Arc<str>, Option<serde_json::Value>>,
    heard: Option<Instant>,
}

/// The leader's view of every other host's held keys.
struct Fleet {
    hosts: HashMap<String, Host>,
    max: usize,
}

impl Fleet {
    /// Holds what `host` declares, and lets go of what it no longer does.
    fn holds(&mut self, ep: &Endpoint, host: String, keys: Vec<HeldKey>) {
        let h = self.hosts.entry(host).or_default();
        h.heard = Some(Instant::now());
        let wanted: BTreeSet<&str> = keys.iter().map(|k| k.key.as_str()).collect();
        h.held.retain(|k, _| wanted.contains(&**k));
        h.refused.retain(|k, _| wanted.contains(&**k));
        for k in keys {
            let key: Arc<str> = Arc::from(k.key);
            if !h.held.contains_key(&key) && !h.refused.contains_key(&key) {
                h.refused.insert(key, k.params);
            }
        }
        self.retry(ep);
    }

    /// Holds the keys the share refused before, as far as it takes them now.
    fn retry(&mut self, ep: &Endpoint) {
        for h in self.hosts.values_mut() {
            let waiting = std::mem::take(&mut h.refused);
            for (key, params) in waiting {
                match ep
                    .share
                    .hold_for_fleet(Arc::clone(&key), params.clone(), self.max)
                {
                    Ok(holding) => {
                        h.held.insert(key, holding);
                    }
                    Err(_) => {
                        h.refused.insert(key, params);
                    }
                }
            }
        }
    }

    /// Lets go of what hosts not heard from for longer than `ttl` held: their entries aged
    /// out, and a deletion the watch missed (NATS reconnecting) must not hold keys forever.
    fn sweep(&mut self, ep: &Endpoint, ttl: Duration) {
        let now = Instant::now();
        self.hosts
            .retain(|_, h| h.heard.is_some_and(|at| now.duration_since(at) <= ttl));
        self.retry(ep);
    }

    /// Every key's state: the share's, and the refused ones'.
    fn states(&self, ep: &Endpoint) -> BTreeMap<String, KeyState> {
        let mut states: BTreeMap<String, KeyState> = ep
            .share
            .key_states()
            .into_iter()
            .map(|(k, s)| (k.to_string(), s))
            .collect();
        let full = ShareError::TooManyKeys(self.max).to_string();
        for h in self.hosts.values() {
            for key in h.refused.keys() {
                states
                    .entry(key.to_string())
                    .or_insert_with(|| KeyState::Refused(full.clone()));
            }
        }
        states
    }
}

/// The leader's side for one term (`term`, this host `me`): holds every other host's keys
/// and publishes the states until `stop`; what it held is let go of when it returns.
pub async fn serve(
    ep: Arc<Endpoint>,
    interest: Interest,
    me: String,
    term: u64,
    stop: CancellationToken,
) {
    let Some(max) = ep.config().subscriptions.as_ref().map(|s| s.max) else {
        return;
    };
    let mut fleet = Fleet {
        hosts: HashMap::new(),
        max,
    };
    let mut events = ep.share.key_events();
    let mut watch: Option<HostWatch> = None;
    let every = interest.ttl() / 3;
    let mut published: Option<BTreeMap<String, KeyState>> = None;
    let mut due = Instant::now();
    loop {
        if watch.is_none() {
            match interest.watch_hosts(&ep.name).await {
                Ok(w) => watch = Some(w),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch the fleet's subscriptions; retrying");
                    if !pause(&stop).await {
                        return;
                    }
                    continue;
                }
            }
        }
        let states = fleet.states(&ep);
        if published.as_ref() != Some(&states) || Instant::now() >= due {
            match interest.publish_states(&ep.name, term, &states).await {
                Ok(()) => {
                    published = Some(states);
                    due = Instant::now() + every;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot publish the subscriptions' states; retrying");
                    due = Instant::now() + RETRY;
                }
            }
        }
        let next = async {
            match watch.as_mut() {
                Some(w) => w.next().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            ev = next => match ev {
                Ok(HostEvent::Holds { host, keys }) if host != me => fleet.holds(&ep, host, keys),
                Ok(HostEvent::Gone { host }) => {
                    fleet.hosts.remove(&host);
                    fleet.retry(&ep);
                }
                Ok(HostEvent::Holds { .. }) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "the fleet's subscriptions watch broke; watching again");
                    watch = None;
                }
            },
            // A key let go of may make room for one refused before.
            _ = events.recv() => fleet.retry(&ep),
            _ = tokio::time::sleep_until(due) => fleet.sweep(&ep, interest.ttl()),
        }
    }
}

/// A follower's side until `stop`: this host's apps see the states the leader publishes
/// (`pending` while there is none).
pub async fn mirror(ep: Arc<Endpoint>, interest: Interest, stop: CancellationToken) {
    ep.share.set_view(Some(HashMap::new()));
    loop {
        let mut watch = tokio::select! {
            w = interest.watch_states(&ep.name) => match w {
                Ok(w) => w,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch the subscriptions' states; retrying");
                    if !pause(&stop).await {
                        return;
                    }
                    continue;
                }
            },
            _ = stop.cancelled() => return,
        };
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                states = watch.next() => match states {
                    Ok(states) => ep.share.set_view(Some(states)),
                    Err(e) => {
                        tracing::warn!(error = %e, "the subscriptions' states watch broke; watching again");
                        break;
                    }
                },
            }
        }
    }
}
