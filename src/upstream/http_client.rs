//! One HTTP/1.1 request over hyper's client, with the endpoint's TLS settings and proxy rules:
//! what the OAuth2 token request (`oauth2.rs`) and URL discovery (`discover.rs`) share.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;

use crate::config::{ProxyConfig, TlsConfig};

/// A request to send once.
pub struct Request<'a> {
    pub method: http::Method,
    pub url: &'a url::Url,
    /// Header values holding a secret must be marked sensitive by the caller.
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// Content type and body; `None` sends no body.
    pub body: Option<(&'static str, Bytes)>,
    pub tls: &'a TlsConfig,
    pub proxy: &'a ProxyConfig,
    /// Largest answer body read; a longer one is an error.
    pub max_body: usize,
}

/// The answer, its body read in full.
pub struct Response {
    pub status: http::StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

/// Sends the request and reads the answer. Errors never contain a header value or the URL's
/// query (the caller names the redacted URL).
pub async fn send(req: Request<'_>) -> Result<Response, String> {
    let url = req.url;
    let host = url
        .host_str()
        .ok_or("the URL has no host")?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = url.port_or_known_default().unwrap_or(443);
    let route = req.proxy.route(url).map_err(|e| e.to_string())?;
    let tcp = match route {
        Some(p) => super::proxy::connect(&p, &host, port)
            .await
            .map_err(|f| f.reason)?,
        None => tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| e.to_string())?,
    };
    // The endpoint's tls settings (ca_file, client certificate) apply, but its `server_name`
    // is for the upstream: this server is verified against its own host.
    let tls = TlsConfig {
        server_name: None,
        ..req.tls.clone()
    };
    let target = match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_owned(),
    };
    // Not `url.authority()`: that would put a `user:password@` of the URL in the Host header.
    let host_header = match url.port() {
        Some(p) => format!("{}:{p}", url.host_str().unwrap_or_default()),
        None => url.host_str().unwrap_or_default().to_owned(),
    };
    let mut builder = http::Request::builder()
        .method(req.method)
        .uri(target)
        .header(http::header::HOST, host_header)
        .header(http::header::ACCEPT, "application/json");
    for (name, value) in req.headers {
        builder = builder.header(name, value);
    }
    let body = match req.body {
        Some((content_type, body)) => {
            builder = builder.header(http::header::CONTENT_TYPE, content_type);
            body
        }
        None => Bytes::new(),
    };
    let request = builder
        .body(Full::new(body))
        .map_err(|e| format!("building the request: {e}"))?;

    let response = if url.scheme() == "https" {
        let stream = super::tls::connect(&tls, &host, tcp)
            .await
            .map_err(|e| e.to_string())?;
        exchange(TokioIo::new(stream), request).await
    } else {
        exchange(TokioIo::new(tcp), request).await
    }?;
    let (parts, body) = response.into_parts();
    let body = Limited::new(body, req.max_body)
        .collect()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?
        .to_bytes();
    Ok(Response {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

async fn exchange<I>(
    io: I,
    request: http::Request<Full<Bytes>>,
) -> Result<http::Response<hyper::body::Incoming>, String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    // The connection task ends once the response body is read and the sender dropped.
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())
}
