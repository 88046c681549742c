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

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Once;

use cf_access_dev::{mint, now, user_claims, CertsServer, KeyPair};
use cf_access_testkit::site::{AUD, HDR, TEAM};
use cf_access_testkit::Nginx;
use serde_json::json;

fn debian_dir() -> PathBuf {
    match std::env::var_os("CF_ACCESS_DEBIAN_NGINX_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("target/debian-nginx"),
    }
}

/// Debian's nginx binary and the module built for it: `CF_ACCESS_DEBIAN_NGINX` and
/// `CF_ACCESS_DEBIAN_MODULE`, else the files `scripts/debian-nginx` prepares.
fn debian_files() -> (PathBuf, PathBuf) {
    let var = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let dir = debian_dir();
    (
        var("CF_ACCESS_DEBIAN_NGINX").unwrap_or_else(|| dir.join("usr/sbin/nginx")),
        var("CF_ACCESS_DEBIAN_MODULE").unwrap_or_else(|| dir.join("ngx_http_cf_access_module.so")),
    )
}

/// Points the harness at Debian's nginx and the module built for it, and returns the nginx
/// binary; `None` (with a message) when `scripts/debian-nginx` has not been run.
fn debian() -> Option<PathBuf> {
    static SET_ENV: Once = Once::new();
    let (nginx, module) = debian_files();
    if !nginx.is_file() || !module.is_file() {
        // scripts/test prepares them: there, missing files are a failure, not a skip.
        assert!(
            std::env::var_os("CF_ACCESS_REQUIRE_DEBIAN_NGINX").is_none(),
            "CF_ACCESS_REQUIRE_DEBIAN_NGINX is set but {} or {} is missing",
            nginx.display(),
            module.display()
        );
        eprintln!(
            "skipped: Debian's nginx or the module built for it is missing ({} / {}); \
             run scripts/debian-nginx (scripts/test does)",
            nginx.display(),
            module.display()
        );
        return None;
    }
    // Set once, before any test of this binary starts an nginx; std serializes environment
    // access, and the harness only reads these variables.
    SET_ENV.call_once(|| {
        std::env::set_var("CF_ACCESS_NGINX", &nginx);
        std::env::set_var("CF_ACCESS_MODULE", &module);
    });
    Some(nginx)
}

