//! The whole check of one token, in an order that never acts on unverified data:
//! size and shape, header (RS256 only), key by `kid`, signature, then claims.

use crate::error::VerifyError;
use crate::jwks::KeySet;
use crate::policy::{Claims, Policy};
use crate::token;

/// Who a verified token says the caller is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    /// `email`; empty for service tokens.
    pub email: String,
    /// `sub`; empty for service tokens.
    pub sub: String,
    /// `common_name`: a service token's client ID.
    pub common_name: String,
    /// The key that verified the token.
    pub kid: String,
    /// `exp`, unix seconds.
    pub exp: i64,
}

/// Verifies `token` against `keys` (None: no key set loaded yet) and `policy` at `now`.
pub fn verify(
    token: &str,
    keys: Option<&KeySet>,
    policy: &Policy,
    now: i64,
) -> Result<Identity, VerifyError> {
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
    policy.check(&claims, now)?;
    Ok(Identity {
        email: claims.email.unwrap_or_default(),
        sub: claims.sub.unwrap_or_default(),
        common_name: claims.common_name.unwrap_or_default(),
        kid: key.kid.clone(),
        exp: claims.exp.map_or(0, |e| e as i64),
    })
}
