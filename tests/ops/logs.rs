//! Log formats of the real binary: JSON lines and journald-style `<N>` priority prefixes
//! (chosen automatically when `$JOURNAL_STREAM` names stderr), both carrying the endpoint span
//! and the connection-attempt span; colour only on a terminal, and never with `NO_COLOR`.

use crate::support::process::Spawned;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::process::{daemon_config, pty, write_config, BIN};
use crate::support::{self, FakeUpstream, Reply};
use crate::{sigterm_and_wait, Lines, T};

/// The upgrade is logged at debug level, inside the connection-attempt span.
const FILTER: &str = "info,ws_sidecar::upstream::handshake=debug";

#[tokio::test(flavor = "multi_thread")]
async fn json_lines_carry_endpoint_and_connection_spans() {
    let up = FakeUpstream::start_with(|_, _| Reply::Accept).await;
    let dir = support::temp_dir();
    let eps = format!(
        "[log]\nformat = \"json\"\n[endpoints.a]\nurl = \"{}\"\n",
        up.url("/")
    );
    let config = write_config(dir.path(), &daemon_config(dir.path(), &eps));
    let mut child = Spawned::new(
        Command::new(BIN)
            .args(["run", "--config"])
            .arg(&config)
            .env("RUST_LOG", FILTER)
            .env_remove("JOURNAL_STREAM")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn daemon"),
    );
    let mut lines = Lines::spawn(child.stderr.take().expect("stderr"));
    let json = |l: &str| serde_json::from_str::<serde_json::Value>(l).ok();
    let handshake = lines.wait_for("a JSON line inside the connection span", T, |l| {
        json(l).is_some_and(|v| v["span"]["name"] == "connection")
    });
    let v = json(&handshake).expect("json");
    assert_eq!(v["span"]["attempt"], 1, "{handshake}");
    assert_eq!(v["spans"][0]["name"], "endpoint", "{handshake}");
    let state = lines.wait_for("a JSON `connected` state line", T, |l| {
        json(l).is_some_and(|v| v["fields"]["state"] == "connected")
    });
    let v = json(&state).expect("json");
    assert_eq!(v["level"], "INFO");
    // The `connected` transition is logged inside its connection's span, under the endpoint's.
    assert_eq!(v["span"]["name"], "connection", "{state}");
    assert_eq!(v["spans"][0]["endpoint"], "a", "{state}");
    tokio::task::block_in_place(|| sigterm_and_wait(&mut child));
}

#[tokio::test(flavor = "multi_thread")]
async fn journal_stream_on_stderr_switches_to_priority_prefixes() {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;
    let up = FakeUpstream::start_with(|_, _| Reply::Accept).await;
    let dir = support::temp_dir();
    let eps = format!("[endpoints.a]\nurl = \"{}\"\n", up.url("/"));
    let config = write_config(dir.path(), &daemon_config(dir.path(), &eps));
    // What systemd does: stderr is a stream it owns, named in JOURNAL_STREAM by device:inode.
    let (reader, writer) = std::io::pipe().expect("pipe");
    let meta = std::fs::metadata(format!("/proc/self/fd/{}", writer.as_raw_fd())).expect("stat");
    let mut child = Spawned::new(
        Command::new(BIN)
            .args(["run", "--config"])
            .arg(&config)
            .env("RUST_LOG", FILTER)
            .env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))
            .stdout(Stdio::null())
            .stderr(writer)
            .spawn()
            .expect("spawn daemon"),
    );
    let mut lines = Lines::spawn(reader);
    let handshake = lines.wait_for("a line inside the connection span", T, |l| {
        l.contains(":connection{attempt=1 ")
    });
    assert!(
        handshake.starts_with("<7>endpoint{endpoint=a}:connection{"),
        "{handshake}"
    );
    let state = lines.wait_for("a `connected` state line", T, |l| {
        l.contains("state=\"connected\"")
    });
    // Priority 6 (info), no timestamp or level word of our own (PRIORITY= carries the level),
    // the endpoint and connection spans.
    assert!(
        state.starts_with("<6>endpoint{endpoint=a}:connection{attempt=1}: "),
        "{state}"
    );
    tokio::task::block_in_place(|| sigterm_and_wait(&mut child));
    assert!(
        lines.seen.iter().all(|l| l.starts_with('<')),
        "{:?}",
        lines.seen
    );
}

