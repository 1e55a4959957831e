//! Hostile local clients on the NDJSON socket: lines at and over the limit, JSON that is
//! invalid, too deep or of the wrong shape, unknown ops, floods of requests, clients that never
//! read. Each gets an error line or only hurts itself; everyone else carries on.

use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use ws_sidecar::api::limits::RequestLimits;
use ws_sidecar::endpoint::State;

use crate::support::daemon::{next_message, subscribe};
use crate::support::{flood, FakeUpstream, Reply};
use crate::{endpoint, with_bystander, within, T};

/// A request line padded with spaces (insignificant in JSON) to exactly `len` bytes.
fn padded(request: &serde_json::Value, len: usize) -> String {
    let mut line = request.to_string();
    assert!(line.len() <= len);
    line.push_str(&" ".repeat(len - line.len()));
    line
}

#[tokio::test]
async fn bad_lines_each_get_an_error_and_the_connection_stays_usable() {
    let up = FakeUpstream::start_with(|_, _| Reply::Accept).await;
    // The line limit follows the largest max_message_size; a small one keeps the lines small.
    let (d, mut by) = with_bystander(&endpoint(
        "feed",
        &up.url("/feed"),
        "max_message_size = \"256KiB\"",
    ))
    .await;
    let _conn = up.next_accepted_within(T).await.expect("connects");
    d.wait_state("feed", State::Connected, T).await;
    let max_line = RequestLimits::for_message(256 * 1024).ndjson_line;

    let mut bad = d.ndjson().await;
    // Nesting 100,000 deep must end in an error, not a stack overflow.
    let deep = "[".repeat(100_000);
    let deep_equals = format!(
        "{{\"op\":\"subscribe\",\"endpoint\":\"feed\",\"filters\":[{{\"pointer\":\"/a\",\"equals\":{deep}"
    );
    let cases: Vec<(String, &str, &str)> = vec![
        (deep, "bad_request", "invalid JSON"),
        (deep_equals, "bad_request", "recursion limit exceeded"),
        (
            "{\"op\":\"status\"".to_owned(),
            "bad_request",
            "invalid JSON",
        ),
        ("[]".to_owned(), "bad_request", "invalid request"),
        ("{}".to_owned(), "bad_request", "invalid request"),
        ("{\"op\":null}".to_owned(), "bad_request", "invalid request"),
        (
            "{\"op\":\"STATUS\"}".to_owned(),
            "bad_request",
            "invalid request",
        ),
        (
            "{\"op\":\"status\",\"extra\":1}".to_owned(),
            "bad_request",
            "unknown field",
        ),
        (
            "{\"op\":\"subscribe\",\"endpoint\":\"feed\",\"from_seq\":-1}".to_owned(),
            "bad_request",
            "invalid",
        ),
        (
            "{\"op\":\"subscribe\",\"endpoint\":\"feed\",\"from_seq\":\"7\"}".to_owned(),
            "bad_request",
            "invalid",
        ),
        (
            "{\"op\":\"subscribe\",\"endpoint\":\"feed\",\"from_seq\":1e400}".to_owned(),
            "bad_request",
            "invalid",
        ),
        (
            "{\"op\":\"subscribe\",\"endpoint\":7}".to_owned(),
            "bad_request",
            "invalid",
        ),
        (
            "{\"op\":\"subscribe\",\"endpoint\":\"feed\",\"filters\":{}}".to_owned(),
            "bad_request",
            "invalid",
        ),
        (
            "{\"op\":\"publish\",\"endpoint\":\"feed\"}".to_owned(),
            "bad_request",
            "missing field",
        ),
        (
            "{\"op\":\"publish\",\"endpoint\":\"feed\",\"data\":\"%%%\",\"binary\":true}"
                .to_owned(),
            "invalid_argument",
            "base64",
        ),
        (
            "{\"op\":\"publish\",\"endpoint\":\"feed\",\"data\":\"x\",\"wait\":\"later\"}"
                .to_owned(),
            "invalid_argument",
            "wait",
        ),
        (
            "{\"op\":\"publish\",\"endpoint\":\"nope\",\"data\":\"x\"}".to_owned(),
            "not_found",
            "nope",
        ),
        (
            "{\"op\":\"status\",\"endpoint\":\"nope\"}".to_owned(),
            "not_found",
            "nope",
        ),
        (
            "{\"op\":\"subscribe\",\"endpoint\":\"fed\"}".to_owned(),
            "not_found",
            "unknown endpoint \"fed\"; did you mean \"feed\"?",
        ),
        ("\u{0}\u{0}\u{0}".to_owned(), "bad_request", "invalid JSON"),
        (
            "\u{feff}{\"op\":\"status\"}".to_owned(),
            "bad_request",
            "invalid JSON",
        ),
    ];
    for (line, code, words) in &cases {
        bad.send_line(line).await;
        let e = bad.recv(T).await;
        let shown = &line[..line.len().min(60)];
        assert_eq!(e["type"], "error", "{shown}: {e}");
        assert_eq!(e["code"], *code, "{shown}: {e}");
        let message = e["message"].as_str().unwrap_or_default();
        assert!(message.contains(words), "{shown}: {message}");
        assert!(
            message.len() < 1024,
            "error messages stay short: {} bytes",
            message.len()
        );
    }

    // At the limit it is read; one byte over, refused, and the next line is read again.
    bad.send_line(&padded(&json!({"op": "status"}), max_line))
        .await;
    assert_eq!(
        bad.recv(T).await["type"],
        "status",
        "a line of exactly the limit"
    );
    bad.send_line(&padded(&json!({"op": "status"}), max_line + 1))
        .await;
    assert_eq!(bad.recv(T).await["code"], "line_too_long");
    // CRLF endings and blank lines are fine.
    bad.w
        .write_all(b"\r\n\n{\"op\":\"status\"}\r\n")
        .await
        .expect("write");
    assert_eq!(bad.recv(T).await["type"], "status");

    // 10,000 bad lines in one write, replies read only afterwards: one error each, in order.
    let flood: String = (0..10_000)
        .map(|i| format!("{{\"op\":\"x{i}\"}}\n"))
        .collect();
    let (rd, mut wr) = UnixStream::connect(&d.stream_path)
        .await
        .expect("connect")
        .into_split();
    let writer = tokio::spawn(async move {
        wr.write_all(flood.as_bytes())
            .await
            .expect("write the flood");
        wr
    });
    let mut lines = BufReader::new(rd).lines();
    for i in 0..10_000 {
        let line = within(T, "an error line", lines.next_line())
            .await
            .expect("read")
            .expect("open");
        let e: serde_json::Value = serde_json::from_str(&line).expect("JSON");
        assert_eq!(e["code"], "bad_request", "line {i}");
        let message = e["message"].as_str().unwrap_or_default();
        assert!(message.contains(&format!("x{i}")), "line {i}: {e}");
    }
    let mut wr = writer.await.expect("writer");
    wr.write_all(b"{\"op\":\"status\"}\n").await.expect("write");
    let line = within(T, "status", lines.next_line())
        .await
        .expect("read")
        .expect("open");
    assert!(
        line.starts_with("{\"endpoints\"") || line.contains("\"type\":\"status\""),
        "{line}"
    );

    // Over the limit with no newline at all, then the client stops writing: still answered.
    let mut s = UnixStream::connect(&d.stream_path).await.expect("connect");
    s.write_all(&vec![b'x'; 2 * max_line]).await.expect("write");
    s.shutdown().await.expect("half-close");
    let mut reply = String::new();
    within(T, "the reply and EOF", s.read_to_string(&mut reply))
        .await
        .expect("read");
    assert!(reply.contains("line_too_long"), "{reply}");
    by.check(&d).await;
    d.stop().await;
}

