//! The per-endpoint task: the state machine `connecting → connected → backoff → …`, with
//! `failed` for what retrying cannot fix and `closed` at the end (SPEC §5).
//!
//! Every wait (connect, backoff sleep, failed) is raced against shutdown and against an
//! operator's reconnect request, so stopping and `ws-sidecar reconnect` are prompt in any state.

pub mod auth;
pub mod connect;
mod discover;
pub mod failure;
mod frame_watch;
mod handshake;
pub mod heartbeat;
mod http_client;
mod ingest;
mod oauth2;
mod overlap;
mod proxy;
mod replace;
pub mod resume;
mod session;
mod speak;
mod switch;
pub mod tls;
mod writer;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::backoff::Backoff;
use crate::config::EndpointConfig;
use crate::dialogue::decode::Decoder;
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
    let mut captures = ep.take_captures();
    let state = Kept {
        resume: &mut resume,
        captures: &mut captures,
    };
    run_inner(&ep, &cfg, state, &shutdown, &stalls)
        .instrument(span)
        .await;
    if let Some(r) = &resume {
        ep.keep_resume_memory(r.memory());
    }
    ep.keep_captures(captures);
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

/// What the endpoint remembers of the upstream across connections and runs of this task.
struct Kept<'k> {
    resume: &'k mut Option<Resume>,
    captures: &'k mut crate::dialogue::capture::Captures,
}

