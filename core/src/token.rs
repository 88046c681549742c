//! A compact JWS split into its parts, with the header checked.
//!
//! Nothing here verifies anything: [`crate::verify`] decides. The header is parsed only to
//! pick the algorithm (which must be RS256) and the key (`kid`); `jku`, `x5u`, `jwk` and the
//! like are never read, so they cannot point verification at an attacker's key.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::Deserialize;

use crate::error::VerifyError;

/// Tokens longer than this are refused before any decoding or crypto. nginx's default
/// `large_client_header_buffers 4 8k` admits header lines (and cookies) up to 8 KiB; this
/// admits twice that.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// The one algorithm Cloudflare Access signs with, and the only one accepted.
pub const ALG: &str = "RS256";

/// A token whose shape and header passed; its signature and claims are still unchecked.
#[derive(Debug)]
pub struct Token<'a> {
    /// `base64(header) "." base64(payload)`: the bytes the signature covers.
    pub signing_input: &'a str,
    /// The third segment, still base64url.
    pub signature: &'a str,
    /// The key the token claims to be signed with, if it names one.
    pub kid: Option<String>,
    /// The second segment, still base64url: decoded only after the signature verified.
    pub payload: &'a str,
}

#[derive(Deserialize)]
struct Header {
    alg: serde_json::Value,
    #[serde(default)]
    kid: Option<serde_json::Value>,
    #[serde(default)]
    crit: Option<serde_json::Value>,
}

/// Decodes one base64url segment (no padding, as RFC 7515 requires).
pub fn decode_segment(segment: &str) -> Result<Vec<u8>, VerifyError> {
    URL_SAFE_NO_PAD.decode(segment).map_err(|_| VerifyError::Malformed("bad base64url"))
}

/// Deserializes `json` only if it is a JSON object: serde's derived structs would also
/// accept an array and fill the fields by position.
pub fn from_json_object<T: serde::de::DeserializeOwned>(json: &[u8]) -> Option<T> {
    let first = json.iter().find(|b| !b.is_ascii_whitespace())?;
    if *first != b'{' {
        return None;
    }
    serde_json::from_slice(json).ok()
}

/// A token as text: it must be ASCII (base64url and dots), checked in one pass.
pub fn ascii(token: &[u8]) -> Result<&str, VerifyError> {
    if !token.is_ascii() {
        return Err(VerifyError::Malformed("token has non-ascii bytes"));
    }
    // SAFETY: ASCII bytes are valid UTF-8 (checked just above; `str::from_utf8` would be a
    // second pass over the token).
    Ok(unsafe { std::str::from_utf8_unchecked(token) })
}

/// The size limit, checked before anything else is done with a token.
pub fn check_len(token: &[u8]) -> Result<(), VerifyError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(VerifyError::TooLarge(token.len()));
    }
    Ok(())
}

