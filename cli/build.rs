//! Gives the binary an rpath to libtorch's `lib/` (when built with the `torch` feature), so it
//! runs without LD_LIBRARY_PATH. switchyard-torch reports the folder; link arguments of a
//! dependency's build script never reach this binary by themselves.

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_SWITCHYARD_TORCH_LIBTORCH_LIB");
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    if std::env::var_os("CARGO_FEATURE_TORCH").is_none() {
        return;
    }
    let lib = std::env::var("DEP_SWITCHYARD_TORCH_LIBTORCH_LIB")
        .ok()
        .or_else(|| std::env::var("LIBTORCH").ok().map(|root| format!("{root}/lib")));
    match lib {
        Some(lib) => println!("cargo:rustc-link-arg-bins=-Wl,-rpath,{lib}"),
        None => println!("cargo:warning=libtorch's lib folder is unknown; run the binary with LD_LIBRARY_PATH set"),
    }
}
