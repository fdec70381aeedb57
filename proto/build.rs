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
        "proto/gateway.proto",
    ];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    // The descriptor set feeds the gRPC reflection service (grpcurl and friends).
    let descriptors =
        std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("chat_descriptor.bin");
    tonic_prost_build::configure()
        .file_descriptor_set_path(descriptors)
        // `chat.v1.Chat/Connect` would clash with the generated `connect` constructor; clients are
        // built with `new(channel)` instead.
        .build_transport(false)
        // tonic-prost's codec with small per-call buffers: see src/codec.rs.
        .codec_path("crate::codec::LeanCodec")
        .bytes(".chat.log.v1.LogEvent.payload")
        // Stored records must encode identically on every replica (they go into snapshots and
        // digests): a map is a BTreeMap, never a HashMap in random order.
        .btree_map(".chat.log.v1")
        .compile_protos(&protos, &["proto"])?;
    Ok(())
}
