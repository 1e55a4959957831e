//! `ws-sidecar reload` against the real daemon: what changed on stdout (exit 0), a refused file
//! on stderr (exit 78); `log.level` applies at once.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::support;
use crate::support::process::{
    daemon_config, grpc_addr, spawn_daemon, stop, wait_ready, write_config, BIN,
};

fn reload(dir: &Path) -> Output {
    Command::new(BIN)
        .args(["reload", "--grpc", &grpc_addr(dir)])
        .output()
        .expect("run reload")
}

/// Waits (bounded) until the daemon's log holds `needle`; its lines go through a queue.
fn wait_logged(dir: &Path, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = std::fs::read_to_string(dir.join("daemon.log")).unwrap_or_default();
        if log.contains(needle) {
            return log;
        }
        assert!(Instant::now() < deadline, "{needle:?} not logged:\n{log}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn reload_prints_what_changed_or_why_the_file_was_refused() {
    let dir = support::temp_dir();
    let d = dir.path();
    // Port 9 (discard) refuses: the endpoint backs off, which is all this needs.
    let a = "[endpoints.a]\nurl = \"ws://127.0.0.1:9/\"\n";
    let daemon = spawn_daemon(d, &format!("[log]\nlevel = \"warn\"\n{a}"));
    wait_ready(d);

    let out = reload(d);
    let path = d.join("config.toml");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("reloaded {}\n  unchanged: a\n", path.display())
    );

    // A new level applies at once: the reload's own INFO line is logged at the new level.
    let b = "[endpoints.b]\nurl = \"ws://127.0.0.1:9/b\"\n";
    write_config(
        d,
        &daemon_config(
            d,
            &format!("[log]\nlevel = \"info\"\n[limits]\nmax_subscribers = 7\n{a}{b}"),
        ),
    );
    let log = std::fs::read_to_string(d.join("daemon.log")).unwrap_or_default();
    assert!(
        !log.contains("config reloaded"),
        "INFO is off at level warn:\n{log}"
    );
    let out = reload(d);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!(
            "reloaded {}\n  added: b\n  unchanged: a\n  applied: log.level = \"info\"\n  needs a restart: limits.max_subscribers\n",
            path.display()
        )
    );
    wait_logged(d, "config reloaded");

    // A refused file: its errors, exit 78, and the daemon runs on as it was.
    write_config(
        d,
        &daemon_config(d, &format!("{a}{b}[endpoints.c]\nurll = \"ws://x/\"\n")),
    );
    let out = reload(d);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(out.stdout.is_empty());
    assert_eq!(
        err.lines().collect::<Vec<_>>(),
        [
            format!(
                "{}: endpoints.c.url: required key is missing",
                path.display()
            ),
            format!(
                "{}: endpoints.c.urll: unknown key, did you mean `url`?",
                path.display()
            ),
            "ws-sidecar: reload refused; the daemon keeps running the config it had".to_owned(),
        ]
    );
    wait_logged(d, "reload refused, running config unchanged");
    let status = Command::new(BIN)
        .args(["status", "--grpc", &grpc_addr(d)])
        .output()
        .expect("status");
    let shown = String::from_utf8_lossy(&status.stdout);
    assert!(
        shown.contains("a ") && shown.contains("b ") && !shown.contains("c "),
        "{shown}"
    );
    // `status` says the file on disk is not what runs, until a reload succeeds.
    assert_eq!(
        String::from_utf8_lossy(&status.stderr),
        format!(
            "ws-sidecar: last reload refused, the previous config runs: {}: \
             endpoints.c.url: required key is missing\n",
            path.display()
        )
    );
    stop(daemon);
}

/// `systemctl reload` runs `ws-sidecar reload`, which waits for the daemon's answer: it returns
/// once the file is applied and fails when the daemon refuses it (tests/systemd checks both).
#[test]
fn the_unit_reloads_through_the_reload_rpc() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/ws-sidecar.service"
    ))
    .expect("unit");
    let reload: Vec<&str> = unit
        .lines()
        .filter_map(|l| l.strip_prefix("ExecReload="))
        .collect();
    assert_eq!(reload, ["/usr/local/bin/ws-sidecar reload"]);
    // It finds the file as ExecStart= does, through the unit's environment.
    assert!(unit.contains("\nEnvironment=WS_SIDECAR_CONFIG="), "{unit}");
}
