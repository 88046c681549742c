//! The ready-made configurations in `nginx-conf/`, loaded by the real nginx with the module.
//!
//! Each example (all but `demo.conf`) is an http-context file, as it would sit in
//! `/etc/nginx/conf.d/`. A test puts it unchanged inside the harness's `http {}` (which also
//! provides `load_module`, `pid`, `error_log` and temporary paths), with only these
//! well-defined changes:
//!
//! * the `${NAME}` placeholders are filled in, as `envsubst` or the Docker image would
//!   (`NGINX_PORT` becomes `127.0.0.1:<free port>`, the `*UPSTREAM` ones an echo server's URL);
//!   a placeholder left unfilled, or a value the file does not use, fails the test;
//! * paths under `/var/log/nginx/` move to the harness's `logs/` directory;
//! * the test adds `cf_access_certs_url` (the local stand-in for Cloudflare) and its echo
//!   server next to the file, and for the allow-list `set_real_ip_from`/`real_ip_header` so
//!   that a request can come from another address;
//! * the team's get-identity URL becomes the stand-in's (plain HTTP on loopback).
//!
//! `demo.conf` (a whole nginx.conf with `@...@` placeholders, used by `scripts/demo`) is
//! checked with `nginx -t`.

// A test: a panic is a failed assertion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cf_access_dev::{
    mint, now, service_claims, user_claims, CertsServer, Group, IdentityConfig, IdentityFault,
    KeyPair,
};
use cf_access_testkit::site::{token_for, AUD, HDR, TEAM};
use cf_access_testkit::{free_port, http_request, poll_until, Nginx, NginxBuilder, Response};
use serde_json::json;

const WIKI_AUD: &str = "1b7ad5d7a6e7b4e0d5a0c2b9f1e3d4c5b6a79800112233445566778899aabbcc";
const GRAFANA_AUD: &str = "9f8e7d6c5b4a39281706f5e4d3c2b1a09f8e7d6c5b4a39281706f5e4d3c2b1a0";
/// The upstream every example proxies to in these tests: the echo server below.
const ECHO: &str = "http://127.0.0.1:{PORT2}";

/// Files in nginx-conf/ and the placeholder values their tests use.
fn examples() -> Vec<(&'static str, Vec<(&'static str, &'static str)>)> {
    let listen = ("NGINX_PORT", "127.0.0.1:{PORT}");
    let team = ("CF_ACCESS_TEAM_DOMAIN", TEAM);
    vec![
        ("cf-access.conf", vec![listen, team, ("CF_ACCESS_AUD", AUD), ("UPSTREAM", ECHO)]),
        (
            "multiple-apps.conf",
            vec![
                listen,
                team,
                ("WIKI_AUD", WIKI_AUD),
                ("WIKI_UPSTREAM", ECHO),
                ("GRAFANA_AUD", GRAFANA_AUD),
                ("GRAFANA_UPSTREAM", ECHO),
            ],
        ),
        ("allowlist.conf", vec![listen, team, ("CF_ACCESS_AUD", AUD), ("UPSTREAM", ECHO)]),
        ("access-log.conf", vec![]),
        ("metrics.conf", vec![("METRICS_PORT", "127.0.0.1:{PORT2}")]),
        (
            "authorization.conf",
            vec![
                listen,
                team,
                ("CF_ACCESS_AUD", AUD),
                ("EMAIL_DOMAIN", r"example\.com"),
                ("UPSTREAM", ECHO),
            ],
        ),
        ("per-user-limit.conf", vec![listen, team, ("CF_ACCESS_AUD", AUD), ("UPSTREAM", ECHO)]),
        ("report.conf", vec![listen, team, ("CF_ACCESS_AUD", AUD), ("UPSTREAM", ECHO)]),
        ("groups.conf", vec![listen, team, ("CF_ACCESS_AUD", AUD), ("UPSTREAM", ECHO)]),
        (
            "cors-preflight.conf",
            vec![
                listen,
                team,
                ("CF_ACCESS_AUD", AUD),
                ("APP_ORIGIN", "https://app.example.com"),
                ("UPSTREAM", ECHO),
            ],
        ),
    ]
}

fn conf_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("nginx-conf")
}

/// `${NAME}` placeholders in `text`.
fn placeholders(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        rest = &rest[start + 2..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        if !name.is_empty() && rest[name.len()..].starts_with('}') {
            names.insert(name);
        }
    }
    names
}

