//! Process-wide key sets, one per certs URL, and fetching them.
//!
//! Each [`KeyStore`] holds the current [`KeySet`] in an `ArcSwapOption`: the request path
//! only loads it (lock-free), a fetch builds a whole new set and swaps it in. Stores are
//! shared by every location that uses the same certs URL and survive reloads (the registry
//! is process-wide), so a reload never drops the keys it already has.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use cf_access_core::jwks::{JwksError, MAX_CERTS_BODY};
use cf_access_core::KeySet;
use once_cell::sync::Lazy;
use thiserror::Error;

/// Connect, send and receive timeouts of one fetch. DNS resolution has no timeout of ours:
/// ureq would spawn a thread for it, and no thread may outlive a fetch in the master.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

pub struct KeyStore {
    pub url: String,
    current: ArcSwapOption<KeySet>,
}

impl KeyStore {
    /// The current key set; `None` until a fetch has succeeded.
    pub fn current(&self) -> arc_swap::Guard<Option<Arc<KeySet>>> {
        self.current.load()
    }

    pub fn publish(&self, set: KeySet) {
        self.current.store(Some(Arc::new(set)));
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
pub fn fetch(url: &str) -> Result<KeySet, FetchError> {
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
    let mut response = agent
        .get(url)
        .call()
        .map_err(|e| FetchError::Transport(e.to_string()))?;
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
            e => FetchError::Transport(e.to_string()),
        })?;
    Ok(KeySet::from_certs_json(&body)?)
}

/// Fetches `store`'s URL and publishes the result; on failure the last good set stays.
pub fn refresh(store: &KeyStore) -> Result<usize, FetchError> {
    let set = fetch(&store.url)?;
    let n = set.len();
    store.publish(set);
    Ok(n)
}
