//! `[cluster]` and `endpoints.NAME.cluster` (issue 17): read with their defaults, every
//! mistake refused at its key, overridable from the environment, and no secret ever shown.

use super::*;
use ws_sidecar::config::{ClusterConfig, ClusterRetention};

/// MINIMAL with `prices` clustered, then `cluster` as the `[cluster]` section's lines.
fn clustered(cluster: &str) -> String {
    format!("{MINIMAL}cluster = true\n[cluster]\n{cluster}\n")
}

fn cluster_of(config: &Config) -> &ClusterConfig {
    config.cluster.as_ref().expect("a [cluster] section")
}

#[test]
fn a_full_section_is_read_as_written() {
    let config = ok(&clustered(
        r#"
nats = ["tls://nats-1.internal:4222", "tls://nats-2.internal:4223"]
name = "web-1.eu"
user = "sidecar"
password = { env = "NATS_PASSWORD" }
tls_ca = "/etc/ws-sidecar/nats-ca.pem"
tls_cert = "/etc/ws-sidecar/nats-client.pem"
tls_key = "/etc/ws-sidecar/nats-client.key"
lease_ttl = "15s"
replicas = 3
[cluster.retention]
max_messages = 1000000
max_bytes = "1GiB"
max_age = "7d"
duplicate_window = "5m"
"#,
    ));
    assert_eq!(
        cluster_of(&config),
        &ClusterConfig {
            servers: vec![
                "tls://nats-1.internal:4222".into(),
                "tls://nats-2.internal:4223".into()
            ],
            name: "web-1.eu".into(),
            user: Some(("sidecar".into(), Secret::Env("NATS_PASSWORD".into()))),
            token: None,
            tls_ca: Some("/etc/ws-sidecar/nats-ca.pem".into()),
            tls_client: Some((
                "/etc/ws-sidecar/nats-client.pem".into(),
                "/etc/ws-sidecar/nats-client.key".into()
            )),
            require_tls: true,
            lease_ttl: secs(15),
            replicas: 3,
            retention: ClusterRetention {
                max_messages: Some(1_000_000),
                max_bytes: Some(1 << 30),
                max_age: Some(secs(7 * 86_400)),
                duplicate_window: secs(300),
            },
        }
    );
    assert!(ep(&config, "prices").cluster);
    assert!(config.warnings().is_empty(), "{:?}", config.warnings());
}

#[test]
fn defaults_apply_and_a_name_is_made_from_host_and_pid() {
    assert!(!ep(&ok(MINIMAL), "prices").cluster);
    let config = ok(&clustered(r#"nats = "nats://127.0.0.1:4222""#));
    let c = cluster_of(&config);
    assert_eq!(c.servers, ["nats://127.0.0.1:4222"]);
    assert_eq!(c.user, None);
    assert_eq!(c.token, None);
    assert_eq!((c.tls_ca.as_ref(), c.tls_client.as_ref()), (None, None));
    assert!(!c.require_tls);
    assert_eq!(c.lease_ttl, secs(10));
    assert_eq!(c.replicas, 1);
    assert_eq!(
        c.retention,
        ClusterRetention {
            max_messages: None,
            max_bytes: None,
            max_age: None,
            duplicate_window: secs(120),
        }
    );
    let pid = format!("-{}", std::process::id());
    let host = c.name.strip_suffix(&pid).expect("<host>-<pid>");
    assert!(!host.is_empty() && c.name.len() <= 64, "{}", c.name);
    assert!(
        c.name
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '_' | '.' | '-')),
        "{}",
        c.name
    );
    // The name must be valid as written, too.
    let again = ok(&clustered(&format!(
        "nats = \"nats://h:4222\"\nname = \"{}\"",
        c.name
    )));
    assert_eq!(cluster_of(&again).name, c.name);
}

#[test]
fn servers_take_one_url_commas_or_a_list_and_tls_implies_require_tls() {
    let config = ok(&clustered(
        r#"nats = "nats://a.internal:4222, tls://b.internal:4222/""#,
    ));
    let c = cluster_of(&config);
    assert_eq!(
        c.servers,
        ["nats://a.internal:4222", "tls://b.internal:4222"]
    );
    assert!(c.require_tls);
    let config = ok(&clustered(
        "nats = [\"nats://[::1]:4222\"]\nrequire_tls = true",
    ));
    let c = cluster_of(&config);
    assert_eq!(c.servers, ["nats://[::1]:4222"]);
    assert!(c.require_tls);
    let config = ok(&clustered(
        "nats = \"nats://h:4222\"\ntoken = { file = \"nats-token\" }",
    ));
    assert_eq!(
        cluster_of(&config).token,
        Some(Secret::File("nats-token".into()))
    );
}