/// The example `name` with the changes described at the top of this file.
fn example(name: &str) -> String {
    let (_, vars) = examples()
        .into_iter()
        .find(|(file, _)| *file == name)
        .unwrap_or_else(|| panic!("{name} is not in examples()"));
    let path = conf_dir().join(name);
    let mut text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let used = placeholders(&text);
    let given: BTreeSet<String> = vars.iter().map(|(k, _)| k.to_string()).collect();
    assert_eq!(used, given, "{name}: the placeholders it uses vs. the values the test gives");
    for (key, value) in vars {
        text = text.replace(&format!("${{{key}}}"), value);
    }
    text.replace("/var/log/nginx/", "{PREFIX}/logs/")
}

/// The local Cloudflare stand-in, and an upstream that echoes what nginx sent it.
fn test_scaffolding(certs: &CertsServer) -> String {
    format!(
        r#"
    cf_access_certs_url {url};
    server {{
        listen 127.0.0.1:{{PORT2}};
        location / {{
            return 200 "uri=$request_uri cf_email=$http_cf_access_authenticated_user_email x_email=$http_x_user_email x_sub=$http_x_user_sub\n";
        }}
    }}
"#,
        url = certs.url()
    )
}

fn builder(certs: &CertsServer, files: &[&str]) -> NginxBuilder {
    let mut b = Nginx::builder().http(&test_scaffolding(certs));
    let identity = format!("https://{TEAM}/cdn-cgi/access/get-identity");
    for file in files {
        b = b.http(&example(file).replace(&identity, &certs.identity_url()));
    }
    b
}

fn get(nginx: &Nginx, path: &str, headers: &[(&str, &str)]) -> Response {
    let r = nginx.get(path, headers);
    if r.status >= 500 {
        panic!("{path}: {r:?}\n{}", nginx.error_log());
    }
    r
}

#[test]
fn every_example_passes_nginx_t() {
    // Every file in nginx-conf/ is covered here (demo.conf by its own test).
    let mut on_disk: Vec<String> = std::fs::read_dir(conf_dir())
        .expect("read nginx-conf/")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".conf") && n != "demo.conf")
        .collect();
    on_disk.sort();
    let mut known: Vec<String> = examples().iter().map(|(f, _)| f.to_string()).collect();
    known.sort();
    assert_eq!(on_disk, known, "add new nginx-conf/ files to examples()");

    let key = KeyPair::generate();
    let certs = CertsServer::start_with_keys(&[&key]);
    for name in known {
        let (ok, out) = builder(&certs, &[&name]).test_config();
        assert!(ok, "{name}: nginx -t failed:\n{out}");
    }
    // The access log snippet next to an example, as in conf.d/.
    let (ok, out) = builder(&certs, &["access-log.conf", "cf-access.conf"]).test_config();
    assert!(ok, "access-log.conf with cf-access.conf:\n{out}");
}

