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
    let descriptors = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
