//! One truth per instance: no process verifies with a key set older than the newest one any
//! process of the instance has loaded (respawned workers, reloads, reloads during an
//! outage), one fetch per refresh for the whole instance, the key cache file trusted only
//! when nobody else could have written it, bounded fetches, and egress through a proxy and
//! a private CA, in workers as well as in the master.

// A test: a panic is a failed assertion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use cf_access_dev::{
    certs_json, now, user_claims, Behavior, CertsServer, ConnectProxy, KeyPair, TlsCertsServer,
};
use cf_access_testkit::site::{token, AUD, HDR, TEAM};
use cf_access_testkit::{process_alive, send_signal, Nginx};
use serde_json::json;

fn status(nginx: &Nginx, key: &KeyPair) -> (u16, String) {
    let r = nginx.get("/p/", &[(HDR, &token(key))]);
    (r.status, r.header("X-Status").unwrap_or("").to_string())
}

/// The certs endpoint rotated from `old` to `new` only; one `new` token made the instance
/// pick it up. Returns once `new` gets in and `old` is refused.
fn rotate(nginx: &Nginx, certs: &CertsServer, old: &KeyPair, new: &KeyPair) {
    assert_eq!(status(nginx, old).0, 200, "{}", nginx.error_log());
    certs.set_keys(&[new]);
    nginx.wait_until(Duration::from_secs(5), "the new key to be picked up", || {
        status(nginx, new).0 == 200
    });
    assert_eq!(status(nginx, old), (403, "unknown_kid".into()));
}

/// A directory for a key cache file, as an operator would make it (root, 0755).
struct CacheDir(PathBuf);

static DIRS: AtomicUsize = AtomicUsize::new(0);

