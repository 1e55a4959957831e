//! The `proxy` key: its schemes, its userinfo as written, and a malformed one refused.

use super::*;

/// Issue 12 items 6 and 7: the `proxy` key takes socks5 and socks5h too, and its userinfo is
/// percent-decoded (RFC 3986) and nothing else.
#[test]
fn proxy_key_takes_socks5_and_keeps_userinfo_as_written() {
    let config = ok(
        "[endpoints.h]\nurl = \"ws://x\"\nproxy = \"socks5h://us%20er:pa+ss&x=1@127.0.0.1:1080\"\n\
         [endpoints.l]\nurl = \"ws://x\"\nproxy = \"socks5://127.0.0.1\"\n\
         [endpoints.c]\nurl = \"ws://x\"\nproxy = \"http://user:pa+ss&%2B@proxy:3128\"\n",
    );
    let proxy = |name: &str| match &ep(&config, name).proxy {
        ProxyConfig::Url(p) => p.clone(),
        other => panic!("{name}: {other:?}"),
    };
    let h = proxy("h");
    assert_eq!((h.scheme(), h.port()), (ProxyScheme::Socks5h, 1080));
    assert_eq!(h.credentials(), Some(("us er", "pa+ss&x=1")));
    let l = proxy("l");
    assert_eq!(
        (l.scheme(), l.port(), l.credentials()),
        (ProxyScheme::Socks5, 1080, None)
    );
    let c = proxy("c");
    assert_eq!(c.scheme(), ProxyScheme::Http);
    assert_eq!(c.credentials(), Some(("user", "pa+ss&+")));
    let summary = config.summary();
    assert!(
        summary.contains("proxy socks5h://us%20er:***@127.0.0.1:1080"),
        "{summary}"
    );
    assert!(!summary.contains("pa+ss"), "{summary}");
    assert!(
        !format!("{config:?}").contains("pa+ss"),
        "Debug shows no proxy password"
    );
}

/// Issue 12 item 6 (c): a malformed `proxy` key makes check-config exit 78 naming the key.
#[test]
fn check_config_refuses_a_malformed_proxy() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("config.toml");
    std::fs::write(
        &path,
        "[endpoints.p]\nurl = \"ws://127.0.0.1:9/\"\nproxy = \"http://[broken\"\n",
    )
    .expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ws-sidecar"))
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .expect("run check-config");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains("endpoints.p.proxy: invalid proxy URL"),
        "{stderr}"
    );
}
