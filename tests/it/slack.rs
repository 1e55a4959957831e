//! Slack Socket Mode, end to end: `docs/recipes/slack-socket-mode.toml` as written (only the
//! discovery URL, the app token and the timings swapped) against a fake Slack that enforces
//! what https://api.slack.com/apis/connections/socket-implement documents: single-use URLs
//! from `apps.connections.open` (tests/support/discovery.rs), `hello` first, every envelope
//! acknowledged with its `envelope_id` in time or sent again with `retry_attempt`, and a
//! `disconnect` before Slack closes the connection.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;
use ws_sidecar::config::{Discovery, UrlSource};
use ws_sidecar::endpoint::State;
use ws_sidecar::secret::Secret;

use crate::support::daemon::{next_message, start_with, subscribe};
use crate::support::discovery::{SocketMode, APP_TOKEN};
use crate::support::recipe::recipe;
use crate::support::UpConn;

const T: Duration = Duration::from_secs(10);

/// Slack's 3 s, scaled down: the daemon acknowledges at once, so the margin stays wide.
const ACK_WITHIN: Duration = Duration::from_millis(1000);

/// How long Slack keeps a connection after its `disconnect` (about 10 s for a "warning"),
/// scaled down.
const CLOSE_AFTER: Duration = Duration::from_millis(3000);

/// One envelope as Slack tracks it.
struct Envelope {
    /// The connection it went out on (acknowledgements count there only).
    conn: usize,
    sent: Instant,
    attempts: u32,
    acked: bool,
    body: String,
}

#[derive(Default)]
struct Book {
    envelopes: HashMap<String, Envelope>,
    /// Every rule the client broke, in words.
    faults: Vec<String>,
}

/// A fake Slack: the discovery endpoint with its single-use tickets, and the Socket Mode
/// connections behind it.
struct FakeSlack {
    mode: SocketMode,
    book: Arc<Mutex<Book>>,
    acked: watch::Sender<usize>,
    conns: Mutex<usize>,
}

