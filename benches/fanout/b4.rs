//! B4, the peer: websocat (a child process) bridging the built-in upstream to a Unix socket that
//! bench readers read (BENCHMARKING.md, "B4 peer"). Runs only when `websocat` is on PATH.
//!
//! - N = 1: `websocat -b -U -n unix-l:SOCK ws://UPSTREAM` — for each Unix client websocat opens
//!   one upstream connection and copies only upstream → client (`-U`). Flow-controlled end to
//!   end, so nothing is dropped. `-n`: without it websocat sends a Close frame upstream as soon
//!   as the inhibited client → upstream direction ends, and the upstream closes the connection
//!   before the run starts. (The listener-on-the-right form, `-u ws://UPSTREAM unix-l:SOCK`,
//!   serves a single connection only.)
//! - N > 1 (full mode only): `websocat -b -U -n unix-l:SOCK broadcast:ws://UPSTREAM` — one
//!   upstream connection whose messages are copied to every connected client, the analogue of
//!   the daemon's fan-out. A client whose sink is not ready loses the message (websocat logs
//!   "A client's sink is NotReady for start_send"); at the flat-out rate of the other fan-out
//!   scenarios, websocat 1.14.1 was seen to deliver almost nothing.
//!
//! In `-b` mode websocat writes each message's bytes to the socket with no framing, so the
//! readers re-split the byte stream by the bench's fixed record size ([`record`]). Holes in the
//! seqs are counted as loss; they are websocat's behaviour, reported but not a failure of the
//! bench (they fail it for the daemon only).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;

use crate::measure::{cpu_ns, cpu_since, now_ns};
use crate::runs::{Ctx, Run};
use crate::subs::Tally;
use crate::upstream::{parse, record, Job, Upstream};

/// A reader that has received nothing for this long takes the rest as dropped by websocat (the
/// upstream sends flat out, so on a working bridge the gaps between reads are far shorter).
const IDLE: Duration = Duration::from_secs(2);

pub struct Websocat {
    pub exe: PathBuf,
    /// `websocat --version`, e.g. "websocat 1.14.1".
    pub version: String,
}

/// The `websocat` executable on PATH, if any.
pub fn find() -> Option<Websocat> {
    let path = std::env::var_os("PATH")?;
    let exe = std::env::split_paths(&path)
        .map(|d| d.join("websocat"))
        .find(|p| p.is_file())?;
    let version = Command::new(&exe)
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "websocat (version unknown)".into());
    Some(Websocat { exe, version })
}

/// The command line of a run with `n` readers, upstream URL `url`, socket `sock`.
pub fn args(n: usize, url: &str, sock: &Path) -> Vec<String> {
    let upstream = if n == 1 {
        url.to_owned()
    } else {
        format!("broadcast:{url}")
    };
    vec![
        "-b".into(),
        "-U".into(),
        "-n".into(),
        format!("unix-l:{}", sock.display()),
        upstream,
    ]
}

