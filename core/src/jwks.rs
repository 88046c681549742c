//! The key set published at `https://<team>/cdn-cgi/access/certs`.
//!
//! Only the `keys` array (JWKs) is read. `public_cert` and `public_certs` are ignored on
//! purpose: Cloudflare warns that `public_cert` may be stale, and a token is matched to its
//! key by `kid` in `keys`.

use aws_lc_rs::digest;
use aws_lc_rs::signature::{ParsedPublicKey, RsaPublicKeyComponents, RSA_PKCS1_2048_8192_SHA256};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::Deserialize;
use thiserror::Error;

/// A certs body larger than this is refused (Cloudflare's is about 4 KiB).
pub const MAX_CERTS_BODY: usize = 1024 * 1024;

/// RSA moduli shorter than this are not accepted (Cloudflare uses 2048-bit keys).
const MIN_RSA_BITS: usize = 2048;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum JwksError {
    #[error("certs response is not valid json: {0}")]
    Json(String),
    #[error("certs response has no \"keys\" array")]
    NoKeysArray,
    #[error("certs response has no usable RSA signing key")]
    NoUsableKeys,
}

/// One RSA signing key, parsed once when the set is loaded.
pub struct Key {
    pub kid: String,
    /// SHA-256 of the key material (`n`, `e`): tells whether a `kid` still names the same key.
    pub fingerprint: [u8; 32],
    parsed: ParsedPublicKey,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key").field("kid", &self.kid).finish()
    }
}

impl Key {
    /// Verifies an RS256 signature (`signature` still base64url) over `signing_input`.
    pub fn verify_rs256(&self, signing_input: &str, signature: &str) -> bool {
        // RSA-8192 signatures are 1024 bytes; anything longer is not a signature of ours.
        let mut buf = [0u8; 1024];
        let Ok(len) = URL_SAFE_NO_PAD.decode_slice(signature, &mut buf) else {
            return false;
        };
        self.parsed.verify_sig(signing_input.as_bytes(), &buf[..len]).is_ok()
    }
}

/// An immutable set of keys; a refresh builds a new one and swaps it in whole.
#[derive(Debug, Default)]
pub struct KeySet {
    keys: Vec<Key>,
    /// `{"keys":[...]}` with only the keys accepted, only the fields read: what is shared
    /// between processes and saved to the key cache file.
    canonical: Vec<u8>,
}

#[derive(Deserialize)]
struct CertsBody {
    keys: Option<Vec<serde_json::Value>>,
}

#[derive(Deserialize)]
struct RsaJwk {
    kty: String,
    kid: String,
    n: String,
    e: String,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default, rename = "use")]
    use_: Option<String>,
}

impl KeySet {
    /// Parses a certs response body. Entries that are not RSA signing keys usable with RS256
    /// (other `kty`, other `alg`, `use` other than `sig`, missing or bad `n`/`e`, short moduli)
    /// are skipped; a set with none left is an error, so the caller keeps its last good set.
    pub fn from_certs_json(body: &[u8]) -> Result<KeySet, JwksError> {
        if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(JwksError::Json("not a json object".into()));
        }
        let certs: CertsBody =
            serde_json::from_slice(body).map_err(|e| JwksError::Json(e.to_string()))?;
        let entries = certs.keys.ok_or(JwksError::NoKeysArray)?;
        let (keys, jwks): (Vec<Key>, Vec<serde_json::Value>) =
            entries.into_iter().filter_map(rsa_key).unzip();
        if keys.is_empty() {
            return Err(JwksError::NoUsableKeys);
        }
        let canonical = serde_json::to_vec(&serde_json::json!({ "keys": jwks }))
            .map_err(|e| JwksError::Json(e.to_string()))?;
        Ok(KeySet { keys, canonical })
    }

    /// The set as canonical certs JSON: parses back to the same set; two sets with the same
    /// keys have the same bytes.
    pub fn canonical_json(&self) -> &[u8] {
        &self.canonical
    }

    pub fn get(&self, kid: &str) -> Option<&Key> {
        self.keys.iter().find(|k| k.kid == kid)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn kids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|k| k.kid.as_str())
    }
}

/// The `kid`s of a canonical key set (see [`KeySet::canonical_json`]), without parsing the
/// keys themselves; empty for anything else.
pub fn kids(canonical: &[u8]) -> Vec<String> {
    #[derive(Deserialize)]
    struct Kid {
        kid: String,
    }
    #[derive(Deserialize)]
    struct Kids {
        keys: Vec<Kid>,
    }
    serde_json::from_slice::<Kids>(canonical)
        .map(|k| k.keys.into_iter().map(|k| k.kid).collect())
        .unwrap_or_default()
}

