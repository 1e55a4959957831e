//! The final report: what each feed produced against what the verifier and the churning
//! subscribers received, what was acknowledged against what the feed received, the faults
//! applied, the daemon's own counters, and its RSS over time. Decides pass or fail: with
//! `--confirmed`, any acknowledged publish missing at its feed fails the run (duplicates, the
//! resends of publishes whose answer was cut off, are counted, not failed).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use crate::chaos::Chaos;
use crate::feed::Feed;
use crate::publish::Acks;
use crate::subscribe::Books;

/// Growth of RSS from start to end that fails the run.
const MAX_GROWTH: f64 = 0.10;

/// One endpoint's parts.
pub struct Endpoint {
    pub feed: Arc<Feed>,
    pub chaos: Arc<Chaos>,
    pub books: Arc<Books>,
    pub acks: Arc<Acks>,
    /// GetStatus after the drain.
    pub status: Option<ws_sidecar::proto::EndpointStatus>,
}

/// Run-wide figures gathered by `main`.
#[derive(Default)]
pub struct Report {
    /// (time since start, VmRSS KiB) every 10 s.
    pub samples: Vec<(Duration, u64)>,
    /// The named RSS measurements: start (after warm-up), middle, end (before the drain).
    pub marks: Vec<(&'static str, Duration, Option<u64>)>,
    /// What each named measurement is made of (see `Daemon::memory_detail`).
    pub details: Vec<String>,
    pub after_drain_kib: Option<u64>,
    pub drain: Duration,
    /// How the daemon exited on SIGTERM.
    pub exit: String,
    pub failures: Vec<String>,
    /// The run was long enough for RSS growth to mean something (see `main`).
    pub judge_rss: bool,
    /// Publishes waited for the feed's answer (`--confirmed`).
    pub confirmed: bool,
}

impl Report {
    /// Records a named RSS measurement.
    pub fn mark(&mut self, name: &'static str, at: Duration, kib: Option<u64>, detail: String) {
        self.marks.push((name, at, kib));
        self.details.push(format!("{name}: {detail}"));
    }

    /// Prints everything; returns true when every check passed.
    pub fn print(mut self, eps: &[Endpoint], took: Duration, args: &str) -> bool {
        println!(
            "\n==== soak report ({args}; {:.0} s in all)",
            took.as_secs_f64()
        );
        for ep in eps {
            self.endpoint(ep);
        }
        self.rss();
        println!(
            "daemon exit on SIGTERM: {}; drain took {:.1} s",
            self.exit,
            self.drain.as_secs_f64()
        );
        if self.failures.is_empty() {
            println!("RESULT: PASS");
            true
        } else {
            println!("RESULT: FAIL");
            for f in &self.failures {
                println!("  - {f}");
            }
            false
        }
    }

