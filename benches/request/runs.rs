//! One measured run of one scenario: the open-loop schedule (a `pacer` thread), the three
//! clients (direct WebSocket, gRPC `Request`, NDJSON `request`), the check of every reply, and
//! the latencies per hop.
//!
//! Request `k` of a run is scheduled at `start + k / rate`. The pacer sleeps until then and hands
//! `k` to the client; every latency is measured from the scheduled time, so a stall anywhere
//! (pacer, client, daemon, upstream) shows up in the requests it delayed instead of being hidden
//! by a closed loop waiting for it. The first [`WARM`] requests of a run are sent and checked
//! but not measured.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use ws_sidecar::client::Target;
use ws_sidecar::proto::UpstreamRequest;

use crate::upstream::now_ns;

/// Requests at the start of every run that are checked but not measured (connections, caches
/// and the daemon's maps warm up).
pub const WARM: usize = 250;
/// How long after the last scheduled request a run waits for missing replies.
const GRACE: Duration = Duration::from_secs(5);
/// The endpoint's name in the daemon.
pub const ENDPOINT: &str = "rpc";

/// The three ways to the upstream.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Via {
    /// D: a tokio-tungstenite client on its own connection to the upstream.
    Direct,
    /// S: gRPC `Request` over the daemon's Unix socket, one call per request.
    Grpc,
    /// S-ndjson: `{"op":"request",…}` lines on one NDJSON connection.
    Ndjson,
}

/// Timestamps of one request (ns on the bench clock, 0 = not yet).
#[derive(Default)]
struct Slot {
    sent: AtomicU64,
    upstream: AtomicU64,
    daemon: AtomicU64,
    done: AtomicU64,
}

/// What every request of a run went through.
struct Slots {
    slots: Vec<Slot>,
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
    /// Unix ns minus bench ns, taken at the start of the run: turns the daemon's
    /// `received_at_unix_nanos` into the bench clock.
    unix_offset: i128,
}

impl Slots {
    fn fail(&self, what: String) {
        if self.errors.fetch_add(1, Ordering::Relaxed) == 0 {
            eprintln!("CHECK FAILED: {what}");
            if let Ok(mut f) = self.first_error.lock() {
                *f = Some(what);
            }
        }
    }

    /// Records the reply to `k` arriving at `done`, after its data passed the checks.
    fn done(&self, k: usize, upstream_at: u64, done: u64) {
        let s = &self.slots[k];
        if s.done.swap(done, Ordering::Relaxed) != 0 {
            self.fail(format!("request {k}: a second reply"));
        }
        s.upstream.store(upstream_at, Ordering::Relaxed);
    }
}

/// The `params` of request `k` in run `run`: its number and a tag naming both, so a reply from
/// another request or run does not pass for this one.
fn params(run: usize, k: usize) -> Value {
    json!([k, format!("run{run}-req{k}-xxxxxxxx")])
}

/// The JSON-RPC request `k` with id `id`.
fn request(run: usize, k: usize, id: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "echo", "params": params(run, k)})
}

/// The app's own id of request `k` through the daemon (the daemon puts its own on the wire).
fn app_id(k: usize) -> Value {
    Value::String(format!("app-{k}"))
}

/// Checks a JSON-RPC response to request `k`: the right id, a result echoing its params.
/// Returns when the upstream read the request.
fn check_reply(v: &Value, run: usize, k: usize, want_id: &Value) -> Result<u64, String> {
    if v.get("jsonrpc") != Some(&Value::from("2.0")) {
        return Err(format!("request {k}: reply without jsonrpc 2.0: {v}"));
    }
    if v.get("id") != Some(want_id) {
        return Err(format!(
            "request {k}: reply id {:?}, want {want_id}",
            v.get("id")
        ));
    }
    if let Some(e) = v.get("error") {
        return Err(format!("request {k}: upstream error {e}"));
    }
    let result = v.get("result");
    if result.and_then(|r| r.get("echo")) != Some(&params(run, k)) {
        return Err(format!("request {k}: wrong payload in {v}"));
    }
    result
        .and_then(|r| r.get("at"))
        .and_then(Value::as_u64)
        .ok_or_else(|| format!("request {k}: result without `at`: {v}"))
}

/// Where the daemon listens.
pub struct DaemonSockets<'a> {
    pub grpc: &'a Target,
    pub ndjson: &'a Path,
}

