//! Keys, policy and tokens shared by the core's unit tests.

use std::sync::OnceLock;

use cf_access_dev::{certs_json, mint, user_claims, KeyPair};

use crate::{KeySet, Policy};

pub const TEAM: &str = "team.cloudflareaccess.com";
pub const NOW: i64 = 1_800_000_000;

/// Two keys, generated once per test binary.
pub fn keys() -> &'static (KeyPair, KeyPair) {
    static KEYS: OnceLock<(KeyPair, KeyPair)> = OnceLock::new();
    KEYS.get_or_init(|| (KeyPair::generate(), KeyPair::generate()))
}

pub fn set(keys: &[&KeyPair]) -> KeySet {
    KeySet::from_certs_json(certs_json(keys).as_bytes()).unwrap()
}

/// TEAM, audience "aud", 60 s leeway.
pub fn policy() -> Policy {
    Policy::new(TEAM, vec!["aud".into()], 60)
}

/// A user token for TEAM/"aud" valid at NOW, its claims changed by `patch`.
pub fn token(key: &KeyPair, patch: impl FnOnce(&mut serde_json::Value)) -> String {
    let mut claims = user_claims(TEAM, "aud", "a@example.com", NOW, 600);
    patch(&mut claims);
    mint(key, &claims)
}
