//! Operations: systemd notifications and socket activation with the real binary, HTTP metrics
//! and health, log formats, and access control by peer credentials. One test binary, since each
//! links the whole crate.

#[path = "../support/mod.rs"]
mod support;

mod http;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

/// Bound for anything that should happen promptly.
pub const T: Duration = Duration::from_secs(10);

/// A plain HTTP/1.1 GET (or another method): status code and body.
pub fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).expect("http connect");
    s.set_read_timeout(Some(T)).expect("timeout");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .expect("http write");
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("http read");
    let (head, body) = raw.split_once("\r\n\r\n").expect("http head");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    (status, body.to_owned())
}

/// [`http`] from async code.
pub async fn http_async(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let (method, path) = (method.to_owned(), path.to_owned());
    tokio::task::spawn_blocking(move || http(addr, &method, &path))
        .await
        .expect("http task")
}
