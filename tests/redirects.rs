//! One verification per request, also through nginx's internal redirects: a directory URL
//! (the index module), `try_files`, `error_page ... = /fallback`. nginx clears every
//! module's context on an internal redirect; the verdict is found again and reused where the
//! target location checks with the same settings. A location with another AUD verifies
//! again; one with its own `cf_access_require` applies them to the token already verified.
//! Verifications are counted by the token cache's lookups (`cf_access_metrics`, JSON): one
//! per token verified, a miss the first time and a hit after.

// A test: a panic is a failed assertion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use cf_access_dev::CertsServer;
use cf_access_testkit::site::{start_site, token, token_for, AUD, EMAIL, HDR, OTHER_AUD, TEAM};
use cf_access_testkit::Nginx;
use serde_json::Value;

/// `/on/` (a directory with an index file), `/tf/` (`try_files` into `/on/index.html`),
/// `/missing/` (`error_page 404 = /fallback`), `/named/` (`try_files` into `@named`),
/// `/to-other/` and `/to-rules/` (`try_files`
/// into a location with another AUD, and into one with its own `cf_access_require`), and
/// `/denied/` (`error_page 403` into a protected page); `/metrics` open.
fn site(certs: &CertsServer) -> Nginx {
    Nginx::builder()
        .file("on/index.html", "index\n")
        .file("fallback", "fallback\n")
        .file("other/index.html", "other app\n")
        .file("rules/index.html", "rules\n")
        .file("denied.html", "denied page\n")
        .http(&format!(
            r#"
    cf_access_team_domain {TEAM};
    cf_access_aud {AUD};
    cf_access_certs_url {url};
    server {{
        listen 127.0.0.1:{{PORT}};
        root {{PREFIX}}/html;
        cf_access on;
        add_header X-Email $cf_access_email always;
        add_header X-Status $cf_access_status always;
        location /on/ {{ }}
        location /tf/ {{
            try_files $uri /on/index.html;
        }}
        location /missing/ {{
            error_page 404 = /fallback;
        }}
        location /named/ {{
            try_files $uri @named;
        }}
        location @named {{
            root {{PREFIX}}/html/on;
            try_files /index.html =404;
        }}
        location = /fallback {{ }}
        location /to-other/ {{
            try_files $uri /other/index.html;
        }}
        location /other/ {{
            cf_access_aud {OTHER_AUD};
        }}
        location /to-rules/ {{
            try_files $uri /rules/index.html;
        }}
        location /rules/ {{
            cf_access_require $cf_access_rule_ok;
        }}
        location /denied/ {{
            error_page 403 /denied.html;
        }}
        location = /denied.html {{ }}
        location = /metrics {{
            cf_access off;
            cf_access_metrics;
        }}
    }}
    map $cf_access_email $cf_access_rule_ok {{
        bob@example.com 1;
        default "";
    }}
"#,
            url = certs.url()
        ))
        .start()
}

/// Token cache lookups (hits + misses) so far: one per token verified.
fn verifications(nginx: &Nginx) -> u64 {
    let r = nginx.get("/metrics?format=json", &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    let m: Value = serde_json::from_str(&r.body).unwrap();
    m["cache"]["hits"].as_u64().unwrap() + m["cache"]["misses"].as_u64().unwrap()
}

/// `path` with `token`: its status, body and `X-Email`, and how many verifications it took.
fn fetch(nginx: &Nginx, path: &str, token: &str) -> (u16, String, Option<String>, u64) {
    let before = verifications(nginx);
    let r = nginx.get(path, &[(HDR, token)]);
    let n = verifications(nginx) - before;
    (r.status, r.body.clone(), r.header("X-Email").map(str::to_string), n)
}

#[test]
fn a_directory_url_try_files_error_page_and_a_named_location_verify_once() {
    let (key, _certs, nginx) = start_site(site);
    let t = token(&key);
    // The file URL itself, for comparison; then the four internal redirects, twice each
    // (a miss, then cache hits: one lookup per request either way).
    for _ in 0..2 {
        for (path, body) in [
            ("/on/index.html", "index\n"),
            ("/named/x", "index\n"),
            ("/on/", "index\n"),
            ("/tf/x", "index\n"),
            ("/missing/x", "fallback\n"),
        ] {
            let (status, got, email, n) = fetch(&nginx, path, &t);
            assert_eq!((status, got.as_str()), (200, body), "{path}: {}", nginx.error_log());
            assert_eq!(email.as_deref(), Some(EMAIL), "{path}: the variables follow the verdict");
            assert_eq!(n, 1, "{path}: verified {n} times");
        }
    }
    // Without a token the first location refuses, before any redirect.
    let r = nginx.get("/on/", &[]);
    assert_eq!((r.status, r.header("X-Status")), (403, Some("no_token")));
    nginx.assert_clean(&[]);
}

#[test]
fn a_redirect_into_another_application_verifies_again() {
    let (key, _certs, nginx) = start_site(site);
    // AUD's token passes /to-other/ and is refused by /other/ (another AUD), verified twice.
    let log = nginx.log_len();
    let (status, _, email, n) = fetch(&nginx, "/to-other/x", &token(&key));
    assert_eq!(status, 403, "{}", nginx.error_log());
    assert_eq!(email, None, "a refused token shows no identity");
    assert_eq!(n, 2);
    let lines = nginx.log_since(log);
    assert_eq!(lines.matches("access denied (bad_audience)").count(), 1, "{lines}");
    // The other application's token opens /other/ directly.
    let (status, body, _, n) = fetch(&nginx, "/other/", &token_for(&key, OTHER_AUD, EMAIL));
    assert_eq!((status, body.as_str(), n), (200, "other app\n", 1));
    nginx.assert_clean(&[]);
}

#[test]
fn a_redirect_into_a_location_with_its_own_rules_applies_them_without_verifying_again() {
    let (key, _certs, nginx) = start_site(site);
    let log = nginx.log_len();
    let (status, _, _, n) = fetch(&nginx, "/to-rules/x", &token(&key));
    assert_eq!((status, n), (403, 1), "{}", nginx.error_log());
    let lines = nginx.log_since(log);
    assert_eq!(lines.matches("access denied (not_allowed)").count(), 1, "{lines}");
    let bob = token_for(&key, AUD, "bob@example.com");
    let (status, body, email, n) = fetch(&nginx, "/to-rules/x", &bob);
    assert_eq!((status, body.as_str(), n), (200, "rules\n", 1), "{}", nginx.error_log());
    assert_eq!(email.as_deref(), Some("bob@example.com"));
    nginx.assert_clean(&[]);
}

#[test]
fn a_refusal_redirected_to_a_protected_error_page_is_logged_once() {
    let (key, _certs, nginx) = start_site(site);
    let log = nginx.log_len();
    let (status, body, _, n) = fetch(&nginx, "/denied/x", &token_for(&key, OTHER_AUD, EMAIL));
    // The error page's location refuses the same token again (same settings): nginx then
    // answers with its own 403 page, not the protected one.
    assert_eq!(status, 403);
    assert!(!body.contains("denied page"), "{body}");
    assert_eq!(n, 1, "verified once");
    let lines = nginx.log_since(log);
    assert_eq!(lines.matches("access denied").count(), 1, "{lines}");
    nginx.assert_clean(&[]);
}
