//! The unit as README installs it, checked against what systemd itself reports: readiness and
//! STATUS=, the three socket units (for members of group ws-sidecar, not for others), on-demand
//! start, reload, the order socket units must be added in, the file system the service can
//! write, its exposure score, journal priorities, and a clean, quick stop.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::fakes::{self, http_get, ndjson_as, Upstreams};
use crate::install::{install_as_readme_says, APP_USER, OUTSIDER};
use crate::sysbox::SysBox;
use crate::T;

const UNIT: &str = "ws-sidecar.service";
const CONFIG: &str = "/etc/ws-sidecar/config.toml";

/// The daemon's promise (README "Stop": exit 0 within 5 s), well under the unit's
/// TimeoutStopSec=10s, after which systemd would SIGKILL it.
const STOP_WITHIN: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread")]
async fn installed_as_readme_says_the_unit_keeps_its_promises() {
    let Some(b) = SysBox::boot("service") else {
        return;
    };
    let up = Upstreams::start(&b.net).await;
    install_as_readme_says(&b, &up.config("")).await;

    ready_and_status(&b).await;
    sockets_for_members_only(&b, &up).await;
    started_on_demand_by_each_socket(&b).await;
    reload_applies_and_refusals_show(&b, &up).await;
    ready_after_listeners_and_socket_order(&b).await;
    run_is_read_only(&b).await;
    exposure_at_most_1_5(&b).await;
    journal_priorities(&b).await;
    stop_is_clean_and_quick(&b).await;
    no_level_word_in_messages(&b).await;
}

/// Type=notify reached active (the start job waits for READY=1), and the STATUS= line shows in
/// `systemctl status` and StatusText.
async fn ready_and_status(b: &SysBox) {
    assert_eq!(b.show(UNIT, "Type").await, "notify");
    assert_eq!(b.show(UNIT, "ActiveState").await, "active");
    assert_eq!(b.show(UNIT, "SubState").await, "running");
    let status = b
        .until("STATUS= shows prices and node connected", T, || async {
            let s = b.show(UNIT, "StatusText").await;
            s.starts_with("3 endpoints: 2 connected, 1 backoff (down: ")
                .then_some(s)
        })
        .await;
    let text = b.run(&["systemctl", "status", "--no-pager", UNIT]).await;
    assert!(
        text.stdout.contains(&format!("Status: \"{status}")),
        "systemctl status shows no STATUS= line: {}",
        text.stdout
    );
}

