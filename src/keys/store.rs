//! This process's key set for each certs URL, and what its requests ask of the refresher.
//!
//! Each [`KeyStore`] holds the set this process verifies with in an `ArcSwapOption`: the
//! request path only loads it (lock-free, [`KeyStore::snapshot`]); the master and the
//! refresher thread swap in a whole new set, always one the shared zone holds (see
//! `round.rs`). Stores are shared by every location that uses the same certs URL and
//! survive reloads (the registry is process-wide).
//!
//! The request path never steers the refresher beyond two signals, each a flag and, the
//! first time, a ring of the [`DOORBELL`]: "adopt now" (the zone holds a newer set than this
//! process) and "unknown kid" (a wish for a forced refresh, rate limited by the core).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use arc_swap::{ArcSwapOption, Guard};
use cf_access_core::zone::{SlotGuard, Zone, ZoneError};
use cf_access_core::KeySet;
use once_cell::sync::Lazy;

/// A key set and the zone's `seq` for it.
pub struct Snapshot {
    pub set: KeySet,
    pub seq: u64,
}

pub struct KeyStore {
    pub url: String,
    /// This URL's slot in the shared zone (assigned by the master at every start and
    /// reload); `usize::MAX` until then.
    slot: AtomicUsize,
    current: ArcSwapOption<Snapshot>,
    /// When a request of this process found a `kid` not in the set (monotonic ms); 0: no
    /// wish pending. The refresher clears it once a fetch (or an adopted set) answers it.
    wish: AtomicU64,
    /// Set by a signal the refresher has not looked at yet.
    look_now: AtomicBool,
}

impl KeyStore {
    /// The set to verify with; `None` until one is loaded. When the zone holds a newer one
    /// (another process fetched it), the refresher is asked to adopt it now rather than at
    /// its next look; this request still uses the set in hand.
    pub fn snapshot(&self, zone: Option<Zone>) -> Guard<Option<Arc<Snapshot>>> {
        let current = self.current.load();
        if let (Some(zone), Some(slot)) = (zone, self.slot()) {
            let published = zone.published(slot);
            if published != 0 && published != current.as_deref().map_or(0, |s| s.seq) {
                self.signal();
            }
        }
        current
    }

    /// A token named a `kid` not in the set at `now` (monotonic ms): perhaps the keys were
    /// rotated. The refresher forces a refresh (rate limited instance-wide). Non-blocking.
    pub fn unknown_kid(&self, now: u64) {
        if self.wish.compare_exchange(0, now.max(1), Ordering::AcqRel, Ordering::Acquire).is_ok() {
            self.signal();
        }
    }

    /// Has the refresher look at this store now; rings only for the first signal since it
    /// last looked, so that a flood of requests is one ring.
    fn signal(&self) {
        if !self.look_now.swap(true, Ordering::AcqRel) {
            DOORBELL.ring();
        }
    }

    /// For the refresher: whether a signal came since it last looked.
    pub fn take_signal(&self) -> bool {
        self.look_now.swap(false, Ordering::AcqRel)
    }

    /// The pending wish (when it was made), if any.
    pub fn wish(&self) -> Option<u64> {
        Some(self.wish.load(Ordering::Acquire)).filter(|w| *w != 0)
    }

    /// The wish made at `at` is answered; a newer one, made since, stays.
    pub fn answered(&self, at: u64) {
        let _ = self.wish.compare_exchange(at, 0, Ordering::AcqRel, Ordering::Acquire);
    }

    pub fn has_keys(&self) -> bool {
        self.current.load().is_some()
    }

    /// The zone `seq` of the set held; 0 for none.
    pub fn seq(&self) -> u64 {
        self.current.load().as_ref().map_or(0, |s| s.seq)
    }

    /// Forgets the set: requests are refused (`no_keys`) until one is published.
    pub fn clear(&self) {
        self.current.store(None);
    }

    pub fn publish(&self, set: KeySet, seq: u64) {
        self.current.store(Some(Arc::new(Snapshot { set, seq })));
    }

    pub fn slot(&self) -> Option<usize> {
        Some(self.slot.load(Ordering::Acquire)).filter(|s| *s != usize::MAX)
    }

    pub fn set_slot(&self, slot: usize) {
        self.slot.store(slot, Ordering::Release);
    }

    /// This URL's slot in `zone`, locked: `Ok(None)` before the master assigned one, or when
    /// the slot went to another URL (a newer configuration took it).
    pub fn lock<'z>(&self, zone: &'z Zone) -> Result<Option<SlotGuard<'z>>, ZoneError> {
        match self.slot() {
            Some(slot) => zone.lock_url(slot, &self.url),
            None => Ok(None),
        }
    }
}

static STORES: Lazy<Mutex<HashMap<String, Arc<KeyStore>>>> = Lazy::new(Default::default);

/// The store for `url`, created on first use.
pub fn store_for(url: &str) -> Arc<KeyStore> {
    let mut stores = STORES.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    stores
        .entry(url.to_string())
        .or_insert_with(|| {
            Arc::new(KeyStore {
                url: url.to_string(),
                slot: AtomicUsize::new(usize::MAX),
                current: ArcSwapOption::empty(),
                wish: AtomicU64::new(0),
                look_now: AtomicBool::new(false),
            })
        })
        .clone()
}

/// What wakes the refresher thread: a store's signal, or the worker's exit.
pub struct Doorbell {
    /// `true` once the refresher must stop.
    stop: Mutex<bool>,
    rung: Condvar,
}

pub static DOORBELL: Doorbell = Doorbell { stop: Mutex::new(false), rung: Condvar::new() };

impl Doorbell {
    /// The stop flag, locked; held while the refresher checks the stores' signals, so that a
    /// ring cannot fall between its check and its wait.
    pub fn lock(&self) -> MutexGuard<'_, bool> {
        self.stop.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits (with `guard`, from [`Doorbell::lock`]) for a ring, the stop, or `timeout`.
    pub fn wait<'a>(&self, guard: MutexGuard<'a, bool>, timeout: Duration) -> MutexGuard<'a, bool> {
        self.rung.wait_timeout(guard, timeout).unwrap_or_else(|p| p.into_inner()).0
    }

    fn ring(&self) {
        // Taking the lock orders this notify after the refresher's check of the signals.
        drop(self.lock());
        self.rung.notify_one();
    }

    /// Tells the refresher to stop (`true`), or that it may run (`false`, at its start).
    pub fn set_stop(&self, stop: bool) {
        *self.lock() = stop;
        self.rung.notify_all();
    }
}