async fn run_inner(
    ep: &Endpoint,
    cfg: &EndpointConfig,
    kept: Kept<'_>,
    shutdown: &CancellationToken,
    stalls: &Stalls,
) {
    let Kept { resume, captures } = kept;
    let mut backoff = Backoff::new(cfg.backoff.clone());
    let mut auth = cfg.auth.clone().map(Auth::new);
    let drop_filters: Vec<Filter> = cfg
        .drop
        .iter()
        .filter_map(|f| Filter::new(f.pointer.clone(), f.equals.clone()).ok())
        .collect();
    let max_auth_failures = cfg.auth.as_ref().map_or(3, |a| a.max_failures).max(1);
    let urls: Vec<crate::config::UrlSource> = std::iter::once(cfg.url.clone())
        .chain(
            cfg.fallback_urls
                .iter()
                .cloned()
                .map(crate::config::UrlSource::Fixed),
        )
        .collect();
    let (mut url_idx, mut url_failures, mut auth_failures) = (0usize, 0u32, 0u32);
    let mut connections = 0u64;
    let mut ever_connected = false;
    // One receiver for the task's life: a stall while connecting is seen by the next session.
    let mut stalls = stalls.subscribe();
    // A connection already open (make-before-break) to continue on.
    let mut switched: Option<(Box<replace::Ready>, replace::Why)> = None;
    let script = crate::dialogue::Script::new(cfg);
    let mut overlap = overlap::Overlap::default();

    loop {
        let resets = ep.take_resume_resets();
        if !resets.is_empty() {
            let kept = Kept {
                resume: &mut *resume,
                captures: &mut *captures,
            };
            let answer = forget_position(ep, kept, "by operator request").await;
            for r in resets {
                let _ = r.send(answer.clone());
            }
            // It was opened offering the position just forgotten.
            switched = None;
        }
        // A position is offered where the upstream said to resume (`resume.url`), if it did.
        let base = resume
            .as_ref()
            .filter(|r| r.is_resuming(captures))
            .and_then(|r| r.url(captures))
            .map(crate::config::UrlSource::Fixed)
            .unwrap_or_else(|| urls[url_idx].clone());
        let mut opened = None;
        let mut held = Vec::new();
        let mut decoder = None;
        let outcome = match switched.take() {
            Some((ready, why)) => {
                let replace::Ready {
                    ws,
                    shown,
                    counter,
                    captures: fresh,
                    held: first,
                    decoder: inflating,
                } = *ready;
                decoder = Some(inflating);
                ep.set_url(shown.clone());
                opened = Some(counter);
                held = first;
                *captures = fresh;
                let via = base.fixed().map(|u| cfg.proxy.via(u)).unwrap_or_default();
                Ok(Attempted::Connected(
                    Box::new(ws),
                    format!("{shown} ({})", why.close_reason()),
                    via,
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
            Ok(Attempted::Connected(ws, shown, via)) => {
                if ever_connected {
                    Endpoint::count(&ep.stats.reconnects, 1);
                }
                ever_connected = true;
                url_idx = 0;
                url_failures = 0;
                backoff.on_connected(Instant::now());
                let span = tracing::info_span!("connection", attempt = connections);
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
                        .is_some_and(|r| r.scope.outlives_connection())
                        || cfg.replay.persist,
                    script: &script,
                    captures,
                    overlap: &mut overlap,
                    connected: format!("connected to {shown}{via}"),
                    auth_failures: &mut auth_failures,
                    opened,
                    held,
                    decoder: decoder
                        .take()
                        .unwrap_or_else(|| Decoder::new(cfg.decode, cfg.max_message_size)),
                };
                let end = session.run(*ws).instrument(span).await;
                if let Some(link) = crate::share::link::Link::new(cfg) {
                    match &end {
                        End::Switch(..) => link.switched(&ep.share, end.describe()),
                        _ => link.lost(&ep.share, end.describe()),
                    }
                }
                match end {
                    End::Shutdown => Next::Stop,
                    End::Reconnect => {
                        backoff.reset();
                        Next::Now
                    }
                    End::Switch(ready, why) => {
                        switched = Some((ready, why));
                        Next::Now
                    }
                    End::ResetResume => {
                        let kept = Kept {
                            resume: &mut *resume,
                            captures: &mut *captures,
                        };
                        let why = "as the upstream said (a reset_resume rule)";
                        if let Err(e) = forget_position(ep, kept, why).await {
                            tracing::error!(error = %e, "cannot forget the stored resume position");
                        }
                        // With backoff, as after any disconnect: an upstream that refuses
                        // every position must not be hammered (Discord asks for 1-5 s after
                        // an invalid session).
                        let f = Failure::retry("the upstream said the resume position is gone");
                        let delay = backoff.after_disconnect(Instant::now(), None, fastrand::f64());
                        Next::Retry(f, delay)
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
    /// Connected; the URL as it may be shown, and the proxy it goes through (` via proxy …`).
    Connected(Box<connect::Ws>, String, String),
    Shutdown,
    /// Abandoned for an operator's reset-resume: it was offering the old position.
    Restart,
}

/// One connection attempt in the `connecting` state.
async fn attempt(
    ep: &Endpoint,
    cfg: &EndpointConfig,
    base: &crate::config::UrlSource,
    resume: Option<&Resume>,
    auth: Option<&mut Auth>,
    shutdown: &CancellationToken,
    n: u64,
) -> Result<Attempted, Failure> {
    let offer = resume.and_then(Resume::query_offer);
    // A discovered URL is not known yet: the source is shown until it is.
    let (shown, via) = match base.fixed() {
        Some(base) => {
            let mut url = base.clone();
            if let Some(o) = &offer {
                o.apply(&mut url);
            }
            (crate::redact::redact_url(&url), cfg.proxy.via(&url))
        }
        None => (base.shown(), String::new()),
    };
    ep.set_url(shown.clone());
    ep.set_state(State::Connecting, format!("connecting to {shown}{via}"));
    let span = tracing::info_span!("connection", attempt = n, url = %shown);
    async {
        let (attempt, shown) = tokio::select! {
            _ = shutdown.cancelled() => return Ok(Attempted::Shutdown),
            p = prepare(ep, cfg, base, offer.as_ref(), auth) => p?,
        };
        ep.set_url(shown.clone());
        let via = cfg.proxy.via(&attempt.url);
        let connecting = connect::connect(attempt);
        tokio::pin!(connecting);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(Attempted::Shutdown),
                r = &mut connecting => return r.map(|ws| Attempted::Connected(Box::new(ws), shown, via)),
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

/// Carries out a reset-resume (an operator's, or a rule's `reset_resume`): the position and
/// the captured values (the session they belong to) are forgotten in memory and in the store,
/// so the next connection offers none. `why` is said in the log. Returns the forgotten
/// position.
async fn forget_position(
    ep: &Endpoint,
    kept: Kept<'_>,
    why: &str,
) -> Result<Option<String>, String> {
    let Kept { resume, captures } = kept;
    captures.clear();
    let resume = resume.as_mut();
    let shown = ep.last_upstream_id();
    let previous = resume
        .and_then(Resume::forget)
        .map(|id| id.to_string())
        .or_else(|| (!shown.is_empty()).then_some(shown));
    ep.set_last_upstream_id(String::new());
    let _ = ep.take_resume_memory();
    if let Some(store) = &ep.store {
        let endpoint = || std::sync::Arc::clone(&ep.key);
        let ops = vec![
            crate::store::Op::UpstreamIdClear {
                endpoint: endpoint(),
            },
            crate::store::Op::CaptureClear {
                endpoint: endpoint(),
            },
        ];
        store.commit(ops).await.map_err(|e| e.to_string())?;
    }
    tracing::warn!(
        previous = previous.as_deref().unwrap_or("none"),
        "resume position forgotten {why}; reconnecting without it"
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

/// Builds an attempt on `base` with the resume `offer`: configured headers and the credential,
/// resolved now, and last a discovered URL (its ticket may be short-lived). Returns the
/// attempt and the URL as it may be shown.
async fn prepare<'a>(
    ep: &Endpoint,
    cfg: &'a EndpointConfig,
    base: &crate::config::UrlSource,
    offer: Option<&resume::QueryOffer>,
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
    let mut query: Option<(String, crate::secret::SecretString)> = None;
    if let Some(a) = auth {
        let credential = a.credential(cfg).await;
        record_expiry(ep, a);
        match credential? {
            Credential::Header(name, value) => headers.push((name, value)),
            Credential::Query(name, value) => query = Some((name, value)),
        }
    }
    let mut target = discover::target(base, cfg).await?;
    if let Some(o) = offer {
        o.apply(&mut target.url);
    }
    if let Some((name, value)) = &query {
        target
            .url
            .query_pairs_mut()
            .append_pair(name, value.expose());
    }
    let shown = target.shown(&query.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>());
    Ok((
        connect::Attempt {
            cfg,
            url: target.url,
            headers,
        },
        shown,
    ))
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
