//! The integration tests' kit (`tests/*.rs` of the module crate): one place for what every
//! test needs, so that a test file holds only its story.
//!
//! * [`Nginx`] / [`NginxBuilder`]: a real nginx (master and workers) on 127.0.0.1 with
//!   ephemeral ports and a temporary prefix, with the module loaded; started, reloaded,
//!   quit and checked ([`Nginx::assert_clean`], [`Nginx::quit`]), always cleaned up.
//! * [`http_request`] / [`parse_response`] / [`Response`]: a small std-only HTTP/1.1 client.
//! * [`site`]: the test site's team domain, application AUD, header and cookie names, and
//!   tokens for them.
//! * [`wait_until`] / [`poll_until`]: the one way to wait for something, bounded.
//! * [`send_signal`], [`process_alive`], [`free_port`]: process and port helpers.
//! * [`build`]: another nginx and module than the vendored build (Debian's, a packager's),
//!   and the stories every such build must pass.
//!
//! The local Cloudflare stand-in (keys, certs endpoint, tokens) is the dev tool,
//! `cf_access_dev`; [`site`] builds on it.

pub mod build;
mod http;
mod nginx;
mod process;
pub mod site;

pub use http::{http_request, parse_response, Response};
pub use nginx::{Nginx, NginxBuilder, CRASH_MARKERS};
pub use process::{free_port, poll_until, process_alive, send_signal, wait_until};
