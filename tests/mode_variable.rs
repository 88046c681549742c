//! `cf_access` with variables, the nginx way of per-request exceptions (as `auth_basic`
//! takes one): each request evaluates the value to `on`, `off` or `report`. The story it is
//! for: CORS preflights, which browsers send without cookies and Cloudflare Access can pass
//! to the origin unauthenticated, get through (`map $request_method ... { OPTIONS off; }`)
//! while every other method needs its token. A value that evaluates to anything else is a
//! misconfiguration: 500 and one `[error]` line, never an open door.

// A test: a panic is a failed assertion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use cf_access_dev::CertsServer;
use cf_access_testkit::site::{start_site, token, AUD, HDR, TEAM};
use cf_access_testkit::Nginx;
use serde_json::Value;

/// `/api/` (preflights answered by the location's `return 204`, other methods proxied to an
/// echo server), `/h/` (the mode from a request header, through a map with a bad value),
/// `/any/` (`satisfy any`), `/sub/` (`auth_request` to a location with the variable).
fn site(certs: &CertsServer) -> Nginx {
    Nginx::builder()
        .file("h/index.html", "static\n")
        .file("any/index.html", "any\n")
        .file("sub/index.html", "sub\n")
        .http(&format!(
            r#"
    map $request_method $cf_access_mode {{
        OPTIONS off;
        default on;
    }}
    map $http_x_mode $mode_from_header {{
        report  report;
        off     off;
        bad     maybe;
        default on;
    }}
    cf_access_team_domain {TEAM};
    cf_access_aud {AUD};
    cf_access_certs_url {url};
    server {{
        listen 127.0.0.1:{{PORT}};
        root {{PREFIX}}/html;
        add_header X-Status $cf_access_status always;
        location /api/ {{
            cf_access $cf_access_mode;
            if ($request_method = OPTIONS) {{
                add_header Access-Control-Allow-Origin https://app.example.com always;
                add_header Access-Control-Allow-Methods "GET, POST" always;
                return 204;
            }}
            proxy_pass http://127.0.0.1:{{PORT2}}/echo/;
        }}
        location /h/ {{
            cf_access $mode_from_header;
        }}
        location /any/ {{
            satisfy any;
            allow 10.9.8.7;
            deny all;
            cf_access $cf_access_mode;
        }}
        location /any-open/ {{
            satisfy any;
            allow 127.0.0.1;
            deny all;
            cf_access $cf_access_mode;
            alias {{PREFIX}}/html/any/;
        }}
        location /sub/ {{
            auth_request /check;
        }}
        location = /check {{
            internal;
            cf_access $cf_access_mode;
            proxy_pass http://127.0.0.1:{{PORT2}}/echo/;
        }}
        location = /metrics {{
            cf_access off;
            cf_access_metrics;
        }}
    }}
    server {{
        listen 127.0.0.1:{{PORT2}};
        location /echo/ {{
            return 200 "upstream $request_method\n";
        }}
    }}
"#,
            url = certs.url()
        ))
        .start()
}

/// Requests counted by `cf_access_metrics`, all statuses.
fn counted(nginx: &Nginx) -> u64 {
    let m: Value = serde_json::from_str(&nginx.get("/metrics?format=json", &[]).body).unwrap();
    m["requests"].as_object().unwrap().values().map(|v| v.as_u64().unwrap()).sum()
}

#[test]
fn a_preflight_passes_and_the_request_that_follows_needs_its_token() {
    let (key, _certs, nginx) = start_site(site);
    let before = counted(&nginx);
    let r = nginx.request("OPTIONS", "/api/items", &[("Origin", "https://app.example.com")], None);
    assert_eq!(r.status, 204, "{}", nginx.error_log());
    assert_eq!(r.header("Access-Control-Allow-Origin"), Some("https://app.example.com"));
    assert_eq!(counted(&nginx), before, "an unchecked request is not counted");

    let r = nginx.get("/api/items", &[]);
    assert_eq!((r.status, r.header("X-Status")), (403, Some("no_token")));
    let r = nginx.request("POST", "/api/items", &[], Some(b"x"));
    assert_eq!(r.status, 403);
    let r = nginx.get("/api/items", &[(HDR, &token(&key))]);
    assert_eq!((r.status, r.body.as_str()), (200, "upstream GET\n"));
    assert_eq!(counted(&nginx), before + 3);
    nginx.assert_clean(&[]);
}

