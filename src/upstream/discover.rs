//! Where a connection attempt goes: the configured URL, or one discovered for this attempt alone
//! (`url = { command = [...] }`, `{ post = "…" }`, `{ get = "…" }`).
//!
//! A discovered URL is asked for before every attempt and never reused: Slack's Socket Mode URL
//! carries a single-use ticket, and other discovery endpoints hand out short-lived ones. It is
//! a secret as a whole: only its scheme, host and port are ever shown. Discovery failures are
//! connect failures (backoff applies); a refused credential (HTTP 401/403, or an error named in
//! `auth_errors`) is an auth failure.

use std::time::Duration;

use bytes::Bytes;

use super::failure::{sanitize, Class, Failure};
use super::http_client;
use crate::config::{Discovery, DiscoveryMethod, EndpointConfig, HttpDiscovery, UrlSource};
use crate::dialogue::template;
use crate::redact::{redact_url, redact_whole};
use crate::secret::SecretError;

/// Largest discovery answer read: a JSON object with a URL in it.
const MAX_ANSWER: usize = 64 * 1024;

/// The URL of one attempt.
pub struct Target {
    pub url: url::Url,
    /// Discovered: shown only as `scheme://host:port/…`.
    pub secret: bool,
}

impl Target {
    /// The URL as it may be shown; `secret_params` are masked in a configured URL's query.
    pub fn shown(&self, secret_params: &[&str]) -> String {
        if self.secret {
            redact_whole(&self.url)
        } else {
            crate::redact::redact_url_with(&self.url, secret_params)
        }
    }
}

/// The URL to connect to now: the configured one, or a fresh discovery. Bounded by the
/// endpoint's `connect_timeout`.
pub async fn target(source: &UrlSource, cfg: &EndpointConfig) -> Result<Target, Failure> {
    let discovery = match source {
        UrlSource::Fixed(url) => {
            return Ok(Target {
                url: url.clone(),
                secret: false,
            })
        }
        UrlSource::Discover(d) => d,
    };
    let limit = cfg.connect_timeout;
    let (what, found) = match discovery {
        Discovery::Command(argv) => {
            let what = format!("url command {}", argv.first().map_or("", String::as_str));
            (what, run(argv, limit).await)
        }
        Discovery::Http(h) => {
            let what = format!("url discovery {} {}", h.method.as_str(), redact_url(&h.url));
            let asked = tokio::time::timeout(limit, ask(h, cfg)).await;
            let found = asked.unwrap_or_else(|_| {
                Err(Failure::retry(format!(
                    "no answer within {}",
                    crate::fmt::duration(limit)
                )))
            });
            (what, found)
        }
    };
    let url = found.map_err(|f| Failure {
        reason: format!("{what}: {}", f.reason),
        ..f
    })?;
    let url = check(&url).map_err(|e| Failure::retry(format!("{what}: {e}")))?;
    Ok(Target { url, secret: true })
}

/// A program's stdout, trimmed; its errors name the program, never the output.
async fn run(argv: &[String], limit: Duration) -> Result<String, Failure> {
    match crate::secret::command_output(argv, limit).await {
        Ok(out) => Ok(out.expose().to_owned()),
        Err(SecretError::Command { reason, .. }) => Err(Failure::retry(reason)),
        Err(SecretError::Control(_)) => Err(Failure::retry(
            "its output contains a control character (only surrounding whitespace is removed)",
        )),
        Err(e) => Err(Failure::retry(e.to_string())),
    }
}

