//! Classification of everything that ends a connection or an attempt (SPEC §5): retried with
//! backoff, an auth failure (renew, retry, `failed` after `max_failures`), or fatal.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Error as WsError;

use crate::config::CloseAction;

/// How the reconnect loop must react to a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Retry,
    Auth,
    Fatal,
}

/// Why an attempt or a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub class: Class,
    /// Human reason for state events and logs; never contains a secret.
    pub reason: String,
    /// Minimum delay asked by the upstream (`Retry-After`).
    pub retry_after: Option<Duration>,
}

impl Failure {
    /// A retryable failure.
    pub fn retry(reason: impl Into<String>) -> Self {
        Failure {
            class: Class::Retry,
            reason: reason.into(),
            retry_after: None,
        }
    }

    /// A failure that retrying cannot fix.
    pub fn fatal(reason: impl Into<String>) -> Self {
        Failure {
            class: Class::Fatal,
            reason: reason.into(),
            retry_after: None,
        }
    }

    /// What a failure `action` (a close code's, an `on_connect` step's) makes of `reason`.
    pub fn of(action: CloseAction, reason: impl Into<String>) -> Self {
        let class = match action {
            CloseAction::Retry => Class::Retry,
            CloseAction::Reauth => Class::Auth,
            CloseAction::Fail => Class::Fatal,
        };
        Failure {
            class,
            reason: reason.into(),
            retry_after: None,
        }
    }

    /// An HTTP status answered to the upgrade request.
    pub fn http(status: u16, retry_after: Option<Duration>, detail: &str) -> Self {
        let class = match status {
            401 | 403 => Class::Auth,
            400 | 404 | 410 | 426 => Class::Fatal,
            _ => Class::Retry,
        };
        let mut reason = format!("HTTP {status}");
        if let Some(canon) = http::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
        {
            reason = format!("{reason} {canon}");
        }
        if !detail.is_empty() {
            reason = format!("{reason} ({detail})");
        }
        if let Some(ra) = retry_after {
            reason = format!("{reason}, retry after {}", crate::fmt::duration(ra));
        }
        Failure {
            class,
            reason,
            retry_after,
        }
    }

    /// A close frame received from the upstream, classified by the defaults and the endpoint's
    /// `close_codes` overrides.
    pub fn close(code: u16, text: &str, overrides: &BTreeMap<u16, CloseAction>) -> Self {
        let class = match overrides.get(&code) {
            Some(CloseAction::Retry) => Class::Retry,
            Some(CloseAction::Reauth) => Class::Auth,
            Some(CloseAction::Fail) => Class::Fatal,
            None => match code {
                1002 | 1003 | 1007 | 1008 => Class::Fatal,
                _ => Class::Retry,
            },
        };
        let text = sanitize(text);
        let reason = if text.is_empty() {
            format!("closed by upstream with code {code}")
        } else {
            format!("closed by upstream with code {code}: {text}")
        };
        Failure {
            class,
            reason,
            retry_after: None,
        }
    }
}

/// Keeps an upstream-provided string printable and short: it reaches logs and status.
pub fn sanitize(text: &str) -> String {
    let mut s: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(200)
        .collect();
    if text.chars().count() > 200 {
        s.push('…');
    }
    s
}

/// Parses a `Retry-After` header: delta-seconds or an HTTP date.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER));
    }
    let at = httpdate(value)?;
    // A date in the past asks for no wait (backoff's own floor still applies); one years
    // ahead is bounded like the seconds form.
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or_default()
            .min(MAX_RETRY_AFTER),
    )
}

/// The longest `Retry-After` honoured, in either form.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), the only form servers are told to send.
fn httpdate(s: &str) -> Option<SystemTime> {
    let parts: Vec<&str> = s.split_whitespace().collect();
    let [_, day, mon, year, hms, "GMT"] = parts.as_slice() else {
        return None;
    };
    let day: u64 = day.parse().ok()?;
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| m == mon)? as u64
        + 1;
    let year: u64 = year.parse().ok()?;
    let mut t = hms.split(':').map(|p| p.parse::<u64>().ok());
    let (h, m, sec) = (t.next()??, t.next()??, t.next()??);
    if !(1..=31).contains(&day) || year < 1970 || h > 23 || m > 59 || sec > 60 {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm), valid for the Gregorian calendar.
    let (y, mo) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * mo + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(days * 86_400 + h * 3600 + m * 60 + sec))
}

/// Maps a read error to a failure and, where we must tell the upstream, the close to send.
pub(super) fn classify_read_error(
    e: WsError,
    max: usize,
) -> (Failure, Option<(CloseCode, &'static str)>) {
    match e {
        WsError::Capacity(c) => (
            Failure::retry(format!(
                "inbound message exceeds max_message_size ({max} bytes): {c}"
            )),
            Some((CloseCode::Size, "message too big")),
        ),
        WsError::Utf8(_) => (
            Failure::retry("invalid UTF-8 in a text frame"),
            Some((CloseCode::Invalid, "invalid utf-8")),
        ),
        WsError::Protocol(p) => (
            Failure::retry(format!("protocol error: {p}")),
            Some((CloseCode::Protocol, "protocol error")),
        ),
        WsError::Io(e) => (Failure::retry(format!("connection error: {e}")), None),
        WsError::ConnectionClosed | WsError::AlreadyClosed => {
            (Failure::retry("connection closed"), None)
        }
        other => (Failure::retry(format!("read failed: {other}")), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_classes() {
        assert_eq!(Failure::http(401, None, "").class, Class::Auth);
        assert_eq!(Failure::http(403, None, "").class, Class::Auth);
        assert_eq!(Failure::http(404, None, "").class, Class::Fatal);
        assert_eq!(Failure::http(426, None, "").class, Class::Fatal);
        assert_eq!(Failure::http(503, None, "").class, Class::Retry);
        assert_eq!(Failure::http(429, None, "").class, Class::Retry);
        assert_eq!(Failure::http(408, None, "").class, Class::Retry);
        let f = Failure::http(429, Some(Duration::from_secs(2)), "");
        assert_eq!(f.reason, "HTTP 429 Too Many Requests, retry after 2s");
    }

    #[test]
    fn close_codes_and_overrides() {
        let none = BTreeMap::new();
        assert_eq!(Failure::close(1008, "policy", &none).class, Class::Fatal);
        assert_eq!(Failure::close(1011, "", &none).class, Class::Retry);
        assert_eq!(Failure::close(4001, "", &none).class, Class::Retry);
        let o = BTreeMap::from([(4001, CloseAction::Reauth), (1008, CloseAction::Retry)]);
        assert_eq!(Failure::close(4001, "", &o).class, Class::Auth);
        assert_eq!(Failure::close(1008, "", &o).class, Class::Retry);
        assert_eq!(
            Failure::close(1008, "bad\nthing", &none).reason,
            "closed by upstream with code 1008: bad thing"
        );
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("2"), Some(Duration::from_secs(2)));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(
            httpdate("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777))
        );
        assert_eq!(parse_retry_after("soon"), None);
        // Far ahead, in either form: bounded at a day.
        assert_eq!(parse_retry_after("99999999999"), Some(MAX_RETRY_AFTER));
        assert_eq!(
            parse_retry_after("Fri, 01 Jan 9999 00:00:00 GMT"),
            Some(MAX_RETRY_AFTER)
        );
    }
}
