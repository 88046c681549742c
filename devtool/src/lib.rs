//! A local stand-in for Cloudflare Access, for tests, demos and CI.
//!
//! * [`KeyPair`]: RSA-2048 signing keys with Cloudflare-style `kid`s.
//! * [`certs_json`]: the exact JSON shape of
//!   `https://<team>.cloudflareaccess.com/cdn-cgi/access/certs`.
//! * [`mint`], [`sign_raw`], [`sign_hs256`], [`user_claims`],
//!   [`service_claims`]: application tokens, well-formed or deliberately not.
//! * [`CertsServer`]: a loopback HTTP/1.1 server that serves the certs JSON
//!   (or misbehaves on request: errors, hangs, slow or raw answers,
//!   redirects, never-ending or stalled answers, non-HTTP answers).
//!   It also stands in for `/cdn-cgi/access/get-identity`: the identity
//!   (email, `user_uuid`, SSO groups) of the user whose token, signed with
//!   one of its keys, is in the `CF_Authorization` cookie; configured, and
//!   broken on request, with [`IdentityConfig`] ([`Group`], [`IdentityFault`]).
//! * [`ConnectProxy`]: a loopback `CONNECT`-only forward proxy that only
//!   tunnels to loopback targets.
//! * [`TlsCertsServer`]: the same server (every [`Behavior`]) over HTTPS on
//!   loopback (in-process `rustls`), with a throwaway CA made by the
//!   `openssl` command-line tool.
//!
//! Everything here is a test tool: functions panic on misuse rather than
//! returning errors, except where input comes from files.

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::KeyPair as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use serde_json::{json, Value};

mod identity;
mod listener;
mod proxy;
mod server;
mod tls;
mod x509;

pub use identity::{
    Group, IdentityConfig, IdentityFault, COOKIE_NAME, IDENTITY_PATH, OTHER_USER_EMAIL,
    OTHER_USER_UUID,
};
pub use proxy::ConnectProxy;
pub use server::{Behavior, CertsServer};
pub use tls::TlsCertsServer;

/// An RSA-2048 key pair used to sign tokens, as Cloudflare Access does.
pub struct KeyPair {
    inner: aws_lc_rs::rsa::KeyPair,
    spki_der: Vec<u8>,
    kid: String,
    n: Vec<u8>,
    e: Vec<u8>,
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPair").field("kid", &self.kid).finish()
    }
}

impl KeyPair {
    /// A fresh RSA-2048 key. Its kid is the lowercase hex SHA-256 of the DER
    /// (SubjectPublicKeyInfo) public key: 64 hex chars, like Cloudflare's.
    #[allow(clippy::expect_used, reason = "cannot fail: encodings, the RNG")]
    pub fn generate() -> KeyPair {
        let inner = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
            .expect("RSA-2048 key generation failed");
        KeyPair::from_inner(inner)
    }

    /// Parses an unencrypted PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`).
    /// A PKCS#1 PEM (`-----BEGIN RSA PRIVATE KEY-----`) is accepted too.
    pub fn from_pkcs8_pem(pem: &str) -> Result<KeyPair, String> {
        if let Some(der) = pem_decode(pem, "PRIVATE KEY")? {
            let inner = aws_lc_rs::rsa::KeyPair::from_pkcs8(&der)
                .map_err(|e| format!("not an RSA PKCS#8 private key: {e}"))?;
            return Ok(KeyPair::from_inner(inner));
        }
        if let Some(der) = pem_decode(pem, "RSA PRIVATE KEY")? {
            let inner = aws_lc_rs::rsa::KeyPair::from_der(&der)
                .map_err(|e| format!("not an RSA PKCS#1 private key: {e}"))?;
            return Ok(KeyPair::from_inner(inner));
        }
        Err("no \"-----BEGIN PRIVATE KEY-----\" PEM block found".to_string())
    }

