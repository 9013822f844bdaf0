//! Generates the `mesh.v1` Rust code from the `.proto` files with tonic-prost-build.
//!
//! `protoc` comes from `protoc-bin-vendored`, so that building needs no system protoc. Its
//! path goes to prost-build through `Config::protoc_executable`, and not through the `PROTOC`
//! variable: setting an environment variable is `unsafe` in edition 2024, and the workspace
//! forbids `unsafe_code`, in build scripts too.

use std::error::Error;

const PROTO_ROOT: &str = "mesh/v1";
const PROTOS: &[&str] = &[
    "mesh/v1/identity.proto",
    "mesh/v1/discovery.proto",
    "mesh/v1/resources.proto",
];

fn main() -> Result<(), Box<dyn Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;

    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    // Ordered maps make the encoding of a message deterministic, so a hash of the encoding is
    // a stable content version (discovery.proto, section 4) on every replica and every run.
    config.btree_map(["."]);

    println!("cargo:rerun-if-changed={PROTO_ROOT}");
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }

    // Without the `grpc` feature: the messages only (prost), no tonic service code.
    let grpc = std::env::var_os("CARGO_FEATURE_GRPC").is_some();
    tonic_prost_build::configure()
        .codec_path("crate::codec::Codec")
        .build_client(grpc)
        .build_server(grpc)
        .compile_with_config(config, PROTOS, &["."])?;
    Ok(())
}
