//! Hot reload (SPEC §4), applied in-process as SIGHUP would: unchanged endpoints keep their
//! connection, subscribers and seq; changed ones reconnect keeping subscribers; removed ones
//! close with 1001 and end their subscriptions with a final state; new ones start.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ws_sidecar::endpoint::State;
use ws_sidecar::proto::{self, event::Event as Ev};
use ws_sidecar::systemd::Notifier;

use crate::support::daemon::{
    next_event, next_message, parse_config, start_daemon, start_in, state_name, subscribe,
    TestDaemon,
};
use crate::support::{FakeUpstream, Reply};

const T: Duration = Duration::from_secs(10);

#[tokio::test]
async fn add_change_remove_and_keep_endpoints() {
    let up = FakeUpstream::start_with(|_, _| Reply::Accept).await;
    let base = |extra: &str| {
        format!(
            "[grpc]\nlisten = [\"127.0.0.1:0\"]\n[endpoints.keep]\nurl = \"{}\"\n[endpoints.change]\nurl = \"{}\"\n{extra}",
            up.url("/keep"),
            up.url("/change")
        )
    };
    let gone = format!("[endpoints.gone]\nurl = \"{}\"\n", up.url("/gone"));
    let d = start_daemon(&(base("") + &gone)).await;
    let mut conns = std::collections::HashMap::new();
    for _ in 0..3 {
        let c = up.next_accepted_within(T).await.expect("connects");
        conns.insert(c.uri().path().to_owned(), c);
    }
    for n in ["keep", "change", "gone"] {
        d.wait_state(n, State::Connected, T).await;
    }
    let mut client = d.grpc().await;
    let mut keep_sub = subscribe(&mut client, "keep", None).await;
    let mut change_sub = subscribe(&mut client, "change", None).await;
    let mut gone_sub = subscribe(&mut client, "gone", None).await;
    conns["/keep"].send_text("k1").await.expect("send");
    conns["/change"].send_text("c1").await.expect("send");
    assert_eq!(next_message(&mut keep_sub, T).await.seq, 1);
    assert_eq!(next_message(&mut change_sub, T).await.seq, 1);

    // Nothing may keep a removed endpoint (and its log) alive: a reference cycle would leak
    // its replay window on every reload that removes it.
    let gone_ep = Arc::downgrade(&d.endpoint("gone"));

    // change: a new header; gone: removed; added: new.
    let new = base("headers = { \"X-Version\" = \"2\" }\n")
        + &format!("[endpoints.added]\nurl = \"{}\"\n", up.url("/added"));
    let report = d.reloader.apply(parse_config(&new)).await.expect("reload");
    assert_eq!(report.unchanged, vec!["keep"]);
    assert_eq!(report.changed, vec!["change"]);
    assert_eq!(report.removed, vec!["gone"]);
    assert_eq!(report.added, vec!["added"]);

    let close = tokio::time::timeout(T, conns["/gone"].closed())
        .await
        .expect("gone closes");
    assert_eq!(close.map(|c| c.code), Some(1001));
    let mut last = None;
    while let Ok(Some(ev)) = tokio::time::timeout(T, gone_sub.message())
        .await
        .expect("bounded")
    {
        last = ev.event;
    }
    match last {
        Some(Ev::State(s)) => {
            assert_eq!(state_name(&s), "closed");
            assert!(s.reason.contains("removed"), "{}", s.reason);
        }
        other => panic!("a removed endpoint's stream ends with its closed state: {other:?}"),
    }
    assert!(d.registry.get("gone").is_none());
    drop(gone_sub);
    let freed = tokio::time::timeout(T, async {
        while gone_ep.upgrade().is_some() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(freed.is_ok(), "the removed endpoint is still referenced");

    let mut fresh = Vec::new();
    for _ in 0..2 {
        fresh.push(up.next_accepted_within(T).await.expect("reconnect or new"));
    }
    let changed = fresh
        .iter()
        .find(|c| c.uri().path() == "/change")
        .expect("change reconnected");
    assert_eq!(
        changed.header("x-version"),
        Some("2"),
        "the new settings are in force"
    );
    assert!(
        fresh.iter().any(|c| c.uri().path() == "/added"),
        "added endpoint started"
    );
    d.wait_state("change", State::Connected, T).await;
    d.wait_state("added", State::Connected, T).await;

    // The changed endpoint's subscriber stayed and its seq continues.
    changed.send_text("c2").await.expect("send");
    loop {
        match next_event(&mut change_sub, T).await {
            Ev::Key(k) => panic!("a Subscribe stream carries no key changes: {k:?}"),
            Ev::State(s) => assert_ne!(state_name(&s), "closed", "the subscriber stays"),
            Ev::Message(m) => {
                assert_eq!((m.seq, &m.data[..]), (2, &b"c2"[..]));
                break;
            }
            Ev::Gap(g) => panic!("{g:?}"),
        }
    }
    // The unchanged endpoint was not reconnected and its stream goes on.
    assert!(!conns["/keep"].is_closed());
    conns["/keep"].send_text("k2").await.expect("send");
    assert_eq!(next_message(&mut keep_sub, T).await.seq, 2);
    assert_eq!(
        up.accepted(),
        5,
        "3 at start, the changed one again, the added one"
    );

    // grpc.health.v1 follows: the added endpoint is reported, the removed one is not.
    let addr = d.grpc_tcp.expect("tcp listener");
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("channel");
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let check = |service: &str| tonic_health::pb::HealthCheckRequest {
        service: service.into(),
    };
    tokio::time::timeout(T, async {
        loop {
            let added = health
                .check(check("added"))
                .await
                .map(|r| r.into_inner().status)
                .ok();
            let gone = health.check(check("gone")).await.err().map(|s| s.code());
            if added == Some(1) && gone == Some(tonic::Code::NotFound) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("health follows the reload");
    d.stop().await;
}

/// A daemon started from a config file in `dir` (as `run` starts one), so that reloads re-read
/// that file; its sockets and store are where `start_in` puts them.
async fn start_from_file(dir: tempfile::TempDir, endpoints: &str) -> (TestDaemon, PathBuf) {
    let path = dir.path().join("config.toml");
    std::fs::write(&path, file_text(dir.path(), endpoints)).expect("write config");
    let cfg = ws_sidecar::config::load(&path).expect("valid config");
    (start_in(cfg, dir).await, path)
}

/// The config text `start_from_file` writes: the paths `start_in` uses, then `endpoints`.
fn file_text(dir: &Path, endpoints: &str) -> String {
    format!(
        "[grpc]\nlisten = [\"unix:{0}/run/grpc.sock\"]\n[stream]\npath = \"{0}/run/stream.sock\"\n\
         [http]\nlisten = \"\"\n[store]\npath = \"{0}/store\"\n{endpoints}",
        dir.display()
    )
}

/// `toml` with the listeners and store `d` runs with, as the file it started from would have.
fn like_running(d: &TestDaemon, toml: &str) -> ws_sidecar::config::Config {
    use ws_sidecar::config::ListenAddr;
    let mut cfg = parse_config(toml);
    cfg.grpc.listen = vec![ListenAddr::Unix(d.grpc_path.clone())];
    cfg.stream.path = Some(d.stream_path.clone());
    cfg.store.path = d.dir.path().join("store");
    cfg.http.listen = None;
    cfg
}

/// Receives the next sd_notify datagram, bounded in time.
async fn notified(sock: &tokio::net::UnixDatagram) -> String {
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(T, sock.recv(&mut buf))
        .await
        .expect("a notification in time")
        .expect("recv");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// What GetStatus says of the last reload, and the metrics text.
async fn refusal_shown(d: &TestDaemon) -> (Option<String>, String) {
    let status = d
        .grpc()
        .await
        .get_status(proto::GetStatusRequest { endpoint: None })
        .await
        .expect("status")
        .into_inner();
    (
        status.reload_refused,
        ws_sidecar::metrics::render(&d.registry),
    )
}

#[tokio::test]
async fn a_refused_reload_changes_nothing_and_stays_in_the_status_line() {
    let up = FakeUpstream::start_with(|_, _| Reply::Accept).await;
    let dir = tempfile::tempdir().expect("tmp");
    let notify_path = dir.path().join("notify.sock");
    let notify = tokio::net::UnixDatagram::bind(&notify_path).expect("bind notify socket");
    let keep = format!("[endpoints.keep]\nurl = \"{}\"\n", up.url("/keep"));
    let (d, path) = start_from_file(dir, &keep).await;
    let notifier = Notifier::to(notify_path.to_str().expect("utf-8")).expect("notifier");
    d.reloader.notify_via(notifier);
    let conn = up.next_accepted_within(T).await.expect("connects");
    d.wait_state("keep", State::Connected, T).await;

    // A typo: refused, reported, nothing restarted.
    std::fs::write(
        &path,
        file_text(d.dir.path(), &format!("{keep}conect_timeout = \"5s\"\n")),
    )
    .expect("write");
    let outcome = d.reloader.reload_file().await;
    let first = format!(
        "{}: endpoints.keep.conect_timeout: unknown key, did you mean `connect_timeout`?",
        path.display()
    );
    assert!(!outcome.accepted);
    assert_eq!(outcome.errors, std::slice::from_ref(&first));
    assert_eq!(outcome.report, Default::default());
    assert!(notified(&notify).await.starts_with("RELOADING=1"));
    assert_eq!(
        notified(&notify).await,
        format!("READY=1\nSTATUS=reload refused: {first}; 1 endpoint: 1 connected")
    );
    assert!(!conn.is_closed(), "a refused reload reconnects nothing");
    // Outside systemd it shows too: GetStatus, NDJSON status, and the metric.
    let (why, metrics) = refusal_shown(&d).await;
    assert_eq!(why.as_deref(), Some(first.as_str()));
    assert!(
        metrics.contains("\nws_sidecar_config_last_reload_successful 0\n"),
        "{metrics}"
    );
    let mut nd = d.ndjson().await;
    nd.send(serde_json::json!({"op": "status"})).await;
    let status = nd.recv_type("status", T).await;
    assert_eq!(status["reload_refused"], first.as_str(), "{status}");

    // The next good reload clears it.
    std::fs::write(&path, file_text(d.dir.path(), &keep)).expect("write");
    let outcome = d.reloader.reload_file().await;
    assert!(outcome.accepted, "{:?}", outcome.errors);
    assert_eq!(outcome.report.unchanged, ["keep"]);
    assert!(notified(&notify).await.starts_with("RELOADING=1"));
    assert_eq!(
        notified(&notify).await,
        "READY=1\nSTATUS=1 endpoint: 1 connected"
    );
    assert!(!conn.is_closed());
    assert_eq!(up.accepted(), 1);
    let (why, metrics) = refusal_shown(&d).await;
    assert_eq!(why, None, "cleared by the good reload");
    assert!(
        metrics.contains("\nws_sidecar_config_last_reload_successful 1\n"),
        "{metrics}"
    );
    nd.send(serde_json::json!({"op": "status"})).await;
    let status = nd.recv_type("status", T).await;
    assert!(status.get("reload_refused").is_none(), "{status}");
    d.stop().await;
}

#[tokio::test]
async fn a_change_that_waits_for_a_restart_reconnects_nothing_and_names_its_keys() {
    let up = FakeUpstream::start_with(|_, _| Reply::Accept).await;
    let keep = format!("[endpoints.keep]\nurl = \"{}\"\n", up.url("/keep"));
    let d = start_daemon(&keep).await;
    let conn = up.next_accepted_within(T).await.expect("connects");
    d.wait_state("keep", State::Connected, T).await;
    let mut client = d.grpc().await;
    let mut sub = subscribe(&mut client, "keep", None).await;
    conn.send_text("m1").await.expect("send");
    assert_eq!(next_message(&mut sub, T).await.seq, 1);

    let sizes = "replay = { messages = 5 }\noutbox = { max_age = \"5m\" }\n";
    let new = format!("[limits]\nmax_subscribers = 7\n{keep}{sizes}");
    let report = d
        .reloader
        .apply(like_running(&d, &new))
        .await
        .expect("reload");
    assert_eq!(report.unchanged, ["keep"]);
    assert!(report.changed.is_empty(), "{report:?}");
    assert_eq!(
        report.need_restart,
        [
            "limits.max_subscribers",
            "endpoints.keep.replay.messages",
            "endpoints.keep.outbox.max_age",
        ]
    );
    assert_eq!(
        d.endpoint("keep").config().replay.messages,
        10_000,
        "kept until a restart"
    );
    // The connection and the subscription went on untouched.
    conn.send_text("m2").await.expect("send");
    assert_eq!(next_message(&mut sub, T).await.seq, 2);
    assert!(!conn.is_closed());
    assert_eq!(up.accepted(), 1);

    // With a change that does apply, the endpoint reconnects; the sizes still wait.
    let header = "headers = { X-V = \"2\" }\n";
    let newer = format!("[limits]\nmax_subscribers = 7\n{keep}{header}{sizes}");
    let report = d
        .reloader
        .apply(like_running(&d, &newer))
        .await
        .expect("reload");
    assert_eq!(report.changed, ["keep"]);
    assert_eq!(
        report.need_restart,
        [
            "limits.max_subscribers",
            "endpoints.keep.replay.messages",
            "endpoints.keep.outbox.max_age",
        ]
    );
    let again = up.next_accepted_within(T).await.expect("reconnects");
    assert_eq!(again.header("x-v"), Some("2"));
    assert_eq!(d.endpoint("keep").config().replay.messages, 10_000);
    d.stop().await;
}

/// A listener systemd passed is moved by its socket unit, not the file: changing its key is
/// reported as ignored, not as waiting for a restart that would not apply it either.
#[tokio::test]
async fn a_listener_key_systemd_owns_is_reported_as_ignored() {
    let up = FakeUpstream::start_with(|_, _| Reply::Accept).await;
    let keep = format!("[endpoints.keep]\nurl = \"{}\"\n", up.url("/keep"));
    let d = start_daemon(&keep).await;
    up.next_accepted_within(T).await.expect("connects");
    d.reloader.sockets_passed_for(vec!["http.listen"]);
    let mut new = like_running(&d, &keep);
    new.http.listen = Some("127.0.0.1:1".parse().expect("address"));
    new.stream.path = None;
    let report = d.reloader.apply(new).await.expect("reload");
    assert_eq!(report.need_restart, ["stream.path"], "{report:?}");
    assert_eq!(report.warnings.len(), 1, "{report:?}");
    assert!(
        report.warnings[0]
            .ends_with("http.listen: ignored, systemd passes this socket: change its socket unit"),
        "{report:?}"
    );
    d.stop().await;
}

/// The API listeners size their request limits from the largest `max_message_size` when they
/// start: a reload that changes it applies to the upstream at once, and names the API limit
/// as waiting for a restart rather than leaving the two APIs behind silently.
#[tokio::test]
async fn a_new_largest_max_message_size_names_the_api_request_limit_as_waiting() {
    let up = FakeUpstream::start_with(|_, _| Reply::Accept).await;
    let keep = format!("[endpoints.keep]\nurl = \"{}\"\n", up.url("/keep"));
    let d = start_daemon(&keep).await;
    let _conn = up.next_accepted_within(T).await.expect("connects");
    d.wait_state("keep", State::Connected, T).await;

    // Smaller than the largest (the default 16 MiB of `keep`): the limits stay the same.
    let small = format!(
        "{keep}[endpoints.small]\nurl = \"{}\"\nmax_message_size = \"1MiB\"\n",
        up.url("/small")
    );
    let report = d
        .reloader
        .apply(like_running(&d, &small))
        .await
        .expect("reload");
    assert_eq!(report.added, ["small"]);
    assert!(report.need_restart.is_empty(), "{report:?}");

    let larger = format!("{keep}max_message_size = \"32MiB\"\n");
    let report = d
        .reloader
        .apply(like_running(&d, &larger))
        .await
        .expect("reload");
    assert_eq!(report.changed, ["keep"]);
    assert_eq!(
        report.need_restart,
        ["API request size (the largest endpoints.*.max_message_size)"]
    );
    assert_eq!(
        d.endpoint("keep").config().max_message_size,
        32 << 20,
        "the upstream side applies at once"
    );
    d.stop().await;
}

#[tokio::test]
async fn the_reload_rpc_applies_the_file_as_sighup_does_and_needs_publish_access() {
    use std::os::unix::fs::MetadataExt;
    let up = FakeUpstream::start_with(|_, _| Reply::Accept).await;
    let dir = tempfile::tempdir().expect("tmp");
    let me = std::fs::metadata(dir.path()).expect("stat").uid();
    let a = |publish: u32| {
        format!(
            "[endpoints.a]\nurl = \"{}\"\naccess = {{ publish = [\"uid:{publish}\"] }}\n",
            up.url("/a")
        )
    };
    let (d, path) = start_from_file(dir, &a(me)).await;
    up.next_accepted_within(T).await.expect("connects");
    let mut client = d.grpc().await;

    let b = format!("[endpoints.b]\nurl = \"{}\"\n", up.url("/b"));
    std::fs::write(&path, file_text(d.dir.path(), &(a(me) + &b))).expect("write");
    let r = client
        .reload(proto::ReloadRequest {})
        .await
        .expect("reload allowed")
        .into_inner();
    assert!(r.accepted, "{:?}", r.errors);
    assert_eq!(
        (r.added, r.unchanged),
        (vec!["b".to_owned()], vec!["a".to_owned()])
    );
    assert_eq!(r.config, path.display().to_string());
    d.wait_state("b", State::Connected, T).await;

    std::fs::write(&path, file_text(d.dir.path(), "[endpoints.a]\nurl = 7\n")).expect("write");
    let r = client
        .reload(proto::ReloadRequest {})
        .await
        .expect("a refusal is an answer")
        .into_inner();
    assert!(!r.accepted);
    assert_eq!(
        r.errors,
        [format!(
            "{}: endpoints.a.url: expected a ws:// or wss:// URL, or a table {{ command = [...] }}, \
             {{ post = \"https://…\" }} or {{ get = \"https://…\" }}; found an integer",
            path.display()
        )]
    );
    assert!(d.registry.get("b").is_some(), "nothing changed");

    // a's publish list leaves this uid out, but this uid is the daemon's own: it could send
    // SIGHUP anyway, so it may still reload (the unit's ExecReload= relies on it). Other users
    // need publish access to every endpoint (access::tests::root_and_the_daemons_own_user…).
    std::fs::write(&path, file_text(d.dir.path(), &(a(me + 1) + &b))).expect("write");
    for _ in 0..2 {
        let r = client
            .reload(proto::ReloadRequest {})
            .await
            .expect("the daemon's own user may reload")
            .into_inner();
        assert!(r.accepted, "{:?}", r.errors);
    }
    d.stop().await;
}

/// `[cluster]` is read when the daemon starts (its NATS client and leases live as long as the
/// process): a reload that changes it names it as waiting for a restart, and leaves the
/// endpoints that did not change alone.
#[tokio::test]
async fn a_changed_cluster_section_waits_for_a_restart() {
    let up = FakeUpstream::start_with(|_, _| Reply::Accept).await;
    let keep = format!("[endpoints.keep]\nurl = \"{}\"\n", up.url("/keep"));
    let d = start_daemon(&keep).await;
    let conn = up.next_accepted_within(T).await.expect("connects");
    d.wait_state("keep", State::Connected, T).await;

    let with_cluster = format!("{keep}[cluster]\nnats = \"nats://127.0.0.1:4222\"\n");
    let report = d
        .reloader
        .apply(like_running(&d, &with_cluster))
        .await
        .expect("reload");
    assert_eq!(report.need_restart, ["cluster"], "{report:?}");
    assert_eq!(report.unchanged, ["keep"], "{report:?}");
    assert!(!conn.is_closed());
    assert_eq!(up.accepted(), 1);

    // Turning `cluster` on waits for that restart too: run alone, the endpoint would hold a
    // connection of its own beside the fleet's leader.
    let clustered = format!(
        "[endpoints.keep]\nurl = \"{}\"\ncluster = true\n[cluster]\nnats = \"nats://127.0.0.1:4222\"\n",
        up.url("/keep")
    );
    d.reloader
        .apply(like_running(&d, &clustered))
        .await
        .expect("reload");
    let failed = d.wait_state("keep", State::Failed, T).await;
    assert!(failed.reason.contains("restart"), "{failed:?}");
    assert_eq!(up.accepted(), 1, "no connection of its own");
    d.stop().await;
}
