//! Why a client command cannot reach the daemon, in the OS's or the peer's own words: a missing
//! path, a socket it may not use, something that is no socket, a socket left behind, sockets that
//! answer but not with the ws-sidecar API, and one that never answers. Each exits 69.

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::process::{daemon_config, write_config, BIN};
use crate::support::{self, FakeUpstream, Reply};
use crate::{finish, wait_for_socket};

/// Runs `status --grpc ADDR`: its exit code and stderr.
fn status_at(addr: &str) -> (Option<i32>, String) {
    let child = status_command(addr).spawn().expect("spawn status");
    finish(child, Duration::from_secs(20))
}

fn status_command(addr: &str) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(["status", "--grpc", addr])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

/// Asserts exit 69 and a message naming `addr` and containing `cause`.
fn assert_unreachable(addr: &str, (code, stderr): (Option<i32>, String), cause: &str) {
    assert_eq!(code, Some(69), "{addr}:\n{stderr}");
    assert!(
        stderr.contains(&format!("cannot reach the daemon at {addr}: ")),
        "names the address:\n{stderr}"
    );
    assert!(stderr.contains(cause), "{cause:?} missing in:\n{stderr}");
    assert!(!stderr.contains("transport error"), "{stderr}");
}

#[test]
fn a_missing_socket_says_so() {
    let dir = support::temp_dir();
    let addr = format!("unix:{}", dir.path().join("none.sock").display());
    assert_unreachable(&addr, status_at(&addr), "No such file or directory");
}

#[test]
fn a_path_that_is_no_socket_says_what_it_is() {
    let dir = support::temp_dir();
    let file = dir.path().join("grpc.sock");
    std::fs::write(&file, "not a socket").expect("write");
    let addr = format!("unix:{}", file.display());
    assert_unreachable(&addr, status_at(&addr), "a regular file, not a socket");
    let addr = format!("unix:{}", dir.path().display());
    assert_unreachable(&addr, status_at(&addr), "a directory, not a socket");
}

#[test]
fn a_socket_nobody_listens_on_says_so() {
    let dir = support::temp_dir();
    let path = dir.path().join("grpc.sock");
    // A daemon killed with SIGKILL leaves its socket file behind like this.
    drop(std::os::unix::net::UnixListener::bind(&path).expect("bind"));
    let addr = format!("unix:{}", path.display());
    assert_unreachable(&addr, status_at(&addr), "Connection refused");
    let (_, stderr) = status_at(&addr);
    assert!(
        stderr.contains("nothing listens on this socket"),
        "{stderr}"
    );
}

/// connect(2) needs write permission on the socket file. Root has it whatever the mode, so as
/// root the command runs as `nobody` (uid 65534), which it does not have.
#[test]
fn a_socket_without_permission_says_permission_denied() {
    let dir = support::temp_dir();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let path = dir.path().join("grpc.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o000)).expect("chmod");
    let addr = format!("unix:{}", path.display());
    let root = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata("/proc/self").expect("/proc/self").uid() == 0
    };
    let mut cmd = status_command(&addr);
    if root {
        use std::os::unix::process::CommandExt;
        cmd.uid(65534).gid(65534);
    }
    let child = match cmd.spawn() {
        Ok(child) => child,
        // The binary lies under a directory `nobody` may not enter (a checkout in /root).
        Err(e) if root && e.kind() == std::io::ErrorKind::PermissionDenied => {
            println!(
                "skipped: running as root, where connect(2) ignores the socket's mode, and uid \
                 65534 cannot run {BIN}: {e}"
            );
            return;
        }
        Err(e) => panic!("spawn status: {e}"),
    };
    let result = finish(child, Duration::from_secs(20));
    assert_unreachable(&addr, result, "Permission denied");
}

/// The daemon's own NDJSON socket and its HTTP/1 listener, given where the gRPC API is expected:
/// both answer, neither with gRPC, and the message says so instead of `transport error`.
#[tokio::test(flavor = "multi_thread")]
async fn sockets_that_answer_but_not_with_grpc_say_so() {
    let up = FakeUpstream::start_with(|_, _| Reply::Accept).await;
    let dir = support::temp_dir();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let body = daemon_config(
        dir.path(),
        &format!("[endpoints.a]\nurl = \"{}\"\n", up.url("/")),
    )
    .replace(
        "[http]\nlisten = \"\"",
        &format!("[http]\nlisten = \"127.0.0.1:{port}\""),
    );
    let config = write_config(dir.path(), &body);
    let log = std::fs::File::create(dir.path().join("daemon.log")).expect("log");
    let mut daemon = crate::support::process::Spawned::new(
        Command::new(BIN)
            .args(["run", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn daemon"),
    );
    wait_for_socket(&dir.path().join("grpc.sock"));
    wait_for_socket(&dir.path().join("stream.sock"));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "http listener not up");
        std::thread::sleep(Duration::from_millis(20));
    }

    let stream = format!("unix:{}", dir.path().join("stream.sock").display());
    let http = format!("127.0.0.1:{port}");
    for addr in [&stream, &http] {
        let result = tokio::task::block_in_place(|| status_at(addr));
        assert_unreachable(addr, result, "does not speak the ws-sidecar gRPC API");
    }
    // And the real one still works.
    let grpc = format!("unix:{}", dir.path().join("grpc.sock").display());
    let (code, stderr) = tokio::task::block_in_place(|| status_at(&grpc));
    assert_eq!(code, Some(0), "{stderr}");
    let _ = daemon.kill();
    let _ = daemon.wait();
}

/// A socket that accepts (the kernel queues the connection) but never answers: the check gives
/// up after its bound instead of waiting forever, as it would for a stopped daemon.
#[tokio::test(flavor = "multi_thread")]
async fn a_socket_that_never_answers_gives_up_in_time() {
    use ws_sidecar::client::{connect_checked, Target, Unreachable};
    let dir = support::temp_dir();
    let path = dir.path().join("grpc.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
    let within = Duration::from_millis(300);
    let result = tokio::time::timeout(
        Duration::from_secs(10),
        connect_checked(&Target::Unix(path), within),
    )
    .await
    .expect("bounded by its own timeout");
    match result {
        Err(e @ Unreachable::NoAnswer(_)) => assert_eq!(e.to_string(), "no answer within 300ms"),
        Err(e) => panic!("wrong reason: {e}"),
        Ok(_) => panic!("nothing answers there"),
    }
}

/// A gRPC server without the ws-sidecar service (only grpc.health.v1 here) is named as such.
#[tokio::test(flavor = "multi_thread")]
async fn another_grpc_server_is_named_as_such() {
    let dir = support::temp_dir();
    let path = dir.path().join("other.sock");
    let listener = tokio::net::UnixListener::bind(&path).expect("bind");
    let (_reporter, health) = tonic_health::server::health_reporter();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health)
            .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener)),
    );
    let addr = format!("unix:{}", path.display());
    let result = tokio::task::block_in_place(|| status_at(&addr));
    assert_unreachable(&addr, result, "a gRPC server answers, but not ws-sidecar's");
    server.abort();
}
