//! Property tests for the pure core.
//!
//! Tokens with a valid signature are signed here with a fixed RSA-2048 test key
//! (`fixtures/rsa2048.pem`, its public half in `fixtures/certs.json`, shared with the fuzz
//! targets), so no property depends on a forged or absent signature to be refused.

// Strategies and properties are test code outside #[test] functions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::LazyLock;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use cf_access_core::extract::{cookie_value, find_token, COOKIE, HEADER};
use cf_access_core::refresh::{next_delay, RETRY_MAX, RETRY_MIN};
use cf_access_core::token::{self, MAX_TOKEN_LEN};
use cf_access_core::{verify, Claims, KeySet, Policy, Status, VerifyError};
use cf_access_dev::KeyPair;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::{json, Value};

const KEY_PEM: &str = include_str!("fixtures/rsa2048.pem");
const CERTS_JSON: &[u8] = include_bytes!("fixtures/certs.json");
/// The fixture key's kid: lowercase hex SHA-256 of its SPKI DER, as Cloudflare's are.
const KID: &str = "fa8ac69709936b3c162faa2a254777e77281813a4a0c3c4850355168ac483a1b";

const NOW: i64 = 1_700_000_000;
const ISSUER: &str = "https://team.cloudflareaccess.com";
const LEEWAY: u64 = 60;

static KEYS: LazyLock<KeySet> =
    LazyLock::new(|| KeySet::from_certs_json(CERTS_JSON).expect("fixture certs.json"));
static SIGNING_KEY: LazyLock<KeyPair> =
    LazyLock::new(|| KeyPair::from_pkcs8_pem(KEY_PEM).expect("fixture rsa2048.pem"));

/// A key set with the fixture's kid but another (made-up) modulus.
static UNRELATED_KEYS: LazyLock<KeySet> = LazyLock::new(|| {
    let body = json!({"keys": [{
        "kid": KID, "kty": "RSA", "alg": "RS256", "use": "sig",
        "e": "AQAB", "n": b64(&[0xC3; 256]),
    }]});
    KeySet::from_certs_json(body.to_string().as_bytes()).unwrap()
});

fn policy() -> Policy {
    Policy::new("team.cloudflareaccess.com", vec!["aud1".into(), "aud2".into()], LEEWAY)
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// `b64(header).b64(payload).signature`, RS256-signed with the fixture key whatever the
/// header says.
fn sign_raw(header: &str, payload: &str) -> String {
    cf_access_dev::sign_raw(&SIGNING_KEY, "RS256", header, payload)
}

/// What [`cf_access_core::Identity`] makes of a claim: control characters become spaces.
fn header_safe(claim: &Option<String>) -> String {
    let v = claim.as_deref().unwrap_or_default();
    v.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

fn good_header() -> String {
    json!({"alg": "RS256", "kid": KID, "typ": "JWT"}).to_string()
}

/// Claims that pass [`policy`] at [`NOW`].
fn good_claims() -> Value {
    json!({
        "exp": NOW + 300, "iat": NOW, "nbf": NOW, "iss": ISSUER,
        "aud": ["aud1"], "type": "app", "email": "a@b.c", "sub": "s",
    })
}

/// A JSON object's text from (key, value) pairs, duplicates kept.
fn object_text(pairs: &[(String, Value)]) -> String {
    let fields: Vec<String> =
        pairs.iter().map(|(k, v)| format!("{}:{}", Value::from(k.as_str()), v)).collect();
    format!("{{{}}}", fields.join(","))
}

// ---- strategies ---------------------------------------------------------------------

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        "\\PC{0,12}".prop_map(Value::from),
        "[ -~\\x00-\\x1f\\x7f\\u{85}]{0,12}".prop_map(Value::from),
        select(&["RS256", "rs256", "none", "HS256", "RS384", "PS256", "app"][..])
            .prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 5, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..5).prop_map(Value::Array),
            vec((arb_key(), inner), 0..5).prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// Header and claim names the core reads, and others.
fn arb_key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => select(&[
            "alg", "kid", "crit", "typ", "jku", "jwk", "x5u", "exp", "nbf", "iat", "iss", "aud",
            "type", "email", "sub", "common_name", "keys", "kty", "n", "e", "use",
        ][..])
        .prop_map(String::from),
        1 => "\\PC{0,8}",
    ]
}

