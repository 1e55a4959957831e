//! Request/reply benchmark (BENCHMARKING.md: "request/reply through the sidecar, 1,000 req/s:
//! added p99 ≤ +100 µs over a direct client").
//!
//! `cargo bench --bench request` (5 interleaved repetitions of 3 s per scenario) or
//! `cargo bench --bench request -- --quick` (3 × 1 s); `--reps N`, `--secs S` and `--rate R`
//! override them.
//!
//! Everything runs on 127.0.0.1 in this process, each part on its own threads so its CPU can be
//! told apart: the built-in JSON-RPC 2.0 upstream (`upstream` thread, see `request/upstream.rs`),
//! the daemon (`daemon` threads, started once, as `main.rs` builds it) with one endpoint
//! `preset = "jsonrpc"` on that upstream, the clients (`clients` runtime, 2 workers) and the
//! `pacer` thread that releases requests open-loop on a fixed schedule. Scenarios, interleaved
//! D S N in every repetition, each with a fresh client connection:
//! - `D` (baseline): one tokio-tungstenite client on its own connection to the upstream;
//! - `S`: gRPC `Request` over the daemon's Unix socket, one call per request, as many in flight
//!   as the schedule demands, on one channel;
//! - `N` (S-ndjson): `{"op":"request",…}` lines on one NDJSON connection, replies matched by
//!   their line id.
//!
//! Latency is measured from each request's scheduled send time to its reply in the app (see
//! `request/runs.rs`), with a per-hop breakdown. Every reply is checked: the app's own id back,
//! the payload of its request, no error, exactly one reply per request; the upstream checks every
//! request against the JSON-RPC rules. Any failure makes the bench exit 1.
//!
//! Prints tables (median and min–max over repetitions) and writes `target/bench/request.json`.

#[path = "common/mod.rs"]
mod common;
#[path = "request/runs.rs"]
mod runs;
#[path = "request/upstream.rs"]
mod upstream;

use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use runs::{DaemonSockets, Run, Via, ENDPOINT, HOPS, WARM};
use serde_json::json;
use ws_sidecar::client::Target;

/// The target of BENCHMARKING.md: added p99 of S over D, µs.
const TARGET_ADDED_P99_US: f64 = 100.0;

struct Args {
    reps: usize,
    secs: f64,
    rate: f64,
    quick: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        reps: 5,
        secs: 3.0,
        rate: 1000.0,
        quick: false,
    };
    let (mut reps, mut secs) = (None, None);
    let mut it = std::env::args().skip(1);
    let num = |flag: &str, v: Option<String>| -> Result<f64, String> {
        let v = v.ok_or(format!("{flag} needs a number"))?;
        v.parse::<f64>()
            .ok()
            .filter(|x| x.is_finite() && *x > 0.0)
            .ok_or(format!("{flag} {v}: not a positive number"))
    };
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => args.quick = true,
            "--reps" => reps = Some(num("--reps", it.next())? as usize),
            "--secs" => secs = Some(num("--secs", it.next())?),
            "--rate" => args.rate = num("--rate", it.next())?,
            // `cargo bench` passes `--bench`; other harness flags do not apply here.
            f if f.starts_with('-') => {}
            other => return Err(format!("unexpected argument {other:?}")),
        }
    }
    if args.quick {
        (args.reps, args.secs) = (3, 1.0);
    }
    args.reps = reps.unwrap_or(args.reps).max(1);
    args.secs = secs.unwrap_or(args.secs).max(0.1);
    Ok(args)
}

// ---------------------------------------------------------------------------------------------
// CPU.

/// Thread groups whose CPU is counted apart (by thread name); the last is everything else.
const GROUPS: [&str; 5] = ["daemon", "upstream", "clients", "pacer", "other"];

/// (busy, total) jiffies of the whole machine, from /proc/stat.
fn machine_jiffies() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = s
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total.saturating_sub(idle), total)
}

/// CPU used during a run: by this process's thread groups, and cores busy on the machine.
#[derive(Clone, Copy)]
pub struct Cpu {
    start: [u64; 5],
    machine: (u64, u64),
    /// ns per group of [`GROUPS`] (after [`Cpu::stop`]).
    pub ns: [u64; 5],
    /// Cores busy on the whole machine, all processes.
    pub machine_cores: f64,
}