/// A discovered URL, checked as the config checks a written one. Errors never show it: only
/// its scheme, which is no secret.
fn check(text: &str) -> Result<url::Url, String> {
    if text.is_empty() {
        return Err("gave no URL (empty)".into());
    }
    let mut url = url::Url::parse(text).map_err(|_| "gave something that is not a URL")?;
    if !matches!(url.scheme(), "ws" | "wss") {
        return Err(format!(
            "gave a {}:// URL; only ws:// or wss:// can be connected to",
            sanitize(url.scheme())
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("gave a URL without a host".into());
    }
    // Never sent anyway; dropped so nothing downstream has to think about it.
    url.set_fragment(None);
    Ok(url)
}

/// The HTTP form: one request, the URL read from the JSON answer at `pointer`.
async fn ask(h: &HttpDiscovery, cfg: &EndpointConfig) -> Result<String, Failure> {
    let mut headers = Vec::with_capacity(h.headers.len() + 1);
    for (name, secret) in &h.headers {
        let value = secret
            .resolve()
            .await
            .map_err(|e| Failure::retry(format!("header {name}: {e}")))?;
        headers.push((name.as_str(), value));
    }
    if let Some(token) = &h.token {
        let token = token
            .resolve()
            .await
            .map_err(|e| Failure::retry(format!("token: {e}")))?;
        let values = template::Values {
            token: Some(&token),
            ..Default::default()
        };
        // `format` holds {{token}} (check-config insists), which has a value here.
        let value = template::header(&h.format, values)
            .map_err(|_| Failure::retry("token: format cannot be filled in"))?;
        headers.push((h.header.as_str(), value));
    }
    let mut request_headers = Vec::with_capacity(headers.len());
    for (name, value) in headers {
        let n = http::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| Failure::fatal(format!("invalid header name {name:?}")))?;
        // The value is a secret: the error names only the header.
        let mut v = http::HeaderValue::from_str(value.expose())
            .map_err(|_| Failure::retry(format!("header {name} has an invalid value")))?;
        v.set_sensitive(true);
        request_headers.push((n, v));
    }
    let (method, body) = match h.method {
        DiscoveryMethod::Get => (http::Method::GET, None),
        // An empty form: what Slack's and SignalR's endpoints expect of a POST without arguments.
        DiscoveryMethod::Post => (
            http::Method::POST,
            Some(("application/x-www-form-urlencoded", Bytes::new())),
        ),
    };
    let answer = http_client::send(http_client::Request {
        method,
        url: &h.url,
        headers: request_headers,
        body,
        tls: &cfg.tls,
        proxy: &cfg.proxy,
        max_body: MAX_ANSWER,
    })
    .await
    .map_err(Failure::retry)?;
    let json: Option<serde_json::Value> = serde_json::from_slice(&answer.body).ok();
    let error: Option<String> = json
        .as_ref()
        .zip(h.error_pointer.as_deref())
        .and_then(|(j, p)| j.pointer(p))
        .and_then(|e| e.as_str())
        .map(str::to_owned);
    if !answer.status.is_success() {
        let retry_after = answer
            .headers
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(super::failure::parse_retry_after);
        let detail = error.as_deref().map(sanitize).unwrap_or_default();
        return Err(Failure::http(answer.status.as_u16(), retry_after, &detail));
    }
    let Some(json) = json else {
        return Err(Failure::retry(format!(
            "HTTP {} but the answer is not JSON",
            answer.status.as_u16()
        )));
    };
    if let Some(url) = json.pointer(&h.pointer).and_then(|u| u.as_str()) {
        return Ok(url.to_owned());
    }
    if let Some(error) = error {
        let class = if h.auth_errors.contains(&error) {
            Class::Auth
        } else {
            Class::Retry
        };
        return Err(Failure {
            class,
            reason: format!("answered error {:?}", sanitize(&error)),
            retry_after: None,
        });
    }
    Err(Failure::retry(format!(
        "no URL at {} in the answer {}",
        h.pointer,
        describe(&json)
    )))
}

/// Keys whose string values are shown when an answer holds no URL: they name errors. Every
/// other string is left out, since an answer may hold a ticket or a token under any name.
const SHOWN_KEYS: &[&str] = &["error", "code", "message", "reason", "status", "type"];

/// The shape of an answer for an error message, without its secrets: keys, numbers and
/// booleans, and strings only under [`SHOWN_KEYS`].
fn describe(json: &serde_json::Value) -> String {
    use serde_json::Value as J;
    let scalar = |key: &str, v: &J| match v {
        J::Null | J::Bool(_) | J::Number(_) => v.to_string(),
        J::String(s) if SHOWN_KEYS.contains(&key) && s.chars().count() <= 100 => {
            format!("{:?}", sanitize(s))
        }
        J::String(_) => "\"…\"".into(),
        J::Array(_) => "[…]".into(),
        J::Object(_) => "{…}".into(),
    };
    let text = match json {
        J::Object(map) => {
            let mut parts: Vec<String> = map
                .iter()
                .take(10)
                .map(|(k, v)| format!("{:?}:{}", sanitize(k), scalar(k, v)))
                .collect();
            if map.len() > 10 {
                parts.push("…".into());
            }
            format!("{{{}}}", parts.join(","))
        }
        other => scalar("", other),
    };
    sanitize(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovered_urls_are_checked_without_being_shown() {
        assert!(check("wss://h.example/link?ticket=1").is_ok());
        assert_eq!(
            check("https://h.example/?ticket=s3cr3t").expect_err("refused"),
            "gave a https:// URL; only ws:// or wss:// can be connected to"
        );
        assert_eq!(
            check("s3cr3t").expect_err("refused"),
            "gave something that is not a URL"
        );
        assert_eq!(check("").expect_err("refused"), "gave no URL (empty)");
        let u = check("ws://h/x#frag").expect("fragment dropped");
        assert_eq!(u.as_str(), "ws://h/x");
    }

    #[test]
    fn an_answer_is_described_without_its_secrets() {
        let j: serde_json::Value = serde_json::from_str(
            r#"{"ok":false,"error":"invalid_auth","url":"wss://x/?ticket=s3cr3t","n":[1],"d":{"a":1}}"#,
        )
        .expect("json");
        assert_eq!(
            describe(&j),
            // Keys in serde_json's order (sorted).
            r#"{"d":{…},"error":"invalid_auth","n":[…],"ok":false,"url":"…"}"#
        );
        assert_eq!(describe(&serde_json::json!("wss://s3cr3t")), "\"…\"");
    }
}
