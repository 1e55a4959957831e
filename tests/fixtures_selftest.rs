//! Proves the network fixtures behave as the integration tests assume, using a plain
//! tokio-tungstenite client (no daemon involved). If one of these fails, fix the fixture before
//! believing any other test result.

mod support;

#[path = "fixtures_selftest/graphql_ws.rs"]
mod graphql_ws;
#[path = "fixtures_selftest/home_assistant.rs"]
mod home_assistant;
#[path = "fixtures_selftest/jsonrpc.rs"]
mod jsonrpc;
#[path = "fixtures_selftest/phoenix.rs"]
mod phoenix;
#[path = "fixtures_selftest/socketio.rs"]
mod socketio;

use std::io::ErrorKind;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Response;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use support::frame::{frame_bytes, OP_TEXT};
use support::{
    with_timeout, ChaosProxy, ClientClose, FakeUpstream, Mode, Reply, TickOptions, UpConn,
};

type Client = WebSocketStream<TcpStream>;

/// Long enough for anything that should happen on loopback; only reached when something is wrong.
const PROMPT: Duration = Duration::from_secs(5);
/// How long a test watches for something that must not happen.
const QUIET: Duration = Duration::from_millis(400);

/// What `connect_async` does for `ws://` URLs; the crate is built without its `connect` feature,
/// so the TCP connection is made here.
async fn ws_connect(request: impl IntoClientRequest) -> Result<(Client, Response), WsError> {
    let request = request.into_client_request()?;
    let authority = request
        .uri()
        .authority()
        .map(|authority| authority.as_str().to_owned())
        .unwrap_or_default();
    let stream = TcpStream::connect(authority).await?;
    tokio_tungstenite::client_async(request, stream).await
}

async fn connect_ok(url: &str) -> Client {
    let (client, _response) = with_timeout(PROMPT, ws_connect(url))
        .await
        .expect("client handshake succeeds");
    client
}

/// A client connected to a fake upstream whose policy accepts everything.
async fn connected_pair(upstream: &FakeUpstream, url: &str) -> (Client, UpConn) {
    let client = connect_ok(url).await;
    let conn = upstream
        .next_accepted()
        .await
        .expect("upstream sees the connection");
    (client, conn)
}

async fn next_message(client: &mut Client) -> Message {
    with_timeout(PROMPT, client.next())
        .await
        .expect("client stream still open")
        .expect("client reads a message")
}

fn http_error(result: Result<(Client, Response), WsError>) -> Box<http::Response<Option<Vec<u8>>>> {
    match result {
        Err(WsError::Http(response)) => response,
        Err(other) => panic!("expected an HTTP error response, got error {other}"),
        Ok(_) => panic!("expected an HTTP error response, the handshake succeeded"),
    }
}

#[tokio::test]
async fn accept_round_trips_text_binary_and_close() {
    let upstream = FakeUpstream::start().await;
    let client = tokio::spawn(ws_connect(upstream.url("/feed?since=7")));
    let pending = upstream.next_conn().await.expect("a handshake arrives");
    assert_eq!(pending.uri().path(), "/feed");
    assert_eq!(pending.uri().query(), Some("since=7"));
    assert_eq!(pending.header("upgrade"), Some("websocket"));
    assert_eq!(pending.attempt_index(), 0);
    let conn = pending.accept().await.expect("accept writes the 101");
    let (mut client, _) = with_timeout(PROMPT, client)
        .await
        .expect("client task")
        .expect("client handshake succeeds");

    conn.send_text("hello").await.expect("send text");
    assert_eq!(next_message(&mut client).await, Message::text("hello"));
    // Sizes that take the 7-bit, 16-bit and 64-bit length encodings.
    for size in [100, 300, 70_000] {
        let payload: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        conn.send_binary(&payload).await.expect("send binary");
        assert_eq!(
            next_message(&mut client).await,
            Message::binary(payload.clone())
        );
        client
            .send(Message::binary(payload.clone()))
            .await
            .expect("client sends binary");
        let received = with_timeout(PROMPT, conn.recv()).await;
        assert_eq!(received, Some(Message::binary(payload)));
    }
    client
        .send(Message::text("from client"))
        .await
        .expect("client sends text");
    assert_eq!(conn.recv_text().await, "from client");

    client
        .close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        }))
        .await
        .expect("client sends close");
    let client_close = with_timeout(PROMPT, conn.closed()).await;
    assert_eq!(
        client_close,
        Some(ClientClose {
            code: 1000,
            reason: "bye".to_owned()
        })
    );
    assert_eq!(conn.protocol_error(), None);
    assert_eq!(upstream.accepted(), 1);
    let attempts = upstream.attempts();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].target, "/feed?since=7");
}

