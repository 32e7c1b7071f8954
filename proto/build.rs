//! Generates the bindings with `protox`, a protobuf compiler written in Rust,
//! so that a fresh machine needs no `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/mexec/v1/executor.proto",
        "proto/mexec/v1/gatekeeper.proto",
        "proto/mexec/v1/agent.proto",
    ];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        // Every bytes field is `Bytes`, so relaying output copies nothing.
        .bytes(".")
        .compile_fds(descriptors)?;
    Ok(())
}
