//! `soak`: a bounded soak of the real daemon (issue 7), e.g.
//! `cargo bench --bench soak -- --minutes 10`. Without `--minutes` it does nothing, so a plain
//! `cargo bench` does not start a ten-minute run.
//!
//! Three in-process feeds (integer ids resumed by query, by frame, and string ids with a
//! persisted replay window) sit behind chaos proxies that reset, FIN or stall a connection every
//! few seconds. The `ws-sidecar` binary runs as a child on a temp dir. Per endpoint a verifier
//! reads every seq from 1; churning subscribers (gRPC over Unix socket and TCP, NDJSON) leave and
//! rejoin from their last seq; publishers publish with `wait = STORED` (with `--confirmed`:
//! `wait = CONFIRMED` on endpoints with a `requests` table, which the feeds answer, and no
//! acknowledged publish may be missing, whatever the proxy did). At the end the traffic
//! stops, everything drains, and the report compares what the feeds produced with what
//! subscribers got, what was acknowledged with what the feeds received, and the daemon's RSS.
//! Exit status 1 when a check fails.

mod chaos;
mod daemon;
mod feed;
mod publish;
mod report;
mod subscribe;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use tokio_util::sync::CancellationToken;

use daemon::{Daemon, EndpointSpec};
use feed::{Feed, Style};
use report::{Endpoint, Report};
use subscribe::Via;

