//! Hot reload (SPEC §4), applied in-process as SIGHUP would: unchanged endpoints keep their
//! connection, subscribers and seq; changed ones reconnect keeping subscribers; removed ones
//! close with 1001 and end their subscriptions with a final state; new ones start.

use std::sync::Arc;
use std::time::Duration;

use ws_sidecar::endpoint::State;
use ws_sidecar::proto::event::Event as Ev;

use crate::support::daemon::{
    next_event, next_message, parse_config, start_daemon, state_name, subscribe,
};
use crate::support::{FakeUpstream, Reply};

const T: Duration = Duration::from_secs(10);

#[tokio::test]
async fn add_change_remove_and_keep_endpoints() {
    let up = FakeUpstream::start_with(|_, _| Reply::Accept).await;
    let base = |extra: &str| {
        format!(
            "[grpc]\nlisten = [\"127.0.0.1:0\"]\n[endpoints.keep]\nurl = \"{}\"\n[endpoints.change]\nurl = \"{}\"\n{extra}",
            up.url("/keep"),
            up.url("/change")
        )
    };
    let gone = format!("[endpoints.gone]\nurl = \"{}\"\n", up.url("/gone"));
    let d = start_daemon(&(base("") + &gone)).await;
    let mut conns = std::collections::HashMap::new();
    for _ in 0..3 {
        let c = up.next_accepted_within(T).await.expect("connects");
        conns.insert(c.uri().path().to_owned(), c);
    }
    for n in ["keep", "change", "gone"] {
        d.wait_state(n, State::Connected, T).await;
    }
    let mut client = d.grpc().await;
    let mut keep_sub = subscribe(&mut client, "keep", None).await;
    let mut change_sub = subscribe(&mut client, "change", None).await;
    let mut gone_sub = subscribe(&mut client, "gone", None).await;
    conns["/keep"].send_text("k1").await.expect("send");
    conns["/change"].send_text("c1").await.expect("send");
    assert_eq!(next_message(&mut keep_sub, T).await.seq, 1);
    assert_eq!(next_message(&mut change_sub, T).await.seq, 1);

    // Nothing may keep a removed endpoint (and its log) alive: a reference cycle would leak
    // its replay window on every reload that removes it.
    let gone_ep = Arc::downgrade(&d.endpoint("gone"));

    // change: a new header; gone: removed; added: new.
    let new = base("headers = { \"X-Version\" = \"2\" }\n")
        + &format!("[endpoints.added]\nurl = \"{}\"\n", up.url("/added"));
    let report = d.reloader.apply(parse_config(&new)).await.expect("reload");
    assert_eq!(report.unchanged, vec!["keep"]);
    assert_eq!(report.changed, vec!["change"]);
    assert_eq!(report.removed, vec!["gone"]);
    assert_eq!(report.added, vec!["added"]);

    let close = tokio::time::timeout(T, conns["/gone"].closed())
        .await
        .expect("gone closes");
    assert_eq!(close.map(|c| c.code), Some(1001));
    let mut last = None;
    while let Ok(Some(ev)) = tokio::time::timeout(T, gone_sub.message())
        .await
        .expect("bounded")
    {
        last = ev.event;
    }
    match last {
        Some(Ev::State(s)) => {
            assert_eq!(state_name(&s), "closed");
            assert!(s.reason.contains("removed"), "{}", s.reason);
        }
        other => panic!("a removed endpoint's stream ends with its closed state: {other:?}"),
    }
    assert!(d.registry.get("gone").is_none());
    drop(gone_sub);
    let freed = tokio::time::timeout(T, async {
        while gone_ep.upgrade().is_some() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(freed.is_ok(), "the removed endpoint is still referenced");

    let mut fresh = Vec::new();
    for _ in 0..2 {
        fresh.push(up.next_accepted_within(T).await.expect("reconnect or new"));
    }
    let changed = fresh
        .iter()
        .find(|c| c.uri().path() == "/change")
        .expect("change reconnected");
    assert_eq!(
        changed.header("x-version"),
        Some("2"),
        "the new settings are in force"
    );
    assert!(
        fresh.iter().any(|c| c.uri().path() == "/added"),
        "added endpoint started"
    );
    d.wait_state("change", State::Connected, T).await;
    d.wait_state("added", State::Connected, T).await;

    // The changed endpoint's subscriber stayed and its seq continues.
    changed.send_text("c2").await.expect("send");
    loop {
        match next_event(&mut change_sub, T).await {
            Ev::Key(k) => panic!("a Subscribe stream carries no key changes: {k:?}"),
            Ev::State(s) => assert_ne!(state_name(&s), "closed", "the subscriber stays"),
            Ev::Message(m) => {
                assert_eq!((m.seq, &m.data[..]), (2, &b"c2"[..]));
                break;
            }
            Ev::Gap(g) => panic!("{g:?}"),
        }
    }
    // The unchanged endpoint was not reconnected and its stream goes on.
    assert!(!conns["/keep"].is_closed());
    conns["/keep"].send_text("k2").await.expect("send");
    assert_eq!(next_message(&mut keep_sub, T).await.seq, 2);
    assert_eq!(
        up.accepted(),
        5,
        "3 at start, the changed one again, the added one"
    );

    // grpc.health.v1 follows: the added endpoint is reported, the removed one is not.
    let addr = d.grpc_tcp.expect("tcp listener");
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("channel");
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let check = |service: &str| tonic_health::pb::HealthCheckRequest {
        service: service.into(),
    };
    tokio::time::timeout(T, async {
        loop {
            let added = health
                .check(check("added"))
                .await
                .map(|r| r.into_inner().status)
                .ok();
            let gone = health.check(check("gone")).await.err().map(|s| s.code());
            if added == Some(1) && gone == Some(tonic::Code::NotFound) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("health follows the reload");
    d.stop().await;
}
