//! The send rate limit of one endpoint (`rate_limit = { messages, per, control_frames }`):
//! every frame the daemon writes upstream waits here for its turn, whichever connection it is
//! for, so neither a burst of publishes nor a reconnect storm can go over the upstream's limit.
//!
//! **A sliding window, not a token bucket.** At most `messages` frames are sent in *any* window
//! of length `per`: the limiter remembers when the last `messages` frames were sent, and the
//! next one waits until the oldest of them is `per` old. A token bucket of the same size and
//! refill rate would let a full bucket go out at the end of one second and a refilled one at
//! the start of the next: up to twice the limit within one `per`, which a strict upstream
//! (Binance closes with 1008 and bans repeat offenders) punishes.
//!
//! **Safety margin.** Frames spaced exactly `per` apart can arrive closer than that: one is held
//! up a little more on the way (queueing, scheduling on the server side) than one sent later.
//! The window the limiter keeps is therefore `per` plus 5 % ([`MARGIN_DIVISOR`]): 50 ms for a
//! one-second limit, which costs 5 % of the rate. The time recorded for a frame is taken after
//! its write returned, the latest it can have left, so the daemon's own scheduling delays only
//! make the spacing wider.
//!
//! **What counts.** Text and binary frames always. With `control_frames = true` also the
//! daemon's own WebSocket Pings, and the Pongs tungstenite sends by itself when the upstream
//! pings: those cannot be delayed (the library queues them while reading), so one frame of
//! every window is kept free for them, and each is recorded when its ping is read so later
//! frames wait around it. That holds as long as the upstream pings at most once per `per`.
//! Close frames neither wait nor count: they end the connection, and shutdown must not wait for
//! a slot.
//!
//! The limiter belongs to the endpoint, not to a connection, and outlives the upstream task
//! (a reload restarting it keeps the history). Frames take their turn one at a time, first come
//! first served, and are recorded once written: a wait that is given up (the connection ended,
//! a control frame went first) records nothing.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::config::RateLimitConfig;

/// The window kept is `per + per / MARGIN_DIVISOR`: see the module doc.
pub const MARGIN_DIVISOR: u32 = 20;

/// What kind of frame asks for a turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Text and binary frames: always limited.
    Data,
    /// Ping and Pong: limited with `control_frames = true`.
    Control,
    /// Close: never limited.
    Close,
}

impl Class {
    /// The class of a frame about to be written.
    pub fn of(m: &Message) -> Class {
        match m {
            Message::Text(_) | Message::Binary(_) | Message::Frame(_) => Class::Data,
            Message::Ping(_) | Message::Pong(_) => Class::Control,
            Message::Close(_) => Class::Close,
        }
    }
}

/// One endpoint's send rate limit; off when not configured (every turn is then immediate).
#[derive(Debug, Default)]
pub struct RateLimit {
    /// The current settings; replaced when a reload changes them.
    settings: Mutex<Option<RateLimitConfig>>,
    /// Held from a frame's turn until it is written, so frames of every connection of the
    /// endpoint go one at a time, in the order they asked.
    turn: tokio::sync::Mutex<()>,
    /// When the last frames were written (at most `messages` of them), oldest first.
    sent: Mutex<VecDeque<Instant>>,
    /// Frames that had to wait for their turn.
    throttled: AtomicU64,
    /// Nanoseconds frames spent waiting, summed.
    waited_nanos: AtomicU64,
}

/// A frame's turn: hold it until the frame is written; dropping it records the frame as sent.
#[must_use = "the frame is recorded when the permit drops: keep it until the frame is written"]
pub struct Permit<'a> {
    held: Option<Held<'a>>,
}

struct Held<'a> {
    limit: &'a RateLimit,
    _turn: tokio::sync::MutexGuard<'a, ()>,
    /// How many send times the window needs.
    keep: usize,
}

impl Permit<'_> {
    /// True when the frame counts against a limit (so it should be flushed on its own).
    pub fn is_limited(&self) -> bool {
        self.held.is_some()
    }

    /// Gives the turn back without recording a frame: nothing was written after all.
    pub fn unused(mut self) {
        self.held = None;
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if let Some(h) = &self.held {
            h.limit.record(Instant::now(), h.keep);
        }
    }
}

