//! What happens to the commands' output when nobody reads it: a reader that left
//! (`| head -1`), a stdout that fails otherwise (a full disk), a closed stderr; and `send`'s
//! input, every line of which is published or named.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::process::{write_config, BIN};
use crate::support::{self, FakeUpstream, Reply};
use crate::{finish, spawn_daemon, wait_for_socket};

/// A pipe whose reader is already gone: the first write into it fails with EPIPE.
fn reader_gone() -> std::io::PipeWriter {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    writer
}

/// `send` reading stdin while its reader leaves after the first outbox id, as
/// `ws-sidecar send NAME < lines | head -1` does: every line is still published, in order.
#[tokio::test(flavor = "multi_thread")]
async fn send_publishes_every_stdin_line_after_its_reader_left() {
    let up = FakeUpstream::start_with(|_, _| Reply::Accept).await;
    let dir = support::temp_dir();
    let mut daemon = spawn_daemon(dir.path(), &up.url("/feed"), "");
    let conn = up
        .next_accepted_within(Duration::from_secs(10))
        .await
        .expect("connects");
    wait_for_socket(&dir.path().join("grpc.sock"));
    let sock = format!("unix:{}", dir.path().join("grpc.sock").display());

    let mut child = Command::new(BIN)
        .args(["send", "a", "--grpc", &sock])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn send");
    let mut stdin = child.stdin.take().expect("stdin");
    let stdout = child.stdout.take().expect("stdout");
    writeln!(stdin, "m1").expect("write the first line");
    // The first outbox id, then the reader goes away before any other line is sent.
    let first = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).map(|_| line)
    });
    let first = tokio::time::timeout(Duration::from_secs(10), first)
        .await
        .expect("first outbox id within 10 s")
        .expect("reader thread")
        .expect("read stdout");
    assert_eq!(first.trim(), "stored outbox_id=1", "the first outbox id");
    for i in 2..=50 {
        // On failure the child is gone; its exit code below says why.
        if writeln!(stdin, "m{i}").is_err() {
            break;
        }
    }
    drop(stdin);
    let (code, stderr) = tokio::task::block_in_place(|| finish(child, Duration::from_secs(20)));
    assert_eq!(
        code,
        Some(0),
        "send exits 0 once every line is published:\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    for i in 1..=50 {
        let frame = tokio::time::timeout(Duration::from_secs(10), conn.recv_text())
            .await
            .unwrap_or_else(|_| panic!("m{i} not sent upstream within 10 s"));
        assert_eq!(frame, format!("m{i}"));
    }
    let _ = daemon.kill();
    let _ = daemon.wait();
}

/// A stdin line that is not UTF-8 cannot be a text frame: it is named and skipped, the lines
/// after it are still sent, and the exit code (65) tells the script.
#[tokio::test(flavor = "multi_thread")]
async fn send_skips_a_line_that_is_not_utf8_and_sends_the_rest() {
    let up = FakeUpstream::start_with(|_, _| Reply::Accept).await;
    let dir = support::temp_dir();
    let mut daemon = spawn_daemon(dir.path(), &up.url("/feed"), "");
    let conn = up
        .next_accepted_within(Duration::from_secs(10))
        .await
        .expect("connects");
    wait_for_socket(&dir.path().join("grpc.sock"));
    let sock = format!("unix:{}", dir.path().join("grpc.sock").display());
    let mut child = Command::new(BIN)
        .args(["send", "a", "--grpc", &sock])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn send");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(b"first\r\n\xff\xfe\nthird\nlast without newline")
        .expect("write stdin");
    drop(stdin);
    let (code, stderr) = tokio::task::block_in_place(|| finish(child, Duration::from_secs(20)));
    assert_eq!(code, Some(65), "{stderr}");
    assert!(
        stderr.contains("stdin line 2 is not UTF-8, not sent"),
        "{stderr}"
    );
    for want in ["first", "third", "last without newline"] {
        let frame = tokio::time::timeout(Duration::from_secs(10), conn.recv_text())
            .await
            .unwrap_or_else(|_| panic!("{want:?} not sent upstream within 10 s"));
        assert_eq!(frame, want);
    }
    let _ = daemon.kill();
    let _ = daemon.wait();
}

/// Each command with its stdout a pipe nobody reads: it ends quietly with the exit code it would
/// have had, and one that only prints (the demo) stops instead of running on for nobody.
#[tokio::test(flavor = "multi_thread")]
async fn every_command_exits_quietly_when_its_reader_is_gone() {
    let up = FakeUpstream::start_with(|_, _| Reply::Accept).await;
    let dir = support::temp_dir();
    let mut daemon = spawn_daemon(dir.path(), &up.url("/feed"), "");
    let _conn = up
        .next_accepted_within(Duration::from_secs(10))
        .await
        .expect("connects");
    wait_for_socket(&dir.path().join("grpc.sock"));
    let sock = format!("unix:{}", dir.path().join("grpc.sock").display());
    let conf_dir = support::temp_dir();
    let config = write_config(
        conf_dir.path(),
        "[endpoints.prices]\nurl = \"wss://stream.example.com/prices\"\n",
    );
    let config = config.to_str().expect("utf-8 path");
    let commands: &[&[&str]] = &[
        &["--help"],
        &["--version"],
        &["check-config", "--config", config],
        &["status", "--grpc", &sock],
        &["status", "--json", "--grpc", &sock],
        &["tail", "a", "--grpc", &sock],
        &["send", "a", "x", "--grpc", &sock],
        // Would run for a minute; with nobody reading it stops at once.
        &["demo", "--duration", "60s"],
    ];
    for args in commands {
        let child = Command::new(BIN)
            .args(*args)
            .stdin(Stdio::null())
            .stdout(reader_gone())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let (code, stderr) = tokio::task::block_in_place(|| finish(child, Duration::from_secs(20)));
        assert_eq!(code, Some(0), "{args:?}:\n{stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}:\n{stderr}");
    }
    let _ = daemon.kill();
    let _ = daemon.wait();
}

/// Error messages into a stderr nobody reads: the exit code still says what went wrong.
#[test]
fn a_closed_stderr_keeps_the_exit_code() {
    let dir = support::temp_dir();
    let missing = format!("unix:{}", dir.path().join("none.sock").display());
    let invalid = write_config(dir.path(), "[endpoints.a]\n");
    let invalid = invalid.to_str().expect("utf-8 path");
    let cases: &[(&[&str], i32)] = &[
        (&["status", "--grpc", &missing], 69),
        (&["check-config", "--config", invalid], 78),
        (&["frobnicate"], 64),
    ];
    for (args, want) in cases {
        let child = Command::new(BIN)
            .args(*args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(reader_gone())
            .spawn()
            .expect("spawn");
        let (code, _) = finish(child, Duration::from_secs(20));
        assert_eq!(code, Some(*want), "{args:?}");
    }
}

/// A stdout that fails for another reason than a reader that left is an error worth saying:
/// 74 (EX_IOERR) and the OS's reason on stderr.
#[test]
fn a_failing_stdout_is_reported_and_exits_74() {
    let dir = support::temp_dir();
    let config = write_config(
        dir.path(),
        "[endpoints.prices]\nurl = \"wss://stream.example.com/prices\"\n",
    );
    let Ok(full) = std::fs::OpenOptions::new().write(true).open("/dev/full") else {
        println!("skipped: no /dev/full on this system");
        return;
    };
    let child = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&config)
        .stdout(full)
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let (code, stderr) = finish(child, Duration::from_secs(20));
    assert_eq!(code, Some(74), "{stderr}");
    assert!(
        stderr.contains("cannot write to stdout: No space left on device"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}
