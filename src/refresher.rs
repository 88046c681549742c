//! The per-worker thread that keeps every key store of the cycle current.
//!
//! Started in `init_process` (threads do not survive fork), it blocks all signals, calls no
//! nginx API but the error log, and never holds anything the request path waits on (the
//! request path only sets an atomic flag and, rarely, notifies a condition variable). On
//! `exit_process` it is told to stop and left detached: a fetch in flight cannot delay
//! worker shutdown.

use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use cf_access_core::schedule;

use crate::keys::{self, KeyStore};
use crate::log::ThreadLog;

struct Control {
    /// `true` once the thread must stop.
    stop: Mutex<bool>,
    wake: Condvar,
}

static CONTROL: Control = Control {
    stop: Mutex::new(false),
    wake: Condvar::new(),
};

fn stop_flag() -> MutexGuard<'static, bool> {
    CONTROL.stop.lock().unwrap_or_else(|p| p.into_inner())
}

/// Wakes the refresher to look at stores that want a refresh.
pub fn wake() {
    // Taking the lock orders this notify after the thread's check of the flags.
    drop(stop_flag());
    CONTROL.wake.notify_one();
}

/// Asks the thread to end; does not wait for it.
pub fn stop() {
    *stop_flag() = true;
    CONTROL.wake.notify_all();
}

pub struct Settings {
    pub stores: Vec<Arc<KeyStore>>,
    pub interval: Duration,
    pub keys_cache: Option<PathBuf>,
}

struct Target {
    store: Arc<KeyStore>,
    failures: u32,
    due: Instant,
    last_fetch: Option<Instant>,
}

/// Spawns the thread.
pub fn start(settings: Settings, log: ThreadLog) -> std::io::Result<()> {
    *stop_flag() = false;
    let now = Instant::now();
    let targets = settings
        .stores
        .iter()
        .map(|store| Target {
            // Workers fork with the master's keys; a store still without keys is fetched
            // at once.
            due: if store.has_keys() {
                now + settings.interval
            } else {
                now
            },
            store: store.clone(),
            failures: 0,
            last_fetch: None,
        })
        .collect();
    crate::signals::spawn_with_signals_blocked(move || run(targets, &settings, &log))
}

fn run(mut targets: Vec<Target>, settings: &Settings, log: &ThreadLog) {
    loop {
        // Wait until a fetch is due, a store wants one, or we must stop.
        {
            let mut stop = stop_flag();
            loop {
                if *stop {
                    return;
                }
                let now = Instant::now();
                for t in targets.iter_mut() {
                    if t.store.take_refresh_wanted() {
                        t.due = t.due.min(schedule::forced_due(t.last_fetch, now));
                    }
                }
                let Some(next) = targets.iter().map(|t| t.due).min() else {
                    return;
                };
                if next <= now {
                    break;
                }
                stop = CONTROL
                    .wake
                    .wait_timeout(stop, next - now)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
        }
        let mut changed = false;
        for target in targets.iter_mut().filter(|t| t.due <= Instant::now()) {
            changed |= refresh(target, log);
            target.due = Instant::now() + schedule::next_delay(settings.interval, target.failures);
            if *stop_flag() {
                return;
            }
        }
        if let (true, Some(path)) = (changed, &settings.keys_cache) {
            if let Err(e) = keys::save(&settings.stores, path) {
                log.warn(&format!(
                    "cf_access: cannot write the key cache \"{}\": {e}",
                    path.display()
                ));
            }
        }
    }
}

/// One fetch; logs only changes of state. Returns whether the published set changed.
fn refresh(target: &mut Target, log: &ThreadLog) -> bool {
    target.last_fetch = Some(Instant::now());
    let url = &target.store.url;
    match keys::refresh(&target.store) {
        Ok((n, changed)) => {
            if target.failures > 0 {
                log.notice(&format!(
                    "cf_access: key set from \"{url}\" loaded again ({n} keys)"
                ));
            } else if changed {
                log.notice(&format!(
                    "cf_access: key set from \"{url}\" updated ({n} keys)"
                ));
            }
            target.failures = 0;
            changed
        }
        Err(e) => {
            target.failures = target.failures.saturating_add(1);
            if target.failures == 1 {
                log.warn(&format!(
                    "cf_access: refreshing keys from \"{url}\" failed: {e}; {}",
                    if target.store.has_keys() {
                        "keeping the last good key set"
                    } else {
                        "no keys loaded, requests are refused"
                    }
                ));
            }
            false
        }
    }
}