#[derive(Parser)]
#[command(about = "Soak the ws-sidecar daemon: faults, churning subscribers, publishes, RSS")]
struct Args {
    /// Length of the traffic phase in minutes (fractions allowed); without it nothing runs.
    #[arg(long)]
    minutes: Option<f64>,
    /// Messages per second produced by each feed.
    #[arg(long, default_value_t = 100)]
    rate: u32,
    /// Mean seconds between faults on each endpoint.
    #[arg(long, default_value_t = 4.0)]
    fault_every: f64,
    /// Subscribers per endpoint that keep leaving and rejoining (besides the verifier).
    #[arg(long, default_value_t = 5)]
    churners: usize,
    /// Publishers per endpoint.
    #[arg(long, default_value_t = 2)]
    publishers: usize,
    /// Publish with `wait = CONFIRMED` (endpoints get a `requests` table, the feeds answer each
    /// publish): every acknowledged publish must reach its feed, 0 lost.
    #[arg(long)]
    confirmed: bool,
    /// The daemon binary (default: the one cargo built for this bench).
    #[arg(long)]
    daemon: Option<PathBuf>,
    /// Keep the temp dir (config, store, daemon log) after a passing run too.
    #[arg(long)]
    keep: bool,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

/// `replay.messages` of every endpoint.
pub const REPLAY_MESSAGES: u64 = 5000;

/// `outbox.max_age` of every endpoint, which is also how long idempotency keys are kept. The
/// default (1 h) would make that state grow through a 10-minute run by design; 30 s lets it
/// settle before RSS is first measured and still outlasts every outage the chaos causes.
pub const OUTBOX_MAX_AGE: Duration = Duration::from_secs(30);

/// Ids each feed has before the daemon first connects: the daemon reads them at once, so the
/// replay window is nearly full from the start.
const PREFILL: u64 = 4000;

/// Longest wait for the daemon to deliver and send everything after the traffic stops.
const DRAIN_LIMIT: Duration = Duration::from_secs(60);

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let Some(minutes) = args.minutes else {
        println!("soak: skipped (run it with `cargo bench --bench soak -- --minutes N`)");
        return std::process::ExitCode::SUCCESS;
    };
    if !(minutes > 0.0 && args.fault_every > 0.0 && args.rate > 0) {
        eprintln!("soak: --minutes, --rate and --fault-every must be positive");
        return std::process::ExitCode::from(64);
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("soak: cannot start the runtime: {e}");
            return std::process::ExitCode::from(71);
        }
    };
    match rt.block_on(run(args, minutes)) {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("soak: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

async fn run(args: Args, minutes: f64) -> anyhow::Result<bool> {
    chaos::self_check()?;
    let dir = std::env::temp_dir().join(format!("ws-sidecar-soak-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let bin = daemon::locate(args.daemon.clone(), &dir)?;
    let total = Duration::from_secs_f64(minutes * 60.0);
    // RSS is only comparable once every state kept for a time has reached its steady size: the
    // replay window (and the read buffers its messages pin) and the idempotency keys, kept for
    // max_age and pruned once a minute.
    let turnover = Duration::from_secs_f64(REPLAY_MESSAGES as f64 / f64::from(args.rate));
    let keys = OUTBOX_MAX_AGE + Duration::from_secs(60);
    let settled = (turnover.max(keys) + Duration::from_secs(10)).max(total.mul_f64(0.1));
    let judge_rss = total >= settled * 2;
    let warmup = if judge_rss { settled } else { total / 2 };
    println!(
        "soak: {:.1} min, {} msg/s per feed, a fault every ~{}s per endpoint, daemon {}, dir {}",
        minutes,
        args.rate,
        args.fault_every,
        bin.display(),
        dir.display()
    );

    let stop = CancellationToken::new();
    let calm = CancellationToken::new();
    let quiet = CancellationToken::new();
    let every = Duration::from_secs_f64(args.fault_every);
    let plan = [
        ("alpha", Style::Query, "id_pointer = \"/id\", query = \"since\", contiguous = true", ""),
        (
            "beta",
            Style::Frame,
            "id_pointer = \"/id\", frame = '{\"op\":\"resume\",\"from\":{{last_id}}}', contiguous = true",
            "on_connect = ['{\"op\":\"subscribe\"}']\n",
        ),
        ("gamma", Style::StringIds, "id_pointer = \"/id\", id_kind = \"string\", query = \"since\"", ""),
    ];
    let mut eps = Vec::new();
    let mut specs = Vec::new();
    // A confirm waits for the feed's small answer frame, which Nagle's algorithm on the feed's
    // and the proxy's sockets held back for a delayed ACK (p50 23 ms instead of 1.7 ms); the
    // daemon sets TCP_NODELAY on its own. The default mode keeps its sockets as they were.
    let nodelay = args.confirmed;
    for (name, style, resume, extra) in plan {
        let (rate, q, s) = (args.rate, quiet.clone(), stop.clone());
        let feed = Feed::start(name, style, rate, PREFILL, nodelay, q, s).await?;
        let chaos =
            chaos::Chaos::start(feed.addr, every, nodelay, calm.clone(), stop.clone()).await?;
        specs.push(EndpointSpec {
            name,
            url: format!("ws://{}/feed", chaos.addr),
            resume,
            extra,
            requests: args.confirmed,
        });
        eps.push(Endpoint {
            feed,
            chaos,
            books: subscribe::Books::new(name),
            acks: publish::Acks::new(name),
            status: None,
        });
    }

    let mut daemon = Daemon::start(&bin, &dir, &specs).await?;
    let t0 = Instant::now();
    let churn_stop = CancellationToken::new();
    let verified = CancellationToken::new();
    let mut tasks = Vec::new();
    for ep in &eps {
        let name = ep.books.endpoint;
        tokio::spawn(subscribe::verifier(
            daemon.grpc.clone(),
            Arc::clone(&ep.books),
            verified.clone(),
        ));
        // Both APIs and both gRPC transports, whatever the count.
        let vias = [
            Via::Grpc(daemon.grpc.clone()),
            Via::Ndjson(daemon.stream.clone()),
            Via::Grpc(daemon.grpc_tcp.clone()),
        ];
        for via in vias.iter().cycle().take(args.churners) {
            tasks.push(tokio::spawn(subscribe::churner(
                via.clone(),
                Arc::clone(&ep.books),
                churn_stop.clone(),
            )));
        }
        let targets = [daemon.grpc.clone(), daemon.grpc_tcp.clone()];
        for (i, target) in targets.iter().cycle().take(args.publishers).enumerate() {
            tasks.push(tokio::spawn(publish::publisher(
                target.clone(),
                format!("p{i}"),
                Arc::clone(&ep.acks),
                args.confirmed,
                churn_stop.clone(),
            )));
        }
        println!(
            "  {name}: feed {} behind chaos proxy {}",
            ep.feed.addr, ep.chaos.addr
        );
    }

    let mut report = Report {
        judge_rss,
        confirmed: args.confirmed,
        ..Report::default()
    };
    let mut next_sample = Duration::ZERO;
    let marks = [("start", warmup), ("middle", total / 2), ("end", total)];
    let mut marked = 0;
    while t0.elapsed() < total {
        if let Some(how) = daemon.exited() {
            report
                .failures
                .push(format!("daemon exited mid-run: {how}"));
            break;
        }
        let now = t0.elapsed();
        if now >= next_sample {
            if let Some(kib) = daemon.rss_kib() {
                report.samples.push((now, kib));
            }
            next_sample += Duration::from_secs(10);
        }
        while marked < marks.len() - 1 && now >= marks[marked].1 {
            report.mark(
                marks[marked].0,
                now,
                daemon.rss_kib(),
                daemon.memory_detail(&dir),
            );
            marked += 1;
        }
        let nap = Duration::from_millis(500).min(total.saturating_sub(now));
        tokio::time::sleep(nap).await;
    }
    report.mark(
        "end",
        t0.elapsed(),
        daemon.rss_kib(),
        daemon.memory_detail(&dir),
    );

    // Traffic stops: no new faults, no new publishes or churn, the feeds stop producing.
    calm.cancel();
    churn_stop.cancel();
    quiet.cancel();
    for t in tasks {
        let _ = t.await;
    }
    let drain_start = Instant::now();
    let drained = drain(&daemon, &eps).await;
    report.drain = drain_start.elapsed();
    if !drained {
        report
            .failures
            .push(format!("not drained within {}s", DRAIN_LIMIT.as_secs()));
    }
    verified.cancel();
    report.after_drain_kib = daemon.rss_kib();
    if let Ok(st) = daemon.status().await {
        for ep in &mut eps {
            ep.status = st.iter().find(|s| s.name == ep.books.endpoint).cloned();
        }
    }
    let log = daemon.log.clone();
    let (exit, took) = daemon.stop().await;
    report.exit = format!("{exit} after {} ms", took.as_millis());
    if exit != "exit status: 0" || took > Duration::from_secs(5) {
        report
            .failures
            .push(format!("daemon stop: {exit} in {} ms", took.as_millis()));
    }
    stop.cancel();

    let pass = report.print(&eps, t0.elapsed(), &args_line(&args, minutes));
    if pass && !args.keep {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        println!("kept {} (daemon log: {})", dir.display(), log.display());
    }
    Ok(pass)
}

fn args_line(a: &Args, minutes: f64) -> String {
    format!(
        "--minutes {minutes} --rate {} --fault-every {} --churners {} --publishers {}{}",
        a.rate,
        a.fault_every,
        a.churners,
        a.publishers,
        if a.confirmed { " --confirmed" } else { "" }
    )
}

/// Waits until every verifier has the feed's last id and every outbox and confirm queue is
/// empty.
async fn drain(daemon: &Daemon, eps: &[Endpoint]) -> bool {
    let deadline = Instant::now() + DRAIN_LIMIT;
    while Instant::now() < deadline {
        let delivered = eps
            .iter()
            .all(|e| e.books.verified_upto.load(Ordering::Relaxed) >= e.feed.produced());
        let sent = match daemon.status().await {
            Ok(st) => st
                .iter()
                .all(|s| s.outbox_depth == 0 && s.confirm_depth == 0),
            Err(_) => false,
        };
        if delivered && sent {
            // Frames flushed a moment ago may still be on their way through the proxy.
            tokio::time::sleep(Duration::from_secs(1)).await;
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}
