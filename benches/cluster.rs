//! Cluster benchmark (issue 17): the added latency of leader → JetStream → follower delivery
//! over local delivery, and messages/s through the stream.
//!
//! `cargo bench --bench cluster` (5 interleaved repetitions) or `-- --quick` (3 shorter ones);
//! `--reps N`, `--rate R` (msgs/s of the latency runs, default 1000), `--secs S` (their length,
//! default 5, 1 with `--quick`), `--count N` (messages of a clustered throughput run).
//!
//! Needs a nats-server with JetStream: `$NATS_SERVER_BIN`, else `nats-server` on PATH (started
//! as `tests/support/nats.rs` starts it, which this bench includes: `-js -p -1 -sd <tmp>`,
//! ready on its "Server is ready" line). Without one it prints one line and exits 0.
//!
//! Every run starts from scratch: a fresh built-in upstream (`benches/fanout/upstream.rs`), fresh
//! daemons (`benches/fanout/daemon.rs`, in this process, each on its own runtime) and, for the
//! clustered runs, a fresh nats-server. Scenarios, interleaved in every repetition:
//! - `L`: one standalone daemon, one gRPC-UDS subscriber; the upstream sends 64 B binary
//!   messages open-loop at `--rate`; end-to-end latency upstream send → subscriber receive.
//! - `C-leader` / `C-follower` (one run): two daemons with `[cluster]` (lease_ttl 1 s,
//!   replicas 1) and `cluster = true` on the endpoint; host-a starts first and leads, host-b
//!   follows. One gRPC-UDS subscriber on each, same rate. Added latency = this run's percentile minus the
//!   same repetition's `L` percentile.
//! - `T-local`: `L`'s set-up, the upstream flat out (`10 × --count` messages): the local ceiling.
//! - `T-leader` / `T-follower` (one run): `C`'s set-up, the upstream flat out (`--count`
//!   messages); messages/s delivered to each host's subscriber, from the job's start to its last
//!   message.
//!
//! Checks (any failure makes the bench exit 1): every subscriber sees every payload seq exactly
//! once and in order (no hole, no duplicate, no gap event, no error), and on a clustered run the
//! daemon seq of each message is its payload seq plus one constant, the same on both hosts (the
//! same message under the same seq on leader and follower).
//!
//! Writes `target/bench/cluster.json`.

#[path = "common/mod.rs"]
mod common;
#[allow(dead_code)]
#[path = "fanout/daemon.rs"]
mod daemon;
#[allow(dead_code)]
#[path = "fanout/measure.rs"]
mod measure;
#[allow(dead_code)]
#[path = "../tests/support/nats.rs"]
mod nats;
#[allow(dead_code)]
#[path = "fanout/subs.rs"]
mod subs;
#[allow(dead_code)]
#[path = "fanout/upstream.rs"]
mod upstream;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use ws_sidecar::client::Target;
use ws_sidecar::cluster::slot::Role;
use ws_sidecar::endpoint::State;
use ws_sidecar::proto::{self, event::Event as Ev};

use measure::{cpu_ns, cpu_since, fmt_range, now_ns, pct_us, stats_json, summary, GROUPS};
use nats::NatsServer;
use subs::{Tally, ENDPOINT};
use upstream::{parse, Job, Upstream};

const PAYLOAD: usize = 64;
/// Bounds every wait for a daemon's role or connection.
const WAIT: Duration = Duration::from_secs(20);

