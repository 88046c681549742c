//! A bounded cache of verified tokens, one per nginx worker.
//!
//! Keyed by the whole token, compared exactly: a hit is the very token that verified, so no
//! two tokens can ever share an entry (nothing like a hash collision can make one token pass
//! for another), and a lookup costs a fast hash of the token plus one comparison instead of
//! a cryptographic digest. The key is the same allocation the entry's `Verified` keeps, so
//! the token is stored once. Only tokens that verified are inserted: bad tokens cannot evict
//! good entries or grow memory. A hit skips parsing and the RSA verification, but still
//! re-checks everything that depends on time, the location or the keys: `exp`/`nbf`/`iat`
//! against now, the location's issuer and audiences, and that the key which verified the
//! token (its `kid` and the key material's fingerprint) is in the location's current key
//! set, so a token verified with one certs URL's keys is only reused where the same key is
//! trusted.

use std::num::NonZeroUsize;
use std::sync::Arc;

use lru::LruCache;

use crate::error::VerifyError;
use crate::jwks::KeySet;
use crate::policy::Policy;
use crate::token;
use crate::verify::{verify, verify_signature, Verified};

/// Entries evicted least-recently-used first; expired entries are dropped when met.
pub struct TokenCache {
    lru: Option<LruCache<Arc<str>, Arc<Verified>>>,
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

    pub fn get(&mut self, token: &str) -> Option<Arc<Verified>> {
        let found = self.lru.as_mut()?.get(token).cloned();
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

    pub fn insert(&mut self, verified: Arc<Verified>) {
        if let Some(lru) = self.lru.as_mut() {
            lru.put(verified.token().clone(), verified);
        }
    }

    pub fn remove(&mut self, token: &str) {
        if let Some(lru) = self.lru.as_mut() {
            lru.pop(token);
        }
    }
}

/// [`verify`] through `cache`: a token verified before skips parsing and RSA, but its
/// claims are checked against `policy` at `now` and its key must still be in `keys`.
pub fn verify_cached(
    token: &str,
    keys: Option<&KeySet>,
    policy: &Policy,
    now: i64,
    cache: &mut TokenCache,
) -> Result<Arc<Verified>, VerifyError> {
    if !cache.enabled() {
        return verify(token, keys, policy, now).map(Arc::new);
    }
    // Before hashing: a huge token costs nothing but this check.
    token::check_len(token)?;
    if let Some(hit) = cache.get(token) {
        let keys = keys.ok_or(VerifyError::NoKeys)?;
        let same_key = keys
            .get(&hit.kid)
            .is_some_and(|k| k.fingerprint == hit.key_fingerprint);
        if same_key {
            return match policy.check(&hit.claims, now) {
                Ok(()) => Ok(hit),
                Err(e) => {
                    if e == VerifyError::Expired {
                        cache.remove(token);
                    }
                    Err(e)
                }
            };
        }
        // The key is gone (or changed): verify from scratch.
        cache.remove(token);
    }
    let verified = Arc::new(verify_signature(token, keys)?);
    policy.check(&verified.claims, now)?;
    cache.insert(verified.clone());
    Ok(verified)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{keys, policy, set, token, NOW, TEAM};
    use serde_json::json;

    #[test]
    fn cache_hits_still_check_time_policy_and_key() {
        let (k, other) = keys();
        let both = set(&[k, other]);
        let mut cache = TokenCache::new(10);
        let t = token(k, |_| {});
        assert!(verify_cached(&t, Some(&both), &policy(), NOW, &mut cache).is_ok());
        assert_eq!(cache.len(), 1);
        // A hit.
        assert!(verify_cached(&t, Some(&both), &policy(), NOW, &mut cache).is_ok());
        assert_eq!(cache.len(), 1);
        // Another location's audience.
        let other_app = Policy::new(TEAM, vec!["other".into()], 60);
        assert_eq!(
            verify_cached(&t, Some(&both), &other_app, NOW, &mut cache).unwrap_err(),
            VerifyError::BadAudience
        );
        // Another team.
        let other_team = Policy::new("x.cloudflareaccess.com", vec!["aud".into()], 60);
        assert_eq!(
            verify_cached(&t, Some(&both), &other_team, NOW, &mut cache).unwrap_err(),
            VerifyError::BadIssuer
        );
        // Time passes.
        assert_eq!(
            verify_cached(&t, Some(&both), &policy(), NOW + 3600, &mut cache).unwrap_err(),
            VerifyError::Expired
        );
        assert_eq!(cache.len(), 0, "expired entries are dropped");
        // The key leaves the key set.
        assert!(verify_cached(&t, Some(&both), &policy(), NOW, &mut cache).is_ok());
        assert_eq!(
            verify_cached(&t, Some(&set(&[other])), &policy(), NOW, &mut cache).unwrap_err(),
            VerifyError::UnknownKid
        );
        assert_eq!(
            verify_cached(&t, None, &policy(), NOW, &mut cache).unwrap_err(),
            VerifyError::NoKeys
        );
    }

    #[test]
    fn cache_only_keeps_good_tokens_and_is_bounded() {
        let (k, _) = keys();
        let ks = set(&[k]);
        let mut cache = TokenCache::new(2);
        let bad = token(k, |c| c["aud"] = json!(["nope"]));
        assert!(verify_cached(&bad, Some(&ks), &policy(), NOW, &mut cache).is_err());
        assert!(verify_cached("x.y.z", Some(&ks), &policy(), NOW, &mut cache).is_err());
        assert!(cache.is_empty());
        for i in 0..5 {
            let t = token(k, |c| c["sub"] = format!("user-{i}").into());
            assert!(verify_cached(&t, Some(&ks), &policy(), NOW, &mut cache).is_ok());
        }
        assert_eq!(cache.len(), 2);
        let mut off = TokenCache::new(0);
        let t = token(k, |_| {});
        assert!(verify_cached(&t, Some(&ks), &policy(), NOW, &mut off).is_ok());
        assert!(off.is_empty());
    }
}
