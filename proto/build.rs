//! Generates the Rust code for the .proto contracts at build time. `protoc` comes from the
//! vendored `protoc-bin-vendored` crate so no system protobuf compiler is needed.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("PROTOC").is_none() {
        std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    }
    let protos = [
        "proto/raft.proto",
        "proto/log.proto",
        "proto/admin.proto",
        "proto/chat.proto",
    ];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    tonic_prost_build::configure()
        .bytes(".chat.log.v1.LogEvent.payload")
        .compile_protos(&protos, &["proto"])?;
    Ok(())
}
