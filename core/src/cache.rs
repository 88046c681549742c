//! A bounded cache of verified tokens, one per nginx worker.
//!
//! Keyed by the whole token, compared exactly: a hit is the very token that verified, so no
//! two tokens can ever share an entry (nothing like a hash collision can make one token pass
//! for another). The hash only picks where to look: it covers the token's length and its
//! last [`HASHED_TAIL`] bytes, the end of the RS256 signature, which nobody without the
//! signing key can choose for a token that verifies; so a lookup costs hashing 32 bytes and
//! one comparison, not a digest of the whole token. Only tokens that verified are inserted:
//! bad tokens cannot evict good entries, grow memory or crowd a bucket; a forged token that
//! copies a cached token's tail costs one failed comparison before it is verified (and
//! refused) like any other. The key is the same allocation the entry's `Verified` keeps, so
//! the token is stored once, and a hit needs no check that it is ASCII: it equals a token
//! that passed that check.
//!
//! A hit skips parsing and the RSA verification, but still re-checks everything that depends
//! on time, the location or the keys: `exp`/`nbf`/`iat` against now, the location's issuer
//! and audiences, and that the key which verified the token (its `kid` and the key
//! material's fingerprint) is in the location's current key set, so a token verified with
//! one certs URL's keys is only reused where the same key is trusted.

use std::borrow::Borrow;
use std::hash::{Hash, Hasher};
use std::num::NonZeroUsize;
use std::sync::Arc;

use lru::LruCache;

use crate::error::VerifyError;
use crate::jwks::KeySet;
use crate::policy::Policy;
use crate::token;
use crate::verify::{verify, verify_signature, Verified};

/// How many bytes at the end of a token its cache hash covers (with its length).
pub const HASHED_TAIL: usize = 32;

/// A token's bytes as a cache key: hashed by length and tail, compared whole.
#[repr(transparent)]
#[derive(PartialEq, Eq)]
struct TokenBytes([u8]);

impl TokenBytes {
    fn new(bytes: &[u8]) -> &TokenBytes {
        // SAFETY: `TokenBytes` is `repr(transparent)` over `[u8]`: same layout and the same
        // slice metadata (the length), so the pointer cast only changes the type.
        unsafe { &*(bytes as *const [u8] as *const TokenBytes) }
    }
}

impl Hash for TokenBytes {
    fn hash<H: Hasher>(&self, state: &mut H) {
        let bytes = &self.0;
        state.write_usize(bytes.len());
        state.write(&bytes[bytes.len().saturating_sub(HASHED_TAIL)..]);
    }
}

/// A cached token (the allocation its `Verified` keeps), hashed and compared as
/// [`TokenBytes`], so that a lookup by the request's bytes finds it.
#[derive(Clone, PartialEq, Eq)]
struct TokenKey(Arc<str>);

impl Borrow<TokenBytes> for TokenKey {
    fn borrow(&self) -> &TokenBytes {
        TokenBytes::new(self.0.as_bytes())
    }
}

impl Hash for TokenKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        Borrow::<TokenBytes>::borrow(self).hash(state)
    }
}

/// Entries evicted least-recently-used first; expired entries are dropped when met.
pub struct TokenCache {
    lru: Option<LruCache<TokenKey, Arc<Verified>>>,
    /// Lookups since [`TokenCache::take_lookups`] was last called: (hits, misses).
    lookups: (u64, u64),
}

impl TokenCache {
    /// A cache of at most `capacity` tokens; 0 disables caching.
    pub fn new(capacity: usize) -> TokenCache {
        TokenCache { lru: NonZeroUsize::new(capacity).map(LruCache::new), lookups: (0, 0) }
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

    /// The entry of the token whose bytes are exactly `token`, if any.
    pub fn get(&mut self, token: &[u8]) -> Option<Arc<Verified>> {
        let found = self.lru.as_mut()?.get(TokenBytes::new(token)).cloned();
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
            lru.put(TokenKey(verified.token().clone()), verified);
        }
    }

    pub fn remove(&mut self, token: &[u8]) {
        if let Some(lru) = self.lru.as_mut() {
            lru.pop(TokenBytes::new(token));
        }
    }
}