impl CacheDir {
    fn new() -> CacheDir {
        let n = DIRS.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("cf-access-keys-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        CacheDir(dir)
    }

    fn file(&self) -> PathBuf {
        self.0.join("keys.json")
    }

    fn directive(&self) -> String {
        format!("cf_access_keys_cache {};", self.file().display())
    }
}

impl Drop for CacheDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn is_root() -> bool {
    fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

#[test]
fn a_respawned_worker_does_not_bring_back_a_retired_key() {
    let (old, new) = (KeyPair::generate(), KeyPair::generate());
    let certs = CertsServer::start_with_keys(&[&old]);
    let nginx = Nginx::builder().protected_site((TEAM, AUD, &certs.url()), "", "").start();
    rotate(&nginx, &certs, &old, &new);

    let workers = nginx.worker_pids();
    assert_eq!(workers.len(), 1);
    assert!(send_signal(workers[0], libc::SIGKILL));
    nginx.wait_until(Duration::from_secs(5), "a new worker", || {
        let now = nginx.worker_pids();
        now.len() == 1 && now[0] != workers[0]
    });
    thread::sleep(Duration::from_millis(200));
    // The master forked the new worker with its own copy (the old key): the zone wins.
    assert_eq!(
        status(&nginx, &old),
        (403, "unknown_kid".into()),
        "the retired key is back after a respawn:\n{}",
        nginx.error_log()
    );
    assert_eq!(status(&nginx, &new).0, 200);
    nginx.assert_clean(&["exited on signal 9"]);
}

fn reload_during_an_outage(cache: Option<&CacheDir>) {
    let (old, new) = (KeyPair::generate(), KeyPair::generate());
    let certs = CertsServer::start_with_keys(&[&old]);
    let directive = cache.map(CacheDir::directive).unwrap_or_default();
    let nginx = Nginx::builder().protected_site((TEAM, AUD, &certs.url()), &directive, "").start();
    if let Some(cache) = cache {
        let saved = fs::read_to_string(cache.file()).unwrap();
        assert!(saved.contains(old.kid()) && !saved.contains(new.kid()));
    }
    rotate(&nginx, &certs, &old, &new);
    certs.set(Behavior::Status(500, "down".into()));
    let hits = certs.hits();
    nginx.reload();
    for _ in 0..5 {
        assert_eq!(status(&nginx, &new).0, 200, "the newest set was lost:\n{}", nginx.error_log());
        assert_eq!(status(&nginx, &old), (403, "unknown_kid".into()));
    }
    assert_eq!(certs.hits(), hits, "a reload does not fetch what the zone has");
    if let Some(cache) = cache {
        let saved = fs::read_to_string(cache.file()).unwrap();
        assert!(
            saved.contains(new.kid()) && !saved.contains(old.kid()),
            "the master rewrites the cache from the zone: {saved}"
        );
    }
    nginx.assert_clean(&[]);
}

#[test]
fn a_reload_during_an_outage_keeps_the_newest_set() {
    reload_during_an_outage(None);
}

#[test]
fn a_reload_during_an_outage_prefers_the_zone_to_an_older_key_cache() {
    reload_during_an_outage(Some(&CacheDir::new()));
}

#[test]
fn one_fetch_per_interval_for_four_workers() {
    let key = KeyPair::generate();
    let certs = CertsServer::start_with_keys(&[&key]);
    let nginx = Nginx::builder()
        .workers(4)
        .protected_site((TEAM, AUD, &certs.url()), "cf_access_refresh 2s;", "")
        .start();
    let started = Instant::now();
    let before = certs.hits();
    thread::sleep(Duration::from_secs(9));
    let fetches = certs.hits() - before;
    let intervals = started.elapsed().as_secs() / 2;
    eprintln!("4 workers, refresh 2s: {fetches} fetches in {:?}", started.elapsed());
    assert!(
        fetches as u64 <= intervals + 1 && fetches as u64 + 1 >= intervals,
        "{fetches} fetches in {intervals} intervals"
    );
    assert_eq!(status(&nginx, &key).0, 200);
    nginx.assert_clean(&[]);
}

#[test]
fn made_up_kids_on_four_workers_force_one_fetch_per_window() {
    let key = KeyPair::generate();
    let certs = CertsServer::start_with_keys(&[&key]);
    let nginx = Nginx::builder()
        .workers(4)
        .protected_site((TEAM, AUD, &certs.url()), "", "add_header X-Pid $pid always;")
        .start();
    let before = certs.hits();
    let stranger = KeyPair::generate();
    let payload = user_claims(TEAM, AUD, "mallory@example.com", now(), 600).to_string();
    let started = Instant::now();
    let mut pids = std::collections::BTreeSet::new();
    for i in 0..2000 {
        let header = json!({"alg": "RS256", "kid": format!("made-up-{i}")}).to_string();
        let t = cf_access_dev::sign_raw(&stranger, "RS256", &header, &payload);
        let r = nginx.get("/p/", &[(HDR, &t)]);
        assert_eq!(r.header("X-Status"), Some("unknown_kid"));
        if let Some(pid) = r.header("X-Pid") {
            pids.insert(pid.to_string());
        }
    }
    thread::sleep(Duration::from_millis(500));
    let fetches = certs.hits() - before;
    let windows = started.elapsed().as_secs() / 10 + 1;
    eprintln!(
        "2000 unknown kids over {} workers in {:?}: {fetches} fetches",
        pids.len(),
        started.elapsed()
    );
    assert!(pids.len() > 1, "the requests reached one worker only: {pids:?}");
    assert!(fetches >= 1, "an unknown kid triggers a refresh");
    assert!(fetches as u64 <= windows, "{fetches} fetches in {windows} rate-limit windows");
    nginx.assert_clean(&[]);
}

// ---------------------------------------------------------------------------------------------
// The key cache file
// ---------------------------------------------------------------------------------------------

/// Starts nginx during an outage with the key cache at `cache`; returns it.
fn start_during_outage(cache: &CacheDir) -> (Nginx, CertsServer) {
    let certs = CertsServer::start(Behavior::Status(503, "down".into()));
    let nginx =
        Nginx::builder().protected_site((TEAM, AUD, &certs.url()), &cache.directive(), "").start();
    (nginx, certs)
}

/// A cache file that would let `attacker` in, as the worker user could plant it.
fn planted(cache: &CacheDir, attacker: &KeyPair) -> PathBuf {
    let certs = CertsServer::start_with_keys(&[attacker]);
    let file = cache.file();
    let body = json!({ certs.url(): {"fetched_at": now(), "certs": serde_json::from_str::<serde_json::Value>(&certs_json(&[attacker])).unwrap()} });
    fs::write(&file, body.to_string()).unwrap();
    file
}

/// The planted file must be refused with `why`: the attacker's token gets `no_keys`.
fn assert_refused(cache: &CacheDir, attacker: &KeyPair, why: &str) {
    // The planted file names the URL of a server that is gone; use the same URL shape.
    let saved: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(cache.file()).unwrap_or("{}".into()))
            .unwrap_or(json!({}));
    let url = saved
        .as_object()
        .and_then(|o| o.keys().next().cloned())
        .unwrap_or_else(|| "http://127.0.0.1:9/cdn-cgi/access/certs".into());
    let nginx = Nginx::builder().protected_site((TEAM, AUD, &url), &cache.directive(), "").start();
    let log = nginx.error_log();
    assert!(
        log.lines().any(|l| l.contains("[warn]")
            && l.contains("ignoring the key cache")
            && l.contains(why)),
        "expected a warning with {why:?}:\n{log}"
    );
    assert_eq!(status(&nginx, attacker), (403, "no_keys".into()), "{log}");
    nginx.assert_clean(&[]);
}

#[test]
fn a_good_key_cache_serves_a_start_during_an_outage() {
    let key = KeyPair::generate();
    let cache = CacheDir::new();
    let certs = CertsServer::start_with_keys(&[&key]);
    let nginx =
        Nginx::builder().protected_site((TEAM, AUD, &certs.url()), &cache.directive(), "").start();
    drop(nginx);
    let meta = fs::metadata(cache.file()).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    certs.set(Behavior::Status(503, "down".into()));
    let nginx =
        Nginx::builder().protected_site((TEAM, AUD, &certs.url()), &cache.directive(), "").start();
    assert_eq!(status(&nginx, &key).0, 200, "{}", nginx.error_log());
    assert!(nginx.error_log().contains("from the key cache"));
    nginx.assert_clean(&[]);
}

/// The workers fetched a newer set than the master's last start or reload saw; the master
/// saves it as it exits (`signal`: SIGQUIT is `nginx -s quit`, SIGTERM `nginx -s stop`), so
/// a restart during an outage serves the new key and refuses the retired one.
fn a_stop_saves_the_newest_set(signal: libc::c_int) {
    let (old, new) = (KeyPair::generate(), KeyPair::generate());
    let cache = CacheDir::new();
    let certs = CertsServer::start_with_keys(&[&old]);
    let site = || {
        Nginx::builder().protected_site((TEAM, AUD, &certs.url()), &cache.directive(), "").start()
    };
    let nginx = site();
    rotate(&nginx, &certs, &old, &new);
    let saved = fs::read_to_string(cache.file()).unwrap();
    assert!(
        saved.contains(old.kid()) && !saved.contains(new.kid()),
        "only the start has written the cache so far: {saved}"
    );
    let master = nginx.pid();
    assert!(send_signal(master, signal));
    nginx.wait_until(Duration::from_secs(5), "the master to exit", || !process_alive(master));
    let saved = fs::read_to_string(cache.file()).unwrap();
    assert!(
        saved.contains(new.kid()) && !saved.contains(old.kid()),
        "the exiting master saves the zone's set: {saved}\n{}",
        nginx.error_log()
    );
    nginx.assert_clean(&[]);
    drop(nginx);

    certs.set(Behavior::Status(503, "down".into()));
    let nginx = site();
    assert_eq!(status(&nginx, &new).0, 200, "{}", nginx.error_log());
    assert_eq!(status(&nginx, &old), (403, "unknown_kid".into()));
    nginx.assert_clean(&[]);
}

#[test]
fn a_quit_saves_the_newest_set_for_a_restart_during_an_outage() {
    a_stop_saves_the_newest_set(libc::SIGQUIT);
}

#[test]
fn a_fast_stop_saves_the_newest_set_too() {
    a_stop_saves_the_newest_set(libc::SIGTERM);
}

#[test]
fn a_key_cache_planted_by_another_user_is_refused() {
    assert!(is_root(), "this test checks file ownership and must run as root");
    let attacker = KeyPair::generate();
    let cache = CacheDir::new();
    let file = planted(&cache, &attacker);
    std::os::unix::fs::chown(&file, Some(65534), Some(65534)).unwrap();
    fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
    assert_refused(&cache, &attacker, "owned by uid 65534");
}

#[test]
fn a_group_writable_key_cache_is_refused() {
    let attacker = KeyPair::generate();
    let cache = CacheDir::new();
    let file = planted(&cache, &attacker);
    fs::set_permissions(&file, fs::Permissions::from_mode(0o664)).unwrap();
    assert_refused(&cache, &attacker, "writable by group or others");
}

#[test]
fn a_key_cache_in_a_world_writable_directory_is_refused() {
    let attacker = KeyPair::generate();
    let cache = CacheDir::new();
    planted(&cache, &attacker);
    fs::set_permissions(cache.file(), fs::Permissions::from_mode(0o600)).unwrap();
    fs::set_permissions(&cache.0, fs::Permissions::from_mode(0o777)).unwrap();
    assert_refused(&cache, &attacker, "writable by others");
}

/// The key cache's own directory is root's, but the one above it belongs to the worker
/// user (say `/srv/www/nginx-keys/` with `/srv/www` owned by www-data): that user could
/// rename `nginx-keys` away and put a directory of its own, with its own file, in its place.
#[test]
fn a_key_cache_below_a_directory_of_the_worker_user_is_refused() {
    assert!(is_root(), "this test checks directory ownership and must run as root");
    let attacker = KeyPair::generate();
    let top = CacheDir::new();
    let cache = CacheDir(top.0.join("nginx-keys"));
    fs::create_dir(&cache.0).unwrap();
    fs::set_permissions(&cache.0, fs::Permissions::from_mode(0o755)).unwrap();
    let file = planted(&cache, &attacker);
    fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(&top.0, Some(65534), Some(65534)).unwrap();
    assert_refused(&cache, &attacker, "owned by uid 65534");
}

#[test]
fn a_symlinked_key_cache_is_refused_and_never_followed() {
    let attacker = KeyPair::generate();
    let cache = CacheDir::new();
    // A valid-looking file elsewhere, linked at the cache path.
    let elsewhere = CacheDir::new();
    let target = planted(&elsewhere, &attacker);
    fs::set_permissions(&target, fs::Permissions::from_mode(0o600)).unwrap();
    symlink(&target, cache.file()).unwrap();
    assert_refused(&cache, &attacker, "symbolic link");

    // Writing: links planted at the path and at the old predictable temporary name must not
    // make the master write through them.
    let victim = elsewhere.0.join("victim");
    fs::write(&victim, "root's file\n").unwrap();
    let _ = fs::remove_file(cache.file());
    symlink(&victim, cache.file()).unwrap();
    let key = KeyPair::generate();
    let certs = CertsServer::start_with_keys(&[&key]);
    let nginx =
        Nginx::builder().protected_site((TEAM, AUD, &certs.url()), &cache.directive(), "").start();
    let tmp = format!("{}.tmp.{}", cache.file().display(), nginx.pid());
    symlink(&victim, &tmp).unwrap();
    nginx.reload();
    assert_eq!(fs::read_to_string(&victim).unwrap(), "root's file\n");
    let meta = fs::symlink_metadata(cache.file()).unwrap();
    assert!(meta.file_type().is_file(), "the link was replaced, not followed");
    assert!(fs::read_to_string(cache.file()).unwrap().contains(key.kid()));
    nginx.assert_clean(&[]);
}

#[test]
fn a_fifo_at_the_key_cache_path_does_not_hang_the_master() {
    let cache = CacheDir::new();
    let path = std::ffi::CString::new(cache.file().to_str().unwrap()).unwrap();
    // SAFETY: mkfifo reads a valid C string.
    assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
    let started = Instant::now();
    let (nginx, _certs) = start_during_outage(&cache);
    assert!(started.elapsed() < Duration::from_secs(8), "{:?}", started.elapsed());
    let log = nginx.error_log();
    assert!(log.contains("ignoring the key cache") && log.contains("not a regular file"), "{log}");
    assert_eq!(status(&nginx, &KeyPair::generate()).1, "no_keys");
    nginx.assert_clean(&[]);
}

#[test]
fn an_oversized_key_cache_is_refused() {
    let attacker = KeyPair::generate();
    let cache = CacheDir::new();
    let file = planted(&cache, &attacker);
    fs::OpenOptions::new().write(true).open(&file).unwrap().set_len(5 * 1024 * 1024).unwrap();
    fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
    assert_refused(&cache, &attacker, "larger than");
}

// ---------------------------------------------------------------------------------------------
// Bounded fetches, proxy and CA
// ---------------------------------------------------------------------------------------------

#[test]
fn slow_redirects_cannot_stall_startup_past_the_deadline() {
    let last = CertsServer::start(Behavior::Trickle {
        head:
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"
                .to_vec(),
        every_ms: 100,
    });
    let mut hops = vec![last];
    for _ in 0..3 {
        let next = hops.last().unwrap().url();
        hops.push(CertsServer::start(Behavior::Redirect {
            location: next,
            delay_ms: 4500,
            status: 302,
        }));
    }
    let first = hops.last().unwrap().url();
    let started = Instant::now();
    let nginx = Nginx::builder().protected_site((TEAM, AUD, &first), "", "").start();
    let took = started.elapsed();
    eprintln!("start with three slow redirects took {took:?}");
    assert!(took < Duration::from_millis(7500), "startup took {took:?}");
    let log = nginx.error_log();
    assert!(
        log.contains(&format!(
            "fetching keys from \"{first}\" failed: no complete answer within 5 s"
        )),
        "{log}"
    );
    assert_eq!(status(&nginx, &KeyPair::generate()).1, "no_keys");
    drop(nginx);
}

/// The certs URLs the zone has no set for are fetched at start all at once: three that
/// hang cost one fetch deadline, not three.
#[test]
fn hanging_certs_urls_cost_startup_one_deadline_together() {
    let servers: Vec<CertsServer> = (0..3).map(|_| CertsServer::start(Behavior::Hang)).collect();
    let mut http = String::new();
    for (i, server) in servers.iter().enumerate() {
        http.push_str(&format!(
            "location /app{i}/ {{ cf_access on; cf_access_team_domain {TEAM}; \
             cf_access_aud {AUD}; cf_access_certs_url {}; }}\n",
            server.url()
        ));
    }
    let started = Instant::now();
    let nginx =
        Nginx::builder().http(&format!("server {{ listen 127.0.0.1:{{PORT}}; {http} }}")).start();
    let took = started.elapsed();
    assert!(took < Duration::from_millis(7500), "startup took {took:?}");
    let log = nginx.error_log();
    for server in &servers {
        let line = format!("fetching keys from \"{}\" failed", server.url());
        assert!(log.contains(&line), "{line}: {log}");
    }
    drop(nginx);
}

#[test]
fn a_proxy_and_a_private_ca_work_in_workers_too() {
    let (k1, k2) = (KeyPair::generate(), KeyPair::generate());
    let tls = TlsCertsServer::start(&[&k1]);
    let proxy = ConnectProxy::start();
    let nginx = Nginx::builder()
        .protected_site(
            (TEAM, AUD, &tls.url()),
            &format!(
                "cf_access_refresh 1s; cf_access_proxy {}; cf_access_trusted_certificate {};",
                proxy.url(),
                tls.ca_pem_path().display()
            ),
            "",
        )
        .start();
    assert_eq!(status(&nginx, &k1).0, 200, "{}", nginx.error_log());
    let at_start = proxy.connects();
    assert!(at_start >= 1, "the master went through the proxy");
    // A rotation only a worker's refresh can pick up.
    tls.set_keys(&[&k1, &k2]);
    nginx.wait_until(Duration::from_secs(8), "the worker to refresh via the proxy", || {
        status(&nginx, &k2).0 == 200
    });
    assert!(proxy.connects() > at_start, "workers use the proxy too");
    let target = tls.addr().to_string();
    assert!(proxy.targets().iter().all(|t| *t == target), "{:?}", proxy.targets());
    nginx.assert_clean(&[]);
}

#[test]
fn without_the_private_ca_the_certificate_is_refused() {
    let key = KeyPair::generate();
    let tls = TlsCertsServer::start(&[&key]);
    let nginx = Nginx::builder().protected_site((TEAM, AUD, &tls.url()), "", "").start();
    let log = nginx.error_log();
    assert!(log.contains("fetching keys from") && log.contains("certificate"), "{log}");
    assert_eq!(status(&nginx, &key).1, "no_keys");
    nginx.assert_clean(&[]);
}

#[test]
fn egress_directives_are_validated() {
    let dir = CacheDir::new();
    let empty = dir.0.join("empty.pem");
    fs::write(&empty, "not a certificate\n").unwrap();
    for (conf, expected) in [
        (
            "cf_access_proxy ftp://proxy:21;".to_string(),
            "invalid value \"ftp://proxy:21\" in \"cf_access_proxy\" directive".to_string(),
        ),
        (
            "cf_access_proxy http://a:1; cf_access_proxy http://b:1;".into(),
            "\"cf_access_proxy\" directive is duplicate".into(),
        ),
        (
            format!("cf_access_trusted_certificate {};", empty.display()),
            format!(
                "\"cf_access_trusted_certificate\" directive cannot use \"{}\"",
                empty.display()
            ),
        ),
        (
            "cf_access_trusted_certificate /nonexistent/ca.pem;".into(),
            "\"cf_access_trusted_certificate\" directive cannot use \"/nonexistent/ca.pem\"".into(),
        ),
    ] {
        let (ok, out) = Nginx::builder()
            .http(&format!("{conf} server {{ listen 127.0.0.1:{{PORT}}; }}"))
            .test_config();
        assert!(!ok && out.contains("[emerg]") && out.contains(&expected), "{conf}: {out}");
    }
}

/// `http://` keys from another machine can be replaced by anyone on the path: `nginx -t`
/// warns with the directive's file and line (and still accepts it); loopback and https do
/// not warn.
#[test]
fn a_plaintext_certs_url_to_another_host_is_warned_about() {
    let warning = "fetches the keys without TLS";
    for (url, warns) in [
        ("http://certs.example.com/cdn-cgi/access/certs", true),
        ("http://10.1.2.3:8080/certs", true),
        ("http://127.0.0.1:1234/certs", false),
        ("http://localhost:1234/certs", false),
        ("https://certs.example.com/cdn-cgi/access/certs", false),
    ] {
        let (ok, out) = Nginx::builder()
            .http(&format!(
                "cf_access_team_domain {TEAM};\n    cf_access_aud {AUD};\n    \
                 cf_access_certs_url {url};\n    server {{ listen 127.0.0.1:{{PORT}}; }}"
            ))
            .test_config();
        assert!(ok, "{url}: {out}");
        let line = out.lines().find(|l| l.contains(warning));
        match line {
            Some(l) => {
                assert!(warns, "{url}: {l}");
                assert!(l.contains("[warn]") && l.contains(url), "{l}");
                assert!(l.contains("nginx.conf:"), "the directive's file and line: {l}");
            }
            None => assert!(!warns, "{url}: no warning in\n{out}"),
        }
    }
}

#[test]
fn a_redirect_from_https_to_http_is_refused() {
    let key = KeyPair::generate();
    let plain = CertsServer::start_with_keys(&[&key]);
    let tls = TlsCertsServer::start_with(Behavior::Redirect {
        location: plain.url(),
        delay_ms: 0,
        status: 302,
    });
    let nginx = Nginx::builder()
        .protected_site(
            (TEAM, AUD, &tls.url()),
            &format!("cf_access_trusted_certificate {};", tls.ca_pem_path().display()),
            "",
        )
        .start();
    let log = nginx.error_log();
    assert!(
        log.contains(&format!(
            "fetching keys from \"{}\" failed: redirect from https to http refused",
            tls.url()
        )),
        "{log}"
    );
    assert!(tls.hits() >= 1, "the https endpoint was asked");
    assert_eq!(plain.hits(), 0, "the http location was never fetched");
    assert_eq!(status(&nginx, &key).1, "no_keys");
    // An https -> https redirect within the limit is followed.
    let good = TlsCertsServer::start(&[&key]);
    tls.set(Behavior::Redirect { location: good.url(), delay_ms: 0, status: 302 });
    drop(nginx);
    // Each stand-in has its own CA: trust both.
    let dir = CacheDir::new();
    let bundle = dir.0.join("bundle.pem");
    fs::write(&bundle, tls.ca_pem() + &good.ca_pem()).unwrap();
    let nginx = Nginx::builder()
        .protected_site(
            (TEAM, AUD, &tls.url()),
            &format!("cf_access_trusted_certificate {};", bundle.display()),
            "",
        )
        .start();
    assert!(good.hits() >= 1);
    assert_eq!(status(&nginx, &key).0, 200, "{}", nginx.error_log());
    nginx.assert_clean(&[]);
}

#[test]
fn a_trickling_answer_cannot_stall_startup_past_the_deadline() {
    // One byte every 2 ms: each read makes progress, so only a deadline of our own ends it.
    let trickle = CertsServer::start(Behavior::Trickle {
        head:
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"
                .to_vec(),
        every_ms: 2,
    });
    let started = Instant::now();
    let nginx = Nginx::builder().protected_site((TEAM, AUD, &trickle.url()), "", "").start();
    let took = started.elapsed();
    eprintln!("start with a trickling certs endpoint took {took:?}");
    assert!(took < Duration::from_millis(7500), "startup took {took:?}");
    assert!(
        nginx.error_log().contains(&format!(
            "fetching keys from \"{}\" failed: no complete answer within 5 s",
            trickle.url()
        )),
        "{}",
        nginx.error_log()
    );
    nginx.assert_clean(&[]);
}