/// A stderr nobody reads (a pipe that filled, a journald that cannot keep up) must not stall the
/// daemon: lines are dropped and counted instead, and reported once stderr drains.
#[tokio::test(flavor = "multi_thread")]
async fn a_stderr_nobody_reads_drops_lines_instead_of_stalling() {
    use crate::support::daemon::{next_message, subscribe};
    use crate::{free_port, http_async};
    use ws_sidecar::client::{self, Target};

    let up = FakeUpstream::start_with(|_, _| Reply::Accept).await;
    let dir = support::temp_dir();
    let port = free_port();
    let body = daemon_config(
        dir.path(),
        &format!("[endpoints.a]\nurl = \"{}\"\n", up.url("/")),
    )
    .replace(
        "[http]\nlisten = \"\"",
        &format!("[http]\nlisten = \"127.0.0.1:{port}\""),
    );
    let config = write_config(dir.path(), &body);
    let (reader, writer) = std::io::pipe().expect("pipe");
    let mut child = Spawned::new(
        Command::new(BIN)
            .args(["run", "--config"])
            .arg(&config)
            // Every frame and HTTP/2 event logs a line: far more than the pipe and the queue hold.
            .env("RUST_LOG", "trace")
            .env_remove("JOURNAL_STREAM")
            .stdout(Stdio::null())
            .stderr(writer)
            .spawn()
            .expect("spawn daemon"),
    );
    crate::support::process::wait_ready(dir.path());
    let conn = up.next_accepted_within(T).await.expect("connects");
    let target = Target::parse(&format!("unix:{}", dir.path().join("grpc.sock").display()))
        .expect("address");
    let mut c = client::connect(&target).await.expect("daemon reachable");
    let mut sub = subscribe(&mut c, "a", None).await;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let dropped = || async {
        let (status, body) = http_async(addr, "GET", "/metrics").await;
        assert_eq!(status, 200, "{body}");
        body.lines()
            .find_map(|l| l.strip_prefix("ws_sidecar_log_lines_dropped_total "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .expect("ws_sidecar_log_lines_dropped_total in /metrics")
    };
    // Traffic in rounds until lines are being dropped; every round is delivered in full, which
    // is the point: with stderr stuck, a runtime thread blocked in write(2) would stop this.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut id = 0u64;
    loop {
        for _ in 0..500 {
            id += 1;
            conn.send_text(&format!("{{\"id\":{id}}}"))
                .await
                .expect("send");
        }
        for want in id - 499..=id {
            let m = next_message(&mut sub, T).await;
            assert_eq!(m.seq, want, "delivered in order, nothing lost");
        }
        if dropped().await > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no log line dropped after {id} messages at trace level"
        );
    }
    // Once stderr is read again, the writer catches up and says what it lost.
    let mut lines = Lines::spawn(reader);
    lines.wait_for("the dropped-lines report", T, |l| {
        l.contains("log lines dropped: stderr did not keep up")
    });
    tokio::task::block_in_place(|| sigterm_and_wait(&mut child));
}

/// Starts the daemon (text format, `RUST_LOG=info`, `NO_COLOR` as given) with `stderr`.
fn spawn_text_daemon(
    dir: &std::path::Path,
    stderr: impl Into<Stdio>,
    no_color: Option<&str>,
) -> Spawned {
    let config = write_config(
        dir,
        &daemon_config(dir, "[endpoints.a]\nurl = \"ws://127.0.0.1:9/\"\n"),
    );
    let mut cmd = Command::new(BIN);
    cmd.args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .env_remove("JOURNAL_STREAM")
        .env_remove("NO_COLOR")
        .stdout(Stdio::null())
        .stderr(stderr);
    if let Some(v) = no_color {
        cmd.env("NO_COLOR", v);
    }
    Spawned::new(cmd.spawn().expect("spawn daemon"))
}

/// Log lines into a file or a pipe carry no terminal escape codes: a log file, `journalctl`
/// without the journal's own detection, or `grep` would show them as `^[[2m` noise.
#[test]
fn logs_into_a_file_or_a_pipe_have_no_colour_codes() {
    let dir = support::temp_dir();
    let path = dir.path().join("daemon.log");
    let file = std::fs::File::create(&path).expect("create log file");
    let mut child = spawn_text_daemon(dir.path(), file, None);
    crate::support::process::wait_ready(dir.path());
    sigterm_and_wait(&mut child);
    let text = std::fs::read_to_string(&path).expect("read log file");
    assert!(text.contains("ws-sidecar started"), "{text}");
    assert!(
        !text.contains('\x1b'),
        "escape codes in a log file:\n{text:?}"
    );

    let dir = support::temp_dir();
    let (reader, writer) = std::io::pipe().expect("pipe");
    let mut child = spawn_text_daemon(dir.path(), writer, None);
    let mut lines = Lines::spawn(reader);
    lines.wait_for("the start line", T, |l| l.contains("ws-sidecar started"));
    sigterm_and_wait(&mut child);
    assert!(
        lines.seen.iter().all(|l| !l.contains('\x1b')),
        "escape codes in a pipe:\n{:?}",
        lines.seen
    );
}

/// On a terminal the text format is coloured, unless `NO_COLOR` is set to anything but the
/// empty string (https://no-color.org).
#[test]
fn a_terminal_gets_colour_unless_no_color_is_set() {
    for (no_color, coloured) in [(None, true), (Some(""), true), (Some("1"), false)] {
        let dir = support::temp_dir();
        let (reader, terminal) = pty();
        let mut child = spawn_text_daemon(dir.path(), terminal, no_color);
        let mut lines = Lines::spawn(reader);
        let started = lines.wait_for("the start line", T, |l| l.contains("ws-sidecar started"));
        sigterm_and_wait(&mut child);
        assert_eq!(
            started.contains("\x1b["),
            coloured,
            "NO_COLOR={no_color:?}: {started:?}"
        );
    }
}
