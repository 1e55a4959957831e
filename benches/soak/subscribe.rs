//! Subscribers: per endpoint one verifier that stays from seq 1 to the end, and churners (gRPC
//! over the Unix socket and TCP, NDJSON) that join, read for a while, vanish and rejoin with
//! `from_seq` = the last seq they saw. Every stream is checked for holes and duplicates, and
//! every seq's content against what other subscribers saw for it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio_util::sync::CancellationToken;

use ws_sidecar::client::{self, Target};
use ws_sidecar::proto::{self, event::Event as E};

/// What a subscriber read, from either API.
#[derive(Debug)]
enum Ev {
    /// seq and the feed's message number (`n`).
    Message(u64, Option<u64>),
    Gap(u64, u64, String),
    Other,
}

/// Per-endpoint books shared by all its subscribers.
pub struct Books {
    pub endpoint: &'static str,
    /// Message number by seq, as first seen by anyone; 0 = not seen yet.
    numbers: Mutex<Vec<u64>>,
    /// Everything the verifier received, in order: (seq, message number).
    pub verified: Mutex<Vec<(u64, u64)>>,
    /// Highest message number the verifier has seen.
    pub verified_upto: AtomicU64,
    pub joins: AtomicU64,
    pub messages: AtomicU64,
    /// Seqs skipped without a gap event saying so.
    pub holes: AtomicU64,
    /// Seqs received twice by the same subscriber stream.
    pub duplicates: AtomicU64,
    /// A seq whose content differs between subscribers, or that is not a feed message.
    pub mismatches: AtomicU64,
    /// Gap events by reason, and the seqs they covered.
    pub gaps: Mutex<BTreeMap<String, (u64, u64)>>,
    /// Subscribe attempts or streams that failed with an error.
    pub errors: AtomicU64,
}

impl Books {
    pub fn new(endpoint: &'static str) -> Arc<Books> {
        Arc::new(Books {
            endpoint,
            numbers: Mutex::new(Vec::new()),
            verified: Mutex::new(Vec::new()),
            verified_upto: AtomicU64::new(0),
            joins: AtomicU64::new(0),
            messages: AtomicU64::new(0),
            holes: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            mismatches: AtomicU64::new(0),
            gaps: Mutex::new(BTreeMap::new()),
            errors: AtomicU64::new(0),
        })
    }

