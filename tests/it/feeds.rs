//! Market-data feeds (issue 13), end to end: the Binance, OKX and HTX recipes from
//! `docs/recipes/` run as written (only the URL and timings swapped, scaled down) against fakes
//! that enforce what each exchange documents. The app only subscribes; every message reaches it
//! once, in order, and nothing of the protocol (answers, pings, pongs) does.

use std::time::Duration;

use tokio_tungstenite::tungstenite::Message;
use ws_sidecar::proto;

use crate::support::binance::{texts, FakeBinance, Frame, Received, Rules};
use crate::support::daemon::{next_message, start_with, subscribe};
use crate::support::recipe::recipe;
use crate::support::{FakeUpstream, Reply, UpConn};

const T: Duration = Duration::from_secs(30);

fn payload(m: &proto::Message) -> serde_json::Value {
    serde_json::from_slice(&m.data).unwrap_or(serde_json::Value::Null)
}

/// The connections the daemon closed with 1000, in the order they were opened.
fn closed_normally(all: &[Received]) -> Vec<usize> {
    let mut conns: Vec<usize> = all
        .iter()
        .filter(|r| r.frame == Frame::Close(Some(1000)))
        .map(|r| r.conn)
        .collect();
    conns.sort_unstable();
    conns
}

/// Binance cuts every connection at 24 hours (scaled: 3 s) and closes with 1008 over 5 frames a
/// second; the recipe's `max_lifetime` (scaled: 2 s) rotates each connection before its cut,
/// subscribing the next one while the old one still delivers.
#[tokio::test]
async fn binance_rotates_before_the_24h_cut_and_delivers_every_trade_once() {
    binance_rotations(true).await;
}

/// As above, but the new connection's SUBSCRIBE answer may overtake trades the old connection
/// has yet to send (two servers, two network paths). The daemon closes the old connection as
/// soon as the new one has answered, after reading only what the old one had already
/// received: the trades still on their way are lost (1 to 3 per switch here).
#[tokio::test]

async fn binance_rotation_waits_for_a_lagging_old_connection() {
    binance_rotations(false).await;
}

