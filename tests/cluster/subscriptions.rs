//! Shared subscriptions across a fleet (`src/cluster/sharing.rs`): apps on any host hold keys,
//! the leader's one connection subscribes each key once, and every host's apps get their
//! keys' messages from the endpoint's stream. The fake Binance enforces its subscribe protocol
//! and its rate limit on inbound frames.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio_stream::StreamExt;
use ws_sidecar::cluster::interest::{HeldKey, Interest};
use ws_sidecar::cluster::slot::Role;
use ws_sidecar::proto::{self, event::Event as Ev};

use crate::support::binance::{next_trade, shared_config, stream_requests, FakeBinance, Rules};
use crate::support::daemon::{attach, TestDaemon};
use crate::support::nats::NatsServer;

/// Bounds every wait.
const WAIT: Duration = Duration::from_secs(20);

const BTC: &str = "btcusdt@trade";
const ETH: &str = "ethusdt@trade";

/// A fake Binance allowing 10 inbound frames per 200 ms, trading BTC and ETH every 2 ms.
fn binance() -> FakeBinance {
    let up = FakeBinance::start(Rules {
        messages: 10,
        per: Duration::from_millis(200),
        ping_every: None,
    });
    up.feed(&[BTC, ETH], Duration::from_millis(2));
    up
}

async fn host(server: &NatsServer, up: &FakeBinance, name: &str) -> TestDaemon {
    crate::clustered_daemon(server, &shared_config(&up.url()), "bn", name).await
}

fn pair(method: &str, stream: &str) -> (String, String) {
    (method.to_owned(), stream.to_owned())
}

/// Waits for the key state `want` of `key` on an app's stream, skipping messages.
async fn key_state(s: &mut tonic::Streaming<proto::Event>, key: &str, want: proto::KeyState) {
    loop {
        let ev = tokio::time::timeout(WAIT, s.next())
            .await
            .unwrap_or_else(|_| panic!("{key} not {want:?} in time"))
            .expect("stream open")
            .expect("stream ok");
        if let Some(Ev::Key(k)) = ev.event {
            if k.key == key && k.state == want as i32 {
                return;
            }
        }
    }
}

/// The next `n` trades an app gets as (seq, stream), failing on a gap.
async fn trades(s: &mut tonic::Streaming<proto::Event>, n: usize) -> Vec<(u64, String)> {
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        let (seq, stream, _) = next_trade(s, WAIT).await;
        got.push((seq, stream));
    }
    got
}

/// Keys held on two hosts: one SUBSCRIBE per key on the leader's connection, each app gets
/// its keys' trades (a follower's from the stream), and a key is unsubscribed only when the
/// last holder on any host lets go of it.
#[tokio::test(flavor = "multi_thread")]
async fn keys_held_on_any_host_are_subscribed_once_on_the_leaders_connection() {
    let Some(server) = NatsServer::start("keys_held_on_any_host").await else {
        return;
    };
    let up = binance();
    let a = host(&server, &up, "host-a").await;
    crate::wait_role(&a, "bn", Role::Leader).await;
    let b = host(&server, &up, "host-b").await;
    crate::wait_role(&b, "bn", Role::Follower).await;

    let mut on_b = attach(&mut b.grpc().await, "bn", &[BTC]).await;
    key_state(&mut on_b, BTC, proto::KeyState::Subscribed).await;
    let got = trades(&mut on_b, 20).await;
    assert!(got.iter().all(|(_, s)| s == BTC), "only its key: {got:?}");

    let mut on_a = attach(&mut a.grpc().await, "bn", &[BTC, ETH]).await;
    key_state(&mut on_a, ETH, proto::KeyState::Subscribed).await;
    let got = trades(&mut on_a, 40).await;
    assert!(got.iter().any(|(_, s)| s == ETH), "{got:?}");
    let got = trades(&mut on_b, 40).await;
    assert!(
        got.iter().all(|(_, s)| s == BTC),
        "still only its key: {got:?}"
    );
    assert_eq!(
        stream_requests(&up.received()),
        BTreeMap::from([(0, vec![pair("SUBSCRIBE", BTC), pair("SUBSCRIBE", ETH)])]),
        "one connection, one SUBSCRIBE per key"
    );

    // The follower's app leaves: the leader's app still holds BTC, so nothing is sent; then
    // the leader's app leaves ETH and BTC: both go.
    drop(on_b);
    let mut on_a2 = attach(&mut a.grpc().await, "bn", &[ETH]).await;
    key_state(&mut on_a2, ETH, proto::KeyState::Subscribed).await;
    drop(on_a);
    up.wait_for(WAIT, |all| {
        stream_requests(all)
            .get(&0)
            .is_some_and(|l| l.contains(&pair("UNSUBSCRIBE", BTC)))
    })
    .await
    .expect("BTC unsubscribed once nobody on any host holds it");
    drop(on_a2);
    let all = up
        .wait_for(WAIT, |all| {
            stream_requests(all)
                .get(&0)
                .is_some_and(|l| l.contains(&pair("UNSUBSCRIBE", ETH)))
        })
        .await
        .expect("ETH unsubscribed");
    assert_eq!(
        stream_requests(&all)[&0],
        [
            pair("SUBSCRIBE", BTC),
            pair("SUBSCRIBE", ETH),
            pair("UNSUBSCRIBE", BTC),
            pair("UNSUBSCRIBE", ETH)
        ],
        "BTC went only after the follower's app and the leader's both left"
    );
    assert_eq!(up.connections(), 1, "only the leader connects");
    assert_eq!(up.rate_closes(), 0);
    a.stop().await;
    b.stop().await;
}

