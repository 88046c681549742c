//! The per-worker thread that keeps every key store of the cycle current.
//!
//! Started in `init_process` (threads do not survive fork), it blocks all signals, calls no
//! nginx API but the error log, and never holds anything the request path waits on. On
//! `exit_process` it is told to stop and left detached: a fetch in flight cannot delay
//! worker shutdown.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use cf_access_core::schedule;

use crate::keys::{self, KeyStore};
use crate::log::ThreadLog;

#[derive(Default)]
struct Control {
    stop: Mutex<bool>,
    wake: Condvar,
}

pub struct Refresher {
    control: Arc<Control>,
}

struct Target {
    store: Arc<KeyStore>,
    failures: u32,
    due: Instant,
}

impl Refresher {
    /// Spawns the thread. `stores` are refreshed every `interval` (sooner after failures).
    pub fn start(
        stores: Vec<Arc<KeyStore>>,
        interval: Duration,
        log: ThreadLog,
    ) -> std::io::Result<Refresher> {
        let control = Arc::new(Control::default());
        let thread_control = control.clone();
        let now = Instant::now();
        let targets = stores
            .into_iter()
            .map(|store| Target {
                // Workers fork with the master's keys; a store still without keys is fetched
                // at once.
                due: if store.current().is_some() {
                    now + interval
                } else {
                    now
                },
                store,
                failures: 0,
            })
            .collect();
        crate::signals::spawn_with_signals_blocked(move || {
            run(targets, interval, &thread_control, &log)
        })?;
        Ok(Refresher { control })
    }

    /// Asks the thread to end; does not wait for it.
    pub fn stop(&self) {
        *self.control.stop.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.control.wake.notify_all();
    }
}

fn run(mut targets: Vec<Target>, interval: Duration, control: &Control, log: &ThreadLog) {
    loop {
        let Some(next_due) = targets.iter().map(|t| t.due).min() else {
            return;
        };
        {
            let mut stop = control.stop.lock().unwrap_or_else(|p| p.into_inner());
            while !*stop {
                let now = Instant::now();
                if now >= next_due {
                    break;
                }
                stop = control
                    .wake
                    .wait_timeout(stop, next_due - now)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            if *stop {
                return;
            }
        }
        for target in targets.iter_mut().filter(|t| t.due <= Instant::now()) {
            match keys::refresh(&target.store) {
                Ok(n) => {
                    if target.failures > 0 {
                        log.notice(&format!(
                            "cf_access: key set from \"{}\" loaded again ({n} keys)",
                            target.store.url
                        ));
                    }
                    target.failures = 0;
                }
                Err(e) => {
                    target.failures = target.failures.saturating_add(1);
                    // Logged once per change of state, not once per retry.
                    if target.failures > 1 {
                        continue_after(target, interval);
                        continue;
                    }
                    log.warn(&format!(
                        "cf_access: refreshing keys from \"{}\" failed: {e}; {}",
                        target.store.url,
                        if target.store.current().is_some() {
                            "keeping the last good key set"
                        } else {
                            "no keys loaded, requests are refused"
                        }
                    ));
                }
            }
            continue_after(target, interval);
            if *control.stop.lock().unwrap_or_else(|p| p.into_inner()) {
                return;
            }
        }
    }
}

fn continue_after(target: &mut Target, interval: Duration) {
    target.due = Instant::now() + schedule::next_delay(interval, target.failures);
}

/// Keeps the running refresher of this worker process.
pub static RUNNING: Mutex<Option<Refresher>> = Mutex::new(None);
