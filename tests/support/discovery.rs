//! A URL discovery endpoint standing for Slack's `apps.connections.open` (hyper, on
//! 127.0.0.1:0), paired with a fake upstream that takes only the tickets it issued, once each.
//!
//! What it enforces, from Slack's documentation: a POST with the app-level token as
//! `Authorization: Bearer xapp-…`; a wrong token gets HTTP 200 with
//! `{"ok":false,"error":"invalid_auth"}`; a good one gets `{"ok":true,"url":"ws://…?ticket=…"}`,
//! and each URL is single-use: the upstream refuses a ticket it has already seen (or never
//! issued) with HTTP 401.

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::{wait_count, FakeUpstream, Reply};

/// The app-level token the endpoint accepts.
pub const APP_TOKEN: &str = "xapp-1-A111-222-s3cr3t";

/// What the endpoint answers to the next call (once the script is empty: a ticket).
#[derive(Clone, Debug)]
pub enum Answer {
    /// A fresh single-use URL of the paired upstream.
    Ticket,
    /// This HTTP status with an empty JSON object.
    Status(u16),
    /// HTTP 200 with this body.
    Json(&'static str),
}

struct Shared {
    /// The paired upstream's address, for the URLs handed out.
    upstream: SocketAddr,
    script: Mutex<VecDeque<Answer>>,
    /// Every ticket handed out, in order.
    issued: Mutex<Vec<String>>,
    /// Tickets the upstream has accepted a handshake with.
    used: Mutex<HashSet<String>>,
    /// Handshakes the upstream refused (a reused or unknown ticket).
    refused: Mutex<Vec<String>>,
    calls: watch::Sender<usize>,
}

/// The discovery endpoint and its upstream.
pub struct SocketMode {
    /// `http://127.0.0.1:PORT/api/apps.connections.open`
    pub url: String,
    pub upstream: FakeUpstream,
    shared: Arc<Shared>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The ticket of a request target such as `/link/?ticket=t1&app_id=A1`.
pub fn ticket_of(target: &str) -> Option<String> {
    let query = target.split_once('?')?.1;
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "ticket")
        .map(|(_, v)| v.into_owned())
}

impl SocketMode {
    /// Starts both servers; `script` answers the first calls.
    pub async fn start(script: &[Answer]) -> SocketMode {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        // The upstream's policy needs the shared state, which needs the upstream's address:
        // the state is filled in through this slot once the upstream is bound.
        let slot: Arc<Mutex<Option<Arc<Shared>>>> = Arc::new(Mutex::new(None));
        let policy_slot = Arc::clone(&slot);
        let upstream = FakeUpstream::start_with(move |_, req| {
            let Some(shared) = lock(&policy_slot).clone() else {
                return Reply::reject(503, &[]);
            };
            let target = req.uri().to_string();
            let ticket = ticket_of(&target).unwrap_or_default();
            let known = lock(&shared.issued).contains(&ticket);
            if known && lock(&shared.used).insert(ticket.clone()) {
                Reply::Accept
            } else {
                lock(&shared.refused).push(ticket);
                Reply::reject(401, &[])
            }
        })
        .await;
        let shared = Arc::new(Shared {
            upstream: upstream.addr(),
            script: Mutex::new(script.iter().cloned().collect()),
            issued: Mutex::new(Vec::new()),
            used: Mutex::new(HashSet::new()),
            refused: Mutex::new(Vec::new()),
            calls: watch::Sender::new(0),
        });
        *lock(&slot) = Some(Arc::clone(&shared));
        let served = Arc::clone(&shared);
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let shared = Arc::clone(&served);
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let shared = Arc::clone(&shared);
                        async move { Ok::<_, std::convert::Infallible>(answer(&shared, &req)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        SocketMode {
            url: format!("http://{addr}/api/apps.connections.open"),
            upstream,
            shared,
        }
    }

    /// Calls answered so far.
    pub fn calls(&self) -> usize {
        *self.shared.calls.borrow()
    }

    /// Waits until `n` calls were answered.
    pub async fn wait_calls(&self, n: usize, within: std::time::Duration) {
        if let Err(seen) = wait_count(&self.shared.calls, n, within).await {
            panic!("discovery endpoint: {seen} call(s), {n} expected within {within:?}");
        }
    }

    /// Every ticket handed out, in order.
    pub fn issued(&self) -> Vec<String> {
        lock(&self.shared.issued).clone()
    }

    /// Tickets the upstream refused (reused or never issued).
    pub fn refused(&self) -> Vec<String> {
        lock(&self.shared.refused).clone()
    }
}

fn answer(
    shared: &Shared,
    req: &hyper::Request<hyper::body::Incoming>,
) -> hyper::Response<Full<Bytes>> {
    let next = lock(&shared.script).pop_front().unwrap_or(Answer::Ticket);
    let authorized = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        == Some(format!("Bearer {APP_TOKEN}").as_str());
    let (status, body) = if req.method() != hyper::Method::POST
        || req.uri().path() != "/api/apps.connections.open"
    {
        (404, r#"{"ok":false,"error":"unknown_method"}"#.to_owned())
    } else if !authorized {
        (200, r#"{"ok":false,"error":"invalid_auth"}"#.to_owned())
    } else {
        match next {
            Answer::Ticket => {
                let mut issued = lock(&shared.issued);
                let ticket = format!("tk{}-{:08x}", issued.len() + 1, fastrand::u32(..));
                issued.push(ticket.clone());
                (
                    200,
                    format!(
                        r#"{{"ok":true,"url":"ws://{}/link/?ticket={ticket}&app_id=A111"}}"#,
                        shared.upstream
                    ),
                )
            }
            Answer::Status(s) => (s, "{}".to_owned()),
            Answer::Json(j) => (200, j.to_owned()),
        }
    };
    shared.calls.send_modify(|n| *n += 1);
    hyper::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| hyper::Response::new(Full::new(Bytes::new())))
}
