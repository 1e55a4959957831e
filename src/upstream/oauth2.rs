//! The OAuth2 client-credentials grant (RFC 6749 §4.4) over the shared HTTP client
//! (`http_client.rs`: TLS and the endpoint's proxy rules). Only what a token request needs: one
//! POST, one JSON answer.

use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;

use crate::config::{ProxyConfig, TlsConfig};
use crate::secret::SecretString;

/// Largest token response read.
const MAX_RESPONSE: usize = 64 * 1024;

/// A token from the endpoint.
pub struct Granted {
    pub access_token: SecretString,
    /// `expires_in`, when the endpoint gave one.
    pub expires_in: Option<Duration>,
}

/// What a token request needs.
pub struct Request<'a> {
    pub token_url: &'a url::Url,
    pub client_id: &'a str,
    pub client_secret: &'a SecretString,
    pub scope: Option<&'a str>,
    pub tls: &'a TlsConfig,
    pub proxy: &'a ProxyConfig,
    pub timeout: Duration,
}

/// Requests a token. Errors never contain the secret or the token.
pub async fn fetch(req: Request<'_>) -> Result<Granted, String> {
    let timeout = req.timeout;
    tokio::time::timeout(timeout, fetch_inner(req))
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "token endpoint timed out after {}",
                crate::fmt::duration(timeout)
            ))
        })
}

async fn fetch_inner(req: Request<'_>) -> Result<Granted, String> {
    let url = req.token_url;
    let shown = crate::redact::redact_url(url);
    let form = {
        let mut f = url::form_urlencoded::Serializer::new(String::new());
        f.append_pair("grant_type", "client_credentials");
        if let Some(scope) = req.scope {
            f.append_pair("scope", scope);
        }
        f.finish()
    };
    let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let basic = base64::engine::general_purpose::STANDARD.encode(format!(
        "{}:{}",
        enc(req.client_id),
        enc(req.client_secret.expose())
    ));
    let mut auth = http::HeaderValue::from_str(&format!("Basic {basic}"))
        .map_err(|_| "client credentials cannot be sent in a header".to_owned())?;
    auth.set_sensitive(true);
    let response = super::http_client::send(super::http_client::Request {
        method: http::Method::POST,
        url,
        headers: vec![(http::header::AUTHORIZATION, auth)],
        body: Some(("application/x-www-form-urlencoded", Bytes::from(form))),
        tls: req.tls,
        proxy: req.proxy,
        max_body: MAX_RESPONSE,
    })
    .await
    .map_err(|e| format!("token endpoint {shown}: {e}"))?;

    let status = response.status;
    let json: serde_json::Value =
        serde_json::from_slice(&response.body).unwrap_or(serde_json::Value::Null);
    if !status.is_success() {
        // The standard error code is safe to show; the description may echo input, so not it.
        let code = json
            .get("error")
            .and_then(|e| e.as_str())
            .map(|e| format!(" ({})", super::failure::sanitize(e)))
            .unwrap_or_default();
        return Err(format!(
            "token endpoint {shown} answered HTTP {}{code}",
            status.as_u16()
        ));
    }
    let token = json
        .get("access_token")
        .and_then(|t| t.as_str())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| format!("token endpoint {shown}: no access_token in the answer"))?;
    let expires_in = json
        .get("expires_in")
        .and_then(|v| {
            v.as_u64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        })
        .map(Duration::from_secs);
    Ok(Granted {
        access_token: SecretString::new(token.to_owned()),
        expires_in,
    })
}
