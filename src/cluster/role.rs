//! The task of a clustered endpoint: join the fleet, feed the local log from the endpoint's
//! stream for as long as the task runs, and hold the upstream connection only while this
//! daemon holds the endpoint's lease.
//!
//! Every host's local log, the leader's included, is fed from the stream by one reader, so
//! seqs, payloads and gaps are the same on every host, and nothing reaches a subscriber before
//! the stream has it. The leader runs the ordinary upstream loop (`crate::upstream::run`);
//! its inbound messages go to the stream through [`Leading`] instead of the local log.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::feed;
use super::interest::Interest;
use super::lease::{Held, LeaseEvent, LeaseWatch, Leases, RenewError};
use super::node::Node;
use super::queue::PublishQueue;
use super::sharing;
use super::slot::{Leading, Role};
use super::stream::EndpointStream;
use crate::endpoint::{Endpoint, State};
use crate::stall::Stalls;

/// Longest pause between attempts to reach NATS.
const MAX_RETRY: Duration = Duration::from_secs(5);

/// Runs a clustered endpoint until `shutdown`; leaves it `closed`.
pub async fn run(ep: Arc<Endpoint>, node: Node, shutdown: CancellationToken, stalls: Stalls) {
    let span = tracing::info_span!("endpoint", endpoint = %ep.name);
    async {
        if let Some((stream, leases, interest)) = join(&ep, &node, &shutdown).await {
            let feeding = shutdown.child_token();
            let (from, live) = feed::start(&ep, &stream).await;
            let feeder = tokio::spawn(feed::run(
                Arc::clone(&ep),
                stream.clone(),
                (from, live),
                feeding.clone(),
            ));
            let declaring = interest.clone().map(|i| {
                let host = node.name().to_string();
                tokio::spawn(sharing::declare(Arc::clone(&ep), i, host, feeding.clone()))
            });
            loop {
                let mirroring = interest.clone().map(|i| {
                    let stop = shutdown.child_token();
                    let task = tokio::spawn(sharing::mirror(Arc::clone(&ep), i, stop.clone()));
                    (task, stop)
                });
                let held = follow(&ep, &node, &leases, &shutdown).await;
                if let Some((task, stop)) = mirroring {
                    stop.cancel();
                    let _ = task.await;
                }
                let Some(held) = held else { break };
                let term = Term {
                    node: &node,
                    stream: &stream,
                    interest: interest.as_ref(),
                };
                lead(&ep, term, held, &shutdown, &stalls).await;
            }
            feeding.cancel();
            let _ = feeder.await;
            if let Some(d) = declaring {
                let _ = d.await;
            }
        }
        // The leader's upstream loop may have said it already: once is enough for apps.
        if !ep.is_restarting() && ep.state().state != State::Closed {
            ep.set_state(State::Closed, "shutting down");
        }
    }
    .instrument(span)
    .await
}

/// Sleeps `delay` (doubling it up to [`MAX_RETRY`]); false when shut down meanwhile.
pub(super) async fn pause(delay: &mut Duration, shutdown: &CancellationToken) -> bool {
    let d = *delay;
    *delay = (*delay * 2).min(MAX_RETRY);
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = shutdown.cancelled() => false,
    }
}

/// What a term runs with: the fleet connection, the endpoint's stream, and the interest
/// bucket when the endpoint shares subscriptions.
struct Term<'a> {
    node: &'a Node,
    stream: &'a EndpointStream,
    interest: Option<&'a Interest>,
}