    #[allow(clippy::expect_used, reason = "cannot fail: encodings, the RNG")]
    fn from_inner(inner: aws_lc_rs::rsa::KeyPair) -> KeyPair {
        let public = inner.public_key();
        let spki_der = public.as_der().expect("encode RSA public key").as_ref().to_vec();
        let n = public.modulus().big_endian_without_leading_zero().to_vec();
        let e = public.exponent().big_endian_without_leading_zero().to_vec();
        let kid = hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &spki_der).as_ref());
        KeyPair { inner, spki_der, kid, n, e }
    }

    /// The private key as PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`).
    #[allow(clippy::expect_used, reason = "cannot fail: encodings, the RNG")]
    pub fn to_pkcs8_pem(&self) -> String {
        let der = self.inner.as_der().expect("encode PKCS#8");
        pem_encode("PRIVATE KEY", der.as_ref())
    }

    /// The key id: 64 lowercase hex chars.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key as a JWK:
    /// `{"kid","kty":"RSA","alg":"RS256","use":"sig","e","n"}`
    /// (a `Value`, so serialized with sorted keys; [`certs_json`] keeps
    /// Cloudflare's order).
    pub fn jwk(&self) -> Value {
        json!({
            "kid": self.kid,
            "kty": "RSA",
            "alg": "RS256",
            "use": "sig",
            "e": b64(&self.e),
            "n": b64(&self.n),
        })
    }

    /// The public key as SPKI PEM (`-----BEGIN PUBLIC KEY-----`).
    pub fn public_key_pem(&self) -> String {
        pem_encode("PUBLIC KEY", &self.spki_der)
    }

    /// The public key as SPKI DER.
    pub fn public_key_der(&self) -> Vec<u8> {
        self.spki_der.clone()
    }

    /// A self-signed X.509 certificate (PEM) for this key, as found in the
    /// `cert` fields of Cloudflare's certs endpoint. It is deterministic for
    /// a given key (fixed validity 2020-01-01..2049-12-31, serial derived
    /// from the kid, subject/issuer `CN=cf-access-dev`, sha256WithRSA).
    pub fn cert_pem(&self) -> String {
        pem_encode("CERTIFICATE", &x509::self_signed(self))
    }

    /// Signs `msg` with `alg`: `RS256`, `RS384`, `RS512` or `PS256`.
    /// Panics on any other algorithm.
    #[allow(clippy::expect_used, reason = "cannot fail: encodings, the RNG")]
    pub fn sign(&self, alg: &str, msg: &[u8]) -> Vec<u8> {
        use aws_lc_rs::signature as sig;
        let padding: &'static dyn sig::RsaEncoding = match alg {
            "RS256" => &sig::RSA_PKCS1_SHA256,
            "RS384" => &sig::RSA_PKCS1_SHA384,
            "RS512" => &sig::RSA_PKCS1_SHA512,
            "PS256" => &sig::RSA_PSS_SHA256,
            other => panic!("KeyPair::sign: unsupported algorithm {other:?}"),
        };
        let mut out = vec![0u8; self.inner.public_modulus_len()];
        self.inner
            .sign(padding, &aws_lc_rs::rand::SystemRandom::new(), msg, &mut out)
            .expect("RSA signing failed");
        out
    }
}

