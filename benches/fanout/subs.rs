//! Subscribers: gRPC (UDS or TCP), NDJSON, and plain WebSocket clients (B1/B2). Each checks the
//! payload seqs for holes and duplicates and records end-to-end latency.

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use futures_util::StreamExt;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use ws_sidecar::client::{self, Target};
use ws_sidecar::proto::{self, event::Event as Ev};

use crate::measure::now_ns;
use crate::upstream::parse;

pub const ENDPOINT: &str = "bench";

/// What one subscriber saw of seqs `from..end`.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    next: u64,
    end: u64,
    pub got: u64,
    pub lost: u64,
    pub dup: u64,
    /// Gap events from the daemon.
    pub gaps: u64,
    pub lat_ns: Vec<u64>,
    pub first_ns: u64,
    pub last_ns: u64,
    /// now_ns() when seq `mark` arrived (reconnect: first message of the new connection).
    pub mark: Option<u64>,
    pub mark_ns: u64,
    pub error: Option<String>,
}

impl Tally {
    pub fn new(from: u64, count: u64) -> Tally {
        Tally {
            next: from,
            end: from + count,
            lat_ns: Vec::with_capacity(count.min(4_000_000) as usize),
            ..Tally::default()
        }
    }

    pub fn done(&self) -> bool {
        self.next >= self.end
    }

    pub fn on(&mut self, seq: u64, ts: u64) {
        let now = now_ns();
        if seq < self.next {
            self.dup += 1;
            return;
        }
        self.lost += seq - self.next;
        self.next = seq + 1;
        self.got += 1;
        self.lat_ns.push(now.saturating_sub(ts));
        if self.first_ns == 0 {
            self.first_ns = now;
        }
        self.last_ns = now;
        if self.mark == Some(seq) {
            self.mark_ns = now;
        }
    }

    /// Counts what never came as lost.
    pub fn finish(mut self, error: Option<String>) -> Tally {
        if self.next < self.end {
            self.lost += self.end - self.next;
            self.next = self.end;
        }
        self.error = self.error.or(error);
        self
    }
}

#[derive(Debug, Clone)]
pub enum Via {
    Grpc(Target),
    Ndjson(PathBuf),
    Ws(String),
}

/// One subscriber: connects, subscribes (from seq 0 of the daemon's log, so nothing is missed
/// however late the subscription lands), reports ready, then reads until it has seen `count`
/// messages, `deadline` passes, or (`stalled`) forever without reading until `stop`.
pub async fn run(
    via: Via,
    mut t: Tally,
    text: bool,
    stalled: bool,
    ready: mpsc::Sender<()>,
    stop: CancellationToken,
    within: Duration,
) -> Tally {
    let r = tokio::time::timeout(within, read(via, &mut t, text, stalled, ready, stop)).await;
    let err = match r {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e),
        Err(_) => Some("timed out".into()),
    };
    t.finish(err)
}

async fn read(
    via: Via,
    t: &mut Tally,
    text: bool,
    stalled: bool,
    ready: mpsc::Sender<()>,
    stop: CancellationToken,
) -> Result<(), String> {
    match via {
        Via::Grpc(target) => {
            let mut c = client::connect(&target)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            let mut s = c
                .subscribe(proto::SubscribeRequest {
                    endpoint: ENDPOINT.into(),
                    from_seq: Some(0),
                    filters: vec![],
                })
                .await
                .map_err(|e| format!("subscribe: {e}"))?
                .into_inner();
            let _ = ready.send(()).await;
            if stalled {
                stop.cancelled().await;
                return Ok(());
            }
            while !t.done() {
                match s.message().await {
                    Ok(Some(ev)) => match ev.event {
                        Some(Ev::Message(m)) => match parse(&m.data, text) {
                            Some((seq, ts)) => t.on(seq, ts),
                            None => return Err("unparsable message".into()),
                        },
                        Some(Ev::Gap(_)) => t.gaps += 1,
                        _ => {}
                    },
                    Ok(None) => return Err("stream ended".into()),
                    Err(e) => return Err(format!("stream: {e}")),
                }
            }
            Ok(())
        }
        Via::Ndjson(path) => {
            let mut s = UnixStream::connect(&path)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            let line =
                format!("{{\"op\":\"subscribe\",\"endpoint\":\"{ENDPOINT}\",\"from_seq\":0}}\n");
            s.write_all(line.as_bytes())
                .await
                .map_err(|e| format!("write: {e}"))?;
            let _ = ready.send(()).await;
            if stalled {
                stop.cancelled().await;
                return Ok(());
            }
            let mut r = BufReader::with_capacity(256 * 1024, s);
            let mut buf = Vec::with_capacity(4096);
            while !t.done() {
                buf.clear();
                let n = r
                    .read_until(b'\n', &mut buf)
                    .await
                    .map_err(|e| format!("read: {e}"))?;
                if n == 0 {
                    return Err("connection closed".into());
                }
                match ndjson_message(&buf, text) {
                    Some(Some((seq, ts))) => t.on(seq, ts),
                    Some(None) => return Err("unparsable message line".into()),
                    None if contains(&buf, b"\"type\":\"gap\"") => t.gaps += 1,
                    None if contains(&buf, b"\"type\":\"error\"") => {
                        return Err(String::from_utf8_lossy(&buf).trim().to_owned())
                    }
                    None => {}
                }
            }
            Ok(())
        }
        Via::Ws(url) => {
            let hostport = url
                .trim_start_matches("ws://")
                .split('/')
                .next()
                .unwrap_or_default();
            let tcp = tokio::net::TcpStream::connect(hostport)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            let _ = tcp.set_nodelay(true);
            let (mut ws, _) = tokio_tungstenite::client_async(url.as_str(), tcp)
                .await
                .map_err(|e| format!("handshake: {e}"))?;
            let _ = ready.send(()).await;
            while !t.done() {
                match ws.next().await {
                    Some(Ok(Message::Binary(b))) => match parse(&b, false) {
                        Some((seq, ts)) => t.on(seq, ts),
                        None => return Err("unparsable message".into()),
                    },
                    Some(Ok(Message::Text(s))) => match parse(s.as_bytes(), true) {
                        Some((seq, ts)) => t.on(seq, ts),
                        None => return Err("unparsable message".into()),
                    },
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(format!("ws: {e}")),
                    None => return Err("ws closed".into()),
                }
            }
            Ok(())
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// `None`: not a message line; `Some(None)`: a message whose data does not parse. Reads only
/// the start of `data` (base64 for binary: 24 chars hold the 16-byte header).
fn ndjson_message(line: &[u8], text: bool) -> Option<Option<(u64, u64)>> {
    if !contains(line, b"\"type\":\"message\"") {
        return None;
    }
    let key = b"\"data\":\"";
    let at = line.windows(key.len()).position(|w| w == key)? + key.len();
    let data = &line[at..];
    Some(if text {
        data.get(..32).and_then(|d| parse(d, true))
    } else {
        data.get(..24).and_then(|d| {
            let raw = base64::engine::general_purpose::STANDARD.decode(d).ok()?;
            parse(&raw, false)
        })
    })
}
