//! A TCP proxy between the daemon and one feed that breaks connections at random: reset before
//! the handshake, a handshake that never completes, and on live connections RST, FIN, or a stall
//! (bytes vanish both ways until the daemon's heartbeat gives up).
//!
//! It also keeps the books a publish check needs: every WebSocket frame the daemon wrote is
//! parsed, and a publish whose frame the proxy threw away (stall, or read just before a cut) is
//! recorded as swallowed. SPEC §11 promises that an acknowledged publish reaches the upstream
//! *socket*, so such a loss is the network's, not the daemon's; anything else missing is not.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Share of new connections reset at once, before any handshake byte.
const RESET_AT_ACCEPT: f64 = 0.06;
/// Share of new connections held open without ever answering the handshake.
const HANG_AT_ACCEPT: f64 = 0.04;
/// How long a closing side is drained before the proxy drops it anyway.
const DRAIN: Duration = Duration::from_secs(5);
/// How long a connection about to be reset is still read (and its bytes thrown away).
const RESET_GRACE: Duration = Duration::from_millis(50);

/// What happens to a live connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Pass,
    /// Nothing gets through either way; the connection stays open.
    Stall,
    /// Reset (`true`) or FIN (`false`) the daemon's side now.
    Cut {
        reset: bool,
    },
}

/// Faults applied, for the report.
#[derive(Default)]
pub struct Faults {
    pub connections: AtomicU64,
    pub reset_at_accept: AtomicU64,
    pub hung_handshakes: AtomicU64,
    pub resets: AtomicU64,
    pub fins: AtomicU64,
    pub stalls: AtomicU64,
    /// Frames the daemon had not finished writing when its connection ended.
    pub partial_frames: AtomicU64,
}

/// A chaos proxy in front of one feed.
pub struct Chaos {
    /// Where the daemon connects.
    pub addr: SocketAddr,
    pub faults: Faults,
    /// Publish keys in complete frames the proxy read from the daemon and threw away.
    swallowed: Mutex<Vec<String>>,
    /// Publish keys in frames the proxy passed on whole.
    forwarded: Mutex<HashSet<String>>,
    /// When each reset was sent: bytes the daemon wrote in the instant before it cannot be seen
    /// by the proxy, so a publish lost that way is recognised by its timing instead.
    resets_at: Mutex<Vec<Instant>>,
    /// Mode switch of each live connection, newest last.
    live: Mutex<Vec<(u64, watch::Sender<Mode>)>>,
    /// Set TCP_NODELAY on both sides (`--confirmed`, see `main`).
    nodelay: bool,
}

