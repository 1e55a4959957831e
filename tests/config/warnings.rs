//! What check-config says besides errors: warnings and the summary, which never show a secret.

use super::*;

#[test]
fn warnings_and_summary_never_show_secrets() {
    let text = r#"
[endpoints.p]
url = "wss://user:pw-in-url@x.example/feed?apikey=k-in-url&room=1"
headers = { Authorization = "hdr-secret", User-Agent = "app/1" }
auth = { token = "tok-secret", query = "c" }
"#;
    let config = ok(text);
    let warnings = config.warnings();
    assert_eq!(
        warnings
            .iter()
            .map(|w| w.split(": ").nth(1).unwrap_or(""))
            .collect::<Vec<_>>(),
        [
            "endpoints.p.url",
            "endpoints.p.headers.Authorization",
            "endpoints.p.auth.token"
        ]
    );
    let summary = config.summary();
    for secret in ["pw-in-url", "k-in-url", "hdr-secret", "tok-secret"] {
        assert!(!summary.contains(secret), "{secret} leaked:\n{summary}");
        assert!(!warnings.iter().any(|w| w.contains(secret)));
    }
    assert!(summary.contains("wss://user:***@x.example/feed?apikey=***&room=1"));
    assert!(summary.contains("ping 20s, pong timeout 10s, idle timeout off"));
    assert!(summary.contains("unix:/run/ws-sidecar/grpc.sock"));
    assert!(summary.contains("store     /var/lib/ws-sidecar/store"));
}

#[test]
fn a_ttl_not_longer_than_refresh_before_is_warned_about() {
    let config = ok(r#"
[endpoints.p]
url = "wss://x.example/feed"
auth = { token = { env = "T" }, ttl = "30s" }
[endpoints.q]
url = "wss://x.example/feed"
auth = { token = { env = "T" }, ttl = "2m", refresh_before = "1m" }
"#);
    let warnings = config.warnings();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(
        warnings[0],
        "config.toml: endpoints.p.auth.ttl: 30s is not longer than auth.refresh_before (1m): the token is renewed halfway through its life instead, every 15s"
    );
}
