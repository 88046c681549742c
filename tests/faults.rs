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

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use cf_access_dev::{certs_json, mint, now, user_claims, Behavior, CertsServer, KeyPair};
use common::{free_port, process_alive, Nginx, Response};

const TEAM: &str = "team.cloudflareaccess.com";
const AUD: &str = "4714c1358e65fe4b408ad6d432a5f878f08194bdb4752441fd56faefa9b2b6f2";
const HDR: &str = "Cf-Access-Jwt-Assertion";

/// The tail of the refresher's warning when a fetch fails while a key set is loaded.
const KEEPING: &str = "keeping the last good key set";

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// nginx with one protected location using `url`, refreshing every second.
fn nginx_for(url: &str) -> Nginx {
    Nginx::builder()
        .protected_site((TEAM, AUD, url), "cf_access_refresh 1s;", "")
        .start()
}

fn token(key: &KeyPair) -> String {
    mint(
        key,
        &user_claims(TEAM, AUD, "alice@example.com", now(), 600),
    )
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
    let before = nginx
        .error_log()
        .matches(&format!("access denied ({status})"))
        .count();
    let r = get_with(nginx, token);
    assert_eq!(
        (r.status, r.header("X-Status")),
        (403, Some(status)),
        "--- error log ---\n{}",
        nginx.error_log()
    );
    let after = nginx
        .error_log()
        .matches(&format!("access denied ({status})"))
        .count();
    assert_eq!(after, before + 1, "one `access denied ({status})` line");
}

/// Polls `cond` every 50 ms until it holds; panics with `what` and the error log otherwise.
fn wait_until(nginx: &Nginx, timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}\n--- error log ---\n{}",
            nginx.error_log()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until `token` is let in (the site healed), bounded.
fn wait_ok(nginx: &Nginx, token: &str, timeout: Duration, what: &str) {
    wait_until(nginx, timeout, what, || {
        get_with(nginx, token).status == 200
    });
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

/// The log has no sign of a crashed process or an internal error.
fn assert_clean(log: &str, stderr: &str) {
    for bad in ["exited on signal", "[alert]", "[emerg]"] {
        assert!(
            !log.contains(bad),
            "error log contains {bad:?}:\n{log}\n--- stderr ---\n{stderr}"
        );
    }
    assert!(
        !stderr.contains("panicked"),
        "a Rust panic on nginx's stderr:\n{stderr}"
    );
}

/// Graceful quit (SIGQUIT to the master), waits until the master and all workers are gone,
/// then checks the whole error log (including the shutdown) with [`assert_clean`].
/// Returns how long the quit took; asserts it is under 5 s.
fn quit_and_check(nginx: Nginx) -> Duration {
    let master = nginx.pid();
    let workers = nginx.worker_pids();
    let started = Instant::now();
    let sent = Command::new("kill")
        .args(["-QUIT", &master.to_string()])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(sent, "could not send SIGQUIT to {master}");
    while process_alive(master) || workers.iter().any(|&w| process_alive(w)) {
        if started.elapsed() > Duration::from_secs(10) {
            break;
        }
        thread::sleep(Duration::from_millis(10));
    }
    let took = started.elapsed();
    assert_clean(&nginx.error_log(), &nginx.stderr());
    assert!(
        took < Duration::from_secs(5),
        "graceful quit took {took:?}\n--- error log ---\n{}",
        nginx.error_log()
    );
    drop(nginx);
    took
}

// ---------------------------------------------------------------------------------------------
// A second loopback server for faults CertsServer cannot play: a body that never finishes on a
// connection left open, and a non-HTTP peer answering at once (for the TLS test).
// ---------------------------------------------------------------------------------------------

#[derive(Clone)]
enum Mode {
    /// Read the request head, write these bytes, close.
    Answer(Vec<u8>),
    /// Read the request head, write these bytes, then hold the connection open (never close
    /// it) until the client gives up or the server is dropped.
    Stall(Vec<u8>),
    /// On the first bytes received (whatever they are), write these bytes and close.
    Garbage(Vec<u8>),
    /// Read the request head, write these bytes, then one more byte (a space) every 100 ms,
    /// forever: the body makes progress but never ends.
    Trickle(Vec<u8>),
}

struct StallServer {
    addr: SocketAddr,
    mode: Arc<Mutex<Mode>>,
    hits: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl StallServer {
    fn start(mode: Mode) -> StallServer {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("local_addr");
        let mode = Arc::new(Mutex::new(mode));
        let hits = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (m, h, s) = (mode.clone(), hits.clone(), stop.clone());
        let accept = thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let (m, h, s) = (m.clone(), h.clone(), s.clone());
                        thread::spawn(move || serve(stream, &m, &h, &s));
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(10))
                    }
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        StallServer {
            addr,
            mode,
            hits,
            stop,
            accept: Some(accept),
        }
    }

    fn url(&self, scheme: &str) -> String {
        format!("{scheme}://{}/cdn-cgi/access/certs", self.addr)
    }

    fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for StallServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

fn serve(mut stream: TcpStream, mode: &Mutex<Mode>, hits: &AtomicUsize, stop: &AtomicBool) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(50)));
    let mode = mode.lock().unwrap().clone();
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if stop.load(Ordering::SeqCst) || Instant::now() > deadline {
            return;
        }
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                head.extend_from_slice(&buf[..n]);
                if matches!(mode, Mode::Garbage(_)) || head.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
    hits.fetch_add(1, Ordering::SeqCst);
    match mode {
        Mode::Answer(bytes) | Mode::Garbage(bytes) => {
            let _ = stream.write_all(&bytes);
            let _ = stream.shutdown(Shutdown::Write);
            // Drain briefly so the close does not become a reset.
            let end = Instant::now() + Duration::from_millis(300);
            while Instant::now() < end {
                match stream.read(&mut buf) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                    Err(_) => break,
                }
            }
        }
        Mode::Trickle(bytes) => {
            let _ = stream.write_all(&bytes);
            while !stop.load(Ordering::SeqCst) {
                if stream.write_all(b" ").is_err() {
                    return;
                }
                thread::sleep(Duration::from_millis(100));
            }
        }
        Mode::Stall(bytes) => {
            let _ = stream.write_all(&bytes);
            while !stop.load(Ordering::SeqCst) {
                match stream.read(&mut buf) {
                    Ok(0) => return,
                    Ok(_) => {}
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                    Err(_) => return,
                }
            }
        }
    }
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