#[test]
fn the_duplicate_window_defaults_to_max_age_when_that_is_shorter() {
    let config = ok(&clustered(
        "nats = \"nats://h:4222\"\nretention = { max_age = \"30s\" }",
    ));
    assert_eq!(cluster_of(&config).retention.duplicate_window, secs(30));
}

#[test]
fn every_mistake_is_refused_at_its_key() {
    let at = |key: &str, what: &str| format!("config.toml: cluster.{key}: {what}");
    let cases = [
        ("name = \"x\"", at("nats", "required key is missing")),
        ("nats = []", at("nats", "must name at least one server")),
        ("nats = \" \"", at("nats", "must name at least one server")),
        (
            "nats = 4222",
            at("nats", "expected a URL or a list of them, found an integer"),
        ),
        (
            "nats = \"ws://h:8080\"",
            at(
                "nats",
                "NATS over WebSocket (ws://) is not supported: use nats:// or tls://",
            ),
        ),
        (
            "nats = [\"nats://h:4222\", \"wss://h:443\"]",
            at(
                "nats[1]",
                "NATS over WebSocket (wss://) is not supported: use nats:// or tls://",
            ),
        ),
        (
            "nats = \"http://h:4222\"",
            at("nats", "URL scheme must be nats or tls, not \"http\""),
        ),
        (
            "nats = \"nats://h\"",
            at("nats", "URL has no port: write nats://h:4222"),
        ),
        (
            "nats = \"nats://h:4222, nats://:4222\"",
            at("nats", "server 2: invalid URL: empty host"),
        ),
        (
            "nats = \"nats://h:4222/subject?x=1\"",
            at("nats", "a NATS server URL has only a host and a port"),
        ),
        (
            "nats = \"nats://h:4222\"\nname = \"web 1\"",
            at("name", "invalid name: use letters, digits, '_', '.' and '-'"),
        ),
        (
            &format!("nats = \"nats://h:4222\"\nname = \"{}\"", "n".repeat(65)),
            at("name", "must be at most 64 characters"),
        ),
        (
            "nats = \"nats://h:4222\"\nname = \"\"",
            at("name", "must not be empty"),
        ),
        (
            "nats = \"nats://h:4222\"\nuser = \"u\"",
            at(
                "password",
                "required key is missing: user is set, and the two go together",
            ),
        ),
        (
            "nats = \"nats://h:4222\"\npassword = { env = \"P\" }",
            at(
                "user",
                "required key is missing: password is set, and the two go together",
            ),
        ),
        (
            "nats = \"nats://h:4222\"\nuser = \"u\"\npassword = { env = \"P\" }\ntoken = { env = \"T\" }",
            at("token", "set either user and password, or token, not both"),
        ),
        (
            "nats = \"nats://h:4222\"\ntoken = { env = \"T\", file = \"t\" }",
            at(
                "token",
                "a secret reference takes exactly one of env, file or command",
            ),
        ),
        (
            "nats = \"nats://h:4222\"\ntls_cert = \"c.pem\"",
            at(
                "tls_key",
                "required key is missing: tls_cert is set, and the two go together",
            ),
        ),
        (
            "nats = \"nats://h:4222\"\ntls_key = \"c.key\"",
            at(
                "tls_cert",
                "required key is missing: tls_key is set, and the two go together",
            ),
        ),
        (
            "nats = \"nats://h:4222\"\ntls_ca = \"\"",
            at("tls_ca", "must not be empty"),
        ),
        (
            "nats = \"nats://h:4222\"\nrequire_tls = \"yes\"",
            at(
                "require_tls",
                "invalid boolean \"yes\", expected true or false",
            ),
        ),
        (
            "nats = \"nats://h:4222\"\nlease_ttl = \"500ms\"",
            at(
                "lease_ttl",
                "must be at least 1s: the delete markers that end a lease in JetStream need that",
            ),
        ),
        (
            "nats = \"nats://h:4222\"\nlease_ttl = \"2h\"",
            at(
                "lease_ttl",
                "must be at most 1h: a failover takes about this long",
            ),
        ),
        (
            "nats = \"nats://h:4222\"\nreplicas = 2",
            at(
                "replicas",
                "must be 1, 3 or 5, not 2: a JetStream stream keeps up to 5 copies, and an even \
                 number survives no more failures than one fewer",
            ),
        ),
        (
            "nats = \"nats://h:4222\"\nretention = { max_messages = 0 }",
            at("retention.max_messages", "must be at least 1"),
        ),
        (
            "nats = \"nats://h:4222\"\nretention = { max_bytes = \"lots\" }",
            at(
                "retention.max_bytes",
                "invalid size \"lots\": expected a size like \"512B\", \"64KiB\", \"16MiB\", \
                 \"1GiB\", \"1MB\" or a number of bytes",
            ),
        ),
        (
            "nats = \"nats://h:4222\"\nretention = { max_age = \"500ms\" }",
            at(
                "retention.max_age",
                "must be at least 1s: the duplicate window (at least 1s) cannot be longer",
            ),
        ),
        (
            "nats = \"nats://h:4222\"\nretention = { duplicate_window = \"0s\" }",
            at(
                "retention.duplicate_window",
                "must be at least 1s: a retry after a lost acknowledgement must still find \
                 the id",
            ),
        ),
        (
            "nats = \"nats://h:4222\"\nretention = { max_age = \"1m\", duplicate_window = \"2m\" }",
            at(
                "retention.duplicate_window",
                "must not be longer than retention.max_age (1m): JetStream refuses a duplicate \
                 window longer than the messages it keeps",
            ),
        ),
        (
            "nats = \"nats://h:4222\"\nretention = { max_msgs = 1 }",
            at(
                "retention.max_msgs",
                "unknown key, did you mean `max_messages`?",
            ),
        ),
        (
            "nats = \"nats://h:4222\"\nlease = \"10s\"",
            at("lease", "unknown key"),
        ),
    ];
    for (lines, expected) in cases {
        assert_eq!(errors(&clustered(lines)), [expected], "{lines}");
    }
}

