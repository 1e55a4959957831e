//! One accepted connection of the fake upstream: [`UpConn`] handles for the test and the task
//! that drives the socket, answering pings (or not) while the test is busy elsewhere.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;
use bytes::{Bytes, BytesMut};
use http::{Request, Uri};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_util::sync::CancellationToken;

use super::header_str;
use crate::support::frame::{
    close_payload, frame_bytes, parse_client_frame, ClientFrame, OP_BINARY, OP_CLOSE,
    OP_CONTINUATION, OP_PING, OP_PONG, OP_TEXT,
};
use crate::support::{wait_count, DEFAULT_WAIT};

/// How long the fake upstream waits for the client's answer to its own close frame before it
/// drops the TCP anyway, as a real server would.
const CLOSE_REPLY_WAIT: Duration = Duration::from_secs(5);

/// The close frame a client sent. A close frame without a payload is reported as code 1005,
/// the code RFC 6455 reserves for "no status received".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientClose {
    pub code: u16,
    pub reason: String,
}

/// How a connection ended, published once by its task.
#[derive(Clone, Debug, Default)]
struct ConnEnd {
    client_close: Option<ClientClose>,
    protocol_error: Option<String>,
}

/// State a connection's task shares with every [`UpConn`] handle.
struct ConnState {
    answer_pings: AtomicBool,
    /// Pings received from the client, answered or not.
    pings: watch::Sender<usize>,
    pongs: watch::Sender<usize>,
    /// `Some` once the socket is gone.
    end: watch::Sender<Option<ConnEnd>>,
}

enum Cmd {
    Write(Vec<u8>, oneshot::Sender<io::Result<()>>),
    Close(u16, String, oneshot::Sender<io::Result<()>>),
    Reset(oneshot::Sender<io::Result<()>>),
}

/// An accepted WebSocket connection. Clones are handles to the same connection. The connection
/// lives until the client closes it, the test closes or resets it, or the server is dropped;
/// dropping every handle does not close it, so a policy can accept and forget.
#[derive(Clone)]
pub struct UpConn {
    inner: Arc<ConnHandle>,
}

struct ConnHandle {
    request: Request<()>,
    protocol: Option<String>,
    cmds: mpsc::UnboundedSender<Cmd>,
    /// Text, binary and close messages from the client, in order.
    inbound: tokio::sync::Mutex<mpsc::UnboundedReceiver<Message>>,
    state: Arc<ConnState>,
}

impl UpConn {
    pub(super) fn spawn(
        stream: TcpStream,
        leftover: BytesMut,
        request: Request<()>,
        protocol: Option<String>,
        cancel: CancellationToken,
    ) -> UpConn {
        let state = Arc::new(ConnState {
            answer_pings: AtomicBool::new(true),
            pings: watch::Sender::new(0),
            pongs: watch::Sender::new(0),
            end: watch::Sender::new(None),
        });
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let (inbound_tx, inbound_rx) = mpsc::unbounded_channel();
        let task = ConnTask {
            state: Arc::clone(&state),
            inbound: inbound_tx,
            fragments: None,
            close_sent: false,
            end: ConnEnd::default(),
        };
        tokio::spawn(task.run(stream, leftover, cmd_rx, cancel));
        UpConn {
            inner: Arc::new(ConnHandle {
                request,
                protocol,
                cmds: cmd_tx,
                inbound: tokio::sync::Mutex::new(inbound_rx),
                state,
            }),
        }
    }

    pub fn request(&self) -> &Request<()> {
        &self.inner.request
    }

    pub fn uri(&self) -> &Uri {
        self.inner.request.uri()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        header_str(self.inner.request.headers(), name)
    }

    /// The subprotocol the server chose, if any.
    pub fn protocol(&self) -> Option<&str> {
        self.inner.protocol.as_deref()
    }

    /// Hands a command to the connection task and waits until it has been carried out, so a
    /// test knows its bytes are on the wire before it cuts or inspects anything.
    async fn command(
        &self,
        make: impl FnOnce(oneshot::Sender<io::Result<()>>) -> Cmd,
    ) -> io::Result<()> {
        let gone = || {
            io::Error::new(
                io::ErrorKind::NotConnected,
                "fake upstream connection ended",
            )
        };
        let (done_tx, done_rx) = oneshot::channel();
        self.inner.cmds.send(make(done_tx)).map_err(|_| gone())?;
        done_rx.await.map_err(|_| gone())?
    }

