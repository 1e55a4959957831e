//! The status page's feed, `GET /events`, read with a real HTTP client over a real socket:
//! framing, what a snapshot holds, state events ahead of the snapshots, the viewer bound, and
//! that shutdown ends the stream cleanly. And `GET /` itself: one self-contained file.

use std::sync::atomic::Ordering;
use std::time::Duration;

use ws_sidecar::api::status_page::{MAX_VIEWERS, RETRY};
use ws_sidecar::endpoint::State;

use crate::sse::{End, Sse};
use crate::support::daemon::start_daemon;
use crate::support::{FakeUpstream, Reply};
use crate::T;

/// A daemon with one endpoint `a` whose URL carries a secret, pinging every 100 ms.
fn config(url: &str) -> String {
    format!(
        "[http]\nlisten = \"127.0.0.1:0\"\n[endpoints.a]\nurl = \"{url}\"\n\
         [endpoints.a.heartbeat]\nping_interval = \"100ms\"\n\
         [endpoints.a.backoff]\ninitial = \"50ms\"\nmax = \"100ms\"\nmin_delay = \"20ms\"\n"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn events_frame_snapshots_with_history_rates_and_state_changes() {
    let (up, accept) = FakeUpstream::start_gated(true, 503).await;
    let d = start_daemon(&config(&up.url("/feed?api_key=hunter2"))).await;
    let addr = d.http.expect("http listener");
    let conn = up.next_accepted_within(T).await.expect("connects");
    d.wait_state("a", State::Connected, T).await;

    let mut sse = Sse::open(addr, "GET", "/events", T).await;
    assert_eq!(sse.status, 200);
    assert_eq!(sse.header("content-type"), "text/event-stream");
    assert_eq!(sse.header("cache-control"), "no-cache");

    // The reconnect delay first, then a snapshot carrying the history.
    let first = sse.next(T).await.expect("first block");
    assert_eq!(first.retry, Some(RETRY.as_millis() as u64), "{first:?}");
    assert!(first.data.is_none(), "{first:?}");
    let snap = sse.next(T).await.expect("a snapshot");
    assert!(snap.is_snapshot(), "{snap:?}");
    let raw = snap.data.clone().unwrap_or_default();
    assert!(!raw.contains("hunter2"), "a secret reached the feed: {raw}");
    let v = snap.json();
    assert_eq!(v["window_secs"], 3600);
    assert!(
        v["at_unix_ms"].as_u64().unwrap_or(0) > 1_600_000_000_000,
        "{v}"
    );
    let a = &v["endpoints"][0];
    assert_eq!(a["name"], "a", "{v}");
    assert_eq!(a["state"], "connected", "{v}");
    assert!(a["url"].as_str().unwrap_or("").contains("***"), "{v}");
    assert!(
        a["messages_per_second"].is_null(),
        "no rate before a second read: {v}"
    );
    let states: Vec<&str> = a["history"]
        .as_array()
        .unwrap_or_else(|| panic!("history in the first snapshot: {v}"))
        .iter()
        .map(|c| c["state"].as_str().unwrap_or("?"))
        .collect();
    // `starting`, then each attempt's `connecting to …`, then `connected`.
    assert_eq!(states.first(), Some(&"connecting"), "{v}");
    assert_eq!(states.last(), Some(&"connected"), "{v}");
    assert_eq!(a["history"][0]["reason"], "starting", "{v}");

    // Messages show in the seq and the rate; pongs in the RTT; the history is not sent again.
    for i in 0..5 {
        conn.send_text(&format!("m{i}")).await.expect("send");
    }
    let moved = sse
        .until(T, |b| {
            b.is_snapshot() && {
                let a = &b.json()["endpoints"][0];
                a["last_seq"] == 5 && a["rtt_ms"].as_f64().is_some()
            }
        })
        .await
        .json();
    let a = &moved["endpoints"][0];
    assert!(a.get("history").is_none(), "history sent twice: {moved}");
    assert_eq!(a["subscribers"], 0, "{moved}");
    assert_eq!(a["outbox_depth"], 0, "{moved}");
    let rate = sse
        .until(T, |b| b.is_snapshot())
        .await
        .json()
        .get("endpoints")
        .and_then(|e| e[0]["messages_per_second"].as_f64());
    assert!(rate.is_some(), "a rate from the second snapshot on");

    // A state change comes as its own event, with the upstream's reason as sent, and ahead of
    // any snapshot that shows it.
    accept.store(false, Ordering::SeqCst);
    conn.close(1011, "<b>restart</b>").await.expect("close");
    let deadline = tokio::time::Instant::now() + T;
    let change = loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let b = sse.next(left).await.expect("stream goes on");
        if b.event.as_deref() == Some("state") {
            break b.json();
        }
        assert!(b.is_snapshot(), "{b:?}");
        assert_eq!(
            b.json()["endpoints"][0]["state"],
            "connected",
            "a snapshot showed the change before its event"
        );
    };
    assert_eq!(change["endpoint"], "a", "{change}");
    assert_eq!(change["state"], "backoff", "{change}");
    assert!(
        change["reason"]
            .as_str()
            .unwrap_or("")
            .contains("<b>restart</b>"),
        "{change}"
    );
    assert!(change["at_unix_ms"].as_u64().unwrap_or(0) > 1_600_000_000_000);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn events_are_bounded_to_max_viewers_and_a_closed_one_frees_its_place() {
    let up = FakeUpstream::start_with(|_, _| Reply::Accept).await;
    let d = start_daemon(&config(&up.url("/"))).await;
    let addr = d.http.expect("http listener");

    let mut open = Vec::new();
    for _ in 0..MAX_VIEWERS {
        let mut s = Sse::open(addr, "GET", "/events", T).await;
        assert_eq!(s.status, 200);
        s.next(T).await.expect("retry block");
        open.push(s);
    }
    let refused = Sse::open(addr, "GET", "/events", T).await;
    assert_eq!(refused.status, 503);
    assert_eq!(refused.header("retry-after"), "10");
    let body = refused.text(T).await;
    assert!(
        body.starts_with(&format!(
            "too many status page viewers (at most {MAX_VIEWERS} at once)"
        )),
        "{body}"
    );
    // The rest of the listener still answers.
    let (status, _) = crate::http_async(addr, "GET", "/healthz").await;
    assert_eq!(status, 200);
    let head = Sse::open(addr, "HEAD", "/events", T).await;
    assert_eq!(head.status, 200, "HEAD holds no place");

    // A viewer that goes frees its place once the daemon notices (at its next write).
    drop(open.pop());
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let s = Sse::open(addr, "GET", "/events", T).await;
        if s.status == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the closed viewer's place was never freed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(open);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_ends_the_event_stream_cleanly_and_promptly() {
    let up = FakeUpstream::start_with(|_, _| Reply::Accept).await;
    let d = start_daemon(&config(&up.url("/"))).await;
    let addr = d.http.expect("http listener");
    let mut sse = Sse::open(addr, "GET", "/events", T).await;
    sse.until(T, |b| b.is_snapshot()).await;

    let stopping = tokio::time::Instant::now();
    let stop = tokio::spawn(d.stop());
    let end = loop {
        match sse.next(T).await {
            Ok(_) => continue,
            Err(end) => break end,
        }
    };
    // Ended by the daemon, not cut off when the connection's drain time ran out.
    assert_eq!(end, End::Clean);
    let took = stopping.elapsed();
    assert!(
        took < Duration::from_millis(900),
        "stream ended after {took:?}"
    );
    stop.await.expect("daemon stopped");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_page_is_one_self_contained_file() {
    let up = FakeUpstream::start_with(|_, _| Reply::Accept).await;
    let d = start_daemon(&config(&up.url("/"))).await;
    let addr = d.http.expect("http listener");
    let page = Sse::open(addr, "GET", "/", T).await;
    assert_eq!(page.status, 200);
    assert_eq!(page.header("content-type"), "text/html; charset=utf-8");
    let csp = page.header("content-security-policy").to_owned();
    assert!(csp.starts_with("default-src 'none'"), "{csp}");
    assert!(csp.contains("connect-src 'self'"), "{csp}");
    let html = page.text(T).await;
    assert!(html.starts_with("<!doctype html>"), "{}", &html[..40]);
    for external in ["http://", "https://", "src=", "<link", "@import", "url("] {
        assert!(!html.contains(external), "the page refers to {external:?}");
    }
    // Data goes in as text, never as markup.
    assert!(!html.contains("innerHTML"), "the page uses innerHTML");
    assert!(html.contains("new EventSource(\"events\")"));
    d.stop().await;
}
