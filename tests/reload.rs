//! `nginx -s reload` under load: no request fails, old workers (and their refresher threads)
//! go away promptly, nothing leaks from one generation of workers to the next (threads, open
//! files, also in the master), and a graceful quit afterwards is prompt.

// A test: a panic is a failed assertion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use cf_access_dev::{mint, now, user_claims, Behavior, CertsServer, KeyPair};
use cf_access_testkit::site::{AUD, HDR, TEAM};
use cf_access_testkit::{http_request, poll_until, process_alive, send_signal, Nginx};

const RELOADS: usize = 20;
const WORKERS: u32 = 2;
const CLIENTS: usize = 3;

/// (threads, open fds) of a process, from /proc.
fn usage(pid: u32) -> Option<(usize, usize)> {
    let count = |dir: String| fs::read_dir(dir).ok().map(|d| d.count());
    Some((count(format!("/proc/{pid}/task"))?, count(format!("/proc/{pid}/fd"))?))
}

/// The smallest (threads, open fds) of `pid` over ten samples 100 ms apart, so that a
/// connection or a key fetch that happens to be in flight is not counted (a leak stays).
fn usage_min(pid: u32) -> Option<(usize, usize)> {
    let mut min: Option<(usize, usize)> = None;
    for _ in 0..10 {
        let (t, f) = usage(pid)?;
        min = Some(min.map_or((t, f), |(mt, mf)| (mt.min(t), mf.min(f))));
        thread::sleep(Duration::from_millis(100));
    }
    min
}

/// Waits until the current workers (`WORKERS` of them, none of `old`) are the only ones and
/// have been running for 1.5 s (their refresher thread has done a fetch); returns their pids.
fn settled_workers(nginx: &Nginx, old: &[u32]) -> Vec<u32> {
    let mut settled = Vec::new();
    nginx.wait_until(
        Duration::from_secs(5),
        &format!("{WORKERS} workers, none of {old:?}, to settle"),
        || {
            let all: Vec<u32> = nginx.worker_pids();
            if all.len() == WORKERS as usize && all.iter().all(|p| !old.contains(p)) {
                thread::sleep(Duration::from_millis(1500));
                if nginx.worker_pids() == all {
                    settled = all;
                    return true;
                }
            }
            false
        },
    );
    settled
}

/// Each worker's pid and [`usage_min`] (measure with no load running).
fn measure(pids: &[u32]) -> Vec<(u32, (usize, usize))> {
    pids.iter().map(|&p| (p, usage_min(p).expect("worker usage"))).collect()
}