/// The leader stops: the next leader subscribes on its new connection what every host's apps
/// hold, and a host joining later gets its keys subscribed by that leader.
#[tokio::test(flavor = "multi_thread")]
async fn the_next_leader_subscribes_what_every_host_holds() {
    let Some(server) = NatsServer::start("the_next_leader_subscribes").await else {
        return;
    };
    let up = binance();
    let a = host(&server, &up, "host-a").await;
    crate::wait_role(&a, "bn", Role::Leader).await;
    let b = host(&server, &up, "host-b").await;
    crate::wait_role(&b, "bn", Role::Follower).await;
    let mut on_b = attach(&mut b.grpc().await, "bn", &[BTC]).await;
    key_state(&mut on_b, BTC, proto::KeyState::Subscribed).await;
    let before = trades(&mut on_b, 10).await;

    a.stop().await;
    crate::wait_role(&b, "bn", Role::Leader).await;
    let after = trades(&mut on_b, 20).await;
    assert!(after.iter().all(|(_, s)| s == BTC), "{after:?}");
    let seqs: Vec<u64> = before.iter().chain(&after).map(|(q, _)| *q).collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "no hole, no duplicate across the failover: {seqs:?}"
    );

    let c = host(&server, &up, "host-c").await;
    crate::wait_role(&c, "bn", Role::Follower).await;
    let mut on_c = attach(&mut c.grpc().await, "bn", &[ETH]).await;
    key_state(&mut on_c, ETH, proto::KeyState::Subscribed).await;
    let got = trades(&mut on_c, 20).await;
    assert!(got.iter().all(|(_, s)| s == ETH), "{got:?}");
    let asked = stream_requests(&up.received());
    assert_eq!(asked.len(), 2, "two connections, one per leader: {asked:?}");
    assert_eq!(
        asked[&1],
        [pair("SUBSCRIBE", BTC), pair("SUBSCRIBE", ETH)],
        "the new leader subscribed its own app's key, then the new host's"
    );
    b.stop().await;
    c.stop().await;
}

/// A host that stops writing (killed, partitioned) holds nothing one lease TTL later: its
/// entry ages out and the leader unsubscribes what only it held.
#[tokio::test(flavor = "multi_thread")]
async fn a_silent_hosts_keys_are_let_go_of_after_the_ttl() {
    let Some((server, js)) = crate::start("a_silent_hosts_keys").await else {
        return;
    };
    let up = binance();
    let a = host(&server, &up, "host-a").await;
    crate::wait_role(&a, "bn", Role::Leader).await;
    // A host that declares once and is never heard from again.
    let interest = Interest::open(&js, Duration::from_secs(1), 1)
        .await
        .expect("interest bucket");
    let held = [HeldKey {
        key: ETH.to_owned(),
        params: None,
    }];
    interest
        .declare("bn", "host-gone", &held)
        .await
        .expect("declared");
    up.wait_for(WAIT, |all| {
        stream_requests(all)
            .get(&0)
            .is_some_and(|l| l.contains(&pair("SUBSCRIBE", ETH)))
    })
    .await
    .expect("the leader subscribes what the other host declared");
    let all = up
        .wait_for(WAIT, |all| {
            stream_requests(all)
                .get(&0)
                .is_some_and(|l| l.contains(&pair("UNSUBSCRIBE", ETH)))
        })
        .await
        .expect("and lets go of it once that host's entry aged out");
    assert_eq!(
        stream_requests(&all)[&0],
        [pair("SUBSCRIBE", ETH), pair("UNSUBSCRIBE", ETH)]
    );
    a.stop().await;
}

/// `max_per_connection` counts the fleet's keys: a follower's key past it is refused, with
/// the reason, to that follower's app, and taken once another key is let go of.
#[tokio::test(flavor = "multi_thread")]
async fn max_per_connection_counts_every_hosts_keys() {
    let Some(server) = NatsServer::start("max_per_connection_counts").await else {
        return;
    };
    let up = binance();
    let toml = shared_config(&up.url()).replace(
        "[endpoints.bn.subscriptions]\n",
        "[endpoints.bn.subscriptions]\nmax_per_connection = 1\n",
    );
    let a = crate::clustered_daemon(&server, &toml, "bn", "host-a").await;
    crate::wait_role(&a, "bn", Role::Leader).await;
    let b = crate::clustered_daemon(&server, &toml, "bn", "host-b").await;
    crate::wait_role(&b, "bn", Role::Follower).await;
    let mut on_a = attach(&mut a.grpc().await, "bn", &[BTC]).await;
    key_state(&mut on_a, BTC, proto::KeyState::Subscribed).await;
    let mut on_b = attach(&mut b.grpc().await, "bn", &[ETH]).await;
    let reason = loop {
        let ev = tokio::time::timeout(WAIT, on_b.next())
            .await
            .expect("a key state in time")
            .expect("open")
            .expect("ok");
        if let Some(Ev::Key(k)) = ev.event {
            if k.state == proto::KeyState::Refused as i32 {
                break k.reason;
            }
        }
    };
    assert!(reason.contains("max_per_connection"), "{reason}");
    drop(on_a);
    key_state(&mut on_b, ETH, proto::KeyState::Subscribed).await;
    let got = trades(&mut on_b, 10).await;
    assert!(got.iter().all(|(_, s)| s == ETH), "{got:?}");
    a.stop().await;
    b.stop().await;
}
