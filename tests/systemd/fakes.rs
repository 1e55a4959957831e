//! What the daemon in the box talks to, and how the test talks to the daemon besides the CLI:
//! the fake upstreams (started in the box's network namespace), the daemon's config, an HTTP
//! GET on the box's loopback, and an NDJSON client run inside the box as a given user.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::netns::BoxNet;
use crate::support::jsonrpc::FakeNode;
use crate::support::{FakeUpstream, Reply};
use crate::sysbox::SysBox;
use crate::T;

/// Where ws-sidecar-http.socket (and `http.listen`'s default) listens in the box.
pub const HTTP: &str = "127.0.0.1:9750";

/// The header the `prices` endpoint gets from a `command` secret, and its value.
pub const TOKEN_HEADER: &str = "x-token";
pub const TOKEN: &str = "t0k-from-command";

/// The upstreams of one box: a feed and a JSON-RPC node, both reachable only from inside it.
pub struct Upstreams {
    /// A feed sending `{"price":N}` every 50 ms on every connection, N increasing across them.
    pub prices: FakeUpstream,
    /// A JSON-RPC 2.0 node (`echo`, `eth_blockNumber`, ...) for `ws-sidecar request`.
    pub node: FakeNode,
}

impl Upstreams {
    pub async fn start(net: &BoxNet) -> Upstreams {
        net.run(async {
            // One numbering across connections, as a feed with resumable ids has.
            let next = Arc::new(AtomicU64::new(1));
            let prices = FakeUpstream::start_with_handler(
                |_, _| Reply::Accept,
                move |conn| {
                    let next = Arc::clone(&next);
                    tokio::spawn(async move {
                        loop {
                            let i = next.fetch_add(1, Ordering::SeqCst);
                            if conn.send_text(&format!("{{\"price\":{i}}}")).await.is_err() {
                                return;
                            }
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    });
                },
            )
            .await;
            let node = FakeNode::start().await;
            Upstreams { prices, node }
        })
        .await
    }

    /// The daemon's config: `prices` (its token from a `command` secret, so every connection
    /// spawns a process; resume ids kept in the store), `node` (the jsonrpc preset), `down` (nothing listens there: it stays
    /// in backoff, a warning in the journal at every attempt), then `extra` verbatim.
    pub fn config(&self, extra: &str) -> String {
        format!(
            r#"[endpoints.prices]
url = "{prices}"
headers = {{ "X-Token" = {{ command = ["/bin/echo", "{TOKEN}"] }} }}
resume = {{ id_pointer = "/price" }}

[endpoints.node]
url = "{node}"
preset = "jsonrpc"

[endpoints.down]
url = "ws://127.0.0.1:9/"
backoff = {{ initial = "1s", max = "2s" }}
{extra}"#,
            prices = self.prices.url("/prices"),
            node = self.node.url(),
        )
    }
}

/// `GET path` on the box's loopback at [`HTTP`]: the status and everything read until the
/// server closed, or until `stop_at` appeared (for a stream that does not end).
pub async fn http_get(net: &BoxNet, path: &str, stop_at: Option<&str>) -> (u16, String) {
    let (path, stop_at) = (path.to_owned(), stop_at.map(str::to_owned));
    let what = format!("GET {path}");
    let got = net
        .run(async move {
            tokio::time::timeout(T, async {
                let mut s = tokio::net::TcpStream::connect(HTTP).await?;
                s.write_all(
                    format!("GET {path} HTTP/1.1\r\nHost: {HTTP}\r\nConnection: close\r\n\r\n")
                        .as_bytes(),
                )
                .await?;
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                loop {
                    let n = s.read(&mut chunk).await?;
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf);
                    if stop_at.as_deref().is_some_and(|w| text.contains(w)) {
                        break;
                    }
                }
                Ok::<_, std::io::Error>(String::from_utf8_lossy(&buf).into_owned())
            })
            .await
        })
        .await;
    let text = match got {
        Ok(Ok(text)) => text,
        Ok(Err(e)) => panic!("{what} on {HTTP} in the box: {e}"),
        Err(_) => panic!("{what} on {HTTP} in the box: no answer within {T:?}"),
    };
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{what}: not an HTTP answer: {text:?}"));
    (status, text)
}

/// An NDJSON client in Python (as Debian ships it), so that it runs inside the box as any
/// user: sends each argument after the first two as a line, then prints the lines it reads
/// until one has `"type"` equal to argv[2]. Exit 13 when the socket refuses this user.
const NDJSON_CLIENT: &str = r#"
import json, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(15)
try:
    s.connect(sys.argv[1])
except PermissionError as e:
    print(e, file=sys.stderr)
    sys.exit(13)
for line in sys.argv[3:]:
    s.sendall(line.encode() + b"\n")
f = s.makefile("r")
for _ in range(200):
    line = f.readline()
    if not line:
        sys.exit("the daemon closed the connection")
    sys.stdout.write(line)
    if json.loads(line).get("type") == sys.argv[2]:
        break
"#;

/// The NDJSON socket the units create.
pub const STREAM_SOCK: &str = "/run/ws-sidecar/stream.sock";

/// Sends `lines` on the NDJSON socket as `user` and returns the lines read up to the first of
/// type `until`; `Err` with the client's stderr when it could not connect or read.
pub async fn ndjson_as(
    b: &SysBox,
    user: &str,
    until: &str,
    lines: &[Value],
) -> Result<Vec<Value>, (Option<i32>, String)> {
    let lines: Vec<String> = lines.iter().map(Value::to_string).collect();
    let mut argv = vec!["/usr/bin/python3", "-c", NDJSON_CLIENT, STREAM_SOCK, until];
    argv.extend(lines.iter().map(String::as_str));
    let out = b.run_as(user, &argv).await;
    if !out.success() {
        return Err((out.code, out.stderr));
    }
    Ok(out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("NDJSON line {l}: {e}")))
        .collect())
}
