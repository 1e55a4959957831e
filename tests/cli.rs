//! The real binary as a child process: config errors and exit codes, SIGTERM handling, client
//! commands, and the demo.

#[path = "support/mod.rs"]
mod support;

#[path = "cli/by_hand.rs"]
mod by_hand;
#[path = "cli/check_config.rs"]
mod check_config;
#[path = "cli/output.rs"]
mod output;
#[path = "cli/publish.rs"]
mod publish;
#[path = "cli/readme.rs"]
mod readme;
#[path = "cli/reload.rs"]
mod reload;
#[path = "cli/share.rs"]
mod share;
#[path = "cli/tail.rs"]
mod tail;
#[path = "cli/unreachable.rs"]
mod unreachable;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::{FakeUpstream, Reply};

use support::process::{write_config, Spawned, BIN};

#[test]
fn check_config_reports_every_mistake_and_exits_78() {
    let dir = support::temp_dir();
    let path = write_config(
        dir.path(),
        r#"
[grpc]
listen = ["unix:/tmp/x.sock"]
bogus = 1

[endpoints.prices]
url = "http://not-a-websocket"

[endpoints.prices.heartbeat]
ping_interval = "ten seconds"
"#,
    );
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "grpc.bogus",
        "endpoints.prices.url",
        "endpoints.prices.heartbeat.ping_interval: invalid duration \"ten seconds\"",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
    assert!(err.contains("config.toml"), "errors name the file:\n{err}");
}

#[test]
fn check_config_accepts_a_minimal_file() {
    let dir = support::temp_dir();
    let path = write_config(
        dir.path(),
        "[endpoints.prices]\nurl = \"wss://stream.example.com/prices\"\n",
    );
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .expect("run");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("prices"));
}

/// Every line of `check-config`'s output ends with a newline and the verdict is a line of its
/// own (it was glued to the summary's last line, in a terminal and in the journal alike).
#[test]
fn check_config_prints_whole_lines_and_the_verdict_last() {
    let dir = support::temp_dir();
    let path = write_config(
        dir.path(),
        "[endpoints.prices]\nurl = \"wss://stream.example.com/prices\"\n\n\
         [endpoints.trades]\nurl = \"wss://stream.example.com/trades\"\n",
    );
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8(out.stdout).expect("utf-8");
    assert!(
        text.ends_with('\n'),
        "the last line ends with a newline:\n{text:?}"
    );
    let lines: Vec<&str> = text.lines().collect();
    let shown = path.display().to_string();
    assert_eq!(lines[0], format!("config    {shown}"), "{text}");
    assert_eq!(lines[lines.len() - 1], format!("{shown}: ok"), "{text}");
    assert_eq!(
        lines[lines.len() - 2],
        "  access      subscribe everyone; publish everyone",
        "{text}"
    );
    assert_eq!(
        lines.iter().filter(|l| l.contains(": ok")).count(),
        1,
        "{text}"
    );
    // Global lines (`label     value`), then per endpoint a blank line, its header and indented
    // lines.
    let mut endpoints = Vec::new();
    let mut after_blank = false;
    for line in &lines[..lines.len() - 1] {
        if line.is_empty() {
            after_blank = true;
        } else if after_blank {
            let name = line.strip_prefix("endpoint ").expect("endpoint header");
            endpoints.push(name.split_whitespace().next().expect("name").to_owned());
            after_blank = false;
        } else if !endpoints.is_empty() {
            assert!(
                line.starts_with("  ") && line.as_bytes()[2] != b' ',
                "{line:?}"
            );
        } else {
            assert!(!line.starts_with(' '), "{line:?}");
        }
    }
    assert_eq!(endpoints, ["prices", "trades"], "{text}");
}

#[test]
fn run_with_a_bad_config_exits_78_and_usage_errors_64() {
    let dir = support::temp_dir();
    let path = write_config(dir.path(), "[endpoints.a]\n");
    let st = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .expect("run");
    assert_eq!(st.status.code(), Some(78));
    let st = Command::new(BIN)
        .args(["frobnicate"])
        .output()
        .expect("run");
    assert_eq!(st.status.code(), Some(64));
}