impl Chaos {
    /// Proxies 127.0.0.1:0 to `upstream`; a fault every `every` (±50%) until `calm`, serving
    /// until `stop`; `nodelay`: no Nagle delay on its sockets.
    pub async fn start(
        upstream: SocketAddr,
        every: Duration,
        nodelay: bool,
        calm: CancellationToken,
        stop: CancellationToken,
    ) -> std::io::Result<Arc<Chaos>> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let chaos = Arc::new(Chaos {
            addr: listener.local_addr()?,
            faults: Faults::default(),
            swallowed: Mutex::new(Vec::new()),
            forwarded: Mutex::new(HashSet::new()),
            resets_at: Mutex::new(Vec::new()),
            live: Mutex::new(Vec::new()),
            nodelay,
        });
        let c = Arc::clone(&chaos);
        let accept_stop = stop.clone();
        let accept_calm = calm.clone();
        tokio::spawn(async move {
            let mut id = 0u64;
            loop {
                let sock = tokio::select! {
                    _ = accept_stop.cancelled() => return,
                    r = listener.accept() => match r {
                        Ok((s, _)) => s,
                        Err(_) => { tokio::time::sleep(Duration::from_millis(50)).await; continue }
                    },
                };
                id += 1;
                tokio::spawn(Arc::clone(&c).connection(
                    id,
                    sock,
                    upstream,
                    !accept_calm.is_cancelled(),
                    accept_stop.clone(),
                ));
            }
        });
        let c = Arc::clone(&chaos);
        tokio::spawn(async move {
            loop {
                let wait = every.mul_f64(0.5 + fastrand::f64());
                tokio::select! {
                    _ = calm.cancelled() => return,
                    _ = tokio::time::sleep(wait) => c.strike(),
                }
            }
        });
        Ok(chaos)
    }

    /// Publish keys thrown away by the proxy.
    pub fn swallowed(&self) -> Vec<String> {
        self.swallowed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// When each reset was sent.
    pub fn resets_at(&self) -> Vec<Instant> {
        self.resets_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Publish keys passed on whole.
    pub fn forwarded(&self) -> HashSet<String> {
        self.forwarded
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Applies one fault to the newest live connection.
    fn strike(&self) {
        let live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        let Some((_, mode)) = live.last() else { return };
        if *mode.borrow() != Mode::Pass {
            return;
        }
        let r = fastrand::f64();
        let (m, counter) = if r < 0.4 {
            (Mode::Cut { reset: true }, &self.faults.resets)
        } else if r < 0.75 {
            (Mode::Cut { reset: false }, &self.faults.fins)
        } else {
            (Mode::Stall, &self.faults.stalls)
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let _ = mode.send(m);
    }

    async fn connection(
        self: Arc<Self>,
        id: u64,
        daemon: TcpStream,
        upstream: SocketAddr,
        faulty: bool,
        stop: CancellationToken,
    ) {
        self.faults.connections.fetch_add(1, Ordering::Relaxed);
        let r = fastrand::f64();
        if faulty && r < RESET_AT_ACCEPT {
            self.faults.reset_at_accept.fetch_add(1, Ordering::Relaxed);
            let _ = daemon.set_zero_linger();
            return;
        }
        if faulty && r < RESET_AT_ACCEPT + HANG_AT_ACCEPT {
            self.faults.hung_handshakes.fetch_add(1, Ordering::Relaxed);
            let (mut rd, _wr) = daemon.into_split();
            let _ = tokio::time::timeout(DRAIN * 4, drain(&mut rd, None)).await;
            return;
        }
        let Ok(up) = TcpStream::connect(upstream).await else {
            return;
        };
        if self.nodelay {
            let _ = daemon.set_nodelay(true);
            let _ = up.set_nodelay(true);
        }
        let (tx, rx) = watch::channel(Mode::Pass);
        self.live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((id, tx));
        self.pump(daemon, up, rx, stop).await;
        self.live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|(i, _)| *i != id);
    }

    async fn pump(
        &self,
        daemon: TcpStream,
        up: TcpStream,
        mut mode: watch::Receiver<Mode>,
        stop: CancellationToken,
    ) {
        let (mut dr, mut dw) = daemon.into_split();
        let (mut ur, mut uw) = up.into_split();
        let mut frames = Frames::default();
        let mut dbuf = vec![0u8; 16 * 1024];
        let mut ubuf = vec![0u8; 16 * 1024];
        let mut stalled = false;
        let mut upstream_gone = false;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                r = mode.changed() => {
                    let m = *mode.borrow_and_update();
                    match (r, m) {
                        (Ok(()), Mode::Stall) => stalled = true,
                        (Ok(()), Mode::Cut { reset }) => {
                            self.cut(dr, dw, reset, &mut frames).await;
                            finish_upstream(&mut ur, &mut uw).await;
                            return;
                        }
                        _ => {}
                    }
                }
                r = dr.read(&mut dbuf) => match r {
                    Ok(n) if n > 0 => {
                        let forward = !stalled && !upstream_gone;
                        let forward = forward && uw.write_all(&dbuf[..n]).await.is_ok();
                        self.account(frames.feed(&dbuf[..n], forward));
                    }
                    _ => {
                        self.end_of(&mut frames);
                        finish_upstream(&mut ur, &mut uw).await;
                        return;
                    }
                },
                r = ur.read(&mut ubuf), if !upstream_gone => match r {
                    Ok(n) if n > 0 => {
                        if !stalled {
                            let _ = dw.write_all(&ubuf[..n]).await;
                        }
                    }
                    _ => {
                        // The feed hung up: pass the FIN on and keep accounting for what the
                        // daemon still writes until it closes too.
                        upstream_gone = true;
                        let _ = dw.shutdown().await;
                    }
                },
            }
        }
    }

    /// Cuts the daemon's side, first taking whatever it already wrote (thrown away, counted).
    async fn cut(
        &self,
        mut dr: OwnedReadHalf,
        mut dw: OwnedWriteHalf,
        reset: bool,
        frames: &mut Frames,
    ) {
        if reset {
            // Whatever the daemon wrote just before is read and counted first: on a loaded
            // host loopback delivery can lag the write by milliseconds.
            let _ = tokio::time::timeout(RESET_GRACE, drain(&mut dr, Some((self, frames)))).await;
            let mut buf = vec![0u8; 16 * 1024];
            while let Ok(n) = dr.try_read(&mut buf) {
                if n == 0 {
                    break;
                }
                self.account(frames.feed(&buf[..n], false));
            }
            if let Ok(s) = dr.reunite(dw) {
                let _ = s.set_zero_linger();
            }
            self.resets_at
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(Instant::now());
            self.end_of(frames);
            return;
        }
        let _ = dw.shutdown().await;
        let _ = tokio::time::timeout(DRAIN, drain(&mut dr, Some((self, frames)))).await;
        self.end_of(frames);
    }

    fn account(&self, publishes: Vec<(String, bool)>) {
        for (key, through) in publishes {
            if through {
                self.forwarded
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(key);
            } else {
                self.swallowed
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(key);
            }
        }
    }

    fn end_of(&self, frames: &mut Frames) {
        if frames.incomplete() {
            self.faults.partial_frames.fetch_add(1, Ordering::Relaxed);
        }
        frames.reset();
    }
}

