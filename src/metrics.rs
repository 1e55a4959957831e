//! Every metric the daemon exposes, by name, and their rendering as Prometheus text exposition
//! (format 0.0.4) for `GET /metrics` (SPEC §14).
//!
//! Names start with `ws_sidecar_`, counters end in `_total`, units are base units (seconds,
//! bytes). Values are read from the endpoints' atomics at scrape time: nothing on the message
//! path knows about metrics.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::endpoint::{Endpoint, State};
use crate::registry::Registry;

/// `version` label, value 1.
pub const BUILD_INFO: &str = "ws_sidecar_build_info";
/// 0 while the last reload was refused (the file on disk is not what runs), else 1; named as
/// Prometheus names its own (`prometheus_config_last_reload_successful`).
pub const CONFIG_RELOAD_OK: &str = "ws_sidecar_config_last_reload_successful";
/// 1 for the endpoint's current `state` label, 0 for the others.
pub const ENDPOINT_STATE: &str = "ws_sidecar_endpoint_state";
/// When the endpoint entered its current state.
pub const ENDPOINT_STATE_SINCE: &str = "ws_sidecar_endpoint_state_since_timestamp_seconds";
/// Connection attempts by `result`: `ok`, `error` (retried), `fatal` (endpoint failed).
pub const CONNECTS: &str = "ws_sidecar_connects_total";
/// Successful connections after the first.
pub const RECONNECTS: &str = "ws_sidecar_reconnects_total";
/// Upstream messages fanned out (after resume dedup and `drop` filters).
pub const RECEIVED_MESSAGES: &str = "ws_sidecar_received_messages_total";
pub const RECEIVED_BYTES: &str = "ws_sidecar_received_bytes_total";
/// Upstream messages not fanned out, by `reason`: `duplicate`, `filtered` (`drop` filters),
/// `dialogue` (a rule's `drop`, or the opening dialogue).
pub const DROPPED_MESSAGES: &str = "ws_sidecar_dropped_messages_total";
/// Inbound messages `decode` failed on, by `reason`: `corrupt` (dropped; a stream's connection
/// reopened), `too_big` (inflated past `max_message_size`: the connection closed with 1009).
pub const DECODE_FAILURES: &str = "ws_sidecar_decode_failures_total";
/// Compressed bytes of inbound binary messages handed to `decode`.
pub const DECODE_INPUT_BYTES: &str = "ws_sidecar_decode_input_bytes_total";
/// Times the upstream's ids started again (resume saw a reset: it restarted or failed over).
pub const UPSTREAM_ID_RESETS: &str = "ws_sidecar_upstream_id_resets_total";
/// Outbox messages flushed to the upstream socket.
pub const SENT_MESSAGES: &str = "ws_sidecar_sent_messages_total";
pub const SENT_BYTES: &str = "ws_sidecar_sent_bytes_total";
/// Last ping round trip; absent before the first pong.
pub const RTT: &str = "ws_sidecar_rtt_seconds";
/// Last seq assigned.
pub const LAST_SEQ: &str = "ws_sidecar_last_seq";
pub const SUBSCRIBERS: &str = "ws_sidecar_subscribers";
/// Messages handed to subscribers, one per subscriber per message.
pub const DELIVERIES: &str = "ws_sidecar_deliveries_total";
/// Gaps handed to subscribers by `reason`: `replay_expired`, `slow_subscriber`, `upstream_gap`,
/// `daemon_restart`, `upstream_reset`.
pub const GAPS: &str = "ws_sidecar_gaps_total";
pub const OUTBOX_MESSAGES: &str = "ws_sidecar_outbox_messages";
pub const OUTBOX_EXPIRED: &str = "ws_sidecar_outbox_expired_total";
/// Credential renewals by `result`: `ok`, `error`.
pub const AUTH_RENEWALS: &str = "ws_sidecar_auth_renewals_total";
/// When the current credential expires; absent when unknown.
pub const AUTH_TOKEN_EXPIRY: &str = "ws_sidecar_auth_token_expiry_timestamp_seconds";
/// Upstream subscriptions held by apps (`subscriptions`), by `state`: `pending`,
/// `subscribed`, `refused`.
pub const UPSTREAM_SUBSCRIPTIONS: &str = "ws_sidecar_upstream_subscriptions";
/// Requests waiting for their reply (`requests`), streams included.
pub const REQUESTS_IN_FLIGHT: &str = "ws_sidecar_requests_in_flight";
/// Confirmed publishes waiting for the upstream's reply.
pub const CONFIRM_MESSAGES: &str = "ws_sidecar_confirm_messages";
/// Requests apps made.
pub const REQUESTS: &str = "ws_sidecar_requests_total";
/// Replies routed to the app that asked (a stream's count each).
pub const REPLIES: &str = "ws_sidecar_replies_total";
/// Requests that ended without a reply, by `reason`: `timeout`, `unavailable` (their
/// connection dropped).
pub const REQUEST_FAILURES: &str = "ws_sidecar_request_failures_total";
/// Requests sent again on a new connection (idempotent ones, and open streams).
pub const REQUESTS_RESENT: &str = "ws_sidecar_requests_resent_total";
/// Replies whose request was gone (it timed out, or its app left).
pub const ORPHAN_REPLIES: &str = "ws_sidecar_orphan_replies_total";
/// Frames that waited for the endpoint's send rate limit (`rate_limit`).
pub const RATE_LIMITED: &str = "ws_sidecar_rate_limited_total";
/// Time frames spent waiting for the send rate limit.
pub const RATE_LIMIT_WAIT: &str = "ws_sidecar_rate_limit_wait_seconds_total";
/// Log lines dropped because stderr did not keep up (see `logging`).
pub const LOG_LINES_DROPPED: &str = "ws_sidecar_log_lines_dropped_total";
/// 1 while this daemon leads a clustered endpoint (holds its upstream connection), else 0.
pub const CLUSTER_LEADER: &str = "ws_sidecar_cluster_leader";
/// The lease epoch last seen for a clustered endpoint.
pub const CLUSTER_LEASE_EPOCH: &str = "ws_sidecar_cluster_lease_epoch";
/// Times a clustered endpoint's lease changed hands, as this daemon saw it.
pub const CLUSTER_LEASE_CHANGES: &str = "ws_sidecar_cluster_lease_changes_total";
/// Stream messages a clustered endpoint has not delivered locally yet.
pub const CLUSTER_STREAM_LAG: &str = "ws_sidecar_cluster_stream_lag_messages";
/// Time from an upstream message's arrival to the stream's ack of it, on the leader (a
/// summary: `_sum` and `_count`).
pub const CLUSTER_APPEND: &str = "ws_sidecar_cluster_append_duration_seconds";

