//! Notices when the whole process stopped running for a while, and tells every connection to
//! check itself at once (issue 12, item 3).
//!
//! Two ways the daemon stops seeing time pass while its peers do:
//! - the process is frozen (SIGSTOP, a debugger, a paused VM or container, a starved host):
//!   the monotonic clock runs on, but nothing here ran, so a short tick arrives seconds late;
//! - the host suspends: Linux's monotonic clock stops with it, only the boot-time clock
//!   (`CLOCK_BOOTTIME`) counts the time asleep, so the two drift apart by the time suspended.
//!
//! Either way connections may have died unnoticed (the upstream gave up on us), and timers that
//! fire late may misjudge live ones. Subscribers of [`Stalls`] get a new count after each stall
//! so they can ping at once instead of at the next interval.

use std::time::Duration;

use rustix::time::{clock_gettime, ClockId};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How often the clocks are compared. A freeze of `F` makes a tick at least `F - TICK` late
/// (it may begin just after a tick), so the tick is short next to the stalls worth noticing.
const TICK: Duration = Duration::from_millis(250);

/// Time not run (or asleep) beyond which a stall is reported: well above a busy host's
/// scheduling delays, well below a heartbeat's timeouts.
const THRESHOLD: Duration = Duration::from_millis(500);

/// The stall count, shared by the watcher and every connection.
#[derive(Clone)]
pub struct Stalls(watch::Sender<u64>);

impl Default for Stalls {
    fn default() -> Self {
        Stalls(watch::Sender::new(0))
    }
}

impl Stalls {
    /// A receiver that changes after every stall from now on.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.0.subscribe()
    }

    /// Watches the clocks until `shutdown`, from the moment this is called (not first polled),
    /// so a stall right after start-up is seen too.
    pub fn watch(self, shutdown: CancellationToken) -> impl std::future::Future<Output = ()> {
        let last = Clocks::now();
        self.watch_from(last, shutdown)
    }

    async fn watch_from(self, mut last: Clocks, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(TICK) => {}
            }
            let now = Clocks::now();
            let (late, asleep) = now.since(&last);
            last = now;
            if late > THRESHOLD || asleep > THRESHOLD {
                tracing::info!(
                    not_running = %crate::fmt::duration(late),
                    suspended = %crate::fmt::duration(asleep),
                    "the process did not run for a while: checking every connection now"
                );
                self.0.send_modify(|n| *n += 1);
            }
        }
    }
}

/// A reading of both clocks.
struct Clocks {
    monotonic: Duration,
    boottime: Duration,
}

impl Clocks {
    fn now() -> Clocks {
        let read = |id| Duration::try_from(clock_gettime(id)).unwrap_or_default();
        Clocks {
            monotonic: read(ClockId::Monotonic),
            boottime: read(ClockId::Boottime),
        }
    }

    /// Since `earlier`, a [`TICK`] ago as far as the sleep knew: how much later than that the
    /// watcher ran (frozen or starved), and how long the host was suspended.
    fn since(&self, earlier: &Clocks) -> (Duration, Duration) {
        let ran = self.monotonic.saturating_sub(earlier.monotonic);
        let passed = self.boottime.saturating_sub(earlier.boottime);
        (ran.saturating_sub(TICK), passed.saturating_sub(ran))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn late_ticks_and_suspends_are_told_apart() {
        let at = |m: u64, b: u64| Clocks {
            monotonic: Duration::from_millis(m),
            boottime: Duration::from_millis(b),
        };
        let start = at(10_000, 20_000);
        assert_eq!(
            at(10_250, 20_250).since(&start),
            (Duration::ZERO, Duration::ZERO),
            "on time"
        );
        assert_eq!(
            at(11_750, 21_750).since(&start),
            (Duration::from_millis(1500), Duration::ZERO),
            "frozen 1.5 s: late, not asleep"
        );
        assert_eq!(
            at(10_250, 80_250).since(&start),
            (Duration::ZERO, Duration::from_secs(60)),
            "suspended a minute"
        );
        let real = Clocks::now();
        assert!(
            real.boottime >= real.monotonic,
            "boot time includes suspends"
        );
    }
}
