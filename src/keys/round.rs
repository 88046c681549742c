//! One refresh round for one certs URL: adopt the set the shared zone holds, fetch under the
//! instance-wide lease when the core says so, record the result in the zone. The master
//! runs one round per URL at every start and reload; the refresher thread runs them for as
//! long as the worker lives. The decisions are the core's (`cf_access_core::refresh`); this
//! file does the locking, the fetching and the logging.

use std::time::Duration;

use cf_access_core::refresh::{self, Event, Local, Me, Step, POLL};
use cf_access_core::zone::{current_pid, process_alive, SlotGuard, Zone, BODY_CAP};
use cf_access_core::KeySet;

use super::fetch::{self, Egress, FetchError, Role};
use super::store::KeyStore;
use crate::log::ThreadLog;
use crate::time::{mono_ms, unix_now};

/// What a round needs besides the zone and the store.
pub struct RoundSettings<'a> {
    pub interval: Duration,
    pub egress: &'a Egress,
    pub role: Role,
    /// A worker's configuration generation (see `Zone::generation`); it fetches only while
    /// that is the zone's current one.
    pub generation: u64,
    pub log: &'a ThreadLog,
}

impl RoundSettings<'_> {
    fn me(&self, zone: &Zone) -> Me {
        Me {
            pid: current_pid(),
            may_fetch: self.role == Role::Master || zone.generation() == self.generation,
        }
    }
}

fn poll_ms() -> u64 {
    POLL.as_millis() as u64
}

/// `store`'s slot, locked and still its URL's; `None` (a failure logged) otherwise.
fn locked<'z>(zone: &'z Zone, store: &KeyStore, log: &ThreadLog) -> Option<SlotGuard<'z>> {
    store.lock(zone).unwrap_or_else(|e| {
        log.warn(format_args!("keys for \"{}\": {e}", store.url));
        None
    })
}

/// Whether the zone holds a key set for `store`'s URL (its slot is this URL's and has one).
pub fn zone_has_set(zone: &Zone, store: &KeyStore) -> bool {
    matches!(store.lock(zone), Ok(Some(g)) if g.state().seq != 0)
}

/// Makes `store` hold the set the zone holds for it, if that is another one. Returns false
/// when the zone cannot be read. A set that does not parse (it cannot happen unless the
/// zone was damaged) is dropped from the zone, so that it is fetched again.
pub fn adopt(zone: &Zone, store: &KeyStore, log: &ThreadLog) -> bool {
    let (body, seq) = {
        let Some(g) = locked(zone, store, log) else {
            return false;
        };
        if g.state().seq == 0 || g.state().seq == store.seq() {
            return true;
        }
        (g.body().to_vec(), g.state().seq)
    };
    match KeySet::from_certs_json(&body) {
        Ok(set) => {
            store.publish(set, seq);
            true
        }
        Err(e) => {
            log.alert(format_args!(
                "the shared zone's key set for \"{}\" is unreadable: {e}; \
                 fetching it again",
                store.url
            ));
            if let Some(mut g) = locked(zone, store, log) {
                if g.state().seq == seq {
                    g.discard_body();
                }
            }
            false
        }
    }
}

/// One round for `store`. Returns when to look again (monotonic ms).
pub fn run(zone: &Zone, store: &KeyStore, settings: &RoundSettings) -> u64 {
    // Adopt, then decide again; a fetch is followed by one more look. Bounded either way.
    for _ in 0..4 {
        let now = mono_ms();
        let wish = store.wish();
        let step = {
            let Some(mut g) = locked(zone, store, settings.log) else {
                return now + poll_ms();
            };
            let mut local = Local { held: store.seq(), wish };
            let me = settings.me(zone);
            let step = refresh::decide(
                g.state_mut(),
                &mut local,
                now,
                settings.interval,
                me,
                process_alive,
            );
            if let (Some(at), None) = (wish, local.wish) {
                store.answered(at);
            }
            step
        };
        match step {
            Step::Wait { until } => return until,
            Step::Adopt => {
                if !adopt(zone, store, settings.log) {
                    return now + poll_ms();
                }
            }
            Step::Fetch { started } => {
                let result = fetch_set(&store.url, settings);
                record(zone, store, started, result, settings);
            }
        }
    }
    mono_ms() + poll_ms()
}

/// The fetch the core asked for: a set that fits the zone, or why not.
fn fetch_set(url: &str, settings: &RoundSettings) -> Result<KeySet, FetchError> {
    let set = fetch::fetch(url, settings.egress, settings.role)?;
    match set.canonical_json().len() {
        len if len > BODY_CAP => Err(FetchError::TooLargeForZone(len)),
        _ => Ok(set),
    }
}

/// The fetch's result recorded in the zone (which releases the lease), then logged once for
/// the instance.
fn record(
    zone: &Zone,
    store: &KeyStore,
    started: u64,
    result: Result<KeySet, FetchError>,
    settings: &RoundSettings,
) {
    let (now, unix, me) = (mono_ms(), unix_now(), current_pid());
    let Some(mut g) = locked(zone, store, settings.log) else {
        return;
    };
    match result {
        Ok(set) => {
            let body = set.canonical_json();
            let changed = g.body() != body;
            let (store_it, event) = refresh::record_success(
                g.state_mut(),
                started,
                changed,
                now,
                unix,
                settings.interval,
                me,
            );
            g.set_error("");
            // The size was checked (fetch_set), so storing does not fail.
            let seq = if store_it { zone.next_seq() } else { 0 };
            let stored = store_it && g.set_body(body, set.len(), seq).is_ok();
            drop(g);
            let n = set.len();
            if stored {
                store.publish(set, seq);
            }
            log_success(&store.url, n, event, settings);
        }
        Err(e) => {
            let text = e.to_string();
            let may_warn = settings.role == Role::Worker;
            let event =
                refresh::record_failure(g.state_mut(), now, settings.interval, me, may_warn);
            g.set_error(&text);
            drop(g);
            log_failure(store, &text, event, settings);
        }
    }
}

fn log_success(url: &str, n: usize, event: Event, settings: &RoundSettings) {
    let log = settings.log;
    match (settings.role, event) {
        (Role::Master, _) => log.notice(format_args!("loaded {n} keys from \"{url}\"")),
        (Role::Worker, Event::Recovered) => {
            log.notice(format_args!("key set from \"{url}\" loaded again ({n} keys)"))
        }
        (Role::Worker, Event::Updated) => {
            log.notice(format_args!("key set from \"{url}\" updated ({n} keys)"))
        }
        _ => {}
    }
}

fn log_failure(store: &KeyStore, text: &str, event: Event, settings: &RoundSettings) {
    let url = &store.url;
    if settings.role == Role::Master {
        settings.log.warn(format_args!("fetching keys from \"{url}\" failed: {text}"));
    } else if event == Event::FirstFailure {
        settings.log.warn(format_args!(
            "refreshing keys from \"{url}\" failed: {text}; {}",
            if store.has_keys() {
                "keeping the last good key set"
            } else {
                "no keys loaded, requests are refused"
            }
        ));
    }
}
