//! Passes nginx-sys's metadata (`DEP_NGINX_*`) on to the module as cfgs.
//!
//! Cargo only exposes a dependency's `links` metadata to direct dependents, which is why
//! `nginx-sys` is a direct dependency of this crate.

use std::env;

fn main() {
    // `ngx_feature = "..."` for every nginx configure feature (http_ssl, threads, ...).
    println!("cargo::rerun-if-env-changed=DEP_NGINX_FEATURES_CHECK");
    println!(
        "cargo::rustc-check-cfg=cfg(ngx_feature, values({}))",
        env::var("DEP_NGINX_FEATURES_CHECK").unwrap_or_else(|_| "any()".to_string())
    );
    println!("cargo::rerun-if-env-changed=DEP_NGINX_FEATURES");
    if let Ok(features) = env::var("DEP_NGINX_FEATURES") {
        for feature in features.split(',').map(str::trim).filter(|f| !f.is_empty()) {
            println!("cargo::rustc-cfg=ngx_feature=\"{feature}\"");
        }
    }

    // `ngx_os = "linux"` etc.
    println!("cargo::rerun-if-env-changed=DEP_NGINX_OS_CHECK");
    println!(
        "cargo::rustc-check-cfg=cfg(ngx_os, values({}))",
        env::var("DEP_NGINX_OS_CHECK").unwrap_or_else(|_| "any()".to_string())
    );
    println!("cargo::rerun-if-env-changed=DEP_NGINX_OS");
    if let Ok(os) = env::var("DEP_NGINX_OS") {
        println!("cargo::rustc-cfg=ngx_os=\"{os}\"");
    }

    // The nginx version the module is built against, as `NGX_CF_ACCESS_NGINX_VERSION`.
    println!("cargo::rerun-if-env-changed=DEP_NGINX_VERSION");
    if let Ok(version) = env::var("DEP_NGINX_VERSION") {
        println!("cargo::rustc-env=NGX_CF_ACCESS_NGINX_VERSION={version}");
    }
    println!("cargo::rerun-if-env-changed=DEP_NGINX_VERSION_NUMBER");
    println!("cargo::rustc-check-cfg=cfg(nginx1_25_1)");
    if let Some(n) = env::var("DEP_NGINX_VERSION_NUMBER")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        if n >= 1_025_001 {
            println!("cargo::rustc-cfg=nginx1_25_1");
        }
    }

    // Where the nginx build lives (the vendored build's objs/nginx is the test binary).
    println!("cargo::rerun-if-env-changed=DEP_NGINX_BUILD_DIR");
    if let Ok(build_dir) = env::var("DEP_NGINX_BUILD_DIR") {
        println!("cargo::rustc-env=NGX_CF_ACCESS_NGINX_BUILD_DIR={build_dir}");
    }
}
