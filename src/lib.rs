#![forbid(unsafe_code)]
//! ws-sidecar: one resilient upstream WebSocket per endpoint, fanned out to local apps.

pub mod config;
pub mod redact;
pub mod secret;

/// Generated gRPC types and services for `ws_sidecar.v1`.
#[allow(clippy::all, missing_docs)]
pub mod proto {
    tonic::include_proto!("ws_sidecar.v1");

    /// Encoded descriptor set, served by gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/sidecar_descriptor.bin"));
}
