//! Publish-path benchmark (BENCHMARKING.md, "durable publishes, 64 concurrent publishers").
//!
//! `cargo bench --bench publish` (5 repetitions of 3 s per scenario) or
//! `cargo bench --bench publish -- --quick` (3 repetitions of 1 s); `--reps N` and `--secs S`
//! override either, and scenario names (e.g. `-- B`) run only those, plus the baseline B0.
//!
//! The daemon runs in this process, on its own tokio runtime (as `main.rs` builds it), with one
//! endpoint whose upstream refuses connections and backs off for an hour, so every publish stays
//! in the durable outbox. The publishers run on a second runtime and reach it over the gRPC Unix
//! socket. Each scenario run gets a fresh daemon and store, in a temp dir under `target/bench/`.
//!
//! Scenarios, interleaved in this order in every repetition:
//! - `B0`: baseline, one durable redb commit per insert in a plain loop (separate redb file,
//!   same key and value shape as the outbox): what the disk gives without group commit.
//! - `A`: 1 publisher, sequential `Publish` (wait = STORED, 64-byte payload).
//! - `B`: 64 concurrent publishers, each its own task, sharing 4 gRPC channels.
//! - `B1`: 1 caller, sequential `GetStatus`: the RPC floor for `A` (no store work).
//! - `B1x64`: 64 concurrent `GetStatus` callers on 4 channels: the RPC floor for `B`.
//!
//! Checked while measuring (any failure makes the bench exit 1): every publish is acked; every
//! acked outbox id is unique and each publisher's acked ids increase; the outbox depth reported
//! by `GetStatus` equals the number of acks; after the daemon stopped, the store holds exactly the
//! acked ids, each with the payload its publisher sent.
//!
//! Prints a table (median and min–max over repetitions) and writes `target/bench/publish.json`.

#[path = "common/mod.rs"]
mod common;

use std::process::ExitCode;
use std::time::Duration;

use common::publish::{
    filesystem_of, run_b0, run_publish, run_status, Checks, Run, CHANNELS, PAYLOAD, PUBLISHERS,
    TARGET_P99_US, TARGET_RATE,
};

struct Args {
    reps: usize,
    secs: f64,
    quick: bool,
    /// Scenario names to run (B0 always runs: it is the baseline); empty means all.
    only: Vec<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        reps: 5,
        secs: 3.0,
        quick: false,
        only: Vec::new(),
    };
    let (mut reps, mut secs) = (None, None);
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => args.quick = true,
            "--reps" => {
                let v = it.next().ok_or("--reps needs a number")?;
                reps = Some(v.parse::<usize>().map_err(|e| format!("--reps {v}: {e}"))?);
            }
            "--secs" => {
                let v = it.next().ok_or("--secs needs a number")?;
                secs = Some(v.parse::<f64>().map_err(|e| format!("--secs {v}: {e}"))?);
            }
            // `cargo bench` passes `--bench`; other harness flags do not apply here.
            f if f.starts_with('-') => {}
            name => args.only.push(name.to_owned()),
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
// Reporting.

fn fmt_range(v: &[f64], decimals: usize) -> String {
    let (m, lo, hi) = common::summary(v);
    format!("{m:.decimals$} ({lo:.decimals$}–{hi:.decimals$})")
}

struct Scenario {
    name: &'static str,
    what: &'static str,
    runs: Vec<Run>,
}

impl Scenario {
    fn metric(&self, f: impl Fn(&Run) -> f64) -> Vec<f64> {
        self.runs.iter().map(f).collect()
    }
}

