//! Shared subscriptions and requests (issue 14), end to end against fakes that enforce their
//! protocol: several apps hold overlapping keys and each gets only its keys' messages while the
//! upstream sees one subscribe per key; requests with colliding ids get their own replies.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tokio_stream::StreamExt;
use ws_sidecar::proto::{self, event::Event as Ev};

use crate::support::binance::{
    self, shared_config, stream_requests, FakeBinance, Frame, Received, Rules,
};
use crate::support::daemon::{attach, start_daemon};

const T: Duration = Duration::from_secs(20);

/// The trade number and stream of an app's next message, skipping states and key changes.
async fn next_trade(s: &mut tonic::Streaming<proto::Event>) -> (String, u64) {
    let (_, stream, t) = binance::next_trade(s, T).await;
    (stream, t)
}

/// Three apps with overlapping keys: one SUBSCRIBE per key per connection, the full set again
/// after each of 20 drops (never over the rate limit), each app only its keys' trades, once
/// and in order; an unsubscribe only when a key's last holder leaves.
#[tokio::test]
async fn three_apps_share_one_subscription_per_key_across_drops() {
    let rules = Rules {
        messages: 10,
        per: Duration::from_millis(200),
        ping_every: None,
    };
    let up = FakeBinance::start(rules);
    let streams = [
        "btcusdt@trade",
        "ethusdt@trade",
        "bnbusdt@trade",
        "xrpusdt@trade",
    ];
    up.feed(&streams, Duration::from_millis(2));
    let d = start_daemon(&shared_config(&up.url())).await;
    let mut c = d.grpc().await;
    let mut a = attach(&mut c, "bn", &["btcusdt@trade"]).await;
    let mut b = attach(&mut c, "bn", &["ethusdt@trade", "btcusdt@trade"]).await;
    let mut cc = attach(&mut c, "bn", &["bnbusdt@trade", "ethusdt@trade"]).await;
    let held: [&[&str]; 3] = [
        &["btcusdt@trade"],
        &["ethusdt@trade", "btcusdt@trade"],
        &["bnbusdt@trade", "ethusdt@trade"],
    ];
    let subs = [&mut a, &mut b, &mut cc];
    let mut last: Vec<BTreeMap<String, u64>> = vec![BTreeMap::new(); 3];
    let mut check = |i: usize, (stream, t): (String, u64)| {
        assert!(
            held[i].contains(&stream.as_str()),
            "app {i} got {stream}, not one of its keys"
        );
        let prev = last[i].insert(stream.clone(), t);
        assert!(
            prev.is_none_or(|p| p < t),
            "app {i}: {stream} trade {t} after {prev:?}"
        );
    };
    for (i, s) in subs.into_iter().enumerate() {
        for _ in 0..20 {
            let m = next_trade(s).await;
            check(i, m);
        }
    }
    for drop_no in 0..20 {
        let before = up.connections();
        up.close_all();
        // The new connection (numbered `before`) subscribes the whole held set.
        up.wait_for(T, |all| {
            let subscribed = stream_requests(all).get(&before).map_or(0, |r| r.len());
            subscribed >= 3
        })
        .await
        .unwrap_or_else(|e| panic!("resubscribing after drop {drop_no}: {e}"));
        for (i, s) in [&mut a, &mut b, &mut cc].into_iter().enumerate() {
            for _ in 0..5 {
                let m = next_trade(s).await;
                check(i, m);
            }
        }
    }
    let all = up.received();
    let per_conn = stream_requests(&all);
    for (conn, reqs) in &per_conn {
        let subscribed: Vec<&str> = reqs
            .iter()
            .filter(|(m, _)| m == "SUBSCRIBE")
            .map(|(_, s)| s.as_str())
            .collect();
        let unique: BTreeSet<&str> = subscribed.iter().copied().collect();
        assert_eq!(
            subscribed.len(),
            unique.len(),
            "conn {conn}: a key subscribed twice: {reqs:?}"
        );
        assert_eq!(
            unique,
            BTreeSet::from(["btcusdt@trade", "ethusdt@trade", "bnbusdt@trade"]),
            "conn {conn}: the held set, once each"
        );
        assert!(
            reqs.iter().all(|(m, _)| m == "SUBSCRIBE"),
            "conn {conn}: {reqs:?}"
        );
    }
    assert_eq!(per_conn.len(), 21, "the first connection and one per drop");
    assert_eq!(up.rate_closes(), 0, "never over the rate limit");
    assert_eq!(up.bad_requests(), 0);

    // App A leaves: B still holds btcusdt, nothing is unsubscribed. B leaves: btcusdt goes,
    // ethusdt stays for C.
    let conn = up.connections() - 1;
    drop(a);
    let mut probe = attach(&mut c, "bn", &["xrpusdt@trade"]).await;
    next_trade(&mut probe).await;
    assert!(
        !stream_requests(&up.received())[&conn]
            .iter()
            .any(|(m, _)| m == "UNSUBSCRIBE"),
        "btcusdt is still held by B"
    );
    drop(b);
    let got = up
        .wait_for(T, |all| {
            stream_requests(all)
                .get(&conn)
                .is_some_and(|r| r.iter().any(|(m, _)| m == "UNSUBSCRIBE"))
        })
        .await
        .expect("an UNSUBSCRIBE once the last holder left");
    // Anything else would have come with it; C still gets ethusdt.
    let m = next_trade(&mut cc).await;
    check(2, m);
    let unsubs: Vec<String> = stream_requests(&got)[&conn]
        .iter()
        .filter(|(m, _)| m == "UNSUBSCRIBE")
        .map(|(_, s)| s.clone())
        .collect();
    assert_eq!(unsubs, vec!["btcusdt@trade".to_owned()]);
    // Status shows the held keys with their holders and state.
    let status = c
        .get_status(proto::GetStatusRequest {
            endpoint: Some("bn".into()),
        })
        .await
        .expect("status")
        .into_inner();
    let shown: Vec<(String, u32, String)> = status.endpoints[0]
        .upstream_subscriptions
        .iter()
        .map(|k| (k.key.clone(), k.holders, k.state.clone()))
        .collect();
    let subscribed = |k: &str| (k.to_owned(), 1, "subscribed".to_owned());
    assert_eq!(
        shown,
        vec![
            subscribed("bnbusdt@trade"),
            subscribed("ethusdt@trade"),
            subscribed("xrpusdt@trade")
        ]
    );
    let metrics = ws_sidecar::metrics::render(&d.registry);
    assert!(
        metrics
            .contains(r#"ws_sidecar_upstream_subscriptions{endpoint="bn",state="subscribed"} 3"#),
        "{metrics}"
    );
}

/// Over NDJSON: `subscribe` with a key holds it (a `key` line, then only its messages),
/// `unsubscribe` lets go of it, and a client whose socket closes without a word lets go too.
#[tokio::test]
async fn ndjson_holds_keys_and_lets_go_of_them() {
    let rules = Rules {
        messages: 10,
        per: Duration::from_millis(200),
        ping_every: None,
    };
    let up = FakeBinance::start(rules);
    up.feed(
        &["btcusdt@trade", "ethusdt@trade"],
        Duration::from_millis(2),
    );
    let d = start_daemon(&shared_config(&up.url())).await;
    let mut a = d.ndjson().await;
    let mut b = d.ndjson().await;
    a.send(serde_json::json!({"op": "subscribe", "endpoint": "bn", "key": "btcusdt@trade"}))
        .await;
    b.send(serde_json::json!({"op": "subscribe", "endpoint": "bn", "keys": ["ethusdt@trade"]}))
        .await;
    let k = a.recv_type("key", T).await;
    assert_eq!(k["key"], "btcusdt@trade");
    for _ in 0..20 {
        let m = a.recv_type("message", T).await;
        let v: serde_json::Value =
            serde_json::from_str(m["data"].as_str().expect("text")).expect("JSON");
        assert_eq!(v["stream"], "btcusdt@trade", "only its key");
    }
    // A failed subscribe names what it was for.
    a.send(serde_json::json!({"op": "subscribe", "endpoint": "bn", "key": ""}))
        .await;
    let e = a.recv_type("error", T).await;
    assert_eq!(e["code"], "invalid_argument");
    assert_eq!(
        (e["endpoint"].clone(), e["keys"].clone()),
        (serde_json::json!("bn"), serde_json::json!([""]))
    );
    a.send(serde_json::json!({"op": "unsubscribe", "endpoint": "bn", "key": "btcusdt@trade"}))
        .await;
    let u = a.recv_type("unsubscribed", T).await;
    assert_eq!(u["ended"], 1);
    let unsubscribed = |stream: &'static str| {
        move |all: &[Received]| {
            stream_requests(all)
                .values()
                .flatten()
                .any(|(m, s)| m == "UNSUBSCRIBE" && s == stream)
        }
    };
    up.wait_for(T, unsubscribed("btcusdt@trade"))
        .await
        .expect("unsubscribed once its only holder let go");
    b.recv_type("message", T).await;
    // B's process dies: its socket closes, nothing said.
    drop(b);
    up.wait_for(T, unsubscribed("ethusdt@trade"))
        .await
        .expect("unsubscribed once its holder's socket closed");
    assert_eq!(up.bad_requests(), 0);
}

