//! Key sets: this process's copy of each and its requests' signals (`store`), one bounded
//! fetch (`fetch`), one round of the instance-wide refresh state machine (`round`), and the
//! key cache file (`saved`).

pub mod fetch;
pub mod round;
pub mod saved;
pub mod store;

pub use fetch::{Egress, Role};
pub use store::{store_for, KeyStore};