/// Kills websocat however the run ends (it would otherwise outlive the bench, listening).
struct Bridge(Child);

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// CPU ns used so far by process `pid`'s live threads (websocat's threads live for the whole
/// run, so none is missed by not counting exited ones).
fn process_cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| {
            std::fs::read_to_string(t.path().join("schedstat"))
                .ok()?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// One B4 run: `n` readers on websocat's Unix socket, `count` messages of `payload` bytes.
pub fn run(ctx: &Ctx, exe: &Path, n: usize, payload: usize, count: u64) -> Result<Run, String> {
    let up = Upstream::start(&ctx.up_rt).map_err(|e| format!("upstream: {e}"))?;
    let dir = tempfile::Builder::new()
        .prefix("b4-")
        .tempdir_in(&ctx.base)
        .map_err(|e| format!("temp dir: {e}"))?;
    let sock = dir.path().join("b4.sock");
    let log_path = dir.path().join("websocat.log");
    let log = std::fs::File::create(&log_path).map_err(|e| format!("websocat log: {e}"))?;
    let mut bridge = Bridge(
        Command::new(exe)
            .args(args(n, &up.url(), &sock))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("spawning {}: {e}", exe.display()))?,
    );
    let said = || std::fs::read_to_string(&log_path).unwrap_or_default();
    // The socket file appears at bind, before websocat listens: retry until it accepts.
    let until = Instant::now() + Duration::from_secs(5);
    let mut streams = Vec::new();
    while streams.is_empty() {
        match ctx.subs_rt.block_on(tokio::net::UnixStream::connect(&sock)) {
            Ok(s) => streams.push(s),
            Err(e) => {
                if let Ok(Some(st)) = bridge.0.try_wait() {
                    return Err(format!("websocat exited ({st}): {}", said().trim()));
                }
                if Instant::now() > until {
                    return Err(format!(
                        "connect {}: {e}: {}",
                        sock.display(),
                        said().trim()
                    ));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
    // websocat connects upstream only once a client is there. Wait for that connection (and a
    // moment for its handshake) before the other readers connect: in websocat 1.14.1, clients
    // that arrive while `broadcast:` is still connecting each start their own upstream
    // connection, and the process then panics ("invalid key" in broadcast_reuse_peer). It also
    // keeps the handshake out of the timed run, which starts at `go`.
    let until = Instant::now() + Duration::from_secs(5);
    while up.last_accept_ns.load(std::sync::atomic::Ordering::Relaxed) == 0 {
        if Instant::now() > until {
            return Err(format!(
                "websocat did not connect upstream: {}",
                said().trim()
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(100));
    while streams.len() < n {
        let s = ctx
            .subs_rt
            .block_on(tokio::net::UnixStream::connect(&sock))
            .map_err(|e| format!("connect {}: {e}: {}", sock.display(), said().trim()))?;
        streams.push(s);
    }
    if n > 1 {
        // `broadcast:` registers each client as it accepts it: let the last ones settle so they
        // do not miss the first messages.
        std::thread::sleep(Duration::from_millis(100));
    }

    let rec_len = record(0, 0, payload).len();
    let tasks: Vec<_> = streams
        .into_iter()
        .map(|s| ctx.subs_rt.spawn(read(s, rec_len, count, ctx.within)))
        .collect();
    ctx.rss.take_peak();
    let pid = bridge.0.id();
    let ws_cpu0 = process_cpu_ns(pid);
    let cpu0 = cpu_ns();
    let t0 = now_ns();
    up.go(Job {
        from: 0,
        count,
        payload,
        rate: None,
        text: false,
    });
    let tallies: Vec<Tally> = ctx.subs_rt.block_on(async {
        let mut v = Vec::new();
        for h in tasks {
            v.push(h.await.unwrap_or_default());
        }
        v
    });
    let ws_cpu = process_cpu_ns(pid).saturating_sub(ws_cpu0);
    let cpu = cpu_since(cpu0);
    let peak = ctx.rss.take_peak();
    // Timed to the last record received, not to the 2 s of silence that ended a lossy run.
    let mut run = Run::from_tallies(tallies, t0, cpu, peak);
    run.extra.push((
        "websocat_cpu_ns_per_msg",
        if run.deliveries == 0 {
            f64::NAN
        } else {
            ws_cpu as f64 / run.deliveries as f64
        },
    ));
    run.extra.push(("subscribers", n as f64));
    if !run.errors.is_empty() {
        run.errors
            .push(format!("websocat said: {:?}", said().trim()));
    }
    drop(bridge);
    Ok(run)
}

/// Reads fixed-size records until the last seq arrived, the stream went quiet for [`IDLE`], or
/// `within` passed; whatever did not arrive counts as lost.
async fn read(s: tokio::net::UnixStream, rec_len: usize, count: u64, within: Duration) -> Tally {
    let mut t = Tally::new(0, count);
    let mut r = tokio::io::BufReader::with_capacity(256 * 1024, s);
    let mut rec = vec![0u8; rec_len];
    let err = tokio::time::timeout(within, async {
        while !t.done() {
            match tokio::time::timeout(IDLE, r.read_exact(&mut rec)).await {
                Err(_) => return None,
                Ok(Err(e)) => return Some(format!("read: {e}")),
                Ok(Ok(_)) => match parse(&rec, false) {
                    Some((seq, ts)) if seq < count => t.on(seq, ts),
                    // A record boundary lost (a partial message written): everything after
                    // would be misread, so stop here.
                    _ => return Some("byte stream out of step with the record size".into()),
                },
            }
        }
        None
    })
    .await
    .unwrap_or_else(|_| Some("timed out".into()));
    t.finish(err)
}
