//! Upstream resume (SPEC §9) and publish idempotency, in-process: ids delivered exactly once
//! across drops, both resume styles, both id kinds, overlapping resends, upstream gaps.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_tungstenite::tungstenite::Message;
use ws_sidecar::endpoint::State;
use ws_sidecar::proto::event::Event as Ev;
use ws_sidecar::proto::{self, GapReason};

use crate::support::daemon::{next_event, next_message, start_daemon, subscribe};
use crate::support::{since_param, tick_id, tick_message, FakeUpstream, Reply, UpConn};

const T: Duration = Duration::from_secs(20);

fn resume_cfg(url: &str, resume: &str) -> String {
    format!(
        "[endpoints.feed]\nurl = \"{url}\"\n[endpoints.feed.backoff]\ninitial = \"10ms\"\nmax = \"50ms\"\nmin_delay = \"5ms\"\n[endpoints.feed.resume]\nid_pointer = \"/id\"\n{resume}\n"
    )
}

/// Sends ids `from..=to` as fast as the socket takes them, resetting the connection after
/// `drop_after` of them if given; true when it reset.
async fn stream_ids(conn: &UpConn, from: u64, to: u64, drop_after: Option<u64>) -> bool {
    for (n, id) in (from..=to).enumerate() {
        if drop_after.is_some_and(|d| n as u64 >= d) {
            let _ = conn.reset().await;
            return true;
        }
        if conn.send_text(&tick_message(id)).await.is_err() {
            return false;
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_by_query_across_20_random_drops_delivers_every_id_once() {
    const LAST: u64 = 10_000;
    let (conns, drops) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (c2, d2) = (Arc::clone(&conns), Arc::clone(&drops));
    let up = FakeUpstream::start_with_handler(
        |_, _| Reply::Accept,
        move |conn| {
            let (conns, drops) = (Arc::clone(&c2), Arc::clone(&d2));
            tokio::spawn(async move {
                let from = since_param(conn.uri()).map_or(1, |s| s + 1);
                // At most 20 × 450 ids before the last drop, so all 20 happen within 10,000.
                let drop_after =
                    (conns.fetch_add(1, Ordering::SeqCst) < 20).then(|| fastrand::u64(20..450));
                if stream_ids(&conn, from, LAST, drop_after).await {
                    drops.fetch_add(1, Ordering::SeqCst);
                }
            });
        },
    )
    .await;
    let d = start_daemon(&resume_cfg(&up.url("/feed"), "query = \"since\"")).await;
    let mut c = d.grpc().await;
    let mut s = subscribe(&mut c, "feed", Some(0)).await;
    let mut expect_id = 1;
    let mut last_seq = 0;
    while expect_id <= LAST {
        let m = next_message(&mut s, T).await;
        let id = tick_id(std::str::from_utf8(&m.data).expect("utf8")).expect("id");
        assert_eq!(id, expect_id, "ids exactly once, in order");
        assert_eq!(m.seq, last_seq + 1, "seq contiguous");
        last_seq = m.seq;
        expect_id += 1;
    }
    assert!(
        drops.load(Ordering::SeqCst) == 20,
        "the upstream dropped 20 times"
    );
    let ep = d.endpoint("feed");
    assert_eq!(ep.last_upstream_id(), LAST.to_string());
    assert!(ep.stats.reconnects.load(Ordering::Relaxed) >= 20);
    d.stop().await;
}

/// An upstream that reads a `{"op":"resume","from":<id>}` frame (integer or string) and
/// resends from there; with `ignore = true` it resends everything from the start instead,
/// which the daemon must deduplicate.
async fn frame_upstream(ids: Vec<String>, per_conn: usize, ignore: bool) -> FakeUpstream {
    let ids = Arc::new(ids);
    let conns = Arc::new(AtomicUsize::new(0));
    FakeUpstream::start_with_handler(
        |_, _| Reply::Accept,
        move |conn| {
            let (ids, conns) = (Arc::clone(&ids), Arc::clone(&conns));
            tokio::spawn(async move {
                let n = conns.fetch_add(1, Ordering::SeqCst);
                // The daemon sends the resume frame right after connecting, when it has an id.
                let mut start = 0;
                if n > 0 {
                    if let Ok(Some(Message::Text(t))) =
                        conn.recv_timeout(Duration::from_secs(5)).await
                    {
                        let v: serde_json::Value =
                            serde_json::from_str(&t).expect("resume frame is JSON");
                        assert_eq!(v["op"], "resume");
                        let from = match &v["from"] {
                            serde_json::Value::String(s) => s.clone(),
                            other => other.to_string(),
                        };
                        let pos = ids.iter().position(|i| *i == from).expect("known id") + 1;
                        start = if ignore { 0 } else { pos };
                    }
                }
                let end = ((n + 1) * per_conn).min(ids.len());
                for id in &ids[start..end.max(start)] {
                    let msg = if id.parse::<u64>().is_ok() {
                        format!(r#"{{"id":{id}}}"#)
                    } else {
                        format!(r#"{{"id":"{id}"}}"#)
                    };
                    if conn.send_text(&msg).await.is_err() {
                        return;
                    }
                }
                if end < ids.len() {
                    let _ = conn.reset().await;
                }
            });
        },
    )
    .await
}

async fn expect_ids(d: &crate::support::daemon::TestDaemon, ids: &[String]) {
    let mut c = d.grpc().await;
    let mut s = subscribe(&mut c, "feed", Some(0)).await;
    for (i, want) in ids.iter().enumerate() {
        let m = next_message(&mut s, T).await;
        let v: serde_json::Value = serde_json::from_slice(&m.data).expect("json");
        let got = match &v["id"] {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        assert_eq!(&got, want, "message {i}");
        assert_eq!(m.seq, i as u64 + 1);
    }
    // Nothing more: a duplicate would show up here.
    let extra = tokio::time::timeout(Duration::from_millis(300), s.message()).await;
    assert!(extra.is_err(), "no duplicate after the last id: {extra:?}");
}

#[tokio::test]
async fn resume_by_frame_with_string_ids() {
    let ids: Vec<String> = (1..=60).map(|i| format!("m-{i:03}")).collect();
    let up = frame_upstream(ids.clone(), 20, false).await;
    let d = start_daemon(&resume_cfg(
        &up.url("/feed"),
        "id_kind = \"string\"\nframe = '{\"op\":\"resume\",\"from\":\"{{last_id}}\"}'",
    ))
    .await;
    expect_ids(&d, &ids).await;
    d.stop().await;
}

#[tokio::test]
async fn overlapping_history_is_deduplicated_for_both_id_kinds() {
    // Integer ids, frame resume, an upstream that resends from the start every time.
    let ids: Vec<String> = (1..=45).map(|i| i.to_string()).collect();
    let up = frame_upstream(ids.clone(), 15, true).await;
    let d = start_daemon(&resume_cfg(
        &up.url("/feed"),
        "frame = '{\"op\":\"resume\",\"from\":{{last_id}}}'",
    ))
    .await;
    expect_ids(&d, &ids).await;
    let dups = d
        .endpoint("feed")
        .stats
        .duplicates_dropped
        .load(Ordering::Relaxed);
    assert_eq!(dups, 15 + 30, "resent history was dropped");
    d.stop().await;

    // String ids, query resume that the upstream ignores.
    let ids: Vec<String> = (1..=30).map(|i| format!("k{i}")).collect();
    let up = frame_upstream(ids.clone(), 10, true).await;
    let d = start_daemon(&resume_cfg(
        &up.url("/feed"),
        "id_kind = \"string\"\nquery = \"after\"\nframe = '{\"op\":\"resume\",\"from\":\"{{last_id}}\"}'",
    ))
    .await;
    expect_ids(&d, &ids).await;
    d.stop().await;
}

#[tokio::test]
async fn contiguous_ids_report_upstream_gaps() {
    let up = FakeUpstream::start_with(|_, _| Reply::Accept).await;
    let d = start_daemon(&resume_cfg(&up.url("/feed"), "contiguous = true")).await;
    let conn = up.next_accepted_within(T).await.expect("connects");
    d.wait_state("feed", State::Connected, T).await;
    let mut c = d.grpc().await;
    let mut s = subscribe(&mut c, "feed", None).await;
    for id in [1, 2, 5] {
        conn.send_text(&tick_message(id)).await.expect("send");
    }
    let mut events = Vec::new();
    while events
        .iter()
        .filter(|e| matches!(e, Ev::Message(_)))
        .count()
        < 3
    {
        match next_event(&mut s, T).await {
            Ev::State(_) => {}
            e => events.push(e),
        }
    }
    match &events[2] {
        Ev::Gap(g) => {
            assert_eq!((g.from_seq, g.to_seq), (3, 4), "the missing upstream ids");
            assert_eq!(g.reason, GapReason::UpstreamGap as i32);
        }
        other => panic!("expected an upstream gap before id 5, got {other:?}"),
    }
    match &events[3] {
        Ev::Message(m) => assert_eq!(m.seq, 3, "local seqs stay contiguous"),
        other => panic!("{other:?}"),
    }
    d.stop().await;
}

#[tokio::test]
async fn idempotency_key_is_queued_once() {
    let up = FakeUpstream::start_with(|_, _| Reply::reject(503, &[])).await;
    let d = start_daemon(&format!("[endpoints.feed]\nurl = \"{}\"\n", up.url("/"))).await;
    let mut c = d.grpc().await;
    let req = |data: &str, key: &str| proto::PublishRequest {
        endpoint: "feed".into(),
        data: data.to_owned().into(),
        idempotency_key: key.into(),
        ..Default::default()
    };
    let a = c
        .publish(req("order-1", "k-1"))
        .await
        .expect("stored")
        .into_inner();
    let b = c
        .publish(req("order-1", "k-1"))
        .await
        .expect("stored")
        .into_inner();
    let other = c
        .publish(req("order-2", "k-2"))
        .await
        .expect("stored")
        .into_inner();
    assert_eq!(a.outbox_id, b.outbox_id, "same key, same entry");
    assert_ne!(a.outbox_id, other.outbox_id);
    let mut nd = d.ndjson().await;
    nd.send(serde_json::json!({"op": "publish", "endpoint": "feed", "data": "order-1", "idempotency_key": "k-1", "id": 9})).await;
    let ack = nd.recv_type("ack", T).await;
    assert_eq!(ack["outbox_id"], a.outbox_id);
    assert_eq!(d.endpoint("feed").outbox.depth(), 2);
    d.stop().await;
}
