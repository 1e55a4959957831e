//! The publish path's measured runs, shared by `benches/publish.rs` (all its scenarios) and
//! `benches/fanout.rs` (its baseline B0 and scenario B, so that `fanout.json` holds every scenario
//! of BENCHMARKING.md): a daemon in this process whose only endpoint never connects, so every
//! durable publish stays in the outbox; publishers over the gRPC Unix socket; and the checks made
//! while measuring (every publish acked, ids unique and increasing per publisher, outbox depth =
//! acks, the store holds exactly the acked payloads).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio_util::sync::CancellationToken;
use ws_sidecar::client::{self, Target};
use ws_sidecar::proto::sidecar_client::SidecarClient;
use ws_sidecar::proto::{self, GetStatusRequest, PublishRequest};

const ENDPOINT: &str = "bench";
pub const PAYLOAD: usize = 64;
pub const PUBLISHERS: usize = 64;
pub const CHANNELS: usize = 4;
/// The publish-path target of BENCHMARKING.md.
pub const TARGET_RATE: f64 = 50_000.0;
pub const TARGET_P99_US: f64 = 5_000.0;

type Client = SidecarClient<tonic::transport::Channel>;

/// One measured run of one scenario.
pub struct Run {
    pub ops: u64,
    pub elapsed: Duration,
    /// Per-operation latencies in ns, sorted.
    pub lat_ns: Vec<u64>,
    pub cpu: CpuUse,
}

impl Run {
    pub fn new(mut lat_ns: Vec<u64>, elapsed: Duration, cpu: CpuUse) -> Run {
        lat_ns.sort_unstable();
        Run {
            ops: lat_ns.len() as u64,
            elapsed,
            lat_ns,
            cpu,
        }
    }

    /// CPU µs per operation used by thread group `g`.
    pub fn cpu_us_per_op(&self, g: usize) -> f64 {
        self.cpu.ns[g] as f64 / 1000.0 / self.ops.max(1) as f64
    }

    pub fn rate(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }

    /// Nearest-rank percentile in µs (`q` in 0..=1).
    pub fn pct_us(&self, q: f64) -> f64 {
        if self.lat_ns.is_empty() {
            return f64::NAN;
        }
        let rank = (q * self.lat_ns.len() as f64).ceil() as usize;
        self.lat_ns[rank.clamp(1, self.lat_ns.len()) - 1] as f64 / 1000.0
    }
}

/// Correctness failures found while measuring.
#[derive(Default)]
pub struct Checks {
    pub failed: Vec<String>,
}

impl Checks {
    pub fn fail(&mut self, what: String) {
        eprintln!("CHECK FAILED: {what}");
        self.failed.push(what);
    }
}

/// (mount point, filesystem type, source) of the mount holding `dir`, from /proc/self/mounts.
pub fn filesystem_of(dir: &Path) -> String {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return "unknown".into();
    };
    mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 3 && dir.starts_with(f[1])).then(|| (f[1], f[2], f[0]))
        })
        .max_by_key(|(mp, _, _)| mp.len())
        .map_or("unknown".into(), |(mp, ty, src)| {
            format!("{ty} ({src} on {mp})")
        })
}

/// CPU time (ns) used so far by this process's live threads, by group: the daemon's runtime
/// ("daemon" threads), the store's committer thread, the publishers' runtime, and the rest (the
/// main thread, which runs B0). From /proc/self/task/*/schedstat.
fn cpu_ns() -> [u64; 4] {
    super::cpu_ns_by_thread(&["daemon", "store-committer", "publishers"])
}

