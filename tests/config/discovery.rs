//! `url` as a discovery table and `auth.renew = "none"` (issue 13, items 7 and 8): what is
//! accepted, what is refused at which key, and what check-config shows.

use super::*;
use ws_sidecar::config::{Discovery, DiscoveryMethod, UrlSource};

#[test]
fn a_discovery_table_is_read_with_its_defaults() {
    let c = ok(r#"
[endpoints.slack]
url = { post = "https://slack.com/api/apps.connections.open", token = { env = "SLACK_APP_TOKEN" }, error_pointer = "/error", auth_errors = ["invalid_auth"] }
[endpoints.discord]
url = { get = "https://discord.com/api/v10/gateway/bot", token = { file = "discord" }, format = "Bot {{token}}" }
[endpoints.cmd]
url = { command = ["/usr/local/bin/negotiate", "--hub", "prices"] }
"#);
    let UrlSource::Discover(Discovery::Http(slack)) = &ep(&c, "slack").url else {
        panic!("slack: an HTTP discovery");
    };
    assert_eq!(slack.method, DiscoveryMethod::Post);
    assert_eq!(slack.header, "Authorization");
    assert_eq!(slack.format, "Bearer {{token}}");
    assert_eq!(slack.pointer, "/url");
    assert_eq!(slack.error_pointer.as_deref(), Some("/error"));
    assert_eq!(slack.auth_errors, ["invalid_auth"]);
    let UrlSource::Discover(Discovery::Http(discord)) = &ep(&c, "discord").url else {
        panic!("discord: an HTTP discovery");
    };
    assert_eq!(discord.method, DiscoveryMethod::Get);
    assert_eq!(discord.format, "Bot {{token}}");
    assert_eq!(
        ep(&c, "cmd").url,
        UrlSource::Discover(Discovery::Command(vec![
            "/usr/local/bin/negotiate".into(),
            "--hub".into(),
            "prices".into()
        ]))
    );
    // A discovered URL may be wss://: tls settings are accepted.
    ok(r#"
[endpoints.cmd]
url = { command = ["negotiate"] }
tls = { ca_file = "/ca.pem", server_name = "a.test" }
"#);
}

#[test]
fn a_discovery_table_is_validated_at_its_keys() {
    let cases: &[(&str, &str)] = &[
        ("url = { command = [] }", "endpoints.p.url.command: must not be empty"),
        ("url = { command = [\"\"] }", "endpoints.p.url.command: program name must not be empty"),
        ("url = { command = \"prog\" }", "endpoints.p.url.command: expected an array, found a string"),
        ("url = { post = \"wss://x/y\" }", "endpoints.p.url.post: discovery URL scheme must be https or http, not \"wss\""),
        ("url = { get = \"not a url\" }", "endpoints.p.url.get: invalid URL"),
        ("url = { post = \"https://x/\", get = \"https://x/\" }", "endpoints.p.url: a discovered URL takes exactly one of command, post or get"),
        ("url = { pointer = \"/url\" }", "endpoints.p.url: a discovered URL takes exactly one of command, post or get"),
        ("url = { command = [\"p\"], pointer = \"/url\" }", "endpoints.p.url.pointer: unknown key"),
        ("url = { post = \"https://x/\", methd = \"GET\" }", "endpoints.p.url.methd: unknown key"),
        ("url = { post = \"https://x/\", pointer = \"url\" }", "endpoints.p.url.pointer: invalid JSON pointer \"url\""),
        ("url = { post = \"https://x/\", format = \"Bearer {{token}}\" }", "endpoints.p.url.format: only used with token, which is not set"),
        ("url = { post = \"https://x/\", token = \"t\", format = \"Bearer\" }", "endpoints.p.url.format: must contain {{token}}"),
        ("url = { post = \"https://x/\", token = \"t\", format = \"{{last_id}}\" }", "endpoints.p.url.format: {{last_id}} has a value only in resume.frame"),
        ("url = { post = \"https://x/\", auth_errors = [\"invalid_auth\"] }", "endpoints.p.url.auth_errors: only used with error_pointer, which is not set"),
        ("url = { post = \"https://x/\", headers = { Host = \"h\" } }", "endpoints.p.url.headers.Host: set by the HTTP client itself"),
        ("url = { post = \"https://x/\", token = \"t\", headers = { authorization = \"x\" } }", "endpoints.p.url.headers: Authorization is set by token"),
        ("url = 5", "endpoints.p.url: expected a ws:// or wss:// URL, or a table"),
        ("url = { post = \"https://x/\" }\nauth = { token = \"t\", renew = \"none\", refresh_before = \"5s\" }", "endpoints.p.auth.refresh_before: not used with renew = \"none\""),
        ("url = \"ws://x\"\nauth = { token = \"t\", renew = \"none\", renew_frame = \"x\" }", "endpoints.p.auth.renew_frame: only used with renew = \"frame\""),
        ("url = \"ws://x\"\nauth = { token = \"t\", renew = \"never\" }", "endpoints.p.auth.renew: invalid value \"never\", expected one of reconnect, frame, none"),
    ];
    for (body, want) in cases {
        let errs = errors(&format!("[endpoints.p]\n{body}\n"));
        assert!(
            errs.iter().any(|e| e.contains(want)),
            "{body}: expected {want:?}, got {errs:#?}"
        );
    }
}

#[test]
fn check_config_shows_a_discovery_without_its_secrets() {
    let c = ok(r#"
[endpoints.slack]
url = { post = "https://slack.com/api/apps.connections.open?t=1", token = "xapp-in-clear", headers = { X-Api-Key = "k-in-clear" }, error_pointer = "/error" }
auth = { token = { env = "KRAKEN_TOKEN" }, renew = "none" }
"#);
    let summary = c.summary();
    assert!(
        summary.contains(
            "endpoint slack  (discovered by POST https://slack.com/api/apps.connections.open?t=1)"
        ),
        "{summary}"
    );
    assert!(
        summary.contains("url         POST https://slack.com/api/apps.connections.open?t=1, token in the config file as Authorization: Bearer {{token}}, header X-Api-Key (in the config file), URL at /url, error at /error (before every attempt)"),
        "{summary}"
    );
    assert!(
        summary.contains("used at connect only, fresh for each connection, gives up after 3"),
        "{summary}"
    );
    let warnings = c.warnings();
    let keys: Vec<&str> = warnings
        .iter()
        .map(|w| w.split(": ").nth(1).unwrap_or(""))
        .collect();
    assert_eq!(
        keys,
        [
            "endpoints.slack.url.token",
            "endpoints.slack.url.headers.X-Api-Key"
        ]
    );
    for secret in ["xapp-in-clear", "k-in-clear"] {
        assert!(!summary.contains(secret), "{secret} leaked:\n{summary}");
        assert!(!warnings.iter().any(|w| w.contains(secret)));
    }
}
