//! URL redaction: what a URL looks like in logs, status output, errors and `check-config`.
//!
//! SPEC §6: URLs are shown with secret query values replaced by `***`. Which parameters are
//! secret is guessed from their names, erring towards hiding; the auth query parameter is named
//! by the caller because it can be called anything.

use url::form_urlencoded;

/// Parameter-name fragments that mark a query value as secret (matched case-insensitively).
const SECRET_NAME_PARTS: &[&str] = &[
    "token",
    "key",
    "secret",
    "password",
    "passwd",
    "auth",
    "sig",
    "signature",
    "credential",
    "session",
    "jwt",
];

const MASK: &str = "***";

/// True when a parameter or header name looks like it carries a credential.
pub fn is_secret_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    SECRET_NAME_PARTS.iter().any(|part| name.contains(part))
}

/// `url` with its userinfo password and secret-looking query values replaced by `***`.
pub fn redact_url(url: &url::Url) -> String {
    redact_url_with(url, &[])
}

/// Like [`redact_url`], also masking the parameters named in `extra_secret_params` (e.g. the
/// endpoint's `auth.query`), compared case-insensitively.
pub fn redact_url_with(url: &url::Url, extra_secret_params: &[&str]) -> String {
    let mut out = url.clone();
    if out.password().is_some() {
        // Only fails for URLs that cannot have credentials, which then have no password either.
        let _ = out.set_password(Some(MASK));
    }
    let is_secret = |name: &str| {
        is_secret_name(name)
            || extra_secret_params
                .iter()
                .any(|p| p.eq_ignore_ascii_case(name))
    };
    if let Some(query) = url.query() {
        out.set_query(Some(&redact_pairs(query, is_secret)));
    }
    // OAuth implicit-flow style `#access_token=…`; fragments are never sent, but still printed.
    if let Some(fragment) = url.fragment() {
        out.set_fragment(Some(&redact_pairs(fragment, is_secret)));
    }
    out.to_string()
}

/// A URL that is a secret as a whole (a discovered URL, whose path or query may carry a
/// single-use ticket): only its scheme, host and port, e.g. `wss://wss-primary.slack.com/…`.
pub fn redact_whole(url: &url::Url) -> String {
    let port = url.port().map_or(String::new(), |p| format!(":{p}"));
    format!(
        "{}://{}{port}/…",
        url.scheme(),
        url.host_str().unwrap_or_default()
    )
}

/// Rewrites only the values that need masking and leaves every other byte as written, so the
/// redacted URL still matches what the user configured.
fn redact_pairs(raw: &str, is_secret: impl Fn(&str) -> bool) -> String {
    raw.split('&')
        .map(|pair| {
            let (raw_name, has_value) = match pair.split_once('=') {
                Some((name, _)) => (name, true),
                None => (pair, false),
            };
            let name: String = form_urlencoded::parse(raw_name.as_bytes())
                .map(|(k, _)| k.into_owned())
                .next()
                .unwrap_or_default();
            if has_value && is_secret(&name) {
                format!("{raw_name}={MASK}")
            } else {
                pair.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// Targets whose trace level prints raw handshake requests or frames, credentials included.
const LEAKY_AT_TRACE: &[&str] = &["tungstenite", "tokio_tungstenite"];

/// Caps the libraries that would print credentials at trace level to `debug`, when the filter
/// enables trace at all: `RUST_LOG=trace` must not put tokens in the journal.
pub fn cap_leaky_targets(filter: tracing_subscriber::EnvFilter) -> tracing_subscriber::EnvFilter {
    use tracing_subscriber::filter::LevelFilter;
    if filter.max_level_hint() != Some(LevelFilter::TRACE) {
        return filter;
    }
    LEAKY_AT_TRACE.iter().fold(filter, |f, target| {
        match format!("{target}=debug").parse() {
            Ok(d) => f.add_directive(d),
            Err(_) => f,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> url::Url {
        url::Url::parse(s).expect("test URL parses")
    }

    #[test]
    fn masks_password_but_keeps_user() {
        assert_eq!(
            redact_url(&url("wss://alice:hunter2@example.com/feed")),
            "wss://alice:***@example.com/feed"
        );
        assert_eq!(
            redact_url(&url("wss://alice@example.com/feed")),
            "wss://alice@example.com/feed"
        );
    }

    #[test]
    fn masks_secret_looking_query_values_only() {
        let u = url("wss://x.example/s?symbol=BTC&access_token=abc&apiKey=k1&X-Amz-Signature=f00&sessionId=9&limit=5");
        assert_eq!(
            redact_url(&u),
            "wss://x.example/s?symbol=BTC&access_token=***&apiKey=***&X-Amz-Signature=***&sessionId=***&limit=5"
        );
    }

    #[test]
    fn every_listed_name_part_is_secret() {
        for name in [
            "TOKEN",
            "key",
            "client_secret",
            "password",
            "passwd",
            "auth",
            "sig",
            "signature",
            "credential",
            "session",
            "jwt",
        ] {
            let u = url(&format!("ws://h/?{name}=v"));
            assert_eq!(redact_url(&u), format!("ws://h/?{name}=***"), "{name}");
        }
    }

    #[test]
    fn caller_named_parameters_are_masked() {
        let u = url("wss://x.example/?c=abc&room=1");
        assert_eq!(redact_url(&u), "wss://x.example/?c=abc&room=1");
        assert_eq!(redact_url_with(&u, &["C"]), "wss://x.example/?c=***&room=1");
    }

    #[test]
    fn leaves_encoding_and_valueless_params_alone() {
        let u = url("wss://x.example/?q=a%20b+c&token&flag&t%6Fken=zz");
        // `t%6Fken` decodes to `token`: matching works on the decoded name.
        assert_eq!(
            redact_url(&u),
            "wss://x.example/?q=a%20b+c&token&flag&t%6Fken=***"
        );
    }

    #[test]
    fn masks_fragment_credentials() {
        let u = url("https://x.example/cb#access_token=abc&state=1");
        assert_eq!(
            redact_url(&u),
            "https://x.example/cb#access_token=***&state=1"
        );
    }

    #[test]
    fn a_secret_url_shows_only_scheme_host_and_port() {
        let u = url("wss://user:pw@wss-primary.slack.com/link/?ticket=abc&app_id=A1");
        assert_eq!(redact_whole(&u), "wss://wss-primary.slack.com/…");
        let u = url("ws://127.0.0.1:8080/t/0123456789");
        assert_eq!(redact_whole(&u), "ws://127.0.0.1:8080/…");
    }

    #[test]
    fn url_without_secrets_is_unchanged() {
        let s = "wss://stream.example.com:8443/prices?symbols=a,b";
        assert_eq!(redact_url(&url(s)), s);
    }
}