/// Text that is often, but not always, a JSON object.
fn arb_json_text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => vec((arb_key(), arb_json()), 0..6).prop_map(|kv| object_text(&kv)),
        1 => arb_json().prop_map(|v| v.to_string()),
        1 => "\\PC{0,40}",
    ]
}

/// A base64url segment: of JSON-ish text, of random bytes, or random alphabet soup.
fn arb_segment() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => arb_json_text().prop_map(|t| b64(t.as_bytes())),
        1 => vec(any::<u8>(), 0..64).prop_map(|b| b64(&b)),
        1 => "[A-Za-z0-9_=+/-]{0,24}",
    ]
}

/// Claims around [`NOW`] (leeway 60 s) that pass [`policy`] about a third of the time, as
/// (key, value) pairs: now and then with a wrong JSON type or a duplicate (malformed), a
/// time out of bounds, or a wrong issuer, audience or type.
fn arb_claims() -> impl Strategy<Value = Vec<(String, Value)>> {
    // Seconds from NOW: exp mostly ahead, nbf and iat mostly behind.
    let time = |lo: i64, hi: i64| {
        prop_oneof![
            30 => (lo..hi).prop_map(|d| Value::from(NOW + d)),
            10 => (lo as f64..hi as f64).prop_map(|d| Value::from(NOW as f64 + d)),
            1 => any::<i64>().prop_map(Value::from),
            1 => any::<f64>().prop_map(Value::from),
            1 => Just(Value::from("1700000000")),
        ]
    };
    let text = |choices: &'static [&'static str]| {
        prop_oneof![
            40 => select(choices).prop_map(Value::from),
            1 => arb_json(),
        ]
    };
    let aud = prop_oneof![
        8 => select(&["aud1", "aud2", "aud1", "aud2", "x", ""][..]).prop_map(Value::from),
        8 => vec(select(&["aud1", "aud2", "x"][..]), 0..4).prop_map(|v| json!(v)),
        1 => arb_json(),
    ];
    let extra_key = prop_oneof![
        8 => "[a-z_]{1,10}",
        1 => arb_key(),
    ];
    let fields = (
        (time(-120, 1200), time(-1200, 120), time(-1200, 120)),
        text(&[
            ISSUER,
            ISSUER,
            ISSUER,
            ISSUER,
            ISSUER,
            ISSUER,
            "https://team.cloudflareaccess.com/",
            "https://other.example",
        ]),
        aud,
        text(&["app", "app", "app", "app", "app", "org", ""]),
        (text(&["a@b.c", ""]), text(&["sub-1"]), text(&["client.access"])),
        vec((extra_key, arb_json()), 0..3),
    );
    let present = vec(prop::bool::weighted(0.95), 8);
    (fields, present).prop_map(
        |(((exp, nbf, iat), iss, aud, type_, (email, sub, cn), extra), present)| {
            let named = [
                ("exp", exp),
                ("nbf", nbf),
                ("iat", iat),
                ("iss", iss),
                ("aud", aud),
                ("type", type_),
                ("email", email),
                ("sub", sub),
            ];
            let mut pairs: Vec<(String, Value)> = named
                .into_iter()
                .zip(present)
                .filter(|(_, keep)| *keep)
                .map(|((k, v), _)| (k.to_string(), v))
                .collect();
            pairs.push(("common_name".into(), cn));
            pairs.extend(extra);
            pairs
        },
    )
}

/// RFC 6265 cookie-name (token) and cookie-octet characters.
const COOKIE_NAME: &str = "[A-Za-z0-9!#$%&'*+.^_`|~-]{1,16}";
const COOKIE_VALUE: &str = "[\\x21\\x23-\\x2B\\x2D-\\x3A\\x3C-\\x5B\\x5D-\\x7E]{0,32}";

fn arb_cookie() -> impl Strategy<Value = (String, String)> {
    (COOKIE_NAME, COOKIE_VALUE)
        .prop_filter("not the cookie looked for", |(n, _)| n.as_bytes() != COOKIE)
}

