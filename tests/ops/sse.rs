//! A server-sent events client over a real HTTP/1.1 connection (hyper's client), for the
//! status page's feed: reads the stream block by block as a browser's `EventSource` would.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

/// One block of the stream: the fields up to a blank line.
#[derive(Debug, Default, Clone)]
pub struct Block {
    pub event: Option<String>,
    pub data: Option<String>,
    pub retry: Option<u64>,
}

impl Block {
    /// The `data:` as JSON.
    pub fn json(&self) -> serde_json::Value {
        let data = self.data.as_deref().expect("block has data");
        serde_json::from_str(data).unwrap_or_else(|e| panic!("data is not JSON ({e}): {data}"))
    }

    /// True for a snapshot (a default event with data).
    pub fn is_snapshot(&self) -> bool {
        self.event.is_none() && self.data.is_some()
    }
}

/// How a stream stopped.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// The body ended as HTTP says it should (the last chunk was sent).
    Clean,
    /// The connection broke off mid-body.
    Broken(String),
}

/// An open `GET` whose body is read as an event stream.
pub struct Sse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    body: Incoming,
    buf: String,
    /// Drives the connection; aborted on drop so the socket closes with the client.
    conn: tokio::task::JoinHandle<()>,
}

impl Drop for Sse {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

impl Sse {
    /// Sends `GET path` (or another method) and waits for the response head.
    pub async fn open(addr: SocketAddr, method: &str, path: &str, within: Duration) -> Sse {
        let stream = tokio::time::timeout(within, tokio::net::TcpStream::connect(addr))
            .await
            .expect("connect in time")
            .expect("connect");
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("http handshake");
        let conn = tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, "localhost")
            .header(http::header::ACCEPT, "text/event-stream")
            .body(Empty::<Bytes>::new())
            .expect("request");
        let resp = tokio::time::timeout(within, send.send_request(req))
            .await
            .expect("response head in time")
            .expect("response");
        let (parts, body) = resp.into_parts();
        Sse {
            status: parts.status,
            headers: parts.headers,
            body,
            buf: String::new(),
            conn,
        }
    }

    /// The header `name`, or "".
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The next block, or how the stream ended; panics when nothing comes within `within`.
    pub async fn next(&mut self, within: Duration) -> Result<Block, End> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(at) = self.buf.find("\n\n") {
                let raw: String = self.buf.drain(..at + 2).collect();
                return Ok(parse(&raw));
            }
            let frame = match tokio::time::timeout_at(deadline, self.body.frame()).await {
                Ok(f) => f,
                Err(_) => panic!("no event within {within:?}; have {:?} unparsed", self.buf),
            };
            match frame {
                None => return Err(End::Clean),
                Some(Err(e)) => return Err(End::Broken(e.to_string())),
                Some(Ok(f)) => {
                    if let Ok(data) = f.into_data() {
                        let text = std::str::from_utf8(&data).expect("event stream is UTF-8");
                        self.buf.push_str(text);
                    }
                }
            }
        }
    }

    /// The next block that satisfies `pred`, skipping others; panics after `within`.
    pub async fn until(&mut self, within: Duration, pred: impl Fn(&Block) -> bool) -> Block {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Ok(b) if pred(&b) => return b,
                Ok(_) => {}
                Err(end) => panic!("stream ended ({end:?}) before the awaited event"),
            }
        }
    }

    /// The whole body (for non-stream answers).
    pub async fn text(mut self, within: Duration) -> String {
        let deadline = tokio::time::Instant::now() + within;
        let mut all = Vec::new();
        loop {
            match tokio::time::timeout_at(deadline, self.body.frame()).await {
                Err(_) => panic!("body not complete within {within:?}"),
                Ok(None) => break,
                Ok(Some(f)) => {
                    if let Ok(data) = f.expect("body").into_data() {
                        all.extend_from_slice(&data);
                    }
                }
            }
        }
        String::from_utf8_lossy(&all).into_owned()
    }
}

fn parse(raw: &str) -> Block {
    let mut b = Block::default();
    for line in raw.lines() {
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => b.event = Some(value.to_owned()),
            "data" => match &mut b.data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => b.data = Some(value.to_owned()),
            },
            "retry" => b.retry = value.parse().ok(),
            _ => {}
        }
    }
    b
}
