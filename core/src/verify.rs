//! The whole check of one token, in an order that never acts on unverified data:
//! size and shape, header (RS256 only), key by `kid`, signature, then claims.

use std::sync::Arc;

use crate::cache::TokenCache;
use crate::error::VerifyError;
use crate::jwks::KeySet;
use crate::policy::{Claims, Policy};
use crate::token;

/// Who a verified token says the caller is. Values are safe to put in a header: control
/// characters (CR, LF, NUL, ...) are replaced by spaces.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    /// `email`; empty for service tokens.
    pub email: String,
    /// `sub`; empty for service tokens.
    pub sub: String,
    /// `common_name`: a service token's client ID.
    pub common_name: String,
    /// `identity_nonce`: for querying Access's get-identity endpoint.
    pub identity_nonce: String,
    /// `country`: where the user authenticated from.
    pub country: String,
}

/// A token whose signature verified: what it says, and what is needed to re-check it later.
#[derive(Debug)]
pub struct Verified {
    pub identity: Identity,
    pub claims: Claims,
    /// The payload as signed (JSON), for `$cf_access_claim_*` lookups.
    pub payload: Box<str>,
    /// The key that verified it (`kid` and its key's fingerprint).
    pub kid: String,
    pub key_fingerprint: [u8; 32],
}

fn header_safe(value: Option<String>) -> String {
    let mut value = value.unwrap_or_default();
    if value.chars().any(char::is_control) {
        value = value
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
    }
    value
}

/// Checks the signature of `token` with `keys` (None: no key set loaded yet). Claims are
/// parsed but not yet checked against a policy.
pub fn verify_signature(token: &str, keys: Option<&KeySet>) -> Result<Verified, VerifyError> {
    let parsed = token::parse(token)?;
    let keys = keys.ok_or(VerifyError::NoKeys)?;
    let kid = parsed.kid.as_deref().ok_or(VerifyError::UnknownKid)?;
    let key = keys.get(kid).ok_or(VerifyError::UnknownKid)?;
    if !key.verify_rs256(parsed.signing_input, parsed.signature) {
        return Err(VerifyError::BadSignature);
    }
    let payload = token::decode_segment(parsed.payload)?;
    let claims: Claims = token::from_json_object(&payload).ok_or(VerifyError::Malformed(
        "payload is not a json object with claims of the expected types",
    ))?;
    let identity = Identity {
        email: header_safe(claims.email.clone()),
        sub: header_safe(claims.sub.clone()),
        common_name: header_safe(claims.common_name.clone()),
        identity_nonce: header_safe(claims.identity_nonce.clone()),
        country: header_safe(claims.country.clone()),
    };
    let payload = String::from_utf8(payload)
        .map_err(|_| VerifyError::Malformed("payload is not utf-8"))?
        .into_boxed_str();
    Ok(Verified {
        identity,
        claims,
        payload,
        kid: key.kid.clone(),
        key_fingerprint: key.fingerprint,
    })
}

/// Verifies `token` against `keys` and `policy` at `now` (unix seconds).
pub fn verify(
    token: &str,
    keys: Option<&KeySet>,
    policy: &Policy,
    now: i64,
) -> Result<Verified, VerifyError> {
    let verified = verify_signature(token, keys)?;
    policy.check(&verified.claims, now)?;
    Ok(verified)
}