/// FIN to the feed, then read until it closes, so it sees every byte already forwarded (closing
/// with unread data would reset it and could lose them).
async fn finish_upstream(ur: &mut OwnedReadHalf, uw: &mut OwnedWriteHalf) {
    let _ = uw.shutdown().await;
    let _ = tokio::time::timeout(DRAIN, drain(ur, None)).await;
}

/// Reads and discards until EOF; with `books`, frames read are accounted as swallowed.
async fn drain(rd: &mut OwnedReadHalf, mut books: Option<(&Chaos, &mut Frames)>) {
    let mut buf = vec![0u8; 16 * 1024];
    while let Ok(n) = rd.read(&mut buf).await {
        if n == 0 {
            return;
        }
        if let Some((chaos, frames)) = books.as_mut() {
            chaos.account(frames.feed(&buf[..n], false));
        }
    }
}

/// Client-to-server WebSocket frame boundaries, tracking whether each frame got through whole.
#[derive(Default)]
struct Frames {
    /// Bytes of the frame(s) not yet complete (or of the HTTP upgrade request before them).
    buf: Vec<u8>,
    /// Some byte of the frame at the head of `buf` was thrown away.
    head_dropped: bool,
    /// The upgrade request is behind us: `buf` starts at a frame boundary.
    upgraded: bool,
}

impl Frames {
    /// Takes a chunk that was forwarded (or not); returns the publish keys of the frames it
    /// completed, each with whether the frame got through whole.
    fn feed(&mut self, chunk: &[u8], forwarded: bool) -> Vec<(String, bool)> {
        if self.buf.is_empty() {
            self.head_dropped = false;
        }
        self.head_dropped |= !forwarded;
        self.buf.extend_from_slice(chunk);
        if !self.upgraded {
            let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                return Vec::new();
            };
            self.buf.drain(..end + 4);
            self.upgraded = true;
            self.head_dropped = !forwarded;
        }
        let mut done = Vec::new();
        while let Some((len, opcode, payload)) = parse_frame(&self.buf) {
            if opcode == 1 {
                if let Some(key) = publish_key(&payload) {
                    done.push((key, !self.head_dropped));
                }
            }
            self.buf.drain(..len);
            // The next frame starts inside this chunk.
            self.head_dropped = !forwarded;
        }
        done
    }

    fn incomplete(&self) -> bool {
        self.upgraded && !self.buf.is_empty()
    }

    fn reset(&mut self) {
        *self = Frames::default();
    }
}

/// One complete masked or unmasked frame at the start of `b`: (total length, opcode, payload).
fn parse_frame(b: &[u8]) -> Option<(usize, u8, Vec<u8>)> {
    let opcode = b.first()? & 0x0f;
    let second = *b.get(1)?;
    let masked = second & 0x80 != 0;
    let (len, mut at) = match second & 0x7f {
        126 => (u64::from(u16::from_be_bytes([*b.get(2)?, *b.get(3)?])), 4),
        127 => (u64::from_be_bytes(b.get(2..10)?.try_into().ok()?), 10),
        n => (u64::from(n), 2),
    };
    let key: Option<[u8; 4]> = if masked {
        let k = b.get(at..at + 4)?.try_into().ok()?;
        at += 4;
        Some(k)
    } else {
        None
    };
    let end = at.checked_add(usize::try_from(len).ok()?)?;
    let mut payload = b.get(at..end)?.to_vec();
    if let Some(k) = key {
        for (i, byte) in payload.iter_mut().enumerate() {
            *byte ^= k[i % 4];
        }
    }
    Some((end, opcode, payload))
}

fn publish_key(payload: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(payload).ok()?;
    v.get("pub")?.as_str().map(str::to_owned)
}

/// Checks the frame books on a known split before trusting them with a run: a bench target's
/// `#[test]`s never run.
pub fn self_check() -> anyhow::Result<()> {
    fn frame(text: &str, mask: [u8; 4]) -> Vec<u8> {
        let mut f = vec![0x81, 0x80 | text.len() as u8];
        f.extend_from_slice(&mask);
        f.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        f
    }
    let a = frame(r#"{"pub":"a.p.1"}"#, [1, 2, 3, 4]);
    let b = frame(r#"{"pub":"a.p.2"}"#, [9, 8, 7, 6]);
    let mut all = a.clone();
    all.extend_from_slice(&b);
    let mut f = Frames::default();
    let head = b"GET /feed HTTP/1.1\r\nHost: x\r\n\r\n";
    let early = f.feed(head, true);
    // `a` whole and the start of `b` forwarded, the rest of `b` thrown away.
    let first = f.feed(&all[..a.len() + 3], true);
    let second = f.feed(&all[a.len() + 3..], false);
    let third = f.feed(&a[..5], true);
    let clean = early.is_empty() && first == [("a.p.1".to_owned(), true)] && third.is_empty();
    if clean && second == [("a.p.2".to_owned(), false)] && f.incomplete() {
        Ok(())
    } else {
        anyhow::bail!("frame books self-check failed: {first:?} {second:?} {third:?}")
    }
}
