//! Time per verification of the pure core, without nginx: `cargo run --release -p
//! cf-access-core --example verify_speed`. Not a test; prints numbers.

// A benchmark program: a failure is a panic with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use cf_access_core::{verify, verify_cached, KeySet, Policy, TokenCache};
use cf_access_dev::{certs_json, mint, user_claims, KeyPair};

fn main() {
    let key = KeyPair::generate();
    let keys = KeySet::from_certs_json(certs_json(&[&key]).as_bytes()).expect("key set");
    let now = cf_access_dev::now();
    let team = "team.cloudflareaccess.com";
    let aud = "4714c1358e65fe4b408ad6d432a5f878f08194bdb4752441fd56faefa9b2b6f2";
    let policy = Policy::new(team, vec![aud.into()], 60);
    let token = mint(&key, &user_claims(team, aud, "alice@example.com", now, 3600));
    let n = 20_000;

    let t = Instant::now();
    for _ in 0..n {
        assert!(verify(&token, Some(&keys), &policy, now).is_ok());
    }
    let full = t.elapsed().as_secs_f64() / n as f64 * 1e6;

    let parsed = cf_access_core::token::parse(&token).expect("parse");
    let key_ref = keys.get(key.kid()).expect("key");
    let t = Instant::now();
    for _ in 0..n {
        assert!(key_ref.verify_rs256(parsed.signing_input, parsed.signature));
    }
    let rsa = t.elapsed().as_secs_f64() / n as f64 * 1e6;

    let mut cache = TokenCache::new(100);
    let t = Instant::now();
    for _ in 0..n * 10 {
        assert!(verify_cached(token.as_bytes(), Some(&keys), &policy, now, &mut cache).is_ok());
    }
    let hit = t.elapsed().as_secs_f64() / (n * 10) as f64 * 1e6;

    println!("token {} bytes", token.len());
    println!("full verify: {full:.2} us  (RSA verify alone: {rsa:.2} us)");
    println!("cache hit:   {hit:.2} us");
}
