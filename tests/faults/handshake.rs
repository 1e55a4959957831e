//! Handshakes that go wrong: accepted TCP that never answers, half an answer, an endless or
//! flooding header, something that is not HTTP, redirect loops, 429 storms with Retry-After.
//! Valid 101 answers written oddly, and ones selecting what was never offered: `handshake_101`.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use ws_sidecar::endpoint::{Endpoint, State, StateEvent};
use ws_sidecar::proto;

use crate::handshake_101::answering_101;
use crate::support::daemon::start_daemon;
use crate::support::{ChaosProxy, FakeUpstream, Mode, Reply};
use crate::{endpoint, with_bystander, within, Bystander, T};

/// A TCP server on 127.0.0.1:0 that runs `serve` on every connection it accepts.
pub(crate) struct RawServer {
    addr: std::net::SocketAddr,
    /// Connections accepted so far.
    pub(crate) accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawServer {
    pub(crate) async fn start<F, Fut>(serve: F) -> RawServer
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

    pub(crate) fn url(&self) -> String {
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

/// Holds the connection until the client closes it, reading and discarding.
pub(crate) async fn hold(mut stream: TcpStream) {
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
