//! The HTTP endpoint: `/metrics` parses as Prometheus text and its counters follow the traffic;
//! `/readyz` follows the upstream; `/healthz`, `/status`, unknown paths and methods.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use ws_sidecar::endpoint::State;
use ws_sidecar::proto;

use crate::support::daemon::{next_event, next_message, start_daemon, subscribe};
use crate::support::{FakeUpstream, Reply};
use crate::{http_async, T};

/// One parsed exposition: `name{labels}` → value, checked line by line on the way.
struct Scrape {
    samples: BTreeMap<String, f64>,
}

impl Scrape {
    /// Parses Prometheus text format 0.0.4, asserting every rule a scraper relies on.
    fn parse(text: &str) -> Scrape {
        let mut help = BTreeSet::new();
        let mut types: BTreeMap<String, String> = BTreeMap::new();
        let mut samples = BTreeMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, text) = rest.split_once(' ').expect("HELP name text");
                assert!(!text.is_empty(), "empty HELP for {name}");
                assert!(help.insert(name.to_owned()), "HELP twice for {name}");
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                    "{line}"
                );
                assert!(help.contains(name), "TYPE before HELP for {name}");
                assert!(types.insert(name.to_owned(), kind.to_owned()).is_none());
                continue;
            }
            assert!(
                !line.starts_with('#') && !line.is_empty(),
                "stray line {line:?}"
            );
            let (series, value) = line.rsplit_once(' ').expect("`series value`");
            let value: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("bad value: {line}"));
            let name = series.split('{').next().expect("name");
            assert!(valid_name(name), "invalid metric name {name:?}");
            assert!(name.starts_with("ws_sidecar_"), "{name}");
            let kind = types
                .get(name)
                .unwrap_or_else(|| panic!("sample before its TYPE: {line}"));
            assert_eq!(kind == "counter", name.ends_with("_total"), "{line}");
            if let Some(labels) = series.strip_prefix(name) {
                if !labels.is_empty() {
                    check_labels(labels);
                }
            }
            assert!(
                samples.insert(series.to_owned(), value).is_none(),
                "duplicate series {series}"
            );
        }
        for name in help.iter() {
            assert!(types.contains_key(name), "HELP without TYPE for {name}");
        }
        Scrape { samples }
    }

    /// The value of `series`, e.g. `ws_sidecar_deliveries_total{endpoint="a"}`.
    fn get(&self, series: &str) -> f64 {
        *self
            .samples
            .get(series)
            .unwrap_or_else(|| panic!("no series {series}; have {:?}", self.samples.keys()))
    }
}

