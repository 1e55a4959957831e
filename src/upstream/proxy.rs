//! Opening a tunnel through a proxy: HTTP CONNECT (hyper's HTTP/1 client, basic auth) or
//! SOCKS5 (hyper-util's connector, RFC 1928 with RFC 1929 user/password). Which proxy applies,
//! if any, is decided by `config::ProxyConfig::route`.

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::connect::proxy::SocksV5;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_util::task::AbortOnDropHandle;
use tower::ServiceExt as _;

use super::failure::{sanitize, Failure};
use crate::config::{ProxyRoute, ProxyScheme, ProxyUrl};

/// Largest CONNECT response head read (hyper's smallest buffer limit); a proxy sending more is
/// broken or hostile.
const MAX_HEAD: usize = 8 * 1024;

/// hyper-util's SOCKS5 connector writes its whole handshake into one 262-byte buffer, so the
/// user name, password and target host name together must stay below this.
const SOCKS_HANDSHAKE_MAX: usize = 240;

/// Opens a tunnel to `host:port` (a name, or an IP address without brackets) through the
/// route's proxy. Every failure is retried with backoff and names the proxy, never its
/// password.
pub async fn connect(route: &ProxyRoute, host: &str, port: u16) -> Result<TcpStream, Failure> {
    let proxy = &route.proxy;
    let fail = |e: String| Failure::retry(format!("proxy {route}: {e}"));
    let tcp = TcpStream::connect((proxy.host(), proxy.port()))
        .await
        .map_err(|e| fail(e.to_string()))?;
    // The tunnel carries WebSocket frames written in batches: Nagle would only add latency.
    let _ = tcp.set_nodelay(true);
    let tunnel = match proxy.scheme() {
        ProxyScheme::Http => http_connect(tcp, proxy, host, port).await,
        ProxyScheme::Socks5 => socks5(tcp, proxy, host, port, false).await,
        ProxyScheme::Socks5h => socks5(tcp, proxy, host, port, true).await,
    }
    .map_err(fail)?;
    tracing::debug!(proxy = %route, target = %authority(host, port), "proxy tunnel open");
    Ok(tunnel)
}

fn authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// `CONNECT host:port` with hyper's client, which hands the socket back once the proxy
/// answers 2xx.
async fn http_connect(
    tcp: TcpStream,
    proxy: &ProxyUrl,
    host: &str,
    port: u16,
) -> Result<TcpStream, String> {
    let authority = authority(host, port);
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        .max_buf_size(MAX_HEAD)
        .handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| format!("CONNECT: {e}"))?;
    // Drives the connection until it gives the socket up; aborted if this attempt is dropped
    // (connect timeout, shutdown) while a proxy keeps it waiting.
    let _driver = AbortOnDropHandle::new(tokio::spawn(conn.with_upgrades()));
    let mut request =
        http::Request::connect(authority.as_str()).header(http::header::HOST, authority.as_str());
    if let Some((user, password)) = proxy.credentials() {
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        let mut value = http::HeaderValue::from_str(&format!("Basic {basic}"))
            .map_err(|_| "the proxy credentials cannot be sent in a header".to_owned())?;
        value.set_sensitive(true);
        request = request.header(http::header::PROXY_AUTHORIZATION, value);
    }
    let request = request
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("CONNECT to {authority}: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("CONNECT to {authority}: {e}"))?;
    let status = response.status();
    if status == http::StatusCode::PROXY_AUTHENTICATION_REQUIRED {
        return Err("proxy authentication required (HTTP 407)".into());
    }
    if !status.is_success() {
        return Err(format!(
            "refused CONNECT to {authority}: HTTP {}",
            sanitize(&status.to_string())
        ));
    }
    let upgraded = hyper::upgrade::on(response)
        .await
        .map_err(|e| format!("CONNECT to {authority}: {e}"))?;
    let parts = upgraded
        .downcast::<TokioIo<TcpStream>>()
        .map_err(|_| "CONNECT: the tunnel is not the proxy's TCP connection".to_owned())?;
    // The client speaks first in both TLS and the WebSocket handshake, so a proxy has nothing
    // to relay yet; bytes here would be lost with the buffer they sit in.
    if !parts.read_buf.is_empty() {
        return Err(format!(
            "CONNECT to {authority}: the proxy sent data before the tunnel was used"
        ));
    }
    Ok(parts.io.into_inner())
}

/// A SOCKS5 handshake over the connected `tcp`. With `remote_dns` (`socks5h://`) the proxy
/// resolves `host`; otherwise it is resolved here and its address sent.
async fn socks5(
    tcp: TcpStream,
    proxy: &ProxyUrl,
    host: &str,
    port: u16,
    remote_dns: bool,
) -> Result<TcpStream, String> {
    // Resolved with tokio's resolver: hyper-util's `local_dns` would block a runtime thread.
    let host = if remote_dns || host.parse::<std::net::IpAddr>().is_ok() {
        host.to_owned()
    } else {
        let mut addrs = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| format!("resolving {host}: {e}"))?;
        let addr = addrs
            .next()
            .ok_or_else(|| format!("resolving {host}: no address"))?;
        addr.ip().to_string()
    };
    let credentials = proxy.credentials();
    let size = host.len() + credentials.map_or(0, |(u, p)| u.len() + p.len());
    if size > SOCKS_HANDSHAKE_MAX {
        return Err(format!(
            "SOCKS5: user name, password and host name together exceed {SOCKS_HANDSHAKE_MAX} bytes"
        ));
    }
    let target = http::Uri::builder()
        .scheme("http")
        .authority(authority(&host, port))
        .path_and_query("/")
        .build()
        .map_err(|_| format!("SOCKS5: {host} is not a host name"))?;
    // The connection to the proxy is already open (its errors have their own wording); the
    // connector gets it from a service that hands it out once.
    let mut tcp = Some(TokioIo::new(tcp));
    let connected = tower::service_fn(move |_: http::Uri| {
        let io = tcp
            .take()
            .ok_or_else(|| std::io::Error::other("the proxy connection was already used"));
        async move { io }
    });
    let mut socks = SocksV5::new(http::Uri::default(), connected);
    if let Some((user, password)) = credentials {
        socks = socks.with_auth(user.to_owned(), password.to_owned());
    }
    let io = socks.oneshot(target).await.map_err(|e| e.to_string())?;
    Ok(io.into_inner())
}