/// [`verify`] through `cache`: a token verified before (against the same `scope`, the
/// certs URL) skips parsing and RSA, but its claims are checked against `policy` at `now`
/// and its key must still be in `keys`.
pub fn verify_cached(
    token: &str,
    keys: Option<&KeySet>,
    policy: &Policy,
    now: i64,
    cache: &mut TokenCache,
    scope: &str,
) -> Result<Arc<Verified>, VerifyError> {
    if !cache.enabled() {
        return verify(token, keys, policy, now).map(Arc::new);
    }
    if token.len() > token::MAX_TOKEN_LEN {
        return Err(VerifyError::TooLarge(token.len()));
    }
    let key = TokenCache::key(scope, token);
    if let Some(hit) = cache.get(&key) {
        let keys = keys.ok_or(VerifyError::NoKeys)?;
        let same_key = keys
            .get(&hit.kid)
            .is_some_and(|k| k.fingerprint == hit.key_fingerprint);
        if same_key {
            return match policy.check(&hit.claims, now) {
                Ok(()) => Ok(hit),
                Err(e) => {
                    if e == VerifyError::Expired {
                        cache.remove(&key);
                    }
                    Err(e)
                }
            };
        }
        // The key is gone (or changed): verify from scratch.
        cache.remove(&key);
    }
    let verified = Arc::new(verify_signature(token, keys)?);
    policy.check(&verified.claims, now)?;
    cache.insert(key, verified.clone());
    Ok(verified)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cf_access_dev::{certs_json, mint, sign_raw, user_claims, KeyPair};
    use serde_json::json;
    use std::sync::OnceLock;

    const TEAM: &str = "team.cloudflareaccess.com";
    const NOW: i64 = 1_800_000_000;

    fn keys() -> &'static (KeyPair, KeyPair) {
        static KEYS: OnceLock<(KeyPair, KeyPair)> = OnceLock::new();
        KEYS.get_or_init(|| (KeyPair::generate(), KeyPair::generate()))
    }

    fn set(keys: &[&KeyPair]) -> KeySet {
        KeySet::from_certs_json(certs_json(keys).as_bytes()).unwrap()
    }

    fn policy() -> Policy {
        Policy::new(TEAM, vec!["aud".into()], 60)
    }

    fn token(key: &KeyPair, patch: impl FnOnce(&mut serde_json::Value)) -> String {
        let mut claims = user_claims(TEAM, "aud", "a@example.com", NOW, 600);
        patch(&mut claims);
        mint(key, &claims)
    }

    #[test]
    fn verifies_and_reports_identity() {
        let (k, _) = keys();
        let v = verify(&token(k, |_| {}), Some(&set(&[k])), &policy(), NOW).unwrap();
        assert_eq!(v.identity.email, "a@example.com");
        assert_eq!(v.kid, k.kid());
        assert!(v.payload.contains("a@example.com"));
    }

    #[test]
    fn order_of_checks() {
        let (k, other) = keys();
        let t = token(k, |_| {});
        assert_eq!(
            verify(&t, None, &policy(), NOW).unwrap_err(),
            VerifyError::NoKeys
        );
        assert_eq!(
            verify(&t, Some(&set(&[other])), &policy(), NOW).unwrap_err(),
            VerifyError::UnknownKid
        );
        let header = json!({"alg": "RS256", "kid": k.kid()}).to_string();
        let forged = sign_raw(other, "RS256", &header, r#"{"exp":1}"#);
        assert_eq!(
            verify(&forged, Some(&set(&[k])), &policy(), NOW).unwrap_err(),
            VerifyError::BadSignature,
            "claims are not looked at before the signature verified"
        );
        let signed_array = sign_raw(k, "RS256", &header, "[1,2]");
        assert_eq!(
            verify(&signed_array, Some(&set(&[k])), &policy(), NOW)
                .unwrap_err()
                .status(),
            crate::Status::Malformed
        );
    }

    #[test]
    fn control_characters_never_reach_identity() {
        let (k, _) = keys();
        let t = token(k, |c| c["email"] = "a@b.c\r\nX-Injected: 1".into());
        let v = verify(&t, Some(&set(&[k])), &policy(), NOW).unwrap();
        assert_eq!(v.identity.email, "a@b.c  X-Injected: 1");
    }

    #[test]
    fn cache_hits_still_check_time_policy_and_key() {
        let (k, other) = keys();
        let both = set(&[k, other]);
        let mut cache = TokenCache::new(10);
        let t = token(k, |_| {});
        let scope = "https://team.cloudflareaccess.com/cdn-cgi/access/certs";
        assert!(verify_cached(&t, Some(&both), &policy(), NOW, &mut cache, scope).is_ok());
        assert_eq!(cache.len(), 1);
        // A hit.
        assert!(verify_cached(&t, Some(&both), &policy(), NOW, &mut cache, scope).is_ok());
        assert_eq!(cache.len(), 1);
        // Another location's audience.
        let other_app = Policy::new(TEAM, vec!["other".into()], 60);
        assert_eq!(
            verify_cached(&t, Some(&both), &other_app, NOW, &mut cache, scope).unwrap_err(),
            VerifyError::BadAudience
        );
        // Another team.
        let other_team = Policy::new("x.cloudflareaccess.com", vec!["aud".into()], 60);
        assert_eq!(
            verify_cached(&t, Some(&both), &other_team, NOW, &mut cache, scope).unwrap_err(),
            VerifyError::BadIssuer
        );
        // Time passes.
        assert_eq!(
            verify_cached(&t, Some(&both), &policy(), NOW + 3600, &mut cache, scope).unwrap_err(),
            VerifyError::Expired
        );
        assert_eq!(cache.len(), 0, "expired entries are dropped");
        // The key leaves the key set.
        assert!(verify_cached(&t, Some(&both), &policy(), NOW, &mut cache, scope).is_ok());
        assert_eq!(
            verify_cached(&t, Some(&set(&[other])), &policy(), NOW, &mut cache, scope).unwrap_err(),
            VerifyError::UnknownKid
        );
        assert_eq!(
            verify_cached(&t, None, &policy(), NOW, &mut cache, scope).unwrap_err(),
            VerifyError::NoKeys
        );
    }

    #[test]
    fn cache_only_keeps_good_tokens_and_is_bounded() {
        let (k, _) = keys();
        let ks = set(&[k]);
        let mut cache = TokenCache::new(2);
        let bad = token(k, |c| c["aud"] = json!(["nope"]));
        assert!(verify_cached(&bad, Some(&ks), &policy(), NOW, &mut cache, "s").is_err());
        assert!(verify_cached("x.y.z", Some(&ks), &policy(), NOW, &mut cache, "s").is_err());
        assert!(cache.is_empty());
        for i in 0..5 {
            let t = token(k, |c| c["sub"] = format!("user-{i}").into());
            assert!(verify_cached(&t, Some(&ks), &policy(), NOW, &mut cache, "s").is_ok());
        }
        assert_eq!(cache.len(), 2);
        let mut off = TokenCache::new(0);
        let t = token(k, |_| {});
        assert!(verify_cached(&t, Some(&ks), &policy(), NOW, &mut off, "s").is_ok());
        assert!(off.is_empty());
    }
}
