//! This process's key set for each certs URL.
//!
//! Each [`KeyStore`] holds the set this process verifies with in an `ArcSwapOption`: the
//! request path only loads it (lock-free); the master and the refresher thread swap in a
//! whole new set, always one the shared zone holds (see `sync.rs`). Stores are shared by
//! every location that uses the same certs URL and survive reloads (the registry is
//! process-wide).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwapOption;
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
    /// Set by the request path when a token names a `kid` not in the set.
    refresh_wanted: AtomicBool,
}

impl KeyStore {
    /// The current key set; `None` until one is loaded.
    pub fn current(&self) -> arc_swap::Guard<Option<Arc<Snapshot>>> {
        self.current.load()
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

    /// Notes that a request wants a refresh; returns whether this is the first ask since
    /// the refresher last looked (then the caller wakes it). Cheap and non-blocking.
    pub fn want_refresh(&self) -> bool {
        !self.refresh_wanted.swap(true, Ordering::AcqRel)
    }

    pub fn take_refresh_wanted(&self) -> bool {
        self.refresh_wanted.swap(false, Ordering::AcqRel)
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
                refresh_wanted: AtomicBool::new(false),
            })
        })
        .clone()
}
