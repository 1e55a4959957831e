//! The status page on the HTTP listener: `GET /` serves one self-contained HTML file
//! (`status_page.html`: inline CSS and JS, no external assets), `GET /events` the server-sent
//! events that feed it.
//!
//! The feed sends a `data:` snapshot of every endpoint once a second, and an `event: state` at
//! once on each state change. The first snapshot that shows an endpoint carries its last hour of
//! changes (`crate::history`), so a page that (re)connects draws its timeline from the daemon's
//! memory, not its own. The stream ends when the daemon shuts down; the browser's `EventSource`
//! then reconnects by itself after the `retry:` delay, to the next daemon. At most
//! [`MAX_VIEWERS`] feeds are open at once; beyond, `/events` answers 503.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::StreamMap;
use tokio_util::sync::CancellationToken;

use crate::endpoint::{unix_nanos, Endpoint};
use crate::history::{self, Change};
use crate::registry::Registry;
use crate::status::EndpointStatus;

use super::http::Body;

/// The page, served as is.
const PAGE: &str = include_str!("status_page.html");
/// Open `/events` streams allowed at once; each costs a snapshot per second.
pub const MAX_VIEWERS: usize = 16;
/// How often a snapshot is sent.
pub const PERIOD: Duration = Duration::from_secs(1);
/// How long a browser waits before reconnecting a feed that ended (`retry:`).
pub const RETRY: Duration = Duration::from_secs(2);
/// What a refused viewer is told to wait before trying again.
const RETRY_AFTER_SECS: u64 = 10;

/// The page's content security policy: nothing but the page itself and its own feed, so the
/// page cannot load (or leak to) anything elsewhere.
const CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                   connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; \
                   frame-ancestors 'none'";

/// The budget of open feeds, shared by every HTTP connection.
#[derive(Clone)]
pub struct Viewers(Arc<Semaphore>);

impl Viewers {
    /// A budget of `max` open feeds.
    pub fn new(max: usize) -> Viewers {
        Viewers(Arc::new(Semaphore::new(max)))
    }
}

impl Default for Viewers {
    fn default() -> Self {
        Viewers::new(MAX_VIEWERS)
    }
}

/// `GET /`: the page.
pub fn page() -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from_static(PAGE.as_bytes())).boxed_unsync());
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// `GET /events`: the feed until the client goes or `shutdown`; 503 when [`MAX_VIEWERS`] are
/// open. `head` answers the headers only, holding no slot.
pub fn events(
    registry: Arc<Registry>,
    viewers: &Viewers,
    shutdown: CancellationToken,
    head: bool,
) -> Response<Body> {
    let body = if head {
        Full::new(Bytes::new()).boxed_unsync()
    } else {
        let Ok(slot) = Arc::clone(&viewers.0).try_acquire_owned() else {
            let mut r = Response::new(
                Full::new(Bytes::from(format!(
                    "too many status page viewers (at most {MAX_VIEWERS} at once); \
                     close one, or retry in {RETRY_AFTER_SECS} s\n"
                )))
                .boxed_unsync(),
            );
            *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            let h = r.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            h.insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
            return r;
        };
        let feed = Feed::new(registry, shutdown, slot);
        let frames = futures_util::stream::unfold(feed, |mut feed| async move {
            let bytes = feed.next().await?;
            Some((Ok::<_, Infallible>(Frame::data(bytes)), feed))
        });
        // Pulled, not pushed: hyper asks for the next frame only once the last was written, so
        // a viewer that does not read holds nothing but its slot.
        StreamBody::new(frames).boxed_unsync()
    };
    let mut r = Response::new(body);
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Proxies that buffer (nginx) would hold the events back.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    r
}

/// One snapshot of the daemon, as the `data:` of a default event.
#[derive(Debug, Serialize)]
pub struct Snapshot {
    pub at_unix_ms: u64,
    pub version: &'static str,
    /// How far back each endpoint's `history` reaches.
    pub window_secs: u64,
    pub endpoints: Vec<Row>,
}

/// One endpoint in a snapshot; every field is safe to show (built from the redacted status).
#[derive(Debug, Serialize)]
pub struct Row {
    pub name: String,
    pub url: String,
    pub state: String,
    pub reason: String,
    pub since_unix_ms: u64,
    pub last_seq: u64,
    /// Messages per second since this feed's previous snapshot; absent in its first.
    pub messages_per_second: Option<f64>,
    /// Last ping round trip; absent before the first pong.
    pub rtt_ms: Option<f64>,
    pub subscribers: u32,
    pub outbox_depth: u64,
    pub reconnects: u64,
    /// The last hour of state changes, oldest first: only in the first snapshot that shows
    /// this endpoint; `state` events carry the later ones.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history: Option<Vec<Change>>,
}

/// A state change, as the `data:` of an `event: state`.
#[derive(Debug, Serialize)]
pub struct StateChange<'a> {
    pub endpoint: &'a str,
    #[serde(flatten)]
    pub change: &'a Change,
}

/// One viewer's feed: what it has been sent, to send only what is new.
struct Feed {
    registry: Arc<Registry>,
    shutdown: CancellationToken,
    /// Held for as long as the feed exists: the body drops it when the client goes.
    _slot: OwnedSemaphorePermit,
    tick: tokio::time::Interval,
    /// Woken by a state change of any endpoint the feed shows.
    wakes: StreamMap<String, BroadcastStream<crate::endpoint::StateEvent>>,
    shown: BTreeMap<String, Shown>,
    /// `retry:` goes in the first frame only.
    started: bool,
}