fn rsa_key(entry: serde_json::Value) -> Option<(Key, serde_json::Value)> {
    let jwk: RsaJwk = serde_json::from_value(entry).ok()?;
    if jwk.kty != "RSA"
        || jwk.kid.is_empty()
        || jwk.alg.as_deref().is_some_and(|a| a != "RS256")
        || jwk.use_.as_deref().is_some_and(|u| u != "sig")
    {
        return None;
    }
    let n = crate::token::decode_segment(&jwk.n).ok()?;
    let e = crate::token::decode_segment(&jwk.e).ok()?;
    let n_bits = n.iter().skip_while(|b| **b == 0).count() * 8;
    if n_bits < MIN_RSA_BITS || e.is_empty() {
        return None;
    }
    let parsed = RsaPublicKeyComponents { n: &n, e: &e }
        .to_parsed_public_key(&RSA_PKCS1_2048_8192_SHA256)
        .ok()?;
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(&(n.len() as u64).to_be_bytes());
    ctx.update(&n);
    ctx.update(&e);
    let mut fingerprint = [0u8; 32];
    fingerprint.copy_from_slice(ctx.finish().as_ref());
    let canonical = serde_json::json!({
        "kty": "RSA", "kid": &jwk.kid, "alg": "RS256", "use": "sig", "n": jwk.n, "e": jwk.e,
    });
    Some((Key { kid: jwk.kid, fingerprint, parsed }, canonical))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(bytes: usize) -> String {
        URL_SAFE_NO_PAD.encode(vec![0xC3u8; bytes])
    }

    fn jwk(kid: &str, extra: &str) -> String {
        format!(
            r#"{{"kid":"{kid}","kty":"RSA","alg":"RS256","use":"sig","e":"AQAB","n":"{}"{extra}}}"#,
            n(256)
        )
    }

    #[test]
    fn reads_cloudflare_shape_and_ignores_public_cert() {
        let body = format!(
            r#"{{"keys":[{},{}],"public_cert":{{"kid":"evil","cert":"x"}},"public_certs":[{{"kid":"evil","cert":"x"}}]}}"#,
            jwk("a", ""),
            jwk("b", "")
        );
        let set = KeySet::from_certs_json(body.as_bytes()).unwrap();
        assert_eq!(set.kids().collect::<Vec<_>>(), ["a", "b"]);
        assert!(set.get("evil").is_none());
        let again = KeySet::from_certs_json(set.canonical_json()).unwrap();
        assert_eq!(again.canonical_json(), set.canonical_json());
        assert_eq!(again.kids().collect::<Vec<_>>(), ["a", "b"]);
        assert!(!String::from_utf8_lossy(set.canonical_json()).contains("public_cert"));
        assert_eq!(kids(set.canonical_json()), ["a", "b"]);
        assert!(kids(b"garbage").is_empty());
    }

    #[test]
    fn skips_unusable_entries() {
        let body = format!(
            r#"{{"keys":[
                {{"kid":"ec","kty":"EC","crv":"P-256","x":"AA","y":"AA"}},
                {{"kid":"hs","kty":"oct","k":"c2VjcmV0"}},
                {},
                {},
                {{"kid":"short","kty":"RSA","e":"AQAB","n":"{}"}},
                {{"kid":"badb64","kty":"RSA","e":"AQAB","n":"***"}},
                {{"kty":"RSA","e":"AQAB","n":"{}"}},
                "not an object",
                {}
            ]}}"#,
            jwk("enc", r#","x":1"#).replace(r#""use":"sig""#, r#""use":"enc""#),
            jwk("rs384", "").replace(r#""alg":"RS256""#, r#""alg":"RS384""#),
            n(128),
            n(256),
            jwk("good", "")
        );
        let set = KeySet::from_certs_json(body.as_bytes()).unwrap();
        assert_eq!(set.kids().collect::<Vec<_>>(), ["good"]);
    }

    #[test]
    fn errors() {
        assert!(matches!(KeySet::from_certs_json(b"<html>"), Err(JwksError::Json(_))));
        assert_eq!(KeySet::from_certs_json(b"{}").unwrap_err(), JwksError::NoKeysArray);
        assert_eq!(
            KeySet::from_certs_json(br#"{"keys":[]}"#).unwrap_err(),
            JwksError::NoUsableKeys
        );
        assert!(KeySet::from_certs_json(br#"{"keys":{}}"#).is_err());
        assert!(KeySet::from_certs_json(b"[]").is_err());
        assert!(KeySet::from_certs_json(br#"[[{"kid":"a"}]]"#).is_err());
    }
}
