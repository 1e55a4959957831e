//! The unit as README installs it plus one drop-in, `kill-on-deny.conf`: a system call outside
//! the allow list kills the daemon with SIGSYS instead of failing with EPERM (which an error
//! path could hide), and a 3 s watchdog instead of 30 s so that a frozen daemon is found within
//! the test's time. Every CLI command and API path is walked once under it; then the watchdog
//! must leave a healthy daemon alone over several periods and restart a frozen one.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::fakes::{http_get, ndjson_as, Upstreams};
use crate::install::{install_as_readme_says, APP_USER};
use crate::sysbox::SysBox;
use crate::T;

const UNIT: &str = "ws-sidecar.service";

const DROP_IN: &str = "\
[Service]
# tests/systemd: a denied system call kills (SIGSYS) instead of failing with EPERM.
SystemCallErrorNumber=
# tests/systemd: a frozen daemon is found in seconds (30s in the unit).
WatchdogSec=3s
";
const WATCHDOG: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread")]
async fn every_path_stays_inside_the_syscall_filter_and_the_watchdog_restarts_only_a_frozen_daemon()
{
    let Some(b) = SysBox::boot("hardened") else {
        return;
    };
    let up = Upstreams::start(&b.net).await;
    install_as_readme_says(&b, &up.config("")).await;

    let out = b
        .run_with_input(
            &[
                "sh",
                "-c",
                "mkdir -p /etc/systemd/system/ws-sidecar.service.d && \
                 cat > /etc/systemd/system/ws-sidecar.service.d/kill-on-deny.conf",
            ],
            DROP_IN,
        )
        .await;
    assert!(out.success(), "{out:?}");
    b.must(&["systemctl", "daemon-reload"]).await;
    let cursor = b.cursor(UNIT).await;
    b.must(&["systemctl", "restart", UNIT]).await;
    let started = Instant::now();
    let pid = b.show(UNIT, "MainPID").await;
    assert_eq!(b.show(UNIT, "WatchdogUSec").await, "3s");
    denied_call_kills(&b).await;

    walk_every_path(&b, &up).await;
    let after = format!("--after-cursor={cursor}");
    let log = b
        .run(&["journalctl", "--no-pager", "-u", UNIT, &after])
        .await
        .stdout;
    for killed in [
        "SIGSYS",
        "status=31/SYS",
        "code=dumped",
        "code=killed",
        "core-dump",
    ] {
        assert!(!log.contains(killed), "{killed} in the journal:\n{log}");
    }
    assert_eq!(
        b.show(UNIT, "MainPID").await,
        pid,
        "the daemon was replaced:\n{log}"
    );
    assert_eq!(b.show(UNIT, "NRestarts").await, "0", "{log}");

    healthy_is_left_alone(&b, &pid, started).await;
    frozen_is_restarted(&b, &pid).await;
}

/// The drop-in's premise, checked on this systemd: it took effect (no longer EPERM), and with
/// no error number a call the unit's filter denies (chown) kills the process with SIGSYS.
async fn denied_call_kills(b: &SysBox) {
    assert_ne!(
        b.show(UNIT, "SystemCallErrorNumber").await,
        "1",
        "still EPERM"
    );
    let out = b
        .run(&[
            "systemd-run",
            "--wait",
            "-p",
            "SystemCallFilter=@system-service",
            "-p",
            "SystemCallFilter=~@privileged @resources",
            "chown",
            "0",
            "/",
        ])
        .await;
    assert!(
        !out.success() && out.stderr.contains("status=SYS"),
        "a denied chown did not die of SIGSYS: {out:?}"
    );
}