/// [`verify`] through `cache`: a token verified before skips parsing and RSA, but its
/// claims are checked against `policy` at `now` and its key must still be in `keys`.
/// `token` is as sent (see [`crate::extract::find_token`]).
pub fn verify_cached(
    token: &[u8],
    keys: Option<&KeySet>,
    policy: &Policy,
    now: i64,
    cache: &mut TokenCache,
) -> Result<Arc<Verified>, VerifyError> {
    // Before anything else: a huge token costs nothing but this check.
    token::check_len(token)?;
    if !cache.enabled() {
        return verify(token::ascii(token)?, keys, policy, now).map(Arc::new);
    }
    if let Some(hit) = cache.get(token) {
        let keys = keys.ok_or(VerifyError::NoKeys)?;
        let same_key = keys.get(&hit.kid).is_some_and(|k| k.fingerprint == hit.key_fingerprint);
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
    let verified = Arc::new(verify_signature(token::ascii(token)?, keys)?);
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
        assert!(verify_cached(t.as_bytes(), Some(&both), &policy(), NOW, &mut cache).is_ok());
        assert_eq!(cache.len(), 1);
        // A hit.
        assert!(verify_cached(t.as_bytes(), Some(&both), &policy(), NOW, &mut cache).is_ok());
        assert_eq!(cache.len(), 1);
        // Another location's audience.
        let other_app = Policy::new(TEAM, vec!["other".into()], 60);
        assert_eq!(
            verify_cached(t.as_bytes(), Some(&both), &other_app, NOW, &mut cache).unwrap_err(),
            VerifyError::BadAudience
        );
        // Another team.
        let other_team = Policy::new("x.cloudflareaccess.com", vec!["aud".into()], 60);
        assert_eq!(
            verify_cached(t.as_bytes(), Some(&both), &other_team, NOW, &mut cache).unwrap_err(),
            VerifyError::BadIssuer
        );
        // Time passes.
        assert_eq!(
            verify_cached(t.as_bytes(), Some(&both), &policy(), NOW + 3600, &mut cache)
                .unwrap_err(),
            VerifyError::Expired
        );
        assert_eq!(cache.len(), 0, "expired entries are dropped");
        // The key leaves the key set.
        assert!(verify_cached(t.as_bytes(), Some(&both), &policy(), NOW, &mut cache).is_ok());
        assert_eq!(
            verify_cached(t.as_bytes(), Some(&set(&[other])), &policy(), NOW, &mut cache)
                .unwrap_err(),
            VerifyError::UnknownKid
        );
        assert_eq!(
            verify_cached(t.as_bytes(), None, &policy(), NOW, &mut cache).unwrap_err(),
            VerifyError::NoKeys
        );
    }

    #[test]
    fn key_and_bytes_hash_alike() {
        use std::hash::BuildHasher;
        let state = std::collections::hash_map::RandomState::new();
        let token: Arc<str> = Arc::from("header.payload.signature-of-more-than-32-bytes-long");
        let key = TokenKey(token.clone());
        assert_eq!(state.hash_one(&key), state.hash_one(TokenBytes::new(token.as_bytes())));
        // Only the length and the tail are hashed; equality is the whole token.
        let other = "HEADER.payload.signature-of-more-than-32-bytes-long";
        assert_eq!(state.hash_one(TokenBytes::new(other.as_bytes())), state.hash_one(&key));
        assert!(TokenBytes::new(other.as_bytes()) != Borrow::<TokenBytes>::borrow(&key));
    }

    #[test]
    fn a_token_with_a_cached_tokens_tail_is_not_a_hit() {
        let (k, _) = keys();
        let ks = set(&[k]);
        let mut cache = TokenCache::new(10);
        let t = token(k, |_| {});
        assert!(verify_cached(t.as_bytes(), Some(&ks), &policy(), NOW, &mut cache).is_ok());
        cache.take_lookups();
        // Same length, same signature, one payload character changed: same hash, no hit.
        let dot = t.find('.').unwrap() + 1;
        let mut forged = t.clone().into_bytes();
        forged[dot + 4] = if forged[dot + 4] == b'A' { b'B' } else { b'A' };
        assert_eq!(
            verify_cached(&forged, Some(&ks), &policy(), NOW, &mut cache).unwrap_err(),
            VerifyError::BadSignature
        );
        forged[dot + 4] = 0xff;
        assert_eq!(
            verify_cached(&forged, Some(&ks), &policy(), NOW, &mut cache).unwrap_err(),
            VerifyError::Malformed("token has non-ascii bytes")
        );
        assert_eq!(cache.take_lookups(), (0, 2));
        assert!(verify_cached(t.as_bytes(), Some(&ks), &policy(), NOW, &mut cache).is_ok());
        assert_eq!(cache.take_lookups(), (1, 0));
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn cache_only_keeps_good_tokens_and_is_bounded() {
        let (k, _) = keys();
        let ks = set(&[k]);
        let mut cache = TokenCache::new(2);
        let bad = token(k, |c| c["aud"] = json!(["nope"]));
        assert!(verify_cached(bad.as_bytes(), Some(&ks), &policy(), NOW, &mut cache).is_err());
        assert!(verify_cached(b"x.y.z", Some(&ks), &policy(), NOW, &mut cache).is_err());
        assert!(cache.is_empty());
        for i in 0..5 {
            let t = token(k, |c| c["sub"] = format!("user-{i}").into());
            assert!(verify_cached(t.as_bytes(), Some(&ks), &policy(), NOW, &mut cache).is_ok());
        }
        assert_eq!(cache.len(), 2);
        let mut off = TokenCache::new(0);
        let t = token(k, |_| {});
        assert!(verify_cached(t.as_bytes(), Some(&ks), &policy(), NOW, &mut off).is_ok());
        assert!(off.is_empty());
    }
}