#[tokio::test]
async fn clients_that_never_read_only_hurt_themselves() {
    let up = FakeUpstream::start_with(|_, _| Reply::Accept).await;
    let (d, mut by) = with_bystander(
        &(endpoint("feed", &up.url("/feed"), "") + "[endpoints.feed.replay]\nmessages = 2000\n"),
    )
    .await;
    let conn = up.next_accepted_within(T).await.expect("connects");
    d.wait_state("feed", State::Connected, T).await;

    // Subscribed, never reading.
    let mut stalled = Vec::new();
    for _ in 0..3 {
        let mut c = d.ndjson().await;
        c.send(json!({"op": "subscribe", "endpoint": "feed"})).await;
        stalled.push(c);
    }
    // Pipelining requests without reading a single reply.
    let mut deaf = UnixStream::connect(&d.stream_path).await.expect("connect");
    let requests = "{\"op\":\"status\"}\n".repeat(50_000);
    let deaf_writer = tokio::spawn(async move {
        // Blocks once the daemon stops reading this client: bounded, not buffered without end.
        let _ = deaf.write_all(requests.as_bytes()).await;
        deaf
    });
    let mut readers = d.ndjson().await;
    readers
        .send(json!({"op": "subscribe", "endpoint": "feed"}))
        .await;
    readers.recv_type("state", T).await;
    let mut client = d.grpc().await;
    let mut s = subscribe(&mut client, "feed", None).await;

    // 6 MB through the endpoint: far more than the stalled clients' socket buffers (and the
    // 2,000-message window) hold.
    const N: u64 = 6_000;
    let (_flood, pace) = flood::paced(conn, N, 1_000);
    within(
        Duration::from_secs(60),
        "the readers get everything",
        async {
            for seq in 1..=N {
                let m = next_message(&mut s, T).await;
                assert_eq!(m.seq, seq);
                let line = readers.recv_type("message", T).await;
                assert_eq!(line["seq"], seq);
                pace.read(seq);
            }
        },
    )
    .await;
    by.check(&d).await;
    assert!(
        !deaf_writer.is_finished(),
        "50,000 requests were buffered without being answered"
    );

    // A stalled client that starts reading: what its buffers held, then a gap, then the tail.
    let mut c = stalled.pop().expect("a stalled client");
    let mut last = 0u64;
    let mut gap = None;
    while last < N {
        let v = c.recv(T).await;
        match v["type"].as_str() {
            Some("state") => {}
            Some("message") => {
                let seq = v["seq"].as_u64().expect("seq");
                assert_eq!(seq, last + 1, "no hole without a gap");
                last = seq;
            }
            Some("gap") => {
                assert_eq!(v["reason"], "SLOW_SUBSCRIBER");
                assert_eq!(v["from_seq"].as_u64(), Some(last + 1));
                last = v["to_seq"].as_u64().expect("to_seq");
                gap = Some(v);
            }
            _ => panic!("unexpected {v}"),
        }
    }
    assert!(gap.is_some(), "the slow client was told what it missed");
    d.stop().await;
}