#[test]
fn a_clustered_endpoint_needs_the_section_and_no_persisted_replay() {
    assert_eq!(
        errors(&prices("cluster = true")),
        [
            "config.toml: endpoints.prices.cluster: needs a [cluster] section: the NATS servers \
             the endpoint is shared through"
        ]
    );
    assert_eq!(
        errors(&prices("cluster = \"maybe\"")),
        ["config.toml: endpoints.prices.cluster: invalid boolean \"maybe\", expected true or false"]
    );
    let text = format!(
        "{MINIMAL}cluster = true\nreplay = {{ persist = true }}\n[cluster]\nnats = \"nats://h:4222\"\n"
    );
    assert_eq!(
        errors(&text),
        [
            "config.toml: endpoints.prices.replay.persist: not used with cluster = true: the \
             cluster's stream is the persisted replay; remove replay.persist"
        ]
    );
    // Without cluster, no section is needed and persist is kept.
    let config = ok(&prices("cluster = false\nreplay = { persist = true }"));
    assert!(ep(&config, "prices").replay.persist);
}

#[test]
fn a_clustered_endpoint_takes_subscriptions_and_requests() {
    // Every host declares its apps' keys and sends its requests to the leader through NATS.
    let config = ok(&format!(
        "{MINIMAL}cluster = true\n[endpoints.prices.requests]\nid = \"/id\"\n\
         [endpoints.prices.subscriptions]\n\
         subscribe = '{{\"sub\":\"{{{{key}}}}\",\"id\":{{{{id}}}}}}'\nkey = \"/stream\"\n\
         [cluster]\nnats = \"nats://h:4222\"\n"
    ));
    let prices = ep(&config, "prices");
    assert!(prices.cluster);
    assert!(prices.subscriptions.is_some() && prices.requests.is_some());
}

#[test]
fn a_section_no_endpoint_uses_is_a_warning_not_an_error() {
    let config = ok(&format!(
        "{MINIMAL}[cluster]\nnats = \"nats://h:4222\"\ntoken = {{ env = \"NATS_TOKEN\" }}\n"
    ));
    assert_eq!(
        config.warnings(),
        ["config.toml: cluster: no endpoint sets cluster = true: nothing is shared through these \
          NATS servers"]
    );
}

#[test]
fn environment_overrides_reach_every_cluster_key() {
    let vars = env(&[
        (
            "WS_SIDECAR__CLUSTER__NATS",
            "nats://a.internal:4222,nats://b.internal:4222",
        ),
        ("WS_SIDECAR__CLUSTER__REPLICAS", "3"),
        ("WS_SIDECAR__CLUSTER__LEASE_TTL", "30s"),
        ("WS_SIDECAR__CLUSTER__REQUIRE_TLS", "true"),
        ("WS_SIDECAR__CLUSTER__TOKEN", "tok-from-env"),
        ("WS_SIDECAR__CLUSTER__RETENTION__MAX_MESSAGES", "500"),
        ("WS_SIDECAR__ENDPOINTS__PRICES__CLUSTER", "true"),
    ]);
    // No [cluster] in the file at all: the environment alone makes one.
    let config = ok_env(MINIMAL, &vars);
    let c = cluster_of(&config);
    assert_eq!(
        c.servers,
        ["nats://a.internal:4222", "nats://b.internal:4222"]
    );
    assert_eq!(c.replicas, 3);
    assert_eq!(c.lease_ttl, secs(30));
    assert!(c.require_tls);
    assert_eq!(c.token, Some(Secret::Plain("tok-from-env".into())));
    assert_eq!(c.retention.max_messages, Some(500));
    assert!(ep(&config, "prices").cluster);

    let vars = env(&[("WS_SIDECAR__CLUSTER__REPLICAS", "three")]);
    assert_eq!(
        errors_env(&clustered("nats = \"nats://h:4222\""), &vars),
        ["config.toml: cluster.replicas: invalid integer \"three\" \
          (set by WS_SIDECAR__CLUSTER__REPLICAS)"]
    );
    let vars = env(&[("WS_SIDECAR__ENDPOINTS__PRICES__CLUSTER", "true")]);
    assert_eq!(
        errors_env(MINIMAL, &vars),
        [
            "config.toml: endpoints.prices.cluster: needs a [cluster] section: the NATS servers \
             the endpoint is shared through (set by WS_SIDECAR__ENDPOINTS__PRICES__CLUSTER)"
        ]
    );
}

