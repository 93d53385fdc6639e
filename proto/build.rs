//! Compiles the `.proto` files with `protox` (a pure-Rust protobuf compiler), so building needs
//! no system `protoc`, and writes the encoded descriptor set for gRPC server reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/log/v1/log.proto",
        "proto/log/v1/peer.proto",
        "proto/log/v1/admin.proto",
    ];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("proglog_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    tonic_prost_build::configure()
        .bytes(".log.v1.Record.value")
        .bytes(".log.v1.FetchedBatches.batches")
        .compile_fds(descriptors)?;
    Ok(())
}
