//! The send rate limit (`rate_limit`) against a fake Binance that closes with 1008 as soon as
//! more frames than allowed arrive within one window: every frame the daemon sends (on_connect,
//! outbox, pings, the pongs tungstenite answers with) keeps to it, across reconnects.

use std::time::Duration;

use ws_sidecar::endpoint::State;
use ws_sidecar::proto;

use crate::support::binance::{busiest_window, texts, FakeBinance, Frame, Received, Rules};
use crate::support::daemon::{start_daemon, TestDaemon};

const T: Duration = Duration::from_secs(30);

fn publish(data: String) -> proto::PublishRequest {
    proto::PublishRequest {
        endpoint: "spot".into(),
        data: data.into(),
        ..Default::default()
    }
}

/// `n` SUBSCRIBE frames as Binance wants them, each with its own id.
fn subscribes(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!(r#"{{"method":"SUBSCRIBE","params":["s{i}@trade"],"id":{i}}}"#))
        .collect()
}

fn toml_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| format!("'{s}'")).collect();
    format!("[{}]", quoted.join(", "))
}

async fn publish_all(d: &TestDaemon, n: usize) -> Vec<String> {
    let mut c = d.grpc().await;
    let data: Vec<String> = (0..n).map(|i| format!("p{i}")).collect();
    for p in &data {
        c.publish(publish(p.clone())).await.expect("queued");
    }
    data
}

/// Fails with the window that held too many frames, and what was in it.
fn assert_within(all: &[Received], messages: usize, per: Duration) {
    let (most, at) = busiest_window(all, per);
    assert!(
        most <= messages,
        "{most} frames within {per:?} starting {at:?} after the first frame; at most {messages} allowed"
    );
}

#[tokio::test]
async fn a_reconnect_with_1000_queued_publishes_and_10_on_connect_frames_keeps_the_rate() {
    // 250 frames per 500 ms: 1,020 frames take about 2 s. The fake pings every 700 ms, so
    // the pongs tungstenite sends by itself are part of what is checked.
    let rules = Rules {
        messages: 250,
        per: Duration::from_millis(500),
        ping_every: Some(Duration::from_millis(700)),
    };
    let up = FakeBinance::start(rules);
    let on_connect = subscribes(10);
    let d = start_daemon(&format!(
        r#"
[endpoints.spot]
url = "{}"
on_connect = {}
rate_limit = {{ messages = 250, per = "500ms", control_frames = true }}
[endpoints.spot.heartbeat]
ping_interval = "300ms"
pong_timeout = "5s"
[endpoints.spot.backoff]
initial = "50ms"
max = "200ms"
min_delay = "20ms"
[endpoints.spot.outbox]
durable = false
"#,
        up.url(),
        toml_list(&on_connect)
    ))
    .await;
    up.wait_for(T, |all| texts(all, 0).len() == 10)
        .await
        .expect("first connection subscribes");

    up.set_up(false);
    up.close_all();
    d.wait_state("spot", State::Backoff, T).await;
    let published = publish_all(&d, 1000).await;
    let ep = d.endpoint("spot");
    assert_eq!(ep.outbox.depth(), 1000);
    up.set_up(true);

    let all = up
        .wait_for(T, |all| texts(all, 1).len() >= 1010)
        .await
        .expect("all 1,010 frames arrive on the new connection");
    assert_eq!(up.rate_closes(), 0, "never closed for rate");
    assert_within(&all, rules.messages, rules.per);
    let expected: Vec<String> = on_connect.iter().chain(&published).cloned().collect();
    assert_eq!(texts(&all, 1), expected, "in order, exactly once");
    assert_eq!(texts(&all, 0), on_connect);
    for (what, frame) in [("pings", Frame::Ping), ("pongs", Frame::Pong)] {
        assert!(
            all.iter().any(|r| r.conn == 1 && r.frame == frame),
            "the daemon sent {what}: they are part of what was checked"
        );
    }
    assert_eq!(ep.state().state, State::Connected);
    assert_eq!(up.connections(), 2);

    // Throttling shows in status and metrics.
    assert!(ep.rate.throttled() > 0);
    let mut c = d.grpc().await;
    let st = c
        .get_status(proto::GetStatusRequest {
            endpoint: Some("spot".into()),
        })
        .await
        .expect("status")
        .into_inner();
    assert!(st.endpoints[0].rate_limited > 0);
    assert!(st.endpoints[0].rate_limit_wait_micros > 500_000);
    let metrics = ws_sidecar::metrics::render(&d.registry);
    let line = metrics
        .lines()
        .find(|l| l.starts_with("ws_sidecar_rate_limited_total{endpoint=\"spot\"}"))
        .expect("rate_limited metric");
    assert_ne!(line.rsplit(' ').next(), Some("0"), "{line}");
    d.stop().await;
}

