//! The whole identity: `cf_access_identity` fetches a user's get-identity answer through an
//! internal location (a subrequest to the dev tool's stand-in), once per session per
//! worker, and `$cf_access_groups` and `$cf_access_identity_<field>` carry it to the rules,
//! the headers, the upstream and the log. Every way the answer can fail refuses the request
//! (`identity_unavailable`) or, with `cf_access_identity_failure allow`, lets it through
//! without an identity.

// A test: a panic is a failed assertion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::thread;
use std::time::{Duration, Instant};

use cf_access_dev::{mint, now, service_claims, CertsServer, Group, IdentityConfig, IdentityFault};
use cf_access_testkit::site::{
    claims, start_site, token, token_for, AUD, COOKIE, EMAIL, HDR, TEAM,
};
use cf_access_testkit::{http_request, send_signal, Nginx, Response};
use serde_json::Value;

/// A site whose every location is protected and fetches identities through
/// `/_cf_identity` (a 2 s read timeout): `/` a file, `/eng/` only for the group "Eng",
/// `/allow/` lets a failed identity through, `/up/` proxies to an echo of what the upstream
/// gets, `/svc/` has no identity. Headers show the group names, the status and the IdP;
/// the access log writes the groups.
fn site(certs: &CertsServer) -> Nginx {
    Nginx::builder()
        .file("index.html", "home\n")
        .file("eng/index.html", "eng\n")
        .file("allow/index.html", "allowed\n")
        .file("svc/index.html", "service\n")
        .http(&format!(
            r#"
    cf_access_team_domain {TEAM};
    cf_access_aud {AUD};
    cf_access_certs_url {certs};
    log_format groups '$cf_access_email $cf_access_groups';
    map $cf_access_groups $is_eng {{
        "~\"Eng\"" 1;
        default "";
    }}
    server {{
        listen 127.0.0.1:{{PORT}};
        root {{PREFIX}}/html;
        access_log {{PREFIX}}/logs/groups.log groups;
        cf_access on;
        cf_access_identity /_cf_identity;
        add_header X-Groups $cf_access_groups always;
        add_header X-Group-Ids $cf_access_group_ids always;
        add_header X-Status $cf_access_status always;
        add_header X-Idp $cf_access_identity_idp always;
        add_header X-Token "[$cf_access_token]" always;
        location / {{ }}
        location /eng/ {{
            cf_access_require $is_eng;
        }}
        location /allow/ {{
            cf_access_identity_failure allow;
        }}
        location /svc/ {{
            cf_access_identity off;
        }}
        location /up/ {{
            proxy_pass http://127.0.0.1:{{PORT2}}/;
            proxy_set_header X-Groups $cf_access_groups;
            proxy_set_header X-Country $cf_access_identity_geo;
        }}
        location = /_cf_identity {{
            internal;
            proxy_pass {identity};
            proxy_pass_request_headers off;
            proxy_set_header Cookie "CF_Authorization=$cf_access_token";
            proxy_read_timeout 2s;
            subrequest_output_buffer_size 64k;
        }}
        location = /metrics {{
            cf_access off;
            cf_access_metrics;
        }}
    }}
    server {{
        listen 127.0.0.1:{{PORT2}};
        location / {{
            return 200 "groups=$http_x_groups geo=$http_x_country token=[$http_cookie]\n";
        }}
    }}
"#,
            certs = certs.url(),
            identity = certs.identity_url(),
        ))
        .start()
}

fn groups(names: &[&str]) -> Vec<Group> {
    names.iter().map(|n| Group::named(n)).collect()
}

/// The identity counters of `cf_access_metrics` (fetches, hits, failures).
fn counters(nginx: &Nginx) -> (u64, u64, u64) {
    let r = nginx.get("/metrics?format=json", &[]);
    let m: Value = serde_json::from_str(&r.body).unwrap();
    let n = |k: &str| m["identity"][k].as_u64().unwrap();
    (n("fetches"), n("hits"), n("failures"))
}

fn get(nginx: &Nginx, path: &str, token: &str) -> Response {
    nginx.get(path, &[(HDR, token)])
}