#[test]
fn client_commands_exit_69_when_the_daemon_is_unreachable() {
    let dir = support::temp_dir();
    let sock = format!("unix:{}", dir.path().join("none.sock").display());
    for args in [
        vec!["status"],
        vec!["reconnect", "a"],
        vec!["reset-resume", "a"],
        vec!["reload"],
        vec!["send", "a", "x"],
        vec!["tail", "a"],
        vec!["tail", "a", "--key", "k"],
        vec!["tail", "a", "b", "--follow"],
        vec!["request", "a", "{}"],
        vec!["status", "a"],
        vec!["outbox", "a"],
        vec!["outbox", "a", "--clear", "--yes"],
    ] {
        let out = Command::new(BIN)
            .args(&args)
            .args(["--grpc", &sock])
            .output()
            .expect("run");
        assert_eq!(
            out.status.code(),
            Some(69),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn spawn_daemon(dir: &std::path::Path, upstream_url: &str, extra: &str) -> Spawned {
    support::process::spawn_daemon(
        dir,
        &format!("[endpoints.a]\nurl = \"{upstream_url}\"\n{extra}"),
    )
}

fn wait_for_socket(path: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "daemon did not bind {}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn sigterm_exits_promptly(mut child: Spawned) {
    let pid = child.id().to_string();
    let sent = Instant::now();
    let st = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(st.success());
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            assert_eq!(status.code(), Some(0), "exit code after SIGTERM");
            break;
        }
        assert!(
            sent.elapsed() < Duration::from_secs(5),
            "daemon did not exit within 5 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_mid_backoff_and_mid_connect_exits_0_within_5s() {
    // Mid-backoff: an upstream that always answers 503, with long delays.
    let refusing = FakeUpstream::start_with(|_, _| Reply::reject(503, &[])).await;
    let dir = support::temp_dir();
    let child = spawn_daemon(
        dir.path(),
        &refusing.url("/"),
        "[endpoints.a.backoff]\ninitial = \"60s\"\nmin_delay = \"30s\"\nmax = \"60s\"",
    );
    refusing
        .wait_attempts(1, Duration::from_secs(10))
        .await
        .expect("first attempt");
    sigterm_exits_promptly(child);

    // Mid-connect: the handshake never completes and connect_timeout is long.
    let hanging = FakeUpstream::start_with(|_, _| Reply::Hang).await;
    let dir = support::temp_dir();
    let child = spawn_daemon(dir.path(), &hanging.url("/"), "connect_timeout = \"60s\"");
    hanging
        .wait_attempts(1, Duration::from_secs(10))
        .await
        .expect("attempt");
    wait_for_socket(&dir.path().join("grpc.sock"));
    sigterm_exits_promptly(child);
    assert!(
        !dir.path().join("grpc.sock").exists(),
        "socket removed at exit"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn status_send_and_reconnect_against_a_running_daemon() {
    let up = FakeUpstream::start_with(|_, _| Reply::Accept).await;
    let dir = support::temp_dir();
    let mut child = spawn_daemon(dir.path(), &up.url("/feed"), "");
    let conn = up
        .next_accepted_within(Duration::from_secs(10))
        .await
        .expect("connects");
    let sock = format!("unix:{}", dir.path().join("grpc.sock").display());
    wait_for_socket(&dir.path().join("grpc.sock"));

    let out = Command::new(BIN)
        .args(["send", "a", "hello", "--grpc", &sock])
        .output()
        .expect("send");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "stored outbox_id=1",
        "prints the outbox id"
    );
    let frame = tokio::time::timeout(Duration::from_secs(10), conn.recv_text())
        .await
        .expect("sent");
    assert_eq!(frame, "hello");

    let out = Command::new(BIN)
        .args(["status", "--json", "--grpc", &sock])
        .output()
        .expect("status");
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v[0]["name"], "a");
    assert_eq!(v[0]["state"], "connected");

    let out = Command::new(BIN)
        .args(["reconnect", "nope", "--grpc", &sock])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1), "unknown endpoint is refused");
    let out = Command::new(BIN)
        .args(["reconnect", "a", "--grpc", &sock])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "a: reconnecting\n");
    let close = tokio::time::timeout(Duration::from_secs(10), conn.closed())
        .await
        .expect("closed");
    assert_eq!(close.map(|c| c.code), Some(1000));
    up.next_accepted_within(Duration::from_secs(10))
        .await
        .expect("reconnected");
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread")]
async fn reset_resume_forgets_the_stored_position() {
    let up = FakeUpstream::start_with(|_, _| Reply::Accept).await;
    let dir = support::temp_dir();
    let mut child = spawn_daemon(
        dir.path(),
        &up.url("/feed"),
        "[endpoints.a.resume]\nid_pointer = \"/id\"\nquery = \"since\"",
    );
    let conn = up
        .next_accepted_within(Duration::from_secs(10))
        .await
        .expect("connects");
    let sock = format!("unix:{}", dir.path().join("grpc.sock").display());
    wait_for_socket(&dir.path().join("grpc.sock"));
    // Once the message reaches a subscriber, its id is recorded (resume commits it first).
    let target = ws_sidecar::client::Target::parse(&sock).expect("address");
    let mut c = ws_sidecar::client::connect(&target)
        .await
        .expect("daemon reachable");
    let mut s = support::daemon::subscribe(&mut c, "a", None).await;
    support::daemon::next_event(&mut s, Duration::from_secs(10)).await;
    conn.send_text(r#"{"id":41}"#).await.expect("send");
    support::daemon::next_message(&mut s, Duration::from_secs(10)).await;
    let out = Command::new(BIN)
        .args(["reset-resume", "a", "--grpc", &sock])
        .output()
        .expect("reset-resume");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "a: resume position 41 forgotten; reconnecting without it\n"
    );
    let again = up
        .next_accepted_within(Duration::from_secs(10))
        .await
        .expect("reconnects");
    assert_eq!(again.uri().query(), None, "the position is not offered");
    let out = Command::new(BIN)
        .args(["reset-resume", "nope", "--grpc", &sock])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1), "unknown endpoint is refused");
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn demo_shows_a_reconnect_with_contiguous_seqs() {
    let out = Command::new(BIN)
        .args(["demo", "--duration", "10s"])
        .stdin(Stdio::null())
        .output()
        .expect("run demo");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("resumed: upstream resent"),
        "a resume is shown:\n{text}"
    );
    assert!(
        text.contains("  status page: http://127.0.0.1:"),
        "the status page is offered:\n{text}"
    );
    let summary = text
        .lines()
        .find(|l| l.starts_with("summary:"))
        .expect("summary line");
    assert!(summary.ends_with("contiguous: yes"), "{summary}");
    let reconnects: u64 = summary
        .split(", ")
        .find_map(|p| p.strip_suffix(" reconnects"))
        .and_then(|n| n.parse().ok())
        .expect("reconnect count");
    assert!(reconnects >= 1, "{summary}");
    // Seqs printed are contiguous from the first one.
    let seqs: Vec<u64> = text
        .lines()
        .filter_map(|l| l.split_whitespace().skip_while(|w| *w != "seq").nth(1))
        .filter_map(|n| n.parse().ok())
        .collect();
    assert!(seqs.len() > 20, "messages were shown");
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "seqs contiguous");
}

/// Waits for `child` to exit within `within` (killing it if it does not): its exit code and
/// everything it wrote on stderr.
pub fn finish(child: Child, within: Duration) -> (Option<i32>, String) {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(within) {
        Ok(out) => {
            let out = out.expect("wait for the child");
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        }
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("the command did not exit within {within:?}");
        }
    }
}