async fn binance_rotations(in_order: bool) {
    let rules = Rules {
        messages: 5,
        per: Duration::from_secs(1),
        // Binance pings every 20 s; here once a second, so pongs are part of the rate.
        ping_every: Some(Duration::from_secs(1)),
    };
    let up = FakeBinance::start(rules);
    up.set_in_order(in_order);
    up.cut_after(Duration::from_secs(3));
    up.feed(
        &["btcusdt@trade", "ethusdt@trade"],
        Duration::from_millis(4),
    );
    let cfg = recipe("binance", "binance", &up.url(), |ep| {
        ep.max_lifetime = Some(Duration::from_secs(2));
    });
    let d = start_with(cfg).await;
    let mut client = d.grpc().await;
    let mut sub = subscribe(&mut client, "binance", None).await;

    let trade = |m: &proto::Message| {
        let v = payload(m);
        let t = v["data"]["t"]
            .as_u64()
            .unwrap_or_else(|| panic!("only trades reach apps, not {v}"));
        let stream = ["btcusdt@trade", "ethusdt@trade"][t as usize % 2];
        assert_eq!(v["stream"], stream, "{v}");
        t
    };
    let mut expect = trade(&next_message(&mut sub, T).await) + 1;
    // Three rotations: connections 0, 1 and 2 closed by the daemon, then a while on the fourth.
    let mut after = 0;
    while after < 200 {
        let t = trade(&next_message(&mut sub, T).await);
        assert_eq!(t, expect, "every trade once, in order, across rotations");
        expect += 1;
        if closed_normally(&up.received()).len() >= 3 {
            after += 1;
        }
    }

    let all = up.received();
    assert_eq!(
        up.rate_closes(),
        0,
        "never closed for going over 5 frames a second"
    );
    assert_eq!(
        up.lifetime_cuts(),
        0,
        "every connection rotated before its cut"
    );
    assert_eq!(up.bad_requests(), 0);
    // What each connection last received, to tell a close that never came from one sent late.
    let last_frames: Vec<String> = (0..5)
        .map(|c| {
            let fr: Vec<&Received> = all.iter().filter(|r| r.conn == c).collect();
            format!(
                "conn {c}: {} frames, last {:?}",
                fr.len(),
                fr.iter()
                    .rev()
                    .take(3)
                    .map(|r| format!("{:?}", r.frame))
                    .collect::<Vec<_>>()
            )
        })
        .collect();
    let state = d.endpoint("binance").state();
    assert_eq!(
        closed_normally(&all),
        vec![0, 1, 2],
        "rotated out with 1000: {last_frames:#?} {state:?}"
    );
    for conn in 0..4 {
        assert_eq!(
            texts(&all, conn),
            vec![r#"{"method":"SUBSCRIBE","params":["btcusdt@trade","ethusdt@trade"],"id":1}"#],
            "connection {conn} subscribed once"
        );
    }
    assert!(
        all.iter().any(|r| r.frame == Frame::Pong),
        "the fake's pings were answered, within the rate"
    );
    d.stop().await;
}

/// What a fake exchange connection saw.
#[derive(Debug, Default)]
struct Seen {
    /// Heartbeats the client answered (OKX: its text pings; HTX: pongs to the server's pings).
    heartbeats: usize,
    /// The fake closed the connection for the client's silence.
    cut: bool,
    faults: Vec<String>,
}

/// Pushes `make(n)` for n = 0, 1, … every `every` until the connection ends.
fn push_every(
    c: &UpConn,
    every: Duration,
    make: impl Fn(u64) -> Message + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    let c = c.clone();
    tokio::spawn(async move {
        for n in 0u64.. {
            let sent = match make(n) {
                Message::Binary(b) => c.send_binary(&b).await,
                Message::Text(t) => c.send_text(t.as_str()).await,
                _ => Ok(()),
            };
            if sent.is_err() || c.is_closed() {
                return;
            }
            tokio::time::sleep(every).await;
        }
    })
}

/// The next message, failing at once should the fake end the connection meanwhile.
async fn next_or_cut(
    sub: &mut tonic::Streaming<proto::Event>,
    fake: &mut tokio::task::JoinHandle<Seen>,
) -> proto::Message {
    tokio::select! {
        m = next_message(sub, T) => m,
        seen = fake => panic!("the fake ended the connection: {seen:?}"),
    }
}

fn okx_ticker(n: u64) -> Message {
    Message::text(format!(
        r#"{{"arg":{{"channel":"tickers","instId":"BTC-USDT"}},"data":[{{"instType":"SPOT","instId":"BTC-USDT","last":"{}.1","ts":"{}"}}]}}"#,
        40_000 + n % 100,
        1_700_000_000_000 + n
    ))
}

/// A fake OKX v5 public endpoint. A connection the client sent no message on for `idle` (OKX:
/// 30 s) is closed; WebSocket pings do not count, OKX's keep-alive is the text `ping`, answered
/// with the text `pong`. `{"op":"subscribe"}` is confirmed with an `event`, then a ticker is
/// pushed every 20 ms; anything else gets OKX's error event.
async fn okx(c: UpConn, idle: Duration) -> Seen {
    let mut seen = Seen::default();
    let mut tickers = None;
    loop {
        let m = match c.recv_timeout(idle).await {
            Err(_) => {
                seen.cut = true;
                c.close(1001, "no data").await.ok();
                break;
            }
            Ok(None) | Ok(Some(Message::Close(_))) => break,
            Ok(Some(m)) => m,
        };
        let text = match &m {
            Message::Text(t) => t.as_str().to_owned(),
            other => {
                seen.faults.push(format!("not text: {other:?}"));
                continue;
            }
        };
        if text == "ping" {
            seen.heartbeats += 1;
            c.send_text("pong").await.ok();
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        let arg = &v["args"][0];
        if v["op"] == "subscribe" && arg["channel"] == "tickers" && tickers.is_none() {
            c.send_text(&format!(
                r#"{{"event":"subscribe","arg":{arg},"connId":"a4d3ae55"}}"#
            ))
            .await
            .ok();
            tickers = Some(push_every(&c, Duration::from_millis(20), okx_ticker));
        } else {
            seen.faults.push(format!("invalid request {text}"));
            c.send_text(
                r#"{"event":"error","code":"60012","msg":"Invalid request","connId":"a4d3ae55"}"#,
            )
            .await
            .ok();
        }
    }
    if let Some(t) = tickers {
        t.abort();
    }
    seen
}

/// OKX closes a connection that sent nothing for 30 s (scaled: 1.5 s); the recipe's text
/// `ping` every 20 s (scaled: 1 s) keeps the one connection, and apps never see the `pong`
/// nor the subscribe confirmation.
#[tokio::test]
async fn okx_text_pings_keep_the_connection_and_apps_get_only_tickers() {
    let idle = Duration::from_millis(1500);
    let up = FakeUpstream::start_with(|_, _| Reply::Accept).await;
    let cfg = recipe("okx", "okx", &up.url("/ws/v5/public"), |ep| {
        ep.heartbeat.app_ping_interval = Duration::from_secs(1);
    });
    let d = start_with(cfg).await;
    let mut client = d.grpc().await;
    let mut sub = subscribe(&mut client, "okx", None).await;
    let c = up.next_accepted_within(T).await.expect("connects");
    let mut fake = tokio::spawn(okx(c, idle));
    // 200 tickers take 4 s: more than twice the idle cut.
    for n in 0..200u64 {
        let v = payload(&next_or_cut(&mut sub, &mut fake).await);
        assert_eq!(
            v["data"][0]["ts"],
            (1_700_000_000_000 + n).to_string(),
            "tickers only, in order, once: {v}"
        );
    }
    assert_eq!(up.accepted(), 1, "never cut for silence");
    d.stop().await;
    let seen = tokio::time::timeout(T, fake)
        .await
        .expect("fake done")
        .expect("fake ran");
    assert!(!seen.cut);
    assert!(seen.heartbeats >= 3, "text pings sent: {seen:?}");
    assert!(
        seen.faults.is_empty(),
        "the fake OKX saw: {:?}",
        seen.faults
    );
}

fn gzip(text: &str) -> Vec<u8> {
    crate::support::compress::gzip(text.as_bytes())
}

fn htx_trade(n: u64) -> Message {
    let ts = 1_700_000_000_000 + n;
    Message::binary(gzip(&format!(
        r#"{{"ch":"market.btcusdt.trade.detail","ts":{ts},"tick":{{"id":{n},"ts":{ts},"data":[{{"id":{n},"ts":{ts},"tradeId":{n},"amount":0.01,"price":40000.5,"direction":"buy"}}]}}}}"#
    )))
}

/// A fake HTX market endpoint. Every message it sends is a gzip member in a binary frame. It
/// sends `{"ping": <ms>}` every `every` (HTX: 5 s) and closes the connection when two went
/// unanswered; an answer is `{"pong": <the same ms>}`. `{"sub": topic, "id": id}` is answered
/// with `"status":"ok"`, and the trade topic then gets a trade every 20 ms.
async fn htx(c: UpConn, every: Duration) -> Seen {
    let mut seen = Seen::default();
    let mut unanswered: Vec<u64> = Vec::new();
    let mut trades = None;
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    for k in 0u64.. {
        let m = tokio::select! {
            _ = tick.tick() => {
                if unanswered.len() >= 2 {
                    seen.cut = true;
                    c.close(1000, "heartbeat timeout").await.ok();
                    break;
                }
                // Distinct values: a pong echoing the wrong ping is found.
                let ms = 1_710_000_000_000 + k * 1_000 + 7;
                unanswered.push(ms);
                if c.send_binary(gzip(&format!(r#"{{"ping":{ms}}}"#))).await.is_err() {
                    break;
                }
                continue;
            }
            m = c.recv() => m,
        };
        let text = match m {
            None | Some(Message::Close(_)) => break,
            Some(Message::Text(t)) => t.as_str().to_owned(),
            Some(other) => {
                seen.faults.push(format!("not text: {other:?}"));
                continue;
            }
        };
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        if let Some(pong) = v.get("pong") {
            match pong
                .as_u64()
                .and_then(|p| unanswered.iter().position(|u| *u == p))
            {
                Some(i) => {
                    unanswered.remove(i);
                    seen.heartbeats += 1;
                }
                None => seen.faults.push(format!("pong {pong} answers no ping")),
            }
        } else if let Some(topic) = v["sub"].as_str() {
            let ok = format!(
                r#"{{"id":{},"status":"ok","subbed":"{topic}","ts":1710000000000}}"#,
                v["id"]
            );
            c.send_binary(gzip(&ok)).await.ok();
            if topic == "market.btcusdt.trade.detail" && trades.is_none() {
                trades = Some(push_every(&c, Duration::from_millis(20), htx_trade));
            }
        } else {
            seen.faults.push(format!("invalid request {text}"));
        }
    }
    if let Some(t) = trades {
        t.abort();
    }
    seen
}

/// HTX's gzip-compressed `{"ping": ms}` (every 5 s, scaled: 200 ms) is answered by the
/// recipe's rule with the same value, so the connection stays; apps get the inflated trades
/// and neither the pings nor the subscription answers.
#[tokio::test]
async fn htx_gzip_pings_are_answered_with_their_value_and_apps_get_only_trades() {
    let up = FakeUpstream::start_with(|_, _| Reply::Accept).await;
    let cfg = recipe("gzip-feed", "htx", &up.url("/ws"), |_| {});
    let d = start_with(cfg).await;
    let mut client = d.grpc().await;
    let mut sub = subscribe(&mut client, "htx", None).await;
    let c = up.next_accepted_within(T).await.expect("connects");
    let mut fake = tokio::spawn(htx(c, Duration::from_millis(200)));
    // 150 trades take 3 s: 15 pings.
    for n in 0..150u64 {
        let m = next_or_cut(&mut sub, &mut fake).await;
        assert_eq!(m.kind, proto::Kind::Text as i32, "inflated JSON is text");
        let v = payload(&m);
        assert_eq!(v["tick"]["id"], n, "trades only, in order, once: {v}");
    }
    assert_eq!(up.accepted(), 1, "never disconnected for unanswered pings");
    d.stop().await;
    let seen = tokio::time::timeout(T, fake)
        .await
        .expect("fake done")
        .expect("fake ran");
    assert!(!seen.cut);
    assert!(seen.heartbeats >= 10, "pings answered: {seen:?}");
    assert!(
        seen.faults.is_empty(),
        "the fake HTX saw: {:?}",
        seen.faults
    );
}
