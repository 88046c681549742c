//! Another nginx and module than the vendored build: Debian's nginx with the module built for
//! it, nginx's own `./configure --add-dynamic-module` build, the Debian package's files.
//! Pointing the harness at them, and the stories every such build must pass, on one site.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Once;

use cf_access_dev::{mint, now, user_claims, CertsServer, KeyPair};
use serde_json::json;

use crate::site::{AUD, HDR, TEAM};
use crate::Nginx;

/// The file an environment variable names, if it is set and not empty.
pub fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from)
}

/// `Some((nginx, module))` when both files exist. Otherwise the tests of this build skip,
/// with a message saying `how` to provide them, unless `require` names an environment
/// variable that is set: then missing files are a failure (the scripts that prepare the
/// files set it, so that there a test cannot pass without checking anything).
pub fn available(
    nginx: &Path,
    module: &Path,
    require: &str,
    how: &str,
) -> Option<(PathBuf, PathBuf)> {
    if nginx.is_file() && module.is_file() {
        return Some((nginx.to_path_buf(), module.to_path_buf()));
    }
    assert!(
        std::env::var_os(require).is_none(),
        "{require} is set but {} or {} is missing",
        nginx.display(),
        module.display()
    );
    eprintln!("skipped: no {} or {} ({how})", nginx.display(), module.display());
    None
}

/// Points the harness (`CF_ACCESS_NGINX`, `CF_ACCESS_MODULE`, read when an nginx starts) at
/// `nginx` and `module`. Environment variables are process-wide: a test binary that calls
/// this runs every nginx with these files, so such a binary holds the tests of one build only.
pub fn use_build(nginx: &Path, module: &Path) {
    static SET_ENV: Once = Once::new();
    SET_ENV.call_once(|| {
        std::env::set_var("CF_ACCESS_NGINX", nginx);
        std::env::set_var("CF_ACCESS_MODULE", module);
    });
}

/// `nginx -v` of `nginx`, as its `Server` header says it: e.g. "nginx/1.22.1".
pub fn nginx_version(nginx: &Path) -> String {
    let out = Command::new(nginx).arg("-v").output().expect("run nginx -v");
    let version = String::from_utf8_lossy(&out.stderr)
        .trim()
        .trim_start_matches("nginx version: ")
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    assert!(version.starts_with("nginx/"), "nginx -v: {version}");
    version
}

/// The site every build is checked on: `/static/` protected (showing `$cf_access_email` and
/// `$cf_access_status`), `/app/` protected and proxied to an echo server on `{PORT2}` that
/// answers with the identity headers it got, `/healthz` open; and its certs endpoint.
pub fn identity_site(key: &KeyPair) -> (CertsServer, Nginx) {
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
            proxy_set_header X-User-Status $cf_access_status;
            proxy_pass http://127.0.0.1:{{PORT2}}/echo/;
        }}
        location = /healthz {{
            cf_access off;
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

/// On [`identity_site`]: a valid token in the header or the cookie is let in with its email
/// (answered by `server`, the nginx under test); no token, an expired one or another
/// application's is refused with its status and a log line; the open location stays open.
pub fn assert_verifies_tokens(nginx: &Nginx, key: &KeyPair, server: &str) {
    let t = now();
    let claims = user_claims(TEAM, AUD, "alice@example.com", t, 600);
    let token = mint(key, &claims);
    for header in [(HDR, token.clone()), ("Cookie", format!("CF_Authorization={token}"))] {
        let r = nginx.get("/static/", &[(header.0, header.1.as_str())]);
        assert_eq!(r.status, 200, "{}: {}", header.0, nginx.error_log());
        assert_eq!(r.body, "protected\n");
        assert_eq!(r.header("X-Email"), Some("alice@example.com"));
        assert_eq!(r.header("X-Status"), Some("ok"));
        assert_eq!(r.header("Server"), Some(server));
    }

    let r = nginx.get("/static/", &[]);
    assert_eq!((r.status, r.header("X-Status")), (403, Some("no_token")));

    // Expired beyond the 60 s leeway.
    let mut expired = claims;
    expired["exp"] = json!(t - 3600);
    let r = nginx.get("/static/", &[(HDR, &mint(key, &expired))]);
    assert_eq!((r.status, r.header("X-Status")), (403, Some("expired")));
    assert_eq!(r.header("X-Email"), None);

    let other = user_claims(TEAM, "another-app", "alice@example.com", t, 600);
    let r = nginx.get("/static/", &[(HDR, &mint(key, &other))]);
    assert_eq!((r.status, r.header("X-Status")), (403, Some("bad_audience")));

    assert!(nginx.error_log().contains("access denied (expired)"), "{}", nginx.error_log());
    let r = nginx.get("/healthz", &[]);
    assert_eq!((r.status, r.body.as_str()), (200, "ok\n"));
}

/// On [`identity_site`]: the verified identity reaches the upstream (by header or cookie),
/// replacing what the client sent in the same header; without a token nothing reaches it.
pub fn assert_passes_identity_upstream(nginx: &Nginx, key: &KeyPair) {
    let claims = user_claims(TEAM, AUD, "bob@example.com", now(), 600);
    let sub = claims["sub"].as_str().unwrap_or_default().to_string();
    assert!(!sub.is_empty());
    let token = mint(key, &claims);
    let expected = format!("email=bob@example.com sub={sub} status=ok\n");
    let cookie = format!("CF_Authorization={token}");
    for header in [(HDR, token.as_str()), ("Cookie", cookie.as_str())] {
        let r = nginx.get("/app/", &[header, ("X-User-Email", "mallory@example.com")]);
        assert_eq!(r.status, 200, "{}: {}", header.0, nginx.error_log());
        assert_eq!(r.body, expected);
    }
    let r = nginx.get("/app/", &[("X-User-Email", "mallory@example.com")]);
    assert_eq!(r.status, 403);
}