#[test]
fn demo_conf_passes_nginx_t() {
    let dir = std::env::temp_dir().join(format!("cf-access-demo-conf-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("logs")).expect("create prefix");
    let text = std::fs::read_to_string(conf_dir().join("demo.conf")).expect("read demo.conf");
    let conf = text
        .replace("@MODULE@", &Nginx::module_path().display().to_string())
        .replace("@PREFIX@", &dir.display().to_string())
        .replace("@PORT@", &free_port().to_string())
        .replace("@CERTS_PORT@", &free_port().to_string())
        .replace("@TEAM@", TEAM)
        .replace("@AUD@", AUD);
    let unfilled =
        conf.split('@').skip(1).step_by(2).any(|name| {
            !name.is_empty() && name.chars().all(|c| c.is_ascii_uppercase() || c == '_')
        });
    assert!(!unfilled, "unfilled placeholder in demo.conf:\n{conf}");
    let conf_path = dir.join("nginx.conf");
    std::fs::write(&conf_path, conf).expect("write nginx.conf");
    let out = Nginx::command(&dir, &conf_path).arg("-t").output().expect("run nginx -t");
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.status.success(), "demo.conf: {text}");
}

#[test]
fn reverse_proxy_passes_the_verified_identity_and_drops_a_spoofed_one() {
    let key = KeyPair::generate();
    let certs = CertsServer::start_with_keys(&[&key]);
    let nginx = builder(&certs, &["cf-access.conf"]).start();
    let alice = token_for(&key, AUD, "alice@example.com");
    let spoof = ("Cf-Access-Authenticated-User-Email", "mallory@example.com");

    let r =
        get(&nginx, "/reports/", &[(HDR, &alice), spoof, ("X-User-Email", "mallory@example.com")]);
    assert_eq!(r.status, 200, "{}", nginx.error_log());
    assert!(
        r.body.starts_with(
            "uri=/reports/ cf_email=alice@example.com x_email=alice@example.com x_sub="
        ),
        "{}",
        r.body
    );
    assert!(!r.body.trim_end().ends_with("x_sub="), "sub: {}", r.body);
    assert!(!r.body.contains("mallory"), "{}", r.body);

    // Without a token nothing reaches the application, whatever the client claims.
    assert_eq!(get(&nginx, "/reports/", &[spoof]).status, 403);

    // A service token has no email: the client's header is removed, not passed on.
    let service = mint(&key, &service_claims(TEAM, AUD, "0123abcd.access", now(), 600));
    let r = get(&nginx, "/reports/", &[(HDR, &service), spoof]);
    assert_eq!(r.status, 200);
    assert!(r.body.starts_with("uri=/reports/ cf_email= x_email="), "{}", r.body);

    // The health check is open.
    let r = get(&nginx, "/healthz", &[]);
    assert_eq!(r.status, 200);
    assert!(r.body.starts_with("uri=/healthz cf_email= "), "{}", r.body);
}

#[test]
fn multiple_apps_accept_only_their_own_tokens() {
    let key = KeyPair::generate();
    let certs = CertsServer::start_with_keys(&[&key]);
    let nginx = builder(&certs, &["multiple-apps.conf"]).start();
    let wiki = token_for(&key, WIKI_AUD, "alice@example.com");
    let grafana = token_for(&key, GRAFANA_AUD, "bob@example.com");

    let r = get(&nginx, "/wiki/Home", &[(HDR, &wiki)]);
    assert_eq!(r.status, 200, "{}", nginx.error_log());
    assert!(r.body.starts_with("uri=/wiki/Home cf_email=alice@example.com"), "{}", r.body);
    assert_eq!(get(&nginx, "/grafana/d/1", &[(HDR, &wiki)]).status, 403);

    let r = get(&nginx, "/grafana/d/1", &[(HDR, &grafana)]);
    assert_eq!(r.status, 200);
    assert!(r.body.contains("cf_email=bob@example.com"), "{}", r.body);
    assert_eq!(get(&nginx, "/wiki/Home", &[(HDR, &grafana)]).status, 403);
    assert!(
        nginx.wait_for_log("access denied (bad_audience)", Duration::from_secs(2)),
        "{}",
        nginx.error_log()
    );

    // A token for the wrong team's application (same AUD, other issuer) is refused too.
    let other_team = mint(
        &key,
        &user_claims("other.cloudflareaccess.com", WIKI_AUD, "eve@example.com", now(), 600),
    );
    assert_eq!(get(&nginx, "/wiki/Home", &[(HDR, &other_team)]).status, 403);
    assert_eq!(get(&nginx, "/", &[(HDR, &wiki)]).status, 404);
}

#[test]
fn allowlist_lets_internal_addresses_in_and_keeps_the_health_check_open() {
    let key = KeyPair::generate();
    let certs = CertsServer::start_with_keys(&[&key]);
    // Stands in for clients on other addresses: the test client always connects from
    // 127.0.0.1, and X-Real-IP tells nginx which address to consider.
    let nginx = builder(&certs, &["allowlist.conf"])
        .http("set_real_ip_from 127.0.0.1; real_ip_header X-Real-IP;")
        .start();
    let alice = token_for(&key, AUD, "alice@example.com");

    // The health check needs nothing.
    let r = get(&nginx, "/healthz", &[]);
    assert_eq!(r.status, 200);
    assert!(r.body.starts_with("uri=/healthz "), "{}", r.body);

    // 127.0.0.1 and a public address are not on the list: a token is needed.
    assert_eq!(get(&nginx, "/", &[]).status, 403);
    assert_eq!(get(&nginx, "/", &[("X-Real-IP", "203.0.113.9")]).status, 403);
    let r = get(&nginx, "/", &[("X-Real-IP", "203.0.113.9"), (HDR, &alice)]);
    assert_eq!(r.status, 200, "{}", nginx.error_log());
    assert!(r.body.contains("cf_email=alice@example.com"), "{}", r.body);

    // Internal networks get in without a token, and without an identity upstream.
    for ip in ["10.1.2.3", "172.20.0.5", "192.168.1.10"] {
        let r = get(
            &nginx,
            "/",
            &[("X-Real-IP", ip), ("Cf-Access-Authenticated-User-Email", "mallory@example.com")],
        );
        assert_eq!(r.status, 200, "{ip}");
        assert!(r.body.starts_with("uri=/ cf_email= x_email= "), "{ip}: {}", r.body);
    }
}

#[test]
fn access_log_shows_identity_and_verdict() {
    let key = KeyPair::generate();
    let certs = CertsServer::start_with_keys(&[&key]);
    let nginx = builder(&certs, &["access-log.conf", "cf-access.conf"]).start();
    let claims = user_claims(TEAM, AUD, "alice@example.com", now(), 600);
    let sub = claims["sub"].as_str().unwrap_or_default().to_string();
    assert!(!sub.is_empty());
    let mut expired = claims.clone();
    expired["exp"] = json!(now() - 3600);

    assert_eq!(get(&nginx, "/ok", &[(HDR, &mint(&key, &claims))]).status, 200);
    assert_eq!(get(&nginx, "/none", &[]).status, 403);
    assert_eq!(get(&nginx, "/old", &[(HDR, &mint(&key, &expired))]).status, 403);

    let log_path = nginx.prefix().join("logs/cf-access.log");
    let wanted = [
        format!(
            "\"GET /ok HTTP/1.1\" 200 {{}} email=\"alice@example.com\" sub=\"{sub}\" cf_access=ok"
        ),
        "\"GET /none HTTP/1.1\" 403 {} email=\"\" sub=\"\" cf_access=no_token".to_string(),
        "\"GET /old HTTP/1.1\" 403 {} email=\"\" sub=\"\" cf_access=expired".to_string(),
    ];
    // Lines are written when a request ends; the body size varies ({} above).
    let matches = |line: &str, pattern: &str| {
        let (before, after) = pattern.split_once("{}").expect("pattern");
        line.split_once(before).is_some_and(|(_, rest)| {
            let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
            digits > 0 && &rest[digits..] == after
        })
    };
    let mut log = String::new();
    let mut missing: Vec<&String> = Vec::new();
    let complete = poll_until(Duration::from_secs(3), || {
        log = std::fs::read_to_string(&log_path).unwrap_or_default();
        missing = wanted.iter().filter(|p| !log.lines().any(|l| matches(l, p))).collect();
        missing.is_empty()
    });
    assert!(complete, "missing {missing:?} in {}:\n{log}", log_path.display());
}

#[test]
fn authorization_example_applies_its_rules() {
    let key = KeyPair::generate();
    let certs = CertsServer::start_with_keys(&[&key]);
    let nginx = builder(&certs, &["authorization.conf"]).start();
    let alice = token_for(&key, AUD, "alice@example.com");
    let mut finance = user_claims(TEAM, AUD, "bob@example.com", now(), 600);
    finance["custom"] = json!({"groups": ["eng", "finance"]});
    let finance = mint(&key, &finance);
    let outsider = token_for(&key, AUD, "eve@example.org");
    let service = mint(&key, &service_claims(TEAM, AUD, "svc.access", now(), 600));
    let status = |path: &str, t: &str| get(&nginx, path, &[(HDR, t)]).status;

    let r = get(&nginx, "/", &[(HDR, &alice)]);
    assert_eq!(r.status, 200);
    assert!(r.body.contains("x_email=alice@example.com"), "{}", r.body);
    assert_eq!(status("/", &outsider), 403, "another email domain");
    assert_eq!(status("/", &service), 403, "a service token has no email");
    assert_eq!(status("/finance/x", &finance), 200);
    assert_eq!(status("/finance/x", &alice), 401, "not in the group");
    assert_eq!(status("/api/x", &service), 200);
    assert_eq!(status("/api/x", &alice), 403, "users are not machines");
    assert!(nginx.error_log().contains("access denied (not_allowed)"));
    nginx.assert_clean(&[]);
}

#[test]
fn groups_example_decides_on_groups_from_get_identity() {
    let key = KeyPair::generate();
    let certs = CertsServer::start_with_keys(&[&key]);
    let nginx = builder(&certs, &["groups.conf"]).start();
    let bob = "bob@example.com";
    certs.set_identity(
        IdentityConfig::new()
            .with_groups(vec![Group::named("Eng")])
            .with_groups_for(bob, vec![Group::named("Eng"), Group::named("Finance")]),
    );
    let alice = token_for(&key, AUD, "alice@example.com");
    let bob = token_for(&key, AUD, bob);
    let r = get(&nginx, "/finance/x", &[(HDR, &bob)]);
    assert_eq!(r.status, 200, "{}", nginx.error_log());
    assert!(r.body.contains("x_email=bob@example.com"), "{}", r.body);
    assert_eq!(get(&nginx, "/finance/x", &[(HDR, &alice)]).status, 403, "not in the group");
    assert_eq!(get(&nginx, "/x", &[(HDR, &alice)]).status, 200);
    assert_eq!(certs.identity_hits(), 2, "one get-identity per session");
    // Cloudflare unreachable: refused, and said why.
    certs.set_identity(IdentityConfig::new().with_fault(IdentityFault::Close));
    let carol = token_for(&key, AUD, "carol@example.com");
    assert_eq!(get(&nginx, "/x", &[(HDR, &carol)]).status, 403);
    assert!(nginx.error_log().contains("access denied (identity_unavailable)"));
    nginx.assert_clean(&["upstream prematurely closed"]);
}

#[test]
fn per_user_limit_example_limits_each_user_on_their_own() {
    let key = KeyPair::generate();
    let certs = CertsServer::start_with_keys(&[&key]);
    let nginx = builder(&certs, &["per-user-limit.conf"]).start();
    let alice = token_for(&key, AUD, "alice@example.com");
    let bob = token_for(&key, AUD, "bob@example.com");
    let statuses: Vec<u16> = (0..30).map(|_| get(&nginx, "/x", &[(HDR, &alice)]).status).collect();
    assert_eq!(statuses[0], 200);
    assert!(statuses.contains(&429), "alice is never limited: {statuses:?}");
    assert_eq!(get(&nginx, "/x", &[(HDR, &bob)]).status, 200, "bob has a limit of his own");
    assert_eq!(get(&nginx, "/x", &[]).status, 403);
    nginx.assert_clean(&[]);
}

#[test]
fn report_example_refuses_nothing_and_logs_every_verdict() {
    let key = KeyPair::generate();
    let certs = CertsServer::start_with_keys(&[&key]);
    let nginx = builder(&certs, &["report.conf"]).start();
    assert_eq!(get(&nginx, "/none", &[]).status, 200);
    let r = get(&nginx, "/ok", &[(HDR, &token_for(&key, AUD, "alice@example.com"))]);
    assert!(r.body.contains("x_email=alice@example.com"), "{}", r.body);
    let log = nginx.prefix().join("logs/cf-access-report.log");
    let found = poll_until(Duration::from_secs(3), || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.contains("\"GET /none HTTP/1.1\" 200 cf_access=no_token email=\"\"")
            && text.contains("\"GET /ok HTTP/1.1\" 200 cf_access=ok email=\"alice@example.com\"")
    });
    assert!(found, "{}", std::fs::read_to_string(&log).unwrap_or_default());
    assert!(nginx.error_log().contains("cf_access: report: access would be denied (no_token)"));
    nginx.assert_clean(&[]);
}

