//! The publish path (BENCHMARKING.md: "durable publishes/s through gRPC with the outbox on disk;
//! ack latency p99"), run by the same code as `benches/publish.rs` (`common::publish`): its
//! scenario B (64 publishers on 4 gRPC channels over the Unix socket, wait = STORED, 64-byte
//! payloads, a fresh daemon and store per run) and its baseline B0 (one durable redb commit per
//! insert in a plain loop), with every check publish.rs makes. Only the figures are put into this
//! harness's [`Run`] so that they land in the same table and `fanout.json`.

use std::time::Duration;

use crate::common::publish::{self, Checks, CHANNELS, PUBLISHERS};
use crate::runs::{Ctx, Run};

/// B0: what the disk gives without group commit.
pub fn b0(ctx: &Ctx, secs: f64) -> Result<Run, String> {
    ctx.rss.take_peak();
    let r = publish::run_b0(&ctx.base, Duration::from_secs_f64(secs))?;
    Ok(to_run(r, 1, Checks::default(), ctx.rss.take_peak()))
}

/// Scenario B of publish.rs: 64 concurrent publishers sharing 4 channels.
pub fn publishers(ctx: &Ctx, secs: f64) -> Result<Run, String> {
    // A runtime of its own, as in publish.rs: its threads are named "publishers", which is how
    // `common::publish` tells the client's CPU apart from the daemon's. Built per run (a few ms)
    // rather than kept, so it costs nothing to the fan-out scenarios.
    let crt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("publishers")
        .build()
        .map_err(|e| format!("publishers runtime: {e}"))?;
    let mut checks = Checks::default();
    ctx.rss.take_peak();
    let r = publish::run_publish(
        &crt,
        &ctx.base,
        PUBLISHERS,
        Duration::from_secs_f64(secs),
        &mut checks,
    )?;
    let peak = ctx.rss.take_peak();
    crt.shutdown_timeout(Duration::from_secs(2));
    Ok(to_run(r, PUBLISHERS, checks, peak))
}

/// Publishes become deliveries (acks), ack latencies the latencies, and the CPU groups of
/// `common::publish` map onto this harness's: daemon runtime + store committer → "daemon" (both
/// are the daemon's threads), publishers → "subs" (the client side), the rest → "other". Failed
/// checks become errors, which fail the bench as a hole or duplicate would.
fn to_run(r: publish::Run, clients: usize, checks: Checks, peak_rss_kib: u64) -> Run {
    let [daemon, committer, client, other] = r.cpu.ns;
    let per_op = |ns: u64| ns as f64 / r.ops.max(1) as f64;
    let extra = vec![
        ("daemon_runtime_cpu_ns_per_op", per_op(daemon)),
        ("store_committer_cpu_ns_per_op", per_op(committer)),
        ("cores_busy_this_process", r.cpu.own_cores),
        ("cores_busy_whole_machine", r.cpu.machine_cores),
        ("publishers", clients as f64),
        ("channels", clients.min(CHANNELS) as f64),
    ];
    Run {
        deliveries: r.ops,
        secs: r.elapsed.as_secs_f64(),
        per_sub_rate: r.rate() / clients as f64,
        cpu: [daemon + committer, 0, client, 0, other],
        lat_ns: r.lat_ns,
        peak_rss_kib,
        errors: checks.failed,
        extra,
        ..Run::default()
    }
}
