//! Records how the harness was built, so every run can say whether its
//! numbers come from optimized code.
fn main() {
    for var in ["PROFILE", "OPT_LEVEL", "DEBUG"] {
        let value = std::env::var(var).unwrap_or_else(|_| "unknown".into());
        println!("cargo:rustc-env=MEMSYNC_BUILD_{var}={value}");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
