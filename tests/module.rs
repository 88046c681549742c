//! End-to-end tests: the real nginx binary with the module, a loopback certs endpoint in
//! Cloudflare's shape, and tokens minted here.

// A test: a panic is a failed assertion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use cf_access_dev::{
    mint, now, service_claims, sign_hs256, sign_raw, user_claims, CertsServer, KeyPair,
};
use cf_access_testkit::site::{claims, AUD, COOKIE, HDR, TEAM};
use cf_access_testkit::{poll_until, Nginx, Response};
use serde_json::{json, Value};

/// Keys, a certs server and an nginx with a protected static location, a proxied location
/// that passes the identity upstream, subrequest locations and an open child location.
struct Site {
    current: KeyPair,
    previous: KeyPair,
    _certs: CertsServer,
    nginx: Nginx,
}

fn site() -> Site {
    let previous = KeyPair::generate();
    let current = KeyPair::generate();
    let certs = CertsServer::start_with_keys(&[&previous, &current]);
    let nginx = Nginx::builder()
        .file("static/index.html", "protected\n")
        .file("open/index.html", "open\n")
        .file("static/open/index.html", "open child\n")
        .file("ar/index.html", "behind auth_request\n")
        .file("any/index.html", "satisfy any\n")
        .http(&format!(
            r#"
    log_format upstream '$http_x_user_email|$http_x_user_sub';
    cf_access_team_domain https://{TEAM}/;
    cf_access_aud other-app {AUD};
    cf_access_certs_url {url};
    server {{
        listen 127.0.0.1:{{PORT}};
        root {{PREFIX}}/html;
        location /static/ {{
            cf_access on;
            add_header X-Email $cf_access_email always;
            add_header X-Sub $cf_access_sub always;
            add_header X-Status $cf_access_status always;
            location /static/open/ {{ cf_access off; }}
        }}
        location /open/ {{ }}
        location /app/ {{
            cf_access on;
            proxy_set_header X-User-Email $cf_access_email;
            proxy_set_header X-User-Sub $cf_access_sub;
            proxy_pass http://127.0.0.1:{{PORT2}}/echo/;
        }}
        location /ar/ {{
            cf_access on;
            auth_request /authz;
        }}
        location = /authz {{
            internal;
            proxy_pass http://127.0.0.1:{{PORT2}}/authz;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header X-User-Email $cf_access_email;
        }}
        location /mirrored/ {{
            cf_access on;
            mirror /mirror;
            proxy_pass http://127.0.0.1:{{PORT2}}/echo/;
        }}
        location = /mirror {{
            internal;
            proxy_set_header X-User-Email $cf_access_email;
            proxy_set_header X-User-Sub mirror;
            proxy_pass http://127.0.0.1:{{PORT2}}/mirror-sink;
        }}
        location /any/ {{
            satisfy any;
            allow 127.0.0.2;
            deny all;
            cf_access on;
        }}
    }}
    server {{
        listen 127.0.0.1:{{PORT2}};
        access_log {{PREFIX}}/logs/upstream.log upstream;
        location /echo/ {{ return 200 "email=$http_x_user_email sub=$http_x_user_sub\n"; }}
        location = /authz {{
            if ($http_x_user_email = "") {{ return 401; }}
            return 204;
        }}
        location = /mirror-sink {{ return 204; }}
    }}
"#,
            url = certs.url()
        ))
        .start();
    Site { current, previous, _certs: certs, nginx }
}

fn with(mut v: Value, patch: impl FnOnce(&mut Value)) -> Value {
    patch(&mut v);
    v
}

fn header_of(alg: &str, kid: &str) -> String {
    json!({"alg": alg, "kid": kid, "typ": "JWT"}).to_string()
}

impl Site {
    fn get(&self, path: &str, headers: &[(&str, &str)]) -> Response {
        self.nginx.get(path, headers)
    }

    fn with_token(&self, path: &str, token: &str) -> Response {
        self.get(path, &[(HDR, token)])
    }