/// `nginx -v` of the Debian binary, e.g. "nginx/1.22.1".
fn version(nginx: &Path) -> String {
    let out = Command::new(nginx)
        .arg("-v")
        .output()
        .expect("run nginx -v");
    let text = String::from_utf8_lossy(&out.stderr);
    text.trim()
        .trim_start_matches("nginx version: ")
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// A protected static location, a protected proxied location passing the identity to an
/// echo server on `{PORT2}`, and the certs endpoint.
fn site(key: &KeyPair) -> (CertsServer, Nginx) {
    let certs = CertsServer::start_with_keys(&[key]);
    let nginx = Nginx::builder()
        .file("static/index.html", "protected\n")
        .http(&format!(
            r#"
    cf_access_team_domain {TEAM};
    cf_access_aud {AUD};
    cf_access_certs_url {url};
    server {{
        listen 127.0.0.1:{{PORT}};
        root {{PREFIX}}/html;
        location /static/ {{
            cf_access on;
            add_header X-Email $cf_access_email always;
            add_header X-Status $cf_access_status always;
        }}
        location /app/ {{
            cf_access on;
            proxy_set_header X-User-Email $cf_access_email;
            proxy_set_header X-User-Sub $cf_access_sub;
            proxy_set_header X-User-Status $cf_access_status;
            proxy_pass http://127.0.0.1:{{PORT2}}/echo/;
        }}
    }}
    server {{
        listen 127.0.0.1:{{PORT2}};
        location /echo/ {{
            return 200 "email=$http_x_user_email sub=$http_x_user_sub status=$http_x_user_status\n";
        }}
    }}
"#,
            url = certs.url()
        ))
        .start();
    (certs, nginx)
}

#[test]
fn debian_nginx_verifies_tokens() {
    let Some(nginx_bin) = debian() else { return };
    let server = version(&nginx_bin);
    assert!(server.starts_with("nginx/"), "nginx -v: {server}");

    let key = KeyPair::generate();
    let (_certs, nginx) = site(&key);
    let t = now();
    let claims = user_claims(TEAM, AUD, "alice@example.com", t, 600);

    // Valid token: 200, the email in $cf_access_email, served by Debian's nginx.
    let r = nginx.get("/static/", &[(HDR, &mint(&key, &claims))]);
    assert_eq!(r.status, 200, "{}", nginx.error_log());
    assert_eq!(r.body, "protected\n");
    assert_eq!(r.header("X-Email"), Some("alice@example.com"));
    assert_eq!(r.header("X-Status"), Some("ok"));
    assert_eq!(r.header("Server"), Some(server.as_str()));

    // Missing token.
    let r = nginx.get("/static/", &[]);
    assert_eq!(r.status, 403);
    assert_eq!(r.header("X-Status"), Some("no_token"));

    // Expired (beyond the 60 s leeway).
    let mut expired = claims.clone();
    expired["exp"] = json!(t - 3600);
    let r = nginx.get("/static/", &[(HDR, &mint(&key, &expired))]);
    assert_eq!(r.status, 403);
    assert_eq!(r.header("X-Status"), Some("expired"));
    assert_eq!(r.header("X-Email"), None);

    // Another application's audience.
    let other = user_claims(TEAM, "another-app", "alice@example.com", t, 600);
    let r = nginx.get("/static/", &[(HDR, &mint(&key, &other))]);
    assert_eq!(r.status, 403);
    assert_eq!(r.header("X-Status"), Some("bad_audience"));

    assert!(
        nginx.error_log().contains("access denied (expired)"),
        "{}",
        nginx.error_log()
    );
}

#[test]
fn debian_nginx_passes_variables_upstream() {
    let Some(_dir) = debian() else { return };
    let key = KeyPair::generate();
    let (_certs, nginx) = site(&key);
    let claims = user_claims(TEAM, AUD, "bob@example.com", now(), 600);
    let sub = claims["sub"].as_str().unwrap_or_default().to_string();
    assert!(!sub.is_empty());

    let token = mint(&key, &claims);
    let r = nginx.get(
        "/app/",
        &[(HDR, &token), ("X-User-Email", "mallory@example.com")],
    );
    assert_eq!(r.status, 200, "{}", nginx.error_log());
    assert_eq!(
        r.body,
        format!("email=bob@example.com sub={sub} status=ok\n")
    );

    // The cookie works as well; without a token nothing reaches the upstream.
    let r = nginx.get("/app/", &[("Cookie", &format!("CF_Authorization={token}"))]);
    assert_eq!(r.status, 200);
    let r = nginx.get("/app/", &[("X-User-Email", "mallory@example.com")]);
    assert_eq!(r.status, 403);
}

/// The module built against the vendored nginx (`target/<profile>/`) is refused by Debian's
/// nginx with a version mismatch: the error README's "Build for your nginx" explains.
#[test]
fn debian_nginx_refuses_a_module_built_for_another_version() {
    let Some(nginx_bin) = debian() else { return };
    let vendored = std::env::current_exe().ok().and_then(|exe| {
        Some(
            exe.parent()?
                .parent()?
                .join("libngx_http_cf_access_module.so"),
        )
    });
    let Some(vendored) = vendored.filter(|p| p.is_file()) else {
        eprintln!("skipped: no vendored build of the module next to the test binary");
        return;
    };
    let debian_version = version(&nginx_bin);
    let number = |v: &str| -> String {
        let mut parts = v.trim_start_matches("nginx/").split('.').map(|p| {
            p.parse::<u32>()
                .unwrap_or_else(|_| panic!("nginx version {v}"))
        });
        let (a, b, c) = (
            parts.next().unwrap_or(0),
            parts.next().unwrap_or(0),
            parts.next().unwrap_or(0),
        );
        format!("{}", a * 1_000_000 + b * 1_000 + c)
    };
    let (ok, out) = Nginx::builder()
        .without_module()
        .main(&format!("load_module {};", vendored.display()))
        .http("server { listen 127.0.0.1:{PORT}; }")
        .test_config();
    assert!(
        !ok,
        "a module built for another nginx must be refused:\n{out}"
    );
    let expected = format!("instead of {}", number(&debian_version));
    assert!(
        out.contains("[emerg]") && out.contains(&expected),
        "expected \"{expected}\" in:\n{out}"
    );
}
