//! One measured run of each kind of scenario.

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::daemon;
use crate::measure::{cpu_ns, cpu_since, now_ns, rss_kib, RssSampler};
use crate::subs::{self, Tally, Via};
use crate::upstream::{record, Job, Upstream};

/// Runtimes and shared state of the bench process.
pub struct Ctx {
    /// The built-in upstream's runtime (thread "upstream").
    pub up_rt: tokio::runtime::Runtime,
    /// Subscribers and readers (threads "subs").
    pub subs_rt: tokio::runtime::Runtime,
    pub base: PathBuf,
    pub rss: RssSampler,
    pub within: Duration,
}

impl Ctx {
    pub fn new(base: PathBuf) -> Result<Ctx, String> {
        let rt = |name: &str, workers: usize| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(workers)
                .enable_all()
                .thread_name(name)
                .build()
                .map_err(|e| format!("{name} runtime: {e}"))
        };
        Ok(Ctx {
            up_rt: rt("upstream", 1)?,
            subs_rt: rt("subs", 2)?,
            base,
            rss: RssSampler::start(),
            within: Duration::from_secs(60),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Uds,
    Tcp,
    Ndjson,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Transport::Uds => "grpc-uds",
            Transport::Tcp => "grpc-tcp",
            Transport::Ndjson => "ndjson",
        }
    }
}

/// One measured run.
#[derive(Debug, Default)]
pub struct Run {
    pub deliveries: u64,
    pub secs: f64,
    /// Mean over (reading) subscribers of messages/s each received.
    pub per_sub_rate: f64,
    /// All latencies in ns, sorted.
    pub lat_ns: Vec<u64>,
    pub cpu: [u64; 5],
    pub peak_rss_kib: u64,
    pub lost: u64,
    pub dup: u64,
    pub gaps: u64,
    pub errors: Vec<String>,
    /// Scenario-specific figures (reconnect ms, idle KiB, …).
    pub extra: Vec<(&'static str, f64)>,
}

impl Run {
    pub fn rate(&self) -> f64 {
        self.deliveries as f64 / self.secs.max(1e-9)
    }

    /// CPU ns per delivery of thread group `g`.
    pub fn cpu_per(&self, g: usize) -> f64 {
        if self.deliveries == 0 {
            return f64::NAN;
        }
        self.cpu[g] as f64 / self.deliveries as f64
    }

    pub fn extra(&self, k: &str) -> f64 {
        self.extra
            .iter()
            .find(|(n, _)| *n == k)
            .map_or(f64::NAN, |(_, v)| *v)
    }

