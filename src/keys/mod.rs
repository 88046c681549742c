//! Key sets: this process's copy of each (`store`), one bounded fetch (`fetch`), one round
//! of the instance-wide refresh state machine (`sync`), and the key cache file (`saved`).

pub mod fetch;
pub mod saved;
pub mod store;
pub mod sync;

pub use fetch::{Caller, Egress};
pub use store::{store_for, KeyStore};
