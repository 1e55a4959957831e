//! Publishers: gRPC `Publish` with `wait = STORED`, one after another per publisher, each message
//! keyed `<endpoint>.<publisher>.<n>` so the feed can tell which acknowledged publish arrived.
//! One in ten is sent twice with an idempotency key, as a client retrying after a timeout would:
//! the second call must return the same outbox id and nothing may be queued twice.
//!
//! With `--confirmed` they publish with `wait = CONFIRMED` instead (no idempotency key: the
//! daemon refuses one there): a call returns OK only once the feed answered the message.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use ws_sidecar::client::{self, Target};
use ws_sidecar::proto;

/// Per-endpoint publish books.
pub struct Acks {
    pub endpoint: &'static str,
    /// Key of every acknowledged publish, with when the acknowledgement arrived.
    pub acked: Mutex<Vec<(String, Instant)>>,
    /// Refusals by gRPC code name.
    pub refused: Mutex<BTreeMap<String, u64>>,
    /// Retries with an idempotency key.
    pub retried: AtomicU64,
    /// Retries answered with a different outbox id than the first call.
    pub retry_mismatches: AtomicU64,
    /// How long each acknowledged publish took, call to OK (the confirm latency with
    /// `--confirmed`).
    pub latencies: Mutex<Vec<Duration>>,
}

impl Acks {
    pub fn new(endpoint: &'static str) -> Arc<Acks> {
        Arc::new(Acks {
            endpoint,
            acked: Mutex::new(Vec::new()),
            refused: Mutex::new(BTreeMap::new()),
            retried: AtomicU64::new(0),
            retry_mismatches: AtomicU64::new(0),
            latencies: Mutex::new(Vec::new()),
        })
    }

    fn refuse(&self, code: tonic::Code) {
        *self
            .refused
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(format!("{code:?}"))
            .or_default() += 1;
    }
}

/// Publishes every 10–90 ms until `stop`; with `confirmed`, `wait = CONFIRMED` and no retries.
pub async fn publisher(
    target: Target,
    name: String,
    acks: Arc<Acks>,
    confirmed: bool,
    stop: CancellationToken,
) {
    let mut n = 0u64;
    let mut client = None;
    while !stop.is_cancelled() {
        let c = match client.take() {
            Some(c) => c,
            None => match client::connect(&target).await {
                Ok(c) => c,
                Err(_) => {
                    acks.refuse(tonic::Code::Unavailable);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            },
        };
        n += 1;
        let key = format!("{}.{name}.{n}", acks.endpoint);
        let retry = !confirmed && fastrand::u8(0..10) == 0;
        let data = serde_json::json!({"pub": key, "pad": "p".repeat(fastrand::usize(16..200))});
        let req = proto::PublishRequest {
            endpoint: acks.endpoint.into(),
            data: data.to_string().into_bytes().into(),
            kind: proto::Kind::Text as i32,
            idempotency_key: if retry { key.clone() } else { String::new() },
            wait: if confirmed {
                proto::Wait::Confirmed
            } else {
                proto::Wait::Stored
            } as i32,
        };
        let mut c2 = c.clone();
        let called = Instant::now();
        match c2.publish(req.clone()).await {
            Ok(r) => {
                acks.latencies
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(called.elapsed());
                acks.acked
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push((key, Instant::now()));
                if retry {
                    acks.retried.fetch_add(1, Ordering::Relaxed);
                    match c2.publish(req).await {
                        Ok(again) if again.get_ref().outbox_id == r.get_ref().outbox_id => {}
                        Ok(_) => {
                            acks.retry_mismatches.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(s) => acks.refuse(s.code()),
                    }
                }
                client = Some(c);
            }
            Err(s) => {
                acks.refuse(s.code());
                // A transport error may have broken the channel: connect afresh next time.
                if s.code() != tonic::Code::Unavailable {
                    client = Some(c);
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(fastrand::u64(10..90))) => {}
        }
    }
}