    fn content(&self, seq: u64, n: Option<u64>) {
        let Some(n) = n else {
            self.mismatches.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let Ok(i) = usize::try_from(seq) else { return };
        let mut numbers = self.numbers.lock().unwrap_or_else(PoisonError::into_inner);
        if numbers.len() <= i {
            numbers.resize(i + 1, 0);
        }
        match numbers[i] {
            0 => numbers[i] = n,
            seen if seen != n => {
                self.mismatches.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }
}

/// Where one subscriber's stream stands.
#[derive(Default)]
struct Cursor {
    last: Option<u64>,
}

impl Cursor {
    fn apply(&mut self, ev: &Ev, books: &Books) {
        match ev {
            Ev::Message(seq, n) => {
                books.messages.fetch_add(1, Ordering::Relaxed);
                books.content(*seq, *n);
                match self.last {
                    Some(l) if *seq <= l => {
                        books.duplicates.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    Some(l) if *seq > l + 1 => {
                        books.holes.fetch_add(*seq - l - 1, Ordering::Relaxed);
                    }
                    _ => {}
                }
                self.last = Some(*seq);
            }
            Ev::Gap(from, to, reason) => {
                let mut gaps = books.gaps.lock().unwrap_or_else(PoisonError::into_inner);
                let g = gaps.entry(reason.clone()).or_default();
                g.0 += 1;
                g.1 += to.saturating_sub(*from) + 1;
                self.last = Some(self.last.map_or(*to, |l| l.max(*to)));
            }
            Ev::Other => {}
        }
    }
}

fn number_of(data: &[u8]) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_slice(data).ok()?;
    v.get("n")?.as_u64()
}

fn from_grpc(ev: proto::Event) -> Ev {
    match ev.event {
        Some(E::Message(m)) => Ev::Message(m.seq, number_of(&m.data)),
        Some(E::Gap(g)) => {
            let reason = proto::GapReason::try_from(g.reason)
                .map_or("UNKNOWN".to_owned(), |r| r.as_str_name().to_owned());
            Ev::Gap(g.from_seq, g.to_seq, reason)
        }
        _ => Ev::Other,
    }
}

fn from_ndjson(line: &str) -> Option<Ev> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    Some(match v.get("type")?.as_str()? {
        "message" => {
            let data = v.get("data")?.as_str()?;
            Ev::Message(v.get("seq")?.as_u64()?, number_of(data.as_bytes()))
        }
        "gap" => Ev::Gap(
            v.get("from_seq")?.as_u64()?,
            v.get("to_seq")?.as_u64()?,
            v.get("reason")?.as_str()?.to_owned(),
        ),
        "error" => return None,
        _ => Ev::Other,
    })
}

/// How a churner reaches the daemon.
#[derive(Clone)]
pub enum Via {
    Grpc(Target),
    Ndjson(PathBuf),
}

/// Subscribes from seq 0 and stays until `done`, recording every message in order.
pub async fn verifier(grpc: Target, books: Arc<Books>, done: CancellationToken) {
    let mut cursor = Cursor::default();
    while !done.is_cancelled() {
        let from = Some(cursor.last.unwrap_or(0));
        let mut stream = match subscribe_grpc(&grpc, books.endpoint, from).await {
            Ok(s) => s,
            Err(_) => {
                books.errors.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        loop {
            let ev = tokio::select! {
                _ = done.cancelled() => return,
                ev = stream.message() => ev,
            };
            let Ok(Some(ev)) = ev else {
                books.errors.fetch_add(1, Ordering::Relaxed);
                break;
            };
            let ev = from_grpc(ev);
            if let Ev::Message(seq, Some(n)) = ev {
                books
                    .verified
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push((seq, n));
                books.verified_upto.fetch_max(n, Ordering::Relaxed);
            }
            cursor.apply(&ev, &books);
        }
    }
}

/// Joins, reads for 1–8 s, leaves without warning, waits 0.2–4 s, rejoins from its last seq.
pub async fn churner(via: Via, books: Arc<Books>, stop: CancellationToken) {
    let mut cursor = Cursor::default();
    while !stop.is_cancelled() {
        let stay = Duration::from_millis(fastrand::u64(1000..8000));
        let r = match &via {
            Via::Grpc(t) => grpc_visit(t, &books, &mut cursor, stay, &stop).await,
            Via::Ndjson(p) => ndjson_visit(p, &books, &mut cursor, stay, &stop).await,
        };
        if r.is_err() {
            books.errors.fetch_add(1, Ordering::Relaxed);
        }
        let away = Duration::from_millis(fastrand::u64(200..4000));
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(away) => {}
        }
    }
}

async fn subscribe_grpc(
    target: &Target,
    endpoint: &str,
    from_seq: Option<u64>,
) -> anyhow::Result<tonic::Streaming<proto::Event>> {
    let mut c = client::connect(target).await?;
    let req = proto::SubscribeRequest {
        endpoint: endpoint.into(),
        from_seq,
        filters: vec![],
    };
    Ok(c.subscribe(req).await?.into_inner())
}

async fn grpc_visit(
    target: &Target,
    books: &Books,
    cursor: &mut Cursor,
    stay: Duration,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let mut stream = subscribe_grpc(target, books.endpoint, cursor.last).await?;
    books.joins.fetch_add(1, Ordering::Relaxed);
    let leave = tokio::time::sleep(stay);
    tokio::pin!(leave);
    loop {
        let ev = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = &mut leave => return Ok(()),
            ev = stream.message() => ev?,
        };
        let Some(ev) = ev else {
            anyhow::bail!("stream ended");
        };
        cursor.apply(&from_grpc(ev), books);
    }
}

async fn ndjson_visit(
    path: &PathBuf,
    books: &Books,
    cursor: &mut Cursor,
    stay: Duration,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let sock = UnixStream::connect(path).await?;
    let (rd, mut wr) = sock.into_split();
    let mut req = serde_json::json!({"op": "subscribe", "endpoint": books.endpoint});
    if let Some(l) = cursor.last {
        req["from_seq"] = l.into();
    }
    wr.write_all(format!("{req}\n").as_bytes()).await?;
    books.joins.fetch_add(1, Ordering::Relaxed);
    let mut lines = BufReader::new(rd).lines();
    let leave = tokio::time::sleep(stay);
    tokio::pin!(leave);
    loop {
        let line = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = &mut leave => return Ok(()),
            l = lines.next_line() => l?,
        };
        let Some(line) = line else {
            anyhow::bail!("daemon closed the NDJSON connection");
        };
        match from_ndjson(&line) {
            Some(ev) => cursor.apply(&ev, books),
            None => anyhow::bail!("NDJSON error or unreadable line: {line}"),
        }
    }
}