impl RateLimit {
    /// A limiter with these settings (`None`: off).
    pub fn new(cfg: Option<RateLimitConfig>) -> Self {
        RateLimit {
            settings: Mutex::new(cfg),
            ..RateLimit::default()
        }
    }

    /// Applies new settings, keeping what was sent recently: a reload does not reset the window.
    pub fn configure(&self, cfg: Option<RateLimitConfig>) {
        let keep = cfg.as_ref().map_or(0, |c| c.messages);
        *lock(&self.settings) = cfg;
        let mut sent = lock(&self.sent);
        while sent.len() > keep {
            sent.pop_front();
        }
    }

    /// Whether a limit is configured.
    pub fn is_on(&self) -> bool {
        lock(&self.settings).is_some()
    }

    /// The settings that apply to a frame of `class`, if any.
    fn applies(&self, class: Class) -> Option<RateLimitConfig> {
        let cfg = lock(&self.settings).clone()?;
        match class {
            Class::Data => Some(cfg),
            Class::Control if cfg.control_frames => Some(cfg),
            Class::Control | Class::Close => None,
        }
    }

    /// Waits until a frame of `class` may be written; hold the permit until it is.
    pub async fn acquire(&self, class: Class) -> Permit<'_> {
        let Some(cfg) = self.applies(class) else {
            return Permit { held: None };
        };
        let turn = self.turn.lock().await;
        let mut waited = Duration::ZERO;
        // Again after every sleep: a pong recorded meanwhile may push the turn further.
        while let Some(at) = self.ready_at(&cfg) {
            let now = Instant::now();
            if at <= now {
                break;
            }
            tokio::time::sleep_until(at).await;
            waited += Instant::now().saturating_duration_since(now);
        }
        if !waited.is_zero() {
            self.throttled.fetch_add(1, Ordering::Relaxed);
            let nanos = u64::try_from(waited.as_nanos()).unwrap_or(u64::MAX);
            self.waited_nanos.fetch_add(nanos, Ordering::Relaxed);
        }
        Permit {
            held: Some(Held {
                limit: self,
                _turn: turn,
                keep: cfg.messages,
            }),
        }
    }

    /// When the next frame may go: once the frame that would make one too many within a window
    /// is a window old. `None`: at once.
    fn ready_at(&self, cfg: &RateLimitConfig) -> Option<Instant> {
        let budget = budget(cfg);
        let sent = lock(&self.sent);
        let n = sent.len();
        (n >= budget).then(|| sent[n - budget] + window(cfg.per))
    }

    /// The upstream pinged: tungstenite answers with a pong by itself, which cannot wait. With
    /// `control_frames` it is recorded, so the frames after it wait around it.
    pub fn pong_sent(&self) {
        if let Some(cfg) = self.applies(Class::Control) {
            self.record(Instant::now(), cfg.messages);
        }
    }

    fn record(&self, at: Instant, keep: usize) {
        let mut sent = lock(&self.sent);
        sent.push_back(at);
        while sent.len() > keep {
            sent.pop_front();
        }
    }

    /// The longest a Ping waits for its turn: a window for itself and one for a frame ahead of
    /// it; zero when pings are not limited. The pong timeout allows for it.
    pub fn longest_ping_wait(&self) -> Duration {
        self.applies(Class::Control)
            .map_or(Duration::ZERO, |cfg| window(cfg.per) * 2)
    }

    /// Frames that had to wait for their turn.
    pub fn throttled(&self) -> u64 {
        self.throttled.load(Ordering::Relaxed)
    }

    /// Total time frames spent waiting.
    pub fn waited(&self) -> Duration {
        Duration::from_nanos(self.waited_nanos.load(Ordering::Relaxed))
    }
}

/// How many of the daemon's own frames fit in one window.
fn budget(cfg: &RateLimitConfig) -> usize {
    if cfg.control_frames {
        // Config validation keeps messages >= 2 here.
        cfg.messages.saturating_sub(1).max(1)
    } else {
        cfg.messages
    }
}

/// The window the limiter keeps: `per` plus the safety margin.
fn window(per: Duration) -> Duration {
    per + per / MARGIN_DIVISOR
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests;