/// With `replay.persist`, an `Attach` stream's `from_seq` replays its keys' messages from
/// before a restart: the key is read again from each stored message.
#[tokio::test]
async fn attach_replays_its_keys_across_a_restart() {
    let rules = Rules {
        messages: 10,
        per: Duration::from_millis(200),
        ping_every: None,
    };
    let up = FakeBinance::start(rules);
    up.feed(
        &["btcusdt@trade", "ethusdt@trade"],
        Duration::from_millis(5),
    );
    let toml = format!(
        "{}\n[endpoints.bn.replay]\npersist = true\nmessages = 100000\n",
        shared_config(&up.url())
    );
    let d = start_daemon(&toml).await;
    let mut c = d.grpc().await;
    let mut a = attach(&mut c, "bn", &["btcusdt@trade"]).await;
    let mut before = Vec::new();
    for _ in 0..10 {
        before.push(next_trade(&mut a).await);
    }
    drop(a);
    let d = d.restart(crate::support::daemon::parse_config(&toml)).await;
    let mut c = d.grpc().await;
    let mut replayed = c
        .attach(proto::AttachRequest {
            endpoint: "bn".into(),
            keys: vec!["btcusdt@trade".into()],
            params: String::new(),
            from_seq: Some(0),
        })
        .await
        .expect("attach accepted")
        .into_inner();
    let mut again = Vec::new();
    while again.len() < before.len() + 5 {
        again.push(next_trade(&mut replayed).await);
    }
    assert!(
        again.iter().all(|(s, _)| s == "btcusdt@trade"),
        "only the key's messages: {again:?}"
    );
    let first = before[0].1;
    assert!(
        again.iter().any(|(_, t)| *t == first),
        "trade {first} from before the restart is replayed: {again:?}"
    );
}

