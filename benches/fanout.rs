//! Fan-out benchmark (BENCHMARKING.md: the harness, scenarios, baselines B1–B4, targets).
//!
//! `cargo bench --bench fanout` (full: 5 interleaved repetitions of every scenario) or
//! `cargo bench --bench fanout -- --quick` (3 repetitions of a representative subset, < 2 min);
//! `--reps N` overrides either; names (substrings, e.g. `-- ndjson`) keep only matching
//! scenarios (their baselines always run).
//!
//! Everything runs on 127.0.0.1 in this process, each part on its own tokio runtime so its CPU
//! can be told apart (per-thread CPU from /proc/self/task/*/schedstat, by thread name):
//! - the built-in upstream (`upstream` thread): a tokio-tungstenite server sending messages that
//!   carry a seq and a send timestamp (ns since one shared Instant), flat out or open-loop at a
//!   rate, feeding frames and flushing once every 64;
//! - the daemon (`daemon` threads), started fresh for every run, with a replay window larger than
//!   the run so a subscriber that falls behind is never skipped (a skip would count as loss);
//! - the subscribers (`subs` threads, 2 workers): gRPC over the Unix socket and TCP, NDJSON, or
//!   plain tokio-tungstenite clients on the upstream (B1, B2). Each checks its seqs for holes and
//!   duplicates (any makes the bench exit 1) and records every end-to-end latency.
//!
//! Baselines, interleaved with the daemon scenarios in every repetition: B1 (one plain client on
//! the upstream), B2 (N plain clients on the upstream), B3 (one `b3-writer` thread writing the
//! same bytes, 64 records per write, to N Unix sockets read by N readers), B4 (websocat as a
//! child process bridging the upstream to a Unix socket, see `fanout/b4.rs`) only when `websocat`
//! is on PATH, else reported as skipped.
//!
//! The publish path runs the code of `benches/publish.rs` (`common::publish`): its scenario B
//! (64 publishers on 4 gRPC channels, durable, wait = STORED, a fresh daemon and store per run,
//! 3 s per run, 1 s with `--quick`) against its baseline B0 (one durable redb commit per
//! insert), with all its checks. `cargo bench --bench publish` has the other publish scenarios.
//!
//! Memory: VmRSS of this process, sampled every 20 ms, so "peak RSS" includes the bench's own
//! memory (subscribers, latency vectors). Idle RSS runs in a fresh child process, measured before
//! and after starting the daemon.
//!
//! Prints a table and writes `target/bench/fanout.json`.

#[path = "fanout/b4.rs"]
mod b4;
#[path = "common/mod.rs"]
mod common;
#[path = "fanout/daemon.rs"]
mod daemon;
#[path = "fanout/measure.rs"]
mod measure;
#[path = "fanout/publish.rs"]
mod publish;
#[path = "fanout/report.rs"]
mod report;
#[path = "fanout/runs.rs"]
mod runs;
#[path = "fanout/scenarios.rs"]
mod scenarios;
#[path = "fanout/subs.rs"]
mod subs;
#[path = "fanout/upstream.rs"]
mod upstream;

use std::path::PathBuf;
use std::process::ExitCode;

use runs::{Ctx, Transport};
use scenarios::{Kind, Scenario};

pub struct Args {
    pub reps: usize,
    pub quick: bool,
    pub only: Vec<String>,
    /// Length of each publish-path run (publish.rs's defaults).
    pub publish_secs: f64,
    /// B4 runs only with websocat.
    pub websocat: Option<b4::Websocat>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        reps: 5,
        quick: false,
        only: Vec::new(),
        publish_secs: 3.0,
        websocat: b4::find(),
    };
    let mut reps = None;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => args.quick = true,
            "--reps" => {
                let v = it.next().ok_or("--reps needs a number")?;
                reps = Some(v.parse::<usize>().map_err(|e| format!("--reps {v}: {e}"))?);
            }
            f if f.starts_with('-') => {}
            name => args.only.push(name.to_owned()),
        }
    }
    if args.quick {
        (args.reps, args.publish_secs) = (3, 1.0);
    }
    args.reps = reps.unwrap_or(args.reps).max(1);
    Ok(args)
}