struct Args {
    reps: usize,
    quick: bool,
    rate: f64,
    secs: f64,
    count: u64,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        reps: 5,
        quick: false,
        rate: 1000.0,
        secs: 5.0,
        count: 30_000,
    };
    let (mut reps, mut secs, mut count) = (None, None, None);
    let mut it = std::env::args().skip(1);
    let num = |it: &mut std::iter::Skip<std::env::Args>, f: &str| -> Result<f64, String> {
        let v = it.next().ok_or(format!("{f} needs a number"))?;
        v.parse::<f64>().map_err(|e| format!("{f} {v}: {e}"))
    };
    while let Some(f) = it.next() {
        match f.as_str() {
            "--quick" => a.quick = true,
            "--reps" => reps = Some(num(&mut it, &f)? as usize),
            "--rate" => a.rate = num(&mut it, &f)?,
            "--secs" => secs = Some(num(&mut it, &f)?),
            "--count" => count = Some(num(&mut it, &f)? as u64),
            _ => {} // cargo bench passes --bench
        }
    }
    if a.quick {
        (a.reps, a.secs, a.count) = (3, 1.0, 10_000);
    }
    a.reps = reps.unwrap_or(a.reps).max(1);
    a.secs = secs.unwrap_or(a.secs);
    a.count = count.unwrap_or(a.count).max(100);
    Ok(a)
}

/// Runtimes of the bench process (thread names: CPU groups of `measure`).
struct Ctx {
    up_rt: tokio::runtime::Runtime,
    subs_rt: tokio::runtime::Runtime,
    /// Runs the nats-server fixture (its stderr reader); group "other".
    nats_rt: tokio::runtime::Runtime,
    base: PathBuf,
}

/// What one subscriber saw.
struct Seen {
    host: &'static str,
    tally: Tally,
    /// Daemon seq minus payload seq (the same for every message, else an error).
    offset: Option<u64>,
}

/// One measured run: one `Seen` per subscriber plus figures.
struct Run {
    seen: Vec<Seen>,
    t0: u64,
    cpu: [u64; 5],
    /// CPU ns of the nats-server process during the run.
    nats_cpu: u64,
    /// Appends the leader's stream writer made, and their mean time (µs, upstream → PubAck).
    appends: u64,
    append_mean_us: f64,
    errors: Vec<String>,
}

impl Run {
    fn host(&self, host: &str) -> Option<&Seen> {
        self.seen.iter().find(|s| s.host == host)
    }
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("cluster bench: {e}");
            return ExitCode::from(64);
        }
    };
    measure::epoch();
    let out_dir = common::target_dir().join("bench");
    let base = out_dir.join("tmp");
    if let Err(e) = std::fs::create_dir_all(&base) {
        eprintln!("cluster bench: cannot create {}: {e}", base.display());
        return ExitCode::FAILURE;
    }
    let rt = |name: &str, workers: usize| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .thread_name(name)
            .build()
            .expect("runtime")
    };
    let ctx = Ctx {
        up_rt: rt("upstream", 1),
        subs_rt: rt("subs", 2),
        nats_rt: rt("nats-fixture", 1),
        base,
    };
    // One server up and down first: the fixture prints the one "skipped" line when there is none.
    let Some(probe) = ctx.nats_rt.block_on(NatsServer::start("cluster bench")) else {
        return ExitCode::SUCCESS;
    };
    let nats_version = nats_version();
    ctx.nats_rt.block_on(async move {
        let mut p = probe;
        p.kill().await;
    });

    let lat_count = ((args.rate * args.secs) as u64).max(10);
    println!(
        "cluster bench: upstream → daemon(s) → one gRPC-UDS subscriber per host, all on 127.0.0.1"
    );
    println!("  daemons: in this process, each on its own multi-thread runtime (threads \"daemon\"), fresh per run");
    println!(
        "  nats-server: {nats_version}, fresh per clustered run (-js, store in a temp dir); cluster: lease_ttl 1s, replicas 1"
    );
    println!(
        "  latency runs: {lat_count} × {PAYLOAD} B at {} msgs/s open-loop; throughput: {} (clustered) / {} (local) flat out",
        args.rate,
        args.count,
        10 * args.count
    );
    println!(
        "  {} repetitions{}, interleaved L, C, T-local, T; {} cores",
        args.reps,
        if args.quick { " (--quick)" } else { "" },
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );

    let mut l_runs = Vec::new();
    let mut c_runs = Vec::new();
    let mut tl_runs = Vec::new();
    let mut t_runs = Vec::new();
    let started = Instant::now();
    for rep in 1..=args.reps {
        let steps: [(&str, bool, u64, Option<f64>); 4] = [
            ("L", false, lat_count, Some(args.rate)),
            ("C", true, lat_count, Some(args.rate)),
            ("T-local", false, 10 * args.count, None),
            ("T", true, args.count, None),
        ];
        for (name, clustered, count, rate) in steps {
            let r = if clustered {
                run_cluster(&ctx, count, rate)
            } else {
                run_local(&ctx, count, rate)
            };
            let run = match r {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("cluster bench: {name} failed to run: {e}");
                    return ExitCode::FAILURE;
                }
            };
            print_run(rep, name, &run);
            match name {
                "L" => l_runs.push(run),
                "C" => c_runs.push(run),
                "T-local" => tl_runs.push(run),
                _ => t_runs.push(run),
            }
        }
    }
    println!("  ({:.0} s in all)", started.elapsed().as_secs_f64());
    let ok = report(
        &args,
        &nats_version,
        &l_runs,
        &c_runs,
        &tl_runs,
        &t_runs,
        &out_dir.join("cluster.json"),
    );
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn nats_version() -> String {
    let bin = std::env::var_os("NATS_SERVER_BIN")
        .filter(|b| !b.is_empty())
        .map_or_else(|| PathBuf::from("nats-server"), PathBuf::from);
    std::process::Command::new(&bin)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|e| format!("{}: {e}", bin.display()))
}

