//! `ws-sidecar demo`: a simulated upstream feed that drops its connection every few seconds and
//! can resend from `?since=N`, the real daemon against it, and a gRPC subscriber printing what
//! it receives, checking that seqs and upstream ids stay contiguous across every drop.
//!
//! [`SimUpstream`] is also usable by tests and benches.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::config::{self, ListenAddr};
use crate::output::Stdout;
use crate::proto;

/// The config `demo` runs with; URL and socket paths are replaced at start.
pub const DEMO_CONFIG: &str = include_str!("../config/demo.toml");

/// A simulated feed: ids advance at a fixed rate whether or not anyone is connected, like a
/// real market feed, and a client may resume with `?since=N`.
pub struct SimUpstream {
    pub addr: SocketAddr,
    /// Last id produced so far.
    pub produced: watch::Receiver<u64>,
}

/// How the simulated upstream behaves.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// Messages produced per second.
    pub rate: u32,
    /// Each connection is dropped after a random time in this range; `None` never drops.
    pub drop_after: Option<(Duration, Duration)>,
}

impl SimUpstream {
    /// Binds 127.0.0.1:0 and serves until `stop`.
    pub async fn start(opts: SimOptions, stop: CancellationToken) -> std::io::Result<SimUpstream> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = watch::channel(0u64);
        let tick = Duration::from_secs_f64(1.0 / f64::from(opts.rate.max(1)));
        let producer_stop = stop.clone();
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(tick);
            loop {
                tokio::select! {
                    _ = producer_stop.cancelled() => return,
                    _ = interval.tick() => { tx.send_modify(|n| *n += 1); }
                }
            }
        });
        let produced = rx.clone();
        tokio::spawn(async move {
            loop {
                let (sock, _) = tokio::select! {
                    _ = stop.cancelled() => return,
                    r = listener.accept() => match r { Ok(a) => a, Err(_) => continue },
                };
                tokio::spawn(serve_conn(sock, rx.clone(), opts.clone(), stop.clone()));
            }
        });
        Ok(SimUpstream { addr, produced })
    }

    /// `ws://` URL of the feed.
    pub fn url(&self) -> String {
        format!("ws://{}/feed", self.addr)
    }
}