/// Binance cuts connections at 24 h (scaled: 3 s); `max_lifetime` (2 s) rotates before it. The
/// held keys are subscribed on each new connection before it takes over, so an app holding
/// two keys gets every trade of both once, in order, across three rotations.
#[tokio::test]
async fn held_keys_move_to_the_new_connection_before_a_rotation() {
    let rules = Rules {
        messages: 5,
        per: Duration::from_secs(1),
        ping_every: Some(Duration::from_secs(1)),
    };
    let up = FakeBinance::start(rules);
    up.cut_after(Duration::from_secs(3));
    let streams = ["btcusdt@trade", "ethusdt@trade", "bnbusdt@trade"];
    up.feed(&streams, Duration::from_millis(4));
    let toml = shared_config(&up.url()).replace(
        r#"rate_limit = { messages = 10, per = "200ms" }"#,
        "rate_limit = { messages = 5, per = \"1s\" }\nmax_lifetime = \"2s\"",
    );
    let d = start_daemon(&toml).await;
    let mut c = d.grpc().await;
    let mut a = attach(&mut c, "bn", &["btcusdt@trade", "ethusdt@trade"]).await;
    // Trade n is on streams[n % 3]: the app's are those with n % 3 < 2.
    let (_, mut last) = next_trade(&mut a).await;
    let mut after = 0;
    while after < 100 {
        let (stream, t) = next_trade(&mut a).await;
        let mut expect = last + 1;
        if expect % 3 == 2 {
            expect += 1;
        }
        assert_eq!(
            t, expect,
            "every trade of both keys once, in order ({stream})"
        );
        assert_eq!(stream, streams[t as usize % 3]);
        last = t;
        let rotated = up
            .received()
            .iter()
            .filter(|r| r.frame == Frame::Close(Some(1000)))
            .count();
        if rotated >= 3 {
            after += 1;
        }
    }
    assert_eq!(up.rate_closes(), 0, "never over 5 frames a second");
    assert_eq!(
        up.lifetime_cuts(),
        0,
        "every connection rotated before its cut"
    );
    assert_eq!(up.bad_requests(), 0);
    for (conn, reqs) in stream_requests(&up.received()) {
        let subscribed: BTreeSet<&str> = reqs.iter().map(|(_, s)| s.as_str()).collect();
        assert_eq!(
            subscribed,
            BTreeSet::from(["btcusdt@trade", "ethusdt@trade"]),
            "conn {conn}: {reqs:?}"
        );
        assert_eq!(reqs.len(), 2, "conn {conn}: once each: {reqs:?}");
    }
}

/// An `Attach` stream hears its key go `PENDING` when the connection drops and `SUBSCRIBED`
/// again once it is made on the next one.
#[tokio::test]
async fn key_changes_follow_the_connection() {
    let rules = Rules {
        messages: 10,
        per: Duration::from_millis(200),
        ping_every: None,
    };
    let up = FakeBinance::start(rules);
    up.feed(&["btcusdt@trade"], Duration::from_millis(20));
    let d = start_daemon(&shared_config(&up.url())).await;
    let mut c = d.grpc().await;
    let mut a = attach(&mut c, "bn", &["btcusdt@trade"]).await;
    let mut states = Vec::new();
    let mut dropped = false;
    while states.len() < 4 {
        let ev = tokio::time::timeout(T, a.next())
            .await
            .expect("an event in time")
            .expect("open")
            .expect("ok");
        if let Some(Ev::Key(k)) = ev.event {
            let state = proto::KeyState::try_from(k.state).expect("a state");
            states.push(state);
            if state == proto::KeyState::Subscribed && !dropped {
                dropped = true;
                up.close_all();
            }
        }
    }
    use proto::KeyState::{Pending, Subscribed};
    assert_eq!(states, [Pending, Subscribed, Pending, Subscribed]);
}