/// One measured run.
pub struct Run {
    /// Latency from the scheduled send to the reply in the app, ns, sorted (measured requests).
    pub lat: Vec<u64>,
    /// Per hop, ns, sorted: see [`HOPS`].
    pub hops: Vec<Vec<u64>>,
    pub errors: u64,
    pub first_error: Option<String>,
    pub cpu: crate::Cpu,
    /// Requests sent (warm-up included).
    pub sent: usize,
}

/// The hops of a request: scheduled → given to the client library (`pace`), → read by the
/// upstream (`to upstream`), upstream read → the daemon's handler has the reply (`to daemon`,
/// gRPC only: its `received_at_unix_nanos`), → in the app (`to app`: from the handler for gRPC,
/// from the upstream otherwise).
pub const HOPS: [&str; 4] = ["pace", "to upstream", "to daemon", "to app"];

impl Run {
    /// Nearest-rank percentile in µs of sorted `v` (`q` in 0..=1).
    pub fn pct(v: &[u64], q: f64) -> f64 {
        if v.is_empty() {
            return f64::NAN;
        }
        let rank = (q * v.len() as f64).ceil() as usize;
        v[rank.clamp(1, v.len()) - 1] as f64 / 1000.0
    }

    pub fn lat_us(&self, q: f64) -> f64 {
        Run::pct(&self.lat, q)
    }
}

/// Runs `n` requests at `rate` per second through `via` on the client runtime.
pub fn run(
    crt: &tokio::runtime::Runtime,
    via: Via,
    run: usize,
    n: usize,
    rate: f64,
    upstream: std::net::SocketAddr,
    daemon: &DaemonSockets,
) -> Result<Run, String> {
    let slots = Arc::new(Slots {
        slots: (0..n).map(|_| Slot::default()).collect(),
        errors: AtomicU64::new(0),
        first_error: Mutex::new(None),
        unix_offset: ws_sidecar::endpoint::unix_nanos() as i128 - now_ns() as i128,
    });
    let period = 1e9 / rate;
    let span = Duration::from_secs_f64(n as f64 / rate) + GRACE;
    let (tx, rx) = mpsc::unbounded_channel::<usize>();
    let (cpu, start) = crt.block_on(async {
        // Connected before the clock starts.
        let client = Client::connect(via, upstream, daemon).await?;
        let cpu = crate::Cpu::start();
        let start = now_ns() + 1_000_000;
        let pacer = pace(tx, start, period, n)?;
        let work = client.drive(run, n, rx, Arc::clone(&slots));
        match tokio::time::timeout(span + Duration::from_secs(1), work).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => slots.fail(e),
            Err(_) => {}
        }
        let mut cpu = cpu.stop();
        // The pacer has exited by now, taking its thread's CPU out of /proc/self/task: it
        // reports its own.
        if let Ok(Ok(ns)) = tokio::task::spawn_blocking(move || pacer.join()).await {
            cpu.ns[3] = ns;
        }
        Ok::<_, String>((cpu, start))
    })?;

    let mut lat = Vec::with_capacity(n);
    let mut hops = vec![Vec::with_capacity(n); HOPS.len()];
    let mut missing = 0usize;
    for (k, s) in slots.slots.iter().enumerate() {
        let done = s.done.load(Ordering::Relaxed);
        if done == 0 {
            missing += 1;
            continue;
        }
        if k < WARM {
            continue;
        }
        let sched = start + (k as f64 * period) as u64;
        let sent = s.sent.load(Ordering::Relaxed);
        let up = s.upstream.load(Ordering::Relaxed);
        let dmn = s.daemon.load(Ordering::Relaxed);
        lat.push(done.saturating_sub(sched));
        hops[0].push(sent.saturating_sub(sched));
        hops[1].push(up.saturating_sub(sent));
        if dmn != 0 {
            hops[2].push(dmn.saturating_sub(up));
            hops[3].push(done.saturating_sub(dmn));
        } else {
            hops[3].push(done.saturating_sub(up));
        }
    }
    if missing > 0 {
        slots.fail(format!(
            "{missing} of {n} requests got no reply within {GRACE:?} after the last was due"
        ));
    }
    lat.sort_unstable();
    hops.iter_mut().for_each(|h| h.sort_unstable());
    let first_error = slots.first_error.lock().ok().and_then(|f| f.clone());
    Ok(Run {
        lat,
        hops,
        errors: slots.errors.load(Ordering::Relaxed),
        first_error,
        cpu,
        sent: n,
    })
}

