//! Compiles `proto/evergreen/v1/*.proto` with protox (no system protoc) and
//! writes the encoded `FileDescriptorSet` for gRPC reflection.

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read at run time, not with env!(): a build script binary is reused
    // across checkouts sharing a target dir, and env! would pin the path of
    // whichever checkout compiled it.
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let dirs = [root.join("evergreen/v1"), root.join("inference")];
    let mut files: Vec<PathBuf> = Vec::new();
    for dir in &dirs {
        for e in std::fs::read_dir(dir)? {
            files.push(e?.path());
        }
        // protox emits no rerun-if-changed of its own.
        println!("cargo:rerun-if-changed={}", dir.display());
    }
    files.retain(|p| p.extension().is_some_and(|e| e == "proto"));
    files.sort();
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }

    let fds = protox::compile(&files, [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("evergreen_descriptor.bin"), fds.encode_to_vec())?;

    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