    pub fn from_tallies(tallies: Vec<Tally>, t0: u64, cpu: [u64; 5], peak: u64) -> Run {
        let mut r = Run {
            cpu,
            peak_rss_kib: peak,
            ..Run::default()
        };
        let mut end = t0;
        let mut rates = Vec::new();
        for t in tallies {
            r.deliveries += t.got;
            r.lost += t.lost;
            r.dup += t.dup;
            r.gaps += t.gaps;
            end = end.max(t.last_ns);
            let secs = t.last_ns.saturating_sub(t0) as f64 / 1e9;
            if secs > 0.0 {
                rates.push(t.got as f64 / secs);
            }
            if let Some(e) = t.error {
                r.errors.push(e);
            }
            r.lat_ns.extend_from_slice(&t.lat_ns);
        }
        r.lat_ns.sort_unstable();
        r.secs = end.saturating_sub(t0) as f64 / 1e9;
        r.per_sub_rate = rates.iter().sum::<f64>() / rates.len().max(1) as f64;
        r
    }
}

/// Spawns `n` reading subscribers plus `stalled` that never read, waits until all subscribed.
fn spawn_subs(
    ctx: &Ctx,
    via: &Via,
    n: usize,
    stalled: usize,
    tally: &Tally,
    text: bool,
    stop: &CancellationToken,
) -> Vec<tokio::task::JoinHandle<Tally>> {
    let (tx, mut rx) = mpsc::channel(n + stalled + 1);
    let tasks = (0..n + stalled)
        .map(|i| {
            ctx.subs_rt.spawn(subs::run(
                via.clone(),
                tally.clone(),
                text,
                i >= n,
                tx.clone(),
                stop.clone(),
                ctx.within,
            ))
        })
        .collect();
    drop(tx);
    ctx.subs_rt.block_on(async {
        let _ = tokio::time::timeout(Duration::from_secs(20), async {
            for _ in 0..n + stalled {
                if rx.recv().await.is_none() {
                    break;
                }
            }
        })
        .await;
    });
    tasks
}

/// `n` subscribers over `t` (or, with `t = None`, plain WebSocket clients on the upstream: B1,
/// B2), `stalled` more that never read; the upstream sends `count` messages.
#[allow(clippy::too_many_arguments)]
pub fn fanout(
    ctx: &Ctx,
    t: Option<Transport>,
    n: usize,
    stalled: usize,
    payload: usize,
    text: bool,
    count: u64,
    rate: Option<f64>,
) -> Result<Run, String> {
    let up = Upstream::start(&ctx.up_rt).map_err(|e| format!("upstream: {e}"))?;
    let daemon = match t {
        Some(_) => {
            let d = daemon::start(&ctx.base, &[up.url()], count + 1024)?;
            d.wait_connected(Duration::from_secs(10))?;
            Some(d)
        }
        None => None,
    };
    let via = match (t, &daemon) {
        (Some(Transport::Uds), Some(d)) => Via::Grpc(d.uds.clone()),
        (Some(Transport::Tcp), Some(d)) => Via::Grpc(d.tcp.clone()),
        (Some(Transport::Ndjson), Some(d)) => Via::Ndjson(d.ndjson.clone()),
        _ => Via::Ws(up.url()),
    };
    let stop = CancellationToken::new();
    let tasks = spawn_subs(ctx, &via, n, stalled, &Tally::new(0, count), text, &stop);
    ctx.rss.take_peak();
    let cpu0 = cpu_ns();
    let t0 = now_ns();
    up.go(Job {
        from: 0,
        count,
        payload,
        rate,
        text,
    });
    let mut tasks = tasks.into_iter();
    let tallies: Vec<Tally> = ctx.subs_rt.block_on(async {
        let mut v = Vec::new();
        for h in tasks.by_ref().take(n) {
            v.push(h.await.unwrap_or_default());
        }
        v
    });
    let cpu = cpu_since(cpu0);
    let peak = ctx.rss.take_peak();
    stop.cancel();
    ctx.subs_rt.block_on(async {
        for h in tasks {
            let _ = h.await;
        }
    });
    let mut run = Run::from_tallies(tallies, t0, cpu, peak);
    if let Some(d) = daemon {
        if let Err(e) = d.stop() {
            run.errors.push(e);
        }
    }
    drop(up);
    Ok(run)
}

/// B3, the kernel floor: one thread ("b3-writer") writes the same bytes, 64 records per write,
/// to `n` Unix sockets; `n` readers check seqs as the subscribers do.
pub fn b3(ctx: &Ctx, n: usize, payload: usize, count: u64) -> Result<Run, String> {
    use tokio::io::AsyncReadExt;
    let mut writers = Vec::new();
    let mut tasks = Vec::new();
    for _ in 0..n {
        let (w, r) = std::os::unix::net::UnixStream::pair().map_err(|e| e.to_string())?;
        r.set_nonblocking(true).map_err(|e| e.to_string())?;
        writers.push(w);
        let tally = Tally::new(0, count);
        let within = ctx.within;
        tasks.push(ctx.subs_rt.spawn(async move {
            let mut t = tally;
            let r = match tokio::net::UnixStream::from_std(r) {
                Ok(r) => r,
                Err(_) => return t,
            };
            let mut r = tokio::io::BufReader::with_capacity(256 * 1024, r);
            let mut rec = vec![0u8; payload];
            let _ = tokio::time::timeout(within, async {
                for _ in 0..count {
                    if r.read_exact(&mut rec).await.is_err() {
                        break;
                    }
                    if let Some((seq, ts)) = crate::upstream::parse(&rec, false) {
                        t.on(seq, ts);
                    }
                }
            })
            .await;
            t.finish(None)
        }));
    }
    ctx.rss.take_peak();
    let cpu0 = cpu_ns();
    let t0 = now_ns();
    let writer = std::thread::Builder::new()
        .name("b3-writer".into())
        .spawn(move || {
            use std::io::Write;
            let mut buf = Vec::with_capacity(64 * payload);
            let mut seq = 0u64;
            while seq < count {
                buf.clear();
                let ts = now_ns();
                let end = (seq + 64).min(count);
                for s in seq..end {
                    buf.extend_from_slice(&record(s, ts, payload));
                }
                for w in writers.iter_mut() {
                    if w.write_all(&buf).is_err() {
                        return thread_cpu_ns();
                    }
                }
                seq = end;
            }
            // The thread is gone by the time the run's CPU is read: report its own.
            thread_cpu_ns()
        })
        .map_err(|e| e.to_string())?;
    let tallies: Vec<Tally> = ctx.subs_rt.block_on(async {
        let mut v = Vec::new();
        for h in tasks {
            v.push(h.await.unwrap_or_default());
        }
        v
    });
    let writer_ns = writer.join().unwrap_or(0);
    let mut cpu = cpu_since(cpu0);
    cpu[3] = writer_ns;
    let peak = ctx.rss.take_peak();
    Ok(Run::from_tallies(tallies, t0, cpu, peak))
}

/// CPU ns the calling thread has used.
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Reconnect: `k` messages, the upstream killed (connections dropped without a close frame,
/// listener closed) and restarted on the same port 100 ms later, then `k` more. Measures the
/// time from the new connection's accept to the first message of the new connection reaching
/// the last of 3 subscribers.
pub fn reconnect(ctx: &Ctx, k: u64) -> Result<Run, String> {
    let rate = 20_000.0;
    let up = Upstream::start(&ctx.up_rt).map_err(|e| format!("upstream: {e}"))?;
    let d = daemon::start(&ctx.base, &[up.url()], 4 * k)?;
    d.wait_connected(Duration::from_secs(10))?;
    let stop = CancellationToken::new();
    let mut tally = Tally::new(0, 2 * k);
    tally.mark = Some(k);
    let tasks = spawn_subs(ctx, &Via::Grpc(d.uds.clone()), 3, 0, &tally, false, &stop);
    let cpu0 = cpu_ns();
    let t0 = now_ns();
    let job = |from| Job {
        from,
        count: k,
        payload: 64,
        rate: Some(rate),
        text: false,
    };
    up.go(job(0));
    std::thread::sleep(Duration::from_secs_f64(k as f64 / rate + 0.3));
    up.kill();
    std::thread::sleep(Duration::from_millis(100));
    up.go(job(k));
    up.restart().map_err(|e| format!("upstream restart: {e}"))?;
    let tallies: Vec<Tally> = ctx.subs_rt.block_on(async {
        let mut v = Vec::new();
        for h in tasks {
            v.push(h.await.unwrap_or_default());
        }
        v
    });
    let accepted = up.last_accept_ns.load(std::sync::atomic::Ordering::Relaxed);
    let first = tallies.iter().map(|t| t.mark_ns).max().unwrap_or(0);
    let cpu = cpu_since(cpu0);
    let peak = ctx.rss.take_peak();
    let mut run = Run::from_tallies(tallies, t0, cpu, peak);
    run.extra.push((
        "accept_to_first_delivery_ms",
        if first > accepted {
            (first - accepted) as f64 / 1e6
        } else {
            f64::NAN
        },
    ));
    if let Err(e) = d.stop() {
        run.errors.push(e);
    }
    Ok(run)
}

/// Idle memory, measured in a fresh child process (`--idle-child`) so that memory freed by
/// earlier scenarios and kept by the allocator does not hide the daemon's. Prints one JSON line.
pub fn idle_child(base: PathBuf) -> Result<(), String> {
    let ctx = Ctx::new(base)?;
    let up = Upstream::start(&ctx.up_rt).map_err(|e| format!("upstream: {e}"))?;
    std::thread::sleep(Duration::from_millis(200));
    let rss0 = rss_kib();
    let d = daemon::start(&ctx.base, &[up.url(), up.url(), up.url()], 10_000)?;
    d.wait_connected(Duration::from_secs(10))?;
    std::thread::sleep(Duration::from_millis(500));
    let rss1 = rss_kib();
    let ndjson = d.ndjson.clone();
    let socks = ctx.subs_rt.block_on(async {
        use tokio::io::AsyncWriteExt;
        let mut v = Vec::new();
        for _ in 0..100 {
            let mut s = tokio::net::UnixStream::connect(&ndjson)
                .await
                .map_err(|e| e.to_string())?;
            s.write_all(b"{\"op\":\"subscribe\",\"endpoint\":\"bench\",\"from_seq\":0}\n")
                .await
                .map_err(|e| e.to_string())?;
            v.push(s);
        }
        Ok::<_, String>(v)
    })?;
    std::thread::sleep(Duration::from_millis(500));
    let rss2 = rss_kib();
    let uds = d.uds.clone();
    let streams = ctx.subs_rt.block_on(async {
        let mut c = ws_sidecar::client::connect(&uds)
            .await
            .map_err(|e| e.to_string())?;
        let mut v = Vec::new();
        for _ in 0..100 {
            let s = c
                .subscribe(ws_sidecar::proto::SubscribeRequest {
                    endpoint: subs::ENDPOINT.into(),
                    from_seq: Some(0),
                    filters: vec![],
                })
                .await
                .map_err(|e| e.to_string())?
                .into_inner();
            v.push(s);
        }
        Ok::<_, String>((c, v))
    })?;
    std::thread::sleep(Duration::from_millis(500));
    let rss3 = rss_kib();
    println!(
        "{}",
        serde_json::json!({
            "rss_before_daemon_kib": rss0, "rss_idle_kib": rss1,
            "idle_kib": rss1 as f64 - rss0 as f64,
            "ndjson_per100_kib": rss2 as f64 - rss1 as f64,
            "grpc_per100_kib": rss3 as f64 - rss2 as f64,
        })
    );
    drop(streams);
    drop(socks);
    d.stop()?;
    Ok(())
}

/// Runs [`idle_child`] in a child process and reads its figures.
pub fn idle(base: &std::path::Path) -> Result<Run, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let out = std::process::Command::new(exe)
        .arg("--idle-child")
        .arg(base)
        .output()
        .map_err(|e| format!("idle child: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(line).map_err(|e| {
        format!(
            "idle child said {stdout:?} / {:?}: {e}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    let mut run = Run {
        peak_rss_kib: v["rss_idle_kib"].as_u64().unwrap_or(0),
        ..Run::default()
    };
    for k in ["idle_kib", "ndjson_per100_kib", "grpc_per100_kib"] {
        run.extra.push((k, v[k].as_f64().unwrap_or(f64::NAN)));
    }
    Ok(run)
}