/// A certs endpoint that can be switched between healthy and one fault.
trait Endpoint {
    fn url(&self) -> String;
    fn hits(&self) -> usize;
    fn healthy(&self, keys: &[&KeyPair]);
    /// `startup`: the variant used while nginx starts (may differ from the later one).
    fn fault(&self, startup: bool);
}

/// A [`CertsServer`] with a fault behavior for startup and one for later.
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
        Switch {
            server: CertsServer::start(at_startup.clone()),
            at_startup,
            later,
        }
    }
}

impl Endpoint for Switch {
    fn url(&self) -> String {
        self.server.url()
    }
    fn hits(&self) -> usize {
        self.server.hits()
    }
    fn healthy(&self, keys: &[&KeyPair]) {
        self.server.set_keys(keys);
    }
    fn fault(&self, startup: bool) {
        self.server.set(if startup {
            self.at_startup.clone()
        } else {
            self.later.clone()
        });
    }
}

/// A [`StallServer`] switched between a healthy answer and a stalled body.
struct Stalling {
    server: StallServer,
    stall: Vec<u8>,
}

impl Endpoint for Stalling {
    fn url(&self) -> String {
        self.server.url("http")
    }
    fn hits(&self) -> usize {
        self.server.hits()
    }
    fn healthy(&self, keys: &[&KeyPair]) {
        self.server
            .set(Mode::Answer(http_200_json(&certs_json(keys))));
    }
    fn fault(&self, _startup: bool) {
        self.server.set(Mode::Stall(self.stall.clone()));
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
fn fault_story(ep: &dyn Endpoint, error: &str, from_startup: bool) {
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
        wait_until(
            &nginx,
            Duration::from_secs(12),
            "the worker's first refresh to fail",
            || {
                has_line(
                    &nginx.error_log(),
                    &["[warn]", &format!("{refresh_failed}{error}")],
                )
            },
        );
        assert_denied(&nginx, &t1, "no_keys");
        ep.healthy(&[&k1]);
        wait_ok(
            &nginx,
            &t1,
            Duration::from_secs(12),
            "recovery from a start without keys",
        );
        assert!(nginx.wait_for_log(&loaded_again, Duration::from_secs(2)));
    } else {
        assert_ok(&nginx, &t1, "keys loaded at startup");
    }

    // The fault starts while a good key set is loaded.
    let h0 = ep.hits();
    ep.fault(false);
    wait_until(
        &nginx,
        Duration::from_secs(20),
        "two more fetches of the broken endpoint",
        || ep.hits() >= h0 + 2,
    );
    wait_until(
        &nginx,
        Duration::from_secs(3),
        "the refresh failure to be logged",
        || has_line(&nginx.error_log(), &[&refresh_failed, KEEPING]),
    );
    let log = nginx.error_log();
    assert!(
        has_line(
            &log,
            &["[warn]", &format!("{refresh_failed}{error}"), KEEPING]
        ),
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
    wait_ok(
        &nginx,
        &t2,
        Duration::from_secs(12),
        "recovery with the rotated key set",
    );
    assert_ok(&nginx, &t1, "the previous key is still published");
    wait_until(
        &nginx,
        Duration::from_secs(2),
        "the `loaded again` notice",
        || nginx.error_log().matches(&loaded_again).count() > again,
    );
    let log = nginx.error_log();
    assert!(
        line_with(&log, &loaded_again).is_some_and(|l| l.contains("[notice]")),
        "{log}"
    );
    quit_and_check(nginx);
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
    wait_ok(
        &nginx,
        &t1,
        Duration::from_secs(10),
        "recovery once the endpoint is up",
    );
    assert!(server.hits() >= 1);

    // It goes away again (connection refused): the key set is kept.
    drop(server);
    wait_until(
        &nginx,
        Duration::from_secs(5),
        "the refresh failure to be logged",
        || nginx.error_log().contains(KEEPING),
    );
    assert!(has_line(
        &nginx.error_log(),
        &["[warn]", "Connection refused", KEEPING]
    ));
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
    wait_ok(
        &nginx,
        &t2,
        Duration::from_secs(10),
        "recovery with the rotated set",
    );
    assert!(nginx.wait_for_log("loaded again", Duration::from_secs(2)));
    quit_and_check(nginx);
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
    quit_and_check(nginx);
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
    let ep = Stalling {
        server: StallServer::start(Mode::Answer(Vec::new())),
        stall: b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 4096\r\n\r\n{\"keys\":[{"
            .to_vec(),
    };
    fault_story(&ep, "no complete answer within 5 s", false);
}

#[test]
fn body_trickling_forever_is_cut_off_at_startup() {
    // A body that keeps making progress (a byte every 100 ms) and never ends: the fetch must
    // still give up (the body timeout is a budget, not an idle timeout), or the master would
    // never finish starting.
    let server = StallServer::start(Mode::Trickle(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n{\"keys\":["
            .to_vec(),
    ));
    let url = server.url("http");
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
    assert!(
        took < Duration::from_secs(8),
        "nginx took {took:?} to start"
    );
    assert_denied(&nginx, &token(&KeyPair::generate()), "no_keys");
    quit_and_check(nginx);
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
    let server = StallServer::start(Mode::Garbage(
        b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec(),
    ));
    let url = server.url("https");
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
    wait_until(&nginx, Duration::from_secs(5), "two more attempts", || {
        server.hits() >= h + 2
    });
    assert!(
        has_line(
            &nginx.error_log(),
            &["[warn]", "refreshing keys from", &url]
        ),
        "{}",
        nginx.error_log()
    );
    assert_denied(&nginx, &token(&key), "no_keys");
    quit_and_check(nginx);
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
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args([
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&keyf)
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        made,
        "openssl is needed for this test (Debian: apt-get install openssl)"
    );
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
    let _server = OpensslServer {
        child,
        dir: dir.clone(),
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "openssl s_server did not start");
        thread::sleep(Duration::from_millis(50));
    }
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
    quit_and_check(nginx);
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
    wait_until(&nginx, Duration::from_secs(5), "a fetch to hang", || {
        certs.hits() > h0
    });
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
    let took = quit_and_check(nginx);
    assert!(
        took < Duration::from_millis(2500),
        "quit with a hanging fetch took {took:?}"
    );
}
