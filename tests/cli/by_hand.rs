//! Running the daemon by hand, as README's "Run it without systemd" says: a normal user with the
//! minimal config gets the XDG places and the CLI finds the daemon there; start-up failures name
//! the config key that fixes them, say so once, and leave nothing behind.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::process::{
    as_normal_user, daemon_config, give_to_normal_user, spawn_daemon, stop, wait_ready,
    write_config, Spawned, BIN,
};
use crate::support::{self, FakeUpstream, Reply};
use crate::{finish, wait_for_socket};

/// `BIN args…` as a normal user, with exactly `env` (and `PATH`) as its environment.
fn as_user(args: &[&str], env: &[(&str, &Path)]) -> Command {
    let mut cmd = as_normal_user(BIN);
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

#[tokio::test(flavor = "multi_thread")]
async fn a_user_runs_the_minimal_config_by_hand_and_the_cli_finds_it() {
    let up = FakeUpstream::start_with(|_, _| Reply::Accept).await;
    let dir = support::temp_dir();
    let home = dir.path().join("home");
    let runtime = dir.path().join("run");
    let config = home.join(".config/ws-sidecar/config.toml");
    std::fs::create_dir_all(config.parent().unwrap()).unwrap();
    std::fs::create_dir_all(&runtime).unwrap();
    std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o700)).unwrap();
    // README's minimal config, as its newcomer writes it.
    std::fs::write(
        &config,
        format!("[endpoints.prices]\nurl = \"{}\"\n", up.url("/prices")),
    )
    .unwrap();
    give_to_normal_user(dir.path());
    let env = [("HOME", home.as_path()), ("XDG_RUNTIME_DIR", &runtime)];

    let log = std::fs::File::create(dir.path().join("daemon.log")).unwrap();
    let daemon = Spawned::new(
        as_user(&["run"], &env)
            // The one key this test must move: 9750 may be taken on the machine running it.
            .env("WS_SIDECAR__HTTP__LISTEN", "")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn the daemon"),
    );
    let sock = runtime.join("ws-sidecar/grpc.sock");
    wait_for_socket(&sock);
    // Bound one after the other: the NDJSON socket may come a moment after the gRPC one.
    wait_for_socket(&runtime.join("ws-sidecar/stream.sock"));
    let state = home.join(".local/state/ws-sidecar");
    assert!(
        state.join("store").exists(),
        "the store is in XDG_STATE_HOME"
    );
    assert_eq!(
        std::fs::metadata(&state).unwrap().mode() & 0o777,
        0o700,
        "a store directory the daemon creates is private"
    );
    up.next_accepted_within(Duration::from_secs(10))
        .await
        .expect("the daemon connects upstream");

    // No --grpc, no --config: the CLI looks where the daemon put its socket.
    let out = as_user(&["status"], &env).output().expect("status");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("prices"), "{stdout}");
    stop(daemon);
    let log = std::fs::read_to_string(dir.path().join("daemon.log")).unwrap();
    assert!(!log.contains("Permission denied"), "{log}");
    // The start line says where apps connect.
    let at = format!(
        "apps connect at grpc=unix:{} stream={}",
        sock.display(),
        runtime.join("ws-sidecar/stream.sock").display()
    );
    assert!(log.contains(&at), "{at:?} in {log}");

    // Started where there is no $XDG_RUNTIME_DIR (cron, su): still found from a login shell.
    let daemon = Spawned::new(
        as_user(&["run"], &env[..1])
            .env("WS_SIDECAR__HTTP__LISTEN", "")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the daemon"),
    );
    wait_for_socket(&state.join("grpc.sock"));
    let out = as_user(&["status", "prices"], &env)
        .output()
        .expect("status");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stop(daemon);

    // No daemon: the error lists every place looked at, the user's own first.
    let out = as_user(&["status"], &env).output().expect("status");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(69), "{stderr}");
    if !Path::new("/run/ws-sidecar/grpc.sock").exists() {
        let looked = format!(
            "no daemon found: no socket at {}, {}, /run/ws-sidecar/grpc.sock;",
            sock.display(),
            state.join("grpc.sock").display()
        );
        assert!(stderr.contains(&looked), "{looked:?} in {stderr}");
    }
}

#[test]
fn a_socket_the_user_may_not_open_names_its_group() {
    if support::process::normal_user().is_none() {
        eprintln!("skipped: needs root to make a socket another user may not open");
        return;
    }
    let dir = support::temp_dir();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let daemon = spawn_daemon(dir.path(), "[endpoints.a]\nurl = \"ws://127.0.0.1:9/\"\n");
    wait_ready(dir.path());
    let sock = format!("unix:{}", dir.path().join("grpc.sock").display());
    let out = as_user(&["status", "--grpc", &sock], &[])
        .output()
        .expect("status");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(69), "{stderr}");
    assert!(stderr.contains("Permission denied"), "{stderr}");
    assert!(
        stderr.contains("the socket is for group root: `sudo usermod -aG root $USER`"),
        "{stderr}"
    );
    stop(daemon);
}

