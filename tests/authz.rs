//! Authorization and identity in every phase: `cf_access_require`, the `$cf_access_*`
//! variables in the rewrite and preaccess phases and in `map`, `return` in a protected
//! location, subrequests (`auth_request`, SSI, `mirror`), duplicate cookies over HTTP/1.1
//! and HTTP/2, and report mode.

// A test: a panic is a failed assertion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::Duration;

use cf_access_dev::{mint, now, service_claims, CertsServer, KeyPair};
use cf_access_testkit::site::{claims, token, token_for, AUD, COOKIE, EMAIL, HDR, OTHER_AUD, TEAM};
use cf_access_testkit::{http_request, wait_until, Nginx, Response};
use serde_json::json;

/// A key, its certs endpoint, and an nginx with the team settings at http level (keys from
/// that endpoint) and `http`.
fn site(http: &str) -> (KeyPair, CertsServer, Nginx) {
    let key = KeyPair::generate();
    let certs = CertsServer::start_with_keys(&[&key]);
    let nginx = Nginx::builder()
        .file("p/index.html", "protected\n")
        .file("secret.html", "the secret\n")
        .file("open.html", "before <!--# include virtual=\"/p/secret.html\" --> after\n")
        .http(&format!(
            "cf_access_team_domain {TEAM};\n    cf_access_aud {AUD};\n    cf_access_certs_url {};\n{http}",
            certs.url()
        ))
        .start();
    (key, certs, nginx)
}

fn get(nginx: &Nginx, path: &str, token: Option<&str>) -> Response {
    match token {
        Some(t) => nginx.get(path, &[(HDR, t)]),
        None => nginx.get(path, &[]),
    }
}

/// A user token for AUD whose claims `patch` changes.
fn token_with(key: &KeyPair, patch: impl FnOnce(&mut serde_json::Value)) -> String {
    let mut c = claims();
    patch(&mut c);
    mint(key, &c)
}

#[test]
fn variables_hold_the_verified_identity_in_the_rewrite_phase() {
    let (key, _certs, nginx) = site(
        r#"
    map $cf_access_email $class {
        ~@example\.com$ staff;
        default         guest;
    }
    server {
        listen 127.0.0.1:{PORT};
        root {PREFIX}/html;
        cf_access on;
        set $who_early $cf_access_email;
        location /p/ {
            add_header X-Who-Early $who_early always;
            if ($class = guest) {
                return 403 "guests stay out\n";
            }
            set $who $cf_access_email;
            add_header X-Who $who always;
            add_header X-Class $class always;
            add_header X-Status $cf_access_status always;
        }
    }
"#,
    );
    let r = get(&nginx, "/p/index.html", Some(&token(&key)));
    assert_eq!(r.status, 200, "{}", nginx.error_log());
    assert_eq!(r.header("X-Who"), Some(EMAIL), "set in the location rewrite phase");
    assert_eq!(r.header("X-Who-Early"), Some(EMAIL), "set in the server rewrite phase");
    assert_eq!(r.header("X-Class"), Some("staff"), "the map read early keeps the verified value");

    let outsider = token_for(&key, AUD, "eve@elsewhere.org");
    let r = get(&nginx, "/p/index.html", Some(&outsider));
    assert_eq!((r.status, r.body.as_str()), (403, "guests stay out\n"));

    // No token: refused by the module before the `if` (whose map says guest) runs.
    let r = get(&nginx, "/p/index.html", None);
    assert_eq!((r.status, r.header("X-Status")), (403, Some("no_token")));
    assert!(!r.body.contains("guests stay out"));
    nginx.assert_clean(&[]);
}

#[test]
fn a_return_in_a_protected_location_needs_a_token() {
    let (key, _certs, nginx) = site(
        r#"
    server {
        listen 127.0.0.1:{PORT};
        root {PREFIX}/html;
        location = /r {
            cf_access on;
            return 200 "answered by return\n";
        }
        location = /moved {
            cf_access on;
            rewrite ^ /elsewhere redirect;
        }
    }
"#,
    );
    let r = get(&nginx, "/r", None);
    assert_eq!(r.status, 403);
    assert!(!r.body.contains("answered by return"));
    assert_eq!(get(&nginx, "/r", Some(&token(&key))).body, "answered by return\n");
    assert_eq!(get(&nginx, "/moved", None).status, 403);
    assert_eq!(get(&nginx, "/moved", Some(&token(&key))).status, 302);
    assert!(nginx.error_log().contains("access denied (no_token)"), "{}", nginx.error_log());
    nginx.assert_clean(&[]);
}