/// Opens the lease bucket, the endpoint's stream and queue and, when it shares subscriptions,
/// the interest bucket, retrying until NATS answers.
async fn join(
    ep: &Endpoint,
    node: &Node,
    shutdown: &CancellationToken,
) -> Option<(EndpointStream, Leases, Option<Interest>)> {
    ep.cluster.set_role(Role::Joining, None, 0);
    ep.set_state(State::Connecting, "joining the fleet through NATS");
    let mut delay = Duration::from_millis(200);
    loop {
        let opened = async {
            let leases = node.leases().await.map_err(|e| e.to_string())?.clone();
            let retention = node.retention();
            let stream = EndpointStream::open(node.js(), &ep.name, ep.log.next_seq(), &retention)
                .await
                .map_err(|e| e.to_string())?;
            let queue = PublishQueue::open(
                node.js(),
                &ep.name,
                retention.replicas,
                retention.duplicate_window,
            )
            .await
            .map_err(|e| e.to_string())?;
            let interest = match ep.config().subscriptions {
                Some(_) => Some(node.interest().await.map_err(|e| e.to_string())?.clone()),
                None => None,
            };
            ep.cluster.set_queue(queue);
            ep.cluster.set_stream(stream.clone());
            ep.cluster.set_calls(super::calls::Calls::new(
                node.client().clone(),
                &ep.name,
                node.lease_ttl(),
            ));
            Ok::<_, String>((stream, leases, interest))
        };
        tokio::pin!(opened);
        let mut link = node.link();
        let opened = loop {
            tokio::select! {
                r = &mut opened => break r,
                _ = shutdown.cancelled() => return None,
                // The first requests can wait long on a server that refuses or is not there:
                // say why meanwhile.
                r = link.changed() => if r.is_ok() {
                    let troubled = {
                        let l = link.borrow_and_update();
                        !l.connected || l.error.is_some()
                    };
                    if troubled {
                        ep.set_state(
                            State::Connecting,
                            format!("joining the fleet: waiting for NATS ({})", node.trouble()),
                        );
                    }
                },
            }
        };
        match opened {
            Ok(joined) => return Some(joined),
            Err(e) => {
                tracing::warn!(error = %e, "cannot join the fleet yet; retrying");
                // Connected, NATS answered: the cause is what it said (a lease ttl other
                // hosts do not share, JetStream off), not the connection.
                let why = if node.link().borrow().connected {
                    format!("cannot join the fleet: {e}")
                } else {
                    format!("waiting for NATS ({}): {e}", node.trouble())
                };
                ep.set_state(State::Connecting, why);
                if !pause(&mut delay, shutdown).await {
                    return None;
                }
            }
        }
    }
}