#[tokio::test]
async fn accept_with_protocol_answers_the_offer() {
    let upstream = FakeUpstream::start().await;
    let mut request = upstream
        .url("/feed")
        .into_client_request()
        .expect("valid URL");
    request.headers_mut().insert(
        "sec-websocket-protocol",
        http::HeaderValue::from_static("v2.feed, v1.feed"),
    );
    let client = tokio::spawn(ws_connect(request));
    let pending = upstream.next_conn().await.expect("a handshake arrives");
    assert_eq!(pending.subprotocols(), ["v2.feed", "v1.feed"]);
    let conn = pending
        .accept_with_protocol("v1.feed")
        .await
        .expect("accept");
    assert_eq!(conn.protocol(), Some("v1.feed"));
    let (_client, response) = with_timeout(PROMPT, client)
        .await
        .expect("client task")
        .expect("client accepts the chosen protocol");
    assert_eq!(
        response.headers().get("sec-websocket-protocol"),
        Some(&http::HeaderValue::from_static("v1.feed"))
    );
}

#[tokio::test]
async fn reject_401_is_an_http_error_for_the_client() {
    let upstream = FakeUpstream::start_with(|_, _| {
        Reply::reject(401, &[("WWW-Authenticate", "Bearer realm=\"feed\"")])
    })
    .await;
    let response = http_error(with_timeout(PROMPT, ws_connect(upstream.url("/feed"))).await);
    assert_eq!(response.status(), 401);
    assert_eq!(
        response.headers().get("www-authenticate"),
        Some(&http::HeaderValue::from_static("Bearer realm=\"feed\""))
    );
}

#[tokio::test]
async fn retry_after_reaches_the_client() {
    let upstream = FakeUpstream::start().await;
    let client = tokio::spawn(ws_connect(upstream.url("/feed")));
    let pending = upstream.next_conn().await.expect("a handshake arrives");
    pending
        .reject(503, &[("Retry-After", "2")])
        .await
        .expect("write the 503");
    let result = with_timeout(PROMPT, client).await.expect("client task");
    let response = http_error(result);
    assert_eq!(response.status(), 503);
    assert_eq!(
        response.headers().get("retry-after"),
        Some(&http::HeaderValue::from_static("2"))
    );
}

#[tokio::test]
async fn policy_sees_each_attempt_in_order() {
    let upstream = FakeUpstream::start_with(|attempt, _| match attempt {
        0 => Reply::DropTcp,
        1 => Reply::ResetTcp,
        _ => Reply::Accept,
    })
    .await;
    let mut request = upstream
        .url("/feed?since=3")
        .into_client_request()
        .expect("valid URL");
    request
        .headers_mut()
        .insert("x-token", http::HeaderValue::from_static("t-1"));

    for expected_failure in ["DropTcp", "ResetTcp"] {
        let result = with_timeout(PROMPT, ws_connect(request.clone())).await;
        assert!(
            result.is_err(),
            "{expected_failure} must fail the handshake"
        );
    }
    let _client = with_timeout(PROMPT, ws_connect(request))
        .await
        .expect("third attempt is accepted");
    let conn = upstream.next_accepted().await.expect("accepted connection");
    assert_eq!(conn.header("x-token"), Some("t-1"));

    let attempts = upstream
        .wait_attempts(3, PROMPT)
        .await
        .expect("three attempts");
    assert_eq!(attempts.len(), 3);
    assert!(attempts.iter().all(|a| a.target == "/feed?since=3"));
    assert!(attempts.iter().all(|a| a.header("x-token") == Some("t-1")));
    assert!(attempts.windows(2).all(|w| w[0].at <= w[1].at));
    assert_eq!(upstream.accepted(), 3);
}

#[tokio::test]
async fn reset_is_a_connection_reset_not_a_close() {
    let upstream = FakeUpstream::start_with(|_, _| Reply::Accept).await;
    let (mut client, conn) = connected_pair(&upstream, &upstream.url("/feed")).await;
    conn.reset().await.expect("reset");
    assert!(conn.is_closed());
    match with_timeout(PROMPT, client.next()).await {
        Some(Err(WsError::Io(error))) => assert_eq!(error.kind(), ErrorKind::ConnectionReset),
        other => panic!("expected a connection reset, got {other:?}"),
    }
    assert_eq!(with_timeout(PROMPT, conn.closed()).await, None);
}

