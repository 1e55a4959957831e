//! README's newcomer path, run as written: every fenced block right after a
//! `<!-- newcomer path -->` line in README.md, line by line, as a normal user with an empty
//! home (the `nobody` account when the tests run as root).
//!
//! Two substitutions keep it off the internet and out of a second build: the upstream URL
//! `wss://stream.example.invalid/prices` becomes a fake upstream on 127.0.0.1, and
//! `cargo run --release --` becomes the binary this test run built (the same code; a release
//! build would add minutes to CI). A `run` line starts the daemon in the background (a newcomer
//! runs it in its own terminal); every other line must exit 0 within 60 s. The README's Python
//! examples are run as written by `clients/python/tests/test_readme.py` (in the venv `.ci/run`
//! makes).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::process::{as_normal_user, give_to_normal_user, Spawned, BIN};
use crate::support::{self, FakeUpstream, Reply};
use crate::{finish, wait_for_socket};

const MARKER: &str = "<!-- newcomer path -->";
const EXAMPLE_URL: &str = "wss://stream.example.invalid/prices";

/// The lines of a marked fenced block.
struct Block {
    lines: Vec<String>,
}

/// Every marked block, in order.
fn newcomer_blocks(readme: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut it = readme.lines();
    while let Some(l) = it.next() {
        if l.trim() != MARKER {
            continue;
        }
        let fence = it.next().unwrap_or_default();
        assert_eq!(fence, "```sh", "{MARKER} must precede a fenced shell block");
        let mut lines = Vec::new();
        for l in it.by_ref() {
            if l.starts_with("```") {
                break;
            }
            lines.push(l.to_owned());
        }
        blocks.push(Block { lines });
    }
    blocks
}

fn shell(line: &str, home: &Path, runtime: &Path) -> Command {
    let mut cmd = as_normal_user("sh");
    cmd.args(["-euc", line])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("HOME", home)
        .env("XDG_RUNTIME_DIR", runtime)
        .stdin(Stdio::null());
    cmd
}

#[tokio::test(flavor = "multi_thread")]
async fn the_readme_newcomer_path_works_as_written() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let blocks = newcomer_blocks(&readme);
    let up = FakeUpstream::start_with_handler(
        |_, _| Reply::Accept,
        |conn| {
            tokio::spawn(async move {
                for i in 0..1000 {
                    if conn.send_text(&format!("{{\"price\":{i}}}")).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            });
        },
    )
    .await;
    let dir = support::temp_dir();
    let home = dir.path().join("home");
    let runtime = dir.path().join("run");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::create_dir_all(&runtime).unwrap();
    give_to_normal_user(dir.path());
    let log_path = dir.path().join("daemon.log");
    let check = |what: &str, child: std::process::Child| {
        let (code, stderr) = finish(child, Duration::from_secs(60));
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        assert_eq!(code, Some(0), "{what}\n{stderr}\ndaemon log:\n{log}");
    };

    let mut daemon: Option<Spawned> = None;
    let mut ran = 0;
    for block in &blocks {
        for line in block.lines.iter().filter(|l| !l.trim().is_empty()) {
            let line = line
                .replace("cargo run --release --", BIN)
                .replace(EXAMPLE_URL, &up.url("/prices"));
            let words: Vec<&str> = line.split_whitespace().collect();
            if words.first() == Some(&BIN) && words.get(1) == Some(&"run") {
                // exec: the daemon replaces the shell, so the test stops the daemon itself
                // (a forked one would outlive the test).
                let mut cmd = shell(&format!("exec {line}"), &home, &runtime);
                // The one thing a shared CI machine may already use: the default metrics port.
                cmd.env("WS_SIDECAR__HTTP__LISTEN", "")
                    .stdout(Stdio::null())
                    .stderr(std::fs::File::create(&log_path).unwrap());
                daemon = Some(Spawned::new(cmd.spawn().expect("spawn the run line")));
                wait_for_socket(&runtime.join("ws-sidecar/grpc.sock"));
                ran += 1;
                continue;
            }
            check(&line, spawn(&line, &home, &runtime));
            ran += 1;
        }
    }
    assert!(daemon.is_some(), "the newcomer path starts the daemon");
    drop(daemon);
    assert!(
        std::os::unix::net::UnixStream::connect(runtime.join("ws-sidecar/grpc.sock")).is_err(),
        "the daemon the run line started is stopped with the test"
    );
    assert!(ran >= 4, "ran {ran} README lines");
}

fn spawn(line: &str, home: &Path, runtime: &Path) -> std::process::Child {
    shell(line, home, runtime)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn a README line")
}
