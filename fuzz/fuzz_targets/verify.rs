//! Arbitrary bytes as a token: `token::parse` and `verify` against a real key set (the
//! fixture key of core's tests), a fixed policy and a fixed `now`.
//!
//! Each input is tried twice: as the token itself, and as `header\npayload\nsignature`
//! whose parts are base64url-encoded here, so that mutations reach the header's JSON
//! (inside base64 they mostly break the encoding).
//!
//! Besides "never panics", it checks that the verdicts agree with each other: `verify` fails
//! exactly as `parse` does when `parse` fails, and with no key set loaded any token that
//! parses is `NoKeys`.

#![no_main]

use std::sync::LazyLock;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use cf_access_core::token;
use cf_access_core::{verify, KeySet, Policy, VerifyError};
use libfuzzer_sys::fuzz_target;

/// The seed tokens are valid at this time.
const NOW: i64 = 1_700_000_000;

static KEYS: LazyLock<KeySet> = LazyLock::new(|| {
    KeySet::from_certs_json(include_bytes!("../../core/tests/fixtures/certs.json"))
        .expect("fixture certs.json")
});
static POLICY: LazyLock<Policy> =
    LazyLock::new(|| Policy::new("team.cloudflareaccess.com", vec!["aud1".into()], 60));

fn check(token: &str) {
    let parsed = token::parse(token).map(|t| t.kid);
    let verdict = verify(token, Some(&KEYS), &POLICY, NOW);
    let no_keys = verify(token, None, &POLICY, NOW);
    match parsed {
        Err(e) => {
            assert_eq!(verdict.unwrap_err(), e);
            assert_eq!(no_keys.unwrap_err(), e);
        }
        Ok(kid) => {
            assert_eq!(no_keys.unwrap_err(), VerifyError::NoKeys);
            if let Ok(v) = verdict {
                assert_eq!(Some(v.kid), kid);
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(token) = std::str::from_utf8(data) {
        check(token);
    }
    let mut parts = data.splitn(3, |b| *b == b'\n');
    let (Some(header), Some(payload), Some(signature)) = (parts.next(), parts.next(), parts.next())
    else {
        return;
    };
    let token = format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload),
        URL_SAFE_NO_PAD.encode(signature)
    );
    check(&token);
});