/// One accepted Socket Mode connection.
struct SlackConn {
    conn: UpConn,
    index: usize,
    book: Arc<Mutex<Book>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl FakeSlack {
    async fn start() -> FakeSlack {
        FakeSlack {
            mode: SocketMode::start(&[]).await,
            book: Arc::default(),
            acked: watch::Sender::new(0),
            conns: Mutex::new(0),
        }
    }

    /// The next connection the client opens: Slack says hello at once, then reads the
    /// client's frames (acknowledgements only) and resends what is not acknowledged in time.
    async fn next_connection(&self) -> SlackConn {
        let conn = self
            .mode
            .upstream
            .next_accepted_within(T)
            .await
            .expect("the client connects");
        let index = {
            let mut n = lock(&self.conns);
            *n += 1;
            *n
        };
        conn.send_text(&format!(
            r#"{{"type":"hello","num_connections":{index},"debug_info":{{"host":"applink-1","approximate_connection_time":18060}},"connection_info":{{"app_id":"A111"}}}}"#
        ))
        .await
        .expect("hello");
        tokio::spawn(read_acks(
            conn.clone(),
            index,
            Arc::clone(&self.book),
            self.acked.clone(),
        ));
        tokio::spawn(resend_unacked(conn.clone(), index, Arc::clone(&self.book)));
        SlackConn {
            conn,
            index,
            book: Arc::clone(&self.book),
        }
    }

    async fn wait_acked(&self, n: usize) {
        let mut seen = self.acked.subscribe();
        tokio::time::timeout(T, seen.wait_for(|a| *a >= n))
            .await
            .unwrap_or_else(|_| panic!("{} of {n} envelopes acknowledged", *self.acked.borrow()))
            .expect("counter lives");
    }

    fn faults(&self) -> Vec<String> {
        lock(&self.book).faults.clone()
    }
}

impl SlackConn {
    /// Sends envelope `n` (an `events_api` envelope carrying a message event).
    async fn envelope(&self, n: u64) {
        let id = format!("env-{n:04}-{:08x}", fastrand::u32(..));
        let body = format!(
            r#"{{"envelope_id":"{id}","payload":{{"type":"event_callback","event":{{"type":"message","text":"hi","n":{n}}}}},"type":"events_api","accepts_response_payload":false"#
        );
        lock(&self.book).envelopes.insert(
            id,
            Envelope {
                conn: self.index,
                sent: Instant::now(),
                attempts: 0,
                acked: false,
                body: body.clone(),
            },
        );
        self.conn
            .send_text(&format!(r#"{body},"retry_attempt":0,"retry_reason":""}}"#))
            .await
            .expect("envelope sent");
    }

    /// Announces the end of this connection, and ends it [`CLOSE_AFTER`] later if the client
    /// has not moved to a new one by then (a fault: events would be lost meanwhile).
    async fn disconnect(&self, reason: &str) {
        self.conn
            .send_text(&format!(
                r#"{{"type":"disconnect","reason":"{reason}","debug_info":{{"host":"applink-1"}}}}"#
            ))
            .await
            .expect("disconnect sent");
        let (conn, book) = (self.conn.clone(), Arc::clone(&self.book));
        tokio::spawn(async move {
            if tokio::time::timeout(CLOSE_AFTER, conn.closed())
                .await
                .is_err()
            {
                lock(&book).faults.push(format!(
                    "still on the old connection {CLOSE_AFTER:?} after disconnect"
                ));
                let _ = conn.close(1001, "").await;
            }
        });
    }
}

/// Takes the client's frames on one connection: each must acknowledge an envelope sent on
/// it, once, within [`ACK_WITHIN`].
async fn read_acks(
    conn: UpConn,
    index: usize,
    book: Arc<Mutex<Book>>,
    acked: watch::Sender<usize>,
) {
    while let Some(m) = conn.recv().await {
        let Message::Text(text) = m else { continue };
        let v: serde_json::Value = serde_json::from_str(text.as_str()).unwrap_or_default();
        let id = v["envelope_id"].as_str().unwrap_or_default();
        let mut b = lock(&book);
        let fault = match b.envelopes.get_mut(id) {
            _ if v.as_object().map(serde_json::Map::len) != Some(1) => {
                Some(format!("not an acknowledgement: {text}"))
            }
            None => Some(format!("acknowledged an unknown envelope: {text}")),
            Some(e) if e.conn != index => Some(format!("acknowledged {id} on another connection")),
            Some(e) if e.acked => Some(format!("acknowledged {id} twice")),
            Some(e) => {
                e.acked = true;
                let took = e.sent.elapsed();
                acked.send_modify(|n| *n += 1);
                (took > ACK_WITHIN).then(|| format!("acknowledged {id} after {took:?}"))
            }
        };
        b.faults.extend(fault);
    }
}

/// Slack's side of a missing acknowledgement: the envelope again, with `retry_attempt` one
/// higher.
async fn resend_unacked(conn: UpConn, index: usize, book: Arc<Mutex<Book>>) {
    while !conn.is_closed() {
        tokio::time::sleep(ACK_WITHIN / 4).await;
        let due: Vec<String> = {
            let mut b = lock(&book);
            let mut due = Vec::new();
            let mut faults = Vec::new();
            for (id, e) in b.envelopes.iter_mut() {
                if e.conn == index && !e.acked && e.sent.elapsed() > ACK_WITHIN {
                    e.attempts += 1;
                    e.sent = Instant::now();
                    faults.push(format!("{id} not acknowledged in time: sent again"));
                    due.push(format!(
                        r#"{},"retry_attempt":{},"retry_reason":"timeout"}}"#,
                        e.body, e.attempts
                    ));
                }
            }
            b.faults.extend(faults);
            due
        };
        for m in due {
            let _ = conn.send_text(&m).await;
        }
    }
    let mut b = lock(&book);
    let left: Vec<String> = b
        .envelopes
        .iter()
        .filter(|(_, e)| e.conn == index && !e.acked)
        .map(|(id, _)| format!("{id} never acknowledged on its connection"))
        .collect();
    b.faults.extend(left);
}

/// The recipe with the fake's discovery URL and app token.
fn slack_recipe(slack: &FakeSlack) -> ws_sidecar::config::Config {
    let text = std::fs::read_to_string(format!(
        "{}/docs/recipes/slack-socket-mode.toml",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("recipe");
    let written = crate::support::daemon::parse_config(&text);
    let mut url = written.endpoints["slack"].url.clone();
    let UrlSource::Discover(Discovery::Http(h)) = &mut url else {
        panic!("the recipe discovers its URL by HTTP");
    };
    h.url = url::Url::parse(&slack.mode.url).expect("discovery URL");
    h.token = Some(Secret::Plain(APP_TOKEN.into()));
    recipe(
        "slack-socket-mode",
        "slack",
        "ws://unused.invalid/",
        move |ep| {
            ep.url = url;
            ep.backoff.max = Duration::from_millis(200);
        },
    )
}

#[tokio::test]
async fn every_envelope_is_acknowledged_and_delivered_once_across_a_refresh() {
    let slack = FakeSlack::start().await;
    let d = start_with(slack_recipe(&slack)).await;
    let mut client = d.grpc().await;
    let mut sub = subscribe(&mut client, "slack", None).await;

    let c1 = slack.next_connection().await;
    d.wait_state("slack", State::Connected, T).await;
    for n in 0..5 {
        c1.envelope(n).await;
    }
    slack.wait_acked(5).await;

    // Slack refreshes the connection: the old one keeps working until the new one is up.
    c1.disconnect("refresh_requested").await;
    for n in 5..8 {
        c1.envelope(n).await;
    }
    let c2 = slack.next_connection().await;
    let close = tokio::time::timeout(T, c1.conn.closed())
        .await
        .expect("the old connection is closed once the new one said hello");
    assert_eq!(close.map(|c| c.code), Some(1000));
    for n in 8..12 {
        c2.envelope(n).await;
    }
    slack.wait_acked(12).await;

    // Slack warns, then closes the connection itself a while later.
    c2.disconnect("warning").await;
    let c3 = slack.next_connection().await;
    for n in 12..15 {
        c3.envelope(n).await;
    }
    tokio::time::timeout(T, c2.conn.closed())
        .await
        .expect("closed by the client before Slack had to");
    slack.wait_acked(15).await;

    for n in 0..15 {
        let m = next_message(&mut sub, T).await;
        let v: serde_json::Value = serde_json::from_slice(&m.data).expect("json");
        assert_eq!(v["type"], "events_api", "only envelopes reach apps: {v}");
        assert_eq!(
            v["payload"]["event"]["n"], n,
            "each envelope once, in order"
        );
        assert_eq!(v["retry_attempt"], 0);
    }
    // Past the acknowledgement limit: nothing came again, and nothing else reached apps.
    tokio::time::sleep(ACK_WITHIN + ACK_WITHIN / 2).await;
    while let Ok(Ok(Some(ev))) =
        tokio::time::timeout(Duration::from_millis(200), sub.message()).await
    {
        if let Some(ws_sidecar::proto::event::Event::Message(m)) = ev.event {
            panic!("more than the envelopes reached apps: {m:?}");
        }
    }
    let faults = slack.faults();
    assert!(faults.is_empty(), "the fake Slack saw: {faults:#?}");
    assert_eq!(
        slack.mode.calls(),
        3,
        "one apps.connections.open per connection"
    );
    assert!(slack.mode.refused().is_empty(), "no ticket used twice");
    d.stop().await;
}
