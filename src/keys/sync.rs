//! One round of the refresh state machine for one certs URL: adopt the set the shared zone
//! holds, fetch under the instance-wide lease when the core says so, record the result in
//! the zone. The master runs one round per URL at every start and reload; the refresher
//! thread runs them for as long as the worker lives. The decisions are the core's
//! (`cf_access_core::refresh`); this file does the locking, the fetching and the logging.

use std::time::Duration;

use cf_access_core::refresh::{self, Event, Local, Me, Step, POLL};
use cf_access_core::zone::{current_pid, process_alive, Zone, BODY_CAP};
use cf_access_core::KeySet;

use super::fetch::{self, Caller, Egress, FetchError};
use super::store::KeyStore;
use crate::log::ThreadLog;
use crate::time::{mono_ms, unix_now};

/// What a round needs besides the store.
pub struct Env<'a> {
    pub interval: Duration,
    pub egress: &'a Egress,
    pub caller: Caller,
    /// A worker's configuration generation (see `Zone::generation`); it fetches only while
    /// that is the zone's current one.
    pub generation: u64,
    pub log: &'a ThreadLog,
}

impl Env<'_> {
    fn me(&self, zone: &Zone) -> Me {
        Me {
            pid: current_pid(),
            may_fetch: self.caller == Caller::Master || zone.generation() == self.generation,
        }
    }
}

fn poll_ms() -> u64 {
    POLL.as_millis() as u64
}

/// Whether the zone holds a key set for `store`'s URL (its slot is this URL's and has one).
pub fn zone_has_set(zone: &Zone, store: &KeyStore) -> bool {
    let Some(slot) = store.slot() else {
        return false;
    };
    matches!(zone.lock(slot), Ok(g) if g.url() == store.url && g.state().seq != 0)
}

/// Makes `store` hold the set the zone holds for it, if that is another one. Returns false
/// when the zone cannot be read. A set that does not parse (it cannot happen unless the
/// zone was damaged) is dropped from the zone, so that it is fetched again.
pub fn adopt(zone: &Zone, store: &KeyStore, log: &ThreadLog) -> bool {
    let Some(slot) = store.slot() else {
        return false;
    };
    let (body, seq) = match zone.lock(slot) {
        Ok(g) if g.url() == store.url => {
            if g.state().seq == 0 || g.state().seq == store.seq() {
                return true;
            }
            (g.body().to_vec(), g.state().seq)
        }
        Ok(_) => return false,
        Err(e) => {
            log.warn(format_args!("keys for \"{}\": {e}", store.url));
            return false;
        }
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
            if let Ok(mut g) = zone.lock(slot) {
                if g.url() == store.url && g.state().seq == seq {
                    g.discard_body();
                }
            }
            false
        }
    }
}

/// One round for `store` (`wish`: when a request of this process asked for a forced
/// refresh). Returns when to look again (monotonic ms).
pub fn round(zone: &Zone, store: &KeyStore, wish: &mut Option<u64>, env: &Env) -> u64 {
    let Some(slot) = store.slot() else {
        return mono_ms() + poll_ms();
    };
    // Adopt, then decide again; a fetch is followed by one more look. Bounded either way.
    for _ in 0..4 {
        let now = mono_ms();
        let step = match zone.lock(slot) {
            // The slot went to another URL (a newer configuration): nothing to do here.
            Ok(g) if g.url() != store.url => return now + poll_ms(),
            Ok(mut g) => {
                let mut local = Local { held: store.seq(), wish: *wish };
                let step = refresh::decide(
                    g.state_mut(),
                    &mut local,
                    now,
                    env.interval,
                    env.me(zone),
                    process_alive,
                );
                *wish = local.wish;
                step
            }
            Err(e) => {
                env.log.warn(format_args!("keys for \"{}\": {e}", store.url));
                return now + poll_ms();
            }
        };
        match step {
            Step::Wait { until } => return until,
            Step::Adopt => {
                if !adopt(zone, store, env.log) {
                    return now + poll_ms();
                }
                *wish = None;
            }
            Step::Fetch { started, .. } => fetch_and_record(zone, slot, store, started, env),
        }
    }
    mono_ms() + poll_ms()
}

/// The fetch the core asked for, its result recorded in the zone (which releases the
/// lease), the outcome logged once for the instance.
fn fetch_and_record(zone: &Zone, slot: usize, store: &KeyStore, started: u64, env: &Env) {
    let url = &store.url;
    let result = fetch::fetch(url, env.egress, env.caller).and_then(|set| {
        let len = set.canonical_json().len();
        if len > BODY_CAP {
            return Err(FetchError::Transport(format!(
                "key set of {len} bytes is larger than the shared zone's {BODY_CAP}"
            )));
        }
        Ok(set)
    });
    let (now, unix, me) = (mono_ms(), unix_now(), current_pid());
    let mut g = match zone.lock(slot) {
        Ok(g) if g.url() == *url => g,
        Ok(_) => return,
        Err(e) => {
            env.log.warn(format_args!("keys for \"{url}\": {e}"));
            return;
        }
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
                env.interval,
                me,
            );
            g.set_error("");
            let seq = if store_it { zone.next_seq() } else { 0 };
            if store_it && g.set_body(body, set.len(), seq).is_err() {
                return; // not reached: the size was checked above
            }
            drop(g);
            let n = set.len();
            if store_it {
                store.publish(set, seq);
            }
            match (env.caller, event) {
                (Caller::Master, _) => {
                    env.log.notice(format_args!("loaded {n} keys from \"{url}\""))
                }
                (Caller::Worker, Event::Recovered) => {
                    env.log.notice(format_args!("key set from \"{url}\" loaded again ({n} keys)"))
                }
                (Caller::Worker, Event::Updated) => {
                    env.log.notice(format_args!("key set from \"{url}\" updated ({n} keys)"))
                }
                _ => {}
            }
        }
        Err(e) => {
            let text = e.to_string();
            let may_warn = env.caller == Caller::Worker;
            let event = refresh::record_failure(g.state_mut(), now, env.interval, me, may_warn);
            g.set_error(&text);
            drop(g);
            if env.caller == Caller::Master {
                env.log.warn(format_args!("fetching keys from \"{url}\" failed: {text}"));
            } else if event == Event::FirstFailure {
                env.log.warn(format_args!(
                    "refreshing keys from \"{url}\" failed: {text}; {}",
                    if store.has_keys() {
                        "keeping the last good key set"
                    } else {
                        "no keys loaded, requests are refused"
                    }
                ));
            }
        }
    }
}
