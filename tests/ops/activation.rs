//! Socket activation with systemd's own tool: `systemd-socket-activate` binds the sockets, waits
//! for the first connection, then execs the daemon with LISTEN_FDS/LISTEN_FDNAMES; clients get
//! through on every passed socket, and the daemon binds none of its configured ones.

use crate::support::process::Spawned;
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use ws_sidecar::client::{self, Target};
use ws_sidecar::proto;

use crate::support::process::{write_config, BIN};
use crate::support::{self, FakeUpstream, Reply};
use crate::{free_port, http_async, sigterm_and_wait, Lines, T};

const ACTIVATE: &str = "systemd-socket-activate";

fn have_activate() -> bool {
    Command::new(ACTIVATE)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

async fn status_over(target: Target) -> Vec<String> {
    let mut c = tokio::time::timeout(T, client::connect(&target))
        .await
        .expect("connect in time")
        .expect("connect");
    let resp = tokio::time::timeout(T, c.get_status(proto::GetStatusRequest { endpoint: None }))
        .await
        .expect("status in time")
        .expect("status");
    resp.into_inner()
        .endpoints
        .into_iter()
        .map(|e| e.name)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn passed_unix_and_tcp_sockets_are_served() {
    assert!(
        have_activate(),
        "{ACTIVATE} is missing: install Debian's systemd package (.ci/run does)"
    );
    let up = FakeUpstream::start_with(|_, _| Reply::Accept).await;
    let dir = support::temp_dir();
    let passed = dir.path().join("passed");
    let own = dir.path().join("own");
    std::fs::create_dir(&passed).expect("mkdir");
    let (grpc_tcp, http_tcp) = (free_port(), free_port());
    // The config names other places for every kind of socket: none of them may appear.
    let config = write_config(
        dir.path(),
        &format!(
            "[grpc]\nlisten = [\"unix:{own}/grpc.sock\"]\n[stream]\npath = \"{own}/stream.sock\"\n\
             [store]\npath = \"{store}\"\n[endpoints.a]\nurl = \"{url}\"\n",
            own = own.display(),
            store = dir.path().join("store").display(),
            url = up.url("/"),
        ),
    );
    let grpc_sock = passed.join("grpc.sock");
    let stream_sock = passed.join("stream.sock");
    let mut child = Spawned::new(
        Command::new(ACTIVATE)
            .arg("-l")
            .arg(&grpc_sock)
            .arg("-l")
            .arg(format!("127.0.0.1:{grpc_tcp}"))
            .arg("-l")
            .arg(&stream_sock)
            .arg("-l")
            .arg(format!("127.0.0.1:{http_tcp}"))
            .arg("--fdname=grpc:grpc:stream:http")
            .args([BIN, "run", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn systemd-socket-activate"),
    );
    let mut stderr = Lines::spawn(child.stderr.take().expect("stderr"));
    stderr.wait_for("the last socket bound", T, |l| {
        l.contains(&format!("127.0.0.1:{http_tcp}"))
    });

    // The first connection makes systemd-socket-activate exec the daemon; it waits in the
    // backlog until the daemon accepts it.
    let names = status_over(Target::Unix(grpc_sock.clone())).await;
    assert_eq!(names, ["a"]);
    let names = status_over(Target::Tcp(format!("127.0.0.1:{grpc_tcp}"))).await;
    assert_eq!(names, ["a"]);

    let s = tokio::net::UnixStream::connect(&stream_sock)
        .await
        .expect("stream socket");
    let (r, mut w) = s.into_split();
    w.write_all(format!("{}\n", json!({"op": "status"})).as_bytes())
        .await
        .expect("write");
    let mut lines = BufReader::new(r).lines();
    let line = tokio::time::timeout(T, lines.next_line())
        .await
        .expect("reply in time")
        .expect("read")
        .expect("a line");
    let v: serde_json::Value = serde_json::from_str(&line).expect("json");
    assert_eq!(v["type"], "status", "{line}");
    assert_eq!(v["endpoints"][0]["name"], "a", "{line}");

    let http = format!("127.0.0.1:{http_tcp}").parse().expect("addr");
    assert_eq!(http_async(http, "GET", "/healthz").await.0, 200);

    assert!(!own.exists(), "the daemon bound its configured sockets too");
    tokio::task::block_in_place(|| sigterm_and_wait(&mut child));
    // The socket files belong to whoever passed them.
    assert!(exists(&grpc_sock) && exists(&stream_sock));
}

fn exists(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok()
}

#[test]
fn an_unknown_socket_name_is_refused_with_exit_71() {
    assert!(
        have_activate(),
        "{ACTIVATE} is missing: install Debian's systemd package (.ci/run does)"
    );
    let dir = support::temp_dir();
    let sock = dir.path().join("x.sock");
    let config = write_config(dir.path(), "[endpoints.a]\nurl = \"ws://127.0.0.1:9/\"\n");
    let mut child = Spawned::new(
        Command::new(ACTIVATE)
            .arg("-l")
            .arg(&sock)
            .arg("--fdname=metrics")
            .args([BIN, "run", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn systemd-socket-activate"),
    );
    let mut stderr = Lines::spawn(child.stderr.take().expect("stderr"));
    stderr.wait_for("the socket bound", T, |l| l.contains("x.sock"));
    let _c = std::os::unix::net::UnixStream::connect(&sock).expect("connect");
    let line = stderr.wait_for("the refusal", T, |l| l.contains("socket activation"));
    assert!(line.contains("\"metrics\""), "{line}");
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(71));
}
