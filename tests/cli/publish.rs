//! `send`, `status NAME` and `outbox` as a script (or a person at a terminal) runs them: the
//! real binary against an in-process daemon and a fake upstream.

use std::io::Write as _;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt as _;
use tokio::process::Command;
use tokio_tungstenite::tungstenite::Message;

use crate::support::daemon::{start_daemon, TestDaemon};
use crate::support::process::{pty, run_cli as run, BIN};
use crate::support::{FakeUpstream, Reply};
use crate::tail::grpc;

const T: Duration = Duration::from_secs(20);

/// Every result is labelled; empty stdin lines are skipped unless `--keep-empty`; `--binary`
/// sends base64 input as binary frames and names a line that is not base64.
#[tokio::test(flavor = "multi_thread")]
async fn send_labels_results_skips_empty_lines_and_sends_binary() {
    let up = FakeUpstream::start_with(|_, _| Reply::Accept).await;
    let d = start_daemon(&format!("[endpoints.a]\nurl = \"{}\"\n", up.url("/a"))).await;
    let conn = up.next_accepted_within(T).await.expect("connects");
    let g = grpc(&d);
    let next = || async {
        tokio::time::timeout(T, conn.recv())
            .await
            .expect("a frame in time")
            .expect("connection open")
    };

    let (code, out, err) = run(&["send", "a", "hello", "--grpc", &g], "").await;
    assert_eq!(
        (code, out.as_str()),
        (Some(0), "stored outbox_id=1\n"),
        "{err}"
    );
    assert_eq!(next().await, Message::text("hello"));
    let (code, out, err) = run(&["send", "a", "--wait-sent", "--grpc", &g], "x\n\n\ny\n").await;
    assert_eq!(
        (code, out.as_str()),
        (Some(0), "sent outbox_id=2\nsent outbox_id=3\n"),
        "empty lines are skipped: {err}"
    );
    assert_eq!(next().await, Message::text("x"));
    assert_eq!(next().await, Message::text("y"));
    let (code, out, err) = run(&["send", "a", "--keep-empty", "--grpc", &g], "\nz\n").await;
    assert_eq!((code, out.lines().count()), (Some(0), 2), "{err}");
    assert_eq!(next().await, Message::text(""));
    assert_eq!(next().await, Message::text("z"));

    let (code, out, err) = run(&["send", "a", "--binary", "AAEC/w==", "--grpc", &g], "").await;
    assert_eq!(
        (code, out.as_str()),
        (Some(0), "stored outbox_id=6\n"),
        "{err}"
    );
    assert_eq!(next().await, Message::binary(vec![0u8, 1, 2, 255]));
    let (code, out, err) = run(
        &["send", "a", "--binary", "--grpc", &g],
        "aGk=\nnot base64!\nYnll\n",
    )
    .await;
    assert_eq!(code, Some(65), "{err}");
    assert_eq!(out.lines().count(), 2, "the good lines are sent: {out}");
    assert!(err.contains("stdin line 2 is not base64"), "{err}");
    assert_eq!(next().await, Message::binary(b"hi".to_vec()));
    assert_eq!(next().await, Message::binary(b"bye".to_vec()));
    d.stop().await;
}

/// `--timeout` gives up on an answer that does not come (a `--wait-sent` while the upstream
/// is unreachable) with 124, saying the message may still be sent.
#[tokio::test(flavor = "multi_thread")]
async fn send_timeout_gives_up_with_124() {
    let up = FakeUpstream::start_with(|_, _| Reply::Hang).await;
    let d = start_daemon(&format!("[endpoints.a]\nurl = \"{}\"\n", up.url("/a"))).await;
    let g = grpc(&d);
    let started = std::time::Instant::now();
    let (code, out, err) = run(
        &[
            "send",
            "a",
            "x",
            "--wait-sent",
            "--timeout",
            "300ms",
            "--grpc",
            &g,
        ],
        "",
    )
    .await;
    assert_eq!(code, Some(124), "{out}{err}");
    assert!(
        err.contains("no answer within 300ms; it may still be sent"),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    for bad in ["0", "soon"] {
        let (code, _, err) = run(&["send", "a", "x", "--timeout", bad, "--grpc", &g], "").await;
        assert_eq!(code, Some(64), "--timeout {bad}: {err}");
    }
    d.stop().await;
}

/// `status NAME` shows one endpoint; an unknown name is refused with 1.
#[tokio::test(flavor = "multi_thread")]
async fn status_of_one_endpoint() {
    let up = FakeUpstream::start_with(|_, _| Reply::Accept).await;
    let d = start_daemon(&format!(
        "[endpoints.a]\nurl = \"{}\"\n[endpoints.b]\nurl = \"{}\"\n",
        up.url("/a"),
        up.url("/b")
    ))
    .await;
    let g = grpc(&d);
    let (code, out, err) = run(&["status", "b", "--grpc", &g], "").await;
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.starts_with("b "), "{out}");
    let (code, out, _) = run(&["status", "b", "--json", "--grpc", &g], "").await;
    assert_eq!(code, Some(0));
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(v.as_array().map(Vec::len), Some(1));
    assert_eq!(v[0]["name"], "b");
    let (code, _, err) = run(&["status", "nope", "--grpc", &g], "").await;
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("unknown endpoint \"nope\"; endpoints: a, b"),
        "the refusal lists the endpoints there are: {err}"
    );
    let (code, _, err) = run(&["status", "B", "--grpc", &g], "").await;
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("unknown endpoint \"B\"; did you mean \"b\"?"),
        "{err}"
    );
    d.stop().await;
}

