//! `request` and `tail --key` (issue 14) as a script runs them: the real binary against an
//! in-process daemon and fakes that enforce their protocol (a JSON-RPC 2.0 server with
//! `eth_subscribe`, the fake Binance). What is printed, and the exit code of every outcome.

use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;

use crate::support::binance::{FakeBinance, Rules};
use crate::support::daemon::{start_daemon, TestDaemon};
use crate::support::process::{run_cli as run, BIN};
use crate::support::{FakeUpstream, Reply, UpConn};

const T: Duration = Duration::from_secs(20);

/// Every request a [`JsonRpc`] fake received, across its connections.
type Seen = Arc<Mutex<Vec<Value>>>;

/// A JSON-RPC 2.0 server as Ethereum nodes are: each request needs `"jsonrpc":"2.0"`, an id
/// and a method, or it gets error -32600. `eth_blockNumber` answers, `fail` is an unknown
/// method (error -32601), `slow` is never answered. `eth_subscribe` answers with a new
/// subscription id, then sends `params[1].count` notifications carrying it, the last marked
/// `"last": true` when `params[1].end` is true (the second one is indented over several
/// lines); `eth_unsubscribe` of an open subscription answers true.
struct JsonRpc {
    up: FakeUpstream,
    seen: Seen,
}

impl JsonRpc {
    async fn start() -> JsonRpc {
        let seen: Seen = Arc::default();
        let s = Arc::clone(&seen);
        let up = FakeUpstream::start_with_handler(
            |_, _| Reply::Accept,
            move |conn| {
                tokio::spawn(serve(conn, Arc::clone(&s)));
            },
        )
        .await;
        JsonRpc { up, seen }
    }

