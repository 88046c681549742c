//! The per-worker thread that keeps every key store of the cycle current.
//!
//! Started in `init_process` (threads do not survive fork), it blocks all signals, calls no
//! nginx API but the error log, and never holds anything the request path waits on (the
//! request path only signals a store, `keys::store`). Each round (`keys::round`) adopts what another process put in the shared zone, or fetches
//! under the instance-wide lease. A panic in a round is caught, logged as `[alert]`, and the
//! thread goes on. On `exit_process` it is told to stop and left detached: a fetch in
//! flight cannot delay worker shutdown.

use std::sync::Arc;
use std::time::Duration;

use cf_access_core::refresh::POLL;
use cf_access_core::zone::Zone;
use ngx::ffi::NGX_LOG_ALERT;

use crate::keys::round::{self, RoundSettings};
use crate::keys::store::DOORBELL;
use crate::keys::{Egress, KeyStore, Role};
use crate::log::ThreadLog;
use crate::time::mono_ms;

/// Asks the thread to end; does not wait for it.
pub fn stop() {
    DOORBELL.set_stop(true);
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
    /// When to look at this store again (monotonic ms).
    next: u64,
}

/// Spawns the thread.
pub fn start(settings: Settings, log: ThreadLog) -> std::io::Result<()> {
    DOORBELL.set_stop(false);
    let targets =
        settings.stores.iter().map(|store| Target { store: store.clone(), next: 0 }).collect();
    crate::signals::spawn_with_signals_blocked(move || run(targets, &settings, &log))
}

fn run(mut targets: Vec<Target>, settings: &Settings, log: &ThreadLog) {
    let round_settings = RoundSettings {
        interval: settings.interval,
        egress: &settings.egress,
        role: Role::Worker,
        generation: settings.generation,
        log,
    };
    loop {
        // Wait until a store is due, a request signalled one, or we must stop.
        {
            let mut stop = DOORBELL.lock();
            loop {
                if *stop {
                    return;
                }
                let now = mono_ms();
                for t in targets.iter_mut() {
                    // A signal is looked at now (a wish already pending raised none: a flood
                    // of unknown kids must not become a round per request).
                    if t.store.take_signal() {
                        t.next = now;
                    }
                }
                let Some(next) = targets.iter().map(|t| t.next).min() else {
                    return;
                };
                if next <= now {
                    break;
                }
                stop = DOORBELL.wait(stop, Duration::from_millis(next - now));
            }
        }
        for t in targets.iter_mut().filter(|t| t.next <= mono_ms()) {
            t.next = log
                .catch_panic(
                    NGX_LOG_ALERT,
                    format_args!(
                        "the key refresher panicked while refreshing \"{}\"; it goes on",
                        t.store.url
                    ),
                    || round::run(&settings.zone, &t.store, &round_settings),
                )
                .unwrap_or_else(|| mono_ms() + POLL.as_millis() as u64);
            if *DOORBELL.lock() {
                return;
            }
        }
    }
}