#[test]
fn groups_trimmed_from_the_token_come_from_get_identity() {
    let (key, certs, nginx) = start_site(site);
    certs.set_identity(IdentityConfig::new().with_groups(groups(&["Finance", "Eng"])));
    // Cloudflare trimmed the token's custom claims near the size limit: "Eng" is gone from
    // its groups. get-identity has them all, and the rule holds.
    let mut trimmed = claims();
    trimmed["custom"] = serde_json::json!({"groups": ["Finance"]});
    let t = mint(&key, &trimmed);
    let r = get(&nginx, "/eng/", &t);
    assert_eq!((r.status, r.body.as_str()), (200, "eng\n"), "{}", nginx.error_log());
    assert_eq!(r.header("X-Groups"), Some(r#"["Finance","Eng"]"#));
    assert_eq!(r.header("X-Status"), Some("ok"));
    assert!(r.header("X-Idp").is_some_and(|idp| idp.starts_with('{')), "{:?}", r.header("X-Idp"));
    assert_eq!(r.header("X-Token"), Some("[]"), "the token reaches only the identity location");
    let ids = r.header("X-Group-Ids").unwrap();
    assert!(ids.contains(&Group::named("Eng").id), "{ids}");
    // Another user without the group is refused by the rule, with its own identity.
    let bob = "bob@example.com";
    certs.set_identity(
        IdentityConfig::new()
            .with_groups(groups(&["Finance", "Eng"]))
            .with_groups_for(bob, groups(&["Sales"])),
    );
    let r = get(&nginx, "/eng/", &token_for(&key, AUD, bob));
    assert_eq!((r.status, r.header("X-Groups")), (403, Some(r#"["Sales"]"#)));
    assert_eq!(r.header("X-Status"), Some("not_allowed"));
    // The upstream and the access log get them too.
    let r = get(&nginx, "/up/x", &t);
    assert_eq!(r.status, 200, "{}", nginx.error_log());
    assert!(r.body.starts_with(r#"groups=["Finance","Eng"] geo={"country":"#), "{}", r.body);
    assert!(r.body.contains("token=[]"), "{}", r.body);
    let log = std::fs::read_to_string(nginx.prefix().join("logs/groups.log")).unwrap();
    // (nginx's default log escaping writes a quote as \x22.)
    assert!(log.contains(&format!(r#"{EMAIL} [\x22Finance\x22,\x22Eng\x22]"#)), "{log}");
    nginx.assert_clean(&[]);
}

#[test]
fn one_subrequest_per_session_and_never_another_users_identity() {
    let (key, certs, nginx) = start_site(site);
    certs.set_identity(IdentityConfig::new().with_groups(groups(&["Eng"])));
    let alice = token(&key);
    for _ in 0..20 {
        assert_eq!(get(&nginx, "/", &alice).status, 200, "{}", nginx.error_log());
    }
    assert_eq!(certs.identity_hits(), 1, "one subrequest for 20 requests of one session");
    assert_eq!(counters(&nginx), (1, 19, 0));
    // A second user in the same worker gets a subrequest (and groups) of their own.
    let carol = "carol@example.com";
    certs.set_identity(IdentityConfig::new().with_groups_for(carol, groups(&["Ops"])));
    let r = get(&nginx, "/", &token_for(&key, AUD, carol));
    assert_eq!(r.header("X-Groups"), Some(r#"["Ops"]"#));
    assert_eq!(certs.identity_hits_for(carol), 1);
    // A new login of the same user (a new identity_nonce) is a new session.
    let r = get(&nginx, "/", &token(&key));
    assert_eq!(r.header("X-Groups"), Some(r#"[]"#), "fetched again: the new configuration");
    assert_eq!(certs.identity_hits_for(EMAIL), 2);
    nginx.assert_clean(&[]);
}

#[test]
fn concurrent_first_requests_of_a_session_share_one_subrequest() {
    let (key, certs, nginx) = start_site(site);
    certs.set_identity(IdentityConfig::new().with_groups(groups(&["Eng"])).with_delay_ms(300));
    let t = token(&key);
    let started = Instant::now();
    let answers: Vec<Response> = thread::scope(|s| {
        let workers: Vec<_> = (0..8).map(|_| s.spawn(|| get(&nginx, "/eng/", &t))).collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    for r in &answers {
        assert_eq!((r.status, r.body.as_str()), (200, "eng\n"), "{}", nginx.error_log());
    }
    assert_eq!(certs.identity_hits(), 1, "8 concurrent requests, one subrequest");
    assert!(started.elapsed() < Duration::from_secs(5));
    nginx.assert_clean(&[]);
}

#[test]
fn service_tokens_have_no_identity_to_fetch() {
    let (key, certs, nginx) = start_site(site);
    let service = mint(&key, &service_claims(TEAM, AUD, "abc.access", now(), 600));
    let r = get(&nginx, "/", &service);
    assert_eq!((r.status, r.header("X-Groups")), (200, None), "{}", nginx.error_log());
    assert_eq!(certs.identity_hits(), 0);
    // Nor does a location with `cf_access_identity off`.
    let r = get(&nginx, "/svc/", &token(&key));
    assert_eq!((r.status, r.body.as_str()), (200, "service\n"));
    assert_eq!(certs.identity_hits(), 0);
    nginx.assert_clean(&[]);
}

/// Each failure refuses (`identity_unavailable`, one info line with the reason) and, under
/// `cf_access_identity_failure allow`, lets the request through without groups.
#[test]
fn every_failure_refuses_or_lets_through_as_configured() {
    let (key, certs, nginx) = start_site(site);
    let cases: [(IdentityFault, &str); 6] = [
        (IdentityFault::Status(503, "down".into()), "http status 503"),
        (IdentityFault::InvalidJson, "invalid json"),
        (IdentityFault::OtherUser, "another user"),
        (IdentityFault::Oversize(200_000), "the subrequest"),
        (IdentityFault::Close, "the subrequest ended with status 502"),
        (IdentityFault::Hang, "the subrequest ended with status 504"),
    ];
    for (fault, why) in cases {
        certs.set_identity(
            IdentityConfig::new().with_groups(groups(&["Eng"])).with_fault(fault.clone()),
        );
        // A new session each time (the cache never holds a failure).
        let log = nginx.log_len();
        let r = get(&nginx, "/", &token(&key));
        assert_eq!(r.status, 403, "{fault:?}: {}", nginx.error_log());
        assert_eq!(r.header("X-Status"), Some("identity_unavailable"), "{fault:?}");
        assert_eq!(r.header("X-Groups"), None);
        let lines = nginx.log_since(log);
        let denied: Vec<&str> =
            lines.lines().filter(|l| l.contains("access denied (identity_unavailable)")).collect();
        assert_eq!(denied.len(), 1, "{fault:?}: {lines}");
        assert!(denied[0].contains(why), "{fault:?}: {lines}");
        // Said as the access check it is, not as what the subrequest was doing last.
        assert!(!denied[0].contains(" while sending to client"), "{fault:?}: {lines}");
        let r = get(&nginx, "/allow/", &token(&key));
        assert_eq!((r.status, r.body.as_str()), (200, "allowed\n"), "{fault:?}");
        assert_eq!((r.header("X-Status"), r.header("X-Groups")), (Some("ok"), None));
    }
    let (_, _, failures) = counters(&nginx);
    assert_eq!(failures, 12);
    nginx.assert_clean(&["upstream", "too big subrequest response"]);
}

#[test]
fn a_cookie_only_browser_request_fetches_with_its_token() {
    let (key, certs, nginx) = start_site(site);
    certs.set_identity(IdentityConfig::new().with_groups(groups(&["Eng"])));
    let cookie = format!("{COOKIE}={}; theme=dark", token(&key));
    let r = nginx.get("/eng/", &[("Cookie", &cookie)]);
    assert_eq!((r.status, r.body.as_str()), (200, "eng\n"), "{}", nginx.error_log());
    nginx.assert_clean(&[]);
}

#[test]
fn the_directives_are_checked_by_nginx_t() {
    let server = "server { listen 127.0.0.1:{PORT}; }";
    for (conf, expected) in [
        (
            "cf_access_identity _cf;",
            "invalid value \"_cf\" in \"cf_access_identity\" directive, it must be a URI",
        ),
        ("cf_access_identity /a?b=1;", "invalid value \"/a?b=1\" in \"cf_access_identity\""),
        ("cf_access_identity /$uri;", "invalid value \"/$uri\" in \"cf_access_identity\""),
        ("cf_access_identity /a; cf_access_identity /b;", "\"cf_access_identity\" directive is duplicate"),
        (
            "cf_access_identity_failure maybe;",
            "invalid value \"maybe\" in \"cf_access_identity_failure\" directive, it must be \"deny\" or \"allow\"",
        ),
    ] {
        let (ok, out) = Nginx::builder().http(&format!("{conf} {server}")).test_config();
        assert!(!ok && out.contains("[emerg]") && out.contains(expected), "{conf}: {out}");
    }
    let (ok, out) = Nginx::builder()
        .http(&format!("cf_access_identity off; cf_access_identity_failure allow; {server}"))
        .test_config();
    assert!(ok, "{out}");
}

/// A request that must end (any answer, or the connection closed), never hang.
fn ends(nginx: &Nginx, path: &str, token: &str) -> Option<u16> {
    http_request(nginx.port(), "GET", path, &[(HDR, token)], None).ok().map(|r| r.status)
}

#[test]
fn a_reload_and_a_killed_worker_while_subrequests_are_in_flight() {
    let (key, certs, nginx) = start_site(site);
    certs.set_identity(IdentityConfig::new().with_groups(groups(&["Eng"])).with_delay_ms(1000));
    // A reload: the old worker finishes its waiting requests with their identities.
    let tokens: Vec<String> = (0..3).map(|_| token(&key)).collect();
    let statuses: Vec<Option<u16>> = thread::scope(|s| {
        let sent: Vec<_> = tokens.iter().map(|t| s.spawn(|| ends(&nginx, "/eng/", t))).collect();
        nginx.wait_until(Duration::from_secs(5), "subrequests in flight", || {
            certs.identity_hits() >= 3
        });
        nginx.reload();
        sent.into_iter().map(|t| t.join().unwrap()).collect()
    });
    assert_eq!(statuses, vec![Some(200); 3], "{}", nginx.error_log());
    // kill -9 of the worker: its requests end (the connection closes), the next worker
    // serves the same sessions anew.
    let before = certs.identity_hits();
    let started = Instant::now();
    let statuses: Vec<Option<u16>> = thread::scope(|s| {
        let sent: Vec<_> = tokens.iter().map(|t| s.spawn(|| ends(&nginx, "/", t))).collect();
        thread::sleep(Duration::from_millis(300));
        for pid in nginx.worker_pids() {
            send_signal(pid, libc::SIGKILL);
        }
        sent.into_iter().map(|t| t.join().unwrap()).collect()
    });
    assert!(statuses.iter().all(|s| s.is_none() || *s == Some(200)), "{statuses:?}");
    // (A request left hanging would take the client's 5 s timeout.)
    assert!(started.elapsed() < Duration::from_secs(4), "{:?}", started.elapsed());
    nginx.wait_until(Duration::from_secs(5), "a new worker", || {
        ends(&nginx, "/eng/", &tokens[0]) == Some(200)
    });
    assert!(certs.identity_hits() > before, "the new worker fetched again");
    nginx.assert_clean(&["exited on signal 9"]);
}

#[test]
fn a_waiting_client_that_goes_away_leaves_the_others_served() {
    use std::io::Write;
    let (key, certs, nginx) = start_site(site);
    certs.set_identity(IdentityConfig::new().with_groups(groups(&["Eng"])).with_delay_ms(500));
    let t = token(&key);
    let answers: Vec<Option<u16>> = thread::scope(|s| {
        let leader = s.spawn(|| ends(&nginx, "/eng/", &t));
        nginx.wait_until(Duration::from_secs(5), "the subrequest", || certs.identity_hits() == 1);
        // A second request of the session waits for it, then its client leaves.
        let mut gone = std::net::TcpStream::connect(("127.0.0.1", nginx.port())).unwrap();
        write!(gone, "GET /eng/ HTTP/1.1\r\nHost: x\r\n{HDR}: {t}\r\n\r\n").unwrap();
        let waiter = s.spawn(|| ends(&nginx, "/eng/", &t));
        thread::sleep(Duration::from_millis(100));
        drop(gone);
        vec![leader.join().unwrap(), waiter.join().unwrap()]
    });
    assert_eq!(answers, vec![Some(200), Some(200)], "{}", nginx.error_log());
    assert_eq!(certs.identity_hits(), 1);
    // nginx saw the client leave while it waited (and let the request go then).
    assert!(nginx.error_log().contains("client prematurely closed connection"));
    nginx.assert_clean(&[]);
}

/// HTTP/2: the streams of one connection are requests of their own; parked ones are woken
/// through their stream's write event. (curl is the client: it speaks h2c.)
#[test]
fn http2_streams_of_a_session_share_one_subrequest() {
    let (key, certs, nginx) = start_site(|certs| {
        let mut b = Nginx::builder().file("eng/index.html", "eng\n");
        b = b.http(&format!(
            r#"
    cf_access_team_domain {TEAM};
    cf_access_aud {AUD};
    cf_access_certs_url {certs};
    map $cf_access_groups $is_eng {{
        "~\"Eng\"" 1;
        default "";
    }}
    server {{
        listen 127.0.0.1:{{PORT}} http2;
        root {{PREFIX}}/html;
        cf_access on;
        cf_access_identity /_cf_identity;
        location /eng/ {{
            cf_access_require $is_eng;
        }}
        location = /_cf_identity {{
            internal;
            proxy_pass {identity};
            proxy_pass_request_headers off;
            proxy_set_header Cookie "CF_Authorization=$cf_access_token";
        }}
    }}
"#,
            certs = certs.url(),
            identity = certs.identity_url(),
        ));
        b.start()
    });
    certs.set_identity(IdentityConfig::new().with_groups(groups(&["Eng"])).with_delay_ms(300));
    let t = token(&key);
    let url = format!("http://127.0.0.1:{}/eng/", nginx.port());
    let out = std::process::Command::new("curl")
        .args(["-s", "--http2-prior-knowledge", "--parallel", "--parallel-immediate"])
        .args(["-H", &format!("{HDR}: {t}"), "-w", "%{http_version} %{http_code}\\n"])
        .args(["-o", "/dev/null", "--max-time", "10"])
        .args(std::iter::repeat_n(url.as_str(), 6))
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().filter(|l| *l == "2 200").count(), 6, "{text}{}", nginx.error_log());
    assert_eq!(certs.identity_hits(), 1, "six streams, one subrequest");
    nginx.assert_clean(&[]);
}