const STATES: [State; 5] = [
    State::Connecting,
    State::Connected,
    State::Backoff,
    State::Failed,
    State::Closed,
];

/// The fleet's figures (`crate::cluster`), for clustered endpoints.
fn clustered(out: &mut Text, eps: &[std::sync::Arc<Endpoint>]) {
    use crate::cluster::slot::Role;
    let eps: Vec<_> = eps
        .iter()
        .filter(|ep| ep.cluster.is_clustered())
        .cloned()
        .collect();
    if eps.is_empty() {
        return;
    }
    out.per_endpoint(
        &eps,
        CLUSTER_LEADER,
        "gauge",
        "1 while this daemon leads the endpoint.",
        |ep| {
            Some(Value::Int(u64::from(
                ep.cluster.status().role == Role::Leader,
            )))
        },
    );
    out.per_endpoint(
        &eps,
        CLUSTER_LEASE_EPOCH,
        "gauge",
        "The endpoint's lease epoch last seen.",
        |ep| Some(Value::Int(ep.cluster.status().epoch)),
    );
    out.counter(
        &eps,
        CLUSTER_LEASE_CHANGES,
        "Times the endpoint's lease changed hands.",
        |ep| &ep.cluster.lease_changes,
    );
    out.per_endpoint(
        &eps,
        CLUSTER_STREAM_LAG,
        "gauge",
        "Stream messages not delivered locally yet.",
        |ep| Some(Value::Int(ep.cluster.status().lag)),
    );
    out.family(
        CLUSTER_APPEND,
        "summary",
        "Seconds from an upstream message's arrival to the stream's ack, on the leader.",
    );
    for ep in &eps {
        let labels = [("endpoint", ep.name.as_str())];
        let micros = ep.cluster.append_micros.load(Ordering::Relaxed);
        let sum = format!("{CLUSTER_APPEND}_sum");
        out.sample(&sum, &labels, Value::Float(micros as f64 / 1e6));
        let count = format!("{CLUSTER_APPEND}_count");
        out.sample(&count, &labels, load(&ep.cluster.appends));
    }
}