fn valid_name(n: &str) -> bool {
    let mut chars = n.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `{k="v",…}` with valid label names and quoted values.
fn check_labels(labels: &str) {
    let inner = labels
        .strip_prefix('{')
        .and_then(|l| l.strip_suffix('}'))
        .unwrap_or_else(|| panic!("labels not in braces: {labels}"));
    for pair in inner.split("\",") {
        let (k, v) = pair.split_once('=').expect("label k=v");
        assert!(valid_name(k) && !k.contains(':'), "label name {k:?}");
        assert!(v.starts_with('"'), "label value not quoted: {labels}");
    }
}

async fn scrape(addr: SocketAddr) -> Scrape {
    let (status, body) = http_async(addr, "GET", "/metrics").await;
    assert_eq!(status, 200, "{body}");
    Scrape::parse(&body)
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_parse_and_counters_follow_traffic() {
    let up = FakeUpstream::start_with(|_, _| Reply::Accept).await;
    let d = start_daemon(&format!(
        "[http]\nlisten = \"127.0.0.1:0\"\n[endpoints.a]\nurl = \"{}\"\n\
         [endpoints.a.replay]\nmessages = 2\n",
        up.url("/")
    ))
    .await;
    let addr = d.http.expect("http listener");
    let conn = up.next_accepted_within(T).await.expect("connects");
    d.wait_state("a", State::Connected, T).await;

    let before = scrape(addr).await;
    let a = |name: &str| format!("{name}{{endpoint=\"a\"}}");
    assert_eq!(
        before.get("ws_sidecar_endpoint_state{endpoint=\"a\",state=\"connected\"}"),
        1.0
    );
    assert_eq!(
        before.get("ws_sidecar_endpoint_state{endpoint=\"a\",state=\"backoff\"}"),
        0.0
    );
    assert_eq!(
        before.get("ws_sidecar_connects_total{endpoint=\"a\",result=\"ok\"}"),
        1.0
    );
    assert_eq!(before.get(&a("ws_sidecar_received_messages_total")), 0.0);

    let mut c = d.grpc().await;
    let mut live = subscribe(&mut c, "a", None).await;
    next_event(&mut live, T).await; // the current state
                                    // One at a time: with a window of 2, a burst could overtake this reader (SLOW_SUBSCRIBER).
    for i in 0..4 {
        conn.send_text(&format!("m{i}")).await.expect("send");
        next_message(&mut live, T).await;
    }
    // Only seqs 3 and 4 are retained: from_seq 1 gets a REPLAY_EXPIRED gap, then both.
    let mut late = subscribe(&mut c, "a", Some(1)).await;
    next_event(&mut late, T).await;
    match next_event(&mut late, T).await {
        proto::event::Event::Gap(g) => assert_eq!((g.from_seq, g.to_seq), (2, 2)),
        other => panic!("expected a gap, got {other:?}"),
    }
    for _ in 0..2 {
        next_message(&mut late, T).await;
    }
    for i in 0..2 {
        c.publish(proto::PublishRequest {
            endpoint: "a".into(),
            data: format!("p{i}").into(),
            ..Default::default()
        })
        .await
        .expect("publish");
    }
    assert_eq!(conn.recv_text().await, "p0");
    assert_eq!(conn.recv_text().await, "p1");

    let after = scrape(addr).await;
    assert_eq!(after.get(&a("ws_sidecar_received_messages_total")), 4.0);
    assert_eq!(after.get(&a("ws_sidecar_received_bytes_total")), 8.0);
    assert_eq!(after.get(&a("ws_sidecar_deliveries_total")), 6.0);
    assert_eq!(
        after.get("ws_sidecar_gaps_total{endpoint=\"a\",reason=\"replay_expired\"}"),
        1.0
    );
    assert_eq!(after.get(&a("ws_sidecar_subscribers")), 2.0);
    assert_eq!(after.get(&a("ws_sidecar_last_seq")), 4.0);
    assert!(after.get(&a("ws_sidecar_endpoint_state_since_timestamp_seconds")) > 1.6e9);
    // The writer counts a batch after its flush, just after the upstream has it.
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let s = scrape(addr).await;
        if s.get(&a("ws_sidecar_sent_messages_total")) == 2.0 {
            assert_eq!(s.get(&a("ws_sidecar_outbox_messages")), 0.0);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "sent count stuck");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn readyz_follows_the_upstream_and_the_other_paths_answer() {
    let (up, accept) = FakeUpstream::start_gated(false, 503).await;
    let d = start_daemon(&format!(
        "[http]\nlisten = \"127.0.0.1:0\"\n[endpoints.a]\nurl = \"{}\"\n\
         [endpoints.a.backoff]\ninitial = \"50ms\"\nmax = \"100ms\"\nmin_delay = \"20ms\"\n",
        up.url("/")
    ))
    .await;
    let addr = d.http.expect("http listener");

    up.wait_attempts(1, T).await.expect("tries to connect");
    let (status, body) = http_async(addr, "GET", "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.starts_with("not ready: a ("), "{body}");

    accept.store(true, Ordering::SeqCst);
    let conn = up.next_accepted_within(T).await.expect("connects");
    d.wait_state("a", State::Connected, T).await;
    assert_eq!(
        http_async(addr, "GET", "/readyz").await,
        (200, "ready\n".into())
    );

    accept.store(false, Ordering::SeqCst);
    conn.close(1011, "restarting").await.expect("close");
    d.wait_state("a", State::Backoff, T).await;
    assert_eq!(http_async(addr, "GET", "/readyz").await.0, 503);

    assert_eq!(
        http_async(addr, "GET", "/healthz").await,
        (200, "ok\n".into())
    );
    let (status, body) = http_async(addr, "GET", "/status").await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).expect("status is JSON");
    assert_eq!(v[0]["name"], "a", "{body}");
    assert_eq!(v[0]["state"], "backoff", "{body}");
    // The same shape as `ws-sidecar status --json`.
    let cli = tokio::process::Command::new(crate::support::process::BIN)
        .args(["status", "--json", "--grpc"])
        .arg(format!("unix:{}", d.grpc_path.display()))
        .output()
        .await
        .expect("status --json");
    let cli: serde_json::Value = serde_json::from_slice(&cli.stdout).expect("cli JSON");
    let keys = |v: &serde_json::Value| -> Vec<String> {
        v[0].as_object().expect("object").keys().cloned().collect()
    };
    assert_eq!(keys(&v), keys(&cli));

    assert_eq!(http_async(addr, "GET", "/nope").await.0, 404);
    assert_eq!(http_async(addr, "POST", "/metrics").await.0, 405);
    assert_eq!(
        http_async(addr, "HEAD", "/healthz").await,
        (200, String::new())
    );
    d.stop().await;
}
