//! A chaos TCP proxy on 127.0.0.1, port 0, put between the daemon and a fake upstream to play
//! the network failures a real peer cannot: a path that silently eats packets, a peer that stops
//! reading, a middlebox that resets everything, a link that delivers a byte at a time or slowly.
//!
//! Each direction (a [`Lane`]) is a hand-written copy loop that consults its connection's
//! [`Link`] before every read and before every write (`copy_bidirectional` cannot be paused,
//! sliced or told to discard), so a change takes effect on live connections at once.

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
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::wait_count;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// Forward bytes.
    #[default]
    Pass,
    /// Keep the sockets open and read, but forward nothing, FIN included: a dead path with no
    /// FIN or RST, which only heartbeats can detect. The discarded bytes are gone for good, so a
    /// stream that went through a blackhole is corrupt if traffic passes again; use `Stall` for
    /// an outage the connection is meant to survive.
    Blackhole,
    /// Stop reading: bytes wait in kernel buffers, windows close and the writer blocks.
    /// Switching back to `Pass` delivers everything that was held, in order.
    Stall,
}

/// How bytes are forwarded in one direction, on top of the [`Mode`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Shape {
    /// Forward in writes of at most this many bytes (1: byte by byte), yielding between them so
    /// the reader sees partial frames rather than one coalesced buffer.
    pub slice: Option<usize>,
    /// Forward at most this many bytes per second.
    pub rate: Option<u64>,
    /// Reset (RST) the whole connection once exactly this many bytes went this way: an abort at
    /// a chosen point, mid-handshake or mid-frame.
    pub reset_after: Option<u64>,
}

/// One direction of a connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lane {
    pub mode: Mode,
    pub shape: Shape,
}

/// Both directions of a connection: what the daemon sends, and what the upstream sends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Link {
    /// Client (daemon) to upstream.
    pub to_upstream: Lane,
    /// Upstream to client (daemon).
    pub to_client: Lane,
}

impl Link {
    fn lane(&self, dir: Dir) -> Lane {
        match dir {
            Dir::ToUpstream => self.to_upstream,
            Dir::ToClient => self.to_client,
        }
    }

