//! The per-endpoint task: the state machine `connecting → connected → backoff → …`, with
//! `failed` for what retrying cannot fix and `closed` at the end (SPEC §5).
//!
//! Every wait (connect, backoff sleep, failed) is raced against shutdown and against an
//! operator's reconnect request, so stopping and `ws-sidecar reconnect` are prompt in any state.

pub mod auth;
pub mod connect;
pub mod failure;
mod frame_watch;
mod handshake;
pub mod heartbeat;
mod ingest;
mod oauth2;
mod proxy;
pub mod resume;
mod session;
pub mod template;
pub mod tls;
mod writer;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::backoff::Backoff;
use crate::config::EndpointConfig;
use crate::endpoint::{Endpoint, State};
use crate::filter::Filter;
use crate::stall::Stalls;
use auth::{Auth, Credential};
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

/// Runs the endpoint until `shutdown`; leaves it `closed`. After each of the process's
/// `stalls` a live connection is checked at once.
pub async fn run(ep: Arc<Endpoint>, shutdown: CancellationToken, stalls: Stalls) {
    let span = tracing::info_span!("endpoint", endpoint = %ep.name);
    // A snapshot: a reload that changes the endpoint restarts this task with the new one.
    let cfg = ep.config();
    let mut resume = cfg
        .resume
        .clone()
        .map(|c| Resume::restore(c, starting_memory(&ep, &cfg)));
    if let Some(id) = resume.as_ref().and_then(Resume::last_id) {
        ep.set_last_upstream_id(id.to_string());
    }
    run_inner(&ep, &cfg, &mut resume, &shutdown, &stalls)
        .instrument(span)
        .await;
    if let Some(r) = &resume {
        ep.keep_resume_memory(r.memory());
    }
    if !ep.is_restarting() {
        ep.set_state(State::Closed, "shutting down");
    }
}

/// What resume starts from: what the last run left (or the store had at startup), else the
/// last id shown in status.
fn starting_memory(ep: &Endpoint, cfg: &EndpointConfig) -> resume::Memory {
    ep.take_resume_memory().unwrap_or_else(|| {
        let last = ep.last_upstream_id();
        let last = match cfg.resume.as_ref().map(|r| r.id_kind) {
            _ if last.is_empty() => None,
            Some(crate::config::IdKind::Integer) => last.parse().ok().map(resume::UpstreamId::Int),
            Some(crate::config::IdKind::String) => Some(resume::UpstreamId::Str(last)),
            None => None,
        };
        resume::Memory {
            last,
            recent: Vec::new(),
        }
    })
}