    /// Returns once the frame is written to the socket.
    pub async fn send_text(&self, text: &str) -> io::Result<()> {
        let frame = frame_bytes(OP_TEXT, true, text.as_bytes());
        self.command(|done| Cmd::Write(frame, done)).await
    }

    pub async fn send_binary(&self, data: impl AsRef<[u8]>) -> io::Result<()> {
        let frame = frame_bytes(OP_BINARY, true, data.as_ref());
        self.command(|done| Cmd::Write(frame, done)).await
    }

    pub async fn send_ping(&self, payload: &[u8]) -> io::Result<()> {
        let frame = frame_bytes(OP_PING, true, payload);
        self.command(|done| Cmd::Write(frame, done)).await
    }

    /// Writes `bytes` to the TCP socket as they are, outside any framing; see
    /// [`super::frame::frame_header`] and [`super::frame::frame_bytes`] to build broken frames.
    pub async fn send_raw_bytes(&self, bytes: impl AsRef<[u8]>) -> io::Result<()> {
        let bytes = bytes.as_ref().to_vec();
        self.command(|done| Cmd::Write(bytes, done)).await
    }

    /// Sends a close frame; the connection ends when the client answers (or after 5 s without
    /// an answer). Await [`UpConn::closed`] to see the client's answer.
    pub async fn close(&self, code: u16, reason: &str) -> io::Result<()> {
        let reason = reason.to_owned();
        self.command(|done| Cmd::Close(code, reason, done)).await
    }

    /// Resets the TCP connection (RST, no close frame); returns once the socket is gone.
    pub async fn reset(&self) -> io::Result<()> {
        self.command(Cmd::Reset).await
    }

    /// `false`: pings are counted but never answered, as on a half-dead upstream.
    pub fn set_answer_pings(&self, answer: bool) {
        self.inner
            .state
            .answer_pings
            .store(answer, Ordering::SeqCst);
    }

    pub fn pings_seen(&self) -> usize {
        *self.inner.state.pings.borrow()
    }

    pub fn pongs_seen(&self) -> usize {
        *self.inner.state.pongs.borrow()
    }

    /// Waits until the client has sent at least `n` pings in total.
    pub async fn wait_pings(&self, n: usize, within: Duration) -> anyhow::Result<()> {
        wait_count(&self.inner.state.pings, n, within)
            .await
            .map_err(|seen| {
                anyhow!("fake upstream: {seen} ping(s) seen, {n} expected within {within:?}")
            })
    }

    /// The next text, binary or close message from the client; `None` once the connection has
    /// ended and every message was taken.
    pub async fn recv(&self) -> Option<Message> {
        self.inner.inbound.lock().await.recv().await
    }

    /// [`UpConn::recv`] bounded by `within`; `Err` means nothing arrived in time.
    pub async fn recv_timeout(
        &self,
        within: Duration,
    ) -> Result<Option<Message>, tokio::time::error::Elapsed> {
        tokio::time::timeout(within, self.recv()).await
    }

    /// The next message, which must be text and arrive within [`DEFAULT_WAIT`]; panics otherwise.
    pub async fn recv_text(&self) -> String {
        match self.recv_timeout(DEFAULT_WAIT).await {
            Ok(Some(Message::Text(text))) => text.as_str().to_owned(),
            Ok(other) => panic!("fake upstream: expected a text message, got {other:?}"),
            Err(_) => panic!("fake upstream: no message from the client within {DEFAULT_WAIT:?}"),
        }
    }

    /// Waits until the connection has ended; the client's close frame, if it sent one.
    pub async fn closed(&self) -> Option<ClientClose> {
        let mut end = self.inner.state.end.subscribe();
        let ended = end.wait_for(Option::is_some).await;
        ended
            .ok()
            .and_then(|end| end.as_ref().and_then(|end| end.client_close.clone()))
    }

    pub fn is_closed(&self) -> bool {
        self.inner.state.end.borrow().is_some()
    }

