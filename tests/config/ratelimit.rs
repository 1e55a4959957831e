//! `endpoints.NAME.rate_limit`: off by default, read with its defaults, nonsense refused.

use super::*;
use ws_sidecar::config::RateLimitConfig;

#[test]
fn off_unless_configured_and_control_frames_default_to_false() {
    assert_eq!(ep(&ok(MINIMAL), "prices").rate_limit, None);
    let config = ok(&prices(r#"rate_limit = { messages = 5, per = "1s" }"#));
    assert_eq!(
        ep(&config, "prices").rate_limit,
        Some(RateLimitConfig {
            messages: 5,
            per: secs(1),
            control_frames: false,
        })
    );
    let config = ok(&prices(
        r#"rate_limit = { messages = 5, per = "1s", control_frames = true }"#,
    ));
    assert!(ep(&config, "prices")
        .rate_limit
        .as_ref()
        .is_some_and(|r| r.control_frames));
    assert!(config
        .summary()
        .contains("rate limit  5 frames per 1s, pings and pongs count"));
}

#[test]
fn nonsense_is_refused_with_the_key() {
    let cases = [
        (
            r#"rate_limit = { messages = 0, per = "1s" }"#,
            "config.toml: endpoints.prices.rate_limit.messages: must be at least 1: no frame could ever be sent",
        ),
        (
            r#"rate_limit = { messages = 5, per = "0s" }"#,
            "config.toml: endpoints.prices.rate_limit.per: must be greater than zero",
        ),
        (
            r#"rate_limit = { messages = 5 }"#,
            "config.toml: endpoints.prices.rate_limit.per: required key is missing",
        ),
        (
            r#"rate_limit = { per = "1s" }"#,
            "config.toml: endpoints.prices.rate_limit.messages: required key is missing",
        ),
        (
            r#"rate_limit = { messages = -1, per = "1s" }"#,
            "config.toml: endpoints.prices.rate_limit.messages: -1 is out of range",
        ),
        (
            r#"rate_limit = { messages = 1000000, per = "1s" }"#,
            "config.toml: endpoints.prices.rate_limit.messages: must be at most 100000",
        ),
        (
            r#"rate_limit = { messages = 1, per = "1s", control_frames = true }"#,
            "config.toml: endpoints.prices.rate_limit.messages: must be at least 2 with control_frames = true: one frame of every window is kept for the pongs answering the upstream's pings",
        ),
        (
            r#"rate_limit = { messages = 5, per = "1s", burst = 10 }"#,
            "config.toml: endpoints.prices.rate_limit.burst: unknown key",
        ),
        (
            r#"rate_limit = 5"#,
            "config.toml: endpoints.prices.rate_limit: expected a table, found an integer",
        ),
    ];
    for (line, expected) in cases {
        assert_eq!(errors(&prices(line)), [expected], "{line}");
    }
}