// ---- token::parse and verify on garbage -----------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn parse_and_verify_never_panic_on_any_string(s in any::<String>()) {
        let _ = token::parse(&s);
        let _ = verify(&s, Some(&KEYS), &policy(), NOW);
        let _ = verify(&s, None, &policy(), NOW);
    }

    #[test]
    fn parse_and_verify_never_panic_on_any_bytes(b in vec(any::<u8>(), 0..256)) {
        let s = String::from_utf8_lossy(&b);
        let _ = token::parse(&s);
        let _ = verify(&s, Some(&KEYS), &policy(), NOW);
    }

    #[test]
    fn three_segment_garbage_is_never_ok(
        h in arb_segment(),
        p in arb_segment(),
        s in arb_segment(),
    ) {
        let t = format!("{h}.{p}.{s}");
        let _ = token::parse(&t);
        prop_assert!(verify(&t, Some(&KEYS), &policy(), NOW).is_err());
        prop_assert!(verify(&t, Some(&KeySet::default()), &policy(), NOW).is_err());
    }

    #[test]
    fn parse_keeps_the_segments_it_was_given(
        kid in prop::option::of("\\PC{0,16}"),
        p in "[A-Za-z0-9_-]{1,40}",
        s in "[A-Za-z0-9_-]{1,40}",
    ) {
        let header = match &kid {
            Some(k) => json!({"alg": "RS256", "kid": k}),
            None => json!({"alg": "RS256"}),
        };
        let h = b64(header.to_string().as_bytes());
        let t = format!("{h}.{p}.{s}");
        let parsed = token::parse(&t).unwrap();
        prop_assert_eq!(parsed.kid, kid);
        prop_assert_eq!(parsed.signing_input, format!("{h}.{p}"));
        prop_assert_eq!(parsed.payload, p);
        prop_assert_eq!(parsed.signature, s);
    }
}

// ---- the algorithm ----------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The header may say anything but `"alg":"RS256"`: even with a good signature (RS256
    /// or the other RSA algorithm) by a known key and claims that pass, the token is
    /// refused as BadAlg or Malformed.
    #[test]
    fn any_alg_but_rs256_is_refused(
        alg in prop::option::of(prop_oneof![
            select(&["RS384", "RS512", "PS256"][..]).prop_map(Value::from),
            arb_json(),
        ]),
        extra in vec((arb_key(), arb_json()), 0..4),
        sign_alg in select(&["RS256", "RS384", "RS512", "PS256"][..]),
    ) {
        let mut pairs: Vec<(String, Value)> = alg.into_iter().map(|a| ("alg".to_string(), a)).collect();
        pairs.push(("kid".into(), KID.into()));
        pairs.extend(extra);
        let rs256 = Value::from("RS256");
        prop_assume!(!pairs.iter().any(|(k, v)| k == "alg" && *v == rs256));
        let header = object_text(&pairs);
        let t = cf_access_dev::sign_raw(&SIGNING_KEY, sign_alg, &header, &good_claims().to_string());
        let status = token::parse(&t).unwrap_err().status();
        prop_assert!(matches!(status, Status::BadAlg | Status::Malformed), "{status:?} for {header}");
        let status = verify(&t, Some(&KEYS), &policy(), NOW).unwrap_err().status();
        prop_assert!(matches!(status, Status::BadAlg | Status::Malformed), "{status:?} for {header}");
    }

    /// Tokens that would pass (good signature, good claims) never pass without their key.
    #[test]
    fn no_ok_without_the_signing_key(claims in arb_claims()) {
        let t = sign_raw(&good_header(), &object_text(&claims));
        prop_assert_eq!(verify(&t, None, &policy(), NOW).unwrap_err(), VerifyError::NoKeys);
        prop_assert_eq!(
            verify(&t, Some(&KeySet::default()), &policy(), NOW).unwrap_err(),
            VerifyError::UnknownKid
        );
        prop_assert_eq!(
            verify(&t, Some(&UNRELATED_KEYS), &policy(), NOW).unwrap_err(),
            VerifyError::BadSignature
        );
    }

    /// With a valid signature, verify says exactly what the policy says about the claims
    /// (or Malformed when they are not claims of the expected types).
    #[test]
    fn verify_agrees_with_policy(claims in arb_claims()) {
        let payload = object_text(&claims);
        let t = sign_raw(&good_header(), &payload);
        let got = verify(&t, Some(&KEYS), &policy(), NOW);
        match token::from_json_object::<Claims>(payload.as_bytes()) {
            None => prop_assert!(
                matches!(got, Err(VerifyError::Malformed(_))),
                "{got:?} for {payload}"
            ),
            Some(c) => {
                let want = policy().check(&c, NOW);
                prop_assert_eq!(got.as_ref().map(|_| ()).map_err(Clone::clone), want.clone(), "{}", payload);
                if let Ok(v) = got {
                    prop_assert_eq!(&v.kid, KID);
                    prop_assert_eq!(v.payload(), payload.clone());
                    prop_assert_eq!(v.claims.exp, c.exp);
                    prop_assert_eq!(v.identity.email, header_safe(&c.email));
                    prop_assert_eq!(v.identity.sub, header_safe(&c.sub));
                    prop_assert_eq!(v.identity.common_name, header_safe(&c.common_name));
                }
            }
        }
    }

    /// Changing any one byte of a token that passes, anywhere (signature, header, payload
    /// or a dot), makes it fail.
    #[test]
    fn any_single_byte_change_is_refused(
        idx in any::<prop::sample::Index>(),
        in_signature in any::<bool>(),
        mask in 1u8..128,
    ) {
        let t = sign_raw(&good_header(), &good_claims().to_string());
        prop_assert!(verify(&t, Some(&KEYS), &policy(), NOW).is_ok());
        let sig_start = t.rfind('.').unwrap() + 1;
        let i = if in_signature {
            sig_start + idx.index(t.len() - sig_start)
        } else {
            idx.index(t.len())
        };
        let mut bytes = t.into_bytes();
        bytes[i] ^= mask; // stays ASCII, so still a &str
        let t = String::from_utf8(bytes).unwrap();
        let err = verify(&t, Some(&KEYS), &policy(), NOW).unwrap_err();
        if i >= sig_start {
            prop_assert!(
                matches!(err, VerifyError::BadSignature | VerifyError::Malformed(_)),
                "{err:?} at {i}"
            );
        }
    }
}

