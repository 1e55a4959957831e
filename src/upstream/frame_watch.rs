//! What the daemon learns from the raw inbound bytes beneath tungstenite (SPEC §5, §15).
//!
//! [`WireWatch`] sits under tungstenite on the plaintext byte stream and follows the frame
//! headers (payloads are skipped, not parsed) for two things tungstenite does not say:
//!
//! - A fragmented message that stopped. An upstream that sends the first fragments of a message
//!   and then only answers pings looks alive to the heartbeat, and tungstenite waits for the
//!   final fragment forever, every later message stuck behind it. Once a message has been
//!   incomplete with no new data for `limit` (the endpoint's `ping_interval + pong_timeout`,
//!   the bound SPEC §7 sets for finding any dead connection), reads fail with a clear error.
//!   Fragments that keep coming are progress; their total is bounded by `max_message_size`.
//! - The close frame as the upstream sent it. tungstenite replaces a close code it does not
//!   know (1014 "bad gateway", say, which SPEC §5 retries) with 1002 "Protocol violation",
//!   which would fail the endpoint for good; [`CloseSlot`] keeps the original for classifying.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// What a frame's payload is to the scanner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Payload {
    /// Text, binary or continuation: its bytes are progress.
    Data,
    /// A close frame: its bytes are kept (control frames carry at most 125).
    Close,
    /// Ping, pong, or an opcode tungstenite refuses anyway.
    Other,
}

/// What the scanner is in the middle of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scan {
    /// The HTTP response to the upgrade; `matched` bytes of its closing `\r\n\r\n` seen.
    Head { matched: u8 },
    /// A frame header; `have` of its bytes are in `Scanner::header`.
    Header { have: usize },
    /// A payload with `left` bytes to go.
    Payload { left: u64, kind: Payload },
}

/// Longest close payload kept: a control frame's limit.
const MAX_CLOSE: usize = 125;

/// Follows frame boundaries in the bytes read from an upstream.
#[derive(Debug, Clone)]
struct Scanner {
    scan: Scan,
    header: [u8; 14],
    /// A data frame without FIN was seen and its final continuation has not been.
    in_message: bool,
    /// The payload of the close frame being read.
    close: Vec<u8>,
    /// A close frame just read: code and reason as sent.
    closed: Option<(u16, String)>,
}

impl Scanner {
    fn new() -> Self {
        Scanner {
            scan: Scan::Head { matched: 0 },
            header: [0; 14],
            in_message: false,
            close: Vec::new(),
            closed: None,
        }
    }

    /// Consumes `bytes`; true when they carried part of a data frame (progress).
    fn feed(&mut self, mut bytes: &[u8]) -> bool {
        let mut progress = false;
        while !bytes.is_empty() {
            match self.scan {
                Scan::Head { matched } => {
                    let (b, rest) = (bytes[0], &bytes[1..]);
                    bytes = rest;
                    let next = if b == b"\r\n\r\n"[usize::from(matched)] {
                        matched + 1
                    } else {
                        u8::from(b == b'\r')
                    };
                    self.scan = if next == 4 {
                        Scan::Header { have: 0 }
                    } else {
                        Scan::Head { matched: next }
                    };
                }
                Scan::Header { have } => {
                    self.header[have] = bytes[0];
                    bytes = &bytes[1..];
                    self.scan = Scan::Header { have: have + 1 };
                    if let Some(scan) = self.header_done(have + 1) {
                        progress |= self.payload() == Payload::Data;
                        self.scan = scan;
                    }
                }
                Scan::Payload { left, kind } => {
                    let take = bytes.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    let (taken, rest) = bytes.split_at(take);
                    bytes = rest;
                    progress |= kind == Payload::Data && take > 0;
                    if kind == Payload::Close {
                        let room = MAX_CLOSE.saturating_sub(self.close.len());
                        self.close.extend_from_slice(&taken[..take.min(room)]);
                    }
                    let left = left - take as u64;
                    self.scan = if left == 0 {
                        self.frame_done(kind);
                        Scan::Header { have: 0 }
                    } else {
                        Scan::Payload { left, kind }
                    };
                }
            }
        }
        progress
    }

    fn payload(&self) -> Payload {
        match self.header[0] & 0x0F {
            0x0..=0x2 => Payload::Data,
            0x8 => Payload::Close,
            _ => Payload::Other,
        }
    }

