//! Compiles `proto/` with protox (pure Rust), so the build needs no system `protoc`.
//!
//! Two passes: the messages and the client as usual, then the server alone with every type
//! taken from the first pass except the `Subscribe` stream's `Event`, which the server sends
//! already encoded (`crate::api::wire::EventFrame`): a message fanned out to many subscribers is
//! encoded once, not once per stream.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/ws_sidecar/v1/sidecar.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    // Reflection needs the descriptor set; prost's encoding of it is what tonic-reflection reads.
    std::fs::write(
        out.join("sidecar_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .bytes(".")
        .build_server(false)
        .compile_fds(fds.clone())?;
    let server = out.join("server");
    std::fs::create_dir_all(&server)?;
    tonic_prost_build::configure()
        .build_client(false)
        .extern_path(".ws_sidecar.v1", "crate::proto")
        .extern_path(".ws_sidecar.v1.Event", "crate::api::wire::EventFrame")
        .out_dir(&server)
        .compile_fds(fds)?;
    Ok(())
}
