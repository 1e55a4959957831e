//! Opening one upstream connection: TCP, TLS (rustls, system roots), the HTTP upgrade with the
//! endpoint's headers, subprotocols and credential (done and checked in `handshake`); every
//! failure classified.

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::WebSocketStream;

use super::failure::Failure;
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
    // A fragmented message stalls no longer than a silent connection is allowed to.
    let quiet = hb
        .ping_interval
        .or(hb.idle_timeout)
        .unwrap_or(std::time::Duration::from_secs(20));
    let stream = WireWatch::new(stream, quiet + hb.pong_timeout);

    super::handshake::upgrade(stream, request, ws_config(cfg.max_message_size)).await
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
