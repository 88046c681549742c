//! The key cache file (`cf_access_keys_cache`), in the master only: read at every start and
//! reload to offer sets newer than the zone's (a start during an outage), then rewritten
//! from the zone, and rewritten again as the master exits. Workers never touch it. Opening
//! and checking the file safely is the core's (`cf_access_core::persist`).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use cf_access_core::persist::{self, Saved};
use cf_access_core::refresh;
use cf_access_core::zone::Zone;
use cf_access_core::KeySet;

use super::round;
use super::store::KeyStore;
use crate::log::ThreadLog;
use crate::time::mono_ms;

/// Offers each store's saved set to the zone; a set newer than the zone's is stored there
/// and adopted.
pub fn offer(zone: &Zone, stores: &[Arc<KeyStore>], path: &Path, log: &ThreadLog) {
    let saved = match persist::load(path) {
        Ok(Some(saved)) => saved,
        Ok(None) => return,
        Err(e) => {
            log.warn(format_args!("ignoring the key cache \"{}\": {e}", path.display()));
            return;
        }
    };
    for store in stores {
        let Some(entry) = saved.get(&store.url) else {
            continue;
        };
        let set = match KeySet::from_certs_json(&entry.body) {
            Ok(set) => set,
            Err(e) => {
                log.warn(format_args!("ignoring the key cache's set for \"{}\": {e}", store.url));
                continue;
            }
        };
        let mut g = match store.lock(zone) {
            Ok(Some(g)) => g,
            Ok(None) => continue,
            Err(e) => {
                log.warn(format_args!("keys for \"{}\": {e}", store.url));
                continue;
            }
        };
        if !refresh::offer_saved(g.state_mut(), entry.fetched_at, mono_ms()) {
            continue;
        }
        let seq = zone.next_seq();
        if g.set_body(set.canonical_json(), set.len(), seq).is_err() {
            continue;
        }
        drop(g);
        log.warn(format_args!(
            "using {} keys for \"{}\" from the key cache \"{}\"",
            set.len(),
            store.url,
            path.display()
        ));
        round::adopt(zone, store, log);
    }
}

/// Rewrites the file with the zone's sets (nothing is written while the zone has none).
pub fn write(zone: &Zone, stores: &[Arc<KeyStore>], path: &Path, log: &ThreadLog) {
    let mut sets = BTreeMap::new();
    for store in stores {
        let g = match store.lock(zone) {
            Ok(Some(g)) => g,
            Ok(None) => continue,
            Err(e) => {
                // Writing now would drop this URL's saved set: keep the file as it is.
                log.warn(format_args!("not writing the key cache \"{}\": {e}", path.display()));
                return;
            }
        };
        if g.state().seq != 0 {
            let saved = Saved { fetched_at: g.state().fetched_at, body: g.body().to_vec() };
            sets.insert(store.url.clone(), saved);
        }
    }
    if sets.is_empty() {
        return;
    }
    let bytes = persist::encode(sets.iter().map(|(url, saved)| (url.as_str(), saved)));
    if let Err(e) = persist::store(path, &bytes) {
        log.warn(format_args!("cannot write the key cache \"{}\": {e}", path.display()));
    }
}
