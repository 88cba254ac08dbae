//! Makes binaries that link libtorch find it without LD_LIBRARY_PATH.
//!
//! torch-sys (`links = "tch"`) tells its direct dependents where libtorch's `lib/` is, through
//! `DEP_TCH_LIBTORCH_LIB`. `rustc-link-arg` only reaches this package's own tests, examples and
//! benches, so the directory is also passed on (`DEP_SWITCHYARD_TORCH_LIBTORCH_LIB`) for the
//! build.rs of a binary crate that depends on this one; it should emit the same two lines:
//! `cargo:rustc-link-arg=-Wl,-rpath,<dir>` (and, for CUDA builds, the `--no-as-needed` lines
//! below).

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        println!("cargo:warning=torch-sys did not report libtorch's lib dir; no rpath added");
        return;
    };
    println!("cargo:libtorch_lib={lib}");
    // The engine dlopens libtorch_cuda.so by absolute path when a CUDA device is requested.
    println!("cargo:rustc-env=SWITCHYARD_LIBTORCH_LIB={lib}");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    if std::env::var_os("CARGO_FEATURE_CUDA_LINK").is_some() {
        // rustc links with --as-needed; nothing in Rust calls into libtorch_cuda.so directly,
        // so without this it is dropped and torch sees no CUDA device.
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
