//! Compiles the `.proto` files with `protox` (a pure-Rust protobuf compiler), so building needs
//! no system `protoc`, and writes the encoded descriptor set for gRPC server reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The client API's proto belongs to the client crate, which generates its own types from
    // it; the node's server, peer and admin code come from here.
    let includes = ["proto", "../client/proto"];
    let protos = [
        "log/v1/log.proto",
        "log/v1/peer.proto",
        "log/v1/admin.proto",
    ];
    for include in includes {
        println!("cargo:rerun-if-changed={include}/log/v1");
    }
    let descriptors = protox::compile(protos, includes)?;
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
