//! The clocks the module reads, in one place: the core never reads a clock, it is handed
//! these values.

use std::time::{SystemTime, UNIX_EPOCH};

use ngx::ffi::ngx_cached_time;

/// Milliseconds on the system-wide monotonic clock (the same in every process): what
/// refresh scheduling and leases are measured in.
pub fn mono_ms() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec it is given; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64).saturating_mul(1000).saturating_add(ts.tv_nsec as u64 / 1_000_000)
}

/// Wall-clock seconds (for reporting only; scheduling uses [`mono_ms`]). Any thread.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Wall-clock seconds from nginx's cached clock (updated every event loop iteration): what
/// a request's token is checked against. The event loop's thread only.
#[allow(clippy::unnecessary_cast)] // time_t is not i64 on every platform
pub fn request_now() -> i64 {
    // SAFETY: ngx_cached_time always points at a valid slot once nginx has started.
    unsafe { (*ngx_cached_time).sec as i64 }
}
