//! The table, the JSON and the targets.

use std::path::Path;

use crate::b4;
use crate::common::publish::{
    filesystem_of, CHANNELS, PAYLOAD, PUBLISHERS, TARGET_P99_US, TARGET_RATE,
};
use crate::measure::{fmt_range, pct_us, stats_json, summary, GROUPS};
use crate::runs::Run;
use crate::scenarios::{size, Kind, Scenario};
use crate::Args;

/// Per-subscriber rate for stalled runs (the 9 others vs 10 readers), delivered msgs/s else.
fn ratio_metric(s: &Scenario, r: &Run) -> f64 {
    match s.kind {
        Kind::Stalled { .. } => r.per_sub_rate,
        _ => r.rate(),
    }
}

fn baseline_metric(s: &Scenario, b: &Run) -> f64 {
    match s.kind {
        Kind::Stalled { .. } => b.per_sub_rate,
        _ => b.rate(),
    }
}

fn find<'a>(all: &'a [Scenario], name: &str) -> Option<&'a Scenario> {
    all.iter().find(|s| s.name == name)
}

fn ratios(all: &[Scenario], s: &Scenario) -> Vec<f64> {
    let Some(b) = s.baseline.as_deref().and_then(|b| find(all, b)) else {
        return vec![];
    };
    s.runs
        .iter()
        .zip(&b.runs)
        .map(|(r, br)| ratio_metric(s, r) / baseline_metric(s, br))
        .collect()
}

/// The CPU group that plays "the daemon" in a scenario (B3: its writer thread; B0: the main
/// thread, which runs its loop, in "other").
fn server_group(s: &Scenario) -> Option<usize> {
    match s.kind {
        Kind::B3 { .. } => Some(3),
        Kind::B0 => Some(4),
        Kind::B1 { .. }
        | Kind::B2 { .. }
        | Kind::B4 { .. }
        | Kind::Latency { t: None, .. }
        | Kind::Idle => None,
        _ => Some(0),
    }
}

/// CPU ns per delivery of what plays "the daemon" (B4: the websocat process).
fn server_cpu(s: &Scenario, r: &Run) -> f64 {
    match s.kind {
        Kind::B4 { .. } => r.extra("websocat_cpu_ns_per_msg"),
        _ => server_group(s).map_or(f64::NAN, |g| r.cpu_per(g)),
    }
}

pub fn print_run(rep: usize, s: &Scenario, r: &Run) {
    let cpu = server_cpu(s, r);
    let mut line = format!(
        "  rep {rep} {:<28} {:>10.0} msgs/s  p50 {:>8.1} µs  p99 {:>9.1} µs  max {:>9.1} µs  \
         server CPU {:>6.0} ns/msg  subs CPU {:>6.0} ns/msg  peak RSS {:>6.1} MiB  lost {} dup {} gaps {}",
        s.name,
        r.rate(),
        pct_us(&r.lat_ns, 0.5),
        pct_us(&r.lat_ns, 0.99),
        pct_us(&r.lat_ns, 1.0),
        cpu,
        r.cpu_per(2),
        r.peak_rss_kib as f64 / 1024.0,
        r.lost,
        r.dup,
        r.gaps,
    );
    for (k, v) in &r.extra {
        line.push_str(&format!("  {k} {v:.2}"));
    }
    println!("{line}");
    for e in &r.errors {
        eprintln!("    error: {e}");
    }
}

fn metric(s: &Scenario, f: impl Fn(&Run) -> f64) -> Vec<f64> {
    s.runs.iter().map(f).collect()
}

fn med(v: &[f64]) -> f64 {
    summary(v).0
}

/// How B4 ran, or why not.
fn b4_json(args: &Args) -> serde_json::Value {
    let Some(w) = &args.websocat else {
        return serde_json::json!({"skipped": "websocat not on PATH"});
    };
    let cmd = |n| b4::args(n, "ws://UPSTREAM", Path::new("SOCK")).join(" ");
    serde_json::json!({
        "version": w.version,
        "exe": w.exe.display().to_string(),
        "process": "child process; CPU from /proc/PID/task/*/schedstat",
        "command_n1": format!("websocat {}", cmd(1)),
        "command_n_gt_1": format!("websocat {}", cmd(2)),
        "framing": "-b writes the messages' bytes with no framing: readers re-split the stream by the fixed record size; seq holes count as lost",
    })
}