/// The shared conversation's figures (`crate::share`), for endpoints that share one.
fn shared(out: &mut Text, eps: &[std::sync::Arc<crate::endpoint::Endpoint>]) {
    let eps: Vec<_> = eps
        .iter()
        .filter(|ep| {
            let cfg = ep.config();
            cfg.subscriptions.is_some() || cfg.requests.is_some()
        })
        .cloned()
        .collect();
    if eps.is_empty() {
        return;
    }
    out.family(
        UPSTREAM_SUBSCRIPTIONS,
        "gauge",
        "Upstream subscriptions held by apps, by state.",
    );
    for ep in &eps {
        let keys = ep.share.keys();
        for state in ["pending", "subscribed", "refused"] {
            let n = keys.iter().filter(|k| k.state == state).count() as u64;
            out.sample(
                UPSTREAM_SUBSCRIPTIONS,
                &[("endpoint", &ep.name), ("state", state)],
                Value::Int(n),
            );
        }
    }
    out.per_endpoint(
        &eps,
        REQUESTS_IN_FLIGHT,
        "gauge",
        "Requests waiting for their reply, streams included.",
        |ep| Some(Value::Int(ep.share.in_flight() as u64)),
    );
    out.per_endpoint(
        &eps,
        CONFIRM_MESSAGES,
        "gauge",
        "Confirmed publishes waiting for the upstream's reply.",
        |ep| Some(Value::Int(ep.share.confirm_depth() as u64)),
    );
    out.counter(&eps, REQUESTS, "Requests made by apps.", |ep| {
        &ep.share.stats.requests
    });
    out.counter(
        &eps,
        REPLIES,
        "Replies routed to the app that asked.",
        |ep| &ep.share.stats.replies,
    );
    out.family(
        REQUEST_FAILURES,
        "counter",
        "Requests that ended without a reply, by reason.",
    );
    for ep in &eps {
        for (reason, counter) in [
            ("timeout", &ep.share.stats.timeouts),
            ("unavailable", &ep.share.stats.unavailable),
        ] {
            out.sample(
                REQUEST_FAILURES,
                &[("endpoint", &ep.name), ("reason", reason)],
                load(counter),
            );
        }
    }
    out.counter(
        &eps,
        REQUESTS_RESENT,
        "Requests sent again on a new connection (idempotent ones, open streams).",
        |ep| &ep.share.stats.resent,
    );
    out.counter(
        &eps,
        ORPHAN_REPLIES,
        "Replies whose request was gone (timed out, or its app left).",
        |ep| &ep.share.stats.orphan_replies,
    );
}

