//! Compiles proto/ into tonic server code with protox (pure Rust: no protoc binary needed).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "mindspore_serving/ms_service.proto",
        "kserve/grpc_service.proto",
        "rustserve/distributed.proto",
    ];
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(protos, ["proto"])?;
    // NOTE: `bytes` fields decode into `bytes::Bytes`, so tensor payloads are sliced from the request buffer, not copied.
    tonic_prost_build::configure()
        .bytes(".")
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
