//! The OAuth2 client-credentials grant (RFC 6749 §4.4) over hyper's HTTP/1 client, with TLS
//! and the endpoint's proxy rules. Only what a token request needs: one POST, one JSON answer.

use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;

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
    let host = url
        .host_str()
        .ok_or_else(|| format!("token_url {shown} has no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = url.port_or_known_default().unwrap_or(443);
    let route = req
        .proxy
        .route(url)
        .map_err(|e| format!("token endpoint {shown}: {e}"))?;
    let tcp = match route {
        Some(p) => super::proxy::connect(&p, &host, port)
            .await
            .map_err(|f| f.reason)?,
        None => tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| format!("token endpoint {shown}: {e}"))?,
    };
    // The endpoint's tls settings (ca_file, client certificate) apply, but its `server_name`
    // is for the upstream: the token endpoint is verified against its own host.
    let tls = TlsConfig {
        server_name: None,
        ..req.tls.clone()
    };
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
    let path = match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_owned(),
    };
    let mut auth = http::HeaderValue::from_str(&format!("Basic {basic}"))
        .map_err(|_| "client credentials cannot be sent in a header".to_owned())?;
    auth.set_sensitive(true);
    let request = http::Request::post(path)
        .header(http::header::HOST, url.authority())
        .header(
            http::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .header(http::header::ACCEPT, "application/json")
        .header(http::header::AUTHORIZATION, auth)
        .body(Full::new(Bytes::from(form)))
        .map_err(|e| format!("token request: {e}"))?;

    let response = if url.scheme() == "https" {
        let stream = super::tls::connect(&tls, &host, tcp)
            .await
            .map_err(|e| format!("token endpoint {shown}: {e}"))?;
        send(TokioIo::new(stream), request).await
    } else {
        send(TokioIo::new(tcp), request).await
    }
    .map_err(|e| format!("token endpoint {shown}: {e}"))?;

    let status = response.status();
    let body = Limited::new(response.into_body(), MAX_RESPONSE)
        .collect()
        .await
        .map_err(|e| format!("token endpoint {shown}: reading the answer: {e}"))?
        .to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
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

async fn send<I>(
    io: I,
    request: http::Request<Full<Bytes>>,
) -> Result<http::Response<hyper::body::Incoming>, String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let r = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string());
    // The connection task ends once the response body is read and the sender dropped.
    drop(sender);
    let _ = &driver;
    r
}
