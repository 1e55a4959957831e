#![forbid(unsafe_code)]
pub mod proto {
    tonic::include_proto!("ws_sidecar.v1");
}
