//! Pure core of `ngx_http_cf_access`: everything that decides whether a Cloudflare Access
//! token is good, with no nginx linkage, so it is unit-tested by plain `cargo test`.
//!
//! [`decide`] is the entry point for a request; what each module owns is in the file map in
//! `docs/design.md`.
//!
//! Time is always passed in (`now`, unix seconds); nothing here reads the clock.

pub mod cache;
pub mod claim;
pub mod config;
pub mod decide;
pub mod error;
pub mod extract;
pub mod identity;
pub mod jwks;
pub mod metrics;
pub mod persist;
pub mod policy;
pub mod redirect;
pub mod refresh;
pub mod sanitize;
pub mod token;
pub mod verify;
pub mod zone;

#[cfg(test)]
mod fixtures;

pub use cache::verify_cached;
pub use cache::TokenCache;
pub use error::{Status, VerifyError};
pub use jwks::{JwksError, KeySet};
pub use policy::{Claims, Policy};
pub use verify::{verify, Identity, Verified};