#[test]
fn no_secret_is_shown_in_errors_warnings_or_the_summary() {
    // Credentials in a server URL: refused without echoing them, the user part included (a
    // bare `nats://secret@host` is token auth).
    for url in [
        "nats://someone:pw-in-url@h.internal:4222",
        "nats://tok-in-url@h.internal:4222",
    ] {
        let errors = errors(&clustered(&format!(
            "nats = [\"nats://ok:4222\", \"{url}\"]"
        )));
        assert_eq!(
            errors,
            [
                "config.toml: cluster.nats[1]: nats://***@h.internal:4222: credentials are not \
              written in the URL: use user and password, or token (secret references such as \
              { env = \"VAR\" })"
            ]
        );
    }
    let errors = errors(&clustered(
        "nats = \"nats://ok:4222, nats://u:pw-in-url@h\"\nuser = \"u\"\npassword = \"pw-s3cret\"\ntoken = \"tok-s3cret\"",
    ));
    assert_eq!(errors.len(), 2, "{errors:?}");
    for e in &errors {
        for secret in ["pw-in-url", "pw-s3cret", "tok-s3cret", "u:"] {
            assert!(!e.contains(secret), "{secret} leaked: {e}");
        }
    }

    let config = ok(&clustered(
        "nats = \"nats://h:4222\"\nuser = \"sidecar\"\npassword = \"pw-s3cret\"",
    ));
    let warnings = config.warnings();
    assert_eq!(
        warnings,
        ["config.toml: cluster.password: secret written in clear text; prefer { env = \"VAR\" }, \
          { file = \"path\" } or { command = [\"prog\"] }"]
    );
    let summary = config.summary();
    assert!(!summary.contains("pw-s3cret"), "{summary}");
    assert!(
        summary.contains("          auth user sidecar, password in the config file\n"),
        "{summary}"
    );
    let config = ok(&clustered(
        "nats = \"nats://h:4222\"\ntoken = \"tok-s3cret\"",
    ));
    assert_eq!(warnings_keys(&config), ["cluster.token"]);
    let summary = config.summary();
    assert!(!summary.contains("tok-s3cret"), "{summary}");
    assert!(!format!("{config:?}").contains("tok-s3cret"));
}

fn warnings_keys(config: &Config) -> Vec<String> {
    config
        .warnings()
        .iter()
        .map(|w| w.split(": ").nth(1).unwrap_or_default().to_owned())
        .collect()
}

#[test]
fn the_summary_shows_the_cluster_and_which_endpoints_use_it() {
    let config = ok(&clustered(
        r#"
nats = ["tls://n1.internal:4222", "tls://n2.internal:4222"]
name = "web-1"
token = { env = "NATS_TOKEN" }
tls_ca = "/etc/nats-ca.pem"
replicas = 3
retention = { max_messages = 1000, max_bytes = "1GiB", max_age = "1d" }
"#,
    ));
    let summary = config.summary();
    let expected = "cluster   tls://n1.internal:4222, tls://n2.internal:4222, TLS required\n\
                    \x20         name web-1, lease ttl 10s, 3 replicas\n\
                    \x20         auth token from env NATS_TOKEN\n\
                    \x20         tls ca /etc/nats-ca.pem\n\
                    \x20         retention at most 1000 messages / 1GiB / 1d old, duplicate window 2m\n";
    assert!(summary.contains(expected), "{summary}");
    assert!(
        summary.contains(
            "  cluster     shared with the fleet: one upstream connection, every message through \
             the cluster's stream\n"
        ),
        "{summary}"
    );
    let plain = ok(&format!(
        "{MINIMAL}[endpoints.other]\nurl = \"wss://x.example/\"\n[cluster]\nnats = \"nats://h:4222\"\nname = \"n\""
    ));
    let summary = plain.summary();
    assert!(summary.contains("cluster   nats://h:4222\n          name n, lease ttl 10s, 1 replica\n          auth none\n          retention no limits, duplicate window 2m\n"), "{summary}");
    assert!(
        !summary.contains("  cluster "),
        "no endpoint is clustered:\n{summary}"
    );
}
