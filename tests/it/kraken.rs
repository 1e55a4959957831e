//! Kraken spot v2 private channels, end to end: `docs/recipes/kraken.toml` as written (only the
//! URL, the token helper and the timings swapped) against a fake Kraken that enforces what
//! https://docs.kraken.com/api-reference/trading/get-websockets-token documents: a token must
//! start a subscription within 15 minutes of its creation (scaled down here), and the
//! subscription then outlives it; `{"method":"ping"}` is answered with `{"method":"pong"}`.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_tungstenite::tungstenite::Message;
use ws_sidecar::config::TokenSource;
use ws_sidecar::endpoint::State;
use ws_sidecar::secret::Secret;

use crate::support::daemon::{next_message, start_with, subscribe};
use crate::support::recipe::recipe;
use crate::support::{FakeUpstream, Reply, UpConn};

const T: Duration = Duration::from_secs(10);

/// Kraken's 15 minutes to start a subscription, scaled down.
const TOKEN_TTL: Duration = Duration::from_millis(1000);

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis()
}

/// What the fake saw on its connections.
#[derive(Default)]
struct Seen {
    /// Every subscribe's token, with whether it was accepted.
    subscribes: Vec<(String, bool)>,
    pongs: usize,
    faults: Vec<String>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A token's age, from the creation time the helper wrote into it (`kt-N-<unix ms>`): the fake
/// stands for both the REST endpoint that issued it and the WebSocket that checks it.
fn token_age(token: &str) -> Option<Duration> {
    let ms: u128 = token.rsplit('-').next()?.parse().ok()?;
    Some(Duration::from_millis(
        now_ms().saturating_sub(ms).try_into().ok()?,
    ))
}

/// One connection of the fake Kraken: the status update first, then the client's frames.
async fn kraken(c: UpConn, seen: Arc<Mutex<Seen>>) {
    let _ = c
        .send_text(r#"{"channel":"status","type":"update","data":[{"api_version":"v2","connection_id":1,"system":"online","version":"2.0.9"}]}"#)
        .await;
    while let Some(m) = c.recv().await {
        let Message::Text(text) = m else { continue };
        let v: serde_json::Value = serde_json::from_str(text.as_str()).unwrap_or_default();
        let times =
            r#""time_in":"2024-01-01T00:00:00.000000Z","time_out":"2024-01-01T00:00:00.000010Z""#;
        match v["method"].as_str() {
            Some("ping") => {
                lock(&seen).pongs += 1;
                let _ = c
                    .send_text(&format!(r#"{{"method":"pong",{times}}}"#))
                    .await;
            }
            Some("subscribe") if v["params"]["channel"] == "executions" => {
                let token = v["params"]["token"].as_str().unwrap_or_default().to_owned();
                let fresh = token_age(&token).is_some_and(|age| age <= TOKEN_TTL);
                lock(&seen).subscribes.push((token, fresh));
                let answer = if fresh {
                    format!(
                        r#"{{"method":"subscribe","result":{{"channel":"executions","snapshot":true}},"success":true,{times}}}"#
                    )
                } else {
                    format!(
                        r#"{{"error":"ESession:Invalid session","method":"subscribe","success":false,{times}}}"#
                    )
                };
                let _ = c.send_text(&answer).await;
                if fresh {
                    let _ = c
                        .send_text(
                            r#"{"channel":"executions","type":"snapshot","data":[],"sequence":1}"#,
                        )
                        .await;
                }
            }
            _ => lock(&seen).faults.push(format!("unexpected frame: {text}")),
        }
    }
}

fn execution(n: u64) -> String {
    format!(
        r#"{{"channel":"executions","type":"update","data":[{{"exec_type":"new","order_id":"O{n}","n":{n}}}]}}"#
    )
}

/// The next message apps get, as JSON.
async fn next_json(sub: &mut tonic::Streaming<ws_sidecar::proto::Event>) -> serde_json::Value {
    serde_json::from_slice(&next_message(sub, T).await.data).expect("json")
}

#[tokio::test]
async fn subscription_outlives_its_token_and_each_connection_subscribes_with_a_fresh_one() {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let up = {
        let seen = Arc::clone(&seen);
        FakeUpstream::start_with_handler(
            |_, _| Reply::Accept,
            move |c| {
                tokio::spawn(kraken(c, Arc::clone(&seen)));
            },
        )
        .await
    };
    // The token helper: `kt-N-<creation in unix ms>`; a `stale` file makes it hand out a token
    // created long ago (as a cached one would be).
    let dir = crate::support::temp_dir();
    let script = dir.path().join("kraken-ws-token");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nd={0}\nn=$(( $(cat $d/n 2>/dev/null || echo 0) + 1 ))\necho $n > $d/n\n\
             if [ -e $d/stale ]; then rm $d/stale; echo kt-$n-1000; exit 0; fi\n\
             echo kt-$n-$(date +%s%3N)\n",
            dir.path().display()
        ),
    )
    .expect("script");
    std::fs::write(dir.path().join("stale"), "").expect("stale");
    let cfg = recipe("kraken", "kraken", &up.url("/v2"), |ep| {
        if let Some(auth) = ep.auth.as_mut() {
            auth.token = TokenSource::Secret(Secret::Command(vec![
                "/bin/sh".into(),
                script.display().to_string(),
            ]));
            // The recipe's ttl, scaled as the fake's is.
            auth.ttl = Some(TOKEN_TTL);
        }
        ep.heartbeat.app_ping_interval = Duration::from_millis(100);
    });
    let d = start_with(cfg).await;
    let mut client = d.grpc().await;
    let mut sub = subscribe(&mut client, "kraken", None).await;

    // The stale token is refused; the next attempt fetches a fresh one.
    let refused = up.next_accepted_within(T).await.expect("connects");
    tokio::time::timeout(T, refused.closed())
        .await
        .expect("a refused subscription ends the attempt");
    let c1 = up.next_accepted_within(T).await.expect("tries again");
    d.wait_state("kraken", State::Connected, T).await;
    for n in 0..3 {
        c1.send_text(&execution(n)).await.expect("send");
    }
    // Past the token's time to start a subscription, pinging all along, and past when a
    // renewal would have come (not within 2 s of fetching): the subscription goes on, on the
    // same connection.
    tokio::time::sleep(TOKEN_TTL + Duration::from_millis(1500)).await;
    c1.send_text(r#"{"channel":"heartbeat"}"#)
        .await
        .expect("send");
    for n in 3..6 {
        c1.send_text(&execution(n)).await.expect("send");
    }
    assert!(lock(&seen).pongs >= 3, "app pings were sent and answered");
    assert!(!c1.is_closed());
    assert_eq!(up.accepted(), 2, "no reconnect at the token's expiry");

    // Kraken drops the connection: the next one subscribes with a new token.
    c1.close(1001, "going away").await.expect("close");
    let c2 = up.next_accepted_within(T).await.expect("reconnects");
    d.wait_state("kraken", State::Connected, T).await;
    for n in 6..8 {
        c2.send_text(&execution(n)).await.expect("send");
    }

    // Apps get each connection's snapshot and every update once, in order: no pong, no
    // heartbeat, no subscribe answer, no refusal.
    let mut got = Vec::new();
    for _ in 0..10 {
        let v = next_json(&mut sub).await;
        got.push(match v["type"].as_str() {
            Some("snapshot") => "snapshot".to_owned(),
            _ => format!("{}:{}", v["channel"], v["data"][0]["n"]),
        });
    }
    let want: Vec<String> = std::iter::once("snapshot".to_owned())
        .chain((0..6).map(|n| format!("\"executions\":{n}")))
        .chain(std::iter::once("snapshot".to_owned()))
        .chain((6..8).map(|n| format!("\"executions\":{n}")))
        .collect();
    assert_eq!(got, want);

    let seen = std::mem::take(&mut *lock(&seen));
    assert!(
        seen.faults.is_empty(),
        "the fake Kraken saw: {:?}",
        seen.faults
    );
    let tokens: Vec<(&str, bool)> = seen
        .subscribes
        .iter()
        .map(|(t, ok)| (t.as_str(), *ok))
        .collect();
    assert_eq!(tokens.len(), 3, "{tokens:?}");
    assert_eq!(tokens[0], ("kt-1-1000", false));
    assert!(
        tokens[1].0.starts_with("kt-2-") && tokens[1].1,
        "{tokens:?}"
    );
    assert!(
        tokens[2].0.starts_with("kt-3-") && tokens[2].1,
        "{tokens:?}"
    );
    d.stop().await;
}
