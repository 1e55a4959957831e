//! Memory and restart cost of a full outbox: `cargo bench --bench outbox` (100,000 publishes of
//! 1 KiB; `-- --messages N --size B` to change). The real `ws-sidecar` binary runs as a child
//! with one endpoint whose upstream is unreachable, so everything published stays queued; 64
//! publishers on 4 gRPC channels fill the outbox (wait = STORED). Reported: the daemon's RSS idle,
//! full, and after a restart that restores the whole outbox from the store, with the restore
//! time and the store file's size. Exits 1 when the outbox depth is not exactly what was acked.

use std::path::Path;
use std::process::{ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use tokio::process::{Child, Command};
use ws_sidecar::client::{self, Target};
use ws_sidecar::proto;

#[derive(Parser)]
#[command(about = "RSS and restore time of a full outbox")]
struct Args {
    /// Publishes to queue.
    #[arg(long, default_value_t = 100_000)]
    messages: u64,
    /// Payload bytes of each.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

const PUBLISHERS: u64 = 64;
const CHANNELS: usize = 4;

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("outbox bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: &Args) -> anyhow::Result<bool> {
    let dir = tempfile::Builder::new().prefix("outbox-").tempdir()?;
    let d = dir.path();
    std::fs::write(
        d.join("config.toml"),
        format!(
            "[grpc]\nlisten = [\"unix:{0}/grpc.sock\"]\n[stream]\npath = \"{0}/stream.sock\"\n\
             [http]\nlisten = \"\"\n[store]\npath = \"{0}/store\"\n\
             [endpoints.a]\nurl = \"ws://127.0.0.1:1/\"\n\
             backoff = {{ initial = \"1h\", max = \"1h\" }}\n\
             outbox = {{ max_messages = {1}, max_bytes = \"4GiB\" }}\n",
            d.display(),
            args.messages
        ),
    )?;
    let target = Target::Unix(d.join("grpc.sock"));

    let (mut child, _) = start(d, &target).await?;
    let idle = rss_mib(&child);
    let t0 = Instant::now();
    let acked = fill(&target, args).await?;
    let fill_secs = t0.elapsed().as_secs_f64();
    let depth_full = depth(&target).await?;
    let full = rss_mib(&child);
    let peak = status_field(&child, "VmHWM:");
    stop(&mut child).await;
    let store = std::fs::metadata(d.join("store"))?.len() as f64 / (1024.0 * 1024.0);

    let (mut child, restore) = start(d, &target).await?;
    let depth_restored = depth(&target).await?;
    let restored = rss_mib(&child);
    stop(&mut child).await;

    let data = (args.messages as f64) * args.size as f64 / (1024.0 * 1024.0);
    println!(
        "outbox: {} publishes of {} B ({data:.1} MiB of payload), {PUBLISHERS} publishers",
        args.messages, args.size
    );
    println!(
        "  fill      : {acked} acked in {fill_secs:.1} s ({:.0}/s)",
        acked as f64 / fill_secs
    );
    println!("  RSS idle  : {idle:.1} MiB");
    println!("  RSS full  : {full:.1} MiB (peak {peak:.1} MiB)");
    println!("  store file: {store:.1} MiB");
    println!(
        "  restart   : gRPC answering with the outbox restored after {:.2} s; RSS {restored:.1} MiB",
        restore.as_secs_f64()
    );
    let ok = acked == args.messages && depth_full == acked && depth_restored == acked;
    if !ok {
        println!(
            "FAIL: acked {acked}, depth when full {depth_full}, after restart {depth_restored}"
        );
    }
    Ok(ok)
}

/// Starts the daemon on `dir/config.toml`; returns once GetStatus answers, and how long that took.
async fn start(dir: &Path, target: &Target) -> anyhow::Result<(Child, Duration)> {
    let t0 = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ws-sidecar"))
        .arg("run")
        .arg("--config")
        .arg(dir.join("config.toml"))
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("daemon.log"))?)
        .kill_on_drop(true)
        .spawn()?;
    loop {
        if depth(target).await.is_ok() {
            return Ok((child, t0.elapsed()));
        }
        if let Some(st) = child.try_wait()? {
            anyhow::bail!(
                "daemon exited ({st}); see {}",
                dir.join("daemon.log").display()
            );
        }
        anyhow::ensure!(
            t0.elapsed() < Duration::from_secs(120),
            "daemon not answering"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn stop(child: &mut Child) {
    if let Some(pid) = child.id() {
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await;
    }
    if tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}

async fn depth(target: &Target) -> anyhow::Result<u64> {
    let mut c = client::connect(target).await?;
    let st = c
        .get_status(proto::GetStatusRequest {
            endpoint: Some("a".into()),
        })
        .await?
        .into_inner();
    Ok(st.endpoints.first().map_or(0, |e| e.outbox_depth))
}

/// Publishes `args.messages` from [`PUBLISHERS`] tasks; returns how many were acknowledged.
async fn fill(target: &Target, args: &Args) -> anyhow::Result<u64> {
    let mut channels = Vec::new();
    for _ in 0..CHANNELS {
        channels.push(client::connect(target).await?);
    }
    let next = Arc::new(AtomicU64::new(0));
    let data = bytes::Bytes::from(vec![b'x'; args.size]);
    let mut tasks = Vec::new();
    for p in 0..PUBLISHERS {
        let mut c = channels[p as usize % CHANNELS].clone();
        let (next, data, total) = (Arc::clone(&next), data.clone(), args.messages);
        tasks.push(tokio::spawn(async move {
            let mut acked = 0u64;
            while next.fetch_add(1, Ordering::Relaxed) < total {
                let req = proto::PublishRequest {
                    endpoint: "a".into(),
                    data: data.clone(),
                    ..Default::default()
                };
                if c.publish(req).await.is_ok() {
                    acked += 1;
                }
            }
            acked
        }));
    }
    let mut acked = 0;
    for t in tasks {
        acked += t.await?;
    }
    Ok(acked)
}

fn rss_mib(child: &Child) -> f64 {
    status_field(child, "VmRSS:")
}

/// A `kB` field of the child's `/proc/<pid>/status`, in MiB (0 when unreadable).
fn status_field(child: &Child, name: &str) -> f64 {
    let Some(pid) = child.id() else { return 0.0 };
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |k| k / 1024.0)
}
