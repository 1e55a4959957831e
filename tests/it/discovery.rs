//! URL discovery (issue 13, item 8): `url = { post = "…" }` against a fake Slack
//! `apps.connections.open` whose URLs are single-use, and `url = { command = [...] }`. The URL is
//! discovered for every attempt, never reused, and never shown beyond `scheme://host:port/…`.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ws_sidecar::endpoint::State;
use ws_sidecar::proto;

use crate::support::daemon::{next_message, start_daemon, subscribe};
use crate::support::discovery::{ticket_of, Answer, SocketMode, APP_TOKEN};
use crate::support::{FakeUpstream, Reply};

const T: Duration = Duration::from_secs(15);

/// The Slack recipe's discovery table, with the app token in `token_file`.
fn slack_endpoint(discovery_url: &str, token_file: &std::path::Path) -> String {
    format!(
        "[endpoints.slack]\n\
         url = {{ post = \"{discovery_url}\", token = {{ file = \"{}\" }}, error_pointer = \"/error\", \
         auth_errors = [\"invalid_auth\", \"not_authed\", \"token_revoked\"] }}\n\
         backoff = {{ initial = \"50ms\", max = \"200ms\", min_delay = \"20ms\" }}\n",
        token_file.display()
    )
}

fn token_file(dir: &tempfile::TempDir, token: &str) -> std::path::PathBuf {
    let path = dir.path().join("app-token");
    std::fs::write(&path, format!("{token}\n")).expect("token file");
    path
}

/// Every log line of this test process, from the moment [`capture_logs`] is first called.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("lock")).into_owned()
    }
}

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The process-wide capture, installed as the global subscriber on first use.
///
/// Global, not a thread's default (`set_default`): with a scoped subscriber, tracing's
/// per-callsite interest cache, shared with the tests running on other threads, sometimes kept
/// this thread's INFO and DEBUG events and spans disabled (seen in CI: only a WARN line was
/// captured), so the ticket check could pass without having seen the lines that matter. Other
/// tests' lines land here too; the checks below pick this test's by its upstream's address.
fn capture_logs() -> Captured {
    static CAPTURED: std::sync::OnceLock<Captured> = std::sync::OnceLock::new();
    CAPTURED
        .get_or_init(|| {
            let captured = Captured::default();
            let writer = captured.clone();
            let subscriber = tracing_subscriber::fmt()
                .with_max_level(tracing::Level::DEBUG)
                .with_ansi(false)
                .with_writer(move || writer.clone())
                .finish();
            tracing::subscriber::set_global_default(subscriber)
                .expect("no other global subscriber in this test binary");
            captured
        })
        .clone()
}

