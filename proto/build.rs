//! Compiles the .proto files with protox (pure Rust), so building needs no
//! system protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/fleetkey/v1/daemon.proto",
        "proto/fleetkey/portal/v1/portal.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    // The daemon API's descriptors, served by gRPC server reflection.
    let daemon = protox::compile([files[0]], ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("fleetkey_daemon_descriptor.bin"),
        prost::Message::encode_to_vec(&daemon),
    )?;
    let descriptors = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
