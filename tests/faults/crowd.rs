//! Thousands of local clients at once, all subscribed mid-stream, then all gone in every way a
//! client can go: the subscriber count and the open descriptors return to where they were, and
//! the next client is served as if nothing happened.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::{Barrier, Semaphore};
use ws_sidecar::client::{self, Target};
use ws_sidecar::endpoint::State;
use ws_sidecar::proto;

use crate::support::daemon::{next_message, subscribe};
use crate::support::{FakeUpstream, TickOptions};
use crate::{endpoint, heavy, seed, until, with_bystander, within, T};

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// The soft and hard `RLIMIT_NOFILE` of this process, from /proc.
fn fd_limits() -> Option<(u64, u64)> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let mut nums = line.split_whitespace().filter_map(|w| w.parse().ok());
    Some((nums.next()?, nums.next()?))
}

/// Descriptors kept free for everything else in this process: other tests' daemons, stores,
/// upstreams. The daemon's accept would otherwise hit EMFILE and the test its own limit.
const SLACK: u64 = 2048;

/// How many clients of each kind fit under the descriptor limit, raising the soft limit to
/// the hard one with `prlimit` first if needed. Each client costs two descriptors here (its
/// socket and the daemon's end), and there are two kinds.
fn clients_per_kind(wanted: usize) -> usize {
    let need = 4 * wanted as u64 + SLACK;
    if let Some((soft, hard)) = fd_limits() {
        if soft < need && hard > soft {
            let _ = std::process::Command::new("prlimit")
                .arg(format!("--pid={}", std::process::id()))
                .arg(format!("--nofile={hard}:{hard}"))
                .status();
        }
    }
    match fd_limits() {
        Some((soft, _)) if soft < need => {
            let fit = (soft.saturating_sub(SLACK) / 4) as usize;
            eprintln!(
                "crowd: RLIMIT_NOFILE {soft} allows {fit} clients of each kind, not {wanted}"
            );
            fit
        }
        _ => wanted,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_clients_dropped_mid_stream_leave_nothing_behind() {
    let per_kind = clients_per_kind(if heavy() { 5_000 } else { 1_000 });
    let seed = seed("crowd", 0xc70d);
    // Every tick goes to every client: keep the total (ticks × clients) within what a debug
    // build on two cores fans out while thousands of clients connect.
    let up = FakeUpstream::start_ticking(TickOptions {
        interval: Duration::from_millis(if heavy() { 100 } else { 20 }),
        ..TickOptions::default()
    })
    .await;
    let (d, mut by) = with_bystander(
        &(format!("[limits]\nmax_subscribers = {}\n", 4 * per_kind + 16)
            + &endpoint("feed", &up.url("/feed"), "")),
    )
    .await;
    let _conn = up.next_accepted_within(T).await.expect("connects");
    d.wait_state("feed", State::Connected, T).await;
    let baseline = d.registry.subscribers();
    let fds_before = open_fds();

    // Every client subscribes and reads a little, waits until all are in, then leaves. Connects
    // are paced: past the listen backlog (1024) a burst of Unix connects fails with EAGAIN.
    let all_in = Arc::new(Barrier::new(2 * per_kind + 1));
    let connecting = Arc::new(Semaphore::new(256));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..per_kind {
        let (path, all_in) = (d.stream_path.clone(), Arc::clone(&all_in));
        let connecting = Arc::clone(&connecting);
        let mut rng = fastrand::Rng::with_seed(seed ^ i as u64);
        tasks.spawn(async move {
            let permit = connecting.acquire().await.expect("semaphore");
            let s = UnixStream::connect(&path).await.expect("ndjson connect");
            let (rd, mut wr) = s.into_split();
            let from = if i % 2 == 0 { ",\"from_seq\":0" } else { "" };
            let req = format!("{{\"op\":\"subscribe\",\"endpoint\":\"feed\"{from}}}\n");
            wr.write_all(req.as_bytes()).await.expect("subscribe");
            let mut lines = BufReader::new(rd).lines();
            for _ in 0..rng.usize(1..5) {
                let line = lines.next_line().await.expect("read").expect("open");
                assert!(line.starts_with('{'), "{line}");
            }
            drop(permit);
            all_in.wait().await;
            match i % 3 {
                // Half a request, then gone.
                0 => {
                    let _ = wr.write_all(b"{\"op\":\"subscr").await;
                }
                // Half-closed first, then gone.
                1 => {
                    let _ = wr.shutdown().await;
                }
                _ => {}
            }
        });
    }
    let target = Target::Unix(d.grpc_path.clone());
    for i in 0..per_kind {
        let (target, all_in) = (target.clone(), Arc::clone(&all_in));
        let connecting = Arc::clone(&connecting);
        let mut rng = fastrand::Rng::with_seed(seed ^ ((i as u64) << 32));
        tasks.spawn(async move {
            let permit = connecting.acquire().await.expect("semaphore");
            let mut c = client::connect(&target).await.expect("grpc connect");
            let from = (i % 2 == 0).then_some(0);
            let mut s = subscribe(&mut c, "feed", from).await;
            for _ in 0..rng.usize(1..5) {
                s.message().await.expect("stream ok").expect("stream open");
            }
            drop(permit);
            all_in.wait().await;
            // Half drop the stream and keep the connection a moment; the rest drop both.
            if i % 2 == 0 {
                drop(s);
                let _ = c
                    .get_status(proto::GetStatusRequest { endpoint: None })
                    .await;
            }
        });
    }
    // Thousands of HTTP/2 handshakes in a debug build on two shared cores take their time.
    let budget = Duration::from_secs(if heavy() { 600 } else { 120 });
    within(budget, "every client is in", async {
        // The barrier releases once every client task and this one arrive.
        let subscribed = async {
            until(budget, "all subscribed", || {
                d.registry.subscribers() == baseline + 2 * per_kind
            })
            .await
        };
        tokio::join!(subscribed, all_in.wait());
    })
    .await;
    eprintln!(
        "crowd: {} clients in at once, {} descriptors open",
        2 * per_kind,
        open_fds()
    );
    within(budget, "every client leaves", async {
        while let Some(done) = tasks.join_next().await {
            done.expect("client task");
        }
    })
    .await;

    until(
        Duration::from_secs(30),
        "the subscriber count returns",
        || d.registry.subscribers() == baseline,
    )
    .await;
    assert_eq!(d.endpoint("feed").log.subscribers(), 0);
    until(
        Duration::from_secs(30),
        "the descriptors are closed",
        || open_fds() <= fds_before + 8,
    )
    .await;

    // The next clients are served as usual.
    let mut c = d.grpc().await;
    let mut s = subscribe(&mut c, "feed", None).await;
    let a = next_message(&mut s, T).await.seq;
    let b = next_message(&mut s, T).await.seq;
    assert_eq!(b, a + 1);
    let mut nd = d.ndjson().await;
    nd.send(json!({"op": "subscribe", "endpoint": "feed"}))
        .await;
    let m = nd.recv_type("message", T).await;
    assert!(m["seq"].as_u64().is_some_and(|seq| seq > a), "{m}");
    by.check(&d).await;
    d.stop().await;
}