/// Runs `ws-sidecar run --config FILE` to its end: exit code and stderr.
fn run_to_end(config: &Path) -> (Option<i32>, String) {
    let child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    finish(child, Duration::from_secs(20))
}

fn once(stderr: &str, needle: &str) {
    assert_eq!(
        stderr.matches(needle).count(),
        1,
        "{needle:?} once in:\n{stderr}"
    );
}

#[test]
fn a_second_daemon_on_the_same_store_names_the_first_and_exits_75() {
    let first_dir = support::temp_dir();
    let first = spawn_daemon(
        first_dir.path(),
        "[endpoints.a]\nurl = \"ws://127.0.0.1:9/\"\n",
    );
    wait_ready(first_dir.path());
    let dir = support::temp_dir();
    let config = write_config(
        dir.path(),
        &daemon_config(dir.path(), "[endpoints.a]\nurl = \"ws://127.0.0.1:9/\"\n").replace(
            &format!("{}/store", dir.path().display()),
            &format!("{}/store", first_dir.path().display()),
        ),
    );
    let (code, stderr) = run_to_end(&config);
    assert_eq!(code, Some(75), "{stderr}");
    once(
        &stderr,
        &format!("another ws-sidecar (pid {}) holds this store", first.id()),
    );
    assert!(stderr.contains("store.path"), "{stderr}");
    assert_leaves_nothing(dir.path(), &["grpc.sock", "stream.sock", "store"]);
    stop(first);
}

/// Asserts none of `names` exists in `dir`.
fn assert_leaves_nothing(dir: &Path, names: &[&str]) {
    let left: Vec<PathBuf> = names
        .iter()
        .map(|n| dir.join(n))
        .filter(|p| p.exists())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn a_port_in_use_names_http_listen_once_and_leaves_no_store_or_socket() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = support::temp_dir();
    let config = write_config(
        dir.path(),
        &daemon_config(dir.path(), "[endpoints.a]\nurl = \"ws://127.0.0.1:9/\"\n").replace(
            "[http]\nlisten = \"\"",
            &format!("[http]\nlisten = \"{addr}\""),
        ),
    );
    let (code, stderr) = run_to_end(&config);
    assert_eq!(code, Some(71), "{stderr}");
    once(&stderr, &format!("http.listen: cannot listen on {addr}"));
    assert!(
        stderr.contains("set http.listen to another address"),
        "{stderr}"
    );
    assert_leaves_nothing(dir.path(), &["grpc.sock", "stream.sock", "store"]);

    // Directories the failed start created for its files go too.
    let nested = dir.path().join("nested.toml");
    std::fs::write(
        &nested,
        std::fs::read_to_string(&config).unwrap().replace(
            &format!("{}/store", dir.path().display()),
            &format!("{}/new/deeper/store", dir.path().display()),
        ),
    )
    .unwrap();
    let (code, stderr) = run_to_end(&nested);
    assert_eq!(code, Some(71), "{stderr}");
    assert_leaves_nothing(dir.path(), &["new"]);

    // A store that was there before the failed start stays.
    // close() waits for the committer to let go of the file (a drop does not).
    ws_sidecar::store::Store::open(&dir.path().join("store"))
        .expect("create a store")
        .close();
    let (code, stderr) = run_to_end(&config);
    assert_eq!(code, Some(71), "{stderr}");
    assert!(
        dir.path().join("store").exists(),
        "an existing store is kept"
    );
}

#[test]
fn a_store_that_cannot_be_created_names_store_path() {
    let dir = support::temp_dir();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let config = write_config(
        dir.path(),
        &daemon_config(dir.path(), "[endpoints.a]\nurl = \"ws://127.0.0.1:9/\"\n").replace(
            &format!("{}/store", dir.path().display()),
            &format!("{}/store", file.display()),
        ),
    );
    let (code, stderr) = run_to_end(&config);
    assert_eq!(code, Some(78), "{stderr}");
    once(&stderr, "set store.path to move it");
}

#[test]
fn a_socket_that_cannot_be_bound_names_its_key() {
    let dir = support::temp_dir();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let body = daemon_config(dir.path(), "[endpoints.a]\nurl = \"ws://127.0.0.1:9/\"\n");
    let config = write_config(
        dir.path(),
        &body.replace(
            &format!("{}/stream.sock", dir.path().display()),
            &format!("{}/stream.sock", file.display()),
        ),
    );
    let (code, stderr) = run_to_end(&config);
    assert_eq!(code, Some(71), "{stderr}");
    once(&stderr, "stream.path: ");
    assert!(
        stderr.contains("set stream.path to another path"),
        "{stderr}"
    );
    // The gRPC socket bound before the failure is gone again.
    assert_leaves_nothing(dir.path(), &["grpc.sock", "store"]);
}