fn stats_json(v: &[f64]) -> serde_json::Value {
    let (m, lo, hi) = common::summary(v);
    serde_json::json!({"median": m, "min": lo, "max": hi})
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("publish bench: {e}");
            return ExitCode::from(64);
        }
    };
    let target = common::target_dir();
    let out_dir = target.join("bench");
    let tmp = out_dir.join("tmp");
    if let Err(e) = std::fs::create_dir_all(&tmp) {
        eprintln!("publish bench: cannot create {}: {e}", tmp.display());
        return ExitCode::FAILURE;
    }
    let dur = Duration::from_secs_f64(args.secs);
    println!("publish bench: durable publishes through gRPC over a Unix socket");
    println!(
        "  daemon: in this process, on its own multi-thread tokio runtime; publishers on another"
    );
    println!(
        "  upstream ws://127.0.0.1:1/ (refused, 1 h backoff): every publish stays in the outbox"
    );
    println!(
        "  store and B0 temp dirs in {} — filesystem {}",
        tmp.display(),
        filesystem_of(&tmp)
    );
    println!(
        "  {} repetitions × {:.1} s per scenario{}, interleaved B0 A B B1 B1x64; {} cores",
        args.reps,
        args.secs,
        if args.quick { " (--quick)" } else { "" },
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    let crt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("publishers")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("publish bench: client runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut scenarios = [
        Scenario {
            name: "B0",
            what: "redb, 1 durable commit per insert",
            runs: vec![],
        },
        Scenario {
            name: "A",
            what: "1 publisher, sequential Publish",
            runs: vec![],
        },
        Scenario {
            name: "B",
            what: "64 publishers, 4 channels",
            runs: vec![],
        },
        Scenario {
            name: "B1",
            what: "1 caller, sequential GetStatus",
            runs: vec![],
        },
        Scenario {
            name: "B1x64",
            what: "64 GetStatus callers, 4 channels",
            runs: vec![],
        },
    ];
    let mut checks = Checks::default();
    for rep in 1..=args.reps {
        for s in scenarios.iter_mut() {
            if !(s.name == "B0" || args.only.is_empty() || args.only.iter().any(|o| o == s.name)) {
                continue;
            }
            let r = match s.name {
                "B0" => run_b0(&tmp, dur),
                "A" => run_publish(&crt, &tmp, 1, dur, &mut checks),
                "B" => run_publish(&crt, &tmp, PUBLISHERS, dur, &mut checks),
                "B1" => run_status(&crt, &tmp, 1, dur, &mut checks),
                _ => run_status(&crt, &tmp, PUBLISHERS, dur, &mut checks),
            };
            match r {
                Ok(run) => {
                    println!(
                        "  rep {rep} {:<6} {:>7.0} ops/s  p50 {:>7.0} µs  p99 {:>7.0} µs  max {:>7.0} µs  \
                         CPU µs/op daemon {:.1} committer {:.1} client {:.1} other {:.1}  \
                         cores: ours {:.2}, machine {:.2}",
                        s.name,
                        run.rate(),
                        run.pct_us(0.5),
                        run.pct_us(0.99),
                        run.pct_us(1.0),
                        run.cpu_us_per_op(0),
                        run.cpu_us_per_op(1),
                        run.cpu_us_per_op(2),
                        run.cpu_us_per_op(3),
                        run.cpu.own_cores,
                        run.cpu.machine_cores,
                    );
                    s.runs.push(run);
                }
                Err(e) => {
                    eprintln!("publish bench: {} failed to run: {e}", s.name);
                    return ExitCode::FAILURE;
                }
            }
        }
    }

    // Ratios to B0 of the same repetition.
    let b0: Vec<f64> = scenarios[0].metric(Run::rate);
    let ratios = |s: &Scenario| -> Vec<f64> {
        s.runs
            .iter()
            .zip(&b0)
            .map(|(r, base)| r.rate() / base)
            .collect()
    };
    println!();
    println!(
        "| scenario | what | ops/s median (min–max) | ratio to B0 | p50 µs | p99 µs | p999 µs | max µs |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut json = Vec::new();
    for s in scenarios.iter().filter(|s| !s.runs.is_empty()) {
        let rate = s.metric(Run::rate);
        let ratio = ratios(s);
        let pcts = [0.5, 0.99, 0.999, 1.0].map(|q| s.metric(|r| r.pct_us(q)));
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            s.name,
            s.what,
            fmt_range(&rate, 0),
            fmt_range(&ratio, 2),
            fmt_range(&pcts[0], 0),
            fmt_range(&pcts[1], 0),
            fmt_range(&pcts[2], 0),
            fmt_range(&pcts[3], 0),
        );
        json.push(serde_json::json!({
            "name": s.name,
            "what": s.what,
            "ops_per_s": stats_json(&rate),
            "ratio_to_b0": stats_json(&ratio),
            "latency_us": {
                "p50": stats_json(&pcts[0]),
                "p99": stats_json(&pcts[1]),
                "p999": stats_json(&pcts[2]),
                "max": stats_json(&pcts[3]),
            },
            "ops_per_run": s.runs.iter().map(|r| r.ops).collect::<Vec<_>>(),
            "cpu_us_per_op": {
                "daemon": stats_json(&s.metric(|r| r.cpu_us_per_op(0))),
                "committer": stats_json(&s.metric(|r| r.cpu_us_per_op(1))),
                "client": stats_json(&s.metric(|r| r.cpu_us_per_op(2))),
                "other": stats_json(&s.metric(|r| r.cpu_us_per_op(3))),
            },
            "cores_busy": {
                "ours": stats_json(&s.metric(|r| r.cpu.own_cores)),
                "machine": stats_json(&s.metric(|r| r.cpu.machine_cores)),
            },
        }));
    }
    println!("(latencies: median over repetitions of each run's percentile, with min–max)");
    println!();
    println!("| scenario | CPU µs/op: daemon runtime | store committer | publishers (client) | other (main) | cores busy: this process | whole machine |");
    println!("|---|---|---|---|---|---|---|");
    for s in scenarios.iter().filter(|s| !s.runs.is_empty()) {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            s.name,
            fmt_range(&s.metric(|r| r.cpu_us_per_op(0)), 1),
            fmt_range(&s.metric(|r| r.cpu_us_per_op(1)), 1),
            fmt_range(&s.metric(|r| r.cpu_us_per_op(2)), 1),
            fmt_range(&s.metric(|r| r.cpu_us_per_op(3)), 1),
            fmt_range(&s.metric(|r| r.cpu.own_cores), 2),
            fmt_range(&s.metric(|r| r.cpu.machine_cores), 2),
        );
    }
    println!(
        "(whole machine includes other processes: above \"this process\" means the run was shared)"
    );

    let b = &scenarios[2];
    let met = if b.runs.is_empty() {
        println!("target: not measured (scenario B did not run)");
        None
    } else {
        let (rate_b, _, _) = common::summary(&b.metric(Run::rate));
        let (p99_b, _, _) = common::summary(&b.metric(|r| r.pct_us(0.99)));
        let met = rate_b >= TARGET_RATE && p99_b <= TARGET_P99_US;
        println!(
            "target (B: ≥ {TARGET_RATE:.0} publishes/s, ack p99 ≤ {TARGET_P99_US:.0} µs): {} — \
             median {rate_b:.0}/s, p99 {p99_b:.0} µs",
            if met { "MET" } else { "NOT MET" }
        );
        Some(met)
    };

    let doc = serde_json::json!({
        "bench": "publish",
        "daemon": "in-process",
        "repetitions": args.reps,
        "seconds_per_run": args.secs,
        "payload_bytes": PAYLOAD,
        "publishers": PUBLISHERS,
        "channels": CHANNELS,
        "temp_dir": tmp.display().to_string(),
        "filesystem": filesystem_of(&tmp),
        "target": {"publishes_per_s": TARGET_RATE, "p99_us": TARGET_P99_US, "met": met},
        "checks_failed": checks.failed,
        "scenarios": json,
    });
    let path = out_dir.join("publish.json");
    match serde_json::to_string_pretty(&doc).map(|s| std::fs::write(&path, s + "\n")) {
        Ok(Ok(())) => println!("wrote {}", path.display()),
        Ok(Err(e)) => eprintln!("publish bench: cannot write {}: {e}", path.display()),
        Err(e) => eprintln!("publish bench: cannot encode JSON: {e}"),
    }

    if checks.failed.is_empty() {
        println!("checks: all passed (ids unique and increasing per publisher, depth = acks, store = acks)");
        ExitCode::SUCCESS
    } else {
        eprintln!("checks: {} FAILED", checks.failed.len());
        ExitCode::FAILURE
    }
}