#[test]
fn nginx_t_warns_where_satisfy_any_lets_a_return_answer_first() {
    let (ok, out) = Nginx::builder()
        .http(&format!(
            r#"
    cf_access_team_domain {TEAM};
    cf_access_aud {AUD};
    server {{
        listen 127.0.0.1:{{PORT}};
        cf_access on;
        location = /any {{
            satisfy any;
            allow 10.0.0.0/8;
            deny all;
            return 200 "x";
        }}
        location = /all {{
            return 200 "x";
        }}
        location = /any-files {{
            satisfy any;
            deny all;
        }}
    }}
"#
        ))
        .test_config();
    assert!(ok, "{out}");
    // nginx -t prints the warning on stderr and writes it to the error log: once each.
    let warnings: Vec<&str> = out.lines().filter(|l| l.contains("[warn]")).collect();
    assert!(!warnings.is_empty(), "{out}");
    for w in warnings {
        assert!(
            w.contains("cf_access: location \"/any\"") && w.contains("\"satisfy any\""),
            "only /any (satisfy any and a return) deserves a warning: {out}"
        );
    }
}

#[test]
fn a_per_user_rate_limit_keys_on_the_verified_email() {
    let (key, _certs, nginx) = site(
        r#"
    limit_req_zone $cf_access_email zone=users:1m rate=1r/m;
    server {
        listen 127.0.0.1:{PORT};
        root {PREFIX}/html;
        location /p/ {
            cf_access on;
            limit_req zone=users burst=1 nodelay;
            limit_req_status 429;
        }
    }
"#,
    );
    let alice = token(&key);
    let bob = token_for(&key, AUD, "bob@example.com");
    let statuses: Vec<u16> =
        (0..3).map(|_| get(&nginx, "/p/index.html", Some(&alice)).status).collect();
    assert_eq!(statuses, [200, 200, 429], "alice is limited");
    assert_eq!(get(&nginx, "/p/index.html", Some(&bob)).status, 200, "bob is not");
    nginx.assert_clean(&[]);
}

#[test]
fn subrequests_to_a_protected_location_need_a_token() {
    // The mirror's upstream: any loopback server that counts what reaches it.
    let backend = CertsServer::start_with_keys(&[]);
    let (key, _certs, nginx) = site(&format!(
        r#"
    server {{
        listen 127.0.0.1:{{PORT}};
        root {{PREFIX}}/html;
        location = /open.html {{
            ssi on;
        }}
        location /p/ {{
            cf_access on;
            alias {{PREFIX}}/html/;
        }}
        location /app/ {{
            auth_request /cf-verify;
            alias {{PREFIX}}/html/;
        }}
        location = /cf-verify {{
            internal;
            cf_access on;
            cf_access_aud {OTHER_AUD};
            return 204;
        }}
        location /m/ {{
            mirror /mirror;
            alias {{PREFIX}}/html/;
        }}
        location = /mirror {{
            internal;
            cf_access on;
            proxy_pass {backend};
        }}
    }}
"#,
        backend = backend.url()
    ));
    // SSI: an open page including a protected one.
    let r = get(&nginx, "/open.html", None);
    assert_eq!(r.status, 200);
    assert!(r.body.starts_with("before") && !r.body.contains("the secret"), "{}", r.body);
    let r = get(&nginx, "/open.html", Some(&token(&key)));
    assert!(r.body.contains("the secret"), "{}", r.body);

    // auth_request to a location that demands another application's token.
    assert_eq!(get(&nginx, "/app/secret.html", None).status, 403);
    assert_eq!(get(&nginx, "/app/secret.html", Some(&token(&key))).status, 403, "wrong aud");
    let other = token_for(&key, OTHER_AUD, EMAIL);
    let r = get(&nginx, "/app/secret.html", Some(&other));
    assert_eq!((r.status, r.body.as_str()), (200, "the secret\n"));

    // mirror: the protected upstream is reached only with a token.
    assert_eq!(get(&nginx, "/m/secret.html", None).status, 200);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(backend.hits(), 0, "the mirror reached the upstream without a token");
    assert_eq!(get(&nginx, "/m/secret.html", Some(&token(&key))).status, 200);
    wait_until(Duration::from_secs(3), "the mirrored request", || backend.hits() == 1);
    nginx.assert_clean(&[]);
}

