//! The whole check of one token, in an order that never acts on unverified data:
//! size and shape, header (RS256 only), key by `kid`, signature, then claims.

use std::sync::{Arc, OnceLock};

use serde_json::{Map, Value};

use crate::error::VerifyError;
use crate::jwks::KeySet;
use crate::policy::{Claims, Policy};
use crate::sanitize::header_safe_owned;
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
/// The identity is taken out of the claims once (not kept twice); the other claims are
/// parsed at most once, when a `$cf_access_claim_*` variable first asks.
#[derive(Debug)]
pub struct Verified {
    pub identity: Identity,
    /// The claims the policy checks (the identity claims are moved to `identity`).
    pub claims: Claims,
    /// The token as received: the verified-token cache's key, and where the payload is
    /// read from when a `$cf_access_claim_*` variable first asks.
    token: Arc<str>,
    claims_map: OnceLock<Map<String, Value>>,
    /// The key that verified it (`kid` and its key's fingerprint).
    pub kid: String,
    pub key_fingerprint: [u8; 32],
}

impl Verified {
    /// The token as received.
    pub fn token(&self) -> &Arc<str> {
        &self.token
    }

    /// The payload as signed (JSON; it was checked to be UTF-8 when the token verified).
    pub fn payload(&self) -> String {
        let segment = self.token.split('.').nth(1).unwrap_or("");
        token::decode_segment(segment)
            .ok()
            .and_then(|p| String::from_utf8(p).ok())
            .unwrap_or_default()
    }

    /// Every claim of the payload, parsed on first use.
    pub fn claims_map(&self) -> &Map<String, Value> {
        self.claims_map.get_or_init(|| crate::claim::parse(&self.payload()))
    }
}

fn identity_value(value: Option<String>) -> String {
    header_safe_owned(value.unwrap_or_default())
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
    let mut claims: Claims = token::from_json_object(&payload).ok_or(VerifyError::Malformed(
        "payload is not a json object with claims of the expected types",
    ))?;
    let identity = Identity {
        email: identity_value(claims.email.take()),
        sub: identity_value(claims.sub.take()),
        common_name: identity_value(claims.common_name.take()),
        identity_nonce: identity_value(claims.identity_nonce.take()),
        country: identity_value(claims.country.take()),
    };
    if std::str::from_utf8(&payload).is_err() {
        return Err(VerifyError::Malformed("payload is not utf-8"));
    }
    Ok(Verified {
        identity,
        claims,
        token: Arc::from(token),
        claims_map: OnceLock::new(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{keys, policy, set, token, NOW};
    use cf_access_dev::sign_raw;
    use serde_json::json;

    #[test]
    fn verifies_and_reports_identity() {
        let (k, _) = keys();
        let v = verify(&token(k, |_| {}), Some(&set(&[k])), &policy(), NOW).unwrap();
        assert_eq!(v.identity.email, "a@example.com");
        assert_eq!(v.kid, k.kid());
        assert!(v.payload().contains("a@example.com"));
        assert!(v.claims.email.is_none(), "the identity is kept once, in `identity`");
        assert_eq!(v.claims_map()["email"], "a@example.com");
    }

    #[test]
    fn order_of_checks() {
        let (k, other) = keys();
        let t = token(k, |_| {});
        assert_eq!(verify(&t, None, &policy(), NOW).unwrap_err(), VerifyError::NoKeys);
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
            verify(&signed_array, Some(&set(&[k])), &policy(), NOW).unwrap_err().status(),
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
}
