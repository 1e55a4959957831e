//! 101 answers checked as RFC 6455 §4.1 says: valid ones written oddly (token lists, any case,
//! fields over several lines) connect; ones selecting an extension or subprotocol that was never
//! offered fail the endpoint at once, naming it.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use ws_sidecar::endpoint::{State, StateEvent};

use crate::handshake::{hold, RawServer};
use crate::support::daemon::{next_message, start_daemon, subscribe, TestDaemon};
use crate::support::frame::{close_payload, frame_bytes, OP_CLOSE, OP_TEXT};
use crate::{endpoint, within, Bystander, T};

/// Reads the request head; its header fields (names lowercased, values trimmed), or None if the
/// client went away first.
async fn read_request(stream: &mut TcpStream) -> Option<Vec<(String, String)>> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let fields = text
        .split("\r\n")
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    Some(fields)
}

/// Writes a 101's status line and header lines, given the right `Sec-WebSocket-Accept`.
type Answer = fn(&str) -> String;

/// A server answering every upgrade request with a hand-written 101: `head` gets the right
/// `Sec-WebSocket-Accept` for the request's key and returns the status line and header lines;
/// `after` follows in the same write, so the daemon reads it together with the head.
pub(crate) async fn answering_101(
    head: impl Fn(&str) -> String + Send + Sync + 'static,
    after: Vec<u8>,
) -> RawServer {
    let head = Arc::new(head);
    let after = Arc::new(after);
    RawServer::start(move |mut s| {
        let (head, after) = (Arc::clone(&head), Arc::clone(&after));
        async move {
            let Some(fields) = read_request(&mut s).await else {
                return;
            };
            let key = fields
                .iter()
                .find(|(name, _)| name == "sec-websocket-key")
                .map(|(_, value)| value.clone())
                .unwrap_or_default();
            let mut answer = head(&derive_accept_key(key.as_bytes())).into_bytes();
            answer.extend_from_slice(b"\r\n");
            answer.extend_from_slice(&after);
            if s.write_all(&answer).await.is_ok() {
                hold(s).await;
            }
        }
    })
    .await
}

/// The first state of `name` that is not `connecting`: where its first attempt went.
async fn first_outcome(d: &TestDaemon, name: &str) -> StateEvent {
    let ep = d.endpoint(name);
    within(
        T,
        &format!("an outcome for {name}"),
        ep.wait_state(|s| matches!(s.state, State::Connected | State::Backoff | State::Failed)),
    )
    .await
}

#[tokio::test]
async fn rfc_valid_101_answers_connect_whatever_their_token_lists_look_like() {
    // Each answer is followed, in the same write, by a message and a close with 1014: both
    // arrive in the read that brings the head, so they must be handed on from the HTTP reader,
    // and the close code (which tungstenite would report as 1002) shows that the wire watch
    // below it still saw every byte in order.
    let after = [
        frame_bytes(OP_TEXT, true, b"hello"),
        frame_bytes(OP_CLOSE, true, &close_payload(1014, "bad gateway")),
    ]
    .concat();
    const SWITCHING: &str = "HTTP/1.1 101 Switching Protocols\r\n";
    let cases: [(&str, &str, Answer); 7] = [
        ("keep_alive", "", |a| {
            format!("{SWITCHING}Upgrade: websocket\r\nConnection: Upgrade, Keep-Alive\r\nSec-WebSocket-Accept: {a}\r\n")
        }),
        ("odd_case", "", |a| {
            format!("{SWITCHING}upgrade: WebSocket\r\nCONNECTION: keep-alive, ,UPGRADE\r\nsec-websocket-accept: {a}\r\n")
        }),
        ("split_lines", "", |a| {
            format!("{SWITCHING}Upgrade: websocket\r\nConnection: keep-alive\r\nConnection: upgrade\r\nSec-WebSocket-Accept: {a}\r\n")
        }),
        ("upgrade_list", "", |a| {
            format!("{SWITCHING}Upgrade: websocket, foo\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {a}\r\n")
        }),
        ("protocol", "subprotocols = [\"v1\", \"v2\"]", |a| {
            format!("{SWITCHING}Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Protocol: v2\r\nSec-WebSocket-Accept: {a}\r\n")
        }),
        (
            "protocol_keep_alive",
            "subprotocols = [\"v1\", \"v2\"]",
            |a| {
                format!("{SWITCHING}Upgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Protocol: v1\r\nSec-WebSocket-Accept: {a}\r\n")
            },
        ),
        // RFC 6455 §4.2.2: a server may select none of the subprotocols offered (we log it).
        ("no_protocol", "subprotocols = [\"v1\"]", |a| {
            format!("{SWITCHING}Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {a}\r\n")
        }),
    ];
    let mut servers = Vec::new();
    let mut config = String::new();
    for (name, extra, head) in cases {
        let server = answering_101(head, after.clone()).await;
        config += &endpoint(name, &server.url(), extra);
        servers.push(server);
    }
    let calm = Bystander::upstream().await;
    let d = start_daemon(&(config + &Bystander::config(&calm))).await;
    let mut by = Bystander::attach(calm, &d).await;
    let mut client = d.grpc().await;
    for (name, _, _) in cases {
        let first = first_outcome(&d, name).await;
        assert!(
            first.state == State::Connected
                || first.reason.contains("closed by upstream with code 1014"),
            "{name} did not connect: {:?} {}",
            first.state,
            first.reason
        );
        let mut sub = subscribe(&mut client, name, Some(0)).await;
        let m = next_message(&mut sub, T).await;
        assert_eq!((m.seq, &m.data[..]), (1, &b"hello"[..]), "{name}");
        let ev = d.wait_state(name, State::Backoff, T).await;
        assert!(
            ev.reason
                .contains("closed by upstream with code 1014: bad gateway"),
            "{name}: {}",
            ev.reason
        );
    }
    by.check(&d).await;
    d.stop().await;
}

