//! Upstream access with the real binary, where the process environment matters: secret
//! sources and `$CREDENTIALS_DIRECTORY`, proxy environment variables, and redaction of every
//! secret in logs (trace level, both formats), status output and errors.

mod support;

use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

use support::access::{
    connect_proxy, counting_listener, token_endpoint, HttpProxy, SocksProxy, SocksTarget,
};
use support::process::{daemon_config, grpc_addr, wait_ready, write_config, Spawned, BIN};
use support::{FakeUpstream, Reply};
use ws_sidecar::client::{self, Target};
use ws_sidecar::proto;

const T: Duration = Duration::from_secs(15);

type Grpc = proto::sidecar_client::SidecarClient<tonic::transport::Channel>;

/// Starts the daemon with its stderr going to `dir/stderr.log`: a pipe nobody reads would
/// fill up with trace logs and block the daemon.
fn spawn(dir: &std::path::Path, endpoints: &str, env: &[(&str, &str)]) -> Spawned {
    spawn_with(dir, &daemon_config(dir, endpoints), env)
}

fn spawn_with(dir: &std::path::Path, config: &str, env: &[(&str, &str)]) -> Spawned {
    let cfg = write_config(dir, config);
    let log = std::fs::File::create(dir.join("stderr.log")).expect("log file");
    let mut cmd = Command::new(BIN);
    cmd.args(["run", "--config"]).arg(cfg);
    for (k, v) in env {
        cmd.env(k, v);
    }
    Spawned::new(
        cmd.stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn daemon"),
    )
}