#[tokio::test]
async fn upstream_close_reaches_the_client_with_its_code() {
    let upstream = FakeUpstream::start_with(|_, _| Reply::Accept).await;
    let (mut client, conn) = connected_pair(&upstream, &upstream.url("/feed")).await;
    conn.close(4001, "reauth").await.expect("send close");
    match next_message(&mut client).await {
        Message::Close(Some(frame)) => {
            assert_eq!(u16::from(frame.code), 4001);
            assert_eq!(frame.reason.as_str(), "reauth");
        }
        other => panic!("expected a close frame, got {other:?}"),
    }
    // tungstenite sends its close reply on the next read, and the read ends when the server
    // drops the TCP.
    let after_close = with_timeout(PROMPT, client.next()).await;
    assert!(after_close.is_none(), "got {after_close:?} after close");
    let echoed = with_timeout(PROMPT, conn.closed())
        .await
        .expect("client answers the close");
    assert_eq!(echoed.code, 4001);
}

#[tokio::test]
async fn unanswered_pings_get_no_pong() {
    let upstream = FakeUpstream::start_with(|_, _| Reply::Accept).await;
    let (mut client, conn) = connected_pair(&upstream, &upstream.url("/feed")).await;
    conn.set_answer_pings(false);
    client
        .send(Message::Ping("first".into()))
        .await
        .expect("client pings");
    conn.wait_pings(1, PROMPT)
        .await
        .expect("ping reaches upstream");
    assert!(
        tokio::time::timeout(QUIET, client.next()).await.is_err(),
        "no pong (or anything else) while pings are swallowed"
    );

    conn.set_answer_pings(true);
    client
        .send(Message::Ping("second".into()))
        .await
        .expect("client pings");
    assert_eq!(
        next_message(&mut client).await,
        Message::Pong("second".into())
    );
    assert_eq!(conn.pings_seen(), 2);
}

#[tokio::test]
async fn upstream_pings_are_answered_by_the_client() {
    let upstream = FakeUpstream::start_with(|_, _| Reply::Accept).await;
    let (mut client, conn) = connected_pair(&upstream, &upstream.url("/feed")).await;
    conn.send_ping(b"are you there").await.expect("ping");
    // tungstenite queues its pong while reading and flushes it on the next read or write.
    assert_eq!(
        next_message(&mut client).await,
        Message::Ping("are you there".into())
    );
    client
        .send(Message::text("flush"))
        .await
        .expect("client sends");
    assert_eq!(conn.recv_text().await, "flush");
    assert_eq!(conn.pongs_seen(), 1);
}

#[tokio::test]
async fn raw_bytes_can_carry_invalid_utf8_text() {
    let upstream = FakeUpstream::start_with(|_, _| Reply::Accept).await;
    let (mut client, conn) = connected_pair(&upstream, &upstream.url("/feed")).await;
    conn.send_raw_bytes(frame_bytes(OP_TEXT, true, &[0xC3, 0x28]))
        .await
        .expect("raw write");
    match with_timeout(PROMPT, client.next()).await {
        Some(Err(WsError::Utf8(_))) => {}
        other => panic!("expected a UTF-8 error, got {other:?}"),
    }
}

#[tokio::test]
async fn hang_never_completes_the_handshake() {
    let upstream = FakeUpstream::start_with(|_, _| Reply::Hang).await;
    let attempt = tokio::time::timeout(QUIET, ws_connect(upstream.url("/feed"))).await;
    assert!(attempt.is_err(), "handshake must still be pending");
    let attempts = upstream
        .wait_attempts(1, PROMPT)
        .await
        .expect("the request was read");
    assert_eq!(attempts.len(), 1);
}

#[tokio::test]
async fn next_conn_times_out_with_an_error() {
    let upstream = FakeUpstream::start().await;
    let result = upstream.next_conn_within(Duration::from_millis(50)).await;
    assert!(result.is_err());
}

#[tokio::test]
#[should_panic(expected = "timed out after")]
async fn with_timeout_panics_with_a_message() {
    with_timeout(Duration::from_millis(10), std::future::pending::<()>()).await;
}

#[tokio::test]
async fn ticks_resume_after_since() {
    let upstream = FakeUpstream::start_ticking(TickOptions {
        interval: Duration::from_millis(5),
        last_id: Some(5),
        ..TickOptions::default()
    })
    .await;

    let mut resumed = connect_ok(&upstream.url("/feed?since=2")).await;
    for expected in 3..=5 {
        let Message::Text(text) = next_message(&mut resumed).await else {
            panic!("ticks are text");
        };
        assert_eq!(support::tick_id(&text), Some(expected), "{text}");
    }
    assert!(tokio::time::timeout(QUIET, resumed.next()).await.is_err());

    let mut fresh = connect_ok(&upstream.url("/feed")).await;
    let Message::Text(first) = next_message(&mut fresh).await else {
        panic!("ticks are text");
    };
    assert_eq!(first.as_str(), support::tick_message(1));
}

