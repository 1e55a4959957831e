//! Opening one upstream connection: TCP, TLS (rustls, system roots), the HTTP upgrade with the
//! endpoint's headers, subprotocols and credential; every failure classified.

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::WebSocketStream;

use super::failure::{parse_retry_after, sanitize, Failure};
use super::frame_watch::WireWatch;
use crate::config::EndpointConfig;
use crate::secret::SecretString;

/// Any byte stream a WebSocket can run over (plain TCP or TLS).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// An established upstream WebSocket, over a byte stream that watches what tungstenite hides.
pub type Ws = WebSocketStream<WireWatch<Box<dyn Io>>>;

/// Everything an attempt needs beyond the endpoint config, computed fresh for each attempt.
pub struct Attempt<'a> {
    pub cfg: &'a EndpointConfig,
    /// Final URL (resume query and auth query parameter applied).
    pub url: url::Url,
    /// Handshake headers, secrets resolved for this attempt (configured ones and the credential).
    pub headers: Vec<(String, SecretString)>,
}

/// Opens the connection, bounded by `connect_timeout` as a whole.
pub async fn connect(attempt: Attempt<'_>) -> Result<Ws, Failure> {
    let timeout = attempt.cfg.connect_timeout;
    match tokio::time::timeout(timeout, connect_inner(attempt)).await {
        Ok(r) => r,
        Err(_) => Err(Failure::retry(format!(
            "connect timeout after {}",
            crate::fmt::duration(timeout)
        ))),
    }
}

async fn connect_inner(attempt: Attempt<'_>) -> Result<Ws, Failure> {
    let cfg = attempt.cfg;
    let url = &attempt.url;
    let host = url
        .host_str()
        .ok_or_else(|| Failure::fatal("url has no host"))?
        .to_owned();
    let tls = url.scheme() == "wss";
    let port = url
        .port_or_known_default()
        .unwrap_or(if tls { 443 } else { 80 });
    let request = build_request(&attempt)?;

    let route = cfg
        .proxy
        .route(url)
        .map_err(|e| Failure::fatal(e.to_string()))?;
    let tcp = match route {
        Some(route) => super::proxy::connect(&route, trim_brackets(&host), port).await?,
        None => TcpStream::connect((trim_brackets(&host), port))
            .await
            .map_err(|e| Failure::retry(format!("tcp connect to {host}:{port}: {e}")))?,
    };
    // Frames are written in batches and flushed once: Nagle would only add latency.
    let _ = tcp.set_nodelay(true);
    let stream: Box<dyn Io> = if tls {
        match super::tls::connect(&cfg.tls, &host, tcp).await {
            Ok(conn) => Box::new(conn),
            Err(e @ super::tls::TlsError::Setup(_)) => return Err(Failure::fatal(e.to_string())),
            Err(e) => return Err(Failure::retry(format!("{e} (with {host})"))),
        }
    } else {
        Box::new(tcp)
    };
    let hb = &cfg.heartbeat;
    let stream = WireWatch::new(stream, hb.ping_interval + hb.pong_timeout);

    let ws_config = ws_config(cfg.max_message_size);
    match tokio_tungstenite::client_async_with_config(request, stream, Some(ws_config)).await {
        Ok((ws, _response)) => Ok(ws),
        Err(e) => Err(classify_handshake(e)),
    }
}

/// Limits applied to the upstream connection.
pub fn ws_config(max_message_size: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(max_message_size))
        .max_frame_size(Some(max_message_size))
}

fn trim_brackets(host: &str) -> &str {
    host.trim_start_matches('[').trim_end_matches(']')
}

fn build_request(attempt: &Attempt<'_>) -> Result<Request, Failure> {
    let mut req = attempt
        .url
        .as_str()
        .into_client_request()
        .map_err(|e| Failure::fatal(format!("invalid url: {e}")))?;
    let headers = req.headers_mut();
    for (name, value) in &attempt.headers {
        insert_header(headers, name, value.expose())?;
    }
    if !attempt.cfg.subprotocols.is_empty() {
        insert_header(
            headers,
            "Sec-WebSocket-Protocol",
            &attempt.cfg.subprotocols.join(", "),
        )?;
    }
    Ok(req)
}

fn insert_header(
    headers: &mut tokio_tungstenite::tungstenite::http::HeaderMap,
    name: &str,
    value: &str,
) -> Result<(), Failure> {
    let n = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| Failure::fatal(format!("invalid header name {name:?}")))?;
    // The value may be a secret: the error names only the header.
    let mut v = HeaderValue::from_str(value)
        .map_err(|_| Failure::fatal(format!("header {name} has an invalid value")))?;
    v.set_sensitive(true);
    headers.insert(n, v);
    Ok(())
}

/// Classifies a failed upgrade: HTTP status (with `Retry-After`), I/O, protocol.
fn classify_handshake(e: WsError) -> Failure {
    match e {
        WsError::Http(resp) => {
            let status = resp.status().as_u16();
            let retry_after = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(parse_retry_after);
            let detail = if resp.status().is_redirection() {
                let loc = resp
                    .headers()
                    .get("location")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                format!("redirect to {} not followed", shown_location(loc))
            } else {
                String::new()
            };
            Failure::http(status, retry_after, &detail)
        }
        WsError::Io(e) => Failure::retry(format!("handshake i/o: {e}")),
        WsError::Capacity(e) => Failure::retry(format!("handshake: {e}")),
        WsError::Protocol(e) => Failure::retry(format!("handshake protocol error: {e}")),
        WsError::Url(e) => Failure::fatal(format!("invalid url: {e}")),
        // tungstenite's own wording ("Attack attempt detected") does not say what happened.
        WsError::AttackAttempt => Failure::retry(
            "handshake response refused: over 64 KiB, or in too many tiny TCP segments",
        ),
        other => Failure::retry(format!("handshake failed: {other}")),
    }
}

/// A redirect target as it may be shown in a reason. Upstreams often echo the request in it,
/// credential included, so the query and fragment are cut and any userinfo dropped.
fn shown_location(loc: &str) -> String {
    let cut = loc.find(['?', '#']).map_or(loc, |at| &loc[..at]);
    let mut shown = match url::Url::parse(cut) {
        Ok(mut url) => {
            // Only fails for URLs that cannot carry userinfo, which then have none.
            let _ = url.set_username("");
            let _ = url.set_password(None);
            url.to_string()
        }
        // Relative (`/feed`) or unparsable: no userinfo to drop.
        Err(_) => cut.to_owned(),
    };
    if cut.len() < loc.len() {
        shown.push_str("?…");
    }
    sanitize(&shown)
}

#[cfg(test)]
mod tests {
    use super::shown_location;

    #[test]
    fn redirect_targets_are_shown_without_credentials() {
        assert_eq!(
            shown_location("wss://user:pw@example.com/feed?token=abc#x"),
            "wss://example.com/feed?…"
        );
        assert_eq!(shown_location("/feed?access_token=abc"), "/feed?…");
        assert_eq!(
            shown_location("https://example.com/"),
            "https://example.com/"
        );
        assert_eq!(shown_location(""), "");
    }
}
