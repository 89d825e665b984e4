//! Compiles `proto/` (at the workspace root) with protox, so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read when the script runs, not baked in when it is compiled: one compiled script may
    // serve several checkouts sharing a build cache (CI clones).
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR")?;
    let root = std::path::Path::new(&manifest_dir).join("../../proto").canonicalize()?;
    let files = [
        "jack/guest/v1/guest.proto",
        "jack/conversation/v1/conversation.proto",
        "jack/delivery/v1/delivery.proto",
        "jack/upload/v1/upload.proto",
        "jack/edge/v1/edge.proto",
    ];
    // Relative to this package, not absolute: one build cache serves several checkouts (CI
    // clones), and an absolute path would keep watching the checkout that built it first.
    for file in &files {
        println!("cargo::rerun-if-changed=../../proto/{file}");
    }
    let fds = protox::compile(files, [&root])?;
    // The contracts as a descriptor set, for server reflection.
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("jack_descriptor.bin"), prost::Message::encode_to_vec(&fds))?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