/// Cloudflare's certs JSON:
/// `{"keys":[jwk...], "public_cert":{"kid","cert"}, "public_certs":[{"kid","cert"}...]}`.
///
/// `keys` and `public_certs` follow the given order; `public_cert` is the
/// LAST key given (the current one). `cert` is a real self-signed X.509
/// certificate PEM (see [`KeyPair::cert_pem`]). With no keys, `public_cert`
/// is omitted.
pub fn certs_json(keys: &[&KeyPair]) -> String {
    // Built by hand to keep Cloudflare's field order (serde_json sorts keys).
    fn s(v: &str) -> String {
        Value::from(v).to_string()
    }
    let jwks: Vec<String> = keys
        .iter()
        .map(|k| {
            format!(
                r#"{{"kid":{},"kty":"RSA","alg":"RS256","use":"sig","e":{},"n":{}}}"#,
                s(k.kid()),
                s(&b64(&k.e)),
                s(&b64(&k.n))
            )
        })
        .collect();
    let certs: Vec<String> = keys
        .iter()
        .map(|k| format!(r#"{{"kid":{},"cert":{}}}"#, s(k.kid()), s(&k.cert_pem())))
        .collect();
    let public_cert = match certs.last() {
        Some(c) => format!(r#","public_cert":{c}"#),
        None => String::new(),
    };
    format!(r#"{{"keys":[{}]{public_cert},"public_certs":[{}]}}"#, jwks.join(","), certs.join(","))
}

/// base64url without padding.
pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// `b64(header_json).b64(payload_json).b64(sig)`: the JSON strings are used
/// verbatim (so tests can craft duplicate keys, odd whitespace, ...), the
/// signature is made with `alg` (see [`KeyPair::sign`]) whatever the header says.
pub fn sign_raw(key: &KeyPair, alg: &str, header_json: &str, payload_json: &str) -> String {
    let signing_input = format!("{}.{}", b64(header_json.as_bytes()), b64(payload_json.as_bytes()));
    let sig = key.sign(alg, signing_input.as_bytes());
    format!("{signing_input}.{}", b64(&sig))
}

/// An HS256 token keyed with `secret` (for the RS256/HS256 key-confusion
/// attack test: use `key.public_key_der()` or the PEM bytes as the secret).
pub fn sign_hs256(secret: &[u8], header_json: &str, payload_json: &str) -> String {
    let signing_input = format!("{}.{}", b64(header_json.as_bytes()), b64(payload_json.as_bytes()));
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
    let tag = aws_lc_rs::hmac::sign(&key, signing_input.as_bytes());
    format!("{signing_input}.{}", b64(tag.as_ref()))
}

/// An RS256 token with header `{"alg":"RS256","kid":key.kid(),"typ":"JWT"}`.
pub fn mint(key: &KeyPair, claims: &Value) -> String {
    let header = json!({"alg": "RS256", "kid": key.kid(), "typ": "JWT"});
    sign_raw(key, "RS256", &header.to_string(), &claims.to_string())
}

/// `myteam.cloudflareaccess.com` from `https://myteam.cloudflareaccess.com/`
/// (a leading `https://` or `http://` and trailing `/`s are stripped).
pub fn normalize_team_domain(team_domain: &str) -> String {
    let t = team_domain.trim();
    let t = t.strip_prefix("https://").or_else(|| t.strip_prefix("http://")).unwrap_or(t);
    t.trim_end_matches('/').to_string()
}

/// The `iss` Cloudflare uses for a team domain: `https://<team_domain>`.
pub fn issuer(team_domain: &str) -> String {
    format!("https://{}", normalize_team_domain(team_domain))
}

/// Claims shaped like Cloudflare's application token for a user:
/// `{"aud":[aud],"email","exp":now+ttl,"iat":now,"nbf":now,"iss":"https://"+team_domain,
///   "type":"app","identity_nonce","sub","country":"US"}`.
pub fn user_claims(team_domain: &str, aud: &str, email: &str, now: i64, ttl: i64) -> Value {
    json!({
        "aud": [aud],
        "email": email,
        "exp": now + ttl,
        "iat": now,
        "nbf": now,
        "iss": issuer(team_domain),
        "type": "app",
        "identity_nonce": random_hex(8),
        "sub": random_uuid(),
        "country": "US",
    })
}

/// Claims shaped like Cloudflare's service-token application token:
/// `{"aud":[aud],"common_name","exp","iat","nbf","iss","type":"app","sub":"","identity_nonce"}`
/// (no email). `common_name` is normally `<client id>.access`.
pub fn service_claims(
    team_domain: &str,
    aud: &str,
    common_name: &str,
    now: i64,
    ttl: i64,
) -> Value {
    json!({
        "aud": [aud],
        "common_name": common_name,
        "exp": now + ttl,
        "iat": now,
        "nbf": now,
        "iss": issuer(team_domain),
        "type": "app",
        "sub": "",
        "identity_nonce": random_hex(8),
    })
}

/// Current unix time in seconds.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[allow(clippy::expect_used, reason = "cannot fail: encodings, the RNG")]
fn random_bytes(n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    aws_lc_rs::rand::fill(&mut buf).expect("system RNG failed");
    buf
}

fn random_hex(nbytes: usize) -> String {
    hex(&random_bytes(nbytes))
}

/// A random version-4 UUID string.
fn random_uuid() -> String {
    let mut b = random_bytes(16);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex(&b);
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[allow(clippy::expect_used, reason = "cannot fail: encodings, the RNG")]
fn pem_encode(label: &str, der: &[u8]) -> String {
    let b = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The DER inside the first `label` PEM block, `Ok(None)` if there is none.
fn pem_decode(pem: &str, label: &str) -> Result<Option<Vec<u8>>, String> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let Some(start) = pem.find(&begin) else {
        return Ok(None);
    };
    let body = &pem[start + begin.len()..];
    let stop = body.find(&end).ok_or_else(|| format!("missing \"{end}\""))?;
    let b: String = body[..stop].chars().filter(|c| !c.is_ascii_whitespace()).collect();
    STANDARD.decode(b).map(Some).map_err(|e| format!("bad base64 in PEM: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{decode, Algorithm, DecodingKey, Validation};
    use std::sync::OnceLock;

    /// Key generation takes a while in debug builds; share a few keys.
    fn keys() -> &'static [KeyPair; 2] {
        static KEYS: OnceLock<[KeyPair; 2]> = OnceLock::new();
        KEYS.get_or_init(|| [KeyPair::generate(), KeyPair::generate()])
    }

    fn validation(aud: &str, team: &str) -> Validation {
        let mut v = Validation::new(Algorithm::RS256);
        v.set_audience(&[aud]);
        v.set_issuer(&[issuer(team)]);
        v
    }

    #[test]
    fn kid_is_sha256_hex() {
        let k = &keys()[0];
        assert_eq!(k.kid().len(), 64);
        assert!(k.kid().chars().all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)));
        assert_ne!(keys()[0].kid(), keys()[1].kid());
    }

    #[test]
    fn pem_round_trip() {
        let k = &keys()[0];
        let pem = k.to_pkcs8_pem();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        let k2 = KeyPair::from_pkcs8_pem(&pem).unwrap();
        assert_eq!(k.kid(), k2.kid());
        assert_eq!(k.jwk(), k2.jwk());
        assert!(KeyPair::from_pkcs8_pem("nope").is_err());
        assert!(KeyPair::from_pkcs8_pem(&k.public_key_pem()).is_err());
        assert!(k.public_key_pem().starts_with("-----BEGIN PUBLIC KEY-----\n"));
    }

    #[test]
    fn jwk_shape() {
        let k = &keys()[0];
        let jwk = k.jwk();
        let obj = jwk.as_object().unwrap();
        let names: Vec<&str> = obj.keys().map(String::as_str).collect();
        assert_eq!(names.len(), 6);
        for n in ["kid", "kty", "alg", "use", "e", "n"] {
            assert!(obj.contains_key(n), "{n}");
        }
        assert_eq!(jwk["e"], "AQAB");
        assert_eq!(jwk["kty"], "RSA");
        let n = jwk["n"].as_str().unwrap();
        assert!(!n.contains('=') && !n.contains('+') && !n.contains('/'));
        assert_eq!(URL_SAFE_NO_PAD.decode(n).unwrap().len(), 256);
    }

    #[test]
    fn minted_token_verifies_with_jwk_components_and_pem() {
        let k = &keys()[0];
        let team = "myteam.cloudflareaccess.com";
        let claims = user_claims(team, "aud-tag", "alice@example.com", now(), 600);
        let token = mint(k, &claims);

        let jwk = k.jwk();
        let dk = DecodingKey::from_rsa_components(
            jwk["n"].as_str().unwrap(),
            jwk["e"].as_str().unwrap(),
        )
        .unwrap();
        let got = decode::<Value>(&token, &dk, &validation("aud-tag", team)).unwrap();
        assert_eq!(got.claims, claims);
        assert_eq!(got.header.kid.as_deref(), Some(k.kid()));

        let dk = DecodingKey::from_rsa_pem(k.public_key_pem().as_bytes()).unwrap();
        decode::<Value>(&token, &dk, &validation("aud-tag", team)).unwrap();

        // Wrong key fails.
        let other = keys()[1].jwk();
        let dk = DecodingKey::from_rsa_components(
            other["n"].as_str().unwrap(),
            other["e"].as_str().unwrap(),
        )
        .unwrap();
        assert!(decode::<Value>(&token, &dk, &validation("aud-tag", team)).is_err());
    }

    #[test]
    fn other_algorithms_verify() {
        let k = &keys()[1];
        let team = "t.cloudflareaccess.com";
        let claims = service_claims(team, "a", "abc.access", now(), 60);
        let dk = DecodingKey::from_rsa_pem(k.public_key_pem().as_bytes()).unwrap();
        for (name, alg) in [
            ("RS256", Algorithm::RS256),
            ("RS384", Algorithm::RS384),
            ("RS512", Algorithm::RS512),
            ("PS256", Algorithm::PS256),
        ] {
            let header = format!(r#"{{"alg":"{name}","kid":"{}"}}"#, k.kid());
            let token = sign_raw(k, name, &header, &claims.to_string());
            let mut v = validation("a", team);
            v.algorithms = vec![alg];
            decode::<Value>(&token, &dk, &v).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    #[should_panic]
    fn sign_rejects_unknown_alg() {
        keys()[0].sign("none", b"x");
    }

    #[test]
    fn hs256_uses_secret() {
        let k = &keys()[0];
        let secret = k.public_key_der();
        let claims = user_claims("t", "a", "e@x", now(), 60);
        let token = sign_hs256(&secret, r#"{"alg":"HS256","typ":"JWT"}"#, &claims.to_string());
        let mut v = validation("a", "t");
        v.algorithms = vec![Algorithm::HS256];
        decode::<Value>(&token, &DecodingKey::from_secret(&secret), &v).unwrap();
    }

    #[test]
    fn sign_raw_is_verbatim() {
        let k = &keys()[0];
        let payload = r#"{"aud":"a","aud":"b"}"#;
        let t = sign_raw(k, "RS256", r#"{"alg":"RS256"}"#, payload);
        let parts: Vec<&str> = t.split('.').collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(URL_SAFE_NO_PAD.decode(parts[1]).unwrap(), payload.as_bytes());
    }

    #[test]
    fn claims_shape() {
        let u = user_claims("https://t.cloudflareaccess.com/", "aud1", "a@b.c", 1000, 60);
        assert_eq!(u["aud"], json!(["aud1"]));
        assert_eq!(u["iss"], "https://t.cloudflareaccess.com");
        assert_eq!(u["exp"], 1060);
        assert_eq!(u["iat"], 1000);
        assert_eq!(u["nbf"], 1000);
        assert_eq!(u["type"], "app");
        assert_eq!(u["email"], "a@b.c");
        assert_eq!(u["country"], "US");
        assert_eq!(u["sub"].as_str().unwrap().len(), 36);
        assert!(!u["identity_nonce"].as_str().unwrap().is_empty());

        let s = service_claims("t.cloudflareaccess.com", "aud1", "id.access", 1000, 60);
        assert!(s.get("email").is_none());
        assert_eq!(s["common_name"], "id.access");
        assert_eq!(s["sub"], "");
        assert_eq!(s["iss"], "https://t.cloudflareaccess.com");
    }

    #[test]
    fn certs_json_shape() {
        let [a, b] = keys();
        let doc: Value = serde_json::from_str(&certs_json(&[a, b])).unwrap();
        let top: Vec<&str> = doc.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(top.len(), 3);
        assert_eq!(doc["keys"][0], a.jwk());
        assert_eq!(doc["keys"][1], b.jwk());
        assert_eq!(doc["public_cert"]["kid"], b.kid());
        assert_eq!(doc["public_certs"][0]["kid"], a.kid());
        assert_eq!(doc["public_certs"][1]["kid"], b.kid());
        let cert = doc["public_cert"]["cert"].as_str().unwrap();
        assert!(cert.starts_with("-----BEGIN CERTIFICATE-----\n"));
        assert!(cert.ends_with("-----END CERTIFICATE-----\n"));
        assert_eq!(doc["public_certs"][1]["cert"], doc["public_cert"]["cert"]);
        // Deterministic per key.
        assert_eq!(a.cert_pem(), a.cert_pem());

        let raw = certs_json(&[a]);
        assert!(raw.starts_with(r#"{"keys":[{"kid":""#), "{raw}");
        assert!(raw.contains(r#","kty":"RSA","alg":"RS256","use":"sig","e":"AQAB","n":""#));
        assert!(raw.contains(r#"],"public_cert":{"kid":""#));

        let empty: Value = serde_json::from_str(&certs_json(&[])).unwrap();
        assert_eq!(empty["keys"], json!([]));
        assert_eq!(empty["public_certs"], json!([]));
    }

    #[test]
    fn cert_contains_the_public_key() {
        let k = &keys()[0];
        let der = pem_decode(&k.cert_pem(), "CERTIFICATE").unwrap().unwrap();
        let spki = k.public_key_der();
        assert!(der.windows(spki.len()).any(|w| w == spki.as_slice()));
        // The signature over the TBS verifies with the key.
        let (tbs, sig) = x509::split_for_test(&der);
        let pk = aws_lc_rs::signature::UnparsedPublicKey::new(
            &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
            &spki,
        );
        pk.verify(tbs, sig).unwrap();
    }

    #[test]
    fn team_domain_normalization() {
        assert_eq!(normalize_team_domain("https://a.b/"), "a.b");
        assert_eq!(normalize_team_domain("a.b"), "a.b");
        assert_eq!(normalize_team_domain("http://a.b//"), "a.b");
    }
}