/// CPU ns used so far by this process's `nats-server` children (all their threads).
fn nats_cpu_ns() -> u64 {
    let mut total = 0;
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    for t in tasks.flatten() {
        let children = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
        for pid in children.split_whitespace() {
            let p = Path::new("/proc").join(pid);
            let comm = std::fs::read_to_string(p.join("comm")).unwrap_or_default();
            if comm.trim() != "nats-server" {
                continue;
            }
            for th in std::fs::read_dir(p.join("task"))
                .into_iter()
                .flatten()
                .flatten()
            {
                total += std::fs::read_to_string(th.path().join("schedstat"))
                    .ok()
                    .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    total
}

/// Polls `what` every 5 ms until it holds, for at most [`WAIT`].
fn wait_until(what: &str, f: impl Fn() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + WAIT;
    while !f() {
        if Instant::now() > deadline {
            return Err(format!("{what} within {WAIT:?}"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

fn role_and_state(d: &daemon::Daemon) -> (Role, State) {
    match d.registry().get(ENDPOINT) {
        Some(ep) => (ep.cluster.status().role, ep.state().state),
        None => (Role::Standalone, State::Closed),
    }
}

/// The endpoint's role and state, for a failure message.
fn describe(d: &daemon::Daemon) -> String {
    match d.registry().get(ENDPOINT) {
        Some(ep) => format!("{:?} / {:?}", ep.cluster.status(), ep.state()),
        None => "no endpoint".into(),
    }
}

/// One subscriber per `(host, target)`, from seq 0; returns once all are subscribed.
fn subscribe(
    ctx: &Ctx,
    on: &[(&'static str, Target)],
    count: u64,
) -> Vec<tokio::task::JoinHandle<Seen>> {
    let (tx, mut rx) = mpsc::channel(on.len());
    let tasks = on
        .iter()
        .map(|(host, target)| {
            let (host, target, tx) = (*host, target.clone(), tx.clone());
            ctx.subs_rt.spawn(async move {
                let mut seen = Seen {
                    host,
                    tally: Tally::new(0, count),
                    offset: None,
                };
                let r =
                    tokio::time::timeout(Duration::from_secs(120), read(&target, &mut seen, tx))
                        .await;
                let err = match r {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some(e),
                    Err(_) => Some("timed out".into()),
                };
                seen.tally = std::mem::take(&mut seen.tally).finish(err);
                seen
            })
        })
        .collect();
    drop(tx);
    ctx.subs_rt.block_on(async {
        for _ in on {
            let _ = tokio::time::timeout(WAIT, rx.recv()).await;
        }
    });
    tasks
}

async fn read(target: &Target, seen: &mut Seen, ready: mpsc::Sender<()>) -> Result<(), String> {
    let mut c = ws_sidecar::client::connect(target)
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
    let t = &mut seen.tally;
    while !t.done() {
        match s.message().await {
            Ok(Some(ev)) => match ev.event {
                Some(Ev::Message(m)) => {
                    let Some((seq, ts)) = parse(&m.data, false) else {
                        return Err("unparsable message".into());
                    };
                    t.on(seq, ts);
                    let off = m.seq.wrapping_sub(seq);
                    match seen.offset {
                        None => seen.offset = Some(off),
                        Some(o) if o != off => {
                            return Err(format!(
                                "payload seq {seq} came as daemon seq {} (offset {o} before)",
                                m.seq
                            ))
                        }
                        Some(_) => {}
                    }
                }
                Some(Ev::Gap(_)) => t.gaps += 1,
                _ => {}
            },
            Ok(None) => return Err("stream ended".into()),
            Err(e) => return Err(format!("stream: {e}")),
        }
    }
    Ok(())
}

/// Posts the job and collects what the subscribers saw.
fn measure_run(
    ctx: &Ctx,
    up: &Upstream,
    tasks: Vec<tokio::task::JoinHandle<Seen>>,
    count: u64,
    rate: Option<f64>,
) -> Run {
    let cpu0 = cpu_ns();
    let nats0 = nats_cpu_ns();
    let t0 = now_ns();
    up.go(Job {
        from: 0,
        count,
        payload: PAYLOAD,
        rate,
        text: false,
    });
    let mut seen = Vec::new();
    let mut errors = Vec::new();
    ctx.subs_rt.block_on(async {
        for h in tasks {
            match h.await {
                Ok(s) => seen.push(s),
                Err(e) => errors.push(format!("subscriber task: {e}")),
            }
        }
    });
    let cpu = cpu_since(cpu0);
    let nats_cpu = nats_cpu_ns().saturating_sub(nats0);
    for s in &mut seen {
        s.tally.lat_ns.sort_unstable();
    }
    Run {
        seen,
        t0,
        cpu,
        nats_cpu,
        appends: 0,
        append_mean_us: f64::NAN,
        errors,
    }
}

/// L / T-local: one standalone daemon, one subscriber.
fn run_local(ctx: &Ctx, count: u64, rate: Option<f64>) -> Result<Run, String> {
    let up = Upstream::start(&ctx.up_rt).map_err(|e| format!("upstream: {e}"))?;
    let d = daemon::start(&ctx.base, &[up.url()], count + 1024)?;
    d.wait_connected(WAIT)?;
    let tasks = subscribe(ctx, &[("local", d.uds.clone())], count);
    let mut run = measure_run(ctx, &up, tasks, count, rate);
    if let Err(e) = d.stop() {
        run.errors.push(e);
    }
    Ok(run)
}

/// C / T: host-a (leader) and host-b (follower) on one fresh nats-server, one subscriber each.
fn run_cluster(ctx: &Ctx, count: u64, rate: Option<f64>) -> Result<Run, String> {
    let mut server = ctx
        .nats_rt
        .block_on(NatsServer::start("cluster bench"))
        .ok_or("no nats-server")?;
    let up = Upstream::start(&ctx.up_rt).map_err(|e| format!("upstream: {e}"))?;
    let global = |name: &str| {
        format!(
            "[cluster]\nnats = \"{}\"\nname = \"{name}\"\nlease_ttl = \"1s\"\nreplicas = 1\n",
            server.url()
        )
    };
    let result = (|| {
        let a = daemon::start_with(
            &ctx.base,
            &[up.url()],
            count + 1024,
            &global("host-a"),
            "cluster = true",
        )?;
        wait_until("host-a leading and connected upstream", || {
            role_and_state(&a) == (Role::Leader, State::Connected)
        })
        .map_err(|e| format!("{e}: {:?}", describe(&a)))?;
        let b = daemon::start_with(
            &ctx.base,
            &[up.url()],
            count + 1024,
            &global("host-b"),
            "cluster = true",
        )?;
        wait_until("host-b following", || {
            role_and_state(&b) == (Role::Follower, State::Connected)
        })
        .map_err(|e| format!("{e}: {:?}", describe(&b)))?;
        let tasks = subscribe(
            ctx,
            &[("leader", a.uds.clone()), ("follower", b.uds.clone())],
            count,
        );
        // Both hosts' stream readers are set up by now; let the consumers settle.
        std::thread::sleep(Duration::from_millis(300));
        let slot = a.registry().get(ENDPOINT).ok_or("no endpoint on host-a")?;
        let (n0, us0) = (
            slot.cluster.appends.load(Ordering::Relaxed),
            slot.cluster.append_micros.load(Ordering::Relaxed),
        );
        let mut run = measure_run(ctx, &up, tasks, count, rate);
        let (n, us) = (
            slot.cluster.appends.load(Ordering::Relaxed) - n0,
            slot.cluster.append_micros.load(Ordering::Relaxed) - us0,
        );
        run.appends = n;
        run.append_mean_us = us as f64 / n.max(1) as f64;
        for (host, d) in [("host-a", &a), ("host-b", &b)] {
            let role = role_and_state(d).0;
            let want = if host == "host-a" {
                Role::Leader
            } else {
                Role::Follower
            };
            if role != want {
                run.errors
                    .push(format!("{host} is {} at the end", role.as_str()));
            }
        }
        drop(slot);
        if let Err(e) = b.stop() {
            run.errors.push(format!("host-b: {e}"));
        }
        if let Err(e) = a.stop() {
            run.errors.push(format!("host-a: {e}"));
        }
        Ok::<_, String>(run)
    })();
    ctx.nats_rt.block_on(server.kill());
    let mut run = result?;
    let offsets: Vec<Option<u64>> = run.seen.iter().map(|s| s.offset).collect();
    if offsets.windows(2).any(|w| w[0] != w[1]) {
        run.errors.push(format!(
            "the hosts deliver under different seqs: offsets {offsets:?}"
        ));
    }
    Ok(run)
}

/// Messages/s one subscriber received: from the job's start to its last message.
fn rate_of(run: &Run, s: &Seen) -> f64 {
    s.tally.got as f64 / (s.tally.last_ns.saturating_sub(run.t0) as f64 / 1e9).max(1e-9)
}

/// The run's problems: holes, duplicates, gaps, errors.
fn problems(run: &Run) -> Vec<String> {
    let mut p = run.errors.clone();
    for s in &run.seen {
        let t = &s.tally;
        if t.lost + t.dup + t.gaps > 0 || t.error.is_some() {
            p.push(format!(
                "{}: {} lost, {} duplicated, {} gaps{}",
                s.host,
                t.lost,
                t.dup,
                t.gaps,
                t.error
                    .as_deref()
                    .map(|e| format!(", {e}"))
                    .unwrap_or_default()
            ));
        }
    }
    p
}

fn print_run(rep: usize, name: &str, run: &Run) {
    for s in &run.seen {
        let l = &s.tally.lat_ns;
        println!(
            "  rep {rep} {name:<7} {:<8} {:>9.0} msgs/s  p50 {:>7.0} µs  p99 {:>7.0} µs  max {:>7.0} µs{}",
            s.host,
            rate_of(run, s),
            pct_us(l, 0.5),
            pct_us(l, 0.99),
            pct_us(l, 1.0),
            if run.appends > 0 {
                format!("  (append mean {:.0} µs)", run.append_mean_us)
            } else {
                String::new()
            }
        );
    }
    for p in problems(run) {
        println!("  rep {rep} {name}: FAILED CHECK: {p}");
    }
}

/// One row: (name, what, runs, host).
struct Row<'a> {
    name: &'static str,
    what: &'static str,
    runs: &'a [Run],
    host: &'static str,
    /// Paired with the same repetition's run of this for "added" figures.
    base: Option<(&'a [Run], &'static str)>,
}

fn per_run(row: &Row, f: impl Fn(&Run, &Seen) -> f64) -> Vec<f64> {
    row.runs
        .iter()
        .filter_map(|r| r.host(row.host).map(|s| f(r, s)))
        .collect()
}

fn pct(q: f64) -> impl Fn(&Run, &Seen) -> f64 {
    move |_, s| pct_us(&s.tally.lat_ns, q)
}

/// This row's percentile minus its baseline's, per repetition.
fn added(row: &Row, q: f64) -> Vec<f64> {
    let Some((base, host)) = row.base else {
        return vec![];
    };
    row.runs
        .iter()
        .zip(base)
        .filter_map(|(r, b)| {
            Some(
                pct_us(&r.host(row.host)?.tally.lat_ns, q) - pct_us(&b.host(host)?.tally.lat_ns, q),
            )
        })
        .collect()
}

fn report(
    args: &Args,
    nats_version: &str,
    l: &[Run],
    c: &[Run],
    tl: &[Run],
    t: &[Run],
    path: &Path,
) -> bool {
    let rows = [
        Row {
            name: "L",
            what: "standalone daemon, local delivery",
            runs: l,
            host: "local",
            base: None,
        },
        Row {
            name: "C-leader",
            what: "leader's subscriber (upstream → stream → leader's log)",
            runs: c,
            host: "leader",
            base: Some((l, "local")),
        },
        Row {
            name: "C-follower",
            what: "follower's subscriber (upstream → leader → stream → follower)",
            runs: c,
            host: "follower",
            base: Some((l, "local")),
        },
        Row {
            name: "T-local",
            what: "standalone daemon, upstream flat out",
            runs: tl,
            host: "local",
            base: None,
        },
        Row {
            name: "T-leader",
            what: "leader's subscriber, upstream flat out",
            runs: t,
            host: "leader",
            base: None,
        },
        Row {
            name: "T-follower",
            what: "follower's subscriber, upstream flat out",
            runs: t,
            host: "follower",
            base: None,
        },
    ];
    println!();
    println!(
        "| scenario | msgs/s delivered | p50 µs | p99 µs | p999 µs | max µs | added p50 µs | added p99 µs | added max µs |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut json_rows = Vec::new();
    for row in &rows {
        let rate = per_run(row, rate_of);
        let p: Vec<Vec<f64>> = [0.5, 0.99, 0.999, 1.0]
            .iter()
            .map(|q| per_run(row, pct(*q)))
            .collect();
        let a: Vec<Vec<f64>> = [0.5, 0.99, 1.0].iter().map(|q| added(row, *q)).collect();
        let f = |v: &Vec<f64>| fmt_range(v, 0);
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            row.name,
            f(&rate),
            f(&p[0]),
            f(&p[1]),
            f(&p[2]),
            f(&p[3]),
            f(&a[0]),
            f(&a[1]),
            f(&a[2])
        );
        json_rows.push(serde_json::json!({
            "name": row.name,
            "what": row.what,
            "msgs_per_s_delivered": stats_json(&rate),
            "latency_us": {
                "p50": stats_json(&p[0]), "p99": stats_json(&p[1]),
                "p999": stats_json(&p[2]), "max": stats_json(&p[3]),
            },
            "added_latency_vs_L_us": row.base.map(|_| serde_json::json!({
                "p50": stats_json(&a[0]), "p99": stats_json(&a[1]), "max": stats_json(&a[2]),
            })),
        }));
    }
    println!("(median over repetitions, min–max in brackets; added = the run's percentile minus the same repetition's L)");

    // Per run of the clustered scenarios: the append and CPU figures.
    println!();
    println!("| run | appends | append mean µs (upstream → PubAck) | daemons CPU µs/msg | nats-server CPU µs/msg | subs CPU µs/delivery |");
    println!("|---|---|---|---|---|---|");
    let mut cpu_json = Vec::new();
    for (name, runs) in [("C", c), ("T", t), ("L", l), ("T-local", tl)] {
        let msgs = |r: &Run| r.seen.first().map_or(0, |s| s.tally.got).max(1) as f64;
        let appends: Vec<f64> = runs.iter().map(|r| r.appends as f64).collect();
        let append_us: Vec<f64> = runs.iter().map(|r| r.append_mean_us).collect();
        let daemon: Vec<f64> = runs
            .iter()
            .map(|r| r.cpu[0] as f64 / 1e3 / msgs(r))
            .collect();
        let natsc: Vec<f64> = runs
            .iter()
            .map(|r| r.nats_cpu as f64 / 1e3 / msgs(r))
            .collect();
        let subsc: Vec<f64> = runs
            .iter()
            .map(|r| r.cpu[2] as f64 / 1e3 / (msgs(r) * r.seen.len().max(1) as f64))
            .collect();
        println!(
            "| {name} | {} | {} | {} | {} | {} |",
            fmt_range(&appends, 0),
            fmt_range(&append_us, 0),
            fmt_range(&daemon, 1),
            fmt_range(&natsc, 1),
            fmt_range(&subsc, 1),
        );
        cpu_json.push(serde_json::json!({
            "scenario": name,
            "appends": stats_json(&appends),
            "append_mean_us": stats_json(&append_us),
            "daemons_cpu_us_per_upstream_msg": stats_json(&daemon),
            "nats_server_cpu_us_per_upstream_msg": stats_json(&natsc),
            "subs_cpu_us_per_delivery": stats_json(&subsc),
        }));
    }
    println!("(CPU per upstream message: both daemons' threads together for C and T; append figures from host-a's cluster slot)");

    // Checks.
    let mut failed = Vec::new();
    for (name, runs) in [("L", l), ("C", c), ("T-local", tl), ("T", t)] {
        for (i, r) in runs.iter().enumerate() {
            for p in problems(r) {
                failed.push(format!("{name} rep {}: {p}", i + 1));
            }
        }
    }
    // Target (BENCHMARKING.md): added p99 ≤ 2 ms over local delivery.
    let (fp99, _, _) = summary(&added(&rows[2], 0.99));
    println!();
    println!(
        "target: leader → JetStream → follower added p99 ≤ 2000 µs: measured {fp99:.0} µs (median over repetitions): {}",
        if fp99 <= 2000.0 { "met" } else { "NOT met" }
    );
    let json = serde_json::json!({
        "bench": "cluster",
        "quick": args.quick,
        "repetitions": args.reps,
        "latency_rate_msgs_per_s": args.rate,
        "latency_secs": args.secs,
        "throughput_count_clustered": args.count,
        "throughput_count_local": 10 * args.count,
        "payload_bytes": PAYLOAD,
        "nats_server": nats_version,
        "cpu_groups": GROUPS,
        "scenarios": json_rows,
        "per_run_figures": cpu_json,
        "target_added_p99_us": 2000,
        "follower_added_p99_us_median": if fp99.is_nan() { None } else { Some(fp99) },
        "checks_failed": failed,
    });
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    match serde_json::to_string_pretty(&json) {
        Ok(s) => match std::fs::write(path, s + "\n") {
            Ok(()) => println!("wrote {}", path.display()),
            Err(e) => {
                eprintln!("cluster bench: cannot write {}: {e}", path.display());
                return false;
            }
        },
        Err(e) => eprintln!("cluster bench: json: {e}"),
    }
    if failed.is_empty() {
        println!("checks: every seq once, in order, on every host: passed");
        true
    } else {
        for f in &failed {
            eprintln!("FAILED: {f}");
        }
        false
    }
}
