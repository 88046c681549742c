//! The per-worker thread that keeps every key store of the cycle current.
//!
//! Started in `init_process` (threads do not survive fork), it blocks all signals, calls no
//! nginx API but the error log, and never holds anything the request path waits on (the
//! request path only sets an atomic flag and, rarely, notifies a condition variable). Each
//! round (`keys::sync`) adopts what another process put in the shared zone, or fetches
//! under the instance-wide lease. A panic in a round is caught, logged as `[alert]`, and the
//! thread goes on. On `exit_process` it is told to stop and left detached: a fetch in
//! flight cannot delay worker shutdown.

use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use cf_access_core::refresh::POLL;
use cf_access_core::zone::Zone;

use crate::keys::sync::{self, Env};
use crate::keys::{Caller, Egress, KeyStore};
use crate::log::ThreadLog;
use crate::time::mono_ms;

struct Control {
    /// `true` once the thread must stop.
    stop: Mutex<bool>,
    wake: Condvar,
}

static CONTROL: Control = Control { stop: Mutex::new(false), wake: Condvar::new() };

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
    pub zone: Zone,
    /// The configuration generation this worker belongs to.
    pub generation: u64,
    pub stores: Vec<Arc<KeyStore>>,
    pub interval: Duration,
    pub egress: Egress,
}

struct Target {
    store: Arc<KeyStore>,
    /// When a request asked for a forced refresh (monotonic ms), until answered.
    wish: Option<u64>,
    /// When to look at this store again (monotonic ms).
    next: u64,
}

/// Spawns the thread.
pub fn start(settings: Settings, log: ThreadLog) -> std::io::Result<()> {
    *stop_flag() = false;
    let targets = settings
        .stores
        .iter()
        .map(|store| Target { store: store.clone(), wish: None, next: 0 })
        .collect();
    crate::signals::spawn_with_signals_blocked(move || run(targets, &settings, &log))
}

fn run(mut targets: Vec<Target>, settings: &Settings, log: &ThreadLog) {
    let env = Env {
        interval: settings.interval,
        egress: &settings.egress,
        caller: Caller::Worker,
        generation: settings.generation,
        log,
    };
    loop {
        // Wait until a store is due, a request wants a refresh, or we must stop.
        {
            let mut stop = stop_flag();
            loop {
                if *stop {
                    return;
                }
                let now = mono_ms();
                for t in targets.iter_mut() {
                    // A new wish is looked at now; one already pending waits for its turn
                    // (a flood of unknown kids must not become a round per request).
                    if t.store.take_refresh_wanted() && t.wish.is_none() {
                        t.wish = Some(now);
                        t.next = now;
                    }
                }
                let Some(next) = targets.iter().map(|t| t.next).min() else {
                    return;
                };
                if next <= now {
                    break;
                }
                stop = CONTROL
                    .wake
                    .wait_timeout(stop, Duration::from_millis(next - now))
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
        }
        for t in targets.iter_mut().filter(|t| t.next <= mono_ms()) {
            let round = panic::catch_unwind(AssertUnwindSafe(|| {
                sync::round(&settings.zone, &t.store, &mut t.wish, &env)
            }));
            t.next = round.unwrap_or_else(|_| {
                log.alert(format_args!(
                    "the key refresher panicked while refreshing \"{}\"; \
                     it goes on",
                    t.store.url
                ));
                mono_ms() + POLL.as_millis() as u64
            });
            if *stop_flag() {
                return;
            }
        }
    }
}