/// (busy, total) jiffies of the whole machine, from /proc/stat.
fn machine_jiffies() -> (u64, u64) {
    let Ok(s) = std::fs::read_to_string("/proc/stat") else {
        return (0, 0);
    };
    let v: Vec<u64> = s
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    // idle and iowait
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// CPU used between two points: by this process's thread groups, and by the whole machine.
#[derive(Clone, Copy)]
struct Cpu {
    start: [u64; 4],
    machine: (u64, u64),
    at: Instant,
}

/// What a run cost in CPU.
#[derive(Clone, Copy, Default)]
pub struct CpuUse {
    /// ns per group.
    pub ns: [u64; 4],
    /// Cores busy on the whole machine during the run (all processes).
    pub machine_cores: f64,
    /// Cores this process used during the run.
    pub own_cores: f64,
}

impl Cpu {
    fn start() -> Cpu {
        Cpu {
            start: cpu_ns(),
            machine: machine_jiffies(),
            at: Instant::now(),
        }
    }

    fn stop(self) -> CpuUse {
        let end = cpu_ns();
        let (busy, total) = machine_jiffies();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let (db, dt) = (
            busy.saturating_sub(self.machine.0),
            total.saturating_sub(self.machine.1),
        );
        let mut ns = [0u64; 4];
        for (i, n) in ns.iter_mut().enumerate() {
            *n = end[i].saturating_sub(self.start[i]);
        }
        let wall = self.at.elapsed().as_nanos().max(1) as f64;
        CpuUse {
            ns,
            machine_cores: if dt == 0 {
                f64::NAN
            } else {
                cores * db as f64 / dt as f64
            },
            own_cores: ns.iter().sum::<u64>() as f64 / wall,
        }
    }
}

/// The payload of publisher `p`'s `n`-th publish: who sent it, then filler up to 64 bytes.
pub fn payload(p: usize, n: u64) -> Bytes {
    let mut v = Vec::with_capacity(PAYLOAD);
    v.extend_from_slice(&(p as u64).to_le_bytes());
    v.extend_from_slice(&n.to_le_bytes());
    v.resize(PAYLOAD, b'x');
    Bytes::from(v)
}

// ---------------------------------------------------------------------------------------------
// B0: one durable redb commit per insert.

const B0_TABLE: redb::TableDefinition<(&str, u64), &[u8]> = redb::TableDefinition::new("outbox");

pub fn run_b0(base: &Path, dur: Duration) -> Result<Run, String> {
    let dir = tempfile::Builder::new()
        .prefix("b0-")
        .tempdir_in(base)
        .map_err(|e| format!("temp dir: {e}"))?;
    let db = redb::Database::create(dir.path().join("b0.redb")).map_err(|e| e.to_string())?;
    let mut lat = Vec::new();
    let cpu = Cpu::start();
    let start = Instant::now();
    let deadline = start + dur;
    let mut id = 0u64;
    while Instant::now() < deadline {
        id += 1;
        let t0 = Instant::now();
        // The value the store writes: kind byte, enqueue time, payload.
        let mut value = Vec::with_capacity(9 + PAYLOAD);
        value.push(1);
        value.extend_from_slice(&id.to_le_bytes());
        value.extend_from_slice(&payload(0, id));
        let txn = db.begin_write().map_err(|e| e.to_string())?;
        {
            let mut t = txn.open_table(B0_TABLE).map_err(|e| e.to_string())?;
            t.insert((ENDPOINT, id), value.as_slice())
                .map_err(|e| e.to_string())?;
        }
        txn.commit().map_err(|e| e.to_string())?;
        lat.push(t0.elapsed().as_nanos() as u64);
    }
    let elapsed = start.elapsed();
    Ok(Run::new(lat, elapsed, cpu.stop()))
}

// ---------------------------------------------------------------------------------------------
// The daemon, in this process on its own runtime.

struct Daemon {
    rt: tokio::runtime::Runtime,
    dir: tempfile::TempDir,
    grpc: PathBuf,
    store: PathBuf,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<bool>,
}

fn start_daemon(base: &Path) -> Result<Daemon, String> {
    let dir = tempfile::Builder::new()
        .prefix("daemon-")
        .tempdir_in(base)
        .map_err(|e| format!("temp dir: {e}"))?;
    let grpc = dir.path().join("run/grpc.sock");
    let store = dir.path().join("store");
    // Port 1 refuses connections; the one-hour backoff keeps the endpoint from retrying, so
    // nothing ever leaves the outbox.
    let toml = format!(
        r#"
[grpc]
listen = ["unix:{grpc}"]
[stream]
path = ""
[http]
listen = ""
[store]
path = "{store}"
[endpoints.{ENDPOINT}]
url = "ws://127.0.0.1:1/"
[endpoints.{ENDPOINT}.backoff]
initial = "1h"
max = "1h"
min_delay = "1h"
[endpoints.{ENDPOINT}.outbox]
max_messages = 100000000
max_bytes = "16GiB"
max_age = "1h"
durable = true
"#,
        grpc = grpc.display(),
        store = store.display(),
    );
    let super::InProcess {
        rt, shutdown, task, ..
    } = super::start_daemon(&toml, "bench.toml")?;
    Ok(Daemon {
        rt,
        dir,
        grpc,
        store,
        shutdown,
        task,
    })
}

impl Daemon {
    /// Stops the daemon, drops its runtime (and with it the store), and returns what the store
    /// file holds for the endpoint.
    fn stop(self, checks: &mut Checks) -> Option<ws_sidecar::store::Restored> {
        self.shutdown.cancel();
        let clean = self
            .rt
            .block_on(async { tokio::time::timeout(Duration::from_secs(6), self.task).await });
        if !matches!(clean, Ok(Ok(true))) {
            checks.fail(format!("daemon did not stop cleanly: {clean:?}"));
        }
        self.rt.shutdown_timeout(Duration::from_secs(2));
        let restored = ws_sidecar::store::Store::open(&self.store)
            .map_err(|e| e.to_string())
            .and_then(|s| {
                let r = s.restore(ENDPOINT, ws_sidecar::store::RestoreLimits::default());
                s.close();
                r.map_err(|e| e.to_string())
            })
            .map_err(|e| checks.fail(format!("reopening the store: {e}")))
            .ok();
        drop(self.dir);
        restored
    }
}

async fn connect(grpc: &Path, n: usize) -> Result<Vec<Client>, String> {
    let mut clients = Vec::new();
    for _ in 0..n {
        let mut c = client::connect(&Target::Unix(grpc.to_path_buf()))
            .await
            .map_err(|e| format!("connect {}: {e}", grpc.display()))?;
        // Warm the connection up (HTTP/2 handshake, first request) before the clock starts.
        c.get_status(GetStatusRequest { endpoint: None })
            .await
            .map_err(|e| format!("warm-up GetStatus: {e}"))?;
        clients.push(c);
    }
    Ok(clients)
}

async fn outbox_depth(c: &mut Client) -> Result<u64, String> {
    let st = c
        .get_status(GetStatusRequest {
            endpoint: Some(ENDPOINT.into()),
        })
        .await
        .map_err(|e| format!("GetStatus: {e}"))?
        .into_inner();
    st.endpoints
        .first()
        .map(|e| e.outbox_depth)
        .ok_or_else(|| "GetStatus returned no endpoint".into())
}

/// What one publisher saw: (outbox id, its own publish number) per ack, latencies, first error.
struct PublisherLog {
    acks: Vec<(u64, u64)>,
    lat_ns: Vec<u64>,
    error: Option<String>,
}

async fn publisher(mut c: Client, p: usize, deadline: Instant) -> PublisherLog {
    let mut log = PublisherLog {
        acks: Vec::new(),
        lat_ns: Vec::new(),
        error: None,
    };
    let mut n = 0u64;
    loop {
        n += 1;
        let req = PublishRequest {
            endpoint: ENDPOINT.into(),
            data: payload(p, n),
            kind: proto::Kind::Binary as i32,
            idempotency_key: String::new(),
            wait: proto::Wait::Stored as i32,
        };
        let t0 = Instant::now();
        let r = c.publish(req).await;
        let dt = t0.elapsed().as_nanos() as u64;
        match r {
            Ok(resp) => {
                log.acks.push((resp.into_inner().outbox_id, n));
                log.lat_ns.push(dt);
            }
            Err(e) => {
                log.error = Some(format!("publisher {p}, publish {n}: {e}"));
                return log;
            }
        }
        if Instant::now() >= deadline {
            return log;
        }
    }
}

/// Runs `publishers` concurrent sequential publishers for `dur` against a fresh daemon, and
/// checks what they were told against what the daemon and its store hold.
pub fn run_publish(
    crt: &tokio::runtime::Runtime,
    base: &Path,
    publishers: usize,
    dur: Duration,
    checks: &mut Checks,
) -> Result<Run, String> {
    let daemon = start_daemon(base)?;
    let channels = publishers.min(CHANNELS);
    let (logs, elapsed, cpu, depth) = crt.block_on(async {
        let clients = connect(&daemon.grpc, channels).await?;
        let cpu = Cpu::start();
        let start = Instant::now();
        let deadline = start + dur;
        let tasks: Vec<_> = (0..publishers)
            .map(|p| tokio::spawn(publisher(clients[p % channels].clone(), p, deadline)))
            .collect();
        let mut logs = Vec::new();
        for t in tasks {
            logs.push(t.await.map_err(|e| format!("publisher task: {e}"))?);
        }
        let elapsed = start.elapsed();
        let cpu = cpu.stop();
        let depth = outbox_depth(&mut clients[0].clone()).await?;
        Ok::<_, String>((logs, elapsed, cpu, depth))
    })?;
    let restored = daemon.stop(checks);

    // What was acked: outbox id → (publisher, publish number).
    let mut acked: HashMap<u64, (usize, u64)> = HashMap::new();
    let mut lat = Vec::new();
    for (p, log) in logs.iter().enumerate() {
        if let Some(e) = &log.error {
            checks.fail(format!("publish refused: {e}"));
        }
        let mut last = 0;
        for &(id, n) in &log.acks {
            if id <= last {
                checks.fail(format!(
                    "publisher {p}: acked id {id} after {last} (not increasing)"
                ));
            }
            last = id;
            if let Some(prev) = acked.insert(id, (p, n)) {
                checks.fail(format!(
                    "outbox id {id} acked twice: publisher {} #{} and publisher {p} #{n}",
                    prev.0, prev.1
                ));
            }
        }
        lat.extend_from_slice(&log.lat_ns);
    }
    let acks = lat.len() as u64;
    if depth != acks {
        checks.fail(format!("outbox depth {depth} after {acks} acks"));
    }
    if let Some(r) = restored {
        if r.outbox.len() as u64 != acks {
            checks.fail(format!(
                "store holds {} outbox entries after {acks} acks",
                r.outbox.len()
            ));
        }
        let mut bad = 0usize;
        for (id, _, _, data) in &r.outbox {
            match acked.get(id) {
                Some(&(p, n)) if *data == payload(p, n) => {}
                _ => bad += 1,
            }
        }
        if bad > 0 {
            checks.fail(format!(
                "{bad} stored outbox entries do not match an acked publish"
            ));
        }
    }
    Ok(Run::new(lat, elapsed, cpu))
}

/// `callers` concurrent sequential `GetStatus` callers for `dur`: the RPC floor.
pub fn run_status(
    crt: &tokio::runtime::Runtime,
    base: &Path,
    callers: usize,
    dur: Duration,
    checks: &mut Checks,
) -> Result<Run, String> {
    let daemon = start_daemon(base)?;
    let channels = callers.min(CHANNELS);
    let r = crt.block_on(async {
        let clients = connect(&daemon.grpc, channels).await?;
        let cpu = Cpu::start();
        let start = Instant::now();
        let deadline = start + dur;
        let tasks: Vec<_> = (0..callers)
            .map(|i| {
                let mut c = clients[i % channels].clone();
                tokio::spawn(async move {
                    let mut lat = Vec::new();
                    loop {
                        let t0 = Instant::now();
                        let req = GetStatusRequest {
                            endpoint: Some(ENDPOINT.into()),
                        };
                        if let Err(e) = c.get_status(req).await {
                            return Err(format!("GetStatus: {e}"));
                        }
                        lat.push(t0.elapsed().as_nanos() as u64);
                        if Instant::now() >= deadline {
                            return Ok(lat);
                        }
                    }
                })
            })
            .collect();
        let mut lat = Vec::new();
        for t in tasks {
            match t.await.map_err(|e| format!("caller task: {e}"))? {
                Ok(l) => lat.extend(l),
                Err(e) => checks.fail(e),
            }
        }
        let elapsed = start.elapsed();
        Ok::<_, String>(Run::new(lat, elapsed, cpu.stop()))
    });
    daemon.stop(checks);
    r
}