/// The pacer: hands `k` to the client at `start + k × period` (ns), late ones at once. Its
/// thread returns the CPU ns it used.
fn pace(
    tx: mpsc::UnboundedSender<usize>,
    start: u64,
    period: f64,
    n: usize,
) -> Result<std::thread::JoinHandle<u64>, String> {
    std::thread::Builder::new()
        .name("pacer".into())
        .spawn(move || {
            for k in 0..n {
                let due = start + (k as f64 * period) as u64;
                loop {
                    let now = now_ns();
                    if now >= due {
                        break;
                    }
                    std::thread::sleep(Duration::from_nanos(due - now));
                }
                if tx.send(k).is_err() {
                    break;
                }
            }
            std::fs::read_to_string("/proc/thread-self/schedstat")
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse().ok())
                .unwrap_or(0)
        })
        .map_err(|e| format!("pacer thread: {e}"))
}

enum Client {
    Direct(tokio_tungstenite::WebSocketStream<TcpStream>),
    Grpc(ws_sidecar::proto::sidecar_client::SidecarClient<tonic::transport::Channel>),
    Ndjson(UnixStream),
}

impl Client {
    async fn connect(
        via: Via,
        upstream: std::net::SocketAddr,
        daemon: &DaemonSockets<'_>,
    ) -> Result<Client, String> {
        Ok(match via {
            Via::Direct => {
                let tcp = TcpStream::connect(upstream)
                    .await
                    .map_err(|e| format!("connect upstream: {e}"))?;
                // As the daemon does on its upstream connection.
                let _ = tcp.set_nodelay(true);
                let (ws, _) = tokio_tungstenite::client_async(format!("ws://{upstream}/"), tcp)
                    .await
                    .map_err(|e| format!("upstream handshake: {e}"))?;
                Client::Direct(ws)
            }
            Via::Grpc => Client::Grpc(
                ws_sidecar::client::connect(daemon.grpc)
                    .await
                    .map_err(|e| format!("connect gRPC: {e}"))?,
            ),
            Via::Ndjson => Client::Ndjson(
                UnixStream::connect(daemon.ndjson)
                    .await
                    .map_err(|e| format!("connect NDJSON: {e}"))?,
            ),
        })
    }

    /// Sends every `k` the pacer hands over and collects the replies, until all `n` came back.
    async fn drive(
        self,
        run: usize,
        n: usize,
        rx: mpsc::UnboundedReceiver<usize>,
        slots: Arc<Slots>,
    ) -> Result<(), String> {
        match self {
            Client::Direct(ws) => direct(ws, run, n, rx, slots).await,
            Client::Grpc(c) => grpc(c, run, rx, slots).await,
            Client::Ndjson(s) => ndjson(s, run, n, rx, slots).await,
        }
    }
}

/// D: JSON-RPC ids are the request numbers; one task writes, another reads and matches.
async fn direct(
    ws: tokio_tungstenite::WebSocketStream<TcpStream>,
    run: usize,
    n: usize,
    mut rx: mpsc::UnboundedReceiver<usize>,
    slots: Arc<Slots>,
) -> Result<(), String> {
    let (mut w, mut r) = ws.split();
    let ws_slots = Arc::clone(&slots);
    let writer = tokio::spawn(async move {
        while let Some(k) = rx.recv().await {
            let text = request(run, k, json!(k)).to_string();
            ws_slots.slots[k].sent.store(now_ns(), Ordering::Relaxed);
            w.send(Message::text(text))
                .await
                .map_err(|e| format!("request {k}: send: {e}"))?;
        }
        Ok::<_, String>(w)
    });
    let mut got = 0;
    while got < n {
        let msg = match r.next().await {
            Some(Ok(m)) => m,
            Some(Err(e)) => return Err(format!("upstream connection: {e}")),
            None => return Err("upstream connection closed".into()),
        };
        let Message::Text(t) = msg else { continue };
        let done = now_ns();
        got += 1;
        let v: Value = match serde_json::from_str(t.as_str()) {
            Ok(v) => v,
            Err(e) => {
                slots.fail(format!("reply is not JSON ({e}): {t}"));
                continue;
            }
        };
        let k = match v.get("id").and_then(Value::as_u64) {
            Some(k) if (k as usize) < n => k as usize,
            _ => {
                slots.fail(format!("reply with an id no request had: {v}"));
                continue;
            }
        };
        match check_reply(&v, run, k, &json!(k)) {
            Ok(at) => slots.done(k, at, done),
            Err(e) => slots.fail(e),
        }
    }
    let mut w = writer.await.map_err(|e| format!("writer task: {e}"))??;
    let _ = w.close().await;
    Ok(())
}