    fn seen(&self) -> Vec<Value> {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Waits until a received request satisfies `f`.
    async fn wait_for(&self, what: &str, f: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + T;
        loop {
            if let Some(v) = self.seen().into_iter().find(|v| f(v)) {
                return v;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the upstream never received {what}: {:?}",
                self.seen()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

async fn serve(conn: UpConn, seen: Seen) {
    let mut subs: Vec<String> = Vec::new();
    while let Some(m) = conn.recv().await {
        let Message::Text(text) = m else { continue };
        let Ok(req) = serde_json::from_str::<Value>(text.as_str()) else {
            let _ = conn
                .send_text(r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"Parse error"}}"#)
                .await;
            continue;
        };
        seen.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(req.clone());
        let id = req["id"].clone();
        let valid = req["jsonrpc"] == "2.0"
            && (id.is_u64() || id.is_i64() || id.is_string())
            && req["method"].is_string();
        let answer = |body: Value| {
            let mut v = json!({"jsonrpc": "2.0", "id": id});
            if let (Some(v), Some(body)) = (v.as_object_mut(), body.as_object()) {
                v.extend(body.clone());
            }
            v.to_string()
        };
        if !valid {
            let e = json!({"error": {"code": -32600, "message": "Invalid Request"}});
            let _ = conn.send_text(&answer(e)).await;
            continue;
        }
        let reply = match req["method"].as_str().unwrap_or_default() {
            "eth_blockNumber" => answer(json!({"result": "0x10"})),
            "slow" => continue,
            "eth_subscribe" => {
                let name = format!("0x{:x}", 0xab00 + subs.len());
                subs.push(name.clone());
                let _ = conn.send_text(&answer(json!({"result": name}))).await;
                let count = req["params"][1]["count"].as_u64().unwrap_or(0);
                let end = req["params"][1]["end"] == true;
                for n in 1..=count {
                    let mut note = json!({"jsonrpc": "2.0", "method": "eth_subscription",
                        "params": {"subscription": name, "result": {"n": n}}});
                    if end && n == count {
                        note["params"]["result"]["last"] = true.into();
                    }
                    let text = if n == 2 {
                        serde_json::to_string_pretty(&note).unwrap_or_default()
                    } else {
                        note.to_string()
                    };
                    let _ = conn.send_text(&text).await;
                }
                continue;
            }
            "eth_unsubscribe" => {
                let name = req["params"][0].as_str().unwrap_or_default();
                let open = subs.iter().any(|s| s == name);
                subs.retain(|s| s != name);
                answer(json!({"result": open}))
            }
            _ => answer(json!({"error": {"code": -32601, "message": "the method does not exist"}})),
        };
        let _ = conn.send_text(&reply).await;
    }
}

/// An Ethereum-style endpoint shared by request id; `eth_subscribe` streams are named by
/// their `/result` and cancelled with `eth_unsubscribe`. `plain` has no `requests`.
fn rpc_config(url: &str, timeout: &str) -> String {
    format!(
        r#"
[endpoints.rpc]
url = "{url}"
backoff = {{ initial = "10ms", max = "40ms", min_delay = "10ms" }}

[endpoints.rpc.requests]
id = "/id"
timeout = "{timeout}"
error = {{ pointer = "/error" }}

[endpoints.rpc.requests.stream]
id = "/result"
route = "/params/subscription"
ends = {{ pointer = "/params/result/last", equals = true }}
cancel = '{{"jsonrpc":"2.0","id":{{{{id}}}},"method":"eth_unsubscribe","params":["{{{{sub_id}}}}"]}}'

[endpoints.plain]
url = "{url}"
"#
    )
}

fn grpc(d: &TestDaemon) -> String {
    format!("unix:{}", d.grpc_path.display())
}

/// A long-running command with its stdout read line by line.
struct Running {
    child: Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Running {
    fn spawn(args: &[&str]) -> Running {
        let mut child = Command::new(BIN)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn ws-sidecar");
        let out = child.stdout.take().expect("stdout");
        Running {
            child,
            lines: BufReader::new(out).lines(),
        }
    }

    /// The next line of stdout, as JSON.
    async fn next(&mut self) -> Value {
        let line = tokio::time::timeout(T, self.lines.next_line())
            .await
            .expect("a line in time")
            .expect("stdout readable")
            .expect("a line before the end of output");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"))
    }

    fn signal(&self, name: &str) {
        let pid = self.child.id().expect("running").to_string();
        let st = std::process::Command::new("kill")
            .args([name, &pid])
            .status()
            .expect("kill");
        assert!(st.success());
    }

    /// The exit code once it exits, and what is left on stdout.
    async fn exit(mut self) -> (Option<i32>, String) {
        let mut rest = String::new();
        while let Ok(Some(l)) = tokio::time::timeout(T, self.lines.next_line())
            .await
            .expect("stdout ends in time")
        {
            rest.push_str(&l);
            rest.push('\n');
        }
        let status = tokio::time::timeout(T, self.child.wait())
            .await
            .expect("exits in time")
            .expect("wait");
        (status.code(), rest)
    }
}

/// The reply carries the app's own id back (the upstream saw the daemon's), on one line; the
/// request can come from stdin; an upstream error is printed and exits 2.
#[tokio::test(flavor = "multi_thread")]
async fn request_prints_the_reply_with_the_apps_own_id() {
    let rpc = JsonRpc::start().await;
    let d = start_daemon(&rpc_config(&rpc.up.url("/"), "10s")).await;
    let addr = grpc(&d);
    let req = r#"{"jsonrpc":"2.0","id":"mine","method":"eth_blockNumber"}"#;
    let (code, out, err) = run(&["request", "rpc", req, "--grpc", &addr], "").await;
    assert_eq!(code, Some(0), "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {out:?}");
    let reply: Value = serde_json::from_str(lines[0]).expect("JSON");
    assert_eq!(
        reply,
        json!({"jsonrpc": "2.0", "id": "mine", "result": "0x10"})
    );
    let sent = rpc
        .wait_for("the request", |v| v["method"] == "eth_blockNumber")
        .await;
    assert!(sent["id"].is_u64(), "the daemon's own id upstream: {sent}");

    let (code, out, err) = run(&["request", "rpc", "-", "--grpc", &addr], req).await;
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        serde_json::from_str::<Value>(out.trim()).expect("JSON")["id"],
        "mine"
    );

    let fail = r#"{"jsonrpc":"2.0","id":5,"method":"fail"}"#;
    let (code, out, err) = run(&["request", "rpc", fail, "--grpc", &addr], "").await;
    assert_eq!(code, Some(2), "an upstream error exits 2: {err}");
    let reply: Value = serde_json::from_str(out.trim()).expect("the error reply is printed");
    assert_eq!(reply["id"], 5);
    assert_eq!(reply["error"]["code"], -32601);
}

/// Each way a request fails has its own exit code and a one-line message; bad input is
/// refused before anything is sent, without echoing it.
#[tokio::test(flavor = "multi_thread")]
async fn request_failures_exit_with_their_own_codes() {
    let rpc = JsonRpc::start().await;
    let d = start_daemon(&rpc_config(&rpc.up.url("/"), "300ms")).await;
    let addr = grpc(&d);
    let slow = r#"{"jsonrpc":"2.0","id":1,"method":"slow"}"#;
    let cases: [(&str, &str, i32, &str); 5] = [
        ("rpc", slow, 124, "no reply within 300ms"),
        ("nope", slow, 1, "unknown endpoint \"nope\""),
        ("plain", slow, 78, "has no requests configured"),
        (
            "rpc",
            r#"{"secret":"hunter2""#,
            65,
            "the request is not JSON",
        ),
        ("rpc", "42", 65, "must be a JSON object or array"),
    ];
    for (endpoint, req, want, message) in cases {
        let (code, out, err) = run(&["request", endpoint, req, "--grpc", &addr], "").await;
        assert_eq!(code, Some(want), "{endpoint} {req}: {err}");
        assert_eq!(out, "", "nothing on stdout");
        assert_eq!(err.lines().count(), 1, "one line: {err:?}");
        assert!(err.contains(message), "{message:?} missing in {err:?}");
        assert!(!err.contains("hunter2"), "{err}");
    }
    let sent = rpc.seen();
    assert_eq!(sent.len(), 1, "only the slow request went out: {sent:?}");
}

/// `--stream` prints every reply on its own line (an indented one too) until the upstream's
/// last, with the app's id and the stream's first name.
#[tokio::test(flavor = "multi_thread")]
async fn request_stream_prints_every_reply_and_ends() {
    let rpc = JsonRpc::start().await;
    let d = start_daemon(&rpc_config(&rpc.up.url("/"), "10s")).await;
    let req = r#"{"jsonrpc":"2.0","id":"s","method":"eth_subscribe","params":["ticks",{"count":3,"end":true}]}"#;
    let (code, out, err) = run(
        &["request", "rpc", req, "--stream", "--grpc", &grpc(&d)],
        "",
    )
    .await;
    assert_eq!(code, Some(0), "{err}");
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect();
    assert_eq!(lines.len(), 4, "the answer and three notifications: {out}");
    assert_eq!(lines[0]["id"], "s");
    let name = lines[0]["result"]
        .as_str()
        .expect("the subscription's name");
    for (n, note) in lines[1..].iter().enumerate() {
        assert_eq!(note["params"]["subscription"], name, "{note}");
        assert_eq!(note["params"]["result"]["n"], n + 1, "{note}");
    }
    assert_eq!(lines[3]["params"]["result"]["last"], true);
}

/// Ctrl-C ends `request --stream` with 130, and the daemon cancels the stream upstream.
#[tokio::test(flavor = "multi_thread")]
async fn ctrl_c_cancels_a_stream_upstream() {
    let rpc = JsonRpc::start().await;
    let d = start_daemon(&rpc_config(&rpc.up.url("/"), "10s")).await;
    let req = r#"{"jsonrpc":"2.0","id":9,"method":"eth_subscribe","params":["ticks",{"count":1}]}"#;
    let mut cmd = Running::spawn(&["request", "rpc", req, "--stream", "--grpc", &grpc(&d)]);
    let answer = cmd.next().await;
    let name = answer["result"].as_str().expect("named").to_owned();
    let note = cmd.next().await;
    assert_eq!(note["params"]["subscription"], name.as_str());
    cmd.signal("-INT");
    let (code, rest) = cmd.exit().await;
    assert_eq!(code, Some(130), "{rest}");
    let cancel = rpc
        .wait_for("eth_unsubscribe", |v| v["method"] == "eth_unsubscribe")
        .await;
    assert_eq!(cancel["params"], json!([name]));
}

/// `request --stream | head -1`: once nobody reads, the command ends with 0 and the stream is
/// cancelled upstream rather than left open.
#[tokio::test(flavor = "multi_thread")]
async fn a_stream_nobody_reads_is_cancelled() {
    let rpc = JsonRpc::start().await;
    let d = start_daemon(&rpc_config(&rpc.up.url("/"), "10s")).await;
    let req = r#"{"jsonrpc":"2.0","id":3,"method":"eth_subscribe","params":["ticks",{"count":0}]}"#;
    let (reader, gone) = std::io::pipe().expect("pipe");
    drop(reader);
    let child = Command::new(BIN)
        .args(["request", "rpc", req, "--stream", "--grpc", &grpc(&d)])
        .stdin(Stdio::null())
        .stdout(gone)
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn ws-sidecar");
    let out = tokio::time::timeout(T, child.wait_with_output())
        .await
        .expect("exits in time")
        .expect("wait");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let cancel = rpc
        .wait_for("eth_unsubscribe", |v| v["method"] == "eth_unsubscribe")
        .await;
    assert_eq!(cancel["params"], json!(["0xab00"]));
}

/// The stream a printed message line belongs to, and its seq.
fn trade(line: &Value) -> (String, u64) {
    assert_eq!(line["type"], "message", "{line}");
    let data: Value = serde_json::from_str(line["data"].as_str().expect("text")).expect("JSON");
    let stream = data["stream"].as_str().expect("names its stream");
    (stream.to_owned(), line["seq"].as_u64().expect("seq"))
}

/// `tail --key` prints the state, the key's line, and only that key's messages, while another
/// app holds another key on the same connection; with `--from-seq` it replays only the key's.
#[tokio::test(flavor = "multi_thread")]
async fn tail_key_prints_only_the_keys_messages_and_its_state() {
    let up = FakeBinance::start(Rules {
        messages: 10,
        per: Duration::from_millis(200),
        ping_every: None,
    });
    up.feed(
        &["btcusdt@trade", "ethusdt@trade"],
        Duration::from_millis(2),
    );
    let d = start_daemon(&crate::support::binance::shared_config(&up.url())).await;
    let mut c = d.grpc().await;
    let _other = c
        .attach(ws_sidecar::proto::AttachRequest {
            endpoint: "bn".into(),
            keys: vec!["btcusdt@trade".into()],
            params: String::new(),
            from_seq: None,
        })
        .await
        .expect("attach");
    let addr = grpc(&d);
    let mut tail = Running::spawn(&["tail", "bn", "--key", "ethusdt@trade", "--grpc", &addr]);
    let first = tail.next().await;
    assert_eq!(first["type"], "state", "{first}");
    let mut key_states = Vec::new();
    let mut seqs = Vec::new();
    while key_states.last().map(String::as_str) != Some("subscribed") || seqs.len() < 20 {
        let line = tail.next().await;
        if line["type"] == "key" {
            assert_eq!(line["key"], "ethusdt@trade", "{line}");
            assert_eq!(line["endpoint"], "bn", "{line}");
            key_states.push(line["state"].as_str().expect("state").to_owned());
            continue;
        }
        let (stream, seq) = trade(&line);
        assert_eq!(stream, "ethusdt@trade", "only the key's messages");
        seqs.push(seq);
    }
    // Status shows the two keys, each subscribed.
    let (code, out, err) = run(&["status", "--grpc", &addr], "").await;
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains(" keys=2 "), "{out}");
    drop(tail);
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert!(
        seqs.windows(2).any(|w| w[1] > w[0] + 1),
        "the other key's messages came in between: {seqs:?}"
    );

    let mut replay = Running::spawn(&[
        "tail",
        "bn",
        "--key",
        "ethusdt@trade",
        "--from-seq",
        "0",
        "--grpc",
        &addr,
    ]);
    let mut replayed = Vec::new();
    while replayed.last().is_none_or(|s| s < &seqs[seqs.len() - 1]) {
        let line = replay.next().await;
        if line["type"] != "message" {
            continue;
        }
        let (stream, seq) = trade(&line);
        assert_eq!(stream, "ethusdt@trade", "only the key's messages replayed");
        replayed.push(seq);
    }
    assert!(replayed[0] <= seqs[0], "{replayed:?} from before {seqs:?}");
    assert!(
        seqs.iter().all(|s| replayed.contains(s)),
        "every message seen live is replayed"
    );
}

/// `--params` needs `--key`, `--filter` does not go with it, an empty key or params that are
/// no JSON are refused as usage errors before the daemon is asked.
#[test]
fn tail_key_usage_errors_exit_64() {
    let dir = crate::support::temp_dir();
    let addr = format!("unix:{}", dir.path().join("none.sock").display());
    for args in [
        vec!["tail", "bn", "--params", "{}"],
        vec!["tail", "bn", "--key", "a", "--filter", "/x=1"],
        vec!["tail", "bn", "--key", ""],
        vec!["tail", "bn", "--key", "a", "--params", "{nope"],
    ] {
        let out = std::process::Command::new(BIN)
            .args(&args)
            .args(["--grpc", &addr])
            .output()
            .expect("run");
        assert_eq!(
            out.status.code(),
            Some(64),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Two `tail --key` processes hold one key: one SUBSCRIBE. Killed with SIGKILL (no chance to say
/// goodbye), the first leaves the key to the second; when the second is killed too, the daemon
/// sends the UNSUBSCRIBE.
#[tokio::test(flavor = "multi_thread")]
async fn a_killed_tail_lets_go_of_its_key() {
    use crate::support::binance::{Frame, Received};
    let up = FakeBinance::start(Rules {
        messages: 10,
        per: Duration::from_millis(200),
        ping_every: None,
    });
    up.feed(&["ethusdt@trade"], Duration::from_millis(5));
    let d = start_daemon(&crate::support::binance::shared_config(&up.url())).await;
    let addr = grpc(&d);
    let count = |all: &[Received], method: &str| {
        all.iter()
            .filter(|r| matches!(&r.frame, Frame::Text(t) if t.contains(method)))
            .count()
    };
    let mut tails = Vec::new();
    for _ in 0..2 {
        let mut t = Running::spawn(&["tail", "bn", "--key", "ethusdt@trade", "--grpc", &addr]);
        // Its first trade: it holds the key.
        while t.next().await["type"] != "message" {}
        tails.push(t);
    }
    assert_eq!(
        count(&up.received(), "\"SUBSCRIBE\""),
        1,
        "one subscription for two"
    );
    let second = tails.pop().expect("two");
    let first = tails.pop().expect("two");
    first.signal("-KILL");
    let _ = first.exit().await;
    // The second still gets trades, and nothing was unsubscribed.
    let mut second = second;
    for _ in 0..5 {
        while second.next().await["type"] != "message" {}
    }
    assert_eq!(
        count(&up.received(), "UNSUBSCRIBE"),
        0,
        "the key is still held"
    );
    second.signal("-KILL");
    let _ = second.exit().await;
    up.wait_for(T, |all| count(all, "UNSUBSCRIBE") == 1)
        .await
        .expect("unsubscribed once the last holder's process died");
}