#[tokio::test]
async fn slack_urls_are_discovered_for_every_connection_and_never_shown() {
    let logs = capture_logs();
    let slack = SocketMode::start(&[]).await;
    let dir = crate::support::temp_dir();
    let token = token_file(&dir, APP_TOKEN);
    let d = start_daemon(&slack_endpoint(&slack.url, &token)).await;

    let c1 = slack
        .upstream
        .next_accepted_within(T)
        .await
        .expect("connects");
    let mut client = d.grpc().await;
    let mut s = subscribe(&mut client, "slack", None).await;
    c1.send_text(r#"{"type":"hello","num_connections":1}"#)
        .await
        .expect("send");
    assert_eq!(
        &next_message(&mut s, T).await.data[..],
        br#"{"type":"hello","num_connections":1}"#
    );

    // Slack refreshes the connection: a new URL is asked for, not the old one reused.
    c1.close(1001, "refresh").await.expect("close");
    let c2 = slack
        .upstream
        .next_accepted_within(T)
        .await
        .expect("reconnects");
    c2.send_text(r#"{"type":"events_api","envelope_id":"e1"}"#)
        .await
        .expect("send");
    assert_eq!(
        &next_message(&mut s, T).await.data[..],
        br#"{"type":"events_api","envelope_id":"e1"}"#
    );
    assert_eq!(slack.calls(), 2, "one discovery per connection");
    let tickets: Vec<String> = slack
        .upstream
        .attempts()
        .iter()
        .filter_map(|a| ticket_of(&a.target))
        .collect();
    assert_eq!(tickets, slack.issued(), "each ticket used once, in order");
    assert!(slack.refused().is_empty(), "no reused ticket");

    // Status and state reasons show only scheme://host:port/…, logs never the ticket.
    let addr = slack.upstream.addr();
    let ep = d.endpoint("slack");
    assert_eq!(ep.url(), format!("ws://{addr}/…"));
    assert_eq!(ep.state().reason, format!("connected to ws://{addr}/…"));
    let status = client
        .get_status(proto::GetStatusRequest { endpoint: None })
        .await
        .expect("status")
        .into_inner();
    let status = format!("{status:?}");
    let all = logs.text();
    // This test's lines: the ones naming its upstream or its discovery endpoint (every URL,
    // redacted or not, does).
    let (upstream, discovery) = (addr.to_string(), slack.url.split('/').nth(2).unwrap_or("?"));
    let logged: String = all
        .lines()
        .filter(|l| l.contains(&upstream) || l.contains(discovery))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(
        logged.contains(&format!("connected to ws://{addr}/…")) && logged.contains("DEBUG"),
        "logs were captured, INFO and DEBUG included:\n{logged}"
    );
    for ticket in slack.issued() {
        assert!(!status.contains(&ticket), "status shows a ticket: {status}");
        assert!(
            !all.contains(&ticket),
            "a log line shows a ticket:\n{logged}"
        );
    }
    for secret in ["ticket", "/link", APP_TOKEN] {
        assert!(!status.contains(secret), "status shows {secret}: {status}");
        assert!(!logged.contains(secret), "logs show {secret}:\n{logged}");
    }
    d.stop().await;
}

#[tokio::test]
async fn a_failing_discovery_backs_off_and_recovers() {
    let slack = SocketMode::start(&[
        Answer::Status(500),
        Answer::Json(r#"{"ok":false,"error":"ratelimited"}"#),
    ])
    .await;
    let dir = crate::support::temp_dir();
    let token = token_file(&dir, APP_TOKEN);
    let d = start_daemon(&slack_endpoint(&slack.url, &token)).await;
    let ep = d.endpoint("slack");
    let mut states = ep.state_events();
    let _c = slack
        .upstream
        .next_accepted_within(T)
        .await
        .expect("recovers");
    d.wait_state("slack", State::Connected, T).await;
    let mut reasons = Vec::new();
    while let Ok(ev) = states.try_recv() {
        if ev.state == State::Backoff {
            reasons.push(ev.reason);
        }
    }
    let shown = format!("url discovery POST {}", slack.url);
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(
        reasons[0].starts_with(&format!(
            "{shown}: HTTP 500 Internal Server Error; retrying in "
        )),
        "{reasons:?}"
    );
    assert!(
        reasons[1].starts_with(&format!(
            "{shown}: answered error \"ratelimited\"; retrying in "
        )),
        "{reasons:?}"
    );
    assert_eq!(slack.calls(), 3);
    d.stop().await;
}

#[tokio::test]
async fn invalid_auth_is_an_auth_failure() {
    let slack = SocketMode::start(&[]).await;
    let dir = crate::support::temp_dir();
    let token = token_file(&dir, "xapp-1-wrong");
    let d = start_daemon(&slack_endpoint(&slack.url, &token)).await;
    let failed = d.wait_state("slack", State::Failed, T).await;
    assert_eq!(
        failed.reason,
        format!(
            "url discovery POST {}: answered error \"invalid_auth\" (3 consecutive auth failures)",
            slack.url
        )
    );
    assert_eq!(
        slack.calls(),
        3,
        "auth.max_failures (3) attempts, then failed"
    );
    assert_eq!(slack.upstream.accepted(), 0);
    assert!(!failed.reason.contains("xapp-1-wrong"));
    d.stop().await;
}

#[tokio::test]
async fn a_command_gives_the_url_for_every_attempt() {
    let up = FakeUpstream::start_with(|_, _| Reply::Accept).await;
    let dir = crate::support::temp_dir();
    // Prints ws://…/c/N, N counting the runs; `mode` set to "fail" or "https" breaks it.
    let script = dir.path().join("discover.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nd={0}\ncase \"$(cat $d/mode 2>/dev/null)\" in\n  fail) exit 3;;\n  https) echo https://127.0.0.1/secret-path; exit 0;;\nesac\n\
             n=$(( $(cat $d/n 2>/dev/null || echo 0) + 1 ))\necho $n > $d/n\necho \"  ws://{1}/c/$n?key=s3cr3t  \"\n",
            dir.path().display(),
            up.addr()
        ),
    )
    .expect("script");
    let d = start_daemon(&format!(
        "[endpoints.cmd]\nurl = {{ command = [\"/bin/sh\", \"{}\"] }}\n\
         backoff = {{ initial = \"50ms\", max = \"100ms\", min_delay = \"20ms\" }}\n\
         [endpoints.cmd.resume]\nid_pointer = \"/id\"\nquery = \"since\"\n",
        script.display()
    ))
    .await;
    let c1 = up.next_accepted_within(T).await.expect("connects");
    assert_eq!(c1.uri().to_string(), "/c/1?key=s3cr3t");
    let mut client = d.grpc().await;
    let mut s = subscribe(&mut client, "cmd", None).await;
    c1.send_text(r#"{"id":7}"#).await.expect("send");
    next_message(&mut s, T).await;
    let ep = d.endpoint("cmd");
    assert_eq!(ep.url(), format!("ws://{}/…", up.addr()));

    // A failing program and a URL of the wrong scheme are connect failures, named by the
    // program and never showing its output.
    let mut states = ep.state_events();
    std::fs::write(dir.path().join("mode"), "fail").expect("mode");
    c1.close(1012, "restart").await.expect("close");
    let program = "url command /bin/sh";
    let failed = loop {
        let ev = states.recv().await.expect("state");
        if ev.state == State::Backoff && ev.reason.starts_with(program) {
            break ev.reason;
        }
    };
    assert!(
        failed.starts_with("url command /bin/sh: exited with exit status: 3; retrying in "),
        "{failed}"
    );
    std::fs::write(dir.path().join("mode"), "https").expect("mode");
    let wrong = loop {
        let ev = states.recv().await.expect("state");
        if ev.state == State::Backoff && ev.reason.contains("https") {
            break ev.reason;
        }
    };
    assert!(
        wrong.starts_with(
            "url command /bin/sh: gave a https:// URL; only ws:// or wss:// can be connected to; retrying in "
        ),
        "{wrong}"
    );
    assert!(!wrong.contains("secret-path"));
    std::fs::remove_file(dir.path().join("mode")).expect("mode");

    // Discovered afresh, with the resume position offered on it.
    let c2 = up.next_accepted_within(T).await.expect("reconnects");
    assert_eq!(c2.uri().to_string(), "/c/2?key=s3cr3t&since=7");
    assert_eq!(up.accepted(), 2);
    d.stop().await;
}
