//! Process-wide key sets, one per certs URL, and fetching them.
//!
//! Each [`KeyStore`] holds the current [`KeySet`] in an `ArcSwapOption`: the request path
//! only loads it (lock-free), a fetch builds a whole new set and swaps it in. Stores are
//! shared by every location that uses the same certs URL and survive reloads (the registry
//! is process-wide), so a reload never drops the keys it already has.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use cf_access_core::jwks::{JwksError, MAX_CERTS_BODY};
use cf_access_core::persist::{self, PersistError};
use cf_access_core::KeySet;
use once_cell::sync::Lazy;
use thiserror::Error;

/// Connect, send and receive timeouts of one fetch. DNS resolution has no timeout of ours:
/// ureq would spawn a thread for it, and no thread may outlive a fetch in the master.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// A key set and the certs response it was parsed from (kept for `cf_access_keys_cache`).
pub struct Snapshot {
    pub set: KeySet,
    pub body: Vec<u8>,
}

pub struct KeyStore {
    pub url: String,
    current: ArcSwapOption<Snapshot>,
    /// Set by the request path when a token names a `kid` not in the set.
    refresh_wanted: AtomicBool,
}

impl KeyStore {
    /// The current key set; `None` until a fetch has succeeded.
    pub fn current(&self) -> arc_swap::Guard<Option<Arc<Snapshot>>> {
        self.current.load()
    }

    pub fn has_keys(&self) -> bool {
        self.current.load().is_some()
    }

    pub fn publish(&self, snapshot: Snapshot) {
        self.current.store(Some(Arc::new(snapshot)));
    }

    /// Asks this worker's refresher to fetch soon (rate limited there). Cheap and
    /// non-blocking: an atomic flag, and a wake-up only on the first ask.
    pub fn want_refresh(&self) {
        if !self.refresh_wanted.swap(true, Ordering::AcqRel) {
            crate::refresher::wake();
        }
    }

    pub fn take_refresh_wanted(&self) -> bool {
        self.refresh_wanted.swap(false, Ordering::AcqRel)
    }
}

static STORES: Lazy<Mutex<HashMap<String, Arc<KeyStore>>>> = Lazy::new(Default::default);

/// The store for `url`, created on first use.
pub fn store_for(url: &str) -> Arc<KeyStore> {
    let mut stores = STORES
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    stores
        .entry(url.to_string())
        .or_insert_with(|| {
            Arc::new(KeyStore {
                url: url.to_string(),
                current: ArcSwapOption::empty(),
                refresh_wanted: AtomicBool::new(false),
            })
        })
        .clone()
}

#[derive(Debug, Error)]
pub enum FetchError {
    #[error("{0}")]
    Transport(String),
    #[error("http status {0}")]
    Status(u16),
    #[error("response larger than {MAX_CERTS_BODY} bytes")]
    TooLarge,
    #[error(transparent)]
    Jwks(#[from] JwksError),
}

/// Fetches and parses the key set at `url`. Blocking, bounded by [`FETCH_TIMEOUT`] per step;
/// spawns no thread.
pub fn fetch(url: &str) -> Result<Snapshot, FetchError> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(FETCH_TIMEOUT))
        .timeout_send_request(Some(FETCH_TIMEOUT))
        .timeout_recv_response(Some(FETCH_TIMEOUT))
        .timeout_recv_body(Some(FETCH_TIMEOUT))
        .http_status_as_error(false)
        .max_redirects(3)
        .user_agent(concat!("ngx_http_cf_access/", env!("CARGO_PKG_VERSION")))
        .build()
        .into();
    let mut response = agent.get(url).call().map_err(transport_error)?;
    let status = response.status().as_u16();
    if status != 200 {
        return Err(FetchError::Status(status));
    }
    let body = response
        .body_mut()
        .with_config()
        .limit(MAX_CERTS_BODY as u64)
        .read_to_vec()
        .map_err(|e| match e {
            ureq::Error::BodyExceedsLimit(_) => FetchError::TooLarge,
            e => transport_error(e),
        })?;
    Ok(Snapshot {
        set: KeySet::from_certs_json(&body)?,
        body,
    })
}

fn transport_error(e: ureq::Error) -> FetchError {
    match e {
        // ureq names the step whose timer ran out ("send request" covers waiting for the
        // response head); say plainly that the endpoint did not answer in time.
        ureq::Error::Timeout(_) => FetchError::Transport(format!(
            "no complete answer within {} s ({e})",
            FETCH_TIMEOUT.as_secs()
        )),
        e => FetchError::Transport(e.to_string()),
    }
}

/// Fetches `store`'s URL and publishes the result; on failure the last good set stays.
/// Returns the number of keys and whether the response differs from the one before.
pub fn refresh(store: &KeyStore) -> Result<(usize, bool), FetchError> {
    let snapshot = fetch(&store.url)?;
    let n = snapshot.set.len();
    let changed = store
        .current()
        .as_ref()
        .is_none_or(|old| old.body != snapshot.body);
    store.publish(snapshot);
    Ok((n, changed))
}

/// Publishes the key set saved in the key cache file for `store`, if there is one.
pub fn load_saved(store: &KeyStore, path: &Path) -> Result<Option<usize>, PersistError> {
    let Some(body) = persist::read(path, &store.url)? else {
        return Ok(None);
    };
    let set = KeySet::from_certs_json(&body)
        .map_err(|e| PersistError::Format(format!("{}: {e}", store.url)))?;
    let n = set.len();
    store.publish(Snapshot { set, body });
    Ok(Some(n))
}

/// Saves the current key sets of `stores` to the key cache file.
pub fn save(stores: &[Arc<KeyStore>], path: &Path) -> std::io::Result<()> {
    let snapshots: Vec<_> = stores.iter().map(|s| (s, s.current.load_full())).collect();
    let bytes = persist::encode(
        snapshots
            .iter()
            .filter_map(|(s, snap)| Some((s.url.as_str(), snap.as_ref()?.body.as_slice()))),
    );
    persist::write_atomic(path, &bytes)
}