/// curl over HTTP/2 with prior knowledge (h2c), two `Cookie` fields.
fn curl_h2(port: u16, cookies: &[String]) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "--http2-prior-knowledge", "--noproxy", "*", "-o", "/dev/null"])
        .args(["-w", "%{http_version} %{http_code}"]);
    for c in cookies {
        cmd.arg("-H").arg(format!("Cookie: {c}"));
    }
    let out = cmd
        .arg(format!("http://127.0.0.1:{port}/p/index.html"))
        .output()
        .expect("curl (Debian: apt-get install curl)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (version, code) = text.split_once(' ').unwrap_or(("", ""));
    (code.parse().unwrap_or(0), version.to_string())
}

#[test]
fn two_cf_authorization_cookies_are_malformed() {
    let (key, _certs, nginx) = site(
        r#"
    server {
        listen 127.0.0.1:{PORT};
        http2 on;
        root {PREFIX}/html;
        location /p/ {
            cf_access on;
            add_header X-Status $cf_access_status always;
        }
    }
"#,
    );
    let good = token(&key);
    let forged = token_with(&KeyPair::generate(), |_| {});
    let one = format!("{COOKIE}={good}");
    let r = nginx.get("/p/index.html", &[("Cookie", &one)]);
    assert_eq!(r.status, 200, "one cookie is fine");
    let both = format!("{COOKIE}={good}; {COOKIE}={forged}");
    let r = nginx.get("/p/index.html", &[("Cookie", &both)]);
    assert_eq!((r.status, r.header("X-Status")), (403, Some("malformed")));
    let r = http_request(
        nginx.port(),
        "GET",
        "/p/index.html",
        &[("Cookie", &one), ("Cookie", &format!("x=1; {COOKIE}={forged}"))],
        None,
    )
    .unwrap();
    assert_eq!((r.status, r.header("X-Status")), (403, Some("malformed")));
    // The assertion header decides; cookies are not looked at then.
    let r = nginx.get("/p/index.html", &[(HDR, &good), ("Cookie", &both)]);
    assert_eq!(r.status, 200);

    // HTTP/2: cookie fields (nginx joins them), one or two.
    assert_eq!(curl_h2(nginx.port(), std::slice::from_ref(&one)), (200, "2".into()));
    assert_eq!(curl_h2(nginx.port(), &[one, format!("{COOKIE}={forged}")]), (403, "2".into()));
    assert!(nginx.error_log().contains(
        "access denied (malformed): malformed token: more than one CF_Authorization cookie"
    ));
    nginx.assert_clean(&[]);
}

#[test]
fn report_mode_never_denies_and_logs_the_verdict() {
    let (key, _certs, nginx) = site(
        r#"
    server {
        listen 127.0.0.1:{PORT};
        root {PREFIX}/html;
        location /p/ {
            cf_access report;
            cf_access_require $cf_access_common_name;
            add_header X-Status $cf_access_status always;
            add_header X-Email $cf_access_email always;
        }
    }
"#,
    );
    let r = get(&nginx, "/p/index.html", None);
    assert_eq!((r.status, r.header("X-Status")), (200, Some("no_token")));
    let r = get(&nginx, "/p/index.html", Some(&token(&KeyPair::generate())));
    assert_eq!((r.status, r.header("X-Status")), (200, Some("unknown_kid")));
    let r = get(&nginx, "/p/index.html", Some(&token(&key)));
    assert_eq!(
        (r.status, r.header("X-Status"), r.header("X-Email")),
        (200, Some("not_allowed"), Some(EMAIL)),
        "a user token has no common_name: the require rule fails, and is only reported"
    );
    let service = mint(&key, &service_claims(TEAM, AUD, "svc.access", now(), 600));
    let r = get(&nginx, "/p/index.html", Some(&service));
    assert_eq!((r.status, r.header("X-Status")), (200, Some("ok")));
    let log = nginx.error_log();
    for line in [
        "cf_access: report: access would be denied (no_token)",
        "cf_access: report: access would be denied (unknown_kid)",
        "cf_access: report: access would be denied (not_allowed)",
    ] {
        assert!(log.contains(line), "{line}:\n{log}");
    }
    assert!(!log.contains("cf_access: access denied"), "{log}");
    nginx.assert_clean(&[]);
}

