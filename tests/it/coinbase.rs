//! Coinbase Advanced Trade user channel, end to end: `docs/recipes/coinbase.toml` as written
//! (only the URL, the JWT helper and the timings swapped) against a fake Coinbase that enforces
//! what https://docs.cdp.coinbase.com/advanced-trade/docs/ws-overview documents: a subscribe
//! within 5 s of connecting (scaled down) or the connection is closed, a JWT that has not
//! expired in the user channel's subscribe (checked then only), and `sequence_num` counting
//! each connection's messages from 0.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use ws_sidecar::config::TokenSource;
use ws_sidecar::endpoint::State;
use ws_sidecar::secret::Secret;

use crate::support::daemon::{next_message, start_with, subscribe};
use crate::support::recipe::recipe;
use crate::support::{FakeUpstream, Reply, UpConn};

const T: Duration = Duration::from_secs(10);

/// Coinbase's 5 s to subscribe, scaled down.
const SUBSCRIBE_WITHIN: Duration = Duration::from_millis(1000);

/// The JWT's lifetime the helper signs for (Coinbase: 120 s), in whole seconds as `exp` is.
const JWT_SECS: u64 = 2;

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A subscribed connection of the fake, numbering what it sends from 0.
#[derive(Clone)]
struct CbConn {
    conn: UpConn,
    seq: Arc<AtomicU64>,
}

impl CbConn {
    async fn send(&self, channel: &str, events: &str) {
        let seq = self.seq.fetch_add(1, Ordering::SeqCst);
        self.conn
            .send_text(&format!(
                r#"{{"channel":"{channel}","client_id":"","timestamp":"2024-01-01T00:00:00Z","sequence_num":{seq},"events":{events}}}"#
            ))
            .await
            .expect("send");
    }

    async fn order(&self, n: u64) {
        self.send(
            "user",
            &format!(
                r#"[{{"type":"update","orders":[{{"order_id":"o{n}","status":"OPEN","n":{n}}}]}}]"#
            ),
        )
        .await;
    }