    /// Set when the client broke the protocol (unmasked frame, invalid UTF-8 in text, ...);
    /// the fixture then closed the connection with 1002 or 1007.
    pub fn protocol_error(&self) -> Option<String> {
        self.inner
            .state
            .end
            .borrow()
            .as_ref()
            .and_then(|end| end.protocol_error.clone())
    }
}

/// What the connection loop does after handling one event.
enum Flow {
    Continue,
    /// Drop the socket; send the optional acknowledgement once it is gone.
    Finish(Option<oneshot::Sender<io::Result<()>>>),
}

/// The task behind an [`UpConn`]. It owns the socket; the handles talk to it through `Cmd`s.
struct ConnTask {
    state: Arc<ConnState>,
    inbound: mpsc::UnboundedSender<Message>,
    /// Opcode and payload so far of a fragmented message.
    fragments: Option<(u8, BytesMut)>,
    close_sent: bool,
    end: ConnEnd,
}

impl ConnTask {
    async fn run(
        mut self,
        mut stream: TcpStream,
        mut rbuf: BytesMut,
        mut cmds: mpsc::UnboundedReceiver<Cmd>,
        cancel: CancellationToken,
    ) {
        let mut close_deadline: Option<tokio::time::Instant> = None;
        let mut handles_alive = true;
        let ack = 'conn: loop {
            // The handshake read may already hold the first frames.
            loop {
                match parse_client_frame(&mut rbuf) {
                    Ok(None) => break,
                    Ok(Some(frame)) => {
                        if let Flow::Finish(ack) = self.on_frame(&mut stream, frame).await {
                            break 'conn ack;
                        }
                    }
                    Err(why) => {
                        self.protocol_error(&mut stream, 1002, why).await;
                        break 'conn None;
                    }
                }
            }
            if self.close_sent && close_deadline.is_none() {
                close_deadline = Some(tokio::time::Instant::now() + CLOSE_REPLY_WAIT);
            }
            tokio::select! {
                _ = cancel.cancelled() => break None,
                _ = sleep_until_some(close_deadline) => break None,
                cmd = cmds.recv(), if handles_alive => match cmd {
                    None => handles_alive = false,
                    Some(cmd) => {
                        if let Flow::Finish(ack) = self.on_cmd(&mut stream, cmd).await {
                            break ack;
                        }
                    }
                },
                read = stream.read_buf(&mut rbuf) => match read {
                    Ok(0) | Err(_) => break None,
                    Ok(_) => {}
                },
            }
        };
        drop(stream);
        if let Some(ack) = ack {
            let _ = ack.send(Ok(()));
        }
        self.state.end.send_replace(Some(self.end));
    }

    async fn on_cmd(&mut self, stream: &mut TcpStream, cmd: Cmd) -> Flow {
        match cmd {
            Cmd::Write(bytes, done) => {
                let written = stream.write_all(&bytes).await;
                let failed = written.is_err();
                let _ = done.send(written);
                if failed {
                    Flow::Finish(None)
                } else {
                    Flow::Continue
                }
            }
            Cmd::Close(code, reason, done) => {
                let frame = frame_bytes(OP_CLOSE, true, &close_payload(code, &reason));
                let written = stream.write_all(&frame).await;
                let failed = written.is_err();
                self.close_sent = true;
                let _ = done.send(written);
                if failed {
                    Flow::Finish(None)
                } else {
                    Flow::Continue
                }
            }
            Cmd::Reset(done) => match stream.set_zero_linger() {
                Ok(()) => Flow::Finish(Some(done)),
                Err(error) => {
                    let _ = done.send(Err(error));
                    Flow::Continue
                }
            },
        }
    }

    async fn on_frame(&mut self, stream: &mut TcpStream, frame: ClientFrame) -> Flow {
        match frame.opcode {
            OP_PING => {
                self.state.pings.send_modify(|n| *n += 1);
                if self.state.answer_pings.load(Ordering::SeqCst) && !self.close_sent {
                    let pong = frame_bytes(OP_PONG, true, &frame.payload);
                    if stream.write_all(&pong).await.is_err() {
                        return Flow::Finish(None);
                    }
                }
                Flow::Continue
            }
            OP_PONG => {
                self.state.pongs.send_modify(|n| *n += 1);
                Flow::Continue
            }
            OP_CLOSE => self.on_close(stream, &frame.payload).await,
            OP_TEXT | OP_BINARY => {
                if self.fragments.is_some() {
                    let why = "new data frame inside a fragmented message".to_owned();
                    self.protocol_error(stream, 1002, why).await;
                    return Flow::Finish(None);
                }
                if frame.fin {
                    return self.deliver(stream, frame.opcode, frame.payload).await;
                }
                self.fragments = Some((frame.opcode, BytesMut::from(&frame.payload[..])));
                Flow::Continue
            }
            OP_CONTINUATION => {
                let Some((opcode, mut payload)) = self.fragments.take() else {
                    let why = "continuation frame without a message to continue".to_owned();
                    self.protocol_error(stream, 1002, why).await;
                    return Flow::Finish(None);
                };
                payload.extend_from_slice(&frame.payload);
                if frame.fin {
                    return self.deliver(stream, opcode, payload.freeze()).await;
                }
                self.fragments = Some((opcode, payload));
                Flow::Continue
            }
            other => {
                // parse_client_frame refuses reserved opcodes, so this is a fixture bug.
                let why = format!("unexpected opcode {other:#x}");
                self.protocol_error(stream, 1002, why).await;
                Flow::Finish(None)
            }
        }
    }

    async fn deliver(&mut self, stream: &mut TcpStream, opcode: u8, payload: Bytes) -> Flow {
        let message = if opcode == OP_TEXT {
            match Utf8Bytes::try_from(payload) {
                Ok(text) => Message::Text(text),
                Err(error) => {
                    let why = format!("text message is not UTF-8: {error}");
                    self.protocol_error(stream, 1007, why).await;
                    return Flow::Finish(None);
                }
            }
        } else {
            Message::Binary(payload)
        };
        let _ = self.inbound.send(message);
        Flow::Continue
    }

    async fn on_close(&mut self, stream: &mut TcpStream, payload: &[u8]) -> Flow {
        let frame = match payload {
            [] => None,
            [_] => {
                let why = "close frame with a 1-byte payload".to_owned();
                self.protocol_error(stream, 1002, why).await;
                return Flow::Finish(None);
            }
            [hi, lo, reason @ ..] => match std::str::from_utf8(reason) {
                Ok(reason) => Some(ClientClose {
                    code: u16::from_be_bytes([*hi, *lo]),
                    reason: reason.to_owned(),
                }),
                Err(_) => {
                    let why = "close reason is not UTF-8".to_owned();
                    self.protocol_error(stream, 1007, why).await;
                    return Flow::Finish(None);
                }
            },
        };
        let _ = self
            .inbound
            .send(Message::Close(frame.as_ref().map(|close| CloseFrame {
                code: CloseCode::from(close.code),
                reason: Utf8Bytes::from(close.reason.as_str()),
            })));
        if !self.close_sent {
            // Echo the code, as RFC 6455 §5.5.1 asks; an empty close is answered with an empty one.
            let echo = frame
                .as_ref()
                .map_or_else(Vec::new, |close| close.code.to_be_bytes().to_vec());
            let _ = stream.write_all(&frame_bytes(OP_CLOSE, true, &echo)).await;
            self.close_sent = true;
        }
        self.end.client_close = Some(frame.unwrap_or(ClientClose {
            code: 1005,
            reason: String::new(),
        }));
        // The server closes the TCP first (RFC 6455 §7.1.1), so the client is not left in TIME_WAIT.
        let _ = stream.shutdown().await;
        Flow::Finish(None)
    }

    async fn protocol_error(&mut self, stream: &mut TcpStream, code: u16, why: String) {
        eprintln!("fake upstream: client broke the protocol: {why}");
        if !self.close_sent {
            let frame = frame_bytes(
                OP_CLOSE,
                true,
                &close_payload(code, "fixture: protocol error"),
            );
            let _ = stream.write_all(&frame).await;
            self.close_sent = true;
        }
        self.end.protocol_error = Some(why);
    }
}

async fn sleep_until_some(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