/// An accepting upstream behind a proxy, with one client connected through it.
async fn proxied_pair() -> (FakeUpstream, ChaosProxy, Client, UpConn) {
    let upstream = FakeUpstream::start_with(|_, _| Reply::Accept).await;
    let proxy = ChaosProxy::start(upstream.addr()).await;
    let (mut client, conn) = connected_pair(&upstream, &proxy.url("/feed")).await;
    conn.send_text("through").await.expect("send");
    assert_eq!(next_message(&mut client).await, Message::text("through"));
    (upstream, proxy, client, conn)
}

#[tokio::test]
async fn proxy_pass_forwards_both_ways() {
    let (upstream, proxy, mut client, conn) = proxied_pair().await;
    client
        .send(Message::text("back"))
        .await
        .expect("client sends");
    assert_eq!(conn.recv_text().await, "back");
    assert_eq!(proxy.connections(), 1);
    assert_eq!(proxy.live_connections(), 1);
    assert_eq!(upstream.attempts()[0].target, "/feed");
}

#[tokio::test]
async fn proxy_blackhole_keeps_tcp_open_and_delivers_nothing() {
    let (_upstream, proxy, mut client, conn) = proxied_pair().await;
    proxy.set_mode(Mode::Blackhole);
    client
        .send(Message::Ping("anyone".into()))
        .await
        .expect("client pings");
    conn.send_text("lost").await.expect("upstream writes");
    // Neither a pong, nor the text, nor an error or close: the connection just goes silent.
    assert!(tokio::time::timeout(QUIET, client.next()).await.is_err());
    assert_eq!(conn.pings_seen(), 0);
    assert!(!conn.is_closed());
    assert_eq!(proxy.live_connections(), 1);
}

#[tokio::test]
async fn proxy_stall_holds_traffic_until_released() {
    let (_upstream, proxy, mut client, conn) = proxied_pair().await;
    proxy.set_mode(Mode::Stall);
    client
        .send(Message::Ping("held".into()))
        .await
        .expect("client pings");
    assert!(tokio::time::timeout(QUIET, client.next()).await.is_err());
    assert_eq!(conn.pings_seen(), 0);
    proxy.set_mode(Mode::Pass);
    assert_eq!(
        next_message(&mut client).await,
        Message::Pong("held".into())
    );
}

#[tokio::test]
async fn proxy_cut_all_resets_live_connections() {
    let (_upstream, proxy, mut client, conn) = proxied_pair().await;
    with_timeout(PROMPT, proxy.cut_all()).await;
    assert_eq!(proxy.live_connections(), 0);
    match with_timeout(PROMPT, client.next()).await {
        Some(Err(WsError::Io(error))) => assert_eq!(error.kind(), ErrorKind::ConnectionReset),
        other => panic!("expected a connection reset, got {other:?}"),
    }
    assert_eq!(with_timeout(PROMPT, conn.closed()).await, None);
}

#[tokio::test]
async fn proxy_refuse_resets_new_connections_only() {
    let (_upstream, proxy, mut client, conn) = proxied_pair().await;
    proxy.refuse(true);
    let refused = with_timeout(PROMPT, ws_connect(proxy.url("/feed"))).await;
    assert!(
        refused.is_err(),
        "refused connection must fail the handshake"
    );
    conn.send_text("still here").await.expect("send");
    assert_eq!(next_message(&mut client).await, Message::text("still here"));

    proxy.refuse(false);
    let _again = connect_ok(&proxy.url("/feed")).await;
    proxy
        .wait_connections(3, PROMPT)
        .await
        .expect("three connections");
}

#[tokio::test]
async fn proxy_blackhole_of_existing_connections_lets_new_ones_through() {
    let (upstream, proxy, mut client, conn) = proxied_pair().await;
    proxy.set_mode_existing(Mode::Blackhole);
    assert_eq!(proxy.mode(), Mode::Pass);
    client
        .send(Message::Ping("anyone".into()))
        .await
        .expect("client pings");
    assert!(tokio::time::timeout(QUIET, client.next()).await.is_err());
    assert_eq!(conn.pings_seen(), 0);

    let (mut second, second_conn) = connected_pair(&upstream, &proxy.url("/feed")).await;
    second_conn.send_text("fresh").await.expect("send");
    assert_eq!(next_message(&mut second).await, Message::text("fresh"));
}

