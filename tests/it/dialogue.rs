//! The daemon's part in the upstream's conversation (issue 13), end to end: each test runs a
//! recipe from `docs/recipes/` as written (only its URL, secrets and timings swapped for the
//! test's) against a fake that enforces what the real API documents. The apps only subscribe
//! and publish their own business messages: no protocol code on their side.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_tungstenite::tungstenite::Message;
use ws_sidecar::endpoint::State;
use ws_sidecar::proto;

use crate::support::daemon::{next_message, parse_config, start_with, subscribe};
use crate::support::recipe::{recipe, TOKEN};
use crate::support::{FakeUpstream, Reply, UpConn};

const T: Duration = Duration::from_secs(10);

fn json(m: &Message) -> serde_json::Value {
    match m {
        Message::Text(t) => serde_json::from_str(t.as_str()).unwrap_or(serde_json::Value::Null),
        _ => serde_json::Value::Null,
    }
}

fn payload(m: &proto::Message) -> serde_json::Value {
    serde_json::from_slice(&m.data).unwrap_or(serde_json::Value::Null)
}

/// A fake Home Assistant: auth_required first; anything but a valid auth frame before auth_ok
/// is refused (auth_invalid, close); after that every message's id must be greater than the
/// last, else the connection is closed with a policy violation. `go` releases auth_ok.
async fn home_assistant(
    c: UpConn,
    go: tokio::sync::oneshot::Receiver<()>,
    events: u64,
) -> Vec<String> {
    let mut faults = Vec::new();
    c.send_text(r#"{"type":"auth_required","ha_version":"2024.1.0"}"#)
        .await
        .expect("send");
    let first = c
        .recv_timeout(T)
        .await
        .expect("auth in time")
        .expect("open");
    let auth = json(&first);
    if auth["type"] != "auth" || auth["access_token"] != TOKEN {
        c.send_text(r#"{"type":"auth_invalid","message":"Invalid access token or password"}"#)
            .await
            .ok();
        c.close(1008, "auth").await.ok();
        return vec![format!("bad auth frame {first:?}")];
    }
    go.await.expect("released");
    // A server slow to check the token: the client must say nothing meanwhile (three of the
    // test's app ping intervals).
    if let Ok(Some(early)) = c.recv_timeout(Duration::from_millis(300)).await {
        c.close(1008, "before auth_ok").await.ok();
        return vec![format!("sent before auth_ok: {early:?}")];
    }
    c.send_text(r#"{"type":"auth_ok","ha_version":"2024.1.0"}"#)
        .await
        .expect("send");
    let mut last_id = 0u64;
    let mut pings = 0;
    while pings < 3 {
        let Ok(Some(m)) = c.recv_timeout(T).await else {
            faults.push("no more messages".into());
            break;
        };
        let v = json(&m);
        let id = v["id"].as_u64().unwrap_or(0);
        if id <= last_id {
            faults.push(format!("id {id} after {last_id}: {v}"));
            c.close(1008, "id_reuse").await.ok();
            break;
        }
        last_id = id;
        match v["type"].as_str() {
            Some("subscribe_events") => {
                c.send_text(&format!(
                    r#"{{"id":{id},"type":"result","success":true,"result":null}}"#
                ))
                .await
                .expect("send");
                for n in 0..events {
                    let e = format!(
                        r#"{{"id":{id},"type":"event","event":{{"event_type":"state_changed","n":{n}}}}}"#
                    );
                    c.send_text(&e).await.expect("send");
                }
            }
            Some("ping") => {
                pings += 1;
                c.send_text(&format!(r#"{{"id":{id},"type":"pong"}}"#))
                    .await
                    .expect("send");
            }
            other => faults.push(format!("unexpected {other:?}")),
        }
    }
    faults
}

#[tokio::test]
async fn home_assistant_waits_for_auth_ok_and_keeps_ids_increasing() {
    let up = FakeUpstream::start_with(|_, _| Reply::Accept).await;
    let cfg = recipe("home-assistant", "home", &up.url("/api/websocket"), |ep| {
        ep.heartbeat.app_ping_interval = Duration::from_millis(100);
    });
    let d = start_with(cfg).await;
    let mut client = d.grpc().await;
    let mut sub = subscribe(&mut client, "home", None).await;
    let c = up.next_accepted_within(T).await.expect("connects");
    let (go, release) = tokio::sync::oneshot::channel();
    let fake = tokio::spawn(home_assistant(c.clone(), release, 20));
    // Authenticated but not yet accepted: not connected, and nothing else was sent.
    let ep = d.endpoint("home");
    tokio::time::timeout(
        T,
        ep.wait_state(|s| s.reason.contains("waiting for the on_connect answers")),
    )
    .await
    .expect("waits for auth_ok");
    assert_eq!(ep.state().state, State::Connecting);
    go.send(()).expect("fake runs");
    d.wait_state("home", State::Connected, T).await;
    for n in 0..20 {
        let m = next_message(&mut sub, T).await;
        let v = payload(&m);
        assert_eq!(v["type"], "event", "only events reach apps, not {v}");
        assert_eq!(v["event"]["n"], n);
    }
    let faults = tokio::time::timeout(T, fake)
        .await
        .expect("fake done")
        .expect("fake ran");
    assert!(faults.is_empty(), "the fake Home Assistant saw: {faults:?}");
    let kept = ep
        .stats
        .dialogue_kept
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        kept >= 5,
        "auth_required, auth_ok, the result and pongs are counted: {kept}"
    );
    d.stop().await;
}

/// A fake graphql-transport-ws server: connection_init with the token first; a subscribe
/// before its connection_ack closes with 4401 (as the protocol says); pings are answered and
/// its own ping must get a pong.
#[tokio::test]
async fn graphql_outbox_waits_for_the_ack_and_pings_are_answered() {
    let up =
        FakeUpstream::start_with(|_, _| Reply::AcceptWithProtocol("graphql-transport-ws".into()))
            .await;
    let cfg = recipe(
        "graphql-transport-ws",
        "graphql",
        &up.url("/graphql"),
        |_| {},
    );
    let d = start_with(cfg).await;
    let mut client = d.grpc().await;
    let mut sub = subscribe(&mut client, "graphql", None).await;
    // The app's own business: a subscription, published before the daemon is even connected.
    let op = r#"{"id":"op1","type":"subscribe","payload":{"query":"subscription { price }"}}"#;
    client
        .publish(proto::PublishRequest {
            endpoint: "graphql".into(),
            data: op.as_bytes().to_vec().into(),
            kind: proto::Kind::Text as i32,
            ..Default::default()
        })
        .await
        .expect("queued");
    let c = up.next_accepted_within(T).await.expect("connects");
    let init = json(&c.recv_timeout(T).await.expect("in time").expect("open"));
    assert_eq!(init["type"], "connection_init");
    assert_eq!(init["payload"]["Authorization"], format!("Bearer {TOKEN}"));
    // A real server takes a moment to check credentials; a subscribe in that time is fatal.
    if let Ok(Some(early)) = c.recv_timeout(Duration::from_millis(300)).await {
        c.close(4401, "Unauthorized").await.ok();
        panic!("sent before connection_ack: {early:?}");
    }
    c.send_text(r#"{"type":"connection_ack"}"#)
        .await
        .expect("ack");
    let got = json(&c.recv_timeout(T).await.expect("in time").expect("open"));
    assert_eq!(got["type"], "subscribe", "the app's message, after the ack");
    c.send_text(r#"{"type":"ping"}"#).await.expect("ping");
    let pong = json(&c.recv_timeout(T).await.expect("in time").expect("open"));
    assert_eq!(pong, serde_json::json!({"type":"pong"}));
    c.send_text(r#"{"id":"op1","type":"next","payload":{"data":{"price":1}}}"#)
        .await
        .expect("next");
    let m = next_message(&mut sub, T).await;
    assert_eq!(payload(&m)["type"], "next", "pings never reach apps");
    d.stop().await;
}

/// Twitch's rule for clients: nothing but pongs (a close frame ends the connection). Any
/// other frame closes the connection with 4001, as Twitch does; returns what broke the rule.
async fn twitch_guard(c: UpConn) -> Option<String> {
    c.set_answer_pings(false);
    tokio::select! {
        m = c.recv() => match m {
            None | Some(Message::Close(_)) => None,
            Some(other) => {
                c.close(4001, "client sent inbound traffic").await.ok();
                Some(format!("client sent {other:?}"))
            }
        },
        r = c.wait_pings(1, Duration::from_secs(3600)) => {
            c.close(4001, "client sent inbound traffic").await.ok();
            r.err().map(|e| e.to_string()).or(Some("client sent a ping".into()))
        }
    }
}

/// A fake Twitch EventSub: welcome first; any client frame but a pong (a ping, a text) closes
/// the connection with 4001; `session_reconnect` sends the client to another URL, where the
/// session continues with a new welcome.
#[tokio::test]
async fn twitch_reconnect_url_is_followed_without_a_gap_or_a_client_frame() {
    let up = FakeUpstream::start_with(|_, _| Reply::Accept).await;
    let cfg = recipe("twitch-eventsub", "twitch", &up.url("/ws"), |_| {});
    let d = start_with(cfg).await;
    let mut client = d.grpc().await;
    let mut sub = subscribe(&mut client, "twitch", None).await;
    let welcome = |id: &str| {
        format!(
            r#"{{"metadata":{{"message_type":"session_welcome"}},"payload":{{"session":{{"id":"{id}","keepalive_timeout_seconds":30}}}}}}"#
        )
    };
    let note = |n: u32| {
        format!(
            r#"{{"metadata":{{"message_type":"notification"}},"payload":{{"event":{{"n":{n}}}}}}}"#
        )
    };
    let old = up.next_accepted_within(T).await.expect("connects");
    let old_guard = tokio::spawn(twitch_guard(old.clone()));
    old.send_text(&welcome("s1")).await.expect("send");
    for n in 0..10 {
        old.send_text(&note(n)).await.expect("send");
    }
    old.send_text(&format!(
        r#"{{"metadata":{{"message_type":"session_reconnect"}},"payload":{{"session":{{"id":"s1","reconnect_url":"{}"}}}}}}"#,
        up.url("/ws?reconnect=1")
    ))
    .await
    .expect("send");
    // Events keep coming on the old connection until the new one is up.
    for n in 10..15 {
        old.send_text(&note(n)).await.expect("send");
    }
    let new = up
        .next_accepted_within(T)
        .await
        .expect("follows the reconnect URL");
    assert_eq!(new.uri().to_string(), "/ws?reconnect=1");
    let new_guard = tokio::spawn(twitch_guard(new.clone()));
    new.send_text(&welcome("s1")).await.expect("send");
    let close = tokio::time::timeout(T, old.closed())
        .await
        .expect("old closed");
    assert_eq!(
        close.map(|c| c.code),
        Some(1000),
        "the old connection is closed by the client once the new one is welcomed"
    );
    for n in 15..20 {
        new.send_text(&note(n)).await.expect("send");
    }
    let first = payload(&next_message(&mut sub, T).await);
    assert_eq!(
        first["metadata"]["message_type"], "session_welcome",
        "apps need the session id"
    );
    for n in 0..20 {
        if n == 15 {
            // The new connection's welcome (a `deliver = true` step) comes with it.
            let v = payload(&next_message(&mut sub, T).await);
            assert_eq!(v["metadata"]["message_type"], "session_welcome", "{v}");
        }
        let v = payload(&next_message(&mut sub, T).await);
        assert_eq!(v["payload"]["event"]["n"], n, "{v}");
    }
    d.stop().await;
    for g in [old_guard, new_guard] {
        let fault = tokio::time::timeout(T, g)
            .await
            .expect("guard ends")
            .expect("guard ran");
        assert_eq!(fault, None, "Twitch closes on any client frame but a pong");
    }
}

/// A Kubernetes-like watch: events resume by resourceVersion; a version that is gone is
/// answered by an ERROR event with code 410, after which the watch must start afresh.
#[tokio::test]
async fn kubernetes_gone_position_is_forgotten_and_the_watch_starts_afresh() {
    let up = FakeUpstream::start_with(|_, _| Reply::Accept).await;
    let cfg = recipe(
        "kubernetes-watch",
        "pods",
        &up.url("/api/v1/pods?watch=1"),
        |ep| {
            ep.tls = Default::default();
        },
    );
    let d = start_with(cfg).await;
    let mut client = d.grpc().await;
    let mut sub = subscribe(&mut client, "pods", None).await;
    let event = |rv: &str| {
        format!(
            r#"{{"type":"ADDED","object":{{"metadata":{{"name":"p","resourceVersion":"{rv}"}}}}}}"#
        )
    };
    let c1 = up.next_accepted_within(T).await.expect("connects");
    assert_eq!(c1.uri().to_string(), "/api/v1/pods?watch=1");
    c1.send_text(&event("a1")).await.expect("send");
    c1.send_text(&event("a2")).await.expect("send");
    for rv in ["a1", "a2"] {
        assert_eq!(
            payload(&next_message(&mut sub, T).await)["object"]["metadata"]["resourceVersion"],
            rv
        );
    }
    c1.close(1000, "watch ended").await.expect("close");
    let c2 = up.next_accepted_within(T).await.expect("reconnects");
    assert!(
        c2.uri().to_string().contains("resourceVersion=a2"),
        "{}",
        c2.uri()
    );
    c2.send_text(r#"{"type":"ERROR","object":{"kind":"Status","code":410,"reason":"Expired","message":"too old resource version"}}"#).await.expect("send");
    let c3 = up.next_accepted_within(T).await.expect("starts afresh");
    assert_eq!(
        c3.uri().to_string(),
        "/api/v1/pods?watch=1",
        "no stale resourceVersion"
    );
    c3.send_text(&event("b1")).await.expect("send");
    let v = payload(&next_message(&mut sub, T).await);
    assert_eq!(
        v["object"]["metadata"]["resourceVersion"], "b1",
        "the ERROR never reaches apps: {v}"
    );
    d.stop().await;
}

/// A feed with no ids and no resume (Binance market streams): a connection rotated by
/// `max_lifetime` is replaced before it is closed, and messages both connections carried are
/// delivered once, with none missing.
#[tokio::test]
async fn rotation_by_max_lifetime_loses_and_repeats_nothing() {
    let up = Arc::new(FakeUpstream::start_with(|_, _| Reply::Accept).await);
    let live: Arc<Mutex<Vec<UpConn>>> = Arc::default();
    let accepted = {
        let live = Arc::clone(&live);
        let up = Arc::clone(&up);
        tokio::spawn(async move {
            while let Ok(c) = up.next_accepted_within(Duration::from_secs(30)).await {
                live.lock().expect("lock").push(c);
            }
        })
    };
    // The exchange: one global stream, sent to every open connection.
    let feed = {
        let live = Arc::clone(&live);
        tokio::spawn(async move {
            for t in 0u64.. {
                let conns: Vec<UpConn> = live
                    .lock()
                    .expect("lock")
                    .iter()
                    .filter(|c| !c.is_closed())
                    .cloned()
                    .collect();
                for c in conns {
                    let _ = c
                        .send_text(&format!(r#"{{"e":"trade","t":{t},"p":"1.0"}}"#))
                        .await;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    let cfg = parse_config(&format!(
        "[endpoints.trades]\nurl = \"{}\"\nmax_lifetime = \"1s\"\n",
        up.url("/stream?streams=btcusdt@trade")
    ));
    let d = start_with(cfg).await;
    let mut client = d.grpc().await;
    let mut sub = subscribe(&mut client, "trades", None).await;
    let first = payload(&next_message(&mut sub, T).await)["t"]
        .as_u64()
        .expect("t");
    let mut seen = BTreeSet::new();
    let mut expect = first + 1;
    while live.lock().expect("lock").len() < 4 {
        let t = payload(&next_message(&mut sub, T).await)["t"]
            .as_u64()
            .expect("t");
        assert_eq!(t, expect, "every trade once, in order, across rotations");
        assert!(seen.insert(t));
        expect += 1;
    }
    let conns = live.lock().expect("lock").clone();
    for c in &conns[..2] {
        let close = tokio::time::timeout(T, c.closed())
            .await
            .expect("rotated out");
        assert_eq!(close.map(|c| c.code), Some(1000));
    }
    feed.abort();
    accepted.abort();
    d.stop().await;
}

/// A combined stream (Binance's `/stream?streams=a/b`): each stream has its own trade ids, so
/// gaps are found per stream, and the gap comes right before the message of the stream that
/// jumped.
#[tokio::test]
async fn contiguous_ids_are_checked_per_channel() {
    use crate::support::daemon::next_event;
    use ws_sidecar::proto::event::Event as Ev;
    let up = FakeUpstream::start_with(|_, _| Reply::Accept).await;
    let cfg = parse_config(&format!(
        "[endpoints.trades]\nurl = \"{}\"\nresume = {{ id_pointer = \"/data/t\", channel_pointer = \"/stream\", contiguous = true }}\n",
        up.url("/stream?streams=btcusdt@trade/ethusdt@trade")
    ));
    let d = start_with(cfg).await;
    let mut client = d.grpc().await;
    let mut sub = subscribe(&mut client, "trades", None).await;
    let c = up.next_accepted_within(T).await.expect("connects");
    let trade = |s: &str, t: u64| format!(r#"{{"stream":"{s}","data":{{"e":"trade","t":{t}}}}}"#);
    for (s, t) in [
        ("btcusdt@trade", 1),
        ("btcusdt@trade", 2),
        ("ethusdt@trade", 100),
        ("btcusdt@trade", 3),
        ("ethusdt@trade", 100),
        ("ethusdt@trade", 102),
        ("btcusdt@trade", 4),
    ] {
        c.send_text(&trade(s, t)).await.expect("send");
    }
    let mut seen = Vec::new();
    while seen.iter().filter(|e: &&String| e.starts_with('m')).count() < 6 {
        match next_event(&mut sub, T).await {
            Ev::Key(k) => panic!("a Subscribe stream carries no key changes: {k:?}"),
            Ev::Message(m) => {
                let v = payload(&m);
                seen.push(format!(
                    "m {} {}",
                    v["stream"].as_str().unwrap_or("?"),
                    v["data"]["t"]
                ));
            }
            Ev::Gap(g) => seen.push(format!("gap {}..{}", g.from_seq, g.to_seq)),
            Ev::State(_) => {}
        }
    }
    assert_eq!(
        seen,
        [
            "m btcusdt@trade 1",
            "m btcusdt@trade 2",
            "m ethusdt@trade 100",
            "m btcusdt@trade 3",
            "gap 101..101",
            "m ethusdt@trade 102",
            "m btcusdt@trade 4",
        ],
        "no false gap across streams, the resent eth 100 dropped, eth's own gap reported"
    );
    d.stop().await;
}

/// The upstream asks for a reconnect and the new connection fails once: it is tried again
/// (after 1 s) while the old one keeps delivering, then switched to.
#[tokio::test]
async fn a_failed_reconnect_the_upstream_asked_for_is_tried_again() {
    let up = FakeUpstream::start_with(|i, _| match i {
        1 => Reply::reject(503, &[]),
        _ => Reply::Accept,
    })
    .await;
    let cfg = parse_config(&format!(
        "[endpoints.a]\nurl = \"{}\"\nrules = [{{ match = {{ pointer = \"/type\", equals = \"reconnect\" }}, action = \"reconnect\", drop = true }}]\n",
        up.url("/")
    ));
    let d = start_with(cfg).await;
    let mut client = d.grpc().await;
    let mut sub = subscribe(&mut client, "a", None).await;
    let old = up.next_accepted_within(T).await.expect("connects");
    old.send_text(r#"{"type":"reconnect"}"#)
        .await
        .expect("send");
    old.send_text(r#"{"n":1}"#).await.expect("send");
    assert_eq!(
        payload(&next_message(&mut sub, T).await)["n"],
        1,
        "the old one still delivers"
    );
    let new = up
        .next_accepted_within(T)
        .await
        .expect("tried again after the 503");
    assert_eq!(up.attempts().len(), 3, "first, refused, retried");
    new.send_text(r#"{"n":2}"#).await.expect("send");
    let close = tokio::time::timeout(T, old.closed())
        .await
        .expect("old closed");
    assert_eq!(close.map(|c| c.code), Some(1000));
    assert_eq!(payload(&next_message(&mut sub, T).await)["n"], 2);
    d.stop().await;
}

/// Home Assistant answers a wrong token with `auth_invalid` and closes: a refusal in the
/// opening dialogue with `failure = "reauth"` is an auth failure, and after `max_failures` of
/// them in a row the endpoint is `failed` (not retried for ever because the handshake before
/// it succeeded).
#[tokio::test]
async fn a_refused_token_in_the_opening_ends_in_failed() {
    let up = FakeUpstream::start_with(|_, _| Reply::Accept).await;
    let cfg = recipe("home-assistant", "home", &up.url("/api/websocket"), |_| {});
    let d = start_with(cfg).await;
    let refuse = async {
        loop {
            let Ok(c) = up.next_accepted_within(T).await else {
                break;
            };
            c.send_text(r#"{"type":"auth_required"}"#).await.ok();
            let _ = c.recv_timeout(T).await;
            c.send_text(r#"{"type":"auth_invalid","message":"Invalid access token or password"}"#)
                .await
                .ok();
            c.close(4001, "auth").await.ok();
        }
    };
    tokio::select! {
        ev = d.wait_state("home", State::Failed, T) => {
            assert!(ev.reason.contains("3 consecutive auth failures"), "{}", ev.reason);
        }
        _ = refuse => panic!("the fake stopped"),
    }
    assert_eq!(up.attempts().len(), 3, "max_failures attempts, no more");
    d.stop().await;
}

/// A replacement that the upstream closes before the switch is given up: the old connection
/// keeps delivering and is replaced by the next try, not by the closed one.
#[tokio::test]
async fn a_replacement_closed_before_the_switch_is_given_up() {
    let up = FakeUpstream::start_with(|_, _| Reply::Accept).await;
    let cfg = parse_config(&format!(
        "[endpoints.a]\nurl = \"{}\"\nmax_lifetime = \"1s\"\n",
        up.url("/")
    ));
    let d = start_with(cfg).await;
    let mut client = d.grpc().await;
    let mut sub = subscribe(&mut client, "a", None).await;
    let old = up.next_accepted_within(T).await.expect("connects");
    old.send_text(r#"{"n":1}"#).await.expect("send");
    assert_eq!(payload(&next_message(&mut sub, T).await)["n"], 1);
    let doomed = up.next_accepted_within(T).await.expect("rotation begins");
    doomed.send_text(r#"{"n":2}"#).await.expect("send");
    doomed.close(1011, "going away").await.expect("close");
    old.send_text(r#"{"n":2}"#).await.expect("send");
    assert_eq!(
        payload(&next_message(&mut sub, T).await)["n"],
        2,
        "the old connection still delivers"
    );
    let next = up.next_accepted_within(T).await.expect("tried again");
    next.send_text(r#"{"n":3}"#).await.expect("send");
    old.send_text(r#"{"n":3}"#).await.expect("send");
    let close = tokio::time::timeout(T, old.closed())
        .await
        .expect("old closed");
    assert_eq!(close.map(|c| c.code), Some(1000));
    assert_eq!(payload(&next_message(&mut sub, T).await)["n"], 3, "once");
    next.send_text(r#"{"n":4}"#).await.expect("send");
    assert_eq!(payload(&next_message(&mut sub, T).await)["n"], 4);
    d.stop().await;
}