async fn run_inner(
    ep: &Endpoint,
    cfg: &EndpointConfig,
    resume: &mut Option<Resume>,
    shutdown: &CancellationToken,
    stalls: &Stalls,
) {
    let mut backoff = Backoff::new(cfg.backoff.clone());
    let mut auth = cfg.auth.clone().map(Auth::new);
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
    // One receiver for the task's life: a stall while connecting is seen by the next session.
    let mut stalls = stalls.subscribe();
    // A connection already open (make-before-break credential renewal) to continue on.
    let mut switched: Option<(connect::Ws, String)> = None;

    loop {
        let resets = ep.take_resume_resets();
        if !resets.is_empty() {
            let answer = forget_position(ep, resume.as_mut()).await;
            for r in resets {
                let _ = r.send(answer.clone());
            }
            // It was opened offering the position just forgotten.
            switched = None;
        }
        let base = urls[url_idx].clone();
        let outcome = match switched.take() {
            Some((ws, shown)) => {
                ep.set_url(shown.clone());
                Ok(Attempted::Connected(
                    Box::new(ws),
                    format!("{shown} (credential renewed)"),
                ))
            }
            None => {
                connections += 1;
                attempt(
                    ep,
                    cfg,
                    &base,
                    resume.as_ref(),
                    auth.as_mut(),
                    shutdown,
                    connections,
                )
                .await
            }
        };

        let next = match outcome {
            Ok(Attempted::Shutdown) => Next::Stop,
            Ok(Attempted::Restart) => Next::Now,
            Ok(Attempted::Connected(ws, shown)) => {
                if ever_connected {
                    Endpoint::count(&ep.stats.reconnects, 1);
                }
                ever_connected = true;
                url_idx = 0;
                url_failures = 0;
                auth_failures = 0;
                backoff.on_connected(Instant::now());
                let span = tracing::info_span!("connection", attempt = connections);
                let via = cfg.proxy.via(&base);
                span.in_scope(|| {
                    ep.set_state(State::Connected, format!("connected to {shown}{via}"))
                });
                let session = Session {
                    ep,
                    cfg,
                    resume,
                    auth: &mut auth,
                    base: &base,
                    drop_filters: &drop_filters,
                    shutdown,
                    stalls: &mut stalls,
                    // Ids that start again on every connection are not worth storing.
                    durable: cfg
                        .resume
                        .as_ref()
                        .is_some_and(|r| r.scope == crate::config::IdScope::Global)
                        || cfg.replay.persist,
                };
                match session.run(*ws).instrument(span).await {
                    End::Shutdown => Next::Stop,
                    End::Reconnect => {
                        backoff.reset();
                        Next::Now
                    }
                    End::Switch(ws, shown) => {
                        switched = Some((*ws, shown));
                        Next::Now
                    }
                    End::Lost(f) => {
                        if f.class == Class::Auth {
                            if let Some(a) = auth.as_mut() {
                                a.invalidate();
                            }
                        }
                        classify(f, &mut auth_failures, max_auth_failures, |ra| {
                            backoff.after_disconnect(Instant::now(), ra, fastrand::f64())
                        })
                    }
                }
            }
            Err(f) => {
                url_failures += 1;
                if urls.len() > 1 && url_failures >= cfg.backoff.fallback_after.max(1) {
                    url_idx = (url_idx + 1) % urls.len();
                    url_failures = 0;
                }
                if f.class == Class::Auth {
                    // Refused credentials are renewed before the next attempt.
                    if let Some(a) = auth.as_mut() {
                        a.invalidate();
                    }
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

/// How a connection attempt that did not fail ended.
enum Attempted {
    /// Connected; the URL as it may be shown.
    Connected(Box<connect::Ws>, String),
    Shutdown,
    /// Abandoned for an operator's reset-resume: it was offering the old position.
    Restart,
}

/// One connection attempt in the `connecting` state.
async fn attempt(
    ep: &Endpoint,
    cfg: &EndpointConfig,
    base: &url::Url,
    resume: Option<&Resume>,
    auth: Option<&mut Auth>,
    shutdown: &CancellationToken,
    n: u64,
) -> Result<Attempted, Failure> {
    let mut url = base.clone();
    if let Some(r) = resume {
        r.apply_query(&mut url);
    }
    ep.set_url(crate::redact::redact_url(&url));
    ep.set_state(
        State::Connecting,
        format!(
            "connecting to {}{}",
            crate::redact::redact_url(&url),
            cfg.proxy.via(&url)
        ),
    );
    let span =
        tracing::info_span!("connection", attempt = n, url = %crate::redact::redact_url(&url));
    async {
        let (attempt, shown) = tokio::select! {
            _ = shutdown.cancelled() => return Ok(Attempted::Shutdown),
            p = prepare(ep, cfg, url, auth) => p?,
        };
        ep.set_url(shown.clone());
        let connecting = connect::connect(attempt);
        tokio::pin!(connecting);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(Attempted::Shutdown),
                r = &mut connecting => return r.map(|ws| Attempted::Connected(Box::new(ws), shown)),
                // The attempt under way is the reconnect asked for: take the request so it
                // does not tear down the connection this attempt is about to open, unless
                // the attempt offers a resume position an operator asked to forget.
                _ = ep.reconnect_requested() => {
                    if ep.resume_reset_pending() {
                        return Ok(Attempted::Restart);
                    }
                }
            }
        }
    }
    .instrument(span)
    .await
}

/// Carries out an operator's reset-resume: the position is forgotten in memory and in the
/// store, so the next connection offers none. Returns the forgotten position.
async fn forget_position(
    ep: &Endpoint,
    resume: Option<&mut Resume>,
) -> Result<Option<String>, String> {
    let shown = ep.last_upstream_id();
    let previous = resume
        .and_then(Resume::forget)
        .map(|id| id.to_string())
        .or_else(|| (!shown.is_empty()).then_some(shown));
    ep.set_last_upstream_id(String::new());
    let _ = ep.take_resume_memory();
    if let Some(store) = &ep.store {
        let op = crate::store::Op::UpstreamIdClear {
            endpoint: std::sync::Arc::clone(&ep.key),
        };
        store.commit(vec![op]).await.map_err(|e| e.to_string())?;
    }
    tracing::warn!(
        previous = previous.as_deref().unwrap_or("none"),
        "resume position forgotten by operator request; reconnecting without it"
    );
    Ok(previous)
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

/// Builds an attempt from `url` (resume query already applied): configured headers and the
/// credential, resolved now. Returns the attempt and the URL as it may be shown.
async fn prepare<'a>(
    ep: &Endpoint,
    cfg: &'a EndpointConfig,
    mut url: url::Url,
    auth: Option<&mut Auth>,
) -> Result<(connect::Attempt<'a>, String), Failure> {
    let mut headers = Vec::with_capacity(cfg.headers.len() + 1);
    for (name, secret) in &cfg.headers {
        let value = secret
            .resolve()
            .await
            .map_err(|e| Failure::retry(format!("header {name}: {e}")))?;
        headers.push((name.clone(), value));
    }
    let mut secret_params: Vec<String> = Vec::new();
    if let Some(a) = auth {
        let credential = a.credential(cfg).await;
        record_expiry(ep, a);
        match credential? {
            Credential::Header(name, value) => headers.push((name, value)),
            Credential::Query(name, value) => {
                url.query_pairs_mut().append_pair(&name, value.expose());
                secret_params.push(name);
            }
        }
    }
    let params: Vec<&str> = secret_params.iter().map(String::as_str).collect();
    let shown = crate::redact::redact_url_with(&url, &params);
    Ok((connect::Attempt { cfg, url, headers }, shown))
}

/// Shows the credential's expiry in status and metrics.
fn record_expiry(ep: &Endpoint, auth: &Auth) {
    let nanos = auth
        .expires_at()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as u64);
    ep.stats
        .auth_expires_at
        .store(nanos, std::sync::atomic::Ordering::Relaxed);
}
