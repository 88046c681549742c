//! Faults of the certs endpoint must neither take the site down nor open it.
//!
//! Every test runs the real nginx with the module against a loopback certs endpoint that
//! misbehaves on command, and checks that:
//!
//! * nginx starts even when the endpoint is broken at startup, and refuses every request
//!   (`no_keys`) with a clear `[warn]` line while nothing was ever loaded;
//! * a fault that starts later keeps the last good key set: valid tokens still get 200 after
//!   the endpoint has failed at least twice, and the failure is logged once;
//! * the site heals by itself (bounded wait) once the endpoint works again, picking up a
//!   rotated key set, with the `loaded again` notice;
//! * nothing crashed: no `exited on signal`, no `[alert]`, no Rust panic, and a graceful quit
//!   finishes promptly.

// A test: a panic is a failed assertion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use cf_access_dev::{certs_json, Behavior, CertsServer, KeyPair};
use cf_access_testkit::site::{token, AUD, HDR, TEAM};
use cf_access_testkit::{free_port, wait_until, Nginx, Response};

/// The tail of the refresher's warning when a fetch fails while a key set is loaded.
const KEEPING: &str = "keeping the last good key set";

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// nginx with one protected location using `url`, refreshing every second.
fn nginx_for(url: &str) -> Nginx {
    Nginx::builder().protected_site((TEAM, AUD, url), "cf_access_refresh 1s;", "").start()
}

fn get_with(nginx: &Nginx, token: &str) -> Response {
    nginx.get("/p/", &[(HDR, token)])
}

/// Asserts 200 / `ok` for `token`.
fn assert_ok(nginx: &Nginx, token: &str, what: &str) {
    let r = get_with(nginx, token);
    assert_eq!(
        (r.status, r.header("X-Status")),
        (200, Some("ok")),
        "{what}\n--- error log ---\n{}",
        nginx.error_log()
    );
}

/// Asserts a 403 with `status` in `$cf_access_status` and a new `access denied (status)` line.
fn assert_denied(nginx: &Nginx, token: &str, status: &str) {
    let before = nginx.error_log().matches(&format!("access denied ({status})")).count();
    let r = get_with(nginx, token);
    assert_eq!(
        (r.status, r.header("X-Status")),
        (403, Some(status)),
        "--- error log ---\n{}",
        nginx.error_log()
    );
    let after = nginx.error_log().matches(&format!("access denied ({status})")).count();
    assert_eq!(after, before + 1, "one `access denied ({status})` line");
}

/// Waits until `token` is let in (the site healed), bounded.
fn wait_ok(nginx: &Nginx, token: &str, timeout: Duration, what: &str) {
    nginx.wait_until(timeout, what, || get_with(nginx, token).status == 200);
    assert_ok(nginx, token, what);
}

/// The first error-log line containing `needle`.
fn line_with(log: &str, needle: &str) -> Option<String> {
    log.lines().find(|l| l.contains(needle)).map(str::to_string)
}

/// Whether some error-log line contains every one of `needles`.
fn has_line(log: &str, needles: &[&str]) -> bool {
    log.lines().any(|l| needles.iter().all(|n| l.contains(n)))
}

