//! Access fixtures, all on 127.0.0.1:0: an OAuth2 token endpoint, an HTTP CONNECT proxy, a
//! SOCKS5 proxy (RFC 1928, RFC 1929 user/password) recording what it received, and a listener
//! that only counts connections (to prove nothing connected directly).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

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

/// An HTTP CONNECT proxy: counts tunnels and records each CONNECT's basic credential
/// (decoded `user:password`). With `auth`, it wants that credential and answers 407 otherwise.
pub struct HttpProxy {
    pub addr: SocketAddr,
    pub tunnels: Arc<AtomicUsize>,
    credentials: Arc<Mutex<Vec<String>>>,
}

impl HttpProxy {
    /// The decoded `user:password` of every CONNECT that carried one, in arrival order.
    pub fn credentials(&self) -> Vec<String> {
        self.credentials.lock().expect("lock").clone()
    }
}

pub async fn connect_proxy(auth: Option<&'static str>) -> HttpProxy {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let tunnels = Arc::new(AtomicUsize::new(0));
    let credentials = Arc::new(Mutex::new(Vec::new()));
    let (t2, c2) = (Arc::clone(&tunnels), Arc::clone(&credentials));
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let (tunnels, credentials) = (Arc::clone(&t2), Arc::clone(&c2));
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
                let received = head.lines().find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    if !name.trim().eq_ignore_ascii_case("proxy-authorization") {
                        return None;
                    }
                    let b64 = value.trim().strip_prefix("Basic ")?;
                    let raw = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
                    Some(String::from_utf8_lossy(&raw).into_owned())
                });
                if let Some(r) = &received {
                    credentials.lock().expect("lock").push(r.clone());
                }
                if let Some(want) = auth {
                    if received.as_deref() != Some(want) {
                        let _ = sock.write_all(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n").await;
                        return;
                    }
                }
                let Ok(mut upstream) = TcpStream::connect(&target).await else {
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
    HttpProxy {
        addr,
        tunnels,
        credentials,
    }
}

/// Where a SOCKS5 client asked to be connected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocksTarget {
    /// ATYP 3: the proxy resolves the name (`socks5h://`).
    Domain(String, u16),
    /// ATYP 1 or 4: the client resolved it (`socks5://`).
    Addr(SocketAddr),
}

/// One SOCKS5 handshake as the proxy received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocksRequest {
    /// Methods the client offered (0 = none, 2 = user/password).
    pub methods: Vec<u8>,
    /// User name and password exactly as sent (RFC 1929).
    pub credentials: Option<(String, String)>,
    pub target: SocksTarget,
}

/// A SOCKS5 proxy that connects where it is asked and relays. With `auth` it offers only
/// user/password and refuses other credentials; it records every request that got as far as
/// naming a target.
pub struct SocksProxy {
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<SocksRequest>>>,
    count: watch::Sender<usize>,
}

impl SocksProxy {
    pub async fn start(auth: Option<(&'static str, &'static str)>) -> SocksProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let count = watch::Sender::new(0usize);
        let (r2, c2) = (Arc::clone(&requests), count.clone());
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let (requests, count) = (Arc::clone(&r2), c2.clone());
                tokio::spawn(async move {
                    let _ = socks_session(sock, auth, &requests, &count).await;
                });
            }
        });
        SocksProxy {
            addr,
            requests,
            count,
        }
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<SocksRequest> {
        self.requests.lock().expect("lock").clone()
    }

    /// Waits until `n` requests arrived; panics after `within`.
    pub async fn wait_requests(&self, n: usize, within: Duration) -> Vec<SocksRequest> {
        if let Err(seen) = super::wait_count(&self.count, n, within).await {
            panic!("SOCKS5 proxy got {seen} of {n} requests within {within:?}");
        }
        self.requests()
    }
}

