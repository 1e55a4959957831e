//! The systemd integration, proven under a real systemd: Debian's systemd booted as PID 1 of
//! fresh namespaces (`boot.sh` beside this file; an overlay of the host's `/`, fresh `/run` and
//! `/tmp`, loopback only, its own cgroup subtree), the binary and units installed **exactly as
//! README's "Install as a service" says** (the block after `<!-- systemd test -->`, line by
//! line, see [`install`]), then the unit's promises checked against what systemd reports:
//! readiness, STATUS=, the three socket units, on-demand start, reload and a refused reload,
//! a clean and quick stop, journal priorities, the file system the unit can write, the exposure
//! score ([`service`]); the watchdog, and the system-call allow list with a denied call fatal
//! instead of EPERM ([`hardened`]).
//!
//! Each test boots its own box (a few seconds each, run in parallel) and tears it down when it
//! ends, on panic too. The fake upstreams run in the test process on a thread that joined the
//! box's network namespace ([`netns`]), so the daemon inside reaches them on its loopback.
//!
//! Booting needs root, util-linux's `unshare`/`nsenter`, an overlay mount of `/` and systemd at
//! `/usr/lib/systemd/systemd`. Where any is missing the tests print one line saying why and
//! pass, except under CI (`CI=true`, as `.ci/run` runs): there they fail, so CI cannot go green
//! without having run them.

#[path = "../support/mod.rs"]
mod support;

mod fakes;
mod hardened;
mod install;
mod netns;
mod service;
mod sysbox;

use std::time::Duration;

/// Bound for anything inside the box that should happen promptly.
pub const T: Duration = Duration::from_secs(20);
