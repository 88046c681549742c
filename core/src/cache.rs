//! A bounded cache of verified tokens, one per nginx worker.
//!
//! Keyed by SHA-256 over the certs URL and the whole token, so a hit is the same token
//! checked against the same key source (a collision-proof key, and 32 bytes however large
//! the token). Only tokens that verified are inserted: bad tokens cannot evict good entries
//! or grow memory. A hit skips parsing and the RSA verification, but still re-checks
//! everything that depends on time or the location: `exp`/`nbf`/`iat` against now, the
//! location's issuer and audiences, and that the key which verified the token is still in
//! the current key set.

use std::num::NonZeroUsize;
use std::sync::Arc;

use aws_lc_rs::digest;
use lru::LruCache;

use crate::verify::Verified;

pub type CacheKey = [u8; 32];

/// Entries evicted least-recently-used first; expired entries are dropped when met.
pub struct TokenCache {
    lru: Option<LruCache<CacheKey, Arc<Verified>>>,
    /// Lookups since [`TokenCache::take_lookups`] was last called: (hits, misses).
    lookups: (u64, u64),
}

impl TokenCache {
    /// A cache of at most `capacity` tokens; 0 disables caching.
    pub fn new(capacity: usize) -> TokenCache {
        TokenCache {
            lru: NonZeroUsize::new(capacity).map(LruCache::new),
            lookups: (0, 0),
        }
    }

    pub fn enabled(&self) -> bool {
        self.lru.is_some()
    }

    pub fn len(&self) -> usize {
        self.lru.as_ref().map_or(0, LruCache::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The key of `token` verified against the keys at `scope` (the certs URL).
    pub fn key(scope: &str, token: &str) -> CacheKey {
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(&(scope.len() as u64).to_be_bytes());
        ctx.update(scope.as_bytes());
        ctx.update(token.as_bytes());
        let mut key = [0u8; 32];
        key.copy_from_slice(ctx.finish().as_ref());
        key
    }

    pub fn get(&mut self, key: &CacheKey) -> Option<Arc<Verified>> {
        let found = self.lru.as_mut()?.get(key).cloned();
        match found {
            Some(_) => self.lookups.0 += 1,
            None => self.lookups.1 += 1,
        }
        found
    }

    /// The (hits, misses) counted since the last call, for the instance-wide counters.
    pub fn take_lookups(&mut self) -> (u64, u64) {
        std::mem::take(&mut self.lookups)
    }

    pub fn insert(&mut self, key: CacheKey, verified: Arc<Verified>) {
        if let Some(lru) = self.lru.as_mut() {
            lru.put(key, verified);
        }
    }

    pub fn remove(&mut self, key: &CacheKey) {
        if let Some(lru) = self.lru.as_mut() {
            lru.pop(key);
        }
    }
}