async fn socks_session(
    mut sock: TcpStream,
    auth: Option<(&'static str, &'static str)>,
    requests: &Mutex<Vec<SocksRequest>>,
    count: &watch::Sender<usize>,
) -> std::io::Result<()> {
    let mut head = [0u8; 2];
    sock.read_exact(&mut head).await?;
    if head[0] != 5 {
        return Ok(());
    }
    let mut methods = vec![0u8; usize::from(head[1])];
    sock.read_exact(&mut methods).await?;
    let want = if auth.is_some() { 2 } else { 0 };
    if !methods.contains(&want) {
        return sock.write_all(&[5, 0xFF]).await;
    }
    sock.write_all(&[5, want]).await?;
    let mut credentials = None;
    if let Some((user, password)) = auth {
        let mut ver_len = [0u8; 2];
        sock.read_exact(&mut ver_len).await?;
        let mut u = vec![0u8; usize::from(ver_len[1])];
        sock.read_exact(&mut u).await?;
        let mut plen = [0u8; 1];
        sock.read_exact(&mut plen).await?;
        let mut p = vec![0u8; usize::from(plen[0])];
        sock.read_exact(&mut p).await?;
        let got = (
            String::from_utf8_lossy(&u).into_owned(),
            String::from_utf8_lossy(&p).into_owned(),
        );
        let ok = ver_len[0] == 1 && got.0 == user && got.1 == password;
        credentials = Some(got);
        sock.write_all(&[1, if ok { 0 } else { 1 }]).await?;
        if !ok {
            return Ok(());
        }
    }
    let mut req = [0u8; 4];
    sock.read_exact(&mut req).await?;
    let target = match req[3] {
        1 => {
            let mut a = [0u8; 6];
            sock.read_exact(&mut a).await?;
            let ip = std::net::Ipv4Addr::new(a[0], a[1], a[2], a[3]);
            SocksTarget::Addr(SocketAddr::from((ip, u16::from_be_bytes([a[4], a[5]]))))
        }
        4 => {
            let mut a = [0u8; 18];
            sock.read_exact(&mut a).await?;
            let mut ip = [0u8; 16];
            ip.copy_from_slice(&a[..16]);
            let ip = std::net::Ipv6Addr::from(ip);
            SocksTarget::Addr(SocketAddr::from((ip, u16::from_be_bytes([a[16], a[17]]))))
        }
        3 => {
            let mut len = [0u8; 1];
            sock.read_exact(&mut len).await?;
            let mut name = vec![0u8; usize::from(len[0]) + 2];
            sock.read_exact(&mut name).await?;
            let port = u16::from_be_bytes([name[name.len() - 2], name[name.len() - 1]]);
            name.truncate(name.len() - 2);
            SocksTarget::Domain(String::from_utf8_lossy(&name).into_owned(), port)
        }
        _ => return Ok(()),
    };
    requests.lock().expect("lock").push(SocksRequest {
        methods,
        credentials,
        target: target.clone(),
    });
    count.send_modify(|n| *n += 1);
    if req[1] != 1 {
        // Only CONNECT: "command not supported".
        return sock.write_all(&[5, 7, 0, 1, 0, 0, 0, 0, 0, 0]).await;
    }
    let upstream = match &target {
        SocksTarget::Domain(name, port) => TcpStream::connect((name.as_str(), *port)).await,
        SocksTarget::Addr(a) => TcpStream::connect(a).await,
    };
    let Ok(mut upstream) = upstream else {
        // "Connection refused".
        return sock.write_all(&[5, 5, 0, 1, 0, 0, 0, 0, 0, 0]).await;
    };
    sock.write_all(&[5, 0, 0, 1, 0, 0, 0, 0, 0, 0]).await?;
    tokio::io::copy_bidirectional(&mut sock, &mut upstream).await?;
    Ok(())
}

/// A listener that accepts and counts connections and never answers: stands in for an
/// upstream or a proxy that must not be contacted.
pub async fn counting_listener() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let a2 = Arc::clone(&accepted);
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            a2.fetch_add(1, Ordering::SeqCst);
            held.push(sock);
        }
    });
    (addr, accepted)
}
