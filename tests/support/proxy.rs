//! A chaos TCP proxy on 127.0.0.1, port 0, put between the daemon and a fake upstream to play
//! the network failures a real peer cannot: a path that silently eats packets, a peer that stops
//! reading, a middlebox that resets everything.
//!
//! Each direction is a hand-written copy loop that consults its connection's [`Mode`] before
//! every read and before every write (`copy_bidirectional` cannot be paused or told to discard),
//! so a mode switch takes effect on live connections at once.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::anyhow;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::wait_count;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Forward bytes both ways.
    Pass,
    /// Keep both sockets open and read from both, but forward nothing, FIN included: a dead path
    /// with no FIN or RST, which only heartbeats can detect. The discarded bytes are gone for
    /// good, so a stream that went through a blackhole is corrupt if traffic passes again;
    /// use `Stall` for an outage the connection is meant to survive.
    Blackhole,
    /// Stop reading both ways: bytes wait in kernel buffers, windows close and writers block.
    /// Switching back to `Pass` delivers everything that was held, in order.
    Stall,
}

/// Asks a live connection to reset itself, and hears back once it has.
type CutRequest = oneshot::Sender<oneshot::Sender<()>>;

/// The proxy's hold on one live connection.
struct LiveConn {
    cut: CutRequest,
    /// The connection's own mode, so a change can target live connections only.
    mode: watch::Sender<Mode>,
}

/// State shared by the accept loop, every connection task and the test's handle.
struct ProxyShared {
    /// The mode new connections start in. Changed together with `live`, under its lock, so a
    /// connection being registered cannot miss a change.
    mode: watch::Sender<Mode>,
    /// When set, new connections are accepted and reset at once.
    refuse: AtomicBool,
    /// TCP connections accepted, refused ones included.
    connections: AtomicUsize,
    /// Live proxied connections, by id; `cut_all` takes them out to cut them.
    live: Mutex<HashMap<u64, LiveConn>>,
    next_id: AtomicU64,
    /// Mirrors `connections` so a test can await a count instead of polling.
    connection_count: watch::Sender<usize>,
    /// Cancelled when the test drops the [`ChaosProxy`]; connections then close with FIN.
    cancel: CancellationToken,
}

/// Handle to a running proxy. Dropping it stops the listener and closes every connection.
pub struct ChaosProxy {
    addr: SocketAddr,
    target: SocketAddr,
    shared: Arc<ProxyShared>,
}

impl Drop for ChaosProxy {
    fn drop(&mut self) {
        self.shared.cancel.cancel();
    }
}