/// Splits `token` and checks its header. Any shape problem is `Malformed`; an algorithm
/// other than exactly `RS256` is `BadAlg`.
pub fn parse(token: &str) -> Result<Token<'_>, VerifyError> {
    if token.is_empty() {
        return Err(VerifyError::NoToken);
    }
    check_len(token.as_bytes())?;
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(VerifyError::Malformed("not three dot-separated segments"));
    };
    if header.is_empty() {
        return Err(VerifyError::Malformed("empty segment"));
    }
    let signing_input = &token[..header.len() + 1 + payload.len()];
    let header_json = decode_segment(header)?;
    let header: Header = from_json_object(&header_json)
        .ok_or(VerifyError::Malformed("header is not a json object with alg"))?;
    match header.alg {
        serde_json::Value::String(ref alg) if alg == ALG => {}
        _ => return Err(VerifyError::BadAlg),
    }
    // Checked after alg, so that `alg: none` (usually with no signature) reads as such.
    if payload.is_empty() || signature.is_empty() {
        return Err(VerifyError::Malformed("empty segment"));
    }
    if header.crit.is_some() {
        return Err(VerifyError::Malformed("unsupported crit header"));
    }
    let kid = match header.kid {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(kid)) => Some(kid),
        Some(_) => return Err(VerifyError::Malformed("kid is not a string")),
    };
    Ok(Token { signing_input, signature, kid, payload })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(json: &str) -> String {
        URL_SAFE_NO_PAD.encode(json)
    }

    fn tok(header: &str) -> String {
        format!("{}.{}.c2ln", seg(header), seg("{}"))
    }

    #[test]
    fn tokens_are_ascii() {
        assert_eq!(ascii(b"a.b.c"), Ok("a.b.c"));
        assert_eq!(
            ascii("a.é.c".as_bytes()),
            Err(VerifyError::Malformed("token has non-ascii bytes"))
        );
        assert!(ascii(b"a.\xff.c").is_err());
    }

    #[test]
    fn accepts_rs256_with_kid() {
        let t = tok(r#"{"alg":"RS256","kid":"k1","typ":"JWT"}"#);
        let parsed = parse(&t).unwrap();
        assert_eq!(parsed.kid.as_deref(), Some("k1"));
        assert_eq!(parsed.signature, "c2ln");
        assert_eq!(
            parsed.signing_input,
            &t[..t.rfind('.').unwrap()],
            "signing input is header.payload"
        );
    }

    #[test]
    fn refuses_every_other_alg() {
        for alg in [
            r#""none""#,
            r#""None""#,
            r#""NONE""#,
            r#""HS256""#,
            r#""RS384""#,
            r#""RS512""#,
            r#""PS256""#,
            r#""ES256""#,
            r#""rs256""#,
            r#""RS256 ""#,
            "null",
            "256",
            r#"["RS256"]"#,
        ] {
            let t = tok(&format!(r#"{{"alg":{alg},"kid":"k"}}"#));
            assert_eq!(parse(&t).unwrap_err(), VerifyError::BadAlg, "alg {alg}");
        }
    }

    #[test]
    fn shape_errors_are_malformed() {
        let good = seg(r#"{"alg":"RS256","kid":"k"}"#);
        for t in [
            "abc".to_string(),
            format!("{good}.e30"),
            format!("{good}.e30.c2ln.x"),
            format!("{good}.e30.c2ln.x.y"),
            format!("{good}..c2ln"),
            ".e30.c2ln".to_string(),
            format!("{good}.e30."),
            format!("{good}=.e30.c2ln"),
            "!!!.e30.c2ln".to_string(),
            format!("{}.e30.c2ln", seg("[]")),
            format!("{}.e30.c2ln", seg(r#"["RS256","k"]"#)),
            format!("{}.e30.c2ln", seg("not json")),
            format!("{}.e30.c2ln", seg(r#"{"kid":"k"}"#)),
            format!("{}.e30.c2ln", seg(r#"{"alg":"RS256","kid":7}"#)),
            format!("{}.e30.c2ln", seg(r#"{"alg":"RS256","crit":["exp"]}"#)),
            format!("{}.e30.c2ln", seg(r#"{"alg":"RS256","alg":"RS256"}"#)),
        ] {
            assert_eq!(parse(&t).unwrap_err().status(), crate::Status::Malformed, "{t}");
        }
    }

    #[test]
    fn empty_is_no_token_and_size_is_capped_before_parsing() {
        assert_eq!(parse("").unwrap_err(), VerifyError::NoToken);
        let huge = "a".repeat(MAX_TOKEN_LEN + 1);
        assert_eq!(parse(&huge).unwrap_err(), VerifyError::TooLarge(MAX_TOKEN_LEN + 1));
    }

    #[test]
    fn missing_kid_is_none() {
        let t = tok(r#"{"alg":"RS256"}"#);
        assert_eq!(parse(&t).unwrap().kid, None);
    }
}