    /// Asserts a 403 whose logged reason is `status`.
    fn denied(&self, token: &str, status: &str) {
        let r = self.with_token("/static/", token);
        assert_eq!(r.status, 403, "expected 403 ({status}), got {}", r.status);
        assert_eq!(r.header("X-Status"), Some(status));
        assert_eq!(r.header("X-Email"), None, "no identity on a denied request");
        assert!(
            self.nginx.wait_for_log(&format!("access denied ({status})"), Duration::from_secs(2)),
            "no log line for {status}:\n{}",
            self.nginx.error_log()
        );
    }
}

#[test]
fn verifies_tokens_end_to_end() {
    let s = site();
    let good = mint(&s.current, &claims());

    // A valid header token.
    let r = s.with_token("/static/", &good);
    assert_eq!(r.status, 200, "{}", s.nginx.error_log());
    assert_eq!(r.body, "protected\n");
    assert_eq!(r.header("X-Email"), Some("alice@example.com"));
    assert_eq!(r.header("X-Status"), Some("ok"));
    assert!(r.header("X-Sub").is_some_and(|s| !s.is_empty()));

    // Valid cookie only.
    let r = s.get("/static/", &[("Cookie", &format!("a=b; {COOKIE}={good}; c=d"))]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("X-Email"), Some("alice@example.com"));

    // The header wins over the cookie (a bad header is not rescued by a good cookie).
    let cookie = format!("{COOKIE}={good}");
    let r = s.get("/static/", &[(HDR, "x.y.z"), ("Cookie", &cookie)]);
    assert_eq!(r.status, 403);
    let bob = mint(&s.current, &user_claims(TEAM, AUD, "bob@example.com", now(), 600));
    let r = s.get("/static/", &[(HDR, &bob), ("Cookie", &cookie)]);
    assert_eq!(r.header("X-Email"), Some("bob@example.com"));

    // Missing token.
    let r = s.get("/static/", &[]);
    assert_eq!(r.status, 403);
    assert_eq!(r.header("X-Status"), Some("no_token"));
    assert!(s.nginx.wait_for_log("access denied (no_token)", Duration::from_secs(2)));
}

#[test]
fn claims_are_enforced() {
    let s = site();
    let t = now();
    let key = &s.current;
    s.denied(&mint(key, &with(claims(), |c| c["exp"] = (t - 3600).into())), "expired");
    // Expired 10 s ago: inside the default 60 s leeway.
    let r = s.with_token("/static/", &mint(key, &with(claims(), |c| c["exp"] = (t - 10).into())));
    assert_eq!(r.status, 200);
    s.denied(&mint(key, &with(claims(), |c| c["nbf"] = (t + 3600).into())), "not_yet_valid");
    s.denied(&mint(key, &with(claims(), |c| c["aud"] = json!(["not-ours"]))), "bad_audience");
    s.denied(&mint(key, &with(claims(), |c| c["type"] = "org".into())), "bad_audience");
    // aud as a plain string; aud array with another tag first.
    let r = s.with_token("/static/", &mint(key, &with(claims(), |c| c["aud"] = AUD.into())));
    assert_eq!(r.status, 200);
    let r = s.with_token(
        "/static/",
        &mint(key, &with(claims(), |c| c["aud"] = json!(["someone-else", AUD]))),
    );
    assert_eq!(r.status, 200);
    s.denied(
        &mint(key, &with(claims(), |c| c["iss"] = "https://evil.cloudflareaccess.com".into())),
        "bad_issuer",
    );
}

