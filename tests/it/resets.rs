//! Upstream ids that start again (issue 12, item 1): a reset is delivered, reported and
//! counted, never dropped as duplicates; `resume.scope = "connection"`; the operator's
//! `ResetResume`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use ws_sidecar::endpoint::State;
use ws_sidecar::proto::event::Event as Ev;
use ws_sidecar::proto::sidecar_client::SidecarClient;
use ws_sidecar::proto::{self, GapReason};

use crate::support::daemon::{next_event, start_daemon, subscribe};
use crate::support::{since_param, tick_message, FakeUpstream, Reply, UpConn};

const T: Duration = Duration::from_secs(10);

fn config(url: &str, resume: &str, extra: &str) -> String {
    format!(
        "[endpoints.feed]\nurl = \"{url}\"\n{extra}\n[endpoints.feed.backoff]\ninitial = \"10ms\"\nmax = \"50ms\"\nmin_delay = \"5ms\"\n[endpoints.feed.resume]\nid_pointer = \"/id\"\n{resume}\n"
    )
}

/// A message of the upstream's second life: same ids, other content.
fn reborn(id: u64) -> String {
    format!(r#"{{"id":{id},"type":"tick","payload":"after restart {id}"}}"#)
}

/// Events up to and including the `n`-th message, state changes left out.
async fn events(s: &mut tonic::Streaming<proto::Event>, n: usize) -> Vec<Ev> {
    let mut out = Vec::new();
    let mut messages = 0;
    while messages < n {
        match next_event(s, T).await {
            Ev::State(_) => {}
            e => {
                messages += usize::from(matches!(e, Ev::Message(_)));
                out.push(e);
            }
        }
    }
    out
}

/// `ResetResume` for endpoint `name`.
async fn reset_resume(
    c: &mut SidecarClient<tonic::transport::Channel>,
    name: &str,
) -> Result<proto::ResetResumeResponse, tonic::Status> {
    c.reset_resume(proto::ResetResumeRequest {
        endpoint: name.into(),
    })
    .await
    .map(tonic::Response::into_inner)
}

fn data(e: &Ev) -> String {
    match e {
        Ev::Message(m) => String::from_utf8_lossy(&m.data).into_owned(),
        other => panic!("expected a message, got {other:?}"),
    }
}

#[tokio::test]
async fn ids_that_start_again_are_delivered_after_an_upstream_reset_gap() {
    let up = FakeUpstream::start_with(|_, _| Reply::Accept).await;
    let d = start_daemon(&config(
        &up.url("/feed"),
        "query = \"since\"\ncontiguous = true",
        "",
    ))
    .await;
    let c1 = up.next_accepted_within(T).await.expect("connects");
    d.wait_state("feed", State::Connected, T).await;
    let mut c = d.grpc().await;
    let mut s = subscribe(&mut c, "feed", None).await;
    let mut nd = d.ndjson().await;
    nd.send(serde_json::json!({"op": "subscribe", "endpoint": "feed"}))
        .await;
    nd.recv_type("state", T).await;
    for id in 1..=1000 {
        c1.send_text(&tick_message(id)).await.expect("send");
    }
    let first = events(&mut s, 1000).await;
    assert!(first.iter().all(|e| matches!(e, Ev::Message(_))));
    c1.close(1001, "restarting").await.expect("close");

    // The upstream restarted: it ignores `since` and counts from 1 again.
    let c2 = up.next_accepted_within(T).await.expect("reconnects");
    assert_eq!(
        since_param(c2.uri()),
        Some(1000),
        "the position was offered"
    );
    for id in 1..=3 {
        c2.send_text(&reborn(id)).await.expect("send");
    }
    let after = events(&mut s, 3).await;
    match &after[0] {
        Ev::Gap(g) => {
            assert_eq!(g.reason, GapReason::UpstreamReset as i32, "{g:?}");
            assert_eq!(
                (g.from_seq, g.to_seq),
                (1000, 1),
                "last id before, first after"
            );
        }
        other => panic!("expected an UPSTREAM_RESET gap first, got {other:?}"),
    }
    let got: Vec<String> = after[1..].iter().map(data).collect();
    assert_eq!(
        got,
        vec![reborn(1), reborn(2), reborn(3)],
        "nothing dropped"
    );
    match &after[1] {
        Ev::Message(m) => assert_eq!(m.seq, 1001),
        _ => unreachable!(),
    }
    // The NDJSON subscriber is told the same.
    let gap = nd.recv_type("gap", T).await;
    assert_eq!(gap["reason"], "UPSTREAM_RESET");
    assert_eq!(
        (gap["from_seq"].as_u64(), gap["to_seq"].as_u64()),
        (Some(1000), Some(1))
    );

    let ep = d.endpoint("feed");
    assert_eq!(ep.stats.upstream_id_resets.load(Ordering::Relaxed), 1);
    assert_eq!(ep.stats.duplicates_dropped.load(Ordering::Relaxed), 0);
    assert_eq!(ep.last_upstream_id(), "3");
    // A genuine resend after the reset is still a duplicate; the next connection resumes at 3.
    c2.send_text(&reborn(3)).await.expect("send");
    c2.send_text(&reborn(4)).await.expect("send");
    assert_eq!(data(&events(&mut s, 1).await[0]), reborn(4));
    assert_eq!(ep.stats.duplicates_dropped.load(Ordering::Relaxed), 1);
    c2.close(1001, "again").await.expect("close");
    let c3 = up.next_accepted_within(T).await.expect("reconnects");
    assert_eq!(since_param(c3.uri()), Some(4));
    d.stop().await;
}

#[tokio::test]
async fn connection_scope_compares_ids_within_one_connection_only() {
    let up = FakeUpstream::start_with(|_, _| Reply::Accept).await;
    let d = start_daemon(&config(
        &up.url("/feed"),
        "scope = \"connection\"\ncontiguous = true",
        "",
    ))
    .await;
    let mut c = d.grpc().await;
    let mut s = subscribe(&mut c, "feed", None).await;
    let c1: UpConn = up.next_accepted_within(T).await.expect("connects");
    for id in [1, 2, 2, 4] {
        c1.send_text(&tick_message(id)).await.expect("send");
    }
    let got = events(&mut s, 3).await;
    match &got[2] {
        Ev::Gap(g) => {
            assert_eq!(g.reason, GapReason::UpstreamGap as i32);
            assert_eq!((g.from_seq, g.to_seq), (3, 3));
        }
        other => panic!("gap within the connection expected, got {other:?}"),
    }
    c1.close(1001, "bye").await.expect("close");
    let c2 = up.next_accepted_within(T).await.expect("reconnects");
    assert_eq!(c2.uri().query(), None, "nothing to resume from");
    for id in 1..=2 {
        c2.send_text(&tick_message(id)).await.expect("send");
    }
    let got = events(&mut s, 2).await;
    assert!(
        got.iter().all(|e| matches!(e, Ev::Message(_))),
        "a new connection's ids start afresh: no gap, no reset, no duplicate: {got:?}"
    );
    let ep = d.endpoint("feed");
    assert_eq!(ep.stats.upstream_id_resets.load(Ordering::Relaxed), 0);
    assert_eq!(ep.stats.duplicates_dropped.load(Ordering::Relaxed), 1);
    d.stop().await;
}

#[tokio::test]
async fn reset_resume_forgets_the_position_in_memory_and_store() {
    let up = FakeUpstream::start_with(|_, _| Reply::Accept).await;
    let d = start_daemon(&config(&up.url("/feed"), "query = \"since\"", "")).await;
    let c1 = up.next_accepted_within(T).await.expect("connects");
    let mut c = d.grpc().await;
    let mut s = subscribe(&mut c, "feed", None).await;
    for id in 1..=10 {
        c1.send_text(&tick_message(id)).await.expect("send");
    }
    events(&mut s, 10).await;

    let r = reset_resume(&mut c, "feed").await.expect("reset accepted");
    assert_eq!(r.previous_id, "10");
    let c2 = up.next_accepted_within(T).await.expect("reconnects");
    assert_eq!(
        since_param(c2.uri()),
        None,
        "the forgotten position is not offered"
    );
    c2.send_text(&reborn(1)).await.expect("send");
    let got = events(&mut s, 1).await;
    assert_eq!(got.len(), 1, "no gap after an operator's reset: {got:?}");
    assert_eq!(data(&got[0]), reborn(1));
    let missing = reset_resume(&mut c, "nope")
        .await
        .expect_err("unknown endpoint");
    assert_eq!(missing.code(), tonic::Code::NotFound);
    let store_path = d.dir.path().join("store");
    // Reset again: the store is cleared as well, so a restart would not offer it either.
    let r = reset_resume(&mut c, "feed").await.expect("reset accepted");
    assert_eq!(r.previous_id, "1");
    d.stop().await;
    let store = ws_sidecar::store::Store::open(&store_path).expect("store");
    let limits = ws_sidecar::store::RestoreLimits {
        replay_messages: 10,
        recent_ids: 10,
    };
    let restored = store.restore("feed", limits).expect("restore");
    assert_eq!(restored.upstream_id, None, "gone from the store");
    assert!(restored.recent_ids.is_empty(), "and the ids remembered");
    store.close();
}

#[tokio::test]
async fn reset_resume_is_refused_where_no_position_is_kept() {
    let up = FakeUpstream::start_with(|_, _| Reply::Accept).await;
    let d = start_daemon(&format!(
        "[endpoints.plain]\nurl = \"{0}\"\n[endpoints.conn]\nurl = \"{0}\"\nresume = {{ id_pointer = \"/id\", scope = \"connection\" }}\n",
        up.url("/feed")
    ))
    .await;
    d.wait_state("plain", State::Connected, T).await;
    d.wait_state("conn", State::Connected, T).await;
    let mut c = d.grpc().await;
    for (name, why) in [
        ("plain", "has no resume configured"),
        ("conn", "no position is kept"),
    ] {
        let refused = reset_resume(&mut c, name)
            .await
            .expect_err("nothing to forget");
        assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{name}");
        assert!(
            refused.message().contains(why),
            "{name}: {}",
            refused.message()
        );
    }
    // Nothing was reconnected for it.
    assert_eq!(up.accepted(), 2);
    assert_eq!(
        d.endpoint("plain").stats.reconnects.load(Ordering::Relaxed),
        0
    );
    d.stop().await;
}

#[tokio::test]
async fn reset_resume_needs_the_publish_access() {
    let up = FakeUpstream::start_with(|_, _| Reply::Accept).await;
    let d = start_daemon(&config(
        &up.url("/feed"),
        "query = \"since\"",
        "[endpoints.feed.access]\npublish = [\"uid:4242424\"]",
    ))
    .await;
    let mut c = d.grpc().await;
    let denied = reset_resume(&mut c, "feed").await.expect_err("refused");
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
    d.stop().await;
}
