//! Reads `endpoints.NAME.rate_limit` (`{ messages = 5, per = "1s", control_frames = true }`):
//! the endpoint's send rate limit, enforced by `crate::ratelimit`.

use super::load::positive;
use super::value::{boolean, integer, Node, Report, Table};
use super::RateLimitConfig;

/// Beyond this the limiter would remember millions of send times per endpoint; no upstream
/// documents a limit that needs it.
const MAX_MESSAGES: usize = 100_000;

/// The rate limit, or `None` when it is unusable (every reason already reported).
pub(crate) fn read_rate_limit(r: &mut Report, node: &Node<'_>) -> Option<RateLimitConfig> {
    let mut t = Table::open(r, node)?;
    let messages = t.required(r, "messages", |v| {
        let n: usize = integer(v)?;
        match n {
            0 => Err("must be at least 1: no frame could ever be sent".into()),
            n if n > MAX_MESSAGES => Err(format!("must be at most {MAX_MESSAGES}")),
            n => Ok(n),
        }
    });
    let per = t.required(r, "per", positive);
    let control_frames = t.or(r, "control_frames", boolean, false);
    let at_messages = t.path_of("messages");
    t.finish(r);
    if control_frames && messages == Some(1) {
        r.at(
            &at_messages,
            "must be at least 2 with control_frames = true: one frame of every window is kept \
             for the pongs answering the upstream's pings",
        );
        return None;
    }
    Some(RateLimitConfig {
        messages: messages?,
        per: per?,
        control_frames,
    })
}