    fn endpoint(&mut self, ep: &Endpoint) {
        let name = ep.books.endpoint;
        let f = &ep.feed;
        let produced = f.produced();
        let verified = ep
            .books
            .verified
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let (lost, dup, unordered) = id_check(&verified, produced);
        let s = ep.status.clone().unwrap_or_default();
        println!("\n[{name}] resume {:?}", f.style);
        println!(
            "  upstream : ids 1..={produced} produced, {} frames sent ({} deliberate resends), {} connections",
            f.frames_sent.load(Ordering::Relaxed),
            f.resent.load(Ordering::Relaxed),
            f.connections.load(Ordering::Relaxed),
        );
        println!(
            "  daemon   : received {}, last_seq {}, reconnects {}, state {}, outbox_depth {}, confirm_depth {}",
            s.messages_received,
            s.last_seq,
            s.reconnects,
            state_name(s.state),
            s.outbox_depth,
            s.confirm_depth
        );
        println!(
            "  verifier : {} messages in seq order; lost {lost}, duplicated {dup}, out of order {unordered}",
            verified.len()
        );
        let b = &ep.books;
        let gaps = b
            .gaps
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let holes = b.holes.load(Ordering::Relaxed);
        let dups = b.duplicates.load(Ordering::Relaxed);
        let mism = b.mismatches.load(Ordering::Relaxed);
        println!(
            "  subscribe: {} joins, {} messages checked, holes {holes}, duplicates {dups}, content mismatches {mism}, gaps {}, errors {}",
            b.joins.load(Ordering::Relaxed),
            b.messages.load(Ordering::Relaxed),
            if gaps.is_empty() { "0".to_owned() } else { format!("{gaps:?}") },
            b.errors.load(Ordering::Relaxed),
        );
        let p = publish_check(ep);
        if self.confirmed {
            self.confirmed_publishes(ep, &p);
        } else {
            println!(
            "  publish  : {} acked, {} received by upstream; lost {} ({} thrown away in flight by the proxy, {} written just before a reset, {} unexplained); {} duplicates at upstream; {} reordered; {} idempotent retries ({} mismatched); refused {:?}",
            p.acked, p.received, p.lost, p.swallowed, p.at_reset, p.unexplained, p.duplicates,
            f.reordered.load(Ordering::Relaxed),
            ep.acks.retried.load(Ordering::Relaxed),
            ep.acks.retry_mismatches.load(Ordering::Relaxed),
            ep.acks.refused.lock().unwrap_or_else(PoisonError::into_inner),
            );
        }
        let c = &ep.chaos.faults;
        println!(
            "  faults   : {} resets, {} FINs, {} stalls, {} reset before handshake, {} hung handshakes ({} proxied connections, {} frames cut mid-write)",
            c.resets.load(Ordering::Relaxed),
            c.fins.load(Ordering::Relaxed),
            c.stalls.load(Ordering::Relaxed),
            c.reset_at_accept.load(Ordering::Relaxed),
            c.hung_handshakes.load(Ordering::Relaxed),
            c.connections.load(Ordering::Relaxed),
            c.partial_frames.load(Ordering::Relaxed),
        );
        let mut fail = |what: String| self.failures.push(format!("{name}: {what}"));
        if lost + dup + unordered > 0 {
            fail(format!(
                "upstream ids lost {lost}, duplicated {dup}, out of order {unordered}"
            ));
        }
        if holes + dups + mism > 0 {
            fail(format!(
                "subscriber holes {holes}, duplicates {dups}, mismatches {mism}"
            ));
        }
        if !gaps.is_empty() {
            fail(format!("gaps reported: {gaps:?}"));
        }
        if p.unexplained > 0 && !self.confirmed {
            fail(format!(
                "{} acknowledged publishes missing that the proxy did not throw away ({} of \
                 them passed on whole, so lost in the feed), e.g. {:?}",
                p.unexplained, p.lost_in_feed, p.examples
            ));
        }
        if f.reordered.load(Ordering::Relaxed) + ep.acks.retry_mismatches.load(Ordering::Relaxed)
            > 0
        {
            fail("publishes reordered or an idempotent retry got another outbox id".into());
        }
    }

    /// The `--confirmed` publish line and its check: every acknowledged publish reached the feed.
    fn confirmed_publishes(&mut self, ep: &Endpoint, p: &PublishFigures) {
        let mut lat = ep
            .acks
            .latencies
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        lat.sort();
        let q = |f: f64| {
            lat.get(((lat.len() as f64 * f) as usize).min(lat.len().saturating_sub(1)))
                .map_or("?".to_owned(), |d| format!("{:.1}", d.as_secs_f64() * 1e3))
        };
        println!(
            "  publish  : CONFIRMED: {} acked, {} of them received by upstream; lost {}; {} duplicates at upstream (resends), {} answers sent; {} reordered; refused {:?}",
            p.acked,
            p.received,
            p.lost,
            p.duplicates,
            ep.feed.answered.load(Ordering::Relaxed),
            ep.feed.reordered.load(Ordering::Relaxed),
            ep.acks.refused.lock().unwrap_or_else(PoisonError::into_inner),
        );
        println!(
            "  confirm  : latency ms p50 {}, p99 {}, p999 {}, max {}",
            q(0.5),
            q(0.99),
            q(0.999),
            lat.last()
                .map_or("?".to_owned(), |d| format!("{:.1}", d.as_secs_f64() * 1e3)),
        );
        if p.lost > 0 {
            self.failures.push(format!(
                "{}: {} acknowledged confirmed publishes never reached the feed, e.g. {:?}",
                ep.books.endpoint, p.lost, p.lost_examples
            ));
        }
        if p.acked == 0 {
            self.failures.push(format!(
                "{}: no confirmed publish was acknowledged",
                ep.books.endpoint
            ));
        }
    }