#[tokio::test]
async fn a_101_that_selects_what_was_not_offered_fails_the_endpoint_naming_it() {
    const SWITCHING: &str =
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n";
    // "Hello" compressed, with RSV1 set: what a server that insists on compression sends next.
    let compressed = vec![0xC1, 0x07, 0xF2, 0x48, 0xCD, 0xC9, 0xC9, 0x07, 0x00];
    let cases: [(&str, &str, Answer, &str); 5] = [
        (
            "deflate",
            "",
            |a| {
                format!("{SWITCHING}Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\nSec-WebSocket-Accept: {a}\r\n")
            },
            "upstream selected extension permessage-deflate, which was not offered",
        ),
        (
            "two_extensions",
            "",
            |a| {
                format!("{SWITCHING}Sec-WebSocket-Extensions: x-foo\r\nSec-WebSocket-Extensions: permessage-deflate\r\nSec-WebSocket-Accept: {a}\r\n")
            },
            "upstream selected extensions x-foo, permessage-deflate, which were not offered",
        ),
        (
            "other_protocol",
            "subprotocols = [\"v1\"]",
            |a| format!("{SWITCHING}Sec-WebSocket-Protocol: v9\r\nSec-WebSocket-Accept: {a}\r\n"),
            "upstream selected subprotocol \"v9\", which was not offered",
        ),
        (
            "unasked_protocol",
            "",
            |a| format!("{SWITCHING}Sec-WebSocket-Protocol: v1\r\nSec-WebSocket-Accept: {a}\r\n"),
            "upstream selected subprotocol \"v1\", which was not offered",
        ),
        (
            "two_protocols",
            "subprotocols = [\"v1\", \"v2\"]",
            |a| {
                format!(
                    "{SWITCHING}Sec-WebSocket-Protocol: v1, v2\r\nSec-WebSocket-Accept: {a}\r\n"
                )
            },
            "upstream selected 2 subprotocols (\"v1, v2\")",
        ),
    ];
    let mut servers = Vec::new();
    let mut config = String::new();
    for (name, extra, head, _) in cases {
        let server = answering_101(head, compressed.clone()).await;
        config += &endpoint(name, &server.url(), extra);
        servers.push(server);
    }
    let calm = Bystander::upstream().await;
    let d = start_daemon(&(config + &Bystander::config(&calm))).await;
    let mut by = Bystander::attach(calm, &d).await;
    for ((name, _, _, expect), server) in cases.iter().zip(&servers) {
        let first = first_outcome(&d, name).await;
        assert_eq!(
            first.state,
            State::Failed,
            "{name} must fail at once: {}",
            first.reason
        );
        assert!(first.reason.contains(expect), "{name}: {}", first.reason);
        assert_eq!(server.accepted.load(Ordering::SeqCst), 1, "{name}: retried");
        assert_eq!(
            d.endpoint(name)
                .stats
                .messages_received
                .load(Ordering::Relaxed),
            0
        );
    }
    by.check(&d).await;
    d.stop().await;
}
