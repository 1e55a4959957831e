//! Upstream access (SPEC §4 proxy/tls, §5 auth, §6): token renewal in both modes, OAuth2,
//! 401 storms, TLS with a test CA and mTLS, HTTP CONNECT proxies.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use tokio_tungstenite::tungstenite::Message;
use ws_sidecar::endpoint::State;

use crate::support::access::{
    connect_proxy, token_endpoint, HttpProxy, SocksProxy, SocksRequest, SocksTarget,
};
use crate::support::daemon::{next_message, start_daemon, subscribe};
use crate::support::tls::{TestPki, TlsUpstream};
use crate::support::{since_param, tick_id, tick_message, FakeUpstream, Reply};

const T: Duration = Duration::from_secs(15);

/// An unsigned JWT whose `exp` is `secs` from now, marked with `tag`.
fn jwt(tag: &str, secs: u64) -> String {
    let exp = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + secs;
    let b = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    format!(
        "{}.{}.sig",
        b(r#"{"alg":"none"}"#),
        b(&format!(r#"{{"exp":{exp},"tag":"{tag}"}}"#))
    )
}

#[tokio::test]
async fn jwt_renewed_by_frame_before_expiry() {
    let up = FakeUpstream::start_with(|_, _| Reply::Accept).await;
    let dir = crate::support::temp_dir();
    let token_file = dir.path().join("token");
    let first = jwt("first", 3);
    std::fs::write(&token_file, &first).expect("token");
    let d = start_daemon(&format!(
        "[endpoints.a]\nurl = \"{}\"\n[endpoints.a.auth]\ntoken = {{ file = \"{}\" }}\nrefresh_before = \"1s\"\nrenew = \"frame\"\nrenew_frame = '{{\"op\":\"auth\",\"token\":\"{{{{token}}}}\"}}'\n",
        up.url("/"),
        token_file.display()
    ))
    .await;
    let c = up.next_accepted_within(T).await.expect("connects");
    assert_eq!(
        c.header("authorization"),
        Some(format!("Bearer {first}").as_str())
    );
    let issued = Instant::now();
    let second = jwt("second", 3);
    std::fs::write(&token_file, &second).expect("rotate");
    let frame = match c.recv_timeout(T).await.expect("renewal frame") {
        Some(Message::Text(t)) => t.to_string(),
        other => panic!("unexpected {other:?}"),
    };
    assert!(
        issued.elapsed() < Duration::from_secs(3),
        "renewed before expiry"
    );
    assert_eq!(frame, format!(r#"{{"op":"auth","token":"{second}"}}"#));
    assert!(!c.is_closed(), "the connection stays");
    assert!(
        d.endpoint("a")
            .stats
            .auth_expires_at
            .load(Ordering::Relaxed)
            > 0
    );
    d.stop().await;
}

#[tokio::test]
async fn jwt_renewed_by_reconnect_is_make_before_break_without_gap_or_duplicate() {
    // A feed that resends from ?since=, ticking every 5 ms on every connection.
    let up = FakeUpstream::start_with_handler(
        |_, _| Reply::Accept,
        |conn| {
            tokio::spawn(async move {
                let mut id = since_param(conn.uri()).map_or(1, |s| s + 1);
                loop {
                    if conn.send_text(&tick_message(id)).await.is_err() {
                        return;
                    }
                    id += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            });
        },
    )
    .await;
    let dir = crate::support::temp_dir();
    let token_file = dir.path().join("token");
    let first = jwt("first", 3);
    std::fs::write(&token_file, &first).expect("token");
    let d = start_daemon(&format!(
        "[endpoints.a]\nurl = \"{}\"\n[endpoints.a.auth]\ntoken = {{ file = \"{}\" }}\nrefresh_before = \"1s\"\n[endpoints.a.resume]\nid_pointer = \"/id\"\nquery = \"since\"\n",
        up.url("/feed"),
        token_file.display()
    ))
    .await;
    let c1 = up.next_accepted_within(T).await.expect("connects");
    let issued = Instant::now();
    assert_eq!(
        c1.header("authorization"),
        Some(format!("Bearer {first}").as_str())
    );
    let mut client = d.grpc().await;
    let mut s = subscribe(&mut client, "a", Some(0)).await;
    let second = jwt("second", 30);
    std::fs::write(&token_file, &second).expect("rotate");

    let c2 = up
        .next_accepted_within(T)
        .await
        .expect("replacement connection");
    assert!(
        issued.elapsed() < Duration::from_secs(3),
        "the new credential is used before the old one expires"
    );
    assert_eq!(
        c2.header("authorization"),
        Some(format!("Bearer {second}").as_str())
    );
    let close = tokio::time::timeout(T, c1.closed())
        .await
        .expect("old one closes");
    assert_eq!(
        close.map(|c| c.code),
        Some(1000),
        "the old connection closes with 1000"
    );
    assert!(since_param(c2.uri()).is_some(), "the replacement resumes");

    // Every id once, in order, across the switch.
    let mut last = 0;
    let until = Instant::now() + Duration::from_millis(700);
    while Instant::now() < until || last == 0 {
        let m = next_message(&mut s, T).await;
        let id = tick_id(std::str::from_utf8(&m.data).expect("utf8")).expect("id");
        assert_eq!(id, last + 1, "no gap, no duplicate");
        assert_eq!(m.seq, id);
        last = id;
    }
    assert!(
        last > since_param(c2.uri()).unwrap_or(0),
        "read past the switch"
    );
    assert_eq!(d.endpoint("a").state().state, State::Connected);
    d.stop().await;
}

#[tokio::test]
async fn oauth2_tokens_are_renewed_and_an_outage_keeps_the_connection() {
    let tokens = token_endpoint("tok-").await;
    let up = FakeUpstream::start_with(|_, _| Reply::Accept).await;
    let d = start_daemon(&format!(
        "[endpoints.a]\nurl = \"{}\"\n[endpoints.a.auth]\ntoken = {{ oauth2 = {{ token_url = \"{}\", client_id = \"app\", client_secret = \"s3cret-client\" }} }}\nrefresh_before = \"1s\"\nrenew = \"frame\"\nrenew_frame = '{{\"op\":\"auth\",\"token\":\"{{{{token}}}}\"}}'\n",
        up.url("/"),
        tokens.url
    ))
    .await;
    let c = up.next_accepted_within(T).await.expect("connects");
    assert_eq!(c.header("authorization"), Some("Bearer tok-1"));
    match c.recv_timeout(T).await.expect("renewal") {
        Some(Message::Text(t)) => assert_eq!(t.as_str(), r#"{"op":"auth","token":"tok-2"}"#),
        other => panic!("unexpected {other:?}"),
    }
    // The token endpoint goes down while tok-2 is still valid: renewals fail and are retried,
    // the upstream connection stays.
    tokens.down.store(true, Ordering::SeqCst);
    let ep = d.endpoint("a");
    tokio::time::timeout(T, async {
        while ep.stats.auth_renewals_failed.load(Ordering::Relaxed) < 2 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("renewal retried");
    assert_eq!(ep.state().state, State::Connected);
    assert!(!c.is_closed());
    assert_eq!(up.accepted(), 1, "no reconnect during the token outage");
    tokens.down.store(false, Ordering::SeqCst);
    match c.recv_timeout(T).await.expect("renewal after the outage") {
        Some(Message::Text(t)) => assert!(t.starts_with(r#"{"op":"auth","token":"tok-"#)),
        other => panic!("unexpected {other:?}"),
    }
    assert!(tokens.issued.load(Ordering::SeqCst) >= 3);
    d.stop().await;
}

/// Tokens living less than `refresh_before` (60 s by default) once made every connection renew
/// at once: with `renew = "reconnect"`, over a thousand connections a second (issue 12, item 2).
/// Renewal now waits half the token's lifetime, at least two seconds.
#[tokio::test]
async fn short_lived_tokens_are_renewed_halfway_not_in_a_reconnect_storm() {
    let dir = crate::support::temp_dir();
    let (jwt_file, opaque_file) = (dir.path().join("jwt"), dir.path().join("opaque"));
    std::fs::write(&jwt_file, jwt("short", 8)).expect("token");
    std::fs::write(&opaque_file, "opaque-token").expect("token");
    let tokens = token_endpoint("tok-").await; // expires_in = 2
    let ups = [
        FakeUpstream::start_with(|_, _| Reply::Accept).await,
        FakeUpstream::start_with(|_, _| Reply::Accept).await,
        FakeUpstream::start_with(|_, _| Reply::Accept).await,
    ];
    let started = Instant::now();
    let d = start_daemon(&format!(
        "[endpoints.jwt]\nurl = \"{}\"\nauth = {{ token = {{ file = \"{}\" }} }}\n\
         [endpoints.ttl]\nurl = \"{}\"\nauth = {{ token = {{ file = \"{}\" }}, ttl = \"8s\" }}\n\
         [endpoints.oauth]\nurl = \"{}\"\nauth = {{ token = {{ oauth2 = {{ token_url = \"{}\", client_id = \"app\", client_secret = \"s3cret-client\" }} }} }}\n",
        ups[0].url("/"),
        jwt_file.display(),
        ups[1].url("/"),
        opaque_file.display(),
        ups[2].url("/"),
        tokens.url,
    ))
    .await;
    // The JWT's exp is whole seconds, so it lives 7 to 8 s; half of that, with some slack.
    let at_least = [
        Duration::from_millis(3300),
        Duration::from_millis(3800),
        Duration::from_millis(1900),
    ];
    let renewals = ups.iter().zip(at_least).map(|(up, at_least)| async move {
        up.wait_attempts(2, T)
            .await
            .expect("renewed by a new connection");
        let attempts = up.attempts();
        let gap = attempts[1].at.saturating_duration_since(attempts[0].at);
        assert!(
            gap >= at_least,
            "renewed {gap:?} after connecting, expected at least {at_least:?}"
        );
        // The replacement holds: no third connection right behind it.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(up.attempts().len(), 2, "no reconnect storm");
    });
    futures_util::future::join_all(renewals).await;
    assert!(started.elapsed() < T);
    for name in ["jwt", "ttl", "oauth"] {
        assert_eq!(d.endpoint(name).state().state, State::Connected, "{name}");
    }
    d.stop().await;
}

/// `{{token}}` in `on_connect` (and in `resume.frame`) is the current token on every connect
/// (issue 12, item 9): it was accepted by check-config and sent as the literal `{{token}}`.
#[tokio::test]
async fn frames_sent_on_connect_carry_the_current_token() {
    let up = FakeUpstream::start_with(|_, _| Reply::Accept).await;
    let dir = crate::support::temp_dir();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "tok-A\n").expect("token");
    let d = start_daemon(&format!(
        "[endpoints.a]\nurl = \"{}\"\non_connect = ['{{\"type\":\"auth\",\"access_token\":\"{{{{token}}}}\"}}']\n\
         [endpoints.a.auth]\ntoken = {{ file = \"{}\" }}\n\
         [endpoints.a.resume]\nid_pointer = \"/id\"\nframe = '{{\"op\":\"resume\",\"token\":\"{{{{token}}}}\",\"seq\":{{{{last_id}}}}}}'\n",
        up.url("/"),
        token_file.display()
    ))
    .await;
    let c1 = up.next_accepted_within(T).await.expect("connects");
    assert_eq!(
        c1.recv_text().await,
        r#"{"type":"auth","access_token":"tok-A"}"#,
        "no resume frame before an id is known"
    );
    let mut client = d.grpc().await;
    let mut s = subscribe(&mut client, "a", None).await;
    c1.send_text(r#"{"id":5}"#).await.expect("send");
    next_message(&mut s, T).await;
    std::fs::write(&token_file, "tok-B").expect("rotate");
    c1.reset().await.expect("reset");
    let c2 = up.next_accepted_within(T).await.expect("reconnects");
    assert_eq!(
        c2.recv_text().await,
        r#"{"op":"resume","token":"tok-B","seq":5}"#
    );
    assert_eq!(
        c2.recv_text().await,
        r#"{"type":"auth","access_token":"tok-B"}"#
    );
    d.stop().await;
}

#[tokio::test]
async fn unauthorized_storm_fails_after_max_failures_without_a_hot_loop() {
    let up = FakeUpstream::start_with(|_, _| Reply::reject(401, &[])).await;
    let d = start_daemon(&format!(
        "[endpoints.a]\nurl = \"{}\"\n[endpoints.a.auth]\ntoken = \"static-token\"\nmax_failures = 4\n[endpoints.a.backoff]\ninitial = \"50ms\"\nmin_delay = \"40ms\"\n",
        up.url("/")
    ))
    .await;
    let ev = d.wait_state("a", State::Failed, T).await;
    assert!(ev.reason.contains("401"), "{}", ev.reason);
    assert!(
        ev.reason.contains("4 consecutive auth failures"),
        "{}",
        ev.reason
    );
    let at = up.attempts();
    assert_eq!(at.len(), 4);
    for w in at.windows(2) {
        assert!(
            w[1].at - w[0].at >= Duration::from_millis(38),
            "no hot loop: {:?}",
            w[1].at - w[0].at
        );
    }
    assert!(at
        .iter()
        .all(|a| a.header("authorization") == Some("Bearer static-token")));
    d.stop().await;
}

#[tokio::test]
async fn tls_with_a_test_ca_mtls_and_host_names() {
    let pki = TestPki::new();
    // Refused without ca_file (the CA is not a system root), accepted with it.
    let mut up = TlsUpstream::start(pki.server_config(&["localhost"], false)).await;
    let d = start_daemon(&format!(
        "[endpoints.sys]\nurl = \"{0}\"\n[endpoints.ca]\nurl = \"{0}\"\ntls = {{ ca_file = \"{1}\" }}\n",
        up.url("localhost"),
        pki.ca_file.display()
    ))
    .await;
    let ev = d.wait_state("sys", State::Backoff, T).await;
    assert!(ev.reason.contains("tls handshake"), "{}", ev.reason);
    assert!(
        ev.reason.to_ascii_lowercase().contains("unknownissuer")
            || ev.reason.contains("certificate"),
        "{}",
        ev.reason
    );
    d.wait_state("ca", State::Connected, T).await;
    let mut c = d.grpc().await;
    let _ = up.next_outcome().await;
    let mut s = subscribe(&mut c, "ca", Some(0)).await;
    assert_eq!(&next_message(&mut s, T).await.data[..], b"hello");
    d.stop().await;

    // A certificate for another name is refused; server_name makes it acceptable.
    let up = TlsUpstream::start(pki.server_config(&["other.test"], false)).await;
    let d = start_daemon(&format!(
        "[endpoints.wrong]\nurl = \"{0}\"\ntls = {{ ca_file = \"{1}\" }}\n[endpoints.named]\nurl = \"{0}\"\ntls = {{ ca_file = \"{1}\", server_name = \"other.test\" }}\n",
        up.url("localhost"),
        pki.ca_file.display()
    ))
    .await;
    let ev = d.wait_state("wrong", State::Backoff, T).await;
    assert!(ev.reason.contains("tls handshake"), "{}", ev.reason);
    d.wait_state("named", State::Connected, T).await;
    d.stop().await;

    // mTLS: without a client certificate the server refuses; with one it accepts.
    let (cert, key) = pki.leaf("client", &["client.test"]);
    let mut up = TlsUpstream::start(pki.server_config(&["localhost"], true)).await;
    let d = start_daemon(&format!(
        "[endpoints.anon]\nurl = \"{0}\"\ntls = {{ ca_file = \"{1}\" }}\n",
        up.url("localhost"),
        pki.ca_file.display()
    ))
    .await;
    assert!(
        up.next_outcome().await.is_err(),
        "no client certificate, no connection"
    );
    assert_ne!(d.endpoint("anon").state().state, State::Connected);
    d.stop().await;
    let d = start_daemon(&format!(
        "[endpoints.mtls]\nurl = \"{0}\"\ntls = {{ ca_file = \"{1}\", client_cert = \"{2}\", client_key = \"{3}\" }}\n",
        up.url("localhost"),
        pki.ca_file.display(),
        cert.display(),
        key.display()
    ))
    .await;
    d.wait_state("mtls", State::Connected, T).await;
    d.stop().await;
}

#[tokio::test]
async fn connect_proxy_with_basic_auth_and_407() {
    let up = FakeUpstream::start_with(|_, _| Reply::Accept).await;
    let HttpProxy {
        addr: proxy,
        tunnels,
        ..
    } = connect_proxy(Some("user:p@ss")).await;
    let d = start_daemon(&format!(
        "[endpoints.via]\nurl = \"{0}\"\nproxy = \"http://user:p%40ss@{1}\"\n[endpoints.badauth]\nurl = \"{0}\"\nproxy = \"http://user:wrong@{1}\"\n[endpoints.direct]\nurl = \"{0}\"\nproxy = \"\"\n",
        up.url("/"),
        proxy
    ))
    .await;
    d.wait_state("via", State::Connected, T).await;
    d.wait_state("direct", State::Connected, T).await;
    assert_eq!(
        tunnels.load(Ordering::SeqCst),
        1,
        "one tunnel: `via` went through, `direct` did not"
    );
    let ev = d.wait_state("badauth", State::Backoff, T).await;
    assert!(
        ev.reason
            .contains("proxy authentication required (HTTP 407)"),
        "{}",
        ev.reason
    );
    assert!(
        !ev.reason.contains("wrong"),
        "proxy password never shown: {}",
        ev.reason
    );
    let status = ws_sidecar::status::EndpointStatus::of(&d.endpoint("via"));
    assert!(
        !status.url.contains("p@ss") && !status.url.contains("p%40ss"),
        "{}",
        status.url
    );
    d.stop().await;
}

/// Issue 12 item 7: userinfo is percent-decoded and nothing else, so `+` and `&` in a password
/// reach the proxy as written (they used to arrive as a space, and as a cut).
#[tokio::test]
async fn connect_proxy_gets_a_password_with_plus_and_ampersand_unchanged() {
    let up = FakeUpstream::start_with(|_, _| Reply::Accept).await;
    let proxy = connect_proxy(Some("user:pa+ss&x=1")).await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a port nothing listens on");
    let d = start_daemon(&format!(
        "[endpoints.a]\nurl = \"{}\"\nproxy = \"http://user:pa+ss&x=1@{1}\"\n\
         [endpoints.gone]\nurl = \"ws://{closed}/\"\nproxy = \"http://user:pa+ss&x=1@{1}\"\n",
        up.url("/"),
        proxy.addr
    ))
    .await;
    // The proxy's answer is shown with its status.
    let gone = d.wait_state("gone", State::Backoff, T).await;
    assert!(
        gone.reason.contains(&format!(
            "refused CONNECT to {closed}: HTTP 502 Bad Gateway"
        )),
        "{}",
        gone.reason
    );
    let ev = d.wait_state("a", State::Connected, T).await;
    assert!(
        !proxy.credentials().is_empty()
            && proxy.credentials().iter().all(|c| c == "user:pa+ss&x=1"),
        "{:?}",
        proxy.credentials()
    );
    assert_eq!(proxy.tunnels.load(Ordering::SeqCst), 1);
    assert!(
        ev.reason
            .ends_with(&format!(" via proxy http://user:***@{}", proxy.addr)),
        "the state names the proxy, without its password: {}",
        ev.reason
    );
    d.stop().await;
}

/// Issue 12 item 6: SOCKS5 proxies, `socks5h://` sending the name for the proxy to resolve,
/// `socks5://` resolving it here; user and password (RFC 1929) exactly as written.
#[tokio::test]
async fn socks5_and_socks5h_proxies_tunnel_to_the_upstream() {
    let (remote, local) = (
        FakeUpstream::start_with(|_, _| Reply::Accept).await,
        FakeUpstream::start_with(|_, _| Reply::Accept).await,
    );
    // Only the request matters for this one: where `localhost` resolves is up to the host.
    let (resolved, _) = crate::support::access::counting_listener().await;
    let socks = SocksProxy::start(Some(("user", "pa+ss&x=1"))).await;
    let proxy = |scheme: &str| format!("{scheme}://user:pa+ss&x=1@{}", socks.addr);
    let d = start_daemon(&format!(
        "[endpoints.h]\nurl = \"ws://localhost:{}/h\"\nproxy = \"{}\"\n\
         [endpoints.l]\nurl = \"{}\"\nproxy = \"{}\"\n\
         [endpoints.n]\nurl = \"ws://localhost:{}/n\"\nproxy = \"{}\"\nconnect_timeout = \"1s\"\n\
         [endpoints.bad]\nurl = \"ws://localhost:{}/b\"\nproxy = \"socks5h://user:wrong-pass@{}\"\n",
        remote.addr().port(),
        proxy("socks5h"),
        local.url("/l"),
        proxy("socks5"),
        resolved.port(),
        proxy("socks5"),
        remote.addr().port(),
        socks.addr,
    ))
    .await;
    let mut c = d.grpc().await;
    for (name, up) in [("h", &remote), ("l", &local)] {
        let ev = d.wait_state(name, State::Connected, T).await;
        assert!(ev.reason.contains(" via proxy socks5"), "{}", ev.reason);
        assert!(!ev.reason.contains("pa+ss"), "{}", ev.reason);
        let conn = up.next_accepted_within(T).await.expect("tunnelled");
        let mut s = subscribe(&mut c, name, Some(0)).await;
        conn.send_text(&format!("hello {name}"))
            .await
            .expect("send");
        let m = next_message(&mut s, T).await;
        assert_eq!(&m.data[..], format!("hello {name}").as_bytes());
    }
    let bad = d.wait_state("bad", State::Backoff, T).await;
    assert!(
        bad.reason.contains("credentials not accepted") && !bad.reason.contains("wrong-pass"),
        "{}",
        bad.reason
    );
    let requests = socks.wait_requests(3, T).await;
    let to = |port: u16| -> Vec<&SocksRequest> {
        requests
            .iter()
            .filter(|r| match &r.target {
                SocksTarget::Domain(_, p) => *p == port,
                SocksTarget::Addr(a) => a.port() == port,
            })
            .collect()
    };
    let h = to(remote.addr().port());
    assert_eq!(
        h[0].target,
        SocksTarget::Domain("localhost".into(), remote.addr().port()),
        "socks5h sends the name"
    );
    for r in to(local.addr().port())
        .into_iter()
        .chain(to(resolved.port()))
    {
        assert!(
            matches!(&r.target, SocksTarget::Addr(a) if a.ip().is_loopback()),
            "socks5 sends an address resolved here: {r:?}"
        );
    }
    assert!(!to(resolved.port()).is_empty(), "{requests:?}");
    for r in &requests {
        assert_eq!(r.methods, vec![2], "user/password offered");
        assert_eq!(
            r.credentials,
            Some(("user".to_owned(), "pa+ss&x=1".to_owned()))
        );
    }
    d.stop().await;
}
