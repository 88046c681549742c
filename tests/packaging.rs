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
//! scripts set `CF_ACCESS_REQUIRE_PACKAGED`, and then a missing file is a failure. All tests of
//! this binary share the process environment the harness reads (`CF_ACCESS_NGINX`,
//! `CF_ACCESS_MODULE`), so nothing else lives here.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Once;

use cf_access_dev::{mint, now, user_claims, CertsServer, KeyPair};
use cf_access_testkit::site::{AUD, HDR, TEAM};
use cf_access_testkit::Nginx;
use serde_json::json;

/// The packaged nginx and module, with the harness pointed at them; `None` (with a message)
/// when the variables are not set.
fn packaged() -> Option<(PathBuf, PathBuf)> {
    static SET_ENV: Once = Once::new();
    let var = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let required = std::env::var_os("CF_ACCESS_REQUIRE_PACKAGED").is_some();
    let (Some(nginx), Some(module)) = (
        var("CF_ACCESS_PACKAGED_NGINX"),
        var("CF_ACCESS_PACKAGED_MODULE"),
    ) else {
        assert!(
            !required,
            "CF_ACCESS_REQUIRE_PACKAGED is set but CF_ACCESS_PACKAGED_NGINX or \
             CF_ACCESS_PACKAGED_MODULE is not"
        );
        eprintln!(
            "skipped: CF_ACCESS_PACKAGED_NGINX / CF_ACCESS_PACKAGED_MODULE not set \
             (scripts/check-add-dynamic-module and scripts/check-deb set them)"
        );
        return None;
    };
    assert!(nginx.is_file(), "no nginx at {}", nginx.display());
    assert!(module.is_file(), "no module at {}", module.display());
    // Set once, before any test of this binary starts an nginx.
    SET_ENV.call_once(|| {
        std::env::set_var("CF_ACCESS_NGINX", &nginx);
        std::env::set_var("CF_ACCESS_MODULE", &module);
    });
    Some((nginx, module))
}

/// A protected static location, a protected location proxied to an echo server that shows
/// the identity headers it got, an open health location, and the certs endpoint.
fn site(key: &KeyPair) -> (CertsServer, Nginx) {
    let certs = CertsServer::start_with_keys(&[key]);
    let nginx = Nginx::builder()
        .file("static/index.html", "protected\n")
        .file("healthz", "ok\n")
        .http(&format!(
            r#"
    cf_access_team_domain {TEAM};
    cf_access_aud {AUD};
    cf_access_certs_url {url};
    server {{
        listen 127.0.0.1:{{PORT}};
        root {{PREFIX}}/html;
        cf_access on;
        location /static/ {{
            add_header X-Email $cf_access_email always;
            add_header X-Status $cf_access_status always;
        }}
        location /app/ {{
            proxy_set_header X-User-Email $cf_access_email;
            proxy_set_header X-User-Sub $cf_access_sub;
            proxy_pass http://127.0.0.1:{{PORT2}}/echo/;
        }}
        location = /healthz {{
            cf_access off;
        }}
    }}
    server {{
        listen 127.0.0.1:{{PORT2}};
        location /echo/ {{
            return 200 "email=$http_x_user_email sub=$http_x_user_sub\n";
        }}
    }}
"#,
            url = certs.url()
        ))
        .start();
    (certs, nginx)
}

#[test]
fn packaged_module_verifies_tokens() {
    let Some((nginx_bin, _)) = packaged() else {
        return;
    };
    let out = Command::new(&nginx_bin)
        .arg("-v")
        .output()
        .expect("run nginx -v");
    let server = String::from_utf8_lossy(&out.stderr)
        .trim()
        .trim_start_matches("nginx version: ")
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    assert!(server.starts_with("nginx/"), "nginx -v: {server}");

    let key = KeyPair::generate();
    let (_certs, nginx) = site(&key);
    let t = now();
    let token = mint(&key, &user_claims(TEAM, AUD, "alice@example.com", t, 600));

    let r = nginx.get("/static/", &[(HDR, &token)]);
    assert_eq!(r.status, 200, "{}", nginx.error_log());
    assert_eq!(r.body, "protected\n");
    assert_eq!(r.header("X-Email"), Some("alice@example.com"));
    assert_eq!(r.header("X-Status"), Some("ok"));
    assert_eq!(r.header("Server"), Some(server.as_str()));

    let cookie = format!("CF_Authorization={token}");
    let r = nginx.get("/static/", &[("Cookie", &cookie)]);
    assert_eq!(r.status, 200, "{}", nginx.error_log());

    let r = nginx.get("/static/", &[]);
    assert_eq!(r.status, 403);
    assert_eq!(r.header("X-Status"), Some("no_token"));

    let mut expired = user_claims(TEAM, AUD, "alice@example.com", t, 600);
    expired["exp"] = json!(t - 3600);
    let r = nginx.get("/static/", &[(HDR, &mint(&key, &expired))]);
    assert_eq!(r.status, 403);
    assert_eq!(r.header("X-Status"), Some("expired"));

    let other = user_claims(TEAM, "another-app", "alice@example.com", t, 600);
    let r = nginx.get("/static/", &[(HDR, &mint(&key, &other))]);
    assert_eq!(r.status, 403);
    assert_eq!(r.header("X-Status"), Some("bad_audience"));

    let r = nginx.get("/healthz", &[]);
    assert_eq!((r.status, r.body.as_str()), (200, "ok\n"));
}

#[test]
fn packaged_module_passes_the_identity_upstream() {
    let Some(_) = packaged() else { return };
    let key = KeyPair::generate();
    let (_certs, nginx) = site(&key);
    let claims = user_claims(TEAM, AUD, "bob@example.com", now(), 600);
    let sub = claims["sub"].as_str().unwrap_or_default().to_string();
    assert!(!sub.is_empty());

    let r = nginx.get(
        "/app/",
        &[
            (HDR, &mint(&key, &claims)),
            ("X-User-Email", "mallory@example.com"),
        ],
    );
    assert_eq!(r.status, 200, "{}", nginx.error_log());
    assert_eq!(r.body, format!("email=bob@example.com sub={sub}\n"));

    let r = nginx.get("/app/", &[("X-User-Email", "mallory@example.com")]);
    assert_eq!(r.status, 403);
}