    fn rss(&mut self) {
        let kib =
            |k: Option<u64>| k.map_or("?".to_owned(), |k| format!("{:.1} MiB", k as f64 / 1024.0));
        let line: Vec<String> = self
            .marks
            .iter()
            .map(|(n, t, k)| format!("{n} {} (t={}s)", kib(*k), t.as_secs()))
            .collect();
        println!(
            "\ndaemon RSS: {}; after drain {}",
            line.join(", "),
            kib(self.after_drain_kib)
        );
        println!("  {}", self.details.join("; "));
        let all: Vec<u64> = self.samples.iter().map(|(_, k)| *k).collect();
        if let (Some(min), Some(max)) = (all.iter().min(), all.iter().max()) {
            println!(
                "  samples every 10 s: min {}, max {}; {}",
                kib(Some(*min)),
                kib(Some(*max)),
                all.iter()
                    .map(|k| (k / 1024).to_string())
                    .collect::<Vec<_>>()
                    .join(" ")
            );
        }
        let start = self.marks.iter().find(|m| m.0 == "start").and_then(|m| m.2);
        let end = self.marks.iter().rfind(|m| m.0 == "end").and_then(|m| m.2);
        match (start, end) {
            (Some(s), Some(e)) if s > 0 => {
                let growth = (e as f64 - s as f64) / s as f64;
                println!("  growth start→end: {:+.1}%", growth * 100.0);
                if !self.judge_rss {
                    println!(
                        "  (not judged: the run is shorter than twice the warm-up, which waits for the \
                         replay window and the idempotency keys to settle)"
                    );
                } else if growth >= MAX_GROWTH {
                    self.failures.push(format!(
                        "RSS grew {:.1}% (limit {:.0}%)",
                        growth * 100.0,
                        MAX_GROWTH * 100.0
                    ));
                }
            }
            _ => self
                .failures
                .push("RSS not measured at start and end".into()),
        }
    }
}

/// Upstream ids 1..=produced against the verifier's stream: (lost, duplicated, out of order).
fn id_check(verified: &[(u64, u64)], produced: u64) -> (u64, u64, u64) {
    let mut seen: HashSet<u64> = HashSet::with_capacity(verified.len());
    let mut dup = 0;
    let mut unordered = 0;
    let mut prev = 0;
    for &(_, n) in verified {
        if !seen.insert(n) {
            dup += 1;
        }
        if n < prev {
            unordered += 1;
        }
        prev = n;
    }
    let lost = (1..=produced).filter(|n| !seen.contains(n)).count() as u64;
    (lost, dup, unordered)
}

struct PublishFigures {
    acked: usize,
    received: usize,
    lost: usize,
    /// Lost in frames the proxy read and threw away.
    swallowed: usize,
    /// Lost without the proxy seeing them, acknowledged just before it reset the connection:
    /// written into the socket in the instant before the reset.
    at_reset: usize,
    unexplained: usize,
    /// Of the unexplained: passed on whole by the proxy, so lost inside the soak's own feed.
    lost_in_feed: usize,
    /// A few unexplained keys, for a look at the daemon log.
    examples: Vec<String>,
    /// A few lost keys, explained or not.
    lost_examples: Vec<String>,
    duplicates: u64,
}

/// A publish acknowledged this long before a reset may have been in the socket when it came;
/// the writer sends within milliseconds of the commit while connected.
const RESET_WINDOW_BEFORE: Duration = Duration::from_secs(1);
/// The acknowledgement can reach the client just after the frame was written.
const RESET_WINDOW_AFTER: Duration = Duration::from_millis(100);

fn publish_check(ep: &Endpoint) -> PublishFigures {
    let acked: HashMap<String, Instant> = ep
        .acks
        .acked
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .cloned()
        .collect();
    let received: HashMap<String, u32> = ep.feed.received();
    let swallowed: HashSet<String> = ep.chaos.swallowed().into_iter().collect();
    let forwarded = ep.chaos.forwarded();
    let resets = ep.chaos.resets_at();
    let near_reset = |at: Instant| {
        resets
            .iter()
            .any(|r| *r + RESET_WINDOW_AFTER >= at && *r <= at + RESET_WINDOW_BEFORE)
    };
    let lost: Vec<(&String, &Instant)> = acked
        .iter()
        .filter(|(k, _)| !received.contains_key(*k))
        .collect();
    let mut lost_examples: Vec<String> = lost.iter().map(|(k, _)| (*k).clone()).collect();
    lost_examples.sort();
    lost_examples.truncate(5);
    let unseen: Vec<(&String, &Instant)> = lost
        .iter()
        .copied()
        .filter(|(k, _)| !swallowed.contains(*k))
        .collect();
    let mut unexplained: Vec<&String> = unseen
        .iter()
        .filter(|(_, at)| !near_reset(**at))
        .map(|(k, _)| *k)
        .collect();
    unexplained.sort();
    PublishFigures {
        acked: acked.len(),
        received: received.keys().filter(|k| acked.contains_key(*k)).count(),
        lost: lost.len(),
        swallowed: lost.len() - unseen.len(),
        at_reset: unseen.len() - unexplained.len(),
        unexplained: unexplained.len(),
        lost_in_feed: unexplained
            .iter()
            .filter(|k| forwarded.contains(**k))
            .count(),
        examples: unexplained.iter().take(5).map(|k| (*k).clone()).collect(),
        lost_examples,
        duplicates: received
            .values()
            .map(|c| u64::from(c.saturating_sub(1)))
            .sum(),
    }
}

fn state_name(s: i32) -> String {
    ws_sidecar::proto::State::try_from(s)
        .map_or("?".into(), |st| st.as_str_name().to_ascii_lowercase())
}