#[test]
fn forged_tokens_are_refused() {
    let s = site();
    let payload = claims().to_string();
    let good = mint(&s.current, &claims());

    // Tampered payload: the signature no longer matches.
    let mut parts: Vec<String> = good.split('.').map(str::to_string).collect();
    let evil = with(claims(), |c| c["email"] = "mallory@example.com".into());
    parts[1] = cf_access_dev::b64(evil.to_string().as_bytes());
    s.denied(&parts.join("."), "bad_signature");

    // alg none, with and without a signature.
    let none = format!(
        "{}.{}.",
        cf_access_dev::b64(br#"{"alg":"none","typ":"JWT"}"#),
        cf_access_dev::b64(payload.as_bytes())
    );
    s.denied(&none, "bad_alg");
    s.denied(&format!("{none}c2ln"), "bad_alg");

    // HS256 keyed with the public key (key confusion).
    let hs =
        sign_hs256(&s.current.public_key_der(), &header_of("HS256", s.current.kid()), &payload);
    s.denied(&hs, "bad_alg");
    let hs_pem = sign_hs256(
        s.current.public_key_pem().as_bytes(),
        &header_of("HS256", s.current.kid()),
        &payload,
    );
    s.denied(&hs_pem, "bad_alg");

    // RS384 with the right key.
    let rs384 = sign_raw(&s.current, "RS384", &header_of("RS384", s.current.kid()), &payload);
    s.denied(&rs384, "bad_alg");

    // Unknown kid; a key that is not published, claiming a published kid.
    let stranger = KeyPair::generate();
    s.denied(&mint(&stranger, &claims()), "unknown_kid");
    let spoofed = sign_raw(&stranger, "RS256", &header_of("RS256", s.current.kid()), &payload);
    s.denied(&spoofed, "bad_signature");
}

#[test]
fn previous_key_and_service_tokens_are_valid() {
    let s = site();
    let r = s.with_token("/static/", &mint(&s.previous, &claims()));
    assert_eq!(r.status, 200, "a token signed by the previous key is still valid");

    let service = service_claims(TEAM, AUD, "0123abcd.access", now(), 600);
    let r = s.with_token("/static/", &mint(&s.current, &service));
    assert_eq!(r.status, 200, "{}", s.nginx.error_log());
    assert_eq!(r.header("X-Status"), Some("ok"));
    assert_eq!(r.header("X-Email"), None, "a service token has no email");
}

#[test]
fn child_location_can_turn_it_off_and_satisfy_any_works() {
    let s = site();
    let r = s.get("/static/open/", &[]);
    assert_eq!(r.status, 200, "cf_access off in a nested location");
    assert_eq!(r.header("X-Status"), None);
    assert_eq!(s.get("/open/", &[]).status, 200);

    // satisfy any: the IP rule denies, so the token decides.
    assert_eq!(s.get("/any/", &[]).status, 403);
    let r = s.with_token("/any/", &mint(&s.current, &claims()));
    assert_eq!(r.status, 200);
}

#[test]
fn variables_reach_upstreams_and_subrequests() {
    let s = site();
    let good = mint(&s.current, &claims());
    let r = s.with_token("/app/", &good);
    assert_eq!(r.status, 200);
    assert!(r.body.starts_with("email=alice@example.com sub="), "{}", r.body);
    assert!(!r.body.trim_end().ends_with("sub="), "sub is passed: {}", r.body);

    // Not verified: no upstream request at all, and a spoofed header is not reflected.
    let r = s.get("/app/", &[("X-User-Email", "mallory@example.com")]);
    assert_eq!(r.status, 403);

    // auth_request's subrequest sees the main request's verified email.
    let r = s.with_token("/ar/", &good);
    assert_eq!(r.status, 200, "{}", s.nginx.error_log());
    assert_eq!(r.body, "behind auth_request\n");

    // mirror's subrequest too.
    let r = s.with_token("/mirrored/", &good);
    assert_eq!(r.status, 200);
    let log = s.nginx.prefix().join("logs/upstream.log");
    let mut text = String::new();
    let mirrored = poll_until(Duration::from_secs(3), || {
        text = std::fs::read_to_string(&log).unwrap_or_default();
        text.contains("alice@example.com|mirror")
    });
    assert!(mirrored, "mirror subrequest log:\n{text}");
}

#[test]
fn periodic_refresh_picks_up_a_rotated_key_set() {
    let old = KeyPair::generate();
    let new = KeyPair::generate();
    let certs = CertsServer::start_with_keys(&[&old]);
    let nginx = Nginx::builder()
        .protected_site((TEAM, AUD, &certs.url()), "cf_access_refresh 1s;", "")
        .start();
    let token = mint(&new, &claims());
    assert_eq!(nginx.get("/p/", &[(HDR, &token)]).status, 403);
    certs.set_keys(&[&old, &new]);
    nginx.wait_until(Duration::from_secs(10), "the rotated key to be picked up", || {
        nginx.get("/p/", &[(HDR, &token)]).status == 200
    });
}

#[test]
fn no_keys_fails_closed_and_recovers() {
    let key = KeyPair::generate();
    let certs = CertsServer::start(cf_access_dev::Behavior::Status(500, "oops".into()));
    let nginx = Nginx::builder().protected_site((TEAM, AUD, &certs.url()), "", "").start();
    let token = mint(&key, &claims());
    let r = nginx.get("/p/", &[(HDR, &token)]);
    assert_eq!(r.status, 403);
    assert_eq!(r.header("X-Status"), Some("no_keys"));
    assert!(nginx.error_log().contains("http status 500"));
    // The refresher retries after a failure (5 s first backoff) and the endpoint heals.
    certs.set_keys(&[&key]);
    nginx.wait_until(Duration::from_secs(15), "recovery", || {
        nginx.get("/p/", &[(HDR, &token)]).status == 200
    });
}

/// `nginx -t` on a config with the given http-level text; returns (ok, output).
fn test_config(http: &str) -> (bool, String) {
    Nginx::builder()
        .http(&format!("server {{ listen 127.0.0.1:{{PORT}}; {http} location / {{ }} }}"))
        .test_config()
}

#[test]
fn config_errors_at_nginx_t() {
    let base = format!("cf_access_team_domain {TEAM}; cf_access_aud {AUD};");
    let (ok, out) = test_config(&format!("{base} cf_access on;"));
    assert!(ok, "a good config passes: {out}");

    let cases = [
        (
            "cf_access on;".to_string(),
            "no \"cf_access_team_domain\" is defined for the \"cf_access\" directive",
        ),
        (format!("cf_access_team_domain {TEAM}; cf_access on;"), "no \"cf_access_aud\" is defined"),
        (format!("{base} cf_access maybe;"), "invalid value \"maybe\" in \"cf_access\" directive"),
        (format!("{base} cf_access on; cf_access off;"), "\"cf_access\" directive is duplicate"),
        (format!("{base} cf_access_aud again;"), "\"cf_access_aud\" directive is duplicate"),
        (
            format!("{base} cf_access_leeway soon;"),
            "invalid value \"soon\" in \"cf_access_leeway\" directive",
        ),
        (
            "cf_access_team_domain bad_domain;".to_string(),
            "invalid value \"bad_domain\" in \"cf_access_team_domain\" directive",
        ),
        (
            format!("{base} cf_access_certs_url ftp://x/;"),
            "invalid value \"ftp://x/\" in \"cf_access_certs_url\" directive",
        ),
        (
            format!("{base} cf_access_refresh 0;"),
            "\"cf_access_refresh\" directive is not allowed here",
        ),
        (
            format!("{base} cf_access_team_domain {TEAM};"),
            "\"cf_access_team_domain\" directive is duplicate",
        ),
    ];
    for (conf, expected) in cases {
        let (ok, out) = test_config(&conf);
        assert!(!ok, "{conf} must fail");
        assert!(out.contains("[emerg]"), "{conf}: {out}");
        assert!(out.contains(expected), "{conf}: expected {expected:?} in:\n{out}");
    }
    // http-level directives are checked too.
    let (ok, out) = Nginx::builder()
        .http("cf_access_refresh never; server { listen 127.0.0.1:{PORT}; }")
        .test_config();
    assert!(
        !ok && out.contains("invalid value \"never\" in \"cf_access_refresh\" directive"),
        "{out}"
    );
}