/// A daemon whose endpoint `a` never connects, so what is sent stays in its outbox.
async fn stuck_daemon(extra: &str) -> (TestDaemon, FakeUpstream) {
    let up = FakeUpstream::start_with(|_, _| Reply::Hang).await;
    let d = start_daemon(&format!(
        "[endpoints.a]\nurl = \"{}\"\n{extra}",
        up.url("/a")
    ))
    .await;
    (d, up)
}

fn field<'a>(line: &'a str, name: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {name}= in {line:?}"))
}

/// `outbox NAME` shows the depth and the oldest's age; `--clear` refuses without a terminal
/// unless `--yes`, then drops the messages for good.
#[tokio::test(flavor = "multi_thread")]
async fn outbox_shows_and_clears_with_yes() {
    let (d, _up) = stuck_daemon("").await;
    let g = grpc(&d);
    let (code, _, err) = run(&["send", "a", "--grpc", &g], "m1\nm22\nm333\n").await;
    assert_eq!(code, Some(0), "{err}");
    let (code, out, err) = run(&["outbox", "a", "--grpc", &g], "").await;
    assert_eq!(code, Some(0), "{err}");
    assert!(out.starts_with("a depth=3 bytes=9 oldest_age="), "{out}");
    assert_ne!(field(&out, "oldest_age"), "-", "{out}");
    assert_eq!(field(&out, "durable"), "yes", "{out}");

    let (code, _, err) = run(&["outbox", "a", "--clear", "--grpc", &g], "y\n").await;
    assert_eq!(code, Some(64), "no terminal, no --yes: refused");
    assert!(err.contains("--yes"), "{err}");
    assert_eq!(d.endpoint("a").outbox.depth(), 3, "nothing cleared");

    let (code, out, err) = run(&["outbox", "a", "--clear", "--yes", "--grpc", &g], "").await;
    assert_eq!(code, Some(0), "{err}");
    assert!(out.ends_with("a cleared=3 bytes=9\n"), "{out}");
    assert_eq!(d.endpoint("a").outbox.depth(), 0);
    let (code, out, _) = run(&["outbox", "a", "--grpc", &g], "").await;
    assert_eq!(code, Some(0));
    assert!(out.starts_with("a depth=0 bytes=0 oldest_age=- "), "{out}");

    let (code, _, err) = run(&["outbox", "nope", "--grpc", &g], "").await;
    assert_eq!(code, Some(1), "{err}");
    let (code, _, err) = run(&["outbox", "a", "--yes", "--grpc", &g], "").await;
    assert_eq!(code, Some(64), "--yes without --clear: {err}");
    d.stop().await;
}

/// Clearing needs the `publish` list, as `reconnect` does; looking does not.
#[tokio::test(flavor = "multi_thread")]
async fn clearing_the_outbox_is_access_checked() {
    let other = rustix::process::geteuid().as_raw() + 1;
    let (d, _up) = stuck_daemon(&format!(
        "[endpoints.a.access]\npublish = [\"uid:{other}\"]\n"
    ))
    .await;
    let g = grpc(&d);
    let (code, out, err) = run(&["outbox", "a", "--grpc", &g], "").await;
    assert_eq!(code, Some(0), "looking is open: {err}");
    assert!(out.starts_with("a depth=0"), "{out}");
    // Queued as the daemon itself would: this user may not publish either.
    d.endpoint("a")
        .outbox
        .push(
            ws_sidecar::log::Kind::Text,
            bytes::Bytes::from_static(b"x"),
            None,
            false,
        )
        .await
        .expect("queued");
    let (code, _, err) = run(&["outbox", "a", "--clear", "--yes", "--grpc", &g], "").await;
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("permission denied") && err.contains("may not clear the outbox of \"a\""),
        "{err}"
    );
    assert_eq!(d.endpoint("a").outbox.depth(), 1);
    d.stop().await;
}