#[test]
fn require_rules_inherit_override_and_combine_with_satisfy() {
    let (key, _certs, nginx) = site(
        r#"
    map $cf_access_claim_groups $finance {
        "~\"finance\"" 1;
        default    0;
    }
    cf_access_require $cf_access_email;
    server {
        listen 127.0.0.1:{PORT};
        root {PREFIX}/html;
        add_header X-Status $cf_access_status always;
        cf_access on;
        location /p/ {
            alias {PREFIX}/html/;
        }
        location /finance/ {
            alias {PREFIX}/html/;
            cf_access_require $finance error=401;
        }
        location /api/ {
            alias {PREFIX}/html/;
            cf_access_require $cf_access_common_name;
        }
        location /lan/ {
            alias {PREFIX}/html/;
            satisfy any;
            allow 127.0.0.1;
            deny all;
            cf_access_require $finance;
        }
        location /wan/ {
            alias {PREFIX}/html/;
            satisfy any;
            allow 10.0.0.0/8;
            deny all;
            cf_access_require $finance;
        }
    }
"#,
    );
    let user = token(&key);
    let finance = token_with(&key, |c| c["groups"] = json!(["eng", "finance"]));
    let service = mint(&key, &service_claims(TEAM, AUD, "svc.access", now(), 600));
    let status = |path: &str, t: &str| {
        let r = get(&nginx, path, Some(t));
        (r.status, r.header("X-Status").unwrap_or("").to_string())
    };
    let denied = |code| (code, "not_allowed".to_string());
    let ok = (200, "ok".to_string());
    // Inherited from http: an email is required (a service token has none).
    assert_eq!(status("/p/secret.html", &user), ok);
    assert_eq!(status("/p/secret.html", &service), denied(403));
    // Overridden: only the location's rule applies, with its error code.
    assert_eq!(status("/finance/secret.html", &finance), ok);
    assert_eq!(status("/finance/secret.html", &user), denied(401));
    assert_eq!(status("/api/secret.html", &service), ok);
    assert_eq!(status("/api/secret.html", &user), denied(403));
    // satisfy any: the address lets in whoever the rule refuses ...
    assert_eq!(status("/lan/secret.html", &user).0, 200);
    // ... and where the address does not, the token must meet the rule.
    assert_eq!(status("/wan/secret.html", &finance), ok);
    assert_eq!(status("/wan/secret.html", &user), denied(403));
    assert_eq!(get(&nginx, "/wan/secret.html", None).status, 403);
    let log = nginx.error_log();
    assert!(
        log.lines().any(|l| l.contains("[info]")
            && l.contains("access denied (not_allowed): \"cf_access_require\" in ")
            && l.contains("is not met")),
        "{log}"
    );
    nginx.assert_clean(&[]);
}

#[test]
fn the_token_is_verified_once_however_many_variables_are_read() {
    let (key, _certs, nginx) = site(
        r#"
    map $cf_access_sub $sub_seen { default $cf_access_sub; }
    limit_req_zone $cf_access_email zone=users:1m rate=100r/s;
    server {
        listen 127.0.0.1:{PORT};
        root {PREFIX}/html;
        location /p/ {
            cf_access on;
            set $e $cf_access_email;
            limit_req zone=users burst=100;
            add_header X-A $cf_access_email always;
            add_header X-B $sub_seen always;
            add_header X-C $cf_access_claim_email always;
            add_header X-D $e always;
        }
        location = /metrics { cf_access_metrics; }
    }
"#,
    );
    let lookups = || {
        let m = nginx.get("/metrics?format=json", &[]);
        let v: serde_json::Value = serde_json::from_str(&m.body).unwrap();
        v["cache"]["hits"].as_u64().unwrap() + v["cache"]["misses"].as_u64().unwrap()
    };
    let t = token(&key);
    let before = lookups();
    let r = get(&nginx, "/p/index.html", Some(&t));
    assert_eq!(r.status, 200);
    assert_eq!(r.header("X-A"), Some(EMAIL));
    assert_eq!(r.header("X-C"), Some(EMAIL));
    assert_eq!(r.header("X-D"), Some(EMAIL));
    assert!(r.header("X-B").is_some_and(|s| !s.is_empty()));
    assert_eq!(lookups() - before, 1, "one verification for the whole request");
    nginx.assert_clean(&[]);
}
