//! Arbitrary bytes as a certs response body: `KeySet::from_certs_json`. A set it returns
//! is non-empty, every kid in it is found, and a token is verified against it (with the
//! fuzzed key material) without panicking.

#![no_main]

use cf_access_core::{verify, KeySet, Policy};
use libfuzzer_sys::fuzz_target;

/// A valid token signed by the fixture key (kid fa8ac697...), valid at 1_700_000_000.
const TOKEN: &str = include_str!("../seeds/verify/user");

fuzz_target!(|data: &[u8]| {
    let Ok(set) = KeySet::from_certs_json(data) else {
        return;
    };
    assert!(!set.is_empty());
    assert_eq!(set.kids().count(), set.len());
    for kid in set.kids() {
        assert!(!kid.is_empty());
        assert!(set.get(kid).is_some());
    }
    let policy = Policy::new("team.cloudflareaccess.com", vec!["aud1".into()], 60);
    let _ = verify(TOKEN, Some(&set), &policy, 1_700_000_000);
});