/// SIGTERM, wait, and the daemon's stderr.
fn stop(dir: &std::path::Path, mut child: Spawned) -> String {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(0), "clean exit after SIGTERM");
    std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn secret_sources_resolve_with_the_credentials_directory() {
    let up = FakeUpstream::start_with(|_, _| Reply::Accept).await;
    let dir = support::temp_dir();
    let creds = dir.path().join("creds");
    std::fs::create_dir(&creds).expect("creds dir");
    std::fs::write(creds.join("token"), "file-token-1\n").expect("token");
    std::fs::write(creds.join("header"), "file-header-1").expect("header");
    let eps = format!(
        "[endpoints.a]\nurl = \"{}\"\nheaders = {{ \"X-File\" = {{ file = \"header\" }}, \"X-Cmd\" = {{ command = [\"sh\", \"-c\", \"echo '  cmd-secret-1  '\"] }}, \"X-Env\" = {{ env = \"A_SECRET\" }} }}\n[endpoints.a.auth]\ntoken = {{ file = \"token\" }}\n",
        up.url("/")
    );
    let child = spawn(
        dir.path(),
        &eps,
        &[
            ("CREDENTIALS_DIRECTORY", creds.to_str().expect("utf8")),
            ("A_SECRET", "env-secret-1"),
        ],
    );
    let c = up.next_accepted_within(T).await.expect("connects");
    assert_eq!(
        c.header("authorization"),
        Some("Bearer file-token-1"),
        "relative file in $CREDENTIALS_DIRECTORY"
    );
    assert_eq!(c.header("x-file"), Some("file-header-1"));
    assert_eq!(
        c.header("x-cmd"),
        Some("cmd-secret-1"),
        "command output, trimmed"
    );
    assert_eq!(c.header("x-env"), Some("env-secret-1"));
    // A rotated file is used by the next connection.
    std::fs::write(creds.join("token"), "file-token-2").expect("rotate");
    c.reset().await.expect("reset");
    let c = up.next_accepted_within(T).await.expect("reconnects");
    assert_eq!(c.header("authorization"), Some("Bearer file-token-2"));
    stop(dir.path(), child);
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_environment_and_no_proxy() {
    let up = FakeUpstream::start_with(|_, _| Reply::Accept).await;
    let HttpProxy {
        addr: proxy,
        tunnels,
        ..
    } = connect_proxy(None).await;
    let dir = support::temp_dir();
    let port = up.addr().port();
    let eps = format!(
        "[endpoints.proxied]\nurl = \"ws://127.0.0.1:{port}/p\"\n[endpoints.bypassed]\nurl = \"ws://localhost:{port}/b\"\n"
    );
    let proxy_url = format!("http://{proxy}");
    let child = spawn(
        dir.path(),
        &eps,
        &[
            ("http_proxy", &proxy_url),
            ("NO_PROXY", "localhost,.internal"),
        ],
    );
    let mut seen = Vec::new();
    for _ in 0..2 {
        seen.push(
            up.next_accepted_within(T)
                .await
                .expect("connects")
                .uri()
                .path()
                .to_owned(),
        );
    }
    seen.sort();
    assert_eq!(seen, vec!["/b", "/p"]);
    assert_eq!(
        tunnels.load(Ordering::SeqCst),
        1,
        "only the endpoint not in NO_PROXY used the proxy"
    );
    stop(dir.path(), child);
}

/// One rule cleans every secret, wherever it goes (issue 12, item 8): an environment value
/// ending with a newline is sent without it in a header and in the query alike (the query once
/// sent `tok-123%0A`), and one with a newline inside fails locally, naming its source.
#[tokio::test(flavor = "multi_thread")]
async fn a_secret_is_cleaned_the_same_way_in_a_header_and_in_the_query() {
    let up = FakeUpstream::start_with(|_, _| Reply::Accept).await;
    let dir = support::temp_dir();
    let eps = format!(
        "[endpoints.hdr]\nurl = \"{0}\"\nauth = {{ token = {{ env = \"TOKEN\" }} }}\n\
         [endpoints.qry]\nurl = \"{0}\"\nauth = {{ token = {{ env = \"TOKEN\" }}, query = \"access_token\" }}\n\
         [endpoints.bad]\nurl = \"{0}\"\nauth = {{ token = {{ env = \"BROKEN\" }}, query = \"access_token\" }}\n",
        up.url("/feed")
    );
    let child = spawn(
        dir.path(),
        &eps,
        &[("TOKEN", "tok-123\n"), ("BROKEN", "zq9\nx7")],
    );
    let mut c = grpc(dir.path()).await;
    let reason = wait_reason(&mut c, "bad", proto::State::Backoff).await;
    assert!(
        reason.contains("environment variable BROKEN contains a control character"),
        "{reason}"
    );
    assert!(!reason.contains("zq9"), "{reason}");
    let attempts = up.wait_attempts(2, T).await.expect("two connections");
    let mut seen: Vec<(Option<String>, String)> = attempts
        .iter()
        .map(|a| {
            (
                a.header("authorization").map(str::to_owned),
                a.target.clone(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        vec![
            (None, "/feed?access_token=tok-123".to_owned()),
            (Some("Bearer tok-123".to_owned()), "/feed".to_owned()),
        ],
        "the same token in both placements, the broken one never sent"
    );
    stop(dir.path(), child);
}

/// The gRPC client of the child daemon in `dir`, once it listens.
async fn grpc(dir: &std::path::Path) -> Grpc {
    wait_ready(dir);
    let target = Target::parse(&grpc_addr(dir)).expect("addr");
    client::connect(&target).await.expect("grpc")
}

/// Waits for endpoint `name` to reach `state`, following its state events; its reason.
async fn wait_reason(c: &mut Grpc, name: &str, state: proto::State) -> String {
    let mut events = support::daemon::subscribe(c, name, None).await;
    let mut seen = Vec::new();
    let reached = tokio::time::timeout(T, async {
        loop {
            if let proto::event::Event::State(s) = support::daemon::next_event(&mut events, T).await
            {
                if s.state == state as i32 {
                    return s.reason;
                }
                seen.push(format!("{}: {}", support::daemon::state_name(&s), s.reason));
            }
        }
    })
    .await;
    match reached {
        Ok(reason) => reason,
        Err(_) => panic!("{name} not {state:?} within {T:?}; it went through {seen:#?}"),
    }
}

/// Issue 12 item 6 (b) and unparsable values: a proxy variable that applies but cannot be used
/// fails the endpoint with a reason naming the variable; nothing connects directly, and the
/// OAuth2 token request does not either.
#[tokio::test(flavor = "multi_thread")]
async fn unusable_proxy_variables_fail_the_endpoint_and_nothing_connects_directly() {
    let (upstream, direct) = counting_listener().await;
    let (proxy, contacted) = counting_listener().await;
    let tokens = token_endpoint("tok-").await;
    let dir = support::temp_dir();
    let eps = format!(
        "[endpoints.plain]\nurl = \"ws://{upstream}/p\"\nconnect_timeout = \"1s\"\n\
         [endpoints.secure]\nurl = \"wss://{upstream}/s\"\nconnect_timeout = \"1s\"\n\
         [endpoints.oauth]\nurl = \"wss://{upstream}/o\"\nconnect_timeout = \"1s\"\n\
         [endpoints.oauth.auth]\ntoken = {{ oauth2 = {{ token_url = \"{}\", client_id = \"app\", client_secret = \"s3cret-client\" }} }}\n",
        tokens.url
    );
    let https_proxy = format!("https://user:hunter2@{proxy}");
    let env = [
        ("http_proxy", https_proxy.as_str()),
        ("HTTPS_PROXY", "http://user:hunter2@[broken"),
    ];
    let child = spawn(dir.path(), &eps, &env);
    let mut c = grpc(dir.path()).await;
    let plain = wait_reason(&mut c, "plain", proto::State::Failed).await;
    assert!(
        plain.contains("http_proxy: proxy scheme https is not supported"),
        "{plain}"
    );
    let secure = wait_reason(&mut c, "secure", proto::State::Failed).await;
    assert!(
        secure.contains("HTTPS_PROXY: invalid proxy URL: invalid IPv6 address"),
        "{secure}"
    );
    // The token request (http://) comes first, and follows http_proxy.
    let oauth = wait_reason(&mut c, "oauth", proto::State::Backoff).await;
    assert!(
        oauth.contains("http_proxy: proxy scheme https is not supported"),
        "{oauth}"
    );
    assert_eq!(direct.load(Ordering::SeqCst), 0, "no direct connection");
    assert_eq!(
        contacted.load(Ordering::SeqCst),
        0,
        "the proxy is not contacted"
    );
    assert_eq!(
        tokens.issued.load(Ordering::SeqCst),
        0,
        "no direct token request"
    );
    let logs = stop(dir.path(), child);
    for text in [&plain, &secure, &oauth, &logs] {
        assert!(!text.contains("hunter2"), "proxy password shown:\n{text}");
    }

    // check-config shows what the environment gives, or why it cannot be used.
    let cfg = write_config(dir.path(), &daemon_config(dir.path(), &eps));
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(cfg)
        .envs(env)
        .output()
        .expect("check-config");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("proxy unusable, the endpoint will fail: http_proxy: proxy scheme https"),
        "{text}"
    );
    assert!(!text.contains("hunter2"), "{text}");
}

/// Issue 12 item 6 (a): `ALL_PROXY=socks5h://…` is used, for the upstream and for the OAuth2
/// token request, with the password exactly as written.
#[tokio::test(flavor = "multi_thread")]
async fn all_proxy_socks5h_from_the_environment_carries_every_connection() {
    let up = FakeUpstream::start_with(|_, _| Reply::Accept).await;
    let tokens = token_endpoint("tok-").await;
    let socks = SocksProxy::start(Some(("user", "pa+ss&x=1"))).await;
    let dir = support::temp_dir();
    let port = up.addr().port();
    let eps = format!(
        "[endpoints.a]\nurl = \"ws://localhost:{port}/a\"\n\
         [endpoints.a.auth]\ntoken = {{ oauth2 = {{ token_url = \"{}\", client_id = \"app\", client_secret = \"s3cret-client\" }} }}\n\
         refresh_before = \"1s\"\nrenew = \"frame\"\nrenew_frame = \"renew\"\n",
        tokens.url
    );
    let all_proxy = format!("socks5h://user:pa+ss&x=1@{}", socks.addr);
    let child = spawn(dir.path(), &eps, &[("ALL_PROXY", &all_proxy)]);
    let mut c = grpc(dir.path()).await;
    let reason = wait_reason(&mut c, "a", proto::State::Connected).await;
    // Both the token request and the upstream connection went to the proxy.
    let requests = socks.wait_requests(2, T).await;
    assert_eq!(
        reason,
        format!(
            "connected to ws://localhost:{port}/a via proxy socks5h://user:***@{} (from ALL_PROXY)",
            socks.addr
        )
    );
    let conn = up.next_accepted_within(T).await.expect("connected");
    assert_eq!(conn.header("authorization"), Some("Bearer tok-1"));
    let mut s = support::daemon::subscribe(&mut c, "a", Some(0)).await;
    conn.send_text("through socks").await.expect("send");
    let m = support::daemon::next_message(&mut s, T).await;
    assert_eq!(&m.data[..], b"through socks");
    let token_port: u16 = tokens
        .url
        .trim_start_matches("http://127.0.0.1:")
        .split('/')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("token endpoint port");
    let targets: Vec<SocksTarget> = requests.iter().map(|r| r.target.clone()).collect();
    assert!(
        targets.contains(&SocksTarget::Addr(([127, 0, 0, 1], token_port).into())),
        "the token request went through the proxy: {targets:?}"
    );
    assert!(
        targets.contains(&SocksTarget::Domain("localhost".into(), port)),
        "the upstream connection went through the proxy, which resolved the name: {targets:?}"
    );
    for r in &requests {
        assert_eq!(
            r.credentials,
            Some(("user".to_owned(), "pa+ss&x=1".to_owned()))
        );
    }
    let logs = stop(dir.path(), child);
    assert!(
        !logs.contains("pa+ss"),
        "proxy password in the log:\n{logs}"
    );
}

/// Every secret below must appear nowhere: logs at trace level in both formats, status over
/// gRPC and the CLI, state reasons.
#[tokio::test(flavor = "multi_thread")]
async fn secrets_never_reach_logs_status_or_errors() {
    const HEADER_TOKEN: &str = "SECRET-HEADER-TOKEN-1";
    const QUERY_TOKEN: &str = "SECRET-QUERY-TOKEN-2";
    const REFUSED_TOKEN: &str = "SECRET-REFUSED-TOKEN-3";
    const PROXY_PASS: &str = "SECRETPROXYPASS4";
    const CLIENT_SECRET: &str = "s3cret-client";
    const OAUTH_PREFIX: &str = "SECRET-OAUTH-TOKEN-";
    const HEADER_VALUE: &str = "SECRET-HEADER-VALUE-6";
    let secrets = [
        HEADER_TOKEN,
        QUERY_TOKEN,
        REFUSED_TOKEN,
        PROXY_PASS,
        CLIENT_SECRET,
        OAUTH_PREFIX,
        HEADER_VALUE,
    ];

    for format in ["text", "json"] {
        let up = FakeUpstream::start_with(|_, req| {
            if req.uri().path() == "/refuse" {
                Reply::reject(401, &[])
            } else {
                Reply::Accept
            }
        })
        .await;
        let tokens = token_endpoint(OAUTH_PREFIX).await;
        let HttpProxy {
            addr: proxy,
            tunnels,
            ..
        } = connect_proxy(Some("user:SECRETPROXYPASS4")).await;
        let dir = support::temp_dir();
        let eps = format!(
            "[log]\nformat = \"{format}\"\n\
             [endpoints.header]\nurl = \"{u}/h\"\nheaders = {{ \"X-Api-Key\" = {{ env = \"HDR\" }} }}\n[endpoints.header.auth]\ntoken = {{ env = \"TOK\" }}\nttl = \"2s\"\nrefresh_before = \"1s\"\nrenew = \"frame\"\nrenew_frame = '{{\"auth\":\"{{{{token}}}}\"}}'\n\
             [endpoints.query]\nurl = \"{u}/q\"\nproxy = \"http://user:{PROXY_PASS}@{proxy}\"\n[endpoints.query.auth]\ntoken = \"{QUERY_TOKEN}\"\nquery = \"access_token\"\n\
             [endpoints.refused]\nurl = \"{u}/refuse\"\n[endpoints.refused.auth]\ntoken = {{ env = \"REFUSED\" }}\n[endpoints.refused.backoff]\ninitial = \"20ms\"\nmin_delay = \"10ms\"\n\
             [endpoints.oauth]\nurl = \"{u}/o\"\n[endpoints.oauth.auth]\ntoken = {{ oauth2 = {{ token_url = \"{t}\", client_id = \"app\", client_secret = {{ env = \"CS\" }} }} }}\nrefresh_before = \"1s\"\nrenew = \"reconnect\"\n",
            u = up.url("").trim_end_matches('/'),
            t = tokens.url,
        );
        let http_port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let config = daemon_config(dir.path(), &eps).replace(
            "[http]\nlisten = \"\"",
            &format!("[http]\nlisten = \"127.0.0.1:{http_port}\""),
        );
        let child = spawn_with(
            dir.path(),
            &config,
            &[
                ("RUST_LOG", "trace"),
                ("TOK", HEADER_TOKEN),
                ("HDR", HEADER_VALUE),
                ("REFUSED", REFUSED_TOKEN),
                ("CS", CLIENT_SECRET),
            ],
        );
        wait_ready(dir.path());
        let target = Target::parse(&grpc_addr(dir.path())).expect("addr");
        let mut c = client::connect(&target).await.expect("grpc");
        // Let renewals (header every ~1 s, oauth every ~1 s) and the 401 storm happen.
        let deadline = tokio::time::Instant::now() + T;
        loop {
            let st = c
                .get_status(proto::GetStatusRequest { endpoint: None })
                .await
                .expect("status")
                .into_inner();
            let by = |n: &str| {
                st.endpoints
                    .iter()
                    .find(|e| e.name == n)
                    .cloned()
                    .expect("endpoint")
            };
            let done = by("refused").state == proto::State::Failed as i32
                && by("query").state == proto::State::Connected as i32
                && tokens.issued.load(Ordering::SeqCst) >= 2
                && up.accepted() >= 5;
            if done {
                let text = format!("{st:?}");
                for s in secrets {
                    assert!(!text.contains(s), "{s} in GetStatus: {text}");
                }
                assert!(
                    by("query").url.contains("access_token=***"),
                    "{}",
                    by("query").url
                );
                assert!(by("refused").reason.contains("401"));
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "scenarios did not all run: {st:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(tunnels.load(Ordering::SeqCst) >= 1, "the proxy was used");
        for args in [vec!["status"], vec!["status", "--json"]] {
            let out = Command::new(BIN)
                .args(&args)
                .args(["--grpc", &grpc_addr(dir.path())])
                .output()
                .expect("status");
            let text = String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{text}");
            for s in secrets {
                assert!(!text.contains(s), "{s} in `ws-sidecar {args:?}`:\n{text}");
            }
        }
        for path in ["/status", "/metrics"] {
            let body = http_get(http_port, path).await;
            assert!(body.starts_with("HTTP/1.1 200"), "{path}: {body}");
            for s in secrets {
                assert!(!body.contains(s), "{s} in {path}:\n{body}");
            }
        }
        let logs = stop(dir.path(), child);
        assert!(
            logs.lines().count() > 50,
            "trace logs were captured ({format})"
        );
        if format == "json" {
            assert!(
                logs.lines()
                    .filter(|l| !l.trim().is_empty())
                    .all(|l| l.trim_start().starts_with('{')),
                "json lines"
            );
        }
        for s in secrets {
            if let Some(line) = logs.lines().find(|l| l.contains(s)) {
                panic!("{s} appears in the {format} logs:\n{line}");
            }
        }
    }
}

/// A plain HTTP/1.1 GET on 127.0.0.1, whole response as text.
async fn http_get(port: u16, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("http connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(T, s.read_to_end(&mut out))
        .await
        .expect("response in time")
        .expect("read");
    String::from_utf8_lossy(&out).into_owned()
}