/// On a terminal `--clear` asks first: anything but y/yes leaves the outbox as it was.
#[tokio::test(flavor = "multi_thread")]
async fn outbox_clear_asks_on_a_terminal() {
    let (d, _up) = stuck_daemon("").await;
    let g = grpc(&d);
    let (code, _, err) = run(&["send", "a", "--grpc", &g], "m1\nm2\n").await;
    assert_eq!(code, Some(0), "{err}");
    for (answer, code, depth) in [("n\n", 1, 2), ("\n", 1, 2), ("yes\n", 0, 0)] {
        let (mut master, terminal) = pty();
        let mut child = Command::new(BIN)
            .args(["outbox", "a", "--clear", "--grpc", &g])
            .stdin(terminal)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn");
        // The question ends without a newline: read what comes until it is there.
        let mut stderr = child.stderr.take().expect("stderr");
        let mut seen = Vec::new();
        while !String::from_utf8_lossy(&seen).contains("[y/N]") {
            let mut buf = [0u8; 512];
            let n = tokio::time::timeout(T, stderr.read(&mut buf))
                .await
                .expect("the question in time")
                .expect("read stderr");
            assert!(n > 0, "stderr ended: {}", String::from_utf8_lossy(&seen));
            seen.extend_from_slice(&buf[..n]);
        }
        let prompt = String::from_utf8_lossy(&seen).into_owned();
        assert!(prompt.contains("drop 2 message(s)"), "{prompt}");
        master.write_all(answer.as_bytes()).expect("answer");
        let status = tokio::time::timeout(T, child.wait())
            .await
            .expect("exits in time")
            .expect("wait");
        assert_eq!(status.code(), Some(code), "{answer:?}: {prompt}");
        assert_eq!(d.endpoint("a").outbox.depth(), depth, "{answer:?}");
    }
    d.stop().await;
}

/// Client commands find the daemon from `--config FILE` (its grpc.listen), `$WS_SIDECAR_GRPC`
/// and `$WS_SIDECAR_CONFIG`, as the real binary resolves them; `--grpc` with `--config` is a
/// usage error.
#[tokio::test(flavor = "multi_thread")]
async fn client_commands_find_the_daemon_from_config_and_environment() {
    let (d, _up) = stuck_daemon("").await;
    let g = grpc(&d);
    let conf = crate::support::temp_dir();
    let config = crate::support::process::write_config(
        conf.path(),
        &format!("[grpc]\nlisten = [\"{g}\"]\n[endpoints.a]\nurl = \"ws://127.0.0.1:9/\"\n"),
    );
    let config = config.to_str().expect("utf-8 path");
    // Nothing to find by default: an empty runtime and config home.
    let empty = crate::support::temp_dir();
    let empty = empty.path().to_str().expect("utf-8 path");
    let status = |args: &[&str], env: &[(&str, &str)]| {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .env_remove("WS_SIDECAR_GRPC")
            .env_remove("WS_SIDECAR_CONFIG")
            .env("XDG_RUNTIME_DIR", empty)
            .env("XDG_CONFIG_HOME", empty)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        async move {
            let out = tokio::time::timeout(T, cmd.output())
                .await
                .expect("exits in time")
                .expect("run");
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        }
    };
    for (args, env) in [
        (vec!["status", "a", "--config", config], vec![]),
        (vec!["status", "a"], vec![("WS_SIDECAR_GRPC", g.as_str())]),
        (vec!["status", "a"], vec![("WS_SIDECAR_CONFIG", config)]),
    ] {
        let (code, out, err) = status(&args, &env).await;
        assert_eq!(code, Some(0), "{args:?} {env:?}: {err}");
        assert!(out.starts_with("a "), "{out}");
    }
    let (code, _, err) = status(&["status", "--config", config, "--grpc", &g], &[]).await;
    assert_eq!(code, Some(64), "{err}");
    d.stop().await;
}
