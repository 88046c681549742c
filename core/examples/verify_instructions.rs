//! The core's cost per full verification, alone, for `bench/run --instructions` (which runs
//! it under `valgrind --tool=callgrind` and reads the inclusive instruction counts of the
//! three `measure_*` functions). Not a test; prints a line per measurement.
//!
//!     verify_instructions CERTS_JSON_FILE TEAM_DOMAIN AUD TOKENS_FILE N
//!
//! Takes the first N tokens of TOKENS_FILE (one per line) and, once each, in order:
//! - `measure_rsa`: the RS256 signature check alone (`Key::verify_rs256`);
//! - `measure_verify`: `cf_access_core::verify` (parse, signature, claims, policy);
//! - `measure_decide`: `decide::decide` with the headers the benchmark's client sends and a
//!   disabled cache: exactly what the module asks of the core for a request in an nginx with
//!   `cf_access_cache_size 0` (the "full verification" scenario).
//!
//! Everything is read and parsed before the measured functions run, so their counts are only
//! the work per token (divide by N).

// A benchmark program: a failure is a panic with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use cf_access_core::decide::{self, Check};
use cf_access_core::{verify, KeySet, Policy, TokenCache};

#[inline(never)]
fn measure_rsa(keys: &KeySet, tokens: &[String]) -> usize {
    let mut ok = 0;
    for t in tokens {
        let parsed = cf_access_core::token::parse(t).expect("parse");
        let key = keys.get(parsed.kid.as_deref().expect("kid")).expect("key");
        ok += usize::from(key.verify_rs256(parsed.signing_input, parsed.signature));
    }
    ok
}

#[inline(never)]
fn measure_verify(keys: &KeySet, policy: &Policy, now: i64, tokens: &[String]) -> usize {
    tokens.iter().filter(|t| black_box(verify(t, Some(keys), policy, now)).is_ok()).count()
}

#[inline(never)]
fn measure_decide(keys: &KeySet, policy: &Policy, now: i64, tokens: &[String]) -> usize {
    let check = Check { policy, keys: Some(keys), now };
    let mut cache = TokenCache::new(0);
    let mut ok = 0;
    for t in tokens {
        let headers: [(&[u8], &[u8]); 2] =
            [(b"Host", b"bench"), (b"Cf-Access-Jwt-Assertion", t.as_bytes())];
        let d = black_box(decide::decide(headers, &check, &mut cache));
        ok += usize::from(d.verified.is_some());
    }
    ok
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [certs, team, aud, tokens, n] = &args[..] else {
        eprintln!("usage: verify_instructions CERTS_JSON_FILE TEAM_DOMAIN AUD TOKENS_FILE N");
        std::process::exit(2);
    };
    let n: usize = n.parse().expect("N");
    let certs = std::fs::read(certs).expect("certs file");
    let keys = KeySet::from_certs_json(&certs).expect("key set");
    let policy = Policy::new(team, vec![aud.clone()], 60);
    let tokens: Vec<String> = std::fs::read_to_string(tokens)
        .expect("tokens file")
        .lines()
        .filter(|l| !l.is_empty())
        .take(n)
        .map(String::from)
        .collect();
    assert_eq!(tokens.len(), n, "fewer than N tokens in the file");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;

    let rsa = measure_rsa(&keys, &tokens);
    let verified = measure_verify(&keys, &policy, now, &tokens);
    let decided = measure_decide(&keys, &policy, now, &tokens);
    println!("tokens {n}: rsa ok {rsa}, verify ok {verified}, decide ok {decided}");
    if rsa != n || verified != n || decided != n {
        eprintln!("verify_instructions: not every token verified");
        std::process::exit(1);
    }
}
