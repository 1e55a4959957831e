//! `tail` as a script runs it: the real binary against an in-process daemon fed by a fake
//! upstream. Payloads only (`--raw`, `--raw-bytes`), `--count`, several endpoints, `--from-seq`
//! past the end, and `--follow` across a daemon restart.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStderr, ChildStdout, Command};

use crate::support::daemon::{parse_config, start_daemon, TestDaemon};
use crate::support::process::BIN;
use crate::support::{FakeUpstream, Reply, UpConn};

const T: Duration = Duration::from_secs(20);

/// A running command with its stdout and stderr read line by line.
pub struct Cmd {
    child: Child,
    out: Lines<BufReader<ChildStdout>>,
    err: Lines<BufReader<ChildStderr>>,
    /// Every stderr line read so far, for failure messages.
    pub errs: Vec<String>,
}

impl Cmd {
    pub fn spawn(args: &[&str]) -> Cmd {
        let mut child = Command::new(BIN)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn ws-sidecar");
        let out = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let err = BufReader::new(child.stderr.take().expect("stderr")).lines();
        Cmd {
            child,
            out,
            err,
            errs: Vec::new(),
        }
    }

    /// The next line of stdout.
    pub async fn line(&mut self) -> String {
        match tokio::time::timeout(T, self.out.next_line()).await {
            Ok(Ok(Some(l))) => l,
            other => panic!("no line on stdout ({other:?}); stderr: {:?}", self.errs),
        }
    }

    /// The next stdout line that is a message (skipping state and key lines), as JSON.
    pub async fn message(&mut self) -> Value {
        loop {
            let v: Value = serde_json::from_str(&self.line().await).expect("JSON line");
            if v["type"] == "message" || v["type"] == "gap" {
                return v;
            }
        }
    }

    /// Reads stderr until a line contains `needle`; returns it.
    pub async fn stderr_with(&mut self, needle: &str) -> String {
        loop {
            match tokio::time::timeout(T, self.err.next_line()).await {
                Ok(Ok(Some(l))) => {
                    self.errs.push(l.clone());
                    if l.contains(needle) {
                        return l;
                    }
                }
                other => panic!("no {needle:?} on stderr ({other:?}): {:?}", self.errs),
            }
        }
    }

    /// Exit code, the rest of stdout as bytes, and the rest of stderr.
    pub async fn finish(mut self) -> (Option<i32>, Vec<u8>, String) {
        let mut out = Vec::new();
        let mut err = String::new();
        let read = async {
            self.out
                .get_mut()
                .read_to_end(&mut out)
                .await
                .expect("stdout");
            self.err
                .get_mut()
                .read_to_string(&mut err)
                .await
                .expect("stderr");
        };
        tokio::time::timeout(T, read)
            .await
            .expect("output ends in time");
        let status = tokio::time::timeout(T, self.child.wait())
            .await
            .expect("exits in time")
            .expect("wait");
        (status.code(), out, err)
    }
}

pub fn grpc(d: &TestDaemon) -> String {
    format!("unix:{}", d.grpc_path.display())
}

/// A daemon with one endpoint per name (`/NAME` on one fake upstream), and each endpoint's
/// upstream connection.
async fn daemon_with(names: &[&str], extra: &str) -> (TestDaemon, FakeUpstream, Vec<UpConn>) {
    let up = FakeUpstream::start_with(|_, _| Reply::Accept).await;
    let mut toml = String::new();
    for n in names {
        toml.push_str(&format!(
            "[endpoints.{n}]\nurl = \"{}\"\n{extra}\n",
            up.url(&format!("/{n}"))
        ));
    }
    let d = start_daemon(&toml).await;
    let mut conns: Vec<UpConn> = Vec::new();
    for _ in names {
        conns.push(up.next_accepted_within(T).await.expect("connects"));
    }
    conns.sort_by_key(|c| names.iter().position(|n| c.uri().path() == format!("/{n}")));
    (d, up, conns)
}