#[tokio::test]
async fn a_reconnect_storm_keeps_the_rate_across_connections() {
    // Each connection is closed right after its first frame; a limiter per connection would
    // send each new connection's three frames at once, within a window of the last ones.
    let rules = Rules {
        messages: 3,
        per: Duration::from_millis(400),
        ping_every: None,
    };
    let up = FakeBinance::start(rules);
    up.close_after_first(4);
    let on_connect = subscribes(3);
    let d = start_daemon(&format!(
        r#"
[endpoints.spot]
url = "{}"
on_connect = {}
rate_limit = {{ messages = 3, per = "400ms" }}
[endpoints.spot.backoff]
initial = "10ms"
max = "50ms"
min_delay = "10ms"
"#,
        up.url(),
        toml_list(&on_connect)
    ))
    .await;
    let all = up
        .wait_for(T, |all| texts(all, 4).len() == 3)
        .await
        .expect("the fifth connection subscribes");
    assert_eq!(up.rate_closes(), 0, "never closed for rate");
    assert_within(&all, rules.messages, rules.per);
    for conn in 0..5 {
        assert_eq!(texts(&all, conn), on_connect, "connection {conn}");
    }
    d.wait_state("spot", State::Connected, T).await;
    d.stop().await;
}

#[tokio::test]
async fn a_ping_waiting_for_its_turn_is_not_a_pong_timeout() {
    // Two frames of the daemon's own per 630 ms (one kept for pongs): a ping due while the
    // outbox drains waits up to that long, beyond the 300 ms pong timeout. The timeout counts
    // from when the ping was written, so the connection stays.
    let rules = Rules {
        messages: 3,
        per: Duration::from_millis(600),
        ping_every: None,
    };
    let up = FakeBinance::start(rules);
    up.set_up(false);
    let d = start_daemon(&format!(
        r#"
[endpoints.spot]
url = "{}"
rate_limit = {{ messages = 3, per = "600ms", control_frames = true }}
[endpoints.spot.heartbeat]
ping_interval = "200ms"
pong_timeout = "300ms"
[endpoints.spot.backoff]
initial = "20ms"
max = "50ms"
min_delay = "10ms"
[endpoints.spot.outbox]
durable = false
"#,
        up.url(),
    ))
    .await;
    d.wait_state("spot", State::Backoff, T).await;
    let published = publish_all(&d, 6).await;
    let ep = d.endpoint("spot");
    let mut events = ep.state_events();
    up.set_up(true);
    let all = up
        .wait_for(T, |all| {
            let drained = texts(all, 0).len() == 6
                && all.iter().filter(|r| r.frame == Frame::Ping).count() >= 3;
            drained || all.iter().any(|r| r.conn > 0)
        })
        .await
        .expect("the outbox drains, pings between its entries");
    let mut lost = Vec::new();
    while let Ok(ev) = events.try_recv() {
        if ev.state != State::Connected && ev.state != State::Connecting {
            lost.push(ev.reason);
        }
    }
    assert_eq!(
        up.connections(),
        1,
        "no reconnect; the connection was lost: {lost:?}"
    );
    assert_eq!(ep.state().state, State::Connected);
    assert_eq!(texts(&all, 0), published);
    assert_eq!(up.rate_closes(), 0);
    assert_within(&all, rules.messages, rules.per);
    let rtt = Duration::from_micros(
        ep.stats
            .rtt_micros
            .load(std::sync::atomic::Ordering::Relaxed),
    );
    assert!(
        rtt < Duration::from_millis(300),
        "rtt {rtt:?} is measured from the write, not from when the ping was due"
    );
    d.stop().await;
}

/// A daemon whose endpoint sends one frame per hour: the second frame waits.
async fn one_frame_an_hour(up: &FakeBinance, on_connect: &[String]) -> TestDaemon {
    start_daemon(&format!(
        r#"
[endpoints.spot]
url = "{}"
on_connect = {}
rate_limit = {{ messages = 1, per = "1h" }}
[endpoints.spot.backoff]
initial = "20ms"
max = "50ms"
min_delay = "10ms"
"#,
        up.url(),
        toml_list(on_connect)
    ))
    .await
}

#[tokio::test]
async fn shutdown_does_not_wait_for_a_turn_and_a_waiting_publish_stays_queued() {
    let up = FakeBinance::start(Rules {
        messages: 1,
        per: Duration::from_secs(3600),
        ping_every: None,
    });
    up.set_up(false);
    let d = one_frame_an_hour(&up, &subscribes(1)).await;
    d.wait_state("spot", State::Backoff, T).await;
    publish_all(&d, 1).await;
    let ep = d.endpoint("spot");
    up.set_up(true);
    up.wait_for(T, |all| texts(all, 0).len() == 1)
        .await
        .expect("the subscribe frame goes at once");
    d.wait_state("spot", State::Connected, T).await;
    // The publish waits an hour for its turn; stopping must not (stop() bounds it).
    d.stop().await;
    let all = up
        .wait_for(T, |all| {
            all.iter().any(|r| matches!(r.frame, Frame::Close(_)))
        })
        .await
        .expect("the upstream is told");
    assert!(
        all.iter().any(|r| r.frame == Frame::Close(Some(1001))),
        "{all:?}"
    );
    assert_eq!(texts(&all, 0), subscribes(1), "the publish was not sent");
    assert_eq!(ep.outbox.depth(), 1, "and is still queued");
}

#[tokio::test]
async fn shutdown_does_not_wait_for_the_turn_of_an_on_connect_frame() {
    let up = FakeBinance::start(Rules {
        messages: 1,
        per: Duration::from_secs(3600),
        ping_every: None,
    });
    let d = one_frame_an_hour(&up, &subscribes(2)).await;
    up.wait_for(T, |all| texts(all, 0).len() == 1)
        .await
        .expect("the first subscribe frame goes at once");
    d.stop().await;
    assert_eq!(texts(&up.received(), 0), subscribes(1));
}