/// What a feed sent of one endpoint.
struct Shown {
    ep: Arc<Endpoint>,
    /// The number of the last history change sent; 0 before the history went out.
    last_change: u64,
    history_sent: bool,
    /// Last seq and when it was read, for the message rate.
    last_seq: Option<(u64, Instant)>,
}

impl Feed {
    fn new(
        registry: Arc<Registry>,
        shutdown: CancellationToken,
        slot: OwnedSemaphorePermit,
    ) -> Feed {
        let mut tick = tokio::time::interval(PERIOD);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Feed {
            registry,
            shutdown,
            _slot: slot,
            tick,
            wakes: StreamMap::new(),
            shown: BTreeMap::new(),
            started: false,
        }
    }

    /// The next frame(s) to send; `None` ends the stream (shutdown).
    async fn next(&mut self) -> Option<Bytes> {
        loop {
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return None,
                Some((name, _)) = self.wakes.next() => {
                    // Lagging behind the broadcast loses nothing: the history has every change.
                    let out = self.changes_of(&name);
                    if !out.is_empty() {
                        return Some(Bytes::from(out));
                    }
                }
                _ = self.tick.tick() => {
                    let mut out = String::new();
                    if !self.started {
                        self.started = true;
                        out.push_str(&format!("retry: {}\n\n", RETRY.as_millis()));
                    }
                    self.snapshot(&mut out);
                    return Some(Bytes::from(out));
                }
            }
        }
    }

    /// Follows the registry: shows endpoints a reload added, forgets those it removed.
    fn sync(&mut self) {
        let now: BTreeMap<String, Arc<Endpoint>> = self
            .registry
            .all()
            .into_iter()
            .map(|ep| (ep.name.clone(), ep))
            .collect();
        self.shown
            .retain(|name, s| now.get(name).is_some_and(|ep| Arc::ptr_eq(ep, &s.ep)));
        let gone: Vec<String> = self
            .wakes
            .keys()
            .filter(|k| !self.shown.contains_key(*k))
            .cloned()
            .collect();
        for k in gone {
            self.wakes.remove(&k);
        }
        for (name, ep) in now {
            if self.shown.contains_key(&name) {
                continue;
            }
            // Subscribed before the history is read, so no change falls between the two.
            self.wakes
                .insert(name.clone(), BroadcastStream::new(ep.state_events()));
            self.shown.insert(
                name,
                Shown {
                    ep,
                    last_change: 0,
                    history_sent: false,
                    last_seq: None,
                },
            );
        }
    }

    /// Appends to `out` the state events not sent yet, then a snapshot.
    fn snapshot(&mut self, out: &mut String) {
        self.sync();
        let at_unix_ms = unix_nanos() / 1_000_000;
        let read_at = Instant::now();
        let endpoints = self
            .shown
            .values_mut()
            .map(|s| {
                let st = EndpointStatus::of(&s.ep);
                let messages_per_second = s.last_seq.and_then(|(seq, at)| {
                    let secs = read_at.duration_since(at).as_secs_f64();
                    (st.last_seq >= seq && secs > 0.0).then(|| (st.last_seq - seq) as f64 / secs)
                });
                s.last_seq = Some((st.last_seq, read_at));
                let history = (!s.history_sent).then(|| {
                    s.history_sent = true;
                    let h = s.ep.history.recent(at_unix_ms);
                    s.last_change = h.last().map_or(0, |c| c.n);
                    h
                });
                Row {
                    since_unix_ms: st.since_unix_nanos / 1_000_000,
                    rtt_ms: (st.rtt_micros > 0).then(|| st.rtt_micros as f64 / 1000.0),
                    name: st.name,
                    url: st.url,
                    state: st.state,
                    reason: st.reason,
                    last_seq: st.last_seq,
                    messages_per_second,
                    subscribers: st.subscribers,
                    outbox_depth: st.outbox_depth,
                    reconnects: st.reconnects,
                    history,
                }
            })
            .collect();
        // A change the rows show was recorded before they were read (set_state records it
        // first): its event goes out ahead of the snapshot, never after it.
        let names: Vec<String> = self.shown.keys().cloned().collect();
        for name in names {
            out.push_str(&self.changes_of(&name));
        }
        let snap = Snapshot {
            at_unix_ms,
            version: env!("CARGO_PKG_VERSION"),
            window_secs: history::WINDOW.as_secs(),
            endpoints,
        };
        event(out, None, &snap);
    }

    /// The `state` events for changes of `name` not sent yet.
    fn changes_of(&mut self, name: &str) -> String {
        let mut out = String::new();
        let Some(s) = self.shown.get_mut(name) else {
            return out;
        };
        // Before its history went out, the history will carry the change.
        if !s.history_sent {
            return out;
        }
        for change in s.ep.history.after(s.last_change) {
            s.last_change = change.n;
            let ev = StateChange {
                endpoint: name,
                change: &change,
            };
            event(&mut out, Some("state"), &ev);
        }
        out
    }
}

/// Appends one event; JSON never holds a raw newline, so `data:` is a single line.
fn event(out: &mut String, name: Option<&str>, data: &impl Serialize) {
    let Ok(json) = serde_json::to_string(data) else {
        return;
    };
    if let Some(name) = name {
        out.push_str("event: ");
        out.push_str(name);
        out.push('\n');
    }
    out.push_str("data: ");
    out.push_str(&json);
    out.push_str("\n\n");
}