/// Waits until the daemon logged seq `n` on `endpoint`.
async fn wait_seq(d: &TestDaemon, endpoint: &str, n: u64) {
    let ep = d.endpoint(endpoint);
    let deadline = tokio::time::Instant::now() + T;
    while ep.log.last_seq() < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "seq {n} not reached"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `--raw` prints payloads only, text as it came and binary as base64; `--raw-bytes` writes
/// them as they are; `--count` ends the command with 0.
#[tokio::test(flavor = "multi_thread")]
async fn raw_prints_payloads_only_and_count_ends_it() {
    let (d, _up, conns) = daemon_with(&["a"], "").await;
    conns[0].send_text(r#"{"p":1}"#).await.expect("send");
    conns[0].send_binary([0u8, 1, 2, 255]).await.expect("send");
    conns[0].send_text("third").await.expect("send");
    wait_seq(&d, "a", 3).await;
    let g = grpc(&d);

    let tail = Cmd::spawn(&[
        "tail",
        "a",
        "--from-seq",
        "0",
        "--raw",
        "--count",
        "3",
        "--grpc",
        &g,
    ]);
    let (code, out, err) = tail.finish().await;
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        String::from_utf8_lossy(&out),
        "{\"p\":1}\nAAEC/w==\nthird\n"
    );

    let tail = Cmd::spawn(&[
        "tail",
        "a",
        "--from-seq",
        "1",
        "--raw-bytes",
        "--count",
        "2",
        "--grpc",
        &g,
    ]);
    let (code, out, err) = tail.finish().await;
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        out, b"\x00\x01\x02\xffthird",
        "bytes as received, nothing added"
    );

    // JSON lines: the state line comes first and is not counted.
    let tail = Cmd::spawn(&["tail", "a", "--from-seq", "0", "--count", "1", "--grpc", &g]);
    let (code, out, err) = tail.finish().await;
    assert_eq!(code, Some(0), "{err}");
    let lines: Vec<Value> = String::from_utf8_lossy(&out)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[0]["type"], "state");
    assert_eq!(
        (&lines[1]["type"], &lines[1]["seq"]),
        (&"message".into(), &1.into())
    );

    for bad in [
        vec!["tail", "a", "--count", "0"],
        vec!["tail", "a", "--raw", "--raw-bytes"],
        vec!["tail", "a", "b", "--raw-bytes"],
        vec!["tail", "a", "b", "--key", "k"],
    ] {
        let (code, _, err) = Cmd::spawn(&[bad.as_slice(), &["--grpc", &g]].concat())
            .finish()
            .await;
        assert_eq!(code, Some(64), "{bad:?}: {err}");
    }
    d.stop().await;
}

