//! Handshakes that go wrong: accepted TCP that never answers, half an answer, an endless or
//! flooding header, something that is not HTTP, redirect loops, 429 storms with Retry-After;
//! 101 answers that are odd but valid (token lists, any case), and ones that select what was
//! never offered.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use ws_sidecar::endpoint::{Endpoint, State, StateEvent};
use ws_sidecar::proto;

use crate::support::daemon::{next_message, start_daemon, subscribe, TestDaemon};
use crate::support::frame::{close_payload, frame_bytes, OP_CLOSE, OP_TEXT};
use crate::support::{ChaosProxy, FakeUpstream, Mode, Reply};
use crate::{endpoint, with_bystander, within, Bystander, T};

/// A TCP server on 127.0.0.1:0 that runs `serve` on every connection it accepts.
struct RawServer {
    addr: std::net::SocketAddr,
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawServer {
    async fn start<F, Fut>(serve: F) -> RawServer
    where
        F: Fn(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(stream));
            }
        });
        RawServer {
            addr,
            accepted,
            task,
        }
    }

    fn url(&self) -> String {
        format!("ws://{}/feed", self.addr)
    }
}

/// Reads up to the end of the request head; false if the client went away first.
async fn read_head(stream: &mut TcpStream) -> bool {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    true
}

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
async fn answering_101(
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

/// Holds the connection until the client closes it, reading and discarding.
async fn hold(mut stream: TcpStream) {
    let mut buf = [0u8; 1024];
    while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
}

/// Waits for `n` failed attempts of `ep` (connecting → backoff) and returns how long each
/// took and its reason. Panics if the endpoint connects or fails for good meanwhile.
async fn failed_attempts(
    ep: &Endpoint,
    events: &mut broadcast::Receiver<StateEvent>,
    n: usize,
) -> Vec<(Duration, String)> {
    let mut out = Vec::new();
    let mut started: Option<u64> = None;
    within(T, &format!("{n} failed attempts of {}", ep.name), async {
        while out.len() < n {
            let ev = events.recv().await.expect("state events");
            match ev.state {
                State::Connecting => started = Some(ev.at),
                State::Backoff => {
                    if let Some(at) = started.take() {
                        out.push((Duration::from_nanos(ev.at - at), ev.reason));
                    }
                }
                other => panic!("{}: unexpected {other:?}: {}", ep.name, ev.reason),
            }
        }
    })
    .await;
    out
}

#[tokio::test]
async fn handshakes_that_never_complete_time_out_and_are_retried() {
    // Accepted by the kernel, never read: the request sits in a buffer.
    let deaf = FakeUpstream::start_with(|_, _| Reply::Accept).await;
    let deaf_proxy = ChaosProxy::start(deaf.addr()).await;
    deaf_proxy.set_mode(Mode::Stall);
    // Read, never answered.
    let silent = FakeUpstream::start_with(|_, _| Reply::Hang).await;
    // Half a 101, then nothing.
    let half = RawServer::start(|mut s| async move {
        if read_head(&mut s).await {
            let _ = s
                .write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n")
                .await;
            hold(s).await;
        }
    })
    .await;
    // A header line every 20 ms, forever: a slowloris answer.
    let dribble = RawServer::start(|mut s| async move {
        if read_head(&mut s).await {
            let _ = s.write_all(b"HTTP/1.1 101 Switching Protocols\r\n").await;
            for i in 0u64.. {
                tokio::time::sleep(Duration::from_millis(20)).await;
                if s.write_all(format!("X-Slow-{i}: a\r\n").as_bytes())
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    })
    .await;
    let calm = Bystander::upstream().await;
    let timeout = "connect_timeout = \"300ms\"";
    let d = start_daemon(
        &(endpoint("deaf", &deaf_proxy.url("/feed"), timeout)
            + &endpoint("silent", &silent.url("/feed"), timeout)
            + &endpoint("half", &half.url(), timeout)
            + &endpoint("dribble", &dribble.url(), timeout)
            + &Bystander::config(&calm)),
    )
    .await;
    let mut by = Bystander::attach(calm, &d).await;
    for name in ["deaf", "silent", "half", "dribble"] {
        let ep = d.endpoint(name);
        let mut events = ep.state_events();
        for (took, reason) in failed_attempts(&ep, &mut events, 2).await {
            assert!(
                reason.contains("connect timeout after 300ms"),
                "{name}: {reason}"
            );
            assert!(
                took >= Duration::from_millis(290) && took < Duration::from_millis(1500),
                "{name}: attempt took {took:?}, connect_timeout is 300ms"
            );
        }
    }
    assert!(half.accepted.load(Ordering::SeqCst) >= 2);
    assert!(dribble.accepted.load(Ordering::SeqCst) >= 2);
    by.check(&d).await;
    d.stop().await;
}

#[tokio::test]
async fn handshake_answers_that_are_not_websocket_fail_fast_with_a_reason() {
    // Header lines as fast as the socket takes them: the handshake reader must stop buffering.
    let flood = RawServer::start(|mut s| async move {
        if read_head(&mut s).await {
            let _ = s.write_all(b"HTTP/1.1 101 Switching Protocols\r\n").await;
            let line = format!("X-Flood: {}\r\n", "a".repeat(1000));
            while s.write_all(line.as_bytes()).await.is_ok() {}
        }
    })
    .await;
    // Not HTTP at all.
    let ssh = RawServer::start(|mut s| async move {
        let _ = s.write_all(b"SSH-2.0-OpenSSH_9.6\r\n").await;
        hold(s).await;
    })
    .await;
    // A web server that ignores the upgrade.
    let web = RawServer::start(|mut s| async move {
        if read_head(&mut s).await {
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
                .await;
            hold(s).await;
        }
    })
    .await;
    // A 101 whose Sec-WebSocket-Accept does not match the key.
    let wrong_key = RawServer::start(|mut s| async move {
        if read_head(&mut s).await {
            let _ = s
                .write_all(
                    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: bm90IHRoZSByaWdodCBrZXk=\r\n\r\n",
                )
                .await;
            hold(s).await;
        }
    })
    .await;
    // 101s that are not WebSocket answers: no accept key, another protocol, no upgrade token.
    let no_accept = answering_101(
        |_| {
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                .into()
        },
        Vec::new(),
    )
    .await;
    let h2c = answering_101(
        |a| format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {a}\r\n"),
        Vec::new(),
    )
    .await;
    let no_token = answering_101(
        |a| format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: keep-alive, upgraded\r\nSec-WebSocket-Accept: {a}\r\n"),
        Vec::new(),
    )
    .await;
    // A proper 101 that reaches the daemon one byte per TCP segment.
    let up = FakeUpstream::start_with(|_, _| Reply::Accept).await;
    let sliced = ChaosProxy::start(up.addr()).await;
    sliced.update(|link| link.to_client.shape.slice = Some(1));

    let calm = Bystander::upstream().await;
    let timeout = "connect_timeout = \"5s\"";
    let d = start_daemon(
        &(endpoint("flood", &flood.url(), timeout)
            + &endpoint("ssh", &ssh.url(), timeout)
            + &endpoint("web", &web.url(), timeout)
            + &endpoint("wrong_key", &wrong_key.url(), timeout)
            + &endpoint("no_accept", &no_accept.url(), timeout)
            + &endpoint("h2c", &h2c.url(), timeout)
            + &endpoint("no_token", &no_token.url(), timeout)
            + &endpoint("sliced", &sliced.url("/feed"), timeout)
            + &Bystander::config(&calm)),
    )
    .await;
    let mut by = Bystander::attach(calm, &d).await;
    let cases = [
        ("flood", "handshake response refused: over 64 KiB"),
        ("ssh", "HTTP"),
        ("web", "HTTP 200 OK"),
        ("wrong_key", "Sec-WebSocket-Accept"),
        ("no_accept", "Sec-WebSocket-Accept"),
        ("h2c", "Upgrade"),
        ("no_token", "Connection"),
        ("sliced", "in too many tiny TCP segments"),
    ];
    for (name, expect) in cases {
        let ep = d.endpoint(name);
        let mut events = ep.state_events();
        for (took, reason) in failed_attempts(&ep, &mut events, 2).await {
            assert!(reason.contains(expect), "{name}: {reason}");
            assert!(
                took < Duration::from_secs(2),
                "{name}: not bounded by the 5 s timeout: {took:?}"
            );
        }
    }
    by.check(&d).await;
    d.stop().await;
}

#[tokio::test]
async fn redirect_loops_are_not_followed_back_off_and_never_show_the_credential() {
    const TOKEN: &str = "s3cr3t-t0ken";
    // Each redirects to itself, echoing the request target (credential included); one also
    // puts the credential in userinfo.
    let port = Arc::new(std::sync::OnceLock::<u16>::new());
    let p = Arc::clone(&port);
    let looping = FakeUpstream::start_with(move |i, req| {
        let target = req.uri().to_string();
        let port = p.get().copied().unwrap_or(0);
        let (status, location) = match i % 3 {
            0 => (302, target),
            1 => (301, format!("ws://127.0.0.1:{port}{target}")),
            _ => (308, format!("ws://user:{TOKEN}@127.0.0.1:{port}{target}")),
        };
        Reply::reject(status, &[("Location", &location)])
    })
    .await;
    port.set(looping.addr().port()).expect("set once");
    let (d, mut by) = with_bystander(
        &(endpoint("loop", &looping.url("/feed"), "")
            + &format!("[endpoints.loop.auth]\ntoken = \"{TOKEN}\"\nquery = \"k\"\n")),
    )
    .await;
    let ep = d.endpoint("loop");
    let mut events = ep.state_events();
    let failed = failed_attempts(&ep, &mut events, 6).await;
    for (_, reason) in &failed {
        assert!(reason.contains("not followed"), "{reason}");
        assert!(!reason.contains(TOKEN), "the credential leaked: {reason}");
        assert!(!reason.contains("user"), "userinfo shown: {reason}");
    }
    let codes: Vec<bool> = ["HTTP 302", "HTTP 301", "HTTP 308"]
        .iter()
        .map(|code| failed.iter().any(|(_, r)| r.contains(code)))
        .collect();
    assert_eq!(codes, [true, true, true], "{failed:?}");
    let shown = &failed[0].1;
    assert!(
        shown.contains("/feed?…"),
        "the target is shown, its query cut: {shown}"
    );
    // Never followed: every request went to the configured path, no tighter than min_delay.
    let attempts = looping.attempts();
    assert!(
        attempts.iter().all(|a| a.target.starts_with("/feed?k=")),
        "{attempts:?}"
    );
    for pair in attempts.windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(
            gap >= Duration::from_millis(10),
            "a retry {gap:?} after the last"
        );
    }
    let status = d
        .grpc()
        .await
        .get_status(proto::GetStatusRequest {
            endpoint: Some("loop".into()),
        })
        .await
        .expect("status")
        .into_inner();
    let shown = format!("{:?}", status.endpoints);
    assert!(
        !shown.contains(TOKEN),
        "GetStatus shows the credential: {shown}"
    );
    by.check(&d).await;
    d.stop().await;
}

/// The gaps between consecutive handshake attempts an upstream saw.
fn gaps(up: &FakeUpstream) -> Vec<Duration> {
    up.attempts()
        .windows(2)
        .map(|w| w[1].at - w[0].at)
        .collect()
}

#[tokio::test]
async fn a_429_storm_honours_every_retry_after_and_junk_values_are_ignored() {
    // Three refusals asking for a second each, then the door opens.
    let storm = FakeUpstream::start_with(|i, _| {
        if i < 3 {
            Reply::reject(429, &[("Retry-After", "1")])
        } else {
            Reply::Accept
        }
    })
    .await;
    // "Retry-After: 0" forever: the floor and the exponential backoff still apply.
    let zero = FakeUpstream::start_with(|_, _| Reply::reject(429, &[("Retry-After", "0")])).await;
    // Values that are not delta-seconds or an HTTP date mean nothing.
    let junk = FakeUpstream::start_with(|i, _| {
        let value = ["soon", "-1", "1e3", "99999999999999999999999"][i % 4];
        Reply::reject(429, &[("Retry-After", value)])
    })
    .await;
    // An hour: an operator's Reconnect cuts it short.
    let hour = FakeUpstream::start_with(|i, _| {
        if i == 0 {
            Reply::reject(429, &[("Retry-After", "3600")])
        } else {
            Reply::Accept
        }
    })
    .await;
    let (d, mut by) = with_bystander(
        &(endpoint("storm", &storm.url("/"), "")
            + &endpoint("zero", &zero.url("/"), "")
            + &endpoint("junk", &junk.url("/"), "")
            + &endpoint("hour", &hour.url("/"), "")),
    )
    .await;

    let ev = d.wait_state("hour", State::Backoff, T).await;
    assert!(
        ev.reason
            .contains("HTTP 429 Too Many Requests, retry after 1h"),
        "{}",
        ev.reason
    );
    let mut client = d.grpc().await;
    client
        .reconnect(proto::ReconnectRequest {
            endpoint: "hour".into(),
        })
        .await
        .expect("reconnect accepted");
    d.wait_state("hour", State::Connected, T).await;

    zero.wait_attempts(12, T)
        .await
        .expect("zero keeps retrying");
    junk.wait_attempts(8, T).await.expect("junk keeps retrying");
    for (name, up) in [("zero", &zero), ("junk", &junk)] {
        for gap in gaps(up) {
            assert!(
                gap >= Duration::from_millis(10),
                "{name}: a retry {gap:?} after the last"
            );
            assert!(
                gap < Duration::from_millis(900),
                "{name}: {gap:?}, as if Retry-After applied"
            );
        }
    }

    within(
        Duration::from_secs(8),
        "the storm passes",
        storm.next_accepted(),
    )
    .await
    .expect("accepted after the storm");
    let storm_gaps = gaps(&storm);
    assert_eq!(storm_gaps.len(), 3, "{storm_gaps:?}");
    for gap in storm_gaps {
        assert!(
            gap >= Duration::from_secs(1),
            "Retry-After: 1 not honoured: {gap:?}"
        );
    }
    d.wait_state("storm", State::Connected, T).await;
    by.check(&d).await;
    d.stop().await;
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
