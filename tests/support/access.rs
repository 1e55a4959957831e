//! Access fixtures: an OAuth2 token endpoint and an HTTP CONNECT proxy, both on 127.0.0.1:0.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use base64::Engine as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A token endpoint issuing `<prefix>N` with `expires_in = 2` to client `app` with secret
/// `s3cret-client`; `down` makes it answer 503.
pub struct TokenEndpoint {
    pub url: String,
    pub issued: Arc<AtomicUsize>,
    pub down: Arc<AtomicBool>,
}

pub async fn token_endpoint(prefix: &'static str) -> TokenEndpoint {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!(
        "http://{}/oauth/token",
        listener.local_addr().expect("addr")
    );
    let issued = Arc::new(AtomicUsize::new(0));
    let down = Arc::new(AtomicBool::new(false));
    let (i2, d2) = (Arc::clone(&issued), Arc::clone(&down));
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let (issued, down) = (Arc::clone(&i2), Arc::clone(&d2));
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // Head, then the body by Content-Length.
                let body_start = loop {
                    let Ok(n) = sock.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break p + 4;
                    }
                };
                let head = String::from_utf8_lossy(&buf[..body_start]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                while buf.len() < body_start + len {
                    let Ok(n) = sock.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let body = String::from_utf8_lossy(&buf[body_start..]).to_string();
                let basic = base64::engine::general_purpose::STANDARD.encode("app:s3cret-client");
                let ok_auth = head.contains(&format!(
                    "authorization: basic {}",
                    basic.to_ascii_lowercase()
                ));
                let (status, json) = if down.load(Ordering::SeqCst) {
                    (
                        "503 Service Unavailable",
                        r#"{"error":"temporarily_unavailable"}"#.to_owned(),
                    )
                } else if !ok_auth || !body.contains("grant_type=client_credentials") {
                    (
                        "401 Unauthorized",
                        r#"{"error":"invalid_client"}"#.to_owned(),
                    )
                } else {
                    let n = issued.fetch_add(1, Ordering::SeqCst) + 1;
                    (
                        "200 OK",
                        format!(
                            r#"{{"access_token":"{prefix}{n}","expires_in":2,"token_type":"Bearer"}}"#
                        ),
                    )
                };
                let resp = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{json}",
                    json.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
            });
        }
    });
    TokenEndpoint { url, issued, down }
}

/// An HTTP CONNECT proxy counting tunnels; with `auth`, it wants that Basic credential.
pub async fn connect_proxy(auth: Option<&'static str>) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let tunnels = Arc::new(AtomicUsize::new(0));
    let t2 = Arc::clone(&tunnels);
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let tunnels = Arc::clone(&t2);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if sock.read(&mut b).await.map_or(true, |n| n == 0) {
                        return;
                    }
                    head.push(b[0]);
                }
                let head = String::from_utf8_lossy(&head).to_string();
                let target = head.split_whitespace().nth(1).unwrap_or("").to_owned();
                if let Some(cred) = auth {
                    let want = format!(
                        "proxy-authorization: basic {}",
                        base64::engine::general_purpose::STANDARD.encode(cred)
                    );
                    if !head
                        .to_ascii_lowercase()
                        .contains(&want.to_ascii_lowercase())
                    {
                        let _ = sock.write_all(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n").await;
                        return;
                    }
                }
                let Ok(mut upstream) = tokio::net::TcpStream::connect(&target).await else {
                    let _ = sock.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
                    return;
                };
                tunnels.fetch_add(1, Ordering::SeqCst);
                let _ = sock
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await;
                let _ = tokio::io::copy_bidirectional(&mut sock, &mut upstream).await;
            });
        }
    });
    (addr, tunnels)
}