// ---- size cap ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn oversized_is_too_large_whatever_it_holds(
        seed in "\\PC{1,64}",
        extra in 1usize..4096,
    ) {
        let mut t = String::new();
        while t.len() < MAX_TOKEN_LEN + extra {
            t.push_str(&seed);
        }
        let len = t.len();
        prop_assert_eq!(token::parse(&t).unwrap_err(), VerifyError::TooLarge(len));
        prop_assert_eq!(verify(&t, Some(&KEYS), &policy(), NOW).unwrap_err(), VerifyError::TooLarge(len));
        prop_assert_eq!(verify(&t, None, &policy(), NOW).unwrap_err(), VerifyError::TooLarge(len));
    }

    /// A token that would otherwise pass is refused once it is over the cap, and passes
    /// at the cap.
    #[test]
    fn oversized_valid_token_is_too_large(pad in 0usize..2048) {
        let mut claims = good_claims();
        claims["pad"] = "x".into();
        let base = sign_raw(&good_header(), &claims.to_string()).len();
        // Each 3 payload bytes add 4 token bytes; aim just below, at and above the cap.
        let target = (MAX_TOKEN_LEN + pad).saturating_sub(1024 + base);
        claims["pad"] = "x".repeat(1 + target * 3 / 4).into();
        let t = sign_raw(&good_header(), &claims.to_string());
        let got = verify(&t, Some(&KEYS), &policy(), NOW);
        if t.len() > MAX_TOKEN_LEN {
            prop_assert_eq!(got.unwrap_err(), VerifyError::TooLarge(t.len()));
        } else {
            prop_assert!(got.is_ok(), "{} bytes: {:?}", t.len(), got);
        }
    }
}

