//! Generates the gRPC messages and services from `proto/` without a system
//! `protoc`: protox parses the files into a descriptor set, which
//! tonic-prost-build turns into Rust.

use std::error::Error;

fn main() -> Result<(), Box<dyn Error>> {
    let protos = ["proto/memsync.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        // Payloads as `bytes::Bytes`: decoded without a copy out of the
        // receive buffer, and a read's data handed to the encoder as is.
        .bytes(".memsync.v1")
        .compile_fds(descriptors)?;
    Ok(())
}