/// The feed's message for id `n`: deterministic, so a resend is identical.
pub fn sim_message(n: u64) -> String {
    let price = 100.0 + ((n as f64) * 0.37).sin() * 5.0;
    format!(r#"{{"id":{n},"type":"tick","price":{price:.2}}}"#)
}

// tungstenite's handshake callback type fixes the large error variant.
#[allow(clippy::result_large_err)]
async fn serve_conn(
    sock: TcpStream,
    mut produced: watch::Receiver<u64>,
    opts: SimOptions,
    stop: CancellationToken,
) {
    let mut since = None;
    let callback = |req: &Request, resp: Response| {
        since = req.uri().query().and_then(|q| {
            q.split('&')
                .find_map(|kv| kv.strip_prefix("since="))
                .and_then(|v| v.parse::<u64>().ok())
        });
        Ok(resp)
    };
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(sock, callback).await else {
        return;
    };
    // Without `since` a client starts live, as on a real feed.
    let mut next = since.map_or_else(|| *produced.borrow() + 1, |s| s + 1);
    let drop_at = opts.drop_after.map(|(lo, hi)| {
        let span = hi.saturating_sub(lo).as_millis() as u64;
        tokio::time::Instant::now() + lo + Duration::from_millis(fastrand::u64(0..=span))
    });
    let dropped = async {
        match drop_at {
            Some(t) => tokio::time::sleep_until(t).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(dropped);
    loop {
        let upto = *produced.borrow_and_update();
        while next <= upto {
            if ws.feed(Message::text(sim_message(next))).await.is_err() {
                return;
            }
            next += 1;
        }
        if ws.flush().await.is_err() {
            return;
        }
        tokio::select! {
            _ = stop.cancelled() => { let _ = ws.close(None).await; return; }
            _ = &mut dropped => {
                // An abrupt drop, as a load balancer restart would do: no close frame.
                return;
            }
            r = produced.changed() => if r.is_err() { return },
            m = ws.next() => match m {
                Some(Ok(_)) => {}
                _ => return,
            },
        }
    }
}

/// Runs the demo until `stop` or until `out` can no longer be written (nobody reads it).
pub async fn run(stop: CancellationToken, out: &mut Stdout) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("ws-sidecar-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let result = run_in(&dir, stop, out).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn run_in(
    dir: &std::path::Path,
    stop: CancellationToken,
    out: &mut Stdout,
) -> anyhow::Result<()> {
    let sim = SimUpstream::start(
        SimOptions {
            rate: 10,
            drop_after: Some((Duration::from_secs(2), Duration::from_secs(4))),
        },
        stop.clone(),
    )
    .await?;

    let env = std::collections::HashMap::new();
    let mut cfg = config::load_str(DEMO_CONFIG, std::path::Path::new("config/demo.toml"), &env)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let grpc_path = dir.join("grpc.sock");
    cfg.grpc.listen = vec![ListenAddr::Unix(grpc_path.clone())];
    cfg.stream.path = Some(dir.join("stream.sock"));
    cfg.store.path = dir.join("store");
    for ep in cfg.endpoints.values_mut() {
        ep.url = crate::config::UrlSource::Fixed(url::Url::parse(&sim.url())?);
    }

    let store = crate::store::Store::open(&cfg.store.path)?;
    let listeners = crate::listen::bind(&cfg).await?;
    out.line(format_args!(
        "ws-sidecar demo: simulated feed at {} (drops every 2-4 s), daemon sockets in {}",
        sim.url(),
        dir.display()
    ));
    out.line(format_args!(
        "  NDJSON: socat - UNIX-CONNECT:{}",
        dir.join("stream.sock").display()
    ));
    if let Some(addr) = listeners.http_addr() {
        out.line(format_args!("  status page: http://{addr}/"));
    }
    // The demo exists to be watched: with nobody reading, it ends.
    if !out.line("  Ctrl-C to stop\n") {
        stop.cancel();
        return Ok(());
    }
    let daemon = crate::supervisor::Daemon::start(cfg, listeners, Some(store), None, stop.clone())?;
    let daemon_task = tokio::spawn(daemon.run_until_stopped());

    let target = crate::client::Target::Unix(grpc_path);
    let mut client = crate::client::connect(&target).await?;
    let mut events = client
        .subscribe(proto::SubscribeRequest {
            endpoint: "ticks".into(),
            from_seq: Some(0),
            filters: vec![],
        })
        .await?
        .into_inner();

    let mut check = Continuity::default();
    loop {
        let ev = tokio::select! {
            _ = stop.cancelled() => break,
            ev = events.message() => ev,
        };
        match ev {
            Ok(Some(ev)) => {
                if !check.show(&ev, out) {
                    break;
                }
            }
            Ok(None) | Err(_) => break,
        }
    }
    stop.cancel();
    let _ = daemon_task.await;
    check.summary(out);
    Ok(())
}

/// Tracks and prints seq/id continuity for the demo subscriber.
#[derive(Default)]
struct Continuity {
    last_seq: Option<u64>,
    last_id: Option<u64>,
    messages: u64,
    reconnects: u64,
    seq_breaks: u64,
    id_breaks: u64,
    resumed_at: Option<u64>,
}

impl Continuity {
    /// Prints `ev`; false once `out` can no longer be written.
    fn show(&mut self, ev: &proto::Event, out: &mut Stdout) -> bool {
        let now = chrono_like_now();
        match &ev.event {
            Some(proto::event::Event::State(s)) => {
                let state = proto::State::try_from(s.state)
                    .map_or("?".into(), |st| st.as_str_name().to_ascii_lowercase());
                if state == "connected" && self.messages > 0 {
                    self.reconnects += 1;
                    self.resumed_at = self.last_id;
                }
                out.line(format_args!("{now}  ── state {state:<10} {}", s.reason));
            }
            // The demo holds no keys.
            Some(proto::event::Event::Key(_)) => {}
            Some(proto::event::Event::Message(m)) => {
                let id = serde_json::from_slice::<serde_json::Value>(&m.data)
                    .ok()
                    .and_then(|v| v.get("id").and_then(serde_json::Value::as_u64));
                let seq_ok = self.last_seq.is_none_or(|l| m.seq == l + 1);
                let id_ok = match (self.last_id, id) {
                    (Some(l), Some(i)) => i == l + 1,
                    _ => true,
                };
                self.seq_breaks += u64::from(!seq_ok);
                self.id_breaks += u64::from(!id_ok);
                if let (Some(r), Some(i)) = (self.resumed_at.take(), id) {
                    out.line(format_args!(
                        "{now}  ── resumed: upstream resent from id {} (last seen {r}), seq continues at {}",
                        i, m.seq
                    ));
                }
                let text = String::from_utf8_lossy(&m.data);
                let mark = if seq_ok && id_ok { "" } else { "  <-- BREAK" };
                let shown_id = id.map_or_else(|| "-".to_owned(), |i| i.to_string());
                out.line(format_args!(
                    "{now}  seq {:>5}  upstream id {shown_id:>5}  {text}{mark}",
                    m.seq
                ));
                self.last_seq = Some(m.seq);
                if id.is_some() {
                    self.last_id = id;
                }
                self.messages += 1;
            }
            Some(proto::event::Event::Gap(g)) => {
                out.line(format_args!(
                    "{now}  ── gap {}..={} reason {}",
                    g.from_seq, g.to_seq, g.reason
                ));
                self.seq_breaks += 1;
            }
            None => {}
        }
        out.is_open()
    }

    fn summary(&self, out: &mut Stdout) {
        let ok = self.seq_breaks == 0 && self.id_breaks == 0;
        out.line(format_args!(
            "\nsummary: {} messages, {} reconnects, seqs and upstream ids contiguous: {}",
            self.messages,
            self.reconnects,
            if ok { "yes" } else { "NO" }
        ));
    }
}

/// `HH:MM:SS.mmm` in UTC, enough for reading the demo output.
fn chrono_like_now() -> String {
    let nanos = crate::endpoint::unix_nanos();
    let ms = (nanos / 1_000_000) % 86_400_000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        ms / 3_600_000,
        (ms / 60_000) % 60,
        (ms / 1000) % 60,
        ms % 1000
    )
}