/// `tail a b` prints both endpoints' messages; every line says which endpoint it is from.
/// A string VALUE matches with or without JSON quotes; a number matches by its JSON text.
#[tokio::test(flavor = "multi_thread")]
async fn filter_values_match_with_or_without_json_quotes() {
    let (d, _up, conns) = daemon_with(&["a"], "").await;
    for m in [
        r#"{"type":"x","n":1}"#,
        r#"{"type":"tick","n":2}"#,
        r#"{"type":"x","n":3}"#,
    ] {
        conns[0].send_text(m).await.expect("send");
    }
    wait_seq(&d, "a", 3).await;
    let g = grpc(&d);
    for filter in ["/type=tick", r#"/type="tick""#, "/n=2"] {
        let args = ["tail", "a", "--from-seq", "0", "--raw", "--count", "1"];
        let (code, out, err) =
            Cmd::spawn(&[args.as_slice(), &["--filter", filter, "--grpc", &g]].concat())
                .finish()
                .await;
        assert_eq!(code, Some(0), "{filter}: {err}");
        assert_eq!(
            String::from_utf8_lossy(&out),
            "{\"type\":\"tick\",\"n\":2}\n",
            "{filter}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn several_endpoints_in_one_tail() {
    let (d, _up, conns) = daemon_with(&["a", "b"], "").await;
    conns[0].send_text("from-a").await.expect("send");
    conns[1].send_text("from-b").await.expect("send");
    wait_seq(&d, "a", 1).await;
    wait_seq(&d, "b", 1).await;
    let g = grpc(&d);
    let args = [
        "tail",
        "a",
        "b",
        "--from-seq",
        "0",
        "--count",
        "2",
        "--grpc",
        &g,
    ];
    let (code, out, err) = Cmd::spawn(&[args.as_slice(), &["--raw"]].concat())
        .finish()
        .await;
    assert_eq!(code, Some(0), "{err}");
    let mut lines: Vec<String> = String::from_utf8_lossy(&out)
        .lines()
        .map(String::from)
        .collect();
    lines.sort();
    assert_eq!(lines, ["a\tfrom-a", "b\tfrom-b"]);

    let (code, out, err) = Cmd::spawn(&args).finish().await;
    assert_eq!(code, Some(0), "{err}");
    let mut got: Vec<(String, String)> = String::from_utf8_lossy(&out)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("JSON"))
        .filter(|v| v["type"] == "message")
        .map(|v| {
            (
                v["endpoint"].as_str().unwrap_or("").to_owned(),
                v["data"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        [("a".into(), "from-a".into()), ("b".into(), "from-b".into())]
    );

    let (code, _, err) = Cmd::spawn(&["tail", "a", "nope", "--grpc", &g])
        .finish()
        .await;
    assert_eq!(code, Some(1), "an unknown endpoint is refused: {err}");
    assert!(err.contains("nope"), "{err}");
    d.stop().await;
}

/// A `--from-seq` past the endpoint's last seq is said on stderr; new messages still come.
#[tokio::test(flavor = "multi_thread")]
async fn from_seq_past_the_end_says_so() {
    let (d, _up, conns) = daemon_with(&["a"], "").await;
    conns[0].send_text("one").await.expect("send");
    conns[0].send_text("two").await.expect("send");
    wait_seq(&d, "a", 2).await;
    let g = grpc(&d);
    let mut tail = Cmd::spawn(&[
        "tail",
        "a",
        "--from-seq",
        "10",
        "--raw",
        "--count",
        "1",
        "--grpc",
        &g,
    ]);
    let note = tail.stderr_with("past").await;
    assert!(
        note.contains("--from-seq 10 is past the last seq (2)"),
        "{note}"
    );
    // The subscription opens just after the note: send until a message is printed.
    let sender = async {
        for i in 0.. {
            conns[0].send_text(&format!("new{i}")).await.expect("send");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let line = tokio::select! {
        l = tail.line() => l,
        _ = sender => unreachable!(),
    };
    assert!(line.starts_with("new"), "{line}");
    let (code, _, err) = tail.finish().await;
    assert_eq!(code, Some(0), "{err}");
    d.stop().await;
}

/// `--follow` survives a daemon restart: it notes the loss on stderr, reconnects, and resumes
/// after the last seq it printed. Messages the restarted daemon took in meanwhile come without
/// a duplicate, and those it no longer retains are reported as a gap.
#[tokio::test(flavor = "multi_thread")]
async fn follow_resumes_after_a_restart_without_duplicates() {
    let toml_for =
        |url: &str| format!("[endpoints.a]\nurl = \"{url}\"\n[endpoints.a.replay]\nmessages = 2\n");
    let up = FakeUpstream::start_with(|_, _| Reply::Accept).await;
    let toml = toml_for(&up.url("/a"));
    let d = start_daemon(&toml).await;
    let conn = up.next_accepted_within(T).await.expect("connects");
    // The tail reaches the daemon through a link the test takes away and puts back, so the
    // restarted daemon can take in messages before the tail finds it again.
    let link = d.dir.path().join("link.sock");
    let relink = |target: &Path| {
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(target, &link).expect("symlink");
    };
    relink(&d.grpc_path);
    let addr = format!("unix:{}", link.display());
    let mut tail = Cmd::spawn(&["tail", "a", "--from-seq", "0", "--follow", "--grpc", &addr]);
    // Subscribed before anything is sent: the window of 2 would not hold m1 otherwise.
    let deadline = tokio::time::Instant::now() + T;
    while d.endpoint("a").log.subscribers() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the tail subscribes"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // One at a time: a tail more than 2 behind would get a gap.
    for i in 1..=3 {
        conn.send_text(&format!("m{i}")).await.expect("send");
        let m = tail.message().await;
        assert_eq!(
            (&m["seq"], &m["data"]),
            (&i.into(), &format!("m{i}").into()),
            "{m}"
        );
    }

    std::fs::remove_file(&link).expect("unlink");
    let grpc_path = d.grpc_path.clone();
    let d = d.restart(parse_config(&toml)).await;
    tail.stderr_with("reconnecting").await;
    let conn = up
        .next_accepted_within(T)
        .await
        .expect("reconnects upstream");
    for i in 4..=8 {
        conn.send_text(&format!("m{i}")).await.expect("send");
    }
    wait_seq(&d, "a", 8).await;
    relink(&grpc_path);
    let note = tail.stderr_with("reconnected").await;
    assert!(note.contains("resuming after seq 3"), "{note}");
    // The window holds 7 and 8: 4-6 are reported missing, then 7 and 8; nothing twice.
    let gap = tail.message().await;
    assert_eq!(gap["type"], "gap", "{gap}");
    assert_eq!(
        (&gap["from_seq"], &gap["to_seq"]),
        (&4.into(), &6.into()),
        "{gap}"
    );
    for i in 7..=8 {
        let m = tail.message().await;
        assert_eq!(
            (&m["seq"], &m["data"]),
            (&i.into(), &format!("m{i}").into()),
            "{m}"
        );
    }
    conn.send_text("m9").await.expect("send");
    let m = tail.message().await;
    assert_eq!(m["seq"], 9, "{m}");
    d.stop().await;
}
