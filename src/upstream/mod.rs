//! The per-endpoint task: the state machine `connecting → connected → backoff → …`, with
//! `failed` for what retrying cannot fix and `closed` at the end (SPEC §5).
//!
//! Every wait (connect, backoff sleep, failed) is raced against shutdown and against an
//! operator's reconnect request, so stopping and `ws-sidecar reconnect` are prompt in any state.

mod auth;
pub mod connect;
pub mod failure;
pub mod heartbeat;
pub mod resume;
mod session;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::backoff::Backoff;
use crate::endpoint::{Endpoint, State};
use crate::filter::Filter;
use failure::{Class, Failure};
use resume::Resume;
use session::{End, Session};

/// What the loop does after an attempt or a connection ended.
enum Next {
    /// Connect again after this delay.
    Retry(Failure, Duration),
    /// Stay `failed` until a reconnect request.
    Fail(String),
    /// Connect again at once.
    Now,
    Stop,
}

/// Runs the endpoint until `shutdown`; leaves it `closed`.
pub async fn run(ep: Arc<Endpoint>, shutdown: CancellationToken) {
    let span = tracing::info_span!("endpoint", endpoint = %ep.name);
    run_inner(&ep, &shutdown).instrument(span).await;
    ep.set_state(State::Closed, "shutting down");
}

async fn run_inner(ep: &Endpoint, shutdown: &CancellationToken) {
    let cfg = &ep.config;
    let mut backoff = Backoff::new(cfg.backoff.clone());
    let restored_id = ep
        .take_restored_upstream_id()
        .and_then(|s| resume::UpstreamId::decode(&s));
    let mut resume = cfg.resume.clone().map(|c| Resume::new(c, restored_id));
    if let Some(id) = resume.as_ref().and_then(Resume::last_id) {
        ep.set_last_upstream_id(id.to_string());
    }
    let drop_filters: Vec<Filter> = cfg
        .drop
        .iter()
        .filter_map(|f| Filter::new(f.pointer.clone(), f.equals.clone()).ok())
        .collect();
    let max_auth_failures = cfg.auth.as_ref().map_or(3, |a| a.max_failures).max(1);
    let urls: Vec<url::Url> = std::iter::once(cfg.url.clone())
        .chain(cfg.fallback_urls.iter().cloned())
        .collect();
    let (mut url_idx, mut url_failures, mut auth_failures) = (0usize, 0u32, 0u32);
    let mut connections = 0u64;
    let mut ever_connected = false;

    loop {
        let base = &urls[url_idx];
        let prepared = prepare(ep, base, resume.as_ref()).await;
        let shown = prepared
            .as_ref()
            .map_or_else(|_| crate::redact::redact_url(base), |(_, s)| s.clone());
        ep.set_url(shown.clone());
        ep.set_state(State::Connecting, format!("connecting to {shown}"));
        connections += 1;
        let attempt_span = tracing::info_span!("connection", attempt = connections, url = %shown);

        let outcome = async {
            let attempt = match prepared {
                Ok((attempt, _)) => attempt,
                Err(f) => return Err(f),
            };
            let connecting = connect::connect(attempt);
            tokio::pin!(connecting);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(None),
                    r = &mut connecting => return r.map(Some),
                    // The attempt under way is the reconnect asked for: take the request so it
                    // does not tear down the connection this attempt is about to open.
                    _ = ep.reconnect_requested() => {}
                }
            }
        }
        .instrument(attempt_span.clone())
        .await;

        let next = match outcome {
            Ok(None) => Next::Stop,
            Ok(Some(ws)) => {
                if ever_connected {
                    Endpoint::count(&ep.stats.reconnects, 1);
                }
                ever_connected = true;
                url_idx = 0;
                url_failures = 0;
                auth_failures = 0;
                backoff.on_connected(Instant::now());
                ep.set_state(State::Connected, format!("connected to {shown}"));
                let session = Session {
                    ep,
                    resume: &mut resume,
                    drop_filters: &drop_filters,
                    shutdown,
                    durable: cfg.resume.is_some() || cfg.replay.persist,
                };
                match session.run(ws).instrument(attempt_span).await {
                    End::Shutdown => Next::Stop,
                    End::Reconnect => {
                        backoff.reset();
                        Next::Now
                    }
                    End::Lost(f) => classify(f, &mut auth_failures, max_auth_failures, |ra| {
                        backoff.after_disconnect(Instant::now(), ra, fastrand::f64())
                    }),
                }
            }
            Err(f) => {
                url_failures += 1;
                if urls.len() > 1 && url_failures >= cfg.backoff.fallback_after.max(1) {
                    url_idx = (url_idx + 1) % urls.len();
                    url_failures = 0;
                }
                classify(f, &mut auth_failures, max_auth_failures, |ra| {
                    backoff.after_failure(ra, fastrand::f64())
                })
            }
        };

        match next {
            Next::Stop => return,
            Next::Now => {}
            Next::Retry(f, delay) => {
                ep.set_state(
                    State::Backoff,
                    format!("{}; retrying in {}", f.reason, crate::fmt::duration(delay)),
                );
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = ep.reconnect_requested() => backoff.reset(),
                    _ = tokio::time::sleep(delay) => {}
                }
            }
            Next::Fail(reason) => {
                ep.set_state(State::Failed, reason);
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = ep.reconnect_requested() => {
                        backoff.reset();
                        auth_failures = 0;
                        url_idx = 0;
                        url_failures = 0;
                    }
                }
            }
        }
    }
}

/// Turns a failure into the next step, counting consecutive auth failures.
fn classify(
    f: Failure,
    auth_failures: &mut u32,
    max_auth_failures: u32,
    delay: impl FnOnce(Option<Duration>) -> Duration,
) -> Next {
    match f.class {
        Class::Fatal => Next::Fail(f.reason),
        Class::Auth => {
            *auth_failures += 1;
            if *auth_failures >= max_auth_failures {
                Next::Fail(format!(
                    "{} ({} consecutive auth failures)",
                    f.reason, auth_failures
                ))
            } else {
                let d = delay(f.retry_after);
                Next::Retry(f, d)
            }
        }
        Class::Retry => {
            let d = delay(f.retry_after);
            Next::Retry(f, d)
        }
    }
}

/// Builds this attempt's URL and headers: resume query, credential, configured headers.
/// Returns the attempt and the URL as it may be shown.
async fn prepare<'a>(
    ep: &'a Endpoint,
    base: &url::Url,
    resume: Option<&Resume>,
) -> Result<(connect::Attempt<'a>, String), Failure> {
    let cfg = &ep.config;
    let mut url = base.clone();
    if let Some(r) = resume {
        r.apply_query(&mut url);
    }
    let mut headers = Vec::with_capacity(cfg.headers.len() + 1);
    for (name, secret) in &cfg.headers {
        let value = secret
            .resolve()
            .await
            .map_err(|e| Failure::retry(format!("header {name}: {e}")))?;
        headers.push((name.clone(), value));
    }
    let mut secret_params: Vec<String> = Vec::new();
    if let Some(a) = &cfg.auth {
        match auth::credential(a).await? {
            auth::Credential::Header(name, value) => headers.push((name, value)),
            auth::Credential::Query(name, value) => {
                url.query_pairs_mut().append_pair(&name, value.expose());
                secret_params.push(name);
            }
        }
    }
    let params: Vec<&str> = secret_params.iter().map(String::as_str).collect();
    let shown = crate::redact::redact_url_with(&url, &params);
    Ok((connect::Attempt { cfg, url, headers }, shown))
}
