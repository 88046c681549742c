//! The module as packagers build it, in the nginx it was built for: an `nginx` binary and a
//! `ngx_http_cf_access_module.so` made outside cargo's own cdylib build, named by
//! `CF_ACCESS_PACKAGED_NGINX` and `CF_ACCESS_PACKAGED_MODULE`:
//!
//! * `scripts/check-add-dynamic-module`: nginx's `./configure --add-dynamic-module=<repo>` and
//!   `make modules` (the repository's `config`), with the nginx of that same build;
//! * `scripts/check-deb`: Debian's `/usr/sbin/nginx` and the module installed by the
//!   `libnginx-mod-http-cf-access` package.
//!
//! Without those variables (a plain `cargo test`) every test here skips with a message; the
//! scripts set `CF_ACCESS_REQUIRE_PACKAGED`, and then a missing file is a failure. The harness
//! is pointed at those files for the whole test binary (`cf_access_testkit::build`), so
//! nothing else lives here.

// A test: a panic is a failed assertion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use cf_access_dev::KeyPair;
use cf_access_testkit::build::{
    assert_passes_identity_upstream, assert_verifies_tokens, available, env_path, identity_site,
    nginx_version, use_build,
};

/// The packaged nginx, with the harness pointed at it and its module; `None` (with a
/// message) when the variables are not set.
fn packaged() -> Option<PathBuf> {
    let none = PathBuf::from("(not set)");
    let (nginx, module) = available(
        &env_path("CF_ACCESS_PACKAGED_NGINX").unwrap_or_else(|| none.clone()),
        &env_path("CF_ACCESS_PACKAGED_MODULE").unwrap_or(none),
        "CF_ACCESS_REQUIRE_PACKAGED",
        "CF_ACCESS_PACKAGED_NGINX / CF_ACCESS_PACKAGED_MODULE: scripts/check-add-dynamic-module \
         and scripts/check-deb set them",
    )?;
    use_build(&nginx, &module);
    Some(nginx)
}

#[test]
fn packaged_module_verifies_tokens() {
    let Some(nginx_bin) = packaged() else { return };
    let key = KeyPair::generate();
    let (_certs, nginx) = identity_site(&key);
    assert_verifies_tokens(&nginx, &key, &nginx_version(&nginx_bin));
    nginx.assert_clean(&[]);
}

#[test]
fn packaged_module_passes_the_identity_upstream() {
    let Some(_) = packaged() else { return };
    let key = KeyPair::generate();
    let (_certs, nginx) = identity_site(&key);
    assert_passes_identity_upstream(&nginx, &key);
    nginx.assert_clean(&[]);
}
