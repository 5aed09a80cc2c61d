//! Compiles the .proto with protox (pure Rust), so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["keyway/v1/discovery.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Key and RedisStore carry secrets: their Debug is written by hand in lib.rs, redacted.
        .skip_debug(["keyway.v1.Key", "keyway.v1.RedisStore"])
        .compile_fds(fds)?;
    Ok(())
}