#[test]
fn cors_preflight_example_lets_preflights_through_and_nothing_else() {
    let key = KeyPair::generate();
    let certs = CertsServer::start_with_keys(&[&key]);
    let nginx = builder(&certs, &["cors-preflight.conf"]).start();
    let origin = [("Origin", "https://app.example.com")];
    let r = nginx.request("OPTIONS", "/api/items", &origin, None);
    assert_eq!(r.status, 204, "{}", nginx.error_log());
    assert_eq!(r.header("Access-Control-Allow-Origin"), Some("https://app.example.com"));
    assert_eq!(r.header("Access-Control-Allow-Credentials"), Some("true"));
    assert_eq!(get(&nginx, "/api/items", &origin).status, 403);
    assert_eq!(nginx.request("DELETE", "/api/items", &origin, None).status, 403);
    let t = token_for(&key, AUD, "alice@example.com");
    let r = get(&nginx, "/api/items", &[origin[0], (HDR, &t)]);
    assert_eq!(r.status, 200);
    assert!(r.body.contains("x_email=alice@example.com"), "{}", r.body);
    nginx.assert_clean(&[]);
}

#[test]
fn metrics_example_counts_the_sites_requests() {
    let key = KeyPair::generate();
    let certs = CertsServer::start_with_keys(&[&key]);
    // metrics.conf listens on {PORT2}: the echo server moves to the main port's neighbour.
    let nginx = Nginx::builder()
        .http(&format!("cf_access_certs_url {};", certs.url()))
        .http(&example("metrics.conf"))
        .http(
            &example("cf-access.conf")
                .replace("proxy_pass http://127.0.0.1:{PORT2}", "root {PREFIX}/html; #"),
        )
        .file("index.html", "ok\n")
        .start();
    assert_eq!(get(&nginx, "/", &[]).status, 403);
    assert_eq!(get(&nginx, "/", &[(HDR, &token_for(&key, AUD, "a@example.com"))]).status, 200);
    let metrics = |query: &str| {
        http_request(nginx.port2(), "GET", &format!("/cf-access/metrics{query}"), &[], None)
            .expect("scrape")
    };
    let r = metrics("");
    assert_eq!(r.status, 200);
    for line in [
        "cf_access_requests_total{status=\"ok\"} 1",
        "cf_access_requests_total{status=\"no_token\"} 1",
        "cf_access_ready 1",
    ] {
        assert!(r.body.lines().any(|l| l == line), "{line}:\n{}", r.body);
    }
    assert_eq!(metrics("?ready").status, 200);
}