#[tokio::test]
async fn proxy_stall_builds_backpressure_on_the_writer() {
    let (_upstream, proxy, mut client, conn) = proxied_pair().await;
    proxy.set_mode(Mode::Stall);
    let chunk = vec![7u8; 1024 * 1024];
    // Loopback buffers hold a few MiB at most; well before 64 MiB the writer must block.
    let mut sent = 0usize;
    let mut blocked = false;
    for _ in 0..64 {
        match tokio::time::timeout(QUIET, conn.send_binary(&chunk)).await {
            Ok(written) => {
                written.expect("write while stalled");
                sent += 1;
            }
            Err(_) => {
                blocked = true;
                break;
            }
        }
    }
    assert!(
        blocked,
        "{sent} MiB written into a stalled proxy without blocking"
    );

    proxy.set_mode(Mode::Pass);
    // The blocked chunk was already queued, so it arrives too.
    for _ in 0..=sent {
        assert_eq!(
            next_message(&mut client).await,
            Message::binary(chunk.clone())
        );
    }
}

/// A plain TCP server behind a proxy, and a client connected through it: for checking the
/// proxy byte by byte, without WebSocket framing in the way.
async fn raw_pair(proxy_setup: impl FnOnce(&ChaosProxy)) -> (ChaosProxy, TcpStream, TcpStream) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let proxy = ChaosProxy::start(listener.local_addr().expect("addr")).await;
    proxy_setup(&proxy);
    let client = with_timeout(PROMPT, TcpStream::connect(proxy.addr()))
        .await
        .expect("connect through the proxy");
    let (server, _) = with_timeout(PROMPT, listener.accept())
        .await
        .expect("the proxy connects on");
    (proxy, client, server)
}

#[tokio::test]
async fn proxy_slices_and_throttles_without_changing_the_bytes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (proxy, mut client, mut server) = raw_pair(|_| {}).await;
    proxy.update(|link| {
        link.to_client.shape.slice = Some(1);
        link.to_client.shape.rate = Some(20_000);
    });
    let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    let started = std::time::Instant::now();
    server.write_all(&data).await.expect("server writes");
    let mut got = vec![0u8; data.len()];
    let mut reads = 0;
    let mut filled = 0;
    while filled < got.len() {
        let n = with_timeout(PROMPT, client.read(&mut got[filled..]))
            .await
            .expect("client reads");
        assert!(n > 0, "closed early");
        filled += n;
        reads += 1;
    }
    let took = started.elapsed();
    assert_eq!(got, data);
    assert!(reads > 20, "sliced bytes arrived in {reads} reads");
    // 10,000 bytes at 20,000 bytes/s.
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_secs(3),
        "{took:?}"
    );
}

#[tokio::test]
async fn proxy_plan_resets_a_connection_after_an_exact_byte_count() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_proxy, mut client, mut server) = raw_pair(|proxy| {
        proxy.set_plan(|index, link| {
            if index == 0 {
                link.to_client.shape.reset_after = Some(37);
            }
        })
    })
    .await;
    server.write_all(&[5u8; 100]).await.expect("server writes");
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    let error = loop {
        match with_timeout(PROMPT, client.read(&mut buf)).await {
            Ok(0) => panic!("FIN instead of a reset after {} bytes", got.len()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(error) => break error,
        }
    };
    assert_eq!(got.len(), 37);
    assert_eq!(error.kind(), ErrorKind::ConnectionReset);
}

#[tokio::test]
async fn proxy_stalls_one_direction_and_lets_the_other_flow() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (proxy, mut client, mut server) = raw_pair(|_| {}).await;
    proxy.update_existing(|link| link.to_upstream.mode = Mode::Stall);
    client.write_all(b"held").await.expect("client writes");
    server.write_all(b"flows").await.expect("server writes");
    let mut buf = [0u8; 16];
    let n = with_timeout(PROMPT, client.read(&mut buf))
        .await
        .expect("read");
    assert_eq!(&buf[..n], b"flows");
    assert!(tokio::time::timeout(QUIET, server.read(&mut buf))
        .await
        .is_err());
    assert_eq!(proxy.mode(), Mode::Pass, "new connections are not stalled");
    proxy.update_existing(|link| link.to_upstream.mode = Mode::Pass);
    let n = with_timeout(PROMPT, server.read(&mut buf))
        .await
        .expect("read");
    assert_eq!(&buf[..n], b"held");
}