/// gRPC (through the CLI), NDJSON and HTTP answer on the sockets systemd made, as a member of
/// group ws-sidecar; a non-member cannot open them and is told so.
async fn sockets_for_members_only(b: &SysBox, up: &Upstreams) {
    // SocketMode= and SocketGroup= (systemd chowns RuntimeDirectory='s content to User=).
    // That these sockets are the ones that answer, on-demand start shows.
    for sock in ["grpc.sock", "stream.sock"] {
        let st = b
            .must(&["stat", "-c", "%a %G", &format!("/run/ws-sidecar/{sock}")])
            .await;
        assert_eq!(st.trim(), "660 ws-sidecar", "{sock}");
    }

    let out = b.run_as(APP_USER, &["ws-sidecar", "status"]).await;
    assert!(out.success(), "status as a member: {out:?}");
    for name in ["prices", "node", "down"] {
        assert!(out.stdout.contains(name), "{out:?}");
    }
    let out = b
        .run_as(
            APP_USER,
            &[
                "ws-sidecar",
                "tail",
                "prices",
                "--from-seq",
                "0",
                "--count",
                "3",
            ],
        )
        .await;
    assert!(out.success(), "tail as a member: {out:?}");
    let messages = out
        .stdout
        .lines()
        .filter(|l| l.contains(r#""type":"message""#));
    assert_eq!(messages.count(), 3, "{out:?}");
    let out = b
        .run_as(
            APP_USER,
            &["ws-sidecar", "send", "prices", "from-cli", "--wait-sent"],
        )
        .await;
    assert!(out.stdout.starts_with("sent outbox_id="), "{out:?}");
    // The upstream got it: the fake feed's first connection is the daemon's only one.
    let conn = up
        .prices
        .next_accepted()
        .await
        .expect("the daemon's connection");
    assert_eq!(conn.recv_text().await, "from-cli");
    let attempt = &up.prices.attempts()[0];
    assert_eq!(
        attempt.header(fakes::TOKEN_HEADER),
        Some(fakes::TOKEN),
        "the command secret's output"
    );

    let lines = ndjson_as(b, APP_USER, "status", &[json!({"op": "status"})])
        .await
        .expect("NDJSON as a member");
    let status = lines.last().expect("a status line");
    assert_eq!(
        status["endpoints"].as_array().map(Vec::len),
        Some(3),
        "{status}"
    );

    let (code, body) = http_get(&b.net, "/healthz", None).await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = http_get(&b.net, "/metrics", None).await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("ws_sidecar_endpoint_state"), "{body}");

    // A non-member: the CLI says permission denied and which group to join.
    let out = b.run_as(OUTSIDER, &["ws-sidecar", "status"]).await;
    assert_eq!(out.code, Some(69), "status as a non-member: {out:?}");
    let err = out.stderr.to_lowercase();
    assert!(err.contains("permission denied"), "{}", out.stderr);
    assert!(err.contains("group ws-sidecar"), "{}", out.stderr);
    let refused = ndjson_as(b, OUTSIDER, "status", &[json!({"op": "status"})]).await;
    assert!(
        matches!(&refused, Err((Some(13), e)) if e.contains("Permission denied")),
        "NDJSON as a non-member: {refused:?}"
    );
}

/// With the service stopped and its sockets listening, a client of each socket starts it and
/// gets its answer.
async fn started_on_demand_by_each_socket(b: &SysBox) {
    for socket in [
        "ws-sidecar.socket",
        "ws-sidecar-stream.socket",
        "ws-sidecar-http.socket",
    ] {
        b.must(&["systemctl", "stop", UNIT]).await;
        assert_eq!(b.show(UNIT, "ActiveState").await, "inactive");
        assert_eq!(b.show(socket, "SubState").await, "listening", "{socket}");
        match socket {
            "ws-sidecar.socket" => {
                let out = b
                    .run_as(APP_USER, &["ws-sidecar", "status", "prices"])
                    .await;
                assert!(out.success(), "status started the service: {out:?}");
            }
            "ws-sidecar-stream.socket" => {
                let lines = ndjson_as(b, APP_USER, "status", &[json!({"op": "status"})]).await;
                assert!(lines.is_ok(), "NDJSON started the service: {lines:?}");
            }
            _ => {
                let (code, body) = http_get(&b.net, "/healthz", None).await;
                assert_eq!(code, 200, "/healthz started the service: {body}");
            }
        }
        assert_eq!(
            b.show(UNIT, "ActiveState").await,
            "active",
            "after {socket}"
        );
        assert_eq!(b.show(UNIT, "NRestarts").await, "0");
    }
}

/// `systemctl reload` applies a changed file; an invalid file fails `systemctl reload` itself
/// (ExecReload= runs check-config first) and changes nothing; a SIGHUP that skips that check
/// (kill -HUP, or a file changed after it) shows the refusal in STATUS=.
async fn reload_applies_and_refusals_show(b: &SysBox, up: &Upstreams) {
    let pid = b.show(UNIT, "MainPID").await;
    let with_extra = up.config(&format!(
        "\n[endpoints.extra]\nurl = \"{}\"\n",
        up.prices.url("/extra")
    ));
    write_config(b, &with_extra).await;
    b.must(&["systemctl", "reload", UNIT]).await;
    let out = b.run_as(APP_USER, &["ws-sidecar", "status", "extra"]).await;
    assert!(out.success(), "the reloaded endpoint: {out:?}");

    write_config(b, &format!("{with_extra}\n[endpoints.broken\n")).await;
    let before = b.cursor(UNIT).await;
    let out = b.run(&["systemctl", "reload", UNIT]).await;
    assert!(
        !out.success(),
        "systemctl reload of an invalid file: {out:?}"
    );
    // Why, at priority error: ExecReload='s own lines (the file's error, then the verdict), not
    // only systemd's "Reload failed".
    let after = format!("--after-cursor={before}");
    let said = |errors: &[Value], what: &str| {
        errors.iter().any(|e| {
            e["MESSAGE"].as_str().is_some_and(|m| m.contains(what))
                && e["_COMM"].as_str() == Some("ws-sidecar")
        })
    };
    // journald reads the stream lines on its own time: wait for them, bounded.
    b.until("the refusal's reasons among the errors", T, || async {
        let errors = b.journal(&["-u", UNIT, "-p", "err", &after]).await;
        (said(&errors, CONFIG)
            && said(
                &errors,
                "ws-sidecar: reload refused; the daemon keeps running",
            ))
        .then_some(())
    })
    .await;
    assert_eq!(b.show(UNIT, "ActiveState").await, "active");
    assert_eq!(
        b.show(UNIT, "MainPID").await,
        pid,
        "a refused reload restarted it"
    );
    let out = b.run_as(APP_USER, &["ws-sidecar", "status", "extra"]).await;
    assert!(out.success(), "the running config stays: {out:?}");

    b.must(&["systemctl", "kill", "--kill-whom=main", "-s", "HUP", UNIT])
        .await;
    b.until("STATUS= says reload refused", T, || async {
        b.show(UNIT, "StatusText")
            .await
            .starts_with("reload refused: ")
            .then_some(())
    })
    .await;
    let text = b.run(&["systemctl", "status", "--no-pager", UNIT]).await;
    assert!(
        text.stdout.contains("Status: \"reload refused: "),
        "{}",
        text.stdout
    );

    write_config(b, &up.config("")).await;
    b.must(&["systemctl", "reload", UNIT]).await;
    b.until("STATUS= without the refusal", T, || async {
        let s = b.show(UNIT, "StatusText").await;
        s.starts_with("3 endpoints: ").then_some(())
    })
    .await;
    assert_eq!(b.show(UNIT, "MainPID").await, pid);
}

async fn write_config(b: &SysBox, body: &str) {
    let out = b
        .run_with_input(&["sh", "-c", &format!("cat > {CONFIG}")], body)
        .await;
    assert!(out.success(), "write {CONFIG}: {out:?}");
}

/// Without ws-sidecar-http.socket the daemon binds http.listen itself, before READY=1: the
/// moment `systemctl start` returns, the port answers. Then README's order for adding a socket
/// unit: systemd refuses to start one whose service runs; stopped first, it works.
async fn ready_after_listeners_and_socket_order(b: &SysBox) {
    let http = "ws-sidecar-http.socket";
    b.must(&["systemctl", "stop", UNIT]).await;
    b.must(&["systemctl", "disable", "--now", http]).await;
    b.must(&["systemctl", "start", UNIT]).await;
    let (code, body) = http_get(&b.net, "/healthz", None).await;
    assert_eq!(code, 200, "right after READY=1: {body}");

    let out = b.run(&["systemctl", "enable", "--now", http]).await;
    assert!(
        !out.success(),
        "enable --now {http} while the service runs: {out:?}"
    );
    let log = b
        .run(&["journalctl", "--no-pager", "-u", http])
        .await
        .stdout;
    assert!(log.contains("already active, refusing"), "{log}");

    b.must(&["systemctl", "stop", UNIT]).await;
    b.must(&["systemctl", "enable", "--now", http]).await;
    b.must(&["systemctl", "start", UNIT]).await;
    assert_eq!(b.show(http, "SubState").await, "running");
    let (code, body) = http_get(&b.net, "/healthz", None).await;
    assert_eq!(code, 200, "through the socket unit: {body}");
}

/// Within the service's mount namespace nothing under /run but its RuntimeDirectory= is
/// writable (systemd 252 leaves /run writable under ProtectSystem=strict once
/// ProtectKernelTunables=, ProtectControlGroups= or ProtectProc= is set, hence ReadOnlyPaths=),
/// nor is /dev/shm, which PrivateDevices= shares with the host.
async fn run_is_read_only(b: &SysBox) {
    let pid = b.show(UNIT, "MainPID").await;
    // Root in the service's mount namespace: permissions do not stop it, only a read-only mount.
    for path in ["/run/probe", "/run/lock/probe", "/dev/shm/probe"] {
        let out = b.run(&["nsenter", "-t", &pid, "-m", "touch", path]).await;
        assert!(
            !out.success() && out.stderr.contains("Read-only file system"),
            "{path} is writable in the service's namespace: {out:?}"
        );
    }
    let out = b
        .run(&[
            "nsenter",
            "-t",
            &pid,
            "-m",
            "sh",
            "-c",
            "touch /run/ws-sidecar/probe && rm /run/ws-sidecar/probe",
        ])
        .await;
    assert!(
        out.success(),
        "RuntimeDirectory= must stay writable: {out:?}"
    );
}

/// `systemd-analyze security` of the running unit: what README promises (1.2), at most 1.5.
async fn exposure_at_most_1_5(b: &SysBox) {
    let out = b
        .run(&["systemd-analyze", "security", "--no-pager", UNIT])
        .await;
    let line = out
        .stdout
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no overall exposure: {out:?}"));
    // "→ Overall exposure level for ws-sidecar.service: 1.2 OK :-)"
    let score: f64 = line
        .split_once(&format!("{UNIT}:"))
        .and_then(|(_, s)| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("exposure in {line:?}"));
    assert!(score <= 1.5, "{line}");
}

/// `journalctl -p warning -u ws-sidecar` shows the warnings (endpoint `down` backing off) and
/// not the info lines (the start banner), and every entry it shows is warning or worse.
async fn journal_priorities(b: &SysBox) {
    let all = b.journal(&["-u", UNIT]).await;
    let message = |e: &Value| e["MESSAGE"].as_str().unwrap_or_default().to_owned();
    let info = all
        .iter()
        .find(|e| message(e).contains("ws-sidecar started"))
        .unwrap_or_else(|| panic!("no start line in the journal"));
    assert_eq!(info["PRIORITY"], "6", "{info}");

    let warnings = b.journal(&["-u", UNIT, "-p", "warning"]).await;
    assert!(
        warnings
            .iter()
            .any(|e| message(e).contains("state=\"backoff\"") && message(e).contains("down")),
        "no warning about endpoint down: {warnings:#?}"
    );
    for e in &warnings {
        let p: u8 = e["PRIORITY"]
            .as_str()
            .and_then(|p| p.parse().ok())
            .unwrap_or(7);
        assert!(p <= 4, "journalctl -p warning shows priority {p}: {e}");
        assert!(
            !message(e).contains("ws-sidecar started"),
            "an info line among the warnings: {e}"
        );
    }
}

/// PRIORITY= carries the level: MESSAGE= does not repeat it as a (padded) word. Last, so
/// that the other checks run whatever this one finds.
async fn no_level_word_in_messages(b: &SysBox) {
    let all = b.journal(&["-u", UNIT]).await;
    for e in all
        .iter()
        .filter(|e| e["SYSLOG_IDENTIFIER"] == "ws-sidecar")
    {
        let m = e["MESSAGE"].as_str().unwrap_or_default();
        let first = m.split_whitespace().next().unwrap_or_default();
        assert!(
            !["TRACE", "DEBUG", "INFO", "WARN", "ERROR"].contains(&first),
            "MESSAGE= starts with a level word: {m:?}"
        );
    }
}

/// `systemctl stop`: exit 0, well within TimeoutStopSec=, no SIGKILL, the daemon's own exit 0.
async fn stop_is_clean_and_quick(b: &SysBox) {
    let cursor = b.cursor(UNIT).await;
    let started = Instant::now();
    b.must(&["systemctl", "stop", UNIT]).await;
    let took = started.elapsed();
    assert!(took < STOP_WITHIN, "systemctl stop took {took:?}");
    assert_eq!(b.show(UNIT, "Result").await, "success");
    assert_eq!(
        b.show(UNIT, "ExecMainCode").await,
        "1",
        "exited, not killed"
    );
    assert_eq!(b.show(UNIT, "ExecMainStatus").await, "0");
    let after = format!("--after-cursor={cursor}");
    let log = b
        .run(&["journalctl", "--no-pager", "-u", UNIT, &after])
        .await
        .stdout;
    assert!(log.contains("Deactivated successfully"), "{log}");
    for bad in ["SIGKILL", "timed out", "Killing process"] {
        assert!(!log.contains(bad), "{bad} in the journal at stop:\n{log}");
    }
    assert_eq!(b.show(UNIT, "NRestarts").await, "0");
}