/// The Docker image's side: `docker/19-cf-access-check.sh` refuses to start without the
/// template's variables, and the template (cf-access.conf) rendered the way the official
/// image's entrypoint renders it (`envsubst` given every environment variable's name) is the
/// same configuration as above, nginx's own `$variables` untouched.
#[test]
fn docker_template_renders_like_the_entrypoint() {
    let dir = std::env::temp_dir().join(format!("cf-access-docker-{}", std::process::id()));
    let templates = dir.join("templates");
    let output = dir.join("conf.d");
    std::fs::create_dir_all(&templates).expect("create templates/");
    std::fs::create_dir_all(&output).expect("create conf.d/");
    std::fs::copy(conf_dir().join("cf-access.conf"), templates.join("default.conf.template"))
        .expect("copy the template");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("docker/19-cf-access-check.sh");
    let check = |vars: &[(&str, &str)]| {
        let out = Command::new("sh")
            .arg(&script)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("NGINX_ENVSUBST_TEMPLATE_DIR", &templates)
            .env("NGINX_ENVSUBST_OUTPUT_DIR", &output)
            .envs(vars.iter().copied())
            .output()
            .expect("run the check script");
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (ok, err) = check(&[("NGINX_PORT", "8080"), ("CF_ACCESS_AUD", "")]);
    assert!(!ok, "must refuse to start: {err}");
    assert!(
        err.contains(
            "need these environment variables: CF_ACCESS_AUD CF_ACCESS_TEAM_DOMAIN UPSTREAM"
        ),
        "{err}"
    );
    let vars = [
        ("NGINX_PORT", "127.0.0.1:{PORT}"),
        ("CF_ACCESS_TEAM_DOMAIN", TEAM),
        ("CF_ACCESS_AUD", AUD),
        ("UPSTREAM", ECHO),
    ];
    let (ok, err) = check(&vars);
    assert!(ok, "{err}");

    let has_envsubst =
        Command::new("envsubst").arg("--version").output().is_ok_and(|o| o.status.success());
    if has_envsubst {
        // As 20-envsubst-on-templates.sh: "${NAME} " for every variable in the environment.
        let mut names: Vec<String> =
            std::env::vars_os().filter_map(|(k, _)| k.into_string().ok()).collect();
        names.extend(vars.iter().map(|(k, _)| k.to_string()));
        let defined: String = names.iter().map(|n| format!("${{{n}}} ")).collect();
        let out = Command::new("sh")
            .arg("-c")
            .arg("envsubst \"$1\" < \"$2\"")
            .arg("sh")
            .arg(&defined)
            .arg(templates.join("default.conf.template"))
            .envs(vars.iter().copied())
            .output()
            .expect("run envsubst");
        assert!(out.status.success());
        let rendered = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(rendered, example("cf-access.conf"));
    } else {
        eprintln!("envsubst (gettext-base) not installed: rendering not compared");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
