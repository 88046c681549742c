//! Key lifecycle end to end: rotation without minutes of 403s, forced-refresh rate limit,
//! the key cache file, the verified-token cache, and the claim variables.

// A test: a panic is a failed assertion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use cf_access_dev::{mint, now, user_claims, Behavior, CertsServer, KeyPair};
use cf_access_testkit::site::{token, AUD, HDR, OTHER_AUD, TEAM};
use cf_access_testkit::Nginx;
use serde_json::json;

fn start(url: &str, extra_http: &str, extra_location: &str) -> Nginx {
    Nginx::builder().protected_site((TEAM, AUD, url), extra_http, extra_location).start()
}

#[test]
fn manual_rotation_costs_only_the_first_requests() {
    let old = KeyPair::generate();
    let new = KeyPair::generate();
    let certs = CertsServer::start_with_keys(&[&old]);
    // The periodic refresh is an hour away: only the unknown-kid refresh can help.
    let nginx = start(&certs.url(), "", "");
    let before = certs.hits();
    // Cloudflare rotates: the endpoint now has the new key; tokens are signed with it.
    certs.set_keys(&[&old, &new]);
    let t = token(&new);
    let started = Instant::now();
    let mut denied = 0;
    let mut ok = 0;
    while started.elapsed() < Duration::from_secs(3) {
        match nginx.get("/p/", &[(HDR, &t)]).status {
            200 => ok += 1,
            403 => denied += 1,
            other => panic!("unexpected {other}"),
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(ok > 0, "the new key was never picked up:\n{}", nginx.error_log());
    assert!(denied <= 5, "{denied} requests refused after the rotation (ok: {ok})");
    assert!(certs.hits() - before <= 2, "one forced fetch is enough");
    assert!(nginx.error_log().contains("updated (2 keys)"), "{}", nginx.error_log());
    nginx.assert_clean(&[]);
}

#[test]
fn a_flood_of_unknown_kids_is_not_a_flood_of_fetches() {
    let key = KeyPair::generate();
    let certs = CertsServer::start_with_keys(&[&key]);
    let nginx = start(&certs.url(), "", "");
    let before = certs.hits();
    let stranger = KeyPair::generate();
    let payload = user_claims(TEAM, AUD, "mallory@example.com", now(), 600).to_string();
    let started = Instant::now();
    for i in 0..200 {
        let header = json!({"alg": "RS256", "kid": format!("made-up-{i}")}).to_string();
        let t = cf_access_dev::sign_raw(&stranger, "RS256", &header, &payload);
        let r = nginx.get("/p/", &[(HDR, &t)]);
        assert_eq!(r.header("X-Status"), Some("unknown_kid"));
    }
    // Give the refresher time to act on the last wake-up.
    std::thread::sleep(Duration::from_millis(300));
    let fetches = certs.hits() - before;
    let allowed = 1 + started.elapsed().as_secs() / 10 + 1;
    assert!(
        fetches as u64 <= allowed,
        "{fetches} fetches for 200 unknown kids in {:?}",
        started.elapsed()
    );
    assert!(fetches >= 1, "an unknown kid triggers a refresh");
    nginx.assert_clean(&[]);
}

#[test]
fn key_cache_file_survives_an_outage_at_restart() {
    let key = KeyPair::generate();
    let certs = CertsServer::start_with_keys(&[&key]);
    let cache_dir = std::env::temp_dir().join(format!("cf-access-keys-{}", std::process::id()));
    std::fs::create_dir_all(&cache_dir).unwrap();
    let cache = cache_dir.join("keys.json");
    let directive = format!("cf_access_keys_cache {};", cache.display());
    let t = token(&key);

    // First start: keys fetched and saved.
    let nginx = start(&certs.url(), &directive, "");
    assert_eq!(nginx.get("/p/", &[(HDR, &t)]).status, 200);
    nginx.stop();
    assert!(std::fs::read_to_string(&cache).unwrap().contains(key.kid()));

    // Cloudflare is down; a restart still serves from the saved set.
    certs.set(Behavior::Status(502, "bad gateway".into()));
    let nginx = start(&certs.url(), &directive, "");
    assert_eq!(nginx.get("/p/", &[(HDR, &t)]).status, 200, "{}", nginx.error_log());
    assert!(nginx.error_log().contains("from the key cache"));
    nginx.stop();

    // A corrupt cache file is ignored with a warning; requests fail closed.
    std::fs::write(&cache, "{ not json").unwrap();
    let nginx = start(&certs.url(), &directive, "");
    let r = nginx.get("/p/", &[(HDR, &t)]);
    assert_eq!(r.status, 403);
    assert_eq!(r.header("X-Status"), Some("no_keys"));
    assert!(nginx.error_log().contains("ignoring the key cache"), "{}", nginx.error_log());
    nginx.assert_clean(&[]);
    drop(nginx);
    let _ = std::fs::remove_dir_all(&cache_dir);
}

#[test]
fn cached_tokens_still_obey_location_policy_and_key_removal() {
    let key = KeyPair::generate();
    let other = KeyPair::generate();
    let certs = CertsServer::start_with_keys(&[&key, &other]);
    let nginx = Nginx::builder()
        .file("a/index.html", "a\n")
        .file("b/index.html", "b\n")
        .http(&format!(
            r#"
    cf_access_refresh 1s;
    cf_access_team_domain {TEAM};
    cf_access_certs_url {url};
    server {{
        listen 127.0.0.1:{{PORT}};
        root {{PREFIX}}/html;
        add_header X-Status $cf_access_status always;
        location /a/ {{ cf_access on; cf_access_aud {AUD}; }}
        location /b/ {{ cf_access on; cf_access_aud {OTHER_AUD}; }}
    }}
"#,
            url = certs.url()
        ))
        .start();
    let t = token(&key);
    assert_eq!(nginx.get("/a/", &[(HDR, &t)]).status, 200);
    assert_eq!(nginx.get("/a/", &[(HDR, &t)]).status, 200, "a cache hit");
    let r = nginx.get("/b/", &[(HDR, &t)]);
    assert_eq!(r.status, 403, "cached for AUD, not valid for OTHER_AUD");
    assert_eq!(r.header("X-Status"), Some("bad_audience"));

    // The key leaves the certs endpoint: its cached tokens stop working.
    certs.set_keys(&[&other]);
    let mut refused = None;
    nginx.wait_until(Duration::from_secs(10), "the removed key to be refused", || {
        let r = nginx.get("/a/", &[(HDR, &t)]);
        let done = r.status == 403;
        refused = Some(r);
        done
    });
    assert_eq!(
        refused.and_then(|r| r.header("X-Status").map(str::to_string)),
        Some("unknown_kid".to_string())
    );
    nginx.assert_clean(&[]);
}

#[test]
fn claim_variables() {
    let key = KeyPair::generate();
    let certs = CertsServer::start_with_keys(&[&key]);
    let nginx = start(
        &certs.url(),
        "",
        r#"add_header X-CN $cf_access_common_name always;
            add_header X-Nonce $cf_access_identity_nonce always;
            add_header X-Country $cf_access_country always;
            add_header X-Groups $cf_access_claim_groups always;
            add_header X-Dept $cf_access_custom_dept always;
            add_header X-Evil $cf_access_claim_evil always;
            add_header X-Email $cf_access_email always;"#,
    );
    let mut claims = user_claims(TEAM, AUD, "a@example.com\r\nX-Injected: yes", now(), 600);
    claims["groups"] = json!(["eng", "ops"]);
    claims["custom"] = json!({"dept": "platform"});
    claims["evil"] = json!("x\r\nSet-Cookie: owned=1");
    claims["identity_nonce"] = json!("nonce-1");
    claims["country"] = json!("PT");
    let r = nginx.get("/p/", &[(HDR, &mint(&key, &claims))]);
    assert_eq!(r.status, 200, "{}", nginx.error_log());
    assert_eq!(r.header("X-Groups"), Some(r#"["eng","ops"]"#));
    assert_eq!(r.header("X-Dept"), Some("platform"));
    assert_eq!(r.header("X-Nonce"), Some("nonce-1"));
    assert_eq!(r.header("X-Country"), Some("PT"));
    assert_eq!(r.header("X-Email"), Some("a@example.com  X-Injected: yes"));
    assert_eq!(r.header("X-Evil"), Some("x  Set-Cookie: owned=1"));
    assert!(r.header("X-Injected").is_none() && r.header("Set-Cookie").is_none());
    assert!(r.header("X-CN").is_none(), "a user token has no common_name");

    let service = cf_access_dev::service_claims(TEAM, AUD, "abc.access", now(), 600);
    let r = nginx.get("/p/", &[(HDR, &mint(&key, &service))]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("X-CN"), Some("abc.access"));
    assert!(r.header("X-Email").is_none());

    // Unverified: nothing is reflected.
    let r = nginx.get("/p/", &[(HDR, &mint(&KeyPair::generate(), &claims))]);
    assert_eq!(r.status, 403);
    assert!(r.header("X-Groups").is_none() && r.header("X-Dept").is_none());
    nginx.assert_clean(&[]);
}

#[test]
fn http_level_directives_are_validated() {
    for (conf, expected) in [
        (
            "cf_access_cache_size lots;",
            "invalid value \"lots\" in \"cf_access_cache_size\" directive",
        ),
        (
            "cf_access_cache_size 10; cf_access_cache_size 20;",
            "\"cf_access_cache_size\" directive is duplicate",
        ),
        (
            "cf_access_keys_cache /a; cf_access_keys_cache /b;",
            "\"cf_access_keys_cache\" directive is duplicate",
        ),
    ] {
        let (ok, out) = Nginx::builder()
            .http(&format!("{conf} server {{ listen 127.0.0.1:{{PORT}}; }}"))
            .test_config();
        assert!(!ok && out.contains("[emerg]") && out.contains(expected), "{conf}: {out}");
    }
    let (ok, out) = Nginx::builder()
        .http("cf_access_cache_size 0; server { listen 127.0.0.1:{PORT}; }")
        .test_config();
    assert!(ok, "{out}");
}

#[test]
fn nginx_t_and_nginx_s_do_not_fetch_keys() {
    let key = KeyPair::generate();
    let certs = CertsServer::start_with_keys(&[&key]);
    let nginx = start(&certs.url(), "", "");
    let before = certs.hits();
    for args in [&["-t"][..], &["-s", "reopen"][..]] {
        let out = Nginx::command(nginx.prefix(), nginx.conf_path()).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
    }
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(certs.hits(), before, "nginx -t / -s fetched keys");
    nginx.assert_clean(&[]);
}
