#![forbid(unsafe_code)]
//! ws-sidecar: one resilient upstream WebSocket per endpoint, fanned out to local apps.
//!
//! ```text
//! config ──► supervisor ──► upstream (one task per endpoint: connecting/connected/backoff/failed)
//!                             │ inbound message (Bytes, kind, upstream id)
//!                             ▼
//!                           log (per endpoint: seq, replay window; subscribers are cursors)
//!                             ▼
//!                 api::grpc · api::stream (NDJSON)  ◄── local apps
//!                             │ hold keys, request (share: one upstream subscription per key,
//!                             │ ids assigned by the daemon, replies routed to who asked)
//!                             │ publish
//!                             ▼
//!                           outbox ──► upstream writer, in order, once connected, every frame
//!                                      through the endpoint's send rate limit (ratelimit)
//! ```
//!
//! Invariants:
//! - The upstream task never awaits a subscriber: a slow reader only hurts itself (it gets a
//!   `Gap`), it never slows the upstream or other subscribers.
//! - A payload is one `Bytes` from the socket to every subscriber; no per-subscriber copy.
//! - Every wait in a long-lived loop is raced against cancellation, so shutdown is prompt even
//!   during an outage.
//! - Nothing is acknowledged before its seq is assigned (log) or it is queued (outbox); an outbox
//!   entry leaves the queue only after its frame was flushed to the upstream socket.
//! - Config is validated completely before anything starts.

pub mod access;
pub mod api;
pub mod backoff;
pub mod client;
pub mod cluster;
pub mod config;
pub mod demo;
pub mod dialogue;
pub mod endpoint;
pub mod filter;
pub mod fmt;
#[doc(hidden)]
pub mod fuzzing;
pub mod health;
pub mod history;
pub mod listen;
pub mod log;
pub mod logging;
pub mod metrics;
pub mod outbox;
pub mod output;
pub mod paths;
pub mod ratelimit;
pub mod redact;
pub mod registry;
pub mod reload;
pub mod secret;
pub mod share;
pub mod stall;
pub mod status;
pub mod store;
pub mod supervisor;
pub mod systemd;
pub mod upstream;

/// Generated gRPC types and services for `ws_sidecar.v1`.
#[allow(clippy::all, missing_docs)]
pub mod proto {
    tonic::include_proto!("ws_sidecar.v1");
    // The server, built against the types above but sending `Event`s pre-encoded (build.rs).
    include!(concat!(env!("OUT_DIR"), "/server/ws_sidecar.v1.rs"));

    /// Encoded descriptor set, served by gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/sidecar_descriptor.bin"));
}
