//! Generates the `log.v1` messages and the `Log` service's client from `proto/log/v1/log.proto`
//! with `protox` (a pure-Rust protobuf compiler), so building needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/log/v1/log.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(false)
        .bytes(".log.v1.Record.value")
        .compile_fds(descriptors)?;
    Ok(())
}