impl ChaosProxy {
    /// A proxy in [`Mode::Pass`] forwarding every connection to `target`.
    pub async fn start(target: SocketAddr) -> ChaosProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("chaos proxy: bind 127.0.0.1:0");
        let addr = listener
            .local_addr()
            .expect("chaos proxy: local address of a bound listener");
        let shared = Arc::new(ProxyShared {
            mode: watch::Sender::new(Mode::Pass),
            refuse: AtomicBool::new(false),
            connections: AtomicUsize::new(0),
            live: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            connection_count: watch::Sender::new(0),
            cancel: CancellationToken::new(),
        });
        tokio::spawn(accept_loop(listener, target, Arc::clone(&shared)));
        ChaosProxy {
            addr,
            target,
            shared,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// `ws://PROXY_ADDR` followed by `path` (a leading `/` is added if missing).
    pub fn url(&self, path: &str) -> String {
        let slash = if path.starts_with('/') { "" } else { "/" };
        format!("ws://{}{slash}{path}", self.addr)
    }

    /// TCP connections accepted so far, refused ones included.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Connections currently being proxied.
    pub fn live_connections(&self) -> usize {
        lock(&self.shared.live).len()
    }

    /// Waits until at least `n` connections have been accepted in total.
    pub async fn wait_connections(&self, n: usize, within: Duration) -> anyhow::Result<()> {
        wait_count(&self.shared.connection_count, n, within)
            .await
            .map_err(|seen| {
                anyhow!("chaos proxy: {seen} connection(s), {n} expected within {within:?}")
            })
    }

    pub fn mode(&self) -> Mode {
        *self.shared.mode.borrow()
    }

    /// Applies at once to live connections and to later ones.
    pub fn set_mode(&self, mode: Mode) {
        let live = lock(&self.shared.live);
        self.shared.mode.send_replace(mode);
        for conn in live.values() {
            conn.mode.send_replace(mode);
        }
    }

    /// Applies to the connections live now only; later ones start in [`ChaosProxy::mode`].
    /// This is how a test kills a connection silently yet lets the client's reconnection
    /// through: under a global blackhole the new handshake would vanish too.
    pub fn set_mode_existing(&self, mode: Mode) {
        for conn in lock(&self.shared.live).values() {
            conn.mode.send_replace(mode);
        }
    }

    /// Resets (RST) both sides of every live connection; returns once they are all closed.
    /// Connections accepted afterwards are not affected.
    pub async fn cut_all(&self) {
        let cuts: Vec<CutRequest> = lock(&self.shared.live)
            .drain()
            .map(|(_, conn)| conn.cut)
            .collect();
        let mut acks = Vec::with_capacity(cuts.len());
        for cut in cuts {
            let (ack_tx, ack_rx) = oneshot::channel();
            // A connection ending on its own at this moment has nothing left to cut.
            if cut.send(ack_tx).is_ok() {
                acks.push(ack_rx);
            }
        }
        for ack in acks {
            let _ = ack.await;
        }
    }

    /// `true`: accept new connections and reset them at once, like a crashed upstream host.
    /// Live connections are not affected.
    pub fn refuse(&self, refuse: bool) {
        self.shared.refuse.store(refuse, Ordering::SeqCst);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panicking test thread must not turn every later fixture call into a second panic.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn accept_loop(listener: TcpListener, target: SocketAddr, shared: Arc<ProxyShared>) {
    loop {
        let accepted = tokio::select! {
            _ = shared.cancel.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let client = match accepted {
            Ok((client, _peer)) => client,
            Err(error) => {
                // Out of file descriptors and the like: back off instead of spinning.
                eprintln!("chaos proxy: accept failed: {error}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let count = shared.connections.fetch_add(1, Ordering::SeqCst) + 1;
        shared.connection_count.send_replace(count);
        if shared.refuse.load(Ordering::SeqCst) {
            reset(client);
            continue;
        }
        let id = shared.next_id.fetch_add(1, Ordering::SeqCst);
        let (cut_tx, cut_rx) = oneshot::channel();
        let mode = {
            let mut live = lock(&shared.live);
            let mode = watch::Sender::new(*shared.mode.borrow());
            live.insert(
                id,
                LiveConn {
                    cut: cut_tx,
                    mode: mode.clone(),
                },
            );
            mode
        };
        tokio::spawn(proxy_conn(
            id,
            client,
            target,
            Arc::clone(&shared),
            mode,
            cut_rx,
        ));
    }
}

/// Zero linger makes the close send RST instead of FIN.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
}

/// How a proxied connection ended.
enum End {
    /// Both directions finished with FIN, or the proxy was dropped: close normally.
    Closed,
    /// One side failed (typically an RST): pass the reset on to the other side.
    Failed,
    /// `cut_all`: reset both sides, then acknowledge.
    Cut(Option<oneshot::Sender<()>>),
}

async fn proxy_conn(
    id: u64,
    mut client: TcpStream,
    target: SocketAddr,
    shared: Arc<ProxyShared>,
    mode: watch::Sender<Mode>,
    mut cut: oneshot::Receiver<oneshot::Sender<()>>,
) {
    let connected = tokio::select! {
        _ = shared.cancel.cancelled() => None,
        ack = &mut cut => {
            reset(client);
            if let Ok(ack) = ack {
                let _ = ack.send(());
            }
            return;
        }
        upstream = TcpStream::connect(target) => upstream.ok(),
    };
    let Some(mut upstream) = connected else {
        // The target is down: the client sees what it would see without the proxy, a reset.
        lock(&shared.live).remove(&id);
        reset(client);
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let end = {
        let (client_read, client_write) = client.split();
        let (upstream_read, upstream_write) = upstream.split();
        let to_upstream = pump(client_read, upstream_write, mode.subscribe());
        let to_client = pump(upstream_read, client_write, mode.subscribe());
        tokio::pin!(to_upstream, to_client);
        let (mut to_upstream_done, mut to_client_done) = (false, false);
        loop {
            tokio::select! {
                _ = shared.cancel.cancelled() => break End::Closed,
                ack = &mut cut => break End::Cut(ack.ok()),
                done = &mut to_upstream, if !to_upstream_done => {
                    if done.is_err() {
                        break End::Failed;
                    }
                    to_upstream_done = true;
                }
                done = &mut to_client, if !to_client_done => {
                    if done.is_err() {
                        break End::Failed;
                    }
                    to_client_done = true;
                }
            }
            if to_upstream_done && to_client_done {
                break End::Closed;
            }
        }
    };
    if !matches!(end, End::Cut(_)) {
        lock(&shared.live).remove(&id);
    }
    match end {
        End::Closed => {}
        End::Failed => {
            reset(client);
            reset(upstream);
        }
        End::Cut(ack) => {
            reset(client);
            reset(upstream);
            if let Some(ack) = ack {
                let _ = ack.send(());
            }
        }
    }
}

/// Copies `from` to `to` under the connection's mode until `from` ends. `Err` means a socket failed.
async fn pump(
    mut from: ReadHalf<'_>,
    mut to: WriteHalf<'_>,
    mut mode: watch::Receiver<Mode>,
) -> io::Result<()> {
    // The connection task keeps the mode sender for as long as it polls the pumps.
    let stopped = |_| io::Error::other("chaos proxy connection mode dropped");
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        // In Stall, leave the bytes in the kernel so the sender's window closes.
        mode.wait_for(|mode| *mode != Mode::Stall)
            .await
            .map_err(stopped)?;
        let read = tokio::select! {
            read = from.read(&mut buf) => read?,
            // A switch to Stall must stop reading even while a read is pending.
            changed = mode.changed() => {
                changed.map_err(stopped)?;
                continue;
            }
        };
        if read == 0 {
            // A FIN is a packet like any other: a blackhole or a stall holds it back too.
            mode.wait_for(|mode| *mode == Mode::Pass)
                .await
                .map_err(stopped)?;
            to.shutdown().await?;
            return Ok(());
        }
        // Bytes read just before a stall are held until it lifts, then follow the new mode.
        let now = *mode
            .wait_for(|mode| *mode != Mode::Stall)
            .await
            .map_err(stopped)?;
        if now == Mode::Pass {
            to.write_all(&buf[..read]).await?;
        }
    }
}