/// The content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Renders every metric for every endpoint.
pub fn render(registry: &Registry) -> String {
    let eps = registry.all();
    let mut out = Text(String::with_capacity(4096 + eps.len() * 2048));
    out.family(BUILD_INFO, "gauge", "Version of the running daemon.");
    out.sample(
        BUILD_INFO,
        &[("version", env!("CARGO_PKG_VERSION"))],
        Value::Int(1),
    );
    out.family(
        CONFIG_RELOAD_OK,
        "gauge",
        "0 while the last config reload was refused, else 1.",
    );
    let ok = registry.reload_refused().is_none();
    out.sample(CONFIG_RELOAD_OK, &[], Value::Int(u64::from(ok)));

    out.family(
        ENDPOINT_STATE,
        "gauge",
        "1 for the endpoint's current state, 0 for the others.",
    );
    for ep in &eps {
        let current = ep.state().state;
        for st in STATES {
            let v = u64::from(st == current);
            out.sample(
                ENDPOINT_STATE,
                &[("endpoint", &ep.name), ("state", st.as_str())],
                Value::Int(v),
            );
        }
    }
    out.per_endpoint(
        &eps,
        ENDPOINT_STATE_SINCE,
        "gauge",
        "Unix time the endpoint entered its current state.",
        |ep| Some(Value::Seconds(ep.state().at)),
    );

    out.family(
        CONNECTS,
        "counter",
        "Upstream connection attempts by result.",
    );
    for ep in &eps {
        let c = &ep.stats.connects;
        for (result, counter) in [("ok", &c.ok), ("error", &c.error), ("fatal", &c.fatal)] {
            out.sample(
                CONNECTS,
                &[("endpoint", &ep.name), ("result", result)],
                load(counter),
            );
        }
    }
    out.counter(
        &eps,
        RECONNECTS,
        "Successful connections after the first.",
        |ep| &ep.stats.reconnects,
    );
    out.counter(
        &eps,
        RECEIVED_MESSAGES,
        "Upstream messages fanned out to subscribers.",
        |ep| &ep.stats.messages_received,
    );
    out.counter(
        &eps,
        RECEIVED_BYTES,
        "Payload bytes of upstream messages fanned out.",
        |ep| &ep.stats.bytes_received,
    );
    out.family(
        DROPPED_MESSAGES,
        "counter",
        "Upstream messages not fanned out, by reason.",
    );
    for ep in &eps {
        for (reason, counter) in [
            ("duplicate", &ep.stats.duplicates_dropped),
            ("filtered", &ep.stats.filtered),
            ("dialogue", &ep.stats.dialogue_kept),
            ("stream_max_payload", &ep.cluster.too_large),
        ] {
            out.sample(
                DROPPED_MESSAGES,
                &[("endpoint", &ep.name), ("reason", reason)],
                load(counter),
            );
        }
    }
    shared(&mut out, &eps);
    clustered(&mut out, &eps);
    out.family(
        DECODE_FAILURES,
        "counter",
        "Inbound messages decode failed on, by reason.",
    );
    for ep in &eps {
        for (reason, counter) in [
            ("corrupt", &ep.stats.decode_corrupt),
            ("too_big", &ep.stats.decode_too_big),
        ] {
            out.sample(
                DECODE_FAILURES,
                &[("endpoint", &ep.name), ("reason", reason)],
                load(counter),
            );
        }
    }
    out.counter(
        &eps,
        DECODE_INPUT_BYTES,
        "Compressed bytes of inbound binary messages handed to decode.",
        |ep| &ep.stats.decode_input_bytes,
    );
    out.counter(
        &eps,
        UPSTREAM_ID_RESETS,
        "Times the upstream's ids started again (resume saw a reset).",
        |ep| &ep.stats.upstream_id_resets,
    );
    out.counter(
        &eps,
        SENT_MESSAGES,
        "Published messages written to the upstream socket.",
        |ep| &ep.stats.messages_sent,
    );
    out.counter(
        &eps,
        SENT_BYTES,
        "Payload bytes of published messages written to the upstream socket.",
        |ep| &ep.stats.bytes_sent,
    );
    out.per_endpoint(
        &eps,
        RTT,
        "gauge",
        "Round-trip time of the last WebSocket ping.",
        |ep| match ep.stats.rtt_micros.load(Ordering::Relaxed) {
            0 => None,
            us => Some(Value::Float(us as f64 / 1e6)),
        },
    );
    out.per_endpoint(
        &eps,
        LAST_SEQ,
        "gauge",
        "Last seq assigned to a message.",
        |ep| Some(Value::Int(ep.log.last_seq())),
    );
    out.per_endpoint(
        &eps,
        SUBSCRIBERS,
        "gauge",
        "Open subscriptions, gRPC and NDJSON.",
        |ep| Some(Value::Int(ep.log.subscribers() as u64)),
    );
    out.counter(
        &eps,
        DELIVERIES,
        "Messages handed to subscribers, one per subscriber per message.",
        |ep| &ep.stats.delivery.messages,
    );
    out.family(GAPS, "counter", "Gaps handed to subscribers, by reason.");
    for ep in &eps {
        let d = &ep.stats.delivery;
        for (reason, counter) in [
            ("replay_expired", &d.gaps_replay_expired),
            ("slow_subscriber", &d.gaps_slow_subscriber),
            ("upstream_gap", &d.gaps_upstream),
            ("daemon_restart", &d.gaps_daemon_restart),
            ("upstream_reset", &d.gaps_upstream_reset),
        ] {
            out.sample(
                GAPS,
                &[("endpoint", &ep.name), ("reason", reason)],
                load(counter),
            );
        }
    }
    out.per_endpoint(
        &eps,
        OUTBOX_MESSAGES,
        "gauge",
        "Published messages waiting in the outbox.",
        |ep| Some(Value::Int(ep.outbox.depth() as u64)),
    );
    out.per_endpoint(
        &eps,
        OUTBOX_EXPIRED,
        "counter",
        "Published messages dropped unsent after outbox.max_age.",
        |ep| Some(Value::Int(ep.outbox.expired())),
    );
    out.family(AUTH_RENEWALS, "counter", "Credential renewals by result.");
    for ep in &eps {
        for (result, counter) in [
            ("ok", &ep.stats.auth_renewals_ok),
            ("error", &ep.stats.auth_renewals_failed),
        ] {
            out.sample(
                AUTH_RENEWALS,
                &[("endpoint", &ep.name), ("result", result)],
                load(counter),
            );
        }
    }
    out.per_endpoint(
        &eps,
        AUTH_TOKEN_EXPIRY,
        "gauge",
        "Unix time the current credential expires.",
        |ep| match ep.stats.auth_expires_at.load(Ordering::Relaxed) {
            0 => None,
            ns => Some(Value::Seconds(ns)),
        },
    );
    out.per_endpoint(
        &eps,
        RATE_LIMITED,
        "counter",
        "Frames to the upstream that waited for the send rate limit.",
        |ep| Some(Value::Int(ep.rate.throttled())),
    );
    out.per_endpoint(
        &eps,
        RATE_LIMIT_WAIT,
        "counter",
        "Seconds frames to the upstream spent waiting for the send rate limit.",
        |ep| Some(Value::Float(ep.rate.waited().as_secs_f64())),
    );
    out.family(
        LOG_LINES_DROPPED,
        "counter",
        "Log lines dropped because stderr did not keep up.",
    );
    out.sample(
        LOG_LINES_DROPPED,
        &[],
        Value::Int(crate::logging::dropped_lines()),
    );
    out.0
}