/// S: one `Request` call per request, each on its own task, all on one channel.
async fn grpc(
    client: ws_sidecar::proto::sidecar_client::SidecarClient<tonic::transport::Channel>,
    run: usize,
    mut rx: mpsc::UnboundedReceiver<usize>,
    slots: Arc<Slots>,
) -> Result<(), String> {
    let mut calls = tokio::task::JoinSet::new();
    while let Some(k) = rx.recv().await {
        let mut c = client.clone();
        let slots = Arc::clone(&slots);
        calls.spawn(async move {
            let data = Bytes::from(request(run, k, app_id(k)).to_string());
            slots.slots[k].sent.store(now_ns(), Ordering::Relaxed);
            let r = c
                .request(UpstreamRequest {
                    endpoint: ENDPOINT.into(),
                    data,
                })
                .await;
            let done = now_ns();
            let rep = match r {
                Ok(r) => r.into_inner(),
                Err(s) => return slots.fail(format!("request {k}: {s}")),
            };
            if rep.error || !rep.end || rep.endpoint != ENDPOINT {
                return slots.fail(format!(
                    "request {k}: reply error={} end={} endpoint={:?}",
                    rep.error, rep.end, rep.endpoint
                ));
            }
            let checked = serde_json::from_slice::<Value>(&rep.data)
                .map_err(|e| format!("request {k}: reply is not JSON: {e}"))
                .and_then(|v| check_reply(&v, run, k, &app_id(k)));
            match checked {
                Ok(at) => {
                    let d = rep.received_at_unix_nanos as i128 - slots.unix_offset;
                    slots.slots[k]
                        .daemon
                        .store(d.clamp(1, u64::MAX as i128) as u64, Ordering::Relaxed);
                    slots.done(k, at, done);
                }
                Err(e) => slots.fail(e),
            }
        });
    }
    while let Some(r) = calls.join_next().await {
        r.map_err(|e| format!("call task: {e}"))?;
    }
    Ok(())
}

/// S-ndjson: request lines carry the request number as their line id and the app's own id in
/// the JSON-RPC request; both come back in the reply line.
async fn ndjson(
    sock: UnixStream,
    run: usize,
    n: usize,
    mut rx: mpsc::UnboundedReceiver<usize>,
    slots: Arc<Slots>,
) -> Result<(), String> {
    let (rd, mut wr) = sock.into_split();
    let ws_slots = Arc::clone(&slots);
    let writer = tokio::spawn(async move {
        while let Some(k) = rx.recv().await {
            let mut line = json!({"op": "request", "endpoint": ENDPOINT, "id": k,
                "data": request(run, k, app_id(k))})
            .to_string();
            line.push('\n');
            ws_slots.slots[k].sent.store(now_ns(), Ordering::Relaxed);
            wr.write_all(line.as_bytes())
                .await
                .map_err(|e| format!("request {k}: write: {e}"))?;
        }
        Ok::<_, String>(wr)
    });
    let mut lines = BufReader::new(rd).lines();
    let mut got = 0;
    while got < n {
        let line = match lines.next_line().await {
            Ok(Some(l)) => l,
            Ok(None) => return Err("NDJSON connection closed".into()),
            Err(e) => return Err(format!("NDJSON read: {e}")),
        };
        let done = now_ns();
        got += 1;
        let v: Value = match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(e) => {
                slots.fail(format!("NDJSON line is not JSON ({e}): {line}"));
                continue;
            }
        };
        let k = match v.get("id").and_then(Value::as_u64) {
            Some(k) if (k as usize) < n => k as usize,
            _ => {
                slots.fail(format!("NDJSON line with an id no request had: {line}"));
                continue;
            }
        };
        let ok_line = v.get("type") == Some(&Value::from("reply"))
            && v.get("endpoint") == Some(&Value::from(ENDPOINT))
            && v.get("error") == Some(&Value::Bool(false))
            && v.get("end") == Some(&Value::Bool(true));
        if !ok_line {
            slots.fail(format!("request {k}: not a plain last reply: {line}"));
            continue;
        }
        match v
            .get("data")
            .ok_or_else(|| format!("request {k}: reply line without data"))
            .and_then(|d| check_reply(d, run, k, &app_id(k)))
        {
            Ok(at) => slots.done(k, at, done),
            Err(e) => slots.fail(e),
        }
    }
    let _ = writer.await;
    Ok(())
}