fn main() -> ExitCode {
    let mut argv = std::env::args().skip(1);
    if argv.next().as_deref() == Some("--idle-child") {
        let base = PathBuf::from(argv.next().unwrap_or_else(|| ".".into()));
        return match runs::idle_child(base) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("idle child: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("fanout bench: {e}");
            return ExitCode::from(64);
        }
    };
    let out_dir = common::target_dir().join("bench");
    let tmp = out_dir.join("tmp");
    if let Err(e) = std::fs::create_dir_all(&tmp) {
        eprintln!("fanout bench: cannot create {}: {e}", tmp.display());
        return ExitCode::FAILURE;
    }
    measure::epoch();
    let ctx = match Ctx::new(tmp.clone()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("fanout bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut scenarios = scenarios::scenarios(&args);
    println!("fanout bench: upstream → daemon → N subscribers, all on 127.0.0.1");
    println!("  daemon: in this process, on its own multi-thread tokio runtime (threads \"daemon\"), fresh per run");
    println!("  upstream: tokio-tungstenite server on its own 1-thread runtime; subscribers on a 2-thread runtime");
    if scenarios.iter().any(|s| matches!(s.kind, Kind::Publish)) {
        println!(
            "  publish: benches/publish.rs's B (64 publishers, 4 channels, durable) vs its B0, {:.0} s per run; store in {} — {}",
            args.publish_secs,
            tmp.display(),
            common::publish::filesystem_of(&tmp)
        );
    }
    match &args.websocat {
        Some(w) => println!(
            "  B4: {} ({}) as a child process: websocat {} (N=1; N>1 through broadcast:)",
            w.version,
            w.exe.display(),
            b4::args(1, "ws://UPSTREAM", std::path::Path::new("SOCK")).join(" ")
        ),
        None => println!("  B4 skipped: websocat not on PATH"),
    }
    println!(
        "  {} repetitions{}, interleaved; {} cores; {} scenarios",
        args.reps,
        if args.quick { " (--quick)" } else { "" },
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        scenarios.len(),
    );
    for rep in 1..=args.reps {
        for i in 0..scenarios.len() {
            let r = run_one(&ctx, &args, &scenarios, i);
            let s = &mut scenarios[i];
            match r {
                Ok(run) => {
                    report::print_run(rep, s, &run);
                    s.runs.push(run);
                }
                Err(e) => {
                    eprintln!("fanout bench: {} failed to run: {e}", s.name);
                    return ExitCode::FAILURE;
                }
            }
        }
    }
    ctx.rss.stop();
    let ok = report::report(&args, &scenarios, &out_dir.join("fanout.json"), &tmp);
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Messages the upstream sends in a flat-out run: enough deliveries to measure, bounded in bytes.
fn count(args: &Args, n: usize, payload: usize) -> u64 {
    // (deliveries, bytes the upstream sends, bytes delivered in all) per run
    let (deliveries, bytes, delivered) = if args.quick {
        (600_000u64, 64u64 << 20, 1u64 << 30)
    } else {
        (2_000_000, 128 << 20, 2 << 30)
    };
    (deliveries / n as u64)
        .max(10_000)
        .min(bytes / payload as u64)
        .min(delivered / (n * payload) as u64)
        .max(200)
}

fn run_one(ctx: &Ctx, args: &Args, all: &[Scenario], i: usize) -> Result<runs::Run, String> {
    let s = &all[i];
    match s.kind {
        Kind::B1 { payload } => runs::fanout(
            ctx,
            None,
            1,
            0,
            payload,
            false,
            count(args, 1, payload),
            None,
        ),
        Kind::B2 { n, payload } => runs::fanout(
            ctx,
            None,
            n,
            0,
            payload,
            false,
            count(args, n, payload),
            None,
        ),
        Kind::B3 { n, payload } => runs::b3(ctx, n, payload, count(args, n, payload)),
        Kind::B4 { n, payload } => match &args.websocat {
            Some(w) => b4::run(ctx, &w.exe, n, payload, count(args, n, payload)),
            None => Err("B4 without websocat".into()),
        },
        Kind::Fan {
            t,
            n,
            payload,
            text,
        } => runs::fanout(
            ctx,
            Some(t),
            n,
            0,
            payload,
            text,
            count(args, n, payload),
            None,
        ),
        Kind::Stalled { t } => {
            runs::fanout(ctx, Some(t), 9, 1, 64, false, count(args, 10, 64), None)
        }
        Kind::Latency { t, n } => {
            let rate = latency_rate(all)?;
            let secs = if args.quick { 1.0 } else { 2.0 };
            let count = (rate * secs) as u64;
            let mut r = runs::fanout(ctx, t, n, 0, 64, false, count, Some(rate))?;
            r.extra.push(("offered_rate", rate));
            Ok(r)
        }
        Kind::B0 => publish::b0(ctx, args.publish_secs),
        Kind::Publish => publish::publishers(ctx, args.publish_secs),
        Kind::Reconnect => runs::reconnect(ctx, 2_000),
        Kind::Idle => runs::idle(&ctx.base),
    }
}

/// 50% of the saturation rate measured so far (per subscriber, N=10, 64 B, gRPC-UDS).
fn latency_rate(all: &[Scenario]) -> Result<f64, String> {
    let sat = all
        .iter()
        .find(|s| {
            matches!(
                s.kind,
                Kind::Fan {
                    t: Transport::Uds,
                    n: 10,
                    payload: 64,
                    text: false
                }
            )
        })
        .ok_or("latency needs grpc-uds/N=10/64B")?;
    let rates: Vec<f64> = sat.runs.iter().map(|r| r.per_sub_rate).collect();
    let (m, _, _) = measure::summary(&rates);
    if m.is_nan() || m <= 0.0 {
        return Err("no saturation rate measured yet".into());
    }
    Ok(0.5 * m)
}
