//! Compiles the vendored containerd Snapshots API and lazysnap's Control API
//! (proto/, see proto/VENDOR.txt) with tonic-prost-build. Needs `protoc`
//! (Debian's protobuf-compiler; scripts/setup.sh installs it).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_protos(
            &[
                "proto/containerd/services/snapshots/v1/snapshots.proto",
                "proto/lazysnap/v1/control.proto",
            ],
            &["proto"],
        )?;
    Ok(())
}
