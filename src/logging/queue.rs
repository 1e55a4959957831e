//! The log writer: formatted lines go into a bounded queue that one thread writes to stderr.
//!
//! Writing stderr from runtime threads means a stderr that does not keep up (a journald under
//! pressure, a pipe nobody reads) blocks a tokio worker inside `write(2)` and with it every task
//! on that worker. Here a full queue drops the line instead, counts it
//! (`ws_sidecar_log_lines_dropped_total`) and the writer says how many it lost once it can
//! write again. Losing log lines is the lesser harm than stalling message delivery.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Condvar, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use tracing_subscriber::fmt::MakeWriter;

/// Lines held while stderr is slow; at a few hundred bytes a line, a few MiB at most.
const QUEUE_LINES: usize = 8192;
/// How often at most the writer reports dropped lines.
const REPORT_EVERY: Duration = Duration::from_secs(10);

static QUEUE: OnceLock<Queue> = OnceLock::new();
static DROPPED: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Whether this thread's last line made it into the queue: tells the writer thread whether
    /// its own report did (a report that is itself dropped, or filtered out, is tried again).
    static QUEUED_LAST: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

struct Queue {
    tx: SyncSender<Vec<u8>>,
    /// Lines accepted into the queue.
    queued: AtomicU64,
    /// Lines the writer thread has finished with, for [`flush`].
    written: Mutex<u64>,
    progress: Condvar,
}

/// Log lines dropped because stderr did not keep up, since the process started.
pub fn dropped_lines() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// Waits up to `timeout` for the lines queued so far to be written, e.g. before exiting.
pub fn flush(timeout: Duration) {
    let Some(q) = QUEUE.get() else { return };
    let target = q.queued.load(Ordering::Acquire);
    let written = q.written.lock().unwrap_or_else(PoisonError::into_inner);
    let _ = q
        .progress
        .wait_timeout_while(written, timeout, |w| *w < target)
        .unwrap_or_else(PoisonError::into_inner);
}

/// The `MakeWriter` handing each formatted event to the queue.
#[derive(Clone, Copy, Debug, Default)]
pub struct QueueWriter;

impl QueueWriter {
    /// Starts the writer thread (once per process). Should it fail to start, lines go to
    /// stderr directly as before.
    pub fn start() -> QueueWriter {
        if QUEUE.get().is_none() {
            let (tx, rx) = mpsc::sync_channel(QUEUE_LINES);
            let spawned = std::thread::Builder::new()
                .name("log-writer".into())
                .spawn(move || write_lines(rx, std::io::stderr()));
            if spawned.is_ok() {
                let _ = QUEUE.set(Queue {
                    tx,
                    queued: AtomicU64::new(0),
                    written: Mutex::new(0),
                    progress: Condvar::new(),
                });
            }
        }
        QueueWriter
    }
}

impl<'a> MakeWriter<'a> for QueueWriter {
    type Writer = QueueWriter;

    fn make_writer(&'a self) -> Self::Writer {
        *self
    }
}

impl Write for QueueWriter {
    /// The fmt layer hands over one whole event per call.
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let Some(q) = QUEUE.get() else {
            return std::io::stderr().write(buf);
        };
        let sent = q.tx.try_send(buf.to_vec());
        QUEUED_LAST.set(sent.is_ok());
        match sent {
            Ok(()) => {
                q.queued.fetch_add(1, Ordering::Release);
            }
            Err(TrySendError::Full(_)) => {
                DROPPED.fetch_add(1, Ordering::Relaxed);
            }
            // The writer thread is gone (it cannot be, short of a panic): write directly.
            Err(TrySendError::Disconnected(line)) => std::io::stderr().write_all(&line)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The writer thread: writes every queued line and reports drops when it can.
fn write_lines(rx: Receiver<Vec<u8>>, mut out: impl Write) {
    let mut reported = 0;
    let mut last_report: Option<Instant> = None;
    for line in rx {
        // A failed write (stderr closed) is not worth stopping for: nothing else can be done.
        let _ = out.write_all(&line);
        if let Some(q) = QUEUE.get() {
            *q.written.lock().unwrap_or_else(PoisonError::into_inner) += 1;
            q.progress.notify_all();
        }
        let dropped = DROPPED.load(Ordering::Relaxed);
        if dropped > reported && last_report.is_none_or(|t| t.elapsed() >= REPORT_EVERY) {
            // Goes through the queue like any other event, so it has the configured format and
            // its place in time; the queue may be full again, so it counts only once queued.
            QUEUED_LAST.set(false);
            tracing::warn!(
                dropped = dropped - reported,
                "log lines dropped: stderr did not keep up"
            );
            if QUEUED_LAST.get() {
                reported = dropped;
                last_report = Some(Instant::now());
            }
        }
    }
}