/// Prints the table and the targets, writes the JSON; false if any check failed.
pub fn report(args: &Args, all: &[Scenario], json_path: &Path, tmp: &Path) -> bool {
    let mut failed = Vec::new();
    println!();
    println!("| scenario | msgs/s delivered | ratio to baseline | p50 µs | p99 µs | p999 µs | max µs | server CPU ns/msg | subs CPU ns/msg | peak RSS MiB | lost/dup |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let mut json = Vec::new();
    for s in all.iter().filter(|s| !s.runs.is_empty()) {
        let rate = metric(s, Run::rate);
        let ratio = ratios(all, s);
        let pcts = [0.5, 0.99, 0.999, 1.0].map(|q| metric(s, |r| pct_us(&r.lat_ns, q)));
        let cpu = metric(s, |r| server_cpu(s, r));
        let subs_cpu = metric(s, |r| r.cpu_per(2));
        let rss = metric(s, |r| r.peak_rss_kib as f64 / 1024.0);
        let lost: u64 = s.runs.iter().map(|r| r.lost).sum();
        let dup: u64 = s.runs.iter().map(|r| r.dup).sum();
        let errors: Vec<String> = s.runs.iter().flat_map(|r| r.errors.clone()).collect();
        // The stalled subscriber's own gaps are expected; nobody else may see one. B4's losses
        // and errors are websocat's, reported as measured.
        let peer = matches!(s.kind, Kind::B4 { .. });
        if !peer && (lost + dup > 0 || !errors.is_empty()) {
            failed.push(format!(
                "{}: lost {lost}, dup {dup}, errors {errors:?}",
                s.name
            ));
        }
        let has_rate = !matches!(s.kind, Kind::Idle);
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {lost}/{dup} |",
            s.name,
            if has_rate {
                fmt_range(&rate, 0)
            } else {
                "–".into()
            },
            fmt_range(&ratio, 2),
            fmt_range(&pcts[0], 0),
            fmt_range(&pcts[1], 0),
            fmt_range(&pcts[2], 0),
            fmt_range(&pcts[3], 0),
            fmt_range(&cpu, 0),
            fmt_range(&subs_cpu, 0),
            fmt_range(&rss, 1),
        );
        let mut extra = serde_json::Map::new();
        if let Some(r) = s.runs.first() {
            for (k, _) in &r.extra {
                extra.insert((*k).into(), stats_json(&metric(s, |r| r.extra(k))));
            }
        }
        let mut cpu_groups = serde_json::Map::new();
        for (g, gname) in GROUPS.iter().enumerate() {
            cpu_groups.insert((*gname).into(), stats_json(&metric(s, |r| r.cpu_per(g))));
        }
        json.push(serde_json::json!({
            "name": s.name,
            "baseline": s.baseline,
            "msgs_per_s_delivered": stats_json(&rate),
            "per_subscriber_msgs_per_s": stats_json(&metric(s, |r| r.per_sub_rate)),
            "ratio_to_baseline": stats_json(&ratio),
            "latency_us": {
                "p50": stats_json(&pcts[0]), "p99": stats_json(&pcts[1]),
                "p999": stats_json(&pcts[2]), "max": stats_json(&pcts[3]),
            },
            "daemon_cpu_ns_per_delivered_msg": stats_json(&cpu),
            "cpu_ns_per_delivered_msg_by_thread_group": cpu_groups,
            "peak_rss_mib": stats_json(&rss),
            "deliveries_per_run": s.runs.iter().map(|r| r.deliveries).collect::<Vec<_>>(),
            "lost": lost, "duplicated": dup,
            "gap_events": s.runs.iter().map(|r| r.gaps).sum::<u64>(),
            "errors": errors,
            "extra": extra,
        }));
    }
    if args.websocat.is_none() {
        println!("| B4/64B | skipped: websocat not on PATH | | | | | | | | | |");
        json.push(serde_json::json!({
            "name": "B4/64B", "baseline": "B1/64B", "skipped": "websocat not on PATH",
        }));
    }
    println!("(median over repetitions, min–max in brackets; percentiles are per run over all subscribers' messages;");
    println!(" server CPU = daemon threads (with the store committer), the b3-writer thread for B3, the websocat process for B4,");
    println!(" the main thread for B0; B4's lost are messages websocat dropped (not a failure of the bench);");
    println!(" subs CPU = the subscribers, or the publishers for publish; peak RSS is this whole process, bench included;");
    println!(" ratio: N=1 vs B1, N>1 vs B3 (same N, payload), B2 vs B1, stalled = per-subscriber rate of the 9 vs 10 readers, latency vs B2 rate,");
    println!(" publish vs B0; for publish and B0 \"msgs/s\" is durable publishes acked/s (inserts/s) and the latencies are per publish (insert))");

    // Targets.
    let mut targets = Vec::new();
    let mut target = |what: &str, figure: String, met: Option<bool>| {
        let verdict = match met {
            Some(true) => "MET",
            Some(false) => "NOT MET",
            None => "not measured",
        };
        println!("target: {what}: {figure} — {verdict}");
        targets.push(serde_json::json!({"target": what, "measured": figure, "met": met}));
    };
    println!();
    let r = |n: &str| find(all, n).filter(|s| !s.runs.is_empty());
    for (p, goal) in [(64, 0.8), (65536, 0.9)] {
        let n = format!("grpc-uds/N=1/{}", size(p));
        let v = r(&n).map(|s| med(&ratios(all, s)));
        target(
            &format!("N=1 {} gRPC-UDS ≥ {goal}× B1", size(p)),
            v.map_or("–".into(), |v| format!("{v:.2}×")),
            v.map(|v| v >= goal),
        );
    }
    for t in ["grpc-uds", "grpc-tcp", "ndjson"] {
        let v = r(&format!("{t}/N=100/64B")).map(|s| med(&metric(s, Run::rate)));
        target(
            &format!("N=100 64 B {t} ≥ 1,000,000 deliveries/s"),
            v.map_or("–".into(), |v| format!("{v:.0}/s")),
            v.map(|v| v >= 1e6),
        );
    }
    for t in ["grpc-uds", "grpc-tcp", "ndjson"] {
        let v = r(&format!("{t}/N=100/64B"))
            .zip(r("B3/N=100/64B"))
            .map(|(s, b)| {
                let a = med(&metric(s, |x| x.cpu_per(0)));
                let f = med(&metric(b, |x| x.cpu_per(3)));
                (a, f, a / f)
            });
        target(
            &format!("N=100 64 B {t} daemon CPU per delivery ≤ 1.5× B3"),
            v.map_or("–".into(), |(a, f, x)| {
                format!("{a:.0} ns vs {f:.0} ns = {x:.1}×")
            }),
            v.map(|v| v.2 <= 1.5),
        );
    }
    for t in ["grpc-uds", "ndjson"] {
        let v = r(&format!("latency/{t}/N=10/64B@50%"))
            .zip(r("latency/B2/N=10/64B@50%"))
            .map(|(s, b)| {
                let d = |q| {
                    med(&metric(s, |x| pct_us(&x.lat_ns, q)))
                        - med(&metric(b, |x| pct_us(&x.lat_ns, q)))
                };
                (d(0.99), d(0.999))
            });
        target(
            &format!("added latency vs B2, {t}, 10 subs, 50% load: p99 ≤ 100 µs, p999 ≤ 1 ms"),
            v.map_or("–".into(), |(a, b)| {
                format!("p99 +{a:.0} µs, p999 +{b:.0} µs")
            }),
            v.map(|(a, b)| a <= 100.0 && b <= 1000.0),
        );
    }
    for t in ["grpc-uds", "ndjson"] {
        let v = r(&format!("stalled/{t}/N=9+1")).map(|s| {
            let rss = med(&metric(s, |x| x.peak_rss_kib as f64 / 1024.0));
            (med(&ratios(all, s)), rss)
        });
        target(
            &format!("one stalled {t} subscriber among 10: others ≥ 0.95×"),
            v.map_or("–".into(), |(x, rss)| {
                format!("{x:.2}× (peak RSS {rss:.0} MiB, whole process)")
            }),
            v.map(|(x, _)| x >= 0.95),
        );
    }
    let v = r(&format!(
        "publish/grpc-uds/P={PUBLISHERS}/{}",
        size(PAYLOAD)
    ))
    .map(|s| {
        (
            med(&metric(s, Run::rate)),
            med(&metric(s, |x| pct_us(&x.lat_ns, 0.99))),
        )
    });
    target(
        "durable publishes ≥ 50,000/s, ack p99 ≤ 5 ms",
        v.map_or("–".into(), |(rate, p99)| {
            format!(
                "{rate:.0}/s, ack p99 {p99:.0} µs ({PUBLISHERS} publishers, {CHANNELS} channels)"
            )
        }),
        v.map(|(rate, p99)| rate >= TARGET_RATE && p99 <= TARGET_P99_US),
    );
    let v = r("reconnect/grpc-uds/N=3").map(|s| {
        (
            med(&metric(s, |x| x.extra("accept_to_first_delivery_ms"))),
            s.runs.iter().map(|x| x.lost + x.dup).sum::<u64>(),
        )
    });
    target(
        "reconnect: accepted → first delivery ≤ 50 ms, 0 lost, 0 duplicated",
        v.map_or("–".into(), |(ms, ld)| {
            format!("{ms:.1} ms, lost+dup {ld}")
        }),
        v.map(|(ms, ld)| ms <= 50.0 && ld == 0),
    );
    target(
        "dead connection detected ≤ ping_interval + pong_timeout + 100 ms",
        "not in this harness".into(),
        None,
    );
    let v = r("idle/3-endpoints").map(|s| {
        (
            med(&metric(s, |x| x.extra("idle_kib"))) / 1024.0,
            med(&metric(s, |x| x.extra("ndjson_per100_kib"))) / 100.0,
            med(&metric(s, |x| x.extra("grpc_per100_kib"))) / 100.0,
        )
    });
    target(
        "idle RSS, 3 endpoints ≤ 10 MiB; ≤ 64 KiB per extra subscriber",
        v.map_or("–".into(), |(i, a, b)| {
            format!("{i:.1} MiB; {a:.0} KiB/NDJSON sub, {b:.0} KiB/gRPC stream")
        }),
        v.map(|(i, a, b)| i <= 10.0 && a <= 64.0 && b <= 64.0),
    );

    let doc = serde_json::json!({
        "bench": "fanout",
        "daemon": "in-process, own multi-thread tokio runtime (threads \"daemon\"), fresh per run",
        "quick": args.quick,
        "repetitions": args.reps,
        "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "b4": b4_json(args),
        "rss_note": "VmRSS of the bench process: includes the bench's own memory; idle runs in a fresh child process",
        "publish": {
            "what": "benches/publish.rs scenario B vs its B0: durable publishes (wait = STORED) over gRPC-UDS, a fresh daemon and store per run, the endpoint's upstream refused so every publish stays in the outbox",
            "seconds_per_run": args.publish_secs,
            "payload_bytes": PAYLOAD,
            "publishers": PUBLISHERS,
            "channels": CHANNELS,
            "store_dir": tmp.display().to_string(),
            "filesystem": filesystem_of(tmp),
            "checks": "every publish acked; outbox ids unique and increasing per publisher; outbox depth = acks; the reopened store holds exactly the acked payloads",
        },
        "checks_failed": failed,
        "targets": targets,
        "scenarios": json,
    });
    match serde_json::to_string_pretty(&doc).map(|s| std::fs::write(json_path, s + "\n")) {
        Ok(Ok(())) => println!("wrote {}", json_path.display()),
        Ok(Err(e)) => eprintln!("fanout bench: cannot write {}: {e}", json_path.display()),
        Err(e) => eprintln!("fanout bench: cannot encode JSON: {e}"),
    }
    if failed.is_empty() {
        println!(
            "checks: all passed (no hole, no duplicate, no error in any subscriber that reads)"
        );
        true
    } else {
        for f in &failed {
            eprintln!("CHECK FAILED: {f}");
        }
        false
    }
}
