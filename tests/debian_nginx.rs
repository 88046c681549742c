//! The module built for Debian's own nginx package (nginx 1.22.1 on Debian 12), not the nginx
//! vendored for the other tests: `scripts/debian-nginx` unpacks the `nginx` and `nginx-dev`
//! packages into `target/debian-nginx/` (nothing is installed) and builds the module for that
//! binary with `scripts/build-for-nginx`. `scripts/test` (and so CI) always runs it first and
//! sets `CF_ACCESS_REQUIRE_DEBIAN_NGINX`, so there these tests run (or fail); a plain
//! `cargo test` on a machine that has not run it skips them with a message.
//!
//! Every test here points the harness at that nginx and module through `CF_ACCESS_NGINX` and
//! `CF_ACCESS_MODULE`, which the harness reads at run time. Environment variables are
//! process-wide, so all Debian tests live in this one test binary and nothing else does.
//! `CF_ACCESS_DEBIAN_NGINX_DIR` overrides `target/debian-nginx`; `CF_ACCESS_DEBIAN_NGINX` and
//! `CF_ACCESS_DEBIAN_MODULE` name the binary and the module directly: `scripts/check-deb` runs
//! these tests against the installed `/usr/sbin/nginx` and the module that the
//! `libnginx-mod-http-cf-access` package installed.
//!
//! Debian's nginx has compiled-in paths (`/run/nginx.pid`, `/var/lib/nginx/*` temp paths,
//! `/var/log/nginx/access.log`); the harness's `-p`/`-c`/`-e` and the `pid`, `error_log`,
//! `access_log` and `*_temp_path` directives it writes keep everything under its own prefix.

// A test: a panic is a failed assertion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use cf_access_dev::KeyPair;
use cf_access_testkit::build::{
    assert_passes_identity_upstream, assert_verifies_tokens, available, env_path, identity_site,
    nginx_version, use_build,
};
use cf_access_testkit::Nginx;

fn debian_dir() -> PathBuf {
    env_path("CF_ACCESS_DEBIAN_NGINX_DIR")
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/debian-nginx"))
}

/// Points the harness at Debian's nginx and the module built for it (`CF_ACCESS_DEBIAN_NGINX`
/// and `CF_ACCESS_DEBIAN_MODULE`, else the files `scripts/debian-nginx` prepares), and
/// returns the nginx binary; `None` (with a message) when they are missing.
fn debian() -> Option<PathBuf> {
    let dir = debian_dir();
    let (nginx, module) = available(
        &env_path("CF_ACCESS_DEBIAN_NGINX").unwrap_or_else(|| dir.join("usr/sbin/nginx")),
        &env_path("CF_ACCESS_DEBIAN_MODULE")
            .unwrap_or_else(|| dir.join("ngx_http_cf_access_module.so")),
        "CF_ACCESS_REQUIRE_DEBIAN_NGINX",
        "run scripts/debian-nginx; scripts/test does",
    )?;
    use_build(&nginx, &module);
    Some(nginx)
}

#[test]
fn debian_nginx_verifies_tokens() {
    let Some(nginx_bin) = debian() else { return };
    let key = KeyPair::generate();
    let (_certs, nginx) = identity_site(&key);
    assert_verifies_tokens(&nginx, &key, &nginx_version(&nginx_bin));
    nginx.assert_clean(&[]);
}

#[test]
fn debian_nginx_passes_variables_upstream() {
    let Some(_) = debian() else { return };
    let key = KeyPair::generate();
    let (_certs, nginx) = identity_site(&key);
    assert_passes_identity_upstream(&nginx, &key);
    nginx.assert_clean(&[]);
}

/// The module built against the vendored nginx (`target/<profile>/`) is refused by Debian's
/// nginx with a version mismatch: the error README's "Build for your nginx" explains.
#[test]
fn debian_nginx_refuses_a_module_built_for_another_version() {
    let Some(nginx_bin) = debian() else { return };
    let vendored = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("libngx_http_cf_access_module.so")));
    let Some(vendored) = vendored.filter(|p| p.is_file()) else {
        eprintln!("skipped: no vendored build of the module next to the test binary");
        return;
    };
    let debian_version = nginx_version(&nginx_bin);
    let number = |v: &str| -> String {
        let mut parts = v
            .trim_start_matches("nginx/")
            .split('.')
            .map(|p| p.parse::<u32>().unwrap_or_else(|_| panic!("nginx version {v}")));
        let (a, b, c) =
            (parts.next().unwrap_or(0), parts.next().unwrap_or(0), parts.next().unwrap_or(0));
        format!("{}", a * 1_000_000 + b * 1_000 + c)
    };
    let (ok, out) = Nginx::builder()
        .without_module()
        .main(&format!("load_module {};", vendored.display()))
        .http("server { listen 127.0.0.1:{PORT}; }")
        .test_config();
    assert!(!ok, "a module built for another nginx must be refused:\n{out}");
    let expected = format!("instead of {}", number(&debian_version));
    assert!(
        out.contains("[emerg]") && out.contains(&expected),
        "expected \"{expected}\" in:\n{out}"
    );
}