    /// A frame's last byte was read.
    fn frame_done(&mut self, kind: Payload) {
        if kind == Payload::Close {
            if let [hi, lo, reason @ ..] = self.close.as_slice() {
                let reason = String::from_utf8_lossy(reason).into_owned();
                self.closed = Some((u16::from_be_bytes([*hi, *lo]), reason));
            }
        }
        self.close.clear();
    }

    /// With `have` header bytes, the state after the header if it is complete.
    fn header_done(&mut self, have: usize) -> Option<Scan> {
        if have < 2 {
            return None;
        }
        let (b0, b1) = (self.header[0], self.header[1]);
        let ext = match b1 & 0x7F {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if b1 & 0x80 != 0 { 4 } else { 0 };
        if have < 2 + ext + mask {
            return None;
        }
        let len = match ext {
            0 => u64::from(b1 & 0x7F),
            2 => u64::from(u16::from_be_bytes([self.header[2], self.header[3]])),
            _ => {
                let mut be = [0u8; 8];
                be.copy_from_slice(&self.header[2..10]);
                u64::from_be_bytes(be)
            }
        };
        let fin = b0 & 0x80 != 0;
        let kind = self.payload();
        if kind == Payload::Data {
            // Text or binary opens a message, a continuation extends it; FIN ends it.
            self.in_message = !fin;
        }
        Some(if len == 0 {
            self.frame_done(kind);
            Scan::Header { have: 0 }
        } else {
            Scan::Payload { left: len, kind }
        })
    }
}

/// The upstream's close frame as sent, shared between a [`WireWatch`] and the connection loop.
#[derive(Debug, Clone, Default)]
pub struct CloseSlot(Arc<Mutex<Option<(u16, String)>>>);

impl CloseSlot {
    /// Code and reason of the close frame the upstream sent, once one was read.
    pub fn get(&self) -> Option<(u16, String)> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Keeps the first: tungstenite ignores anything after a close, and so does this.
    fn set(&self, close: (u16, String)) {
        let _ = self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert(close);
    }
}

/// A byte stream whose reads fail once a fragmented message has made no progress for `limit`,
/// and which records the upstream's close frame.
pub struct WireWatch<S> {
    inner: S,
    limit: Duration,
    scanner: Scanner,
    /// Armed while a message is incomplete; pushed back on every data byte.
    deadline: Option<Pin<Box<Sleep>>>,
    close: CloseSlot,
}

impl<S> WireWatch<S> {
    /// Watches `inner`, whose first bytes are the HTTP response to the upgrade request.
    pub fn new(inner: S, limit: Duration) -> Self {
        WireWatch {
            inner,
            limit,
            scanner: Scanner::new(),
            deadline: None,
            close: CloseSlot::default(),
        }
    }

    /// Where the upstream's close frame appears once it was read.
    pub fn close_slot(&self) -> CloseSlot {
        self.close.clone()
    }

