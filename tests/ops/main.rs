//! Operations: systemd notifications and socket activation with the real binary, HTTP metrics
//! and health, log formats, and access control by peer credentials. One test binary, since each
//! links the whole crate.

#[path = "../support/mod.rs"]
mod support;

mod access;
mod activation;
mod browser;
mod events;
mod grafana;
mod http;
mod logs;
mod notify;
mod page;
mod sse;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::process::Child;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Bound for anything that should happen promptly.
pub const T: Duration = Duration::from_secs(10);

/// A loopback port that nothing listens on right now: bound, then released.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// Sends SIGTERM to `child` and checks it exits 0 within 5 s.
pub fn sigterm_and_wait(child: &mut Child) {
    let st = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(st.success(), "kill -TERM failed");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            assert_eq!(status.code(), Some(0), "exit code after SIGTERM");
            return;
        }
        assert!(Instant::now() < deadline, "daemon did not exit within 5 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Lines of a child's output, read on a thread so a test can wait on them with a deadline.
pub struct Lines {
    rx: mpsc::Receiver<String>,
    /// Everything read so far, for failure messages.
    pub seen: Vec<String>,
}

impl Lines {
    /// Reads `r` line by line until EOF.
    pub fn spawn(r: impl Read + Send + 'static) -> Lines {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(r).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Lines {
            rx,
            seen: Vec::new(),
        }
    }

    /// The next line satisfying `pred`, within `within`.
    pub fn wait_for(
        &mut self,
        what: &str,
        within: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no line with {what} within {within:?}; seen:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }
}

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

/// The uid and gid of this process (the owner of its /proc entry).
pub fn my_ids() -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata("/proc/self").expect("/proc/self");
    (m.uid(), m.gid())
}
