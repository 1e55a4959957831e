//! Error classification (SPEC §5): auth failures, fatal statuses, Retry-After, close codes,
//! close_codes overrides, and leaving `failed` with the Reconnect RPC.

use std::sync::atomic::Ordering;
use std::time::Duration;

use ws_sidecar::endpoint::State;
use ws_sidecar::proto;

use crate::support::daemon::start_daemon;
use crate::support::{FakeUpstream, Reply};

const T: Duration = Duration::from_secs(10);

fn fast(name: &str, url: &str, extra: &str) -> String {
    format!(
        "[endpoints.{name}]\nurl = \"{url}\"\n{extra}\n[endpoints.{name}.backoff]\ninitial = \"20ms\"\nmax = \"100ms\"\nmin_delay = \"10ms\"\n"
    )
}

#[tokio::test]
async fn unauthorized_fails_after_max_failures() {
    let up = FakeUpstream::start_with(|_, _| Reply::reject(401, &[])).await;
    let d = start_daemon(&fast("a", &up.url("/"), "")).await;
    let ev = d.wait_state("a", State::Failed, T).await;
    assert!(
        ev.reason.contains("401"),
        "reason names the status: {}",
        ev.reason
    );
    assert_eq!(up.attempts().len(), 3, "default auth.max_failures is 3");
    d.stop().await;
}

#[tokio::test]
async fn not_found_fails_at_once() {
    let up = FakeUpstream::start_with(|_, _| Reply::reject(404, &[])).await;
    let d = start_daemon(&fast("a", &up.url("/"), "")).await;
    let ev = d.wait_state("a", State::Failed, T).await;
    assert!(ev.reason.contains("404"), "reason: {}", ev.reason);
    assert_eq!(up.attempts().len(), 1);
    d.stop().await;
}

#[tokio::test]
async fn retry_after_is_honoured_for_503_and_429() {
    let u503 = FakeUpstream::start_with(|_, _| Reply::reject(503, &[("Retry-After", "2")])).await;
    let u429 = FakeUpstream::start_with(|_, _| Reply::reject(429, &[("Retry-After", "2")])).await;
    let cfg = fast("s503", &u503.url("/"), "") + &fast("s429", &u429.url("/"), "");
    let d = start_daemon(&cfg).await;
    for up in [&u503, &u429] {
        let at = up.wait_attempts(2, T).await.expect("a retry");
        let gap = at[1].at - at[0].at;
        assert!(
            gap >= Duration::from_millis(1990),
            "retried after {gap:?}, Retry-After was 2 s"
        );
        assert!(gap < Duration::from_millis(3000), "retried late: {gap:?}");
    }
    let ev = d.endpoint("s429").state();
    assert!(ev.state != State::Failed, "429 is retried, not failed");
    d.stop().await;
}

#[tokio::test]
async fn close_1008_fails_and_overrides_apply() {
    let up = FakeUpstream::start_with(|_, _| Reply::Accept).await;
    let overrides = "close_codes = { 1008 = \"retry\", 4000 = \"fail\" }";
    let up2 = FakeUpstream::start_with(|_, _| Reply::Accept).await;
    let up3 = FakeUpstream::start_with(|_, _| Reply::Accept).await;
    let cfg = fast("plain", &up.url("/"), "")
        + &fast("retry1008", &up2.url("/"), overrides)
        + &fast("fail4000", &up3.url("/"), overrides);
    let d = start_daemon(&cfg).await;

    let c = up.next_accepted_within(T).await.expect("connects");
    d.wait_state("plain", State::Connected, T).await;
    c.close(1008, "policy violation").await.expect("close");
    let ev = d.wait_state("plain", State::Failed, T).await;
    assert!(ev.reason.contains("1008"), "reason: {}", ev.reason);

    let c = up2.next_accepted_within(T).await.expect("connects");
    d.wait_state("retry1008", State::Connected, T).await;
    c.close(1008, "policy violation").await.expect("close");
    let _ = up2
        .next_accepted_within(T)
        .await
        .expect("1008 overridden to retry: reconnects");
    assert_ne!(d.endpoint("retry1008").state().state, State::Failed);

    let c = up3.next_accepted_within(T).await.expect("connects");
    d.wait_state("fail4000", State::Connected, T).await;
    c.close(4000, "go away").await.expect("close");
    let ev = d.wait_state("fail4000", State::Failed, T).await;
    assert!(ev.reason.contains("4000"), "reason: {}", ev.reason);
    d.stop().await;
}

#[tokio::test]
async fn reconnect_rpc_leaves_failed() {
    let (up, healthy) = FakeUpstream::start_gated(false, 404).await;
    let d = start_daemon(&fast("a", &up.url("/"), "")).await;
    d.wait_state("a", State::Failed, T).await;

    let mut c = d.grpc().await;
    let refused = c
        .publish(proto::PublishRequest {
            endpoint: "a".into(),
            data: "x".into(),
            ..Default::default()
        })
        .await
        .expect_err("publishing to a failed endpoint is refused");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);

    healthy.store(true, Ordering::SeqCst);
    c.reconnect(proto::ReconnectRequest {
        endpoint: "a".into(),
    })
    .await
    .expect("reconnect accepted");
    d.wait_state("a", State::Connected, T).await;
    let unknown = c
        .reconnect(proto::ReconnectRequest {
            endpoint: "nope".into(),
        })
        .await
        .expect_err("unknown endpoint");
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    d.stop().await;
}
