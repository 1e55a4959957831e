//! A numbered feed for resume and demo-like tests: `{"id":N,"type":"tick",...}` text messages,
//! where a connection that asks for `?since=N` continues at N+1, like an upstream that can resend
//! from a position (SPEC §9).

use std::time::Duration;

use http::Uri;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use super::upstream::{FakeUpstream, Reply, UpConn};

/// One tick message. `id` is the upstream id a resume config points at with `/id`.
pub fn tick_message(id: u64) -> String {
    format!(r#"{{"id":{id},"type":"tick","payload":"tick-{id}"}}"#)
}

/// The `id` of a message made by [`tick_message`], for checking what a subscriber received.
pub fn tick_id(message: &str) -> Option<u64> {
    let rest = message.strip_prefix(r#"{"id":"#)?;
    let end = rest.find(|c: char| !c.is_ascii_digit())?;
    rest[..end].parse().ok()
}

/// The integer value of the `since` query parameter, if present and numeric.
pub fn since_param(uri: &Uri) -> Option<u64> {
    uri.query()?
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(name, _)| *name == "since")
        .and_then(|(_, value)| value.parse().ok())
}

#[derive(Clone, Debug)]
pub struct TickOptions {
    /// Id of the first tick on a connection that does not resume.
    pub first_id: u64,
    pub interval: Duration,
    /// `false` plays an upstream that ignores `since` and always restarts at `first_id`, so the
    /// daemon's deduplication has to do the work.
    pub honour_since: bool,
    /// After this many ticks on one connection, reset it (RST): a flapping upstream.
    pub per_connection: Option<u64>,
    /// Stop after sending this id and keep the connection open, so a test knows the full range.
    pub last_id: Option<u64>,
}

impl Default for TickOptions {
    fn default() -> Self {
        TickOptions {
            first_id: 1,
            interval: Duration::from_millis(20),
            honour_since: true,
            per_connection: None,
            last_id: None,
        }
    }
}

/// The id a connection's tick stream starts at, given its request URI.
pub fn first_tick_for(uri: &Uri, options: &TickOptions) -> u64 {
    match since_param(uri) {
        Some(since) if options.honour_since => since + 1,
        _ => options.first_id,
    }
}

/// Streams ticks on `conn` from the id its request asks for. The task ends when the connection
/// does (or after `last_id` / `per_connection`), yielding the last id it wrote, if any.
pub fn spawn_ticks(conn: UpConn, options: TickOptions) -> JoinHandle<Option<u64>> {
    tokio::spawn(async move {
        let mut next = first_tick_for(conn.uri(), &options);
        let mut last_sent = None;
        let mut sent_here = 0u64;
        let mut timer = tokio::time::interval(options.interval);
        // A stalled connection must not be followed by a burst of catch-up ticks.
        timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            if options.last_id.is_some_and(|last| next > last) {
                return last_sent;
            }
            if options
                .per_connection
                .is_some_and(|limit| sent_here >= limit)
            {
                let _ = conn.reset().await;
                return last_sent;
            }
            timer.tick().await;
            if conn.send_text(&tick_message(next)).await.is_err() {
                return last_sent;
            }
            last_sent = Some(next);
            sent_here += 1;
            next += 1;
        }
    })
}

impl FakeUpstream {
    /// An upstream that accepts every handshake and streams ticks on each connection. The
    /// connections still arrive on `next_accepted`, so a test can cut or inspect them.
    pub async fn start_ticking(options: TickOptions) -> FakeUpstream {
        FakeUpstream::start_with_handler(
            |_, _| Reply::Accept,
            move |conn| {
                spawn_ticks(conn, options.clone());
            },
        )
        .await
    }
}