fn http_200_json(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

// ---------------------------------------------------------------------------------------------
// The common scenario
// ---------------------------------------------------------------------------------------------

/// A certs endpoint ([`CertsServer`]) that can be switched between healthy and a fault, with
/// a fault behavior for startup and one for later.
struct Switch {
    server: CertsServer,
    at_startup: Behavior,
    later: Behavior,
}

impl Switch {
    fn new(fault: Behavior) -> Switch {
        Switch::with_startup(fault.clone(), fault)
    }

    fn with_startup(at_startup: Behavior, later: Behavior) -> Switch {
        Switch { server: CertsServer::start(at_startup.clone()), at_startup, later }
    }

    fn url(&self) -> String {
        self.server.url()
    }

    fn hits(&self) -> usize {
        self.server.hits()
    }

    fn healthy(&self, keys: &[&KeyPair]) {
        self.server.set_keys(keys);
    }

    /// `startup`: the variant used while nginx starts (may differ from the later one).
    fn fault(&self, startup: bool) {
        self.server.set(if startup { self.at_startup.clone() } else { self.later.clone() });
    }
}

/// Runs the whole story for one fault; `error` is a fragment of the logged fetch error.
///
/// 1. (if `from_startup`) nginx starts against the broken endpoint: it comes up, the master
///    logs `[warn] ... fetching keys from "<url>" failed: <error>`, the worker's refresher logs
///    that no keys are loaded, and a valid token is refused with `no_keys`. The endpoint then
///    heals and the site lets the token in without any intervention.
/// 2. The endpoint breaks while a good key set is loaded: once it has been asked at least twice
///    more, the failure is logged exactly once (`keeping the last good key set`) and valid
///    tokens still get 200, while a token of a key that was never published stays refused.
/// 3. The endpoint heals with a rotated key set: the new key's tokens get in (bounded wait)
///    and the `loaded again` notice is logged.
fn fault_story(ep: &Switch, error: &str, from_startup: bool) {
    let k1 = KeyPair::generate();
    let k2 = KeyPair::generate();
    let (t1, t2) = (token(&k1), token(&k2));
    let url = ep.url();
    let failed_at_start = format!("fetching keys from \"{url}\" failed: ");
    let refresh_failed = format!("refreshing keys from \"{url}\" failed: ");
    let loaded_again = format!("key set from \"{url}\" loaded again");

    if from_startup {
        ep.fault(true);
    } else {
        ep.healthy(&[&k1]);
    }
    let nginx = nginx_for(&url);

    if from_startup {
        let log = nginx.error_log();
        let line = line_with(&log, &failed_at_start)
            .unwrap_or_else(|| panic!("no startup fetch failure logged:\n{log}"));
        assert!(line.contains("[warn]"), "{line}");
        assert!(
            line.contains(&format!("{failed_at_start}{error}")),
            "expected {error:?} in: {line}"
        );
        assert_denied(&nginx, &t1, "no_keys");
        // The worker's refresher tries at once and fails too (a hanging fetch takes 5 s).
        nginx.wait_until(Duration::from_secs(12), "the worker's first refresh to fail", || {
            has_line(&nginx.error_log(), &["[warn]", &format!("{refresh_failed}{error}")])
        });
        assert_denied(&nginx, &t1, "no_keys");
        ep.healthy(&[&k1]);
        wait_ok(&nginx, &t1, Duration::from_secs(12), "recovery from a start without keys");
        assert!(nginx.wait_for_log(&loaded_again, Duration::from_secs(2)));
    } else {
        assert_ok(&nginx, &t1, "keys loaded at startup");
    }

    // The fault starts while a good key set is loaded.
    let h0 = ep.hits();
    ep.fault(false);
    nginx.wait_until(Duration::from_secs(20), "two more fetches of the broken endpoint", || {
        ep.hits() >= h0 + 2
    });
    nginx.wait_until(Duration::from_secs(3), "the refresh failure to be logged", || {
        has_line(&nginx.error_log(), &[&refresh_failed, KEEPING])
    });
    let log = nginx.error_log();
    assert!(
        has_line(&log, &["[warn]", &format!("{refresh_failed}{error}"), KEEPING]),
        "expected `{refresh_failed}{error}...; {KEEPING}`:\n{log}"
    );
    for _ in 0..5 {
        assert_ok(&nginx, &t1, "the last good key set must be kept");
    }
    assert_denied(&nginx, &t2, "unknown_kid");
    assert_eq!(
        nginx.error_log().matches(KEEPING).count(),
        1,
        "the failure is logged once, not once per retry:\n{}",
        nginx.error_log()
    );

    // The endpoint heals with a rotated key set.
    let again = nginx.error_log().matches(&loaded_again).count();
    ep.healthy(&[&k1, &k2]);
    wait_ok(&nginx, &t2, Duration::from_secs(12), "recovery with the rotated key set");
    assert_ok(&nginx, &t1, "the previous key is still published");
    nginx.wait_until(Duration::from_secs(2), "the `loaded again` notice", || {
        nginx.error_log().matches(&loaded_again).count() > again
    });
    let log = nginx.error_log();
    assert!(line_with(&log, &loaded_again).is_some_and(|l| l.contains("[notice]")), "{log}");
    nginx.quit();
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[test]
fn certs_endpoint_down_at_startup_then_up_then_down_again() {
    // Nobody listens on this port (connection refused) until we start a server there.
    let port = free_port();
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let url = format!("http://{addr}/cdn-cgi/access/certs");
    let k1 = KeyPair::generate();
    let k2 = KeyPair::generate();
    let (t1, t2) = (token(&k1), token(&k2));

    let nginx = nginx_for(&url);
    let log = nginx.error_log();
    let line = line_with(&log, &format!("fetching keys from \"{url}\" failed: "))
        .unwrap_or_else(|| panic!("no startup failure logged:\n{log}"));
    assert!(line.contains("[warn]"), "{line}");
    assert!(line.contains("Connection refused"), "{line}");
    assert_denied(&nginx, &t1, "no_keys");
    assert_denied(&nginx, "", "no_token");
    // The worker's refresher tried too (and failed).
    assert!(nginx.wait_for_log(
        &format!("refreshing keys from \"{url}\" failed: io: Connection refused"),
        Duration::from_secs(5)
    ));

    // The endpoint comes up: the site heals by itself.
    let json = certs_json(&[&k1]);
    let server = CertsServer::start_dynamic(addr, move || Behavior::Json(json.clone()))
        .expect("bind the certs port");
    wait_ok(&nginx, &t1, Duration::from_secs(10), "recovery once the endpoint is up");
    assert!(server.hits() >= 1);

    // It goes away again (connection refused): the key set is kept.
    drop(server);
    nginx.wait_until(Duration::from_secs(5), "the refresh failure to be logged", || {
        nginx.error_log().contains(KEEPING)
    });
    assert!(has_line(&nginx.error_log(), &["[warn]", "Connection refused", KEEPING]));
    // At least two more (refused) refreshes at the 1 s retry interval.
    thread::sleep(Duration::from_millis(2500));
    for _ in 0..5 {
        assert_ok(&nginx, &t1, "the last good key set must be kept");
    }
    assert_eq!(nginx.error_log().matches(KEEPING).count(), 1);

    // Back with a rotated set.
    let json = certs_json(&[&k1, &k2]);
    let _server = CertsServer::start_dynamic(addr, move || Behavior::Json(json.clone()))
        .expect("bind the certs port again");
    wait_ok(&nginx, &t2, Duration::from_secs(10), "recovery with the rotated set");
    assert!(nginx.wait_for_log("loaded again", Duration::from_secs(2)));
    nginx.quit();
}

#[test]
fn http_500() {
    let ep = Switch::new(Behavior::Status(500, r#"{"error":"oops"}"#.into()));
    fault_story(&ep, "http status 500", true);
}

#[test]
fn http_503_at_startup_is_reported_with_its_status() {
    let ep = Switch::new(Behavior::Status(503, "unavailable".into()));
    let key = KeyPair::generate();
    let nginx = nginx_for(&ep.url());
    assert!(
        line_with(&nginx.error_log(), "fetching keys from")
            .is_some_and(|l| l.contains("http status 503") && l.contains("[warn]")),
        "{}",
        nginx.error_log()
    );
    assert_denied(&nginx, &token(&key), "no_keys");
    ep.healthy(&[&key]);
    wait_ok(&nginx, &token(&key), Duration::from_secs(10), "recovery");
    nginx.quit();
}

#[test]
fn invalid_json() {
    let ep = Switch::new(Behavior::Json(r#"{"keys":[{"kid":"x","kty":"RSA""#.into()));
    fault_story(&ep, "certs response is not valid json", true);
}

#[test]
fn empty_key_list() {
    let ep = Switch::new(Behavior::Json(r#"{"keys":[]}"#.into()));
    fault_story(&ep, "certs response has no usable RSA signing key", true);
}

#[test]
fn only_non_rsa_keys() {
    // A well-formed P-256 JWK (and an RSA entry for encryption, not signing): nothing usable.
    let ec = r#"{"keys":[
        {"kty":"EC","crv":"P-256","kid":"ec-1","use":"sig","alg":"ES256",
         "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
         "y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
        {"kty":"RSA","kid":"enc-1","use":"enc","alg":"RSA-OAEP","e":"AQAB","n":"sXch"}
    ]}"#;
    let ep = Switch::new(Behavior::Json(ec.into()));
    fault_story(&ep, "certs response has no usable RSA signing key", true);
}

#[test]
fn response_that_never_finishes() {
    // Accepts the request and never answers (5 s receive timeout per fetch).
    let ep = Switch::new(Behavior::Hang);
    fault_story(&ep, "no complete answer within 5 s", true);
}

#[test]
fn body_that_never_finishes() {
    // Headers promise 4096 bytes, 10 are sent, and the connection stays open.
    let ep = Switch::new(Behavior::Stall(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 4096\r\n\r\n{\"keys\":[{"
            .to_vec(),
    ));
    fault_story(&ep, "no complete answer within 5 s", false);
}

#[test]
fn body_trickling_forever_is_cut_off_at_startup() {
    // A body that keeps making progress (a byte every 100 ms) and never ends: the fetch must
    // still give up (the body timeout is a budget, not an idle timeout), or the master would
    // never finish starting.
    let server = CertsServer::start(Behavior::Trickle {
        head: b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n{\"keys\":["
            .to_vec(),
        every_ms: 100,
    });
    let url = server.url();
    let started = Instant::now();
    let nginx = nginx_for(&url);
    let took = started.elapsed();
    let log = nginx.error_log();
    assert!(
        has_line(
            &log,
            &[
                "[warn]",
                &format!("fetching keys from \"{url}\" failed: no complete answer within 5 s")
            ]
        ),
        "{log}"
    );
    assert!(took < Duration::from_secs(8), "nginx took {took:?} to start");
    assert_denied(&nginx, &token(&KeyPair::generate()), "no_keys");
    nginx.quit();
}

#[test]
fn truncated_body_then_close() {
    // Content-Length larger than what is sent, then the server closes (CertsServer's Raw).
    let ep = Switch::new(Behavior::Raw(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 4096\r\n\r\n{\"keys\":[{\"kid\":"
            .to_vec(),
    ));
    fault_story(&ep, "io: Peer disconnected", true);
}

#[test]
fn response_larger_than_one_mib() {
    // ~2 MiB of JSON-looking data: with Content-Length, and (at startup) close-delimited.
    let mut body = String::from(r#"{"keys":["#);
    while body.len() < 2 * 1024 * 1024 {
        body.push_str(r#"{"kty":"oct","kid":"padding-padding-padding","k":"AAAAAAAAAAAAAAAA"},"#);
    }
    body.push_str(r#"{"kty":"oct"}]}"#);
    let with_length = http_200_json(&body);
    let mut close_delimited =
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n".to_vec();
    close_delimited.extend_from_slice(body.as_bytes());
    let ep = Switch::with_startup(Behavior::Raw(close_delimited), Behavior::Raw(with_length));
    fault_story(&ep, "response larger than 1048576 bytes", true);
}

#[test]
fn tls_handshake_failure_with_a_plain_http_peer() {
    // https:// to a port that answers in plain HTTP at once: the handshake fails.
    let server = CertsServer::start(Behavior::Garbage(
        b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec(),
    ));
    let url = format!("https://{}/cdn-cgi/access/certs", server.addr());
    let key = KeyPair::generate();
    let started = Instant::now();
    let nginx = nginx_for(&url);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "a failing handshake must not take a fetch timeout: {:?}",
        started.elapsed()
    );
    let log = nginx.error_log();
    let line = line_with(&log, &format!("fetching keys from \"{url}\" failed: "))
        .unwrap_or_else(|| panic!("no startup failure logged:\n{log}"));
    assert!(line.contains("[warn]"), "{line}");
    eprintln!("{line}");
    assert!(server.hits() >= 1, "nginx did connect");
    assert_denied(&nginx, &token(&key), "no_keys");
    // The worker keeps retrying (and failing) every second; still closed, still up.
    let h = server.hits();
    nginx.wait_until(Duration::from_secs(5), "two more attempts", || server.hits() >= h + 2);
    assert!(
        has_line(&nginx.error_log(), &["[warn]", "refreshing keys from", &url]),
        "{}",
        nginx.error_log()
    );
    assert_denied(&nginx, &token(&key), "no_keys");
    nginx.quit();
}

/// A TLS server with a self-signed certificate (openssl s_server): the certificate must be
/// rejected, so the page it serves is never parsed.
struct OpensslServer {
    child: Child,
    dir: std::path::PathBuf,
}

impl Drop for OpensslServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn tls_self_signed_certificate_is_rejected() {
    let dir = std::env::temp_dir().join(format!("cf-access-faults-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, keyf) = (dir.join("cert.pem"), dir.join("key.pem"));
    let made = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"])
        .args(["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&keyf)
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(made, "openssl is needed for this test (Debian: apt-get install openssl)");
    let port = free_port();
    let child = Command::new("openssl")
        .args(["s_server", "-quiet", "-www", "-accept"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("-cert")
        .arg(&cert)
        .arg("-key")
        .arg(&keyf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl s_server");
    let _server = OpensslServer { child, dir: dir.clone() };
    wait_until(Duration::from_secs(5), "openssl s_server to accept", || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let url = format!("https://127.0.0.1:{port}/cdn-cgi/access/certs");
    let key = KeyPair::generate();
    let nginx = nginx_for(&url);
    let log = nginx.error_log();
    let line = line_with(&log, &format!("fetching keys from \"{url}\" failed: "))
        .unwrap_or_else(|| panic!("no startup failure logged:\n{log}"));
    eprintln!("{line}");
    assert!(
        line.to_ascii_lowercase().contains("certificate"),
        "the failure must be the certificate, not the page served: {line}"
    );
    assert_denied(&nginx, &token(&key), "no_keys");
    nginx.quit();
}

#[test]
fn requests_are_answered_promptly_while_a_fetch_hangs() {
    let key = KeyPair::generate();
    let certs = CertsServer::start_with_keys(&[&key]);
    let nginx = nginx_for(&certs.url());
    let t = token(&key);
    assert_ok(&nginx, &t, "keys loaded at startup");

    let h0 = certs.hits();
    certs.set(Behavior::Hang);
    nginx.wait_until(Duration::from_secs(5), "a fetch to hang", || certs.hits() > h0);
    let hanging = certs.hits();
    let mut slowest = Duration::ZERO;
    for i in 0..50 {
        let started = Instant::now();
        let r = get_with(&nginx, &t);
        let took = started.elapsed();
        assert_eq!(r.status, 200, "request {i} while a fetch hangs");
        assert!(took < Duration::from_secs(1), "request {i} took {took:?}");
        slowest = slowest.max(took);
    }
    // The same fetch was in flight the whole time (a second one would mean it had ended).
    assert_eq!(
        certs.hits(),
        hanging,
        "the hanging fetch ended during the requests; the check proved nothing"
    );
    eprintln!("slowest of 50 requests during a hanging fetch: {slowest:?}");
    // A fetch in flight does not delay a graceful quit.
    let took = nginx.quit();
    assert!(took < Duration::from_millis(2500), "quit with a hanging fetch took {took:?}");
}
