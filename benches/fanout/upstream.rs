//! The built-in upstream: a tokio-tungstenite server on 127.0.0.1:0. Every connection waits for
//! a [`Job`], then sends its messages (seq + send timestamp + filler), flat out or open-loop at
//! a rate, feeding frames and flushing once every 64.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::measure::now_ns;

/// Frames fed before one flush.
pub const FLUSH_EVERY: u64 = 64;

/// What every connection sends once the job is posted: seqs `from..from + count`.
#[derive(Debug, Clone)]
pub struct Job {
    pub from: u64,
    pub count: u64,
    pub payload: usize,
    /// Messages per second, open-loop; `None` is flat out.
    pub rate: Option<f64>,
    pub text: bool,
}

/// Message `seq`: binary `[seq u64 LE][send ns u64 LE][filler]`, or text `{seq:016x}{ns:016x}`
/// then filler.
pub fn message(seq: u64, payload: usize, text: bool) -> Message {
    let ts = now_ns();
    if text {
        let mut s = format!("{seq:016x}{ts:016x}");
        s.extend(std::iter::repeat_n('x', payload.saturating_sub(32)));
        Message::text(s)
    } else {
        Message::binary(Bytes::from(record(seq, ts, payload)))
    }
}

/// The binary record (also what B3 writes).
pub fn record(seq: u64, ts: u64, payload: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(payload.max(16));
    v.extend_from_slice(&seq.to_le_bytes());
    v.extend_from_slice(&ts.to_le_bytes());
    v.resize(payload.max(16), b'x');
    v
}

/// (seq, send ns) of a message's data.
pub fn parse(data: &[u8], text: bool) -> Option<(u64, u64)> {
    if text {
        let s = std::str::from_utf8(data.get(..32)?).ok()?;
        Some((
            u64::from_str_radix(&s[..16], 16).ok()?,
            u64::from_str_radix(&s[16..], 16).ok()?,
        ))
    } else {
        let seq = u64::from_le_bytes(data.get(..8)?.try_into().ok()?);
        let ts = u64::from_le_bytes(data.get(8..16)?.try_into().ok()?);
        Some((seq, ts))
    }
}

pub struct Upstream {
    pub addr: SocketAddr,
    jobs: watch::Sender<Option<Arc<Job>>>,
    /// Cancelling it drops every connection abruptly and closes the listener.
    kill: Mutex<CancellationToken>,
    /// now_ns() of the last accepted connection.
    pub last_accept_ns: Arc<AtomicU64>,
    handle: tokio::runtime::Handle,
}

impl Upstream {
    /// Binds 127.0.0.1:0 and serves on `rt` (the upstream's own runtime).
    pub fn start(rt: &tokio::runtime::Runtime) -> std::io::Result<Upstream> {
        let listener = rt.block_on(TcpListener::bind(("127.0.0.1", 0)))?;
        let (jobs, _) = watch::channel(None);
        let up = Upstream {
            addr: listener.local_addr()?,
            jobs,
            kill: Mutex::new(CancellationToken::new()),
            last_accept_ns: Arc::new(AtomicU64::new(0)),
            handle: rt.handle().clone(),
        };
        up.serve(listener);
        Ok(up)
    }

    fn serve(&self, listener: TcpListener) {
        let kill = self.kill.lock().unwrap().clone();
        let jobs = self.jobs.clone();
        let accepted = Arc::clone(&self.last_accept_ns);
        self.handle.spawn(async move {
            loop {
                let sock = tokio::select! {
                    _ = kill.cancelled() => return,
                    r = listener.accept() => match r { Ok((s, _)) => s, Err(_) => continue },
                };
                accepted.store(now_ns(), Ordering::Relaxed);
                let _ = sock.set_nodelay(true);
                tokio::spawn(conn(sock, jobs.subscribe(), kill.clone()));
            }
        });
    }

    pub fn url(&self) -> String {
        format!("ws://{}/feed", self.addr)
    }

    /// Posts a job: every open connection (and every later one) sends it.
    pub fn go(&self, job: Job) {
        self.jobs.send_replace(Some(Arc::new(job)));
    }

    /// Drops every connection without a close frame and stops listening.
    pub fn kill(&self) {
        let mut k = self.kill.lock().unwrap();
        k.cancel();
        *k = CancellationToken::new();
    }

    /// Listens again on the same port.
    pub fn restart(&self) -> std::io::Result<()> {
        let addr = self.addr;
        let listener = self.handle.block_on(TcpListener::bind(addr))?;
        self.serve(listener);
        Ok(())
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.kill.lock().unwrap().cancel();
    }
}

async fn conn(
    sock: TcpStream,
    mut jobs: watch::Receiver<Option<Arc<Job>>>,
    kill: CancellationToken,
) {
    let Ok(mut ws) = tokio_tungstenite::accept_async(sock).await else {
        return;
    };
    loop {
        let job = jobs.borrow_and_update().clone();
        if let Some(job) = job {
            tokio::select! {
                _ = kill.cancelled() => return,
                r = send(&mut ws, &job) => if r.is_err() { return },
            }
        }
        // Idle: answer pings, wait for the next job.
        loop {
            tokio::select! {
                _ = kill.cancelled() => return,
                r = jobs.changed() => { if r.is_err() { return } break; }
                m = ws.next() => match m { Some(Ok(_)) => {} _ => return },
            }
        }
    }
}

async fn send<S>(ws: &mut S, job: &Job) -> Result<(), tokio_tungstenite::tungstenite::Error>
where
    S: futures_util::Sink<Message, Error = tokio_tungstenite::tungstenite::Error> + Unpin,
{
    let start = Instant::now();
    let mut i = 0u64;
    while i < job.count {
        let due = match job.rate {
            None => job.count,
            Some(r) => ((start.elapsed().as_secs_f64() * r) as u64 + 1).min(job.count),
        };
        while i < due {
            ws.feed(message(job.from + i, job.payload, job.text))
                .await?;
            i += 1;
            if i.is_multiple_of(FLUSH_EVERY) {
                ws.flush().await?;
            }
        }
        ws.flush().await?;
        if i < job.count {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    Ok(())
}
