//! Clocks, CPU (per thread group, from schedstat), RSS (VmRSS sampling) and percentiles.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// The one clock every timestamp in the bench is taken against (same process: one clock).
pub fn epoch() -> Instant {
    static E: OnceLock<Instant> = OnceLock::new();
    *E.get_or_init(Instant::now)
}

/// Monotonic ns since [`epoch`].
pub fn now_ns() -> u64 {
    epoch().elapsed().as_nanos() as u64
}

/// Thread groups whose CPU is accounted separately (by thread name, `comm`).
pub const GROUPS: [&str; 5] = ["daemon", "upstream", "subs", "b3-writer", "other"];

/// CPU ns used so far by this process's live threads, per group of [`GROUPS`].
pub fn cpu_ns() -> [u64; 5] {
    crate::common::cpu_ns_by_thread(&GROUPS[..4])
}

/// CPU used between `start` and now, per group.
pub fn cpu_since(start: [u64; 5]) -> [u64; 5] {
    let end = cpu_ns();
    let mut d = [0u64; 5];
    for (i, x) in d.iter_mut().enumerate() {
        *x = end[i].saturating_sub(start[i]);
    }
    d
}

/// VmRSS of this process in KiB.
pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// Samples VmRSS every 20 ms on its own thread; `take_peak` returns and resets the peak.
#[derive(Clone)]
pub struct RssSampler {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl RssSampler {
    pub fn start() -> RssSampler {
        let s = RssSampler {
            peak: Arc::new(AtomicU64::new(rss_kib())),
            stop: Arc::new(AtomicBool::new(false)),
        };
        let c = s.clone();
        std::thread::Builder::new()
            .name("rss-sampler".into())
            .spawn(move || {
                while !c.stop.load(Ordering::Relaxed) {
                    c.peak.fetch_max(rss_kib(), Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
            .expect("rss sampler thread");
        s
    }

    /// Peak VmRSS (KiB) since the last call.
    pub fn take_peak(&self) -> u64 {
        let p = self.peak.swap(rss_kib(), Ordering::Relaxed);
        p.max(rss_kib())
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Nearest-rank percentile of sorted `v` (ns) in µs.
pub fn pct_us(v: &[u64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let rank = (q * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1] as f64 / 1000.0
}

pub use crate::common::summary;

pub fn fmt_range(v: &[f64], decimals: usize) -> String {
    let (m, lo, hi) = summary(v);
    if m.is_nan() {
        return "–".into();
    }
    format!("{m:.decimals$} ({lo:.decimals$}–{hi:.decimals$})")
}

pub fn stats_json(v: &[f64]) -> serde_json::Value {
    let (m, lo, hi) = summary(v);
    let f = |x: f64| if x.is_nan() { None } else { Some(x) };
    serde_json::json!({"median": f(m), "min": f(lo), "max": f(hi)})
}
