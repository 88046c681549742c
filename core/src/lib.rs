//! Pure core of `ngx_http_cf_access`: everything that decides whether a Cloudflare Access
//! token is good, with no nginx linkage, so it is unit-tested by plain `cargo test`.
//!
//! - [`config`]: checks of directive arguments.
//! - [`decide`]: one request's decision (headers in, verdict out), the entry point.
//! - [`token`]: splitting and decoding a compact JWS, header checks (RS256 only).
//! - [`jwks`]: the certs endpoint's JSON (`keys` only; `public_cert(s)` are never read).
//! - [`policy`]: the claims rules (`exp`/`nbf`/`iat` with leeway, `iss`, `aud`, `type`).
//! - [`verify`]: the whole check, in the order that never trusts unverified data.
//! - [`cache`]: the per-worker cache of verified tokens.
//! - [`metrics`]: what `cf_access_metrics` answers (Prometheus text, JSON, readiness).
//! - [`redirect`]: where a redirect of the certs endpoint leads, and whether to follow it.
//! - [`refresh`]: the refresh state machine every process of an instance follows.
//! - [`zone`]: the layout of the shared memory zone holding that state and the newest sets.
//! - [`persist`]: the optional on-disk copy of the last good key sets.
//!
//! Time is always passed in (`now`, unix seconds); nothing here reads the clock.

pub mod cache;
pub mod claim;
pub mod config;
pub mod decide;
pub mod error;
pub mod extract;
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