impl Cpu {
    pub fn start() -> Cpu {
        Cpu {
            start: common::cpu_ns_by_thread(&GROUPS[..4]),
            machine: machine_jiffies(),
            ns: [0; 5],
            machine_cores: f64::NAN,
        }
    }

    pub fn stop(mut self) -> Cpu {
        let end: [u64; 5] = common::cpu_ns_by_thread(&GROUPS[..4]);
        for (i, n) in self.ns.iter_mut().enumerate() {
            *n = end[i].saturating_sub(self.start[i]);
        }
        let (busy, total) = machine_jiffies();
        let (db, dt) = (
            busy.saturating_sub(self.machine.0),
            total.saturating_sub(self.machine.1),
        );
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        if dt > 0 {
            self.machine_cores = cores * db as f64 / dt as f64;
        }
        self
    }
}

// ---------------------------------------------------------------------------------------------
// The daemon.

struct Daemon {
    inner: common::InProcess,
    _dir: tempfile::TempDir,
    grpc: Target,
    ndjson: std::path::PathBuf,
}

fn start_daemon(upstream: std::net::SocketAddr) -> Result<Daemon, String> {
    let base = common::target_dir().join("bench/tmp");
    std::fs::create_dir_all(&base).map_err(|e| format!("{}: {e}", base.display()))?;
    let dir = tempfile::Builder::new()
        .prefix("request-")
        .tempdir_in(&base)
        .map_err(|e| format!("temp dir: {e}"))?;
    let d = dir.path();
    let toml = format!(
        r#"
[log]
level = "error"
[grpc]
listen = ["unix:{d}/grpc.sock"]
[stream]
path = "{d}/stream.sock"
[http]
listen = ""
[store]
path = "{d}/store"
[endpoints.{ENDPOINT}]
url = "ws://{upstream}/"
preset = "jsonrpc"
"#,
        d = d.display()
    );
    let inner = common::start_daemon(&toml, "request.toml")?;
    let ep = inner
        .registry
        .get(ENDPOINT)
        .ok_or("no endpoint in the daemon")?;
    inner.rt.block_on(async {
        tokio::time::timeout(
            Duration::from_secs(10),
            ep.wait_state(|s| s.state == ws_sidecar::endpoint::State::Connected),
        )
        .await
        .map_err(|_| "the daemon did not connect to the upstream within 10 s".to_string())
    })?;
    Ok(Daemon {
        grpc: Target::Unix(d.join("grpc.sock")),
        ndjson: d.join("stream.sock"),
        inner,
        _dir: dir,
    })
}