#[test]
fn a_map_can_yield_report_or_off() {
    let (_key, _certs, nginx) = start_site(site);
    let log = nginx.log_len();
    let r = nginx.get("/h/", &[("X-Mode", "report")]);
    assert_eq!((r.status, r.body.as_str()), (200, "static\n"));
    assert_eq!(r.header("X-Status"), Some("no_token"), "report verifies and says so");
    assert!(nginx.log_since(log).contains("report: access would be denied (no_token)"));
    let r = nginx.get("/h/", &[("X-Mode", "off")]);
    assert_eq!((r.status, r.header("X-Status")), (200, None));
    let r = nginx.get("/h/", &[]);
    assert_eq!((r.status, r.header("X-Status")), (403, Some("no_token")));
    nginx.assert_clean(&[]);
}

#[test]
fn a_value_that_is_not_a_mode_is_refused_with_500_and_one_error_line() {
    let (key, _certs, nginx) = start_site(site);
    let t = token(&key);
    let log = nginx.log_len();
    for headers in [vec![("X-Mode", "bad")], vec![("X-Mode", "bad"), (HDR, t.as_str())]] {
        let r = nginx.get("/h/", &headers);
        assert_eq!(r.status, 500, "{}", r.body);
        assert!(!r.body.contains("static"), "nothing is served: {}", r.body);
        assert_eq!(r.header("X-Status"), None);
    }
    let lines = nginx.log_since(log);
    let errors: Vec<&str> =
        lines.lines().filter(|l| l.contains("evaluated to \"maybe\"")).collect();
    assert_eq!(errors.len(), 2, "one line per request:\n{lines}");
    assert!(errors.iter().all(|l| l.contains("[error]")), "{lines}");
    nginx.assert_clean(&[]);
}

#[test]
fn satisfy_any_and_subrequests_follow_the_evaluated_value() {
    let (key, _certs, nginx) = start_site(site);
    let t = token(&key);
    // satisfy any: another access module's "allow" lets the request in without a token;
    // where it does not, the token decides.
    assert_eq!(nginx.get("/any-open/", &[]).status, 200);
    assert_eq!(nginx.get("/any/", &[]).status, 403);
    let r = nginx.get("/any/", &[(HDR, &t)]);
    assert_eq!((r.status, r.body.as_str()), (200, "any\n"));
    // auth_request's subrequest runs in /check, where the value (the main request's method:
    // GET) is on.
    assert_eq!(nginx.get("/sub/", &[]).status, 403);
    let r = nginx.get("/sub/", &[(HDR, &t)]);
    assert_eq!((r.status, r.body.as_str()), (200, "sub\n"));
    nginx.assert_clean(&[]);
}

#[test]
fn nginx_t_wants_a_team_and_an_aud_wherever_the_value_may_be_on() {
    let (ok, out) = Nginx::builder()
        .http(
            "map $request_method $m { default on; }\n    server { listen 127.0.0.1:{PORT}; \
             location / { cf_access $m; } }",
        )
        .test_config();
    assert!(!ok && out.contains("[emerg]") && out.contains("cf_access_team_domain"), "{out}");
    let (ok, out) = Nginx::builder()
        .http("server { listen 127.0.0.1:{PORT}; location / { cf_access maybe; } }")
        .test_config();
    assert!(!ok && out.contains("invalid value \"maybe\""), "{out}");
}