// ---- policy -------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn expired_is_expired_whatever_else(
        now in -(1i64 << 50)..(1i64 << 50),
        leeway in 0u64..(1 << 40),
        past in 0i64..(1 << 40),
        frac in 0.0f64..1.0,
        others in arb_claims(),
    ) {
        let exp = (now - leeway as i64 - past) as f64 - frac;
        let mut v = serde_json::Map::new();
        for (k, val) in others {
            v.insert(k, val);
        }
        v.insert("exp".into(), exp.into());
        let Ok(claims) = serde_json::from_value::<Claims>(Value::Object(v)) else {
            return Ok(()); // another claim has the wrong type: never reaches the policy
        };
        let mut p = policy();
        p.leeway = leeway;
        prop_assert_eq!(p.check(&claims, now), Err(VerifyError::Expired));
    }

    #[test]
    fn in_time_good_claims_pass(
        now in -(1i64 << 50)..(1i64 << 50),
        leeway in 0u64..(1 << 40),
        exp_ahead in 1i64..(1 << 40),
        nbf_ahead in prop::option::of(-(1i64 << 40)..=0),
        iat_ahead in prop::option::of(-(1i64 << 40)..=0),
    ) {
        let lw = leeway as i64;
        let mut claims = good_claims();
        claims["exp"] = (now - lw + exp_ahead).into();
        claims["nbf"] = nbf_ahead.map(|d| now + lw + d).into();
        claims["iat"] = iat_ahead.map(|d| now + lw + d).into();
        let mut p = policy();
        p.leeway = leeway;
        prop_assert_eq!(p.check(&serde_json::from_value(claims).unwrap(), now), Ok(()));
    }
}

// ---- key set --------------------------------------------------------------------------------