impl Daemon {
    fn stop(self) -> Result<(), String> {
        let common::InProcess {
            rt, shutdown, task, ..
        } = self.inner;
        shutdown.cancel();
        let r = rt.block_on(async { tokio::time::timeout(Duration::from_secs(6), task).await });
        rt.shutdown_timeout(Duration::from_secs(2));
        match r {
            Ok(Ok(true)) => Ok(()),
            other => Err(format!("daemon did not stop cleanly: {other:?}")),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Reporting.

struct Scenario {
    name: &'static str,
    via: Via,
    what: &'static str,
    runs: Vec<Run>,
}

impl Scenario {
    fn metric(&self, f: impl Fn(&Run) -> f64) -> Vec<f64> {
        self.runs.iter().map(f).collect()
    }
}

fn fmt_range(v: &[f64], decimals: usize) -> String {
    let (m, lo, hi) = common::summary(v);
    format!("{m:.decimals$} ({lo:.decimals$}–{hi:.decimals$})")
}

fn stats_json(v: &[f64]) -> serde_json::Value {
    let (m, lo, hi) = common::summary(v);
    json!({"median": m, "min": lo, "max": hi})
}

const QS: [(&str, f64); 4] = [("p50", 0.5), ("p99", 0.99), ("p999", 0.999), ("max", 1.0)];

fn main() -> ExitCode {
    match bench() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("request bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the bench; `Ok(false)` when a check failed.
fn bench() -> Result<bool, String> {
    let args = parse_args()?;
    upstream::epoch();
    let urt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .thread_name("upstream")
        .build()
        .map_err(|e| format!("upstream runtime: {e}"))?;
    let seen = Arc::new(upstream::Seen::default());
    let up = urt.block_on(upstream::start(Arc::clone(&seen)))?;
    let daemon = start_daemon(up)?;
    let crt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("clients")
        .build()
        .map_err(|e| format!("client runtime: {e}"))?;
    let n = WARM + (args.secs * args.rate).round() as usize;
    println!(
        "request bench: JSON-RPC 2.0 echo, open-loop at {:.0} req/s",
        args.rate
    );
    println!(
        "  upstream: built-in tokio-tungstenite server on {up}; daemon: in this process, \
         endpoint `{ENDPOINT}` with preset = \"jsonrpc\""
    );
    println!(
        "  {} repetitions × {:.1} s per scenario (+{WARM} warm-up requests){}, interleaved D S N; \
         {} cores; load average {}",
        args.reps,
        args.secs,
        if args.quick { " (--quick)" } else { "" },
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );

    let mut scenarios = [
        Scenario {
            name: "D",
            via: Via::Direct,
            what: "direct: tokio-tungstenite client on the upstream",
            runs: vec![],
        },
        Scenario {
            name: "S",
            via: Via::Grpc,
            what: "sidecar: gRPC Request over the Unix socket",
            runs: vec![],
        },
        Scenario {
            name: "N",
            via: Via::Ndjson,
            what: "sidecar: NDJSON request lines",
            runs: vec![],
        },
    ];
    let sockets = DaemonSockets {
        grpc: &daemon.grpc,
        ndjson: &daemon.ndjson,
    };
    let mut errors = 0u64;
    let mut run_no = 0;
    for rep in 1..=args.reps {
        for s in scenarios.iter_mut() {
            run_no += 1;
            let r = runs::run(&crt, s.via, run_no, n, args.rate, up, &sockets)?;
            println!(
                "  rep {rep} {}  p50 {:>6.0} µs  p99 {:>6.0} µs  p999 {:>6.0} µs  max {:>6.0} µs  \
                 errors {}  CPU µs/req daemon {:.1} clients {:.1}  machine cores {:.2}",
                s.name,
                r.lat_us(0.5),
                r.lat_us(0.99),
                r.lat_us(0.999),
                r.lat_us(1.0),
                r.errors,
                r.cpu.ns[0] as f64 / 1000.0 / n as f64,
                r.cpu.ns[2] as f64 / 1000.0 / n as f64,
                r.cpu.machine_cores,
            );
            errors += r.errors;
            s.runs.push(r);
        }
    }
    let stopped = daemon.stop();
    let violations = seen.violations.load(Ordering::Relaxed);
    let answered = seen.answered.load(Ordering::Relaxed);
    urt.shutdown_timeout(Duration::from_secs(1));

    // Added latency of each sidecar run over the D run of its repetition.
    let added = |s: &Scenario, q: f64| -> Vec<f64> {
        s.runs
            .iter()
            .zip(&scenarios[0].runs)
            .map(|(r, d)| r.lat_us(q) - d.lat_us(q))
            .collect()
    };
    println!();
    println!("| scenario | what | p50 µs | p99 µs | p999 µs | max µs | added p50 µs | added p99 µs | errors |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut json_scenarios = Vec::new();
    for s in &scenarios {
        let pcts: Vec<Vec<f64>> = QS.iter().map(|&(_, q)| s.metric(|r| r.lat_us(q))).collect();
        let (a50, a99) = (added(s, 0.5), added(s, 0.99));
        let errs: u64 = s.runs.iter().map(|r| r.errors).sum();
        let base = s.name == "D";
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {errs} |",
            s.name,
            s.what,
            fmt_range(&pcts[0], 0),
            fmt_range(&pcts[1], 0),
            fmt_range(&pcts[2], 0),
            fmt_range(&pcts[3], 0),
            if base {
                "–".into()
            } else {
                fmt_range(&a50, 0)
            },
            if base {
                "–".into()
            } else {
                fmt_range(&a99, 0)
            },
        );
        let hops: serde_json::Map<String, serde_json::Value> = HOPS
            .iter()
            .enumerate()
            .map(|(i, h)| {
                (
                    (*h).to_string(),
                    json!({
                        "p50": stats_json(&s.metric(|r| Run::pct(&r.hops[i], 0.5))),
                        "p99": stats_json(&s.metric(|r| Run::pct(&r.hops[i], 0.99))),
                    }),
                )
            })
            .collect();
        let cpu: serde_json::Map<String, serde_json::Value> = GROUPS
            .iter()
            .enumerate()
            .map(|(i, g)| {
                (
                    (*g).to_string(),
                    stats_json(&s.metric(|r| r.cpu.ns[i] as f64 / 1000.0 / r.sent as f64)),
                )
            })
            .collect();
        json_scenarios.push(json!({
            "name": s.name,
            "what": s.what,
            "latency_us": QS.iter().zip(&pcts)
                .map(|(&(k, _), v)| (k.to_string(), stats_json(v)))
                .collect::<serde_json::Map<_, _>>(),
            "added_over_d_us": if base { serde_json::Value::Null } else {
                json!({"p50": stats_json(&a50), "p99": stats_json(&a99)})
            },
            "hops_us": hops,
            "cpu_us_per_request": cpu,
            "machine_cores_busy": stats_json(&s.metric(|r| r.cpu.machine_cores)),
            "measured_per_run": s.runs.iter().map(|r| r.lat.len()).collect::<Vec<_>>(),
            "errors": errs,
            "first_error": s.runs.iter().find_map(|r| r.first_error.clone()),
        }));
    }
    println!("(median over repetitions of each run's percentile, with min–max; added: S or N minus the D run of the same repetition)");
    println!();
    println!("| scenario | hop | p50 µs | p99 µs |");
    println!("|---|---|---|---|");
    for s in &scenarios {
        for (i, h) in HOPS.iter().enumerate() {
            if s.runs.iter().all(|r| r.hops[i].is_empty()) {
                continue;
            }
            println!(
                "| {} | {h} | {} | {} |",
                s.name,
                fmt_range(&s.metric(|r| Run::pct(&r.hops[i], 0.5)), 0),
                fmt_range(&s.metric(|r| Run::pct(&r.hops[i], 0.99)), 0),
            );
        }
    }
    println!();
    println!("| scenario | CPU µs/req: daemon | upstream | clients | pacer | machine cores busy |");
    println!("|---|---|---|---|---|---|");
    for s in &scenarios {
        let c = |i: usize| {
            fmt_range(
                &s.metric(|r| r.cpu.ns[i] as f64 / 1000.0 / r.sent as f64),
                1,
            )
        };
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            s.name,
            c(0),
            c(1),
            c(2),
            c(3),
            fmt_range(&s.metric(|r| r.cpu.machine_cores), 2)
        );
    }

    let (s99, _, _) = common::summary(&added(&scenarios[1], 0.99));
    let (n99, _, _) = common::summary(&added(&scenarios[2], 0.99));
    let met = s99 <= TARGET_ADDED_P99_US;
    println!(
        "target (added p99 of S over D ≤ +{TARGET_ADDED_P99_US:.0} µs): {} — S {s99:+.0} µs \
         (N {n99:+.0} µs)",
        if met { "MET" } else { "NOT MET" }
    );

    let mut failed = Vec::new();
    if errors > 0 {
        failed.push(format!("{errors} request errors or mismatched replies"));
    }
    if violations > 0 {
        let first = seen
            .first_violation
            .lock()
            .ok()
            .and_then(|f| f.clone())
            .unwrap_or_default();
        failed.push(format!(
            "the upstream saw {violations} JSON-RPC violations (first: {first})"
        ));
    }
    let expected = (n * scenarios.iter().map(|s| s.runs.len()).sum::<usize>()) as u64;
    if answered != expected {
        failed.push(format!(
            "the upstream answered {answered} requests, {expected} were sent"
        ));
    }
    if let Err(e) = stopped {
        failed.push(e);
    }

    let doc = json!({
        "bench": "request",
        "daemon": "in-process",
        "rate_per_s": args.rate,
        "repetitions": args.reps,
        "seconds_per_run": args.secs,
        "warm_up_requests": WARM,
        "target": {"added_p99_us": TARGET_ADDED_P99_US, "s_added_p99_us": s99, "met": met},
        "upstream_answered": answered,
        "upstream_violations": violations,
        "checks_failed": failed,
        "scenarios": json_scenarios,
    });
    let path = common::target_dir().join("bench/request.json");
    match serde_json::to_string_pretty(&doc).map(|s| std::fs::write(&path, s + "\n")) {
        Ok(Ok(())) => println!("wrote {}", path.display()),
        Ok(Err(e)) => failed.push(format!("cannot write {}: {e}", path.display())),
        Err(e) => failed.push(format!("cannot encode JSON: {e}")),
    }
    if failed.is_empty() {
        println!(
            "checks: all passed ({answered} requests, every reply matched its request: id and payload, 0 errors)"
        );
        Ok(true)
    } else {
        for f in &failed {
            eprintln!("CHECK FAILED: {f}");
        }
        Ok(false)
    }
}