/// Waits as a follower until this daemon acquires the lease; `None` on shutdown.
async fn follow(
    ep: &Endpoint,
    node: &Node,
    leases: &Leases,
    shutdown: &CancellationToken,
) -> Option<Held> {
    let mut watch: Option<LeaseWatch> = None;
    let mut delay = Duration::from_millis(200);
    // A watch event can be lost while the client reconnects: try again at least this often.
    let recheck = node.lease_ttl() / 2;
    let mut link = node.link();
    loop {
        if shutdown.is_cancelled() {
            return None;
        }
        link.mark_unchanged();
        let tried = async {
            if let Some(held) = leases.acquire(&ep.name, node.name()).await? {
                return Ok(Some(held));
            }
            if let Some((holder, epoch)) = leases.holder(&ep.name).await? {
                following(ep, holder, epoch);
            }
            if watch.is_none() {
                watch = Some(leases.watch(&ep.name).await?);
            }
            Ok::<_, super::lease::LeaseError>(None)
        };
        let tried = tokio::select! {
            r = tried => r,
            _ = shutdown.cancelled() => return None,
        };
        match tried {
            Ok(Some(held)) => return Some(held),
            Ok(None) => delay = Duration::from_millis(200),
            Err(e) => {
                tracing::warn!(error = %e, "cannot reach the lease; retrying");
                ep.set_state(
                    State::Connecting,
                    format!("waiting for NATS ({}): {e}", node.trouble()),
                );
                watch = None;
                if !pause(&mut delay, shutdown).await {
                    return None;
                }
                continue;
            }
        }
        let event = async {
            match watch.as_mut() {
                Some(w) => w.next().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(recheck) => {}
            // Without NATS nothing reaches this host: not `connected` until it is back.
            r = link.changed() => if r.is_ok() && !link.borrow_and_update().connected {
                ep.set_state(
                    State::Connecting,
                    format!("lost NATS ({}); following again once it is back", node.trouble()),
                );
            },
            e = event => match e {
                Ok(LeaseEvent::Vacant) => tracing::info!("the lease is vacant; trying to take it"),
                Ok(LeaseEvent::Held { holder, epoch }) => following(ep, holder, epoch),
                Err(_) => watch = None,
            }
        }
    }
}

/// Records `holder` as the leader at `epoch`, and says so in the endpoint's state when it
/// changed (the reason names the leader: apps and status must not show a stale one).
fn following(ep: &Endpoint, holder: String, epoch: u64) {
    let reason = format!("following {holder} through NATS");
    ep.cluster.set_role(Role::Follower, Some(holder), epoch);
    let now = ep.state();
    if now.state != State::Connected || now.reason != reason {
        ep.set_state(State::Connected, reason);
    }
}

/// One term as leader: the upstream connection runs until the lease is lost, the stream
/// fences this writer, or shutdown.
async fn lead(
    ep: &Arc<Endpoint>,
    term: Term<'_>,
    held: Held,
    shutdown: &CancellationToken,
    stalls: &Stalls,
) {
    let Term {
        node,
        stream,
        interest,
    } = term;
    let tail = tokio::select! {
        t = tokio::time::timeout_at(held.valid_until().into(), stream.tail()) => t,
        _ = shutdown.cancelled() => return,
    };
    let start = match tail {
        Ok(Ok(Some(tail))) => Ok((tail.seq + 1, tail.upstream_id)),
        Ok(Ok(None)) => match stream.bounds().await {
            Ok((first, _)) => Ok((first, None)),
            Err(e) => Err(format!("cannot read the stream: {e}")),
        },
        Ok(Err(e)) => Err(format!("cannot read the stream: {e}")),
        Err(_) => Err("the stream did not answer in time".to_string()),
    };
    let (next, upstream_id) = match start {
        Ok(start) => start,
        Err(why) => {
            // Kept, the lease would leave the endpoint without a leader for a whole TTL.
            let _ = tokio::time::timeout(Duration::from_secs(2), held.release()).await;
            return step_down(ep, None, why);
        }
    };
    tracing::info!(
        epoch = held.epoch(),
        next_seq = next,
        resume_from = upstream_id.as_deref().unwrap_or(""),
        "leading: taking the upstream connection"
    );
    // The upstream resumes from the stream's last id, not from what this host knew before.
    let _ = ep.take_resume_memory();
    ep.set_last_upstream_id(upstream_id.unwrap_or_default());
    let lost = CancellationToken::new();
    let leading = Arc::new(Leading::new(
        stream.writer(held.term()),
        next,
        held.valid_until(),
        lost.clone(),
    ));
    ep.cluster.set_leading(Some(Arc::clone(&leading)));
    ep.cluster
        .set_role(Role::Leader, Some(node.name().to_string()), held.epoch());
    // This host's apps see its own connection's states again, and it holds the fleet's keys.
    ep.share.set_view(None);
    let serving = CancellationToken::new();
    let server = interest.cloned().map(|i| {
        let me = node.name().to_string();
        tokio::spawn(sharing::serve(
            Arc::clone(ep),
            i,
            me,
            held.term(),
            serving.clone(),
        ))
    });
    let answering = ep.config().requests.is_some().then(|| {
        tokio::spawn(super::calls::answer(
            Arc::clone(ep),
            node.client().clone(),
            node.lease_ttl(),
            serving.clone(),
        ))
    });
    let upstream_token = shutdown.child_token();
    let upstream = crate::upstream::run(Arc::clone(ep), upstream_token.clone(), stalls.clone());
    // The outbox is only the window of queued publishes this term has taken: what an earlier
    // term took and did not send is still queued, and goes out in order through the drain.
    forget_outbox(ep).await;
    let draining = ep.cluster.queue().cloned().map(|q| {
        tokio::spawn(super::drain::run(
            Arc::clone(ep),
            q,
            held.term(),
            Arc::clone(&leading),
        ))
    });
    let keeping = keep(ep, node, held, &leading);
    tokio::pin!(upstream, keeping);
    // `Some(lease or None)` once `keeping` finished: it must not be polled again.
    let mut kept = None;
    tokio::select! {
        _ = &mut upstream => {}
        h = &mut keeping => {
            kept = Some(h);
            // Not the end of the endpoint: no `closed` for subscribers.
            let quiet = !shutdown.is_cancelled();
            if quiet {
                ep.set_restarting(true);
            }
            upstream_token.cancel();
            upstream.await;
            if quiet {
                ep.set_restarting(false);
            }
        }
    }
    if shutdown.is_cancelled() {
        // Appends still in flight would land after the next leader read the tail and fence
        // its first append: let them land (briefly) before the lease is handed over.
        let _ = tokio::time::timeout(Duration::from_secs(2), leading.settled()).await;
    }
    leading.end("shutting down".into());
    if let Some(d) = draining {
        let _ = d.await;
    }
    serving.cancel();
    if let Some(s) = server {
        let _ = s.await;
    }
    if let Some(a) = answering {
        let _ = a.await;
    }
    forget_outbox(ep).await;
    ep.cluster.set_leading(None);
    let kept = match kept {
        Some(h) => h,
        None => keeping.await,
    };
    if shutdown.is_cancelled() {
        // A clean stop hands over at once instead of after the TTL.
        if let Some(held) = kept {
            let _ = tokio::time::timeout(Duration::from_secs(2), held.release()).await;
        }
        return;
    }
    step_down(ep, Some(&leading), String::new());
}

/// Empties the endpoint's outbox: on a clustered endpoint it holds only queued publishes,
/// which stay in the fleet's queue until a leader has sent them.
async fn forget_outbox(ep: &Endpoint) {
    match ep.outbox.clear(None).await {
        Ok(c) if c.messages > 0 => tracing::info!(
            messages = c.messages,
            "left the publishes taken from the fleet's queue to the next term"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot empty the outbox"),
    }
}

/// Records the end of a term (or of an attempt at one) and goes back to following.
fn step_down(ep: &Endpoint, leading: Option<&Leading>, why: String) {
    let why = leading.and_then(Leading::why).unwrap_or(why);
    tracing::warn!(reason = %why, "no longer leading this endpoint");
    ep.cluster.stepped_down(why.clone());
    ep.cluster.set_role(Role::Follower, None, 0);
    ep.set_state(State::Connecting, format!("stepped down: {why}"));
}

/// Renews the lease every third of its TTL until the term ends. Returns the lease when the
/// term ended for another reason (shutdown), `None` when the lease itself was lost.
async fn keep(ep: &Endpoint, node: &Node, mut held: Held, leading: &Leading) -> Option<Held> {
    let every = node.lease_ttl() / 3;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = leading.lost.cancelled() => return Some(held),
        }
        let deadline = held.valid_until();
        let renewed = tokio::select! {
            r = held.clone().renew() => r,
            _ = tokio::time::sleep_until(deadline.into()) => {
                leading.end("the lease could not be renewed before it ran out".into());
                return None;
            }
            _ = leading.lost.cancelled() => return Some(held),
        };
        match renewed {
            Ok(h) => {
                leading.renewed(h.valid_until());
                ep.cluster
                    .set_role(Role::Leader, Some(node.name().to_string()), h.epoch());
                held = h;
            }
            Err(RenewError::Lost(lost)) => {
                leading.end(lost.to_string());
                return None;
            }
            Err(RenewError::Unconfirmed { source, held: h }) => {
                tracing::warn!(error = %source, "lease renewal not confirmed; retrying");
                if Instant::now() >= h.valid_until() {
                    leading.end(format!("the lease could not be renewed: {source}"));
                    return None;
                }
                held = *h;
            }
        }
    }
}