fn arb_jwk() -> impl Strategy<Value = Value> {
    let b64_of = |max: usize| vec(any::<u8>(), 0..max).prop_map(|b| Value::from(b64(&b)));
    let n = prop_oneof![
        b64_of(300),
        (1u8.., vec(any::<u8>(), 250..260)).prop_map(|(top, mut n)| {
            n[0] = top;
            Value::from(b64(&n))
        }),
        arb_json(),
    ];
    let pairs = (
        select(&["RSA", "RSA", "EC", "oct", "rsa"][..]).prop_map(Value::from),
        prop_oneof![4 => "[a-f0-9]{1,8}".prop_map(Value::from), 1 => arb_json()],
        n,
        prop_oneof![4 => select(&["AQAB", "Aw", "", "AA"][..]).prop_map(Value::from), 1 => arb_json()],
        prop::option::of(select(&["RS256", "RS384", "none"][..])),
        prop::option::of(select(&["sig", "enc"][..])),
        vec((arb_key(), arb_json()), 0..2),
    );
    pairs.prop_map(|(kty, kid, n, e, alg, use_, extra)| {
        let mut m: serde_json::Map<String, Value> = extra.into_iter().collect();
        m.insert("kty".into(), kty);
        m.insert("kid".into(), kid);
        m.insert("n".into(), n);
        m.insert("e".into(), e);
        if let Some(a) = alg {
            m.insert("alg".into(), a.into());
        }
        if let Some(u) = use_ {
            m.insert("use".into(), u.into());
        }
        Value::Object(m)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn certs_json_never_panics_on_bytes(b in vec(any::<u8>(), 0..512)) {
        let _ = KeySet::from_certs_json(&b);
    }

    #[test]
    fn certs_json_never_panics_on_json(v in arb_json()) {
        let _ = KeySet::from_certs_json(v.to_string().as_bytes());
        let _ = KeySet::from_certs_json(json!({"keys": v}).to_string().as_bytes());
    }

    #[test]
    fn certs_json_keeps_only_usable_keys(jwks in vec(prop_oneof![4 => arb_jwk(), 1 => arb_json()], 0..6)) {
        let body = json!({"keys": jwks}).to_string();
        match KeySet::from_certs_json(body.as_bytes()) {
            Ok(set) => {
                prop_assert!(!set.is_empty());
                prop_assert!(set.kids().all(|k| !k.is_empty()));
            }
            Err(e) => prop_assert_eq!(e, cf_access_core::JwksError::NoUsableKeys),
        }
    }

    /// Junk entries around the real key never hide it: its tokens still verify.
    #[test]
    fn junk_entries_do_not_hide_the_real_key(
        before in vec(arb_jwk(), 0..3),
        after in vec(arb_jwk(), 0..3),
    ) {
        let real: Value = serde_json::from_slice::<Value>(CERTS_JSON).unwrap()["keys"][0].clone();
        let before: Vec<Value> = before.into_iter().filter(|j| j["kid"] != KID).collect();
        let mut keys = before;
        keys.push(real);
        keys.extend(after.into_iter().filter(|j| j["kid"] != KID));
        let set = KeySet::from_certs_json(json!({"keys": keys}).to_string().as_bytes()).unwrap();
        prop_assert!(set.get(KID).is_some());
    }
}

#[test]
fn fixture_key_signs_tokens_that_verify() {
    let t = sign_raw(&good_header(), &good_claims().to_string());
    let v = verify(&t, Some(&KEYS), &policy(), NOW).unwrap();
    assert_eq!(v.kid, KID);
    assert_eq!(v.identity.email, "a@b.c");
    assert_eq!(KEYS.kids().collect::<Vec<_>>(), [KID]);
    assert_eq!(SIGNING_KEY.kid(), KID);
    let fixture: Value = serde_json::from_slice(CERTS_JSON).unwrap();
    assert_eq!(fixture["keys"][0], SIGNING_KEY.jwk());
}

// ---- extract --------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn cookie_value_never_panics(h in vec(any::<u8>(), 0..256), name in vec(any::<u8>(), 0..16)) {
        let _ = cookie_value(&h, &name);
        let _ = cookie_value(&h, COOKIE);
    }

    #[test]
    fn cookie_value_finds_the_inserted_cookie(
        others in vec(arb_cookie(), 0..8),
        at in any::<prop::sample::Index>(),
        value in COOKIE_VALUE,
        quoted in any::<bool>(),
        seps in vec(select(&[";", "; ", " ;  ", ";\t"][..]), 9),
    ) {
        let mut cookies: Vec<String> = others.iter().map(|(n, v)| format!("{n}={v}")).collect();
        let wire_value = if quoted { format!("\"{value}\"") } else { value.clone() };
        let name = std::str::from_utf8(COOKIE).unwrap();
        cookies.insert(at.index(cookies.len() + 1), format!("{name}={wire_value}"));
        let mut header = String::new();
        for (i, c) in cookies.iter().enumerate() {
            if i > 0 {
                header.push_str(seps[i]);
            }
            header.push_str(c);
        }
        prop_assert_eq!(cookie_value(header.as_bytes(), COOKIE), Some(value.as_bytes()), "{}", header);
        // Without it, nothing is found.
        let without: Vec<String> = others.iter().map(|(n, v)| format!("{n}={v}")).collect();
        let without = without.join("; ");
        prop_assert_eq!(cookie_value(without.as_bytes(), COOKIE), None);
    }

    #[test]
    fn find_token_prefers_the_single_header(
        before in vec((select(&["Host", "Cookie", "X-A"][..]), COOKIE_VALUE), 0..4),
        after in vec((select(&["Host", "Cookie", "X-A"][..]), COOKIE_VALUE), 0..4),
        tok in "[A-Za-z0-9._-]{0,40}",
        upper in any::<bool>(),
    ) {
        let name = if upper { HEADER.to_ascii_uppercase() } else { HEADER.to_ascii_lowercase() };
        let mut h: Vec<(&[u8], &[u8])> = before.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())).collect();
        h.push((name.as_bytes(), tok.as_bytes()));
        h.extend(after.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())));
        prop_assert_eq!(find_token(h.clone()), Ok(Some(tok.as_bytes())));
        h.push((HEADER.as_bytes(), b"second"));
        prop_assert!(find_token(h).is_err());
    }
}

// ---- refresh schedule -------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn next_delay_backs_off_monotonically_and_within_bounds(
        secs in prop_oneof![0u64..10_000, any::<u64>()],
        nanos in 0u32..1_000_000_000,
        failures in any::<u32>(),
    ) {
        let interval = Duration::new(secs, nanos);
        let d = next_delay(interval, failures);
        prop_assert!(d <= interval);
        if failures == 0 {
            prop_assert_eq!(d, interval);
        } else {
            prop_assert!(d <= RETRY_MAX);
            prop_assert!(d >= RETRY_MIN.min(interval));
            if let Some(next) = failures.checked_add(1) {
                prop_assert!(d <= next_delay(interval, next), "not monotonic at {failures}");
            }
        }
    }
}