fn load(counter: &AtomicU64) -> Value {
    Value::Int(counter.load(Ordering::Relaxed))
}

/// A sample value.
enum Value {
    Int(u64),
    Float(f64),
    /// Unix nanoseconds, shown as seconds.
    Seconds(u64),
}

struct Text(String);

impl Text {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        // Writing to a String cannot fail.
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: Value) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                self.0.push_str(k);
                self.0.push_str("=\"");
                escape_label(&mut self.0, v);
                self.0.push('"');
            }
            self.0.push('}');
        }
        let _ = match value {
            Value::Int(v) => writeln!(self.0, " {v}"),
            Value::Float(v) => writeln!(self.0, " {v}"),
            Value::Seconds(ns) => {
                writeln!(self.0, " {}.{:09}", ns / 1_000_000_000, ns % 1_000_000_000)
            }
        };
    }

    fn per_endpoint(
        &mut self,
        eps: &[std::sync::Arc<Endpoint>],
        name: &str,
        kind: &str,
        help: &str,
        value: impl Fn(&Endpoint) -> Option<Value>,
    ) {
        self.family(name, kind, help);
        for ep in eps {
            if let Some(v) = value(ep) {
                self.sample(name, &[("endpoint", &ep.name)], v);
            }
        }
    }

    fn counter(
        &mut self,
        eps: &[std::sync::Arc<Endpoint>],
        name: &str,
        help: &str,
        counter: impl Fn(&Endpoint) -> &AtomicU64,
    ) {
        self.per_endpoint(eps, name, "counter", help, |ep| Some(load(counter(ep))));
    }
}

/// Label values escape backslash, double quote and newline.
fn escape_label(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        let mut s = String::new();
        escape_label(&mut s, "a\"b\\c\nd");
        assert_eq!(s, "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn timestamps_are_seconds_with_nanos() {
        let mut t = Text(String::new());
        t.sample("x", &[], Value::Seconds(1_500_000_000));
        assert_eq!(t.0, "x 1.500000000\n");
    }
}