    async fn heartbeat(&self, n: u64) {
        self.send(
            "heartbeats",
            &format!(r#"[{{"current_time":"2024-01-01T00:00:00Z","heartbeat_counter":{n}}}]"#),
        )
        .await;
    }
}

/// The `exp` of a JWT, read (not verified: the fake has no key) from its payload.
fn jwt_exp(jwt: &str) -> Option<u64> {
    let payload = jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    claims["exp"].as_u64()
}

#[derive(Default)]
struct Seen {
    /// The JWT of every user-channel subscribe, with whether it was accepted.
    jwts: Vec<(String, bool)>,
    faults: Vec<String>,
}

/// One connection of the fake Coinbase.
async fn coinbase(c: UpConn, seen: Arc<Mutex<Seen>>, ready: mpsc::UnboundedSender<CbConn>) {
    let cb = CbConn {
        conn: c.clone(),
        seq: Arc::default(),
    };
    let mut channels = Vec::new();
    loop {
        let m = if channels.is_empty() {
            match c.recv_timeout(SUBSCRIBE_WITHIN).await {
                Ok(m) => m,
                Err(_) => {
                    lock(&seen).faults.push("no subscribe in time".into());
                    let _ = c.close(1000, "").await;
                    return;
                }
            }
        } else {
            c.recv().await
        };
        let Some(m) = m else { return };
        let Message::Text(text) = m else { continue };
        let v: serde_json::Value = serde_json::from_str(text.as_str()).unwrap_or_default();
        if v["type"] != "subscribe" {
            lock(&seen).faults.push(format!("unexpected frame: {text}"));
            continue;
        }
        let channel = v["channel"].as_str().unwrap_or_default().to_owned();
        if channel == "user" {
            let jwt = v["jwt"].as_str().unwrap_or_default().to_owned();
            let valid = jwt_exp(&jwt).is_some_and(|exp| exp > unix_secs());
            lock(&seen).jwts.push((jwt, valid));
            if !valid {
                let _ = c
                    .send_text(r#"{"type":"error","message":"authentication failure"}"#)
                    .await;
                let _ = c.close(1000, "").await;
                return;
            }
        }
        channels.push(channel);
        if channels.len() == 2 {
            cb.send(
                "subscriptions",
                r#"[{"subscriptions":{"user":["BTC-USD"],"heartbeats":["heartbeats"]}}]"#,
            )
            .await;
            let _ = ready.send(cb.clone());
        }
    }
}

#[tokio::test]
async fn every_order_update_once_and_a_fresh_jwt_for_each_connection() {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let (ready_tx, mut ready) = mpsc::unbounded_channel();
    let up = {
        let seen = Arc::clone(&seen);
        FakeUpstream::start_with_handler(
            |_, _| Reply::Accept,
            move |c| {
                tokio::spawn(coinbase(c, Arc::clone(&seen), ready_tx.clone()));
            },
        )
        .await
    };
    // The JWT helper: an unsigned stand-in with Coinbase's claims, exp = now + JWT_SECS.
    let dir = crate::support::temp_dir();
    let script = dir.path().join("coinbase-ws-jwt");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nd={0}\nn=$(( $(cat $d/n 2>/dev/null || echo 0) + 1 ))\necho $n > $d/n\n\
             b64() {{ base64 | tr -d '=\\n' | tr '/+' '_-'; }}\nnow=$(date +%s)\n\
             h=$(printf '{{\"alg\":\"ES256\",\"kid\":\"organizations/o/apiKeys/k\",\"nonce\":\"n%s\",\"typ\":\"JWT\"}}' $n | b64)\n\
             p=$(printf '{{\"iss\":\"cdp\",\"sub\":\"organizations/o/apiKeys/k\",\"nbf\":%s,\"exp\":%s}}' $now $((now + {1})) | b64)\n\
             echo $h.$p.c2lnbmF0dXJl\n",
            dir.path().display(),
            JWT_SECS
        ),
    )
    .expect("script");
    let cfg = recipe("coinbase", "coinbase", &up.url("/"), |ep| {
        if let Some(auth) = ep.auth.as_mut() {
            auth.token = TokenSource::Secret(Secret::Command(vec![
                "/bin/sh".into(),
                script.display().to_string(),
            ]));
        }
    });
    let d = start_with(cfg).await;
    let mut client = d.grpc().await;
    let mut sub = subscribe(&mut client, "coinbase", None).await;

    let c1 = tokio::time::timeout(T, ready.recv())
        .await
        .expect("subscribed in time")
        .expect("fake runs");
    d.wait_state("coinbase", State::Connected, T).await;
    for n in 0..3 {
        c1.heartbeat(n).await;
        c1.order(n).await;
    }
    // Past the JWT's expiry: the subscription goes on, on the same connection.
    let first_exp = jwt_exp(&lock(&seen).jwts[0].0).expect("exp");
    while unix_secs() <= first_exp {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for n in 3..6 {
        c1.heartbeat(n).await;
        c1.order(n).await;
    }
    assert!(!c1.conn.is_closed());

    // Coinbase drops the connection: the next one subscribes with a JWT signed for it, and
    // numbers its messages from 0 again.
    c1.conn.close(1001, "going away").await.expect("close");
    let c2 = tokio::time::timeout(T, ready.recv())
        .await
        .expect("subscribed again")
        .expect("fake runs");
    for n in 6..9 {
        c2.order(n).await;
        c2.heartbeat(n).await;
    }

    // Apps get every order update once, in order, with no gap: no heartbeats, no
    // subscriptions confirmation.
    for n in 0..9 {
        let m = next_message(&mut sub, T).await;
        let v: serde_json::Value = serde_json::from_slice(&m.data).expect("json");
        assert_eq!(v["channel"], "user", "{v}");
        assert_eq!(v["events"][0]["orders"][0]["n"], n, "{v}");
    }
    let seen = std::mem::take(&mut *lock(&seen));
    assert!(
        seen.faults.is_empty(),
        "the fake Coinbase saw: {:?}",
        seen.faults
    );
    assert_eq!(seen.jwts.len(), 2, "one JWT per connection");
    assert!(seen.jwts.iter().all(|(_, ok)| *ok), "{:?}", seen.jwts);
    assert_ne!(seen.jwts[0].0, seen.jwts[1].0, "a fresh JWT");
    assert_eq!(up.accepted(), 2);
    d.stop().await;
}