    fn stalled(&self) -> io::Error {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "fragmented message incomplete: no fragment for {}",
                crate::fmt::duration(self.limit)
            ),
        )
    }

    fn after_read(&mut self, bytes: &[u8]) {
        let progress = self.scanner.feed(bytes);
        if let Some(close) = self.scanner.closed.take() {
            self.close.set(close);
        }
        if !self.scanner.in_message {
            self.deadline = None;
        } else if progress || self.deadline.is_none() {
            let at = Instant::now() + self.limit;
            match self.deadline.as_mut() {
                Some(sleep) => sleep.as_mut().reset(at),
                None => self.deadline = Some(Box::pin(tokio::time::sleep_until(at))),
            }
        }
    }

    /// True when the deadline has passed; otherwise the task is woken when it does.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.deadline
            .as_mut()
            .is_some_and(|sleep| sleep.as_mut().poll(cx).is_ready())
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WireWatch<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = read {
            this.after_read(&buf.filled()[before..]);
        }
        // Also checked after reads that made no progress, so a flood of control frames cannot
        // keep it from firing; bytes of the message itself have just pushed it back.
        if matches!(read, Poll::Ready(Ok(())) | Poll::Pending) && this.expired(cx) {
            return Poll::Ready(Err(this.stalled()));
        }
        read
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WireWatch<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n";

    fn frame(b0: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![b0];
        match payload.len() {
            n if n < 126 => out.push(n as u8),
            n if n <= 0xFFFF => {
                out.push(126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(payload);
        out
    }

    /// Feeds `bytes` split at every position and in one piece; all must agree.
    fn in_message_after(bytes: &[u8]) -> bool {
        let mut whole = Scanner::new();
        whole.feed(bytes);
        for cut in 0..bytes.len() {
            let mut split = Scanner::new();
            split.feed(&bytes[..cut]);
            split.feed(&bytes[cut..]);
            assert_eq!(split.in_message, whole.in_message, "split at {cut}");
            assert_eq!(split.scan, whole.scan, "split at {cut}");
        }
        whole.in_message
    }

    #[test]
    fn follows_fragmented_messages_across_any_split() {
        let text_start = frame(0x01, b"part 1");
        let ping = frame(0x89, b"ping");
        let cont = frame(0x00, &[b'x'; 300]);
        let last = frame(0x80, &[b'y'; 70_000]);
        let whole = frame(0x82, b"whole");
        assert!(!in_message_after(&[HEAD, &whole].concat()));
        assert!(in_message_after(&[HEAD, &text_start].concat()));
        assert!(in_message_after(
            &[HEAD, &text_start, &ping, &cont].concat()
        ));
        assert!(!in_message_after(
            &[HEAD, &text_start, &ping, &cont, &last].concat()
        ));
        // The response head may hold "\r\n\r" before its real end.
        let tricky = b"HTTP/1.1 101 OK\r\nX: a\r\n\rb\r\n\r\n";
        assert!(in_message_after(&[&tricky[..], &text_start].concat()));
    }

    #[test]
    fn only_data_counts_as_progress() {
        let mut s = Scanner::new();
        assert!(!s.feed(HEAD));
        assert!(s.feed(&frame(0x01, b"part")));
        assert!(!s.feed(&frame(0x89, b"ping")));
        assert!(!s.feed(&frame(0x8A, b"pong")));
        let cont = frame(0x00, b"more");
        assert!(!s.feed(&cont[..1]), "half a header says nothing yet");
        assert!(s.feed(&cont[1..2]), "a continuation header is progress");
        assert!(s.feed(&cont[2..]), "and so is its payload");
        assert!(s.in_message);
    }

    #[test]
    fn keeps_the_close_frame_as_sent() {
        let close = frame(0x88, &[&1014u16.to_be_bytes()[..], b"bad gateway"].concat());
        let mut s = Scanner::new();
        s.feed(&[HEAD, &frame(0x89, b"ping")].concat());
        assert_eq!(s.closed, None);
        for byte in &close {
            s.feed(std::slice::from_ref(byte));
        }
        assert_eq!(s.closed, Some((1014, "bad gateway".to_owned())));
        let mut empty = Scanner::new();
        empty.feed(&[HEAD, &frame(0x88, b"")].concat());
        assert_eq!(empty.closed, None, "no code: tungstenite's 1005 stands");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_message_fails_the_read_and_progress_defers_it() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut upstream, ours) = tokio::io::duplex(1 << 16);
        let limit = Duration::from_secs(30);
        let mut watched = WireWatch::new(ours, limit);
        let mut buf = vec![0u8; 1 << 16];
        upstream.write_all(HEAD).await.expect("write");
        upstream
            .write_all(&frame(0x01, b"part"))
            .await
            .expect("write");
        let started = Instant::now();
        let _ = watched.read(&mut buf).await.expect("head and fragment");
        tokio::time::sleep(Duration::from_secs(20)).await;
        upstream
            .write_all(&frame(0x89, b"ping"))
            .await
            .expect("write");
        let _ = watched.read(&mut buf).await.expect("a ping is read");
        upstream
            .write_all(&frame(0x00, b"more"))
            .await
            .expect("write");
        let _ = watched
            .read(&mut buf)
            .await
            .expect("a fragment is progress");
        let err = watched.read(&mut buf).await.expect_err("stalls");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(err.to_string().contains("no fragment for 30s"), "{err}");
        // 20 s to the last fragment, then the full limit (plus the timer's millisecond).
        let took = started.elapsed();
        assert!(
            took >= Duration::from_secs(50) && took < Duration::from_millis(50_010),
            "{took:?}"
        );

        let (mut upstream, ours) = tokio::io::duplex(1 << 16);
        let mut watched = WireWatch::new(ours, limit);
        upstream.write_all(HEAD).await.expect("write");
        upstream
            .write_all(&frame(0x81, b"whole"))
            .await
            .expect("write");
        let _ = watched.read(&mut buf).await.expect("read");
        let idle = tokio::time::timeout(Duration::from_secs(3600), watched.read(&mut buf)).await;
        assert!(
            idle.is_err(),
            "a quiet connection between messages is not stalled"
        );
    }
}