/// Every CLI command, the NDJSON operations, every HTTP path and both kinds of reload, as an
/// app's user; each must work.
async fn walk_every_path(b: &SysBox, up: &Upstreams) {
    let cli: &[&[&str]] = &[
        &["status"],
        &["status", "--json"],
        &["tail", "prices", "--from-seq", "0", "--count", "3"],
        &["send", "prices", "walk", "--wait-sent"],
        &["outbox", "prices"],
        &[
            "request",
            "node",
            r#"{"jsonrpc":"2.0","id":7,"method":"echo","params":["walk"]}"#,
        ],
        &["reconnect", "prices"],
        &["reset-resume", "prices"],
        &["outbox", "prices", "--clear", "--yes"],
        &["reload"],
    ];
    for args in cli {
        let mut argv = vec!["ws-sidecar"];
        argv.extend_from_slice(args);
        let out = b.run_as(APP_USER, &argv).await;
        assert!(out.success(), "{argv:?}: {out:?}");
        if args[0] == "request" {
            assert!(out.stdout.contains("walk"), "{out:?}");
        }
    }
    // reconnect and reset-resume each open a new connection.
    let seen = up.prices.wait_attempts(3, T).await;
    assert!(seen.is_ok(), "{seen:?}");

    let sub = json!({"op": "subscribe", "endpoint": "prices", "from_seq": 0});
    let lines = ndjson_as(b, APP_USER, "message", &[sub]).await;
    assert!(lines.is_ok(), "NDJSON subscribe: {lines:?}");
    let publish = json!({"op": "publish", "endpoint": "prices", "data": "nd", "id": "c1"});
    let lines = ndjson_as(b, APP_USER, "ack", &[publish]).await;
    assert!(lines.is_ok(), "NDJSON publish: {lines:?}");
    let lines = ndjson_as(b, APP_USER, "status", &[json!({"op": "status"})]).await;
    assert!(lines.is_ok(), "NDJSON status: {lines:?}");

    for path in ["/healthz", "/metrics", "/status", "/"] {
        let (code, body) = http_get(&b.net, path, None).await;
        assert_eq!(code, 200, "GET {path}: {body}");
    }
    // 503: endpoint `down` is not connected, which is the answer's point.
    let (code, body) = http_get(&b.net, "/readyz", None).await;
    assert_eq!(code, 503, "GET /readyz: {body}");
    let (code, body) = http_get(&b.net, "/events", Some("data:")).await;
    assert_eq!(code, 200, "GET /events: {body}");

    b.must(&["systemctl", "reload", UNIT]).await;
    let out = b.run_as(APP_USER, &["ws-sidecar", "status"]).await;
    assert!(out.success(), "status after systemctl reload: {out:?}");
}

/// Over four watchdog periods a healthy daemon keeps pinging (the watchdog timestamp moves)
/// and is not restarted.
async fn healthy_is_left_alone(b: &SysBox, pid: &str, started: Instant) {
    let first = b.show(UNIT, "WatchdogTimestampMonotonic").await;
    let periods = WATCHDOG * 4;
    if let Some(rest) = periods.checked_sub(started.elapsed()) {
        // Nothing to wait for but time itself: the point is that nothing happens.
        tokio::time::sleep(rest).await;
    }
    assert_eq!(b.show(UNIT, "NRestarts").await, "0");
    assert_eq!(b.show(UNIT, "MainPID").await, pid);
    assert_ne!(
        b.show(UNIT, "WatchdogTimestampMonotonic").await,
        first,
        "no WATCHDOG=1 came"
    );
}

/// SIGSTOP the daemon: the watchdog times out, systemd kills and restarts it, and the new one
/// answers.
async fn frozen_is_restarted(b: &SysBox, pid: &str) {
    b.must(&["kill", "-STOP", pid]).await;
    let within = WATCHDOG + Duration::from_secs(2) + T;
    let new = b
        .until("a restart after the watchdog timeout", within, || async {
            let now = b.show(UNIT, "MainPID").await;
            let up = b.show(UNIT, "ActiveState").await == "active";
            (up && now != pid && now != "0").then_some(now)
        })
        .await;
    assert_eq!(b.show(UNIT, "NRestarts").await, "1");
    let log = b.journal_text(UNIT).await;
    assert!(log.contains("Watchdog timeout"), "{log}");
    let out = b.run_as(APP_USER, &["ws-sidecar", "status"]).await;
    assert!(
        out.success(),
        "status from the restarted daemon {new}: {out:?}"
    );
}