    fn set_mode(&mut self, mode: Mode) {
        self.to_upstream.mode = mode;
        self.to_client.mode = mode;
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dir {
    ToUpstream,
    ToClient,
}

/// Asks a live connection to reset itself, and hears back once it has.
type CutRequest = oneshot::Sender<oneshot::Sender<()>>;

/// Adjusts a new connection's [`Link`], given its 0-based index among accepted connections.
type Plan = dyn Fn(usize, &mut Link) + Send + Sync;

/// The proxy's hold on one live connection.
struct LiveConn {
    cut: CutRequest,
    /// The connection's own link, so a change can target live connections only.
    link: watch::Sender<Link>,
}

/// State shared by the accept loop, every connection task and the test's handle.
struct ProxyShared {
    /// The link new connections start with. Changed together with `live`, under its lock, so a
    /// connection being registered cannot miss a change.
    link: watch::Sender<Link>,
    /// Applied to each new connection's link after `link`, e.g. a seeded random abort point.
    plan: Mutex<Option<Box<Plan>>>,
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
            link: watch::Sender::new(Link::default()),
            plan: Mutex::new(None),
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

    /// The mode new connections start in (their upstream-bound lane; both lanes unless one was
    /// changed on its own).
    pub fn mode(&self) -> Mode {
        self.shared.link.borrow().to_upstream.mode
    }

    /// Both directions, at once on live connections and on later ones.
    pub fn set_mode(&self, mode: Mode) {
        self.update(|link| link.set_mode(mode));
    }

    /// Both directions of the connections live now only; later ones start in
    /// [`ChaosProxy::mode`]. This is how a test kills a connection silently yet lets the
    /// client's reconnection through: under a global blackhole the new handshake would vanish too.
    pub fn set_mode_existing(&self, mode: Mode) {
        self.update_existing(|link| link.set_mode(mode));
    }

    /// Changes the link of live connections and of later ones, e.g.
    /// `proxy.update(|l| l.to_client.shape.slice = Some(1))`.
    pub fn update(&self, change: impl Fn(&mut Link)) {
        let live = lock(&self.shared.live);
        self.shared.link.send_modify(&change);
        for conn in live.values() {
            conn.link.send_modify(&change);
        }
    }

    /// Changes the link of the connections live now only, e.g. a server that stops reading:
    /// `proxy.update_existing(|l| l.to_upstream.mode = Mode::Stall)`.
    pub fn update_existing(&self, change: impl Fn(&mut Link)) {
        for conn in lock(&self.shared.live).values() {
            conn.link.send_modify(&change);
        }
    }

    /// Runs `plan` on every connection accepted from now on, after the common link is copied:
    /// how a test gives each connection its own (e.g. seeded random) fault.
    pub fn set_plan(&self, plan: impl Fn(usize, &mut Link) + Send + Sync + 'static) {
        *lock(&self.shared.plan) = Some(Box::new(plan));
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
        let link = {
            let mut live = lock(&shared.live);
            let mut first = *shared.link.borrow();
            if let Some(plan) = lock(&shared.plan).as_ref() {
                plan(count - 1, &mut first);
            }
            let link = watch::Sender::new(first);
            live.insert(
                id,
                LiveConn {
                    cut: cut_tx,
                    link: link.clone(),
                },
            );
            link
        };
        tokio::spawn(proxy_conn(
            id,
            client,
            target,
            Arc::clone(&shared),
            link,
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
    /// One side failed (typically an RST) or a lane hit `reset_after`: reset both sides.
    Failed,
    /// `cut_all`: reset both sides, then acknowledge.
    Cut(Option<oneshot::Sender<()>>),
}

async fn proxy_conn(
    id: u64,
    mut client: TcpStream,
    target: SocketAddr,
    shared: Arc<ProxyShared>,
    link: watch::Sender<Link>,
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
        let to_upstream = pump(
            client_read,
            upstream_write,
            link.subscribe(),
            Dir::ToUpstream,
        );
        let to_client = pump(upstream_read, client_write, link.subscribe(), Dir::ToClient);
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

/// Waits until `dir` is not stalled and returns its lane as it is then.
async fn unstalled(link: &mut watch::Receiver<Link>, dir: Dir) -> io::Result<Lane> {
    // The connection task keeps the link sender for as long as it polls the pumps.
    let lane = link
        .wait_for(|link| link.lane(dir).mode != Mode::Stall)
        .await
        .map_err(|_| io::Error::other("chaos proxy connection link dropped"))?
        .lane(dir);
    Ok(lane)
}

/// Copies `from` to `to` under the `dir` lane of the connection's link until `from` ends.
/// `Err` means a socket failed or the lane's `reset_after` was reached.
async fn pump(
    mut from: ReadHalf<'_>,
    mut to: WriteHalf<'_>,
    mut link: watch::Receiver<Link>,
    dir: Dir,
) -> io::Result<()> {
    let mut buf = vec![0u8; 16 * 1024];
    let mut forwarded = 0u64;
    let mut pace = None;
    loop {
        // In Stall, leave the bytes in the kernel so the sender's window closes.
        let lane = unstalled(&mut link, dir).await?;
        if lane.shape.reset_after.is_some_and(|at| forwarded >= at) {
            return Err(io::Error::other("chaos proxy: reset_after reached"));
        }
        let read = tokio::select! {
            read = from.read(&mut buf) => read?,
            // A switch to Stall must stop reading even while a read is pending.
            changed = link.changed() => {
                changed.map_err(|_| io::Error::other("chaos proxy connection link dropped"))?;
                continue;
            }
        };
        if read == 0 {
            // A FIN is a packet like any other: a blackhole or a stall holds it back too.
            link.wait_for(|link| link.lane(dir).mode == Mode::Pass)
                .await
                .map_err(|_| io::Error::other("chaos proxy connection link dropped"))?;
            to.shutdown().await?;
            return Ok(());
        }
        // Bytes read just before a change follow the lane as it is when they are written.
        let mut rest = &buf[..read];
        while !rest.is_empty() {
            let lane = unstalled(&mut link, dir).await?;
            if lane.mode == Mode::Blackhole {
                break;
            }
            let shape = lane.shape;
            let mut n = rest.len();
            if let Some(slice) = shape.slice {
                n = n.min(slice.max(1));
            }
            if let Some(at) = shape.reset_after {
                let left = at.saturating_sub(forwarded);
                if left == 0 {
                    return Err(io::Error::other("chaos proxy: reset_after reached"));
                }
                n = n.min(usize::try_from(left).unwrap_or(usize::MAX));
            }
            if let Some(rate) = shape.rate {
                n = n.min(rate_chunk(rate));
                Pace::wait(&mut pace, rate, n).await;
            }
            to.write_all(&rest[..n]).await?;
            forwarded += n as u64;
            rest = &rest[n..];
            if shape.slice.is_some() {
                tokio::task::yield_now().await;
            }
        }
    }
}

/// Bytes per write under a `rate` limit: about 20 writes a second, so the rate also holds over
/// short spans.
fn rate_chunk(rate: u64) -> usize {
    usize::try_from(rate / 20).unwrap_or(usize::MAX).max(1)
}

/// A lane's schedule under a rate limit: byte `k` is due `k / rate` seconds after `since`.
/// Sleeping until a due time (not for each chunk's share) keeps the rate exact even when the
/// share is far below the timer's millisecond.
struct Pace {
    rate: u64,
    since: Instant,
    sent: u64,
}

impl Pace {
    /// How far behind its schedule a lane may fall before it counts as idle and starts afresh,
    /// so an idle spell earns no burst.
    const IDLE: Duration = Duration::from_millis(50);

    async fn wait(pace: &mut Option<Pace>, rate: u64, n: usize) {
        let now = Instant::now();
        let current = pace
            .as_ref()
            .is_some_and(|p| p.rate == rate && p.due() + Self::IDLE >= now);
        if !current {
            *pace = Some(Pace {
                rate,
                since: now,
                sent: 0,
            });
        }
        if let Some(p) = pace.as_mut() {
            p.sent += n as u64;
            tokio::time::sleep_until(p.due()).await;
        }
    }

    fn due(&self) -> Instant {
        self.since + Duration::from_secs_f64(self.sent as f64 / self.rate.max(1) as f64)
    }
}