#[test]
fn reloads_under_load_lose_nothing_and_leak_nothing() {
    let key = KeyPair::generate();
    let certs = CertsServer::start_with_keys(&[&key]);
    let nginx = Nginx::builder()
        .workers(WORKERS)
        .protected_site((TEAM, AUD, &certs.url()), "cf_access_refresh 1s;", "")
        .start();
    let token = mint(&key, &user_claims(TEAM, AUD, "alice@example.com", now(), 3600));
    let port = nginx.port();
    assert_eq!(nginx.get("/p/", &[(HDR, &token)]).status, 200);

    let master = nginx.pid();
    let master_before = usage_min(master).expect("master usage");
    let first = measure(&settled_workers(&nginx, &[]));
    eprintln!("master (threads, fds) before: {master_before:?}; first workers: {first:?}");

    // Load: a few clients sending sequential requests, one connection each.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (stop, ok, failures, token) =
                (stop.clone(), ok.clone(), failures.clone(), token.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match http_request(port, "GET", "/p/", &[(HDR, &token)], None) {
                        Ok(r) if r.status == 200 && r.body == "ok\n" => {
                            ok.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(r) => failures
                            .lock()
                            .unwrap()
                            .push(format!("status {} body {:?}", r.status, r.body)),
                        Err(e) => failures.lock().unwrap().push(e),
                    }
                }
            })
        })
        .collect();

    let mut seen: Vec<u32> = first.iter().map(|(p, _)| *p).collect();
    let mut before_last = seen.clone();
    let mut last_reload = Instant::now();
    let started = Instant::now();
    for i in 0..RELOADS {
        let before = ok.load(Ordering::SeqCst);
        before_last = seen.clone();
        last_reload = Instant::now();
        // Every other reload really changes the configuration (a second AUD tag); the token
        // is valid under both.
        let old_conf = fs::read_to_string(nginx.conf_path()).unwrap();
        let conf = &old_conf;
        let conf = if i % 2 == 0 {
            conf.replace(&format!("cf_access_aud {AUD};"), &format!("cf_access_aud {AUD} x;"))
        } else {
            conf.replace(&format!("cf_access_aud {AUD} x;"), &format!("cf_access_aud {AUD};"))
        };
        assert_ne!(conf, old_conf, "the configuration changes");
        fs::write(nginx.conf_path(), conf).unwrap();
        nginx.reload();
        for p in nginx.worker_pids() {
            if !seen.contains(&p) {
                seen.push(p);
            }
        }
        // Let some requests reach the new workers before the next reload.
        poll_until(Duration::from_secs(2), || ok.load(Ordering::SeqCst) >= before + 10);
        thread::sleep(Duration::from_millis(100));
        assert!(
            failures.lock().unwrap().is_empty(),
            "failed requests around reload {i}: {:?}",
            failures.lock().unwrap()
        );
    }
    let reloads_took = started.elapsed();
    // Every worker from before the last reload exits promptly (within ~5 s of it), while
    // the load goes on.
    let old = before_last;
    nginx.wait_until(
        Duration::from_secs(5).saturating_sub(last_reload.elapsed()),
        &format!("the old workers {old:?} to exit within 5 s of the last reload"),
        || !old.iter().any(|&p| process_alive(p)),
    );
    let old_gone = last_reload.elapsed();
    let last_pids = settled_workers(&nginx, &old);
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().unwrap();
    }
    // Measured like the first workers: with no load running.
    let last = measure(&last_pids);
    let served = ok.load(Ordering::SeqCst);
    let failed = failures.lock().unwrap().clone();
    eprintln!(
        "{RELOADS} reloads in {reloads_took:?}; {served} requests ok, {} failed; old workers \
         gone {old_gone:?} after the last reload; last workers: {last:?}",
        failed.len()
    );
    assert!(failed.is_empty(), "failed requests: {failed:?}");
    assert!(served >= RELOADS * 10, "too little load to mean anything: {served}");
    // Every worker seen during the test but the last generation is gone.
    for p in &seen {
        assert!(
            last.iter().any(|(l, _)| l == p) || !process_alive(*p),
            "worker {p} outlived its generation"
        );
    }

    // No growth of threads or open files from the first workers to the last ones.
    let max_first = |f: fn(&(usize, usize)) -> usize| first.iter().map(|(_, u)| f(u)).max();
    let (first_threads, first_fds) = (max_first(|u| u.0).unwrap(), max_first(|u| u.1).unwrap());
    for (pid, (threads, fds)) in &last {
        assert!(
            *threads <= first_threads + 2,
            "worker {pid}: {threads} threads, the first workers had {first_threads}"
        );
        assert!(
            *fds <= first_fds + 2,
            "worker {pid}: {fds} open files, the first workers had {first_fds}"
        );
    }
    assert!(first_threads >= 2, "a worker has its refresher thread");
    // The master fetches keys at every reload: no thread or socket may outlive the fetch.
    let master_after = usage_min(master).expect("master usage");
    eprintln!("master (threads, fds) after: {master_after:?}");
    assert_eq!(master_after.0, 1, "the master runs a single thread");
    assert!(
        master_after.1 <= master_before.1 + 2,
        "master open files: {master_before:?} -> {master_after:?}"
    );
    assert_eq!(nginx.get("/p/", &[(HDR, &token)]).status, 200);

    assert_eq!(
        nginx.error_log().matches("start worker process ").count(),
        WORKERS as usize * (RELOADS + 1),
        "every reload started new workers"
    );

    // Graceful quit (SIGQUIT) is prompt, and nothing crashed, before or during it.
    let quit_took = nginx.quit();
    eprintln!("SIGQUIT took {quit_took:?}");
}

/// A reload never waits on Cloudflare for what the shared zone already holds. The worker
/// holding the refresh lease dies in a fetch that hangs, so the lease is free and a refresh
/// due as `SIGHUP` comes: the reload still takes effect at once (a new worker, the old one
/// gone), and a worker killed then is respawned at once.
#[test]
fn a_reload_while_the_certs_endpoint_hangs_takes_effect_at_once() {
    let key = KeyPair::generate();
    let certs = CertsServer::start_with_keys(&[&key]);
    let nginx = Nginx::builder()
        .workers(1)
        .protected_site((TEAM, AUD, &certs.url()), "cf_access_refresh 1s;", "")
        .start();
    let token = mint(&key, &user_claims(TEAM, AUD, "alice@example.com", now(), 3600));
    assert_eq!(nginx.get("/p/", &[(HDR, &token)]).status, 200);
    certs.set(Behavior::Hang);
    // Within a second or two the worker's refresher is in a fetch that hangs (up to 5 s).
    thread::sleep(Duration::from_millis(2500));
    let old = nginx.worker_pids();
    assert_eq!(old.len(), 1);
    assert!(send_signal(old[0], libc::SIGKILL));
    let log = nginx.log_len();
    let started = Instant::now();
    assert!(send_signal(nginx.pid(), libc::SIGHUP));
    // The master logs "start worker processes" once the new configuration's workers start.
    let reloaded = poll_until(Duration::from_secs(8), || {
        nginx.log_since(log).contains("start worker processes")
    });
    let took = started.elapsed();
    assert!(reloaded, "the reload did not take effect within 8 s: {}", nginx.error_log());
    assert!(took < Duration::from_millis(800), "the reload took {took:?}");
    // A worker killed now is respawned at once, and it serves with the zone's keys.
    let victim = nginx.worker_pids()[0];
    assert!(send_signal(victim, libc::SIGKILL));
    let respawned = poll_until(Duration::from_millis(800), || {
        let now = nginx.worker_pids();
        !now.is_empty() && !now.contains(&victim)
    });
    assert!(respawned, "no worker respawned within 0.8 s: {}", nginx.error_log());
    let r = nginx.get("/p/", &[(HDR, &token)]);
    assert_eq!(r.status, 200, "{}", nginx.error_log());
    drop(certs);
    nginx.assert_clean(&["exited on signal 9", "refreshing keys"]);
}
