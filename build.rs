//! Tells the tests where the vendored nginx binary is: `NGX_CF_ACCESS_NGINX_BUILD_DIR`, the
//! nginx build directory nginx-sys reports (`DEP_NGINX_BUILD_DIR`; its `nginx` is the binary
//! the integration tests run). Cargo sets it when it compiles and when it runs this package's
//! tests.
//!
//! Cargo only exposes a dependency's `links` metadata to direct dependents, which is why
//! `nginx-sys` is a direct dependency of this crate.

use std::env;

fn main() {
    println!("cargo::rerun-if-env-changed=DEP_NGINX_BUILD_DIR");
    if let Ok(build_dir) = env::var("DEP_NGINX_BUILD_DIR") {
        println!("cargo::rustc-env=NGX_CF_ACCESS_NGINX_BUILD_DIR={build_dir}");
    }
}
