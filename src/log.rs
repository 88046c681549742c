//! The module's one way to log: every line starts with [`PREFIX`]. On the event loop,
//! [`log_error!`](crate::log_error) and [`log_debug!`](crate::log_debug) (nginx's macros, the
//! prefix added); from a thread of ours (and the master's rounds), a [`ThreadLog`].

use std::fmt;
use std::mem::MaybeUninit;
use std::panic::{self, AssertUnwindSafe};

use ngx::ffi::{ngx_log_t, ngx_uint_t, NGX_LOG_ALERT, NGX_LOG_NOTICE, NGX_LOG_WARN};

/// What every line the module writes to the error log starts with (the macros below spell
/// it out: `concat!` takes literals only).
pub const PREFIX: &str = "cf_access: ";

/// `ngx_log_error!` with the module's prefix: `log_error!(NGX_LOG_INFO, r.log(), "...", ..)`.
#[macro_export]
macro_rules! log_error {
    ($level:expr, $log:expr, $fmt:literal $($arg:tt)*) => {
        ngx::ngx_log_error!($level, $log, concat!("cf_access: ", $fmt) $($arg)*)
    };
}

/// `ngx_log_debug_http!` with the module's prefix: `log_debug!(r, "...", ..)`.
#[macro_export]
macro_rules! log_debug {
    ($r:expr, $fmt:literal $($arg:tt)*) => {
        ngx::ngx_log_debug_http!($r, concat!("cf_access: ", $fmt) $($arg)*)
    };
}

/// The cycle's error log, for use from a thread of ours.
///
/// nginx's logger writes each line with one `write(2)` from a stack buffer, which is safe
/// from another thread; the log lives as long as the worker's cycle, i.e. the process.
#[derive(Clone, Copy)]
pub struct ThreadLog(*mut ngx_log_t);

// SAFETY: see the type's documentation; the pointer is only used to call the logger.
unsafe impl Send for ThreadLog {}
// SAFETY: as for Send: each line is one write(2), so threads sharing the log (the master's
// parallel first fetches) cannot interleave within a line; nothing is mutated.
unsafe impl Sync for ThreadLog {}

impl ThreadLog {
    /// # Safety
    /// `log` must stay valid for the rest of the process (the cycle's log does).
    pub unsafe fn new(log: *mut ngx_log_t) -> ThreadLog {
        ThreadLog(log)
    }

    pub fn alert(&self, args: fmt::Arguments<'_>) {
        self.write(NGX_LOG_ALERT as _, args);
    }

    pub fn warn(&self, args: fmt::Arguments<'_>) {
        self.write(NGX_LOG_WARN as _, args);
    }

    pub fn notice(&self, args: fmt::Arguments<'_>) {
        self.write(NGX_LOG_NOTICE as _, args);
    }

    /// Runs `f`, which must not unwind into nginx (that would abort the process): a panic
    /// is caught, `what` logged at `level`, and `None` returned.
    pub fn catch_panic<T>(
        &self,
        level: u32,
        what: fmt::Arguments<'_>,
        f: impl FnOnce() -> T,
    ) -> Option<T> {
        match panic::catch_unwind(AssertUnwindSafe(f)) {
            Ok(value) => Some(value),
            Err(_) => {
                self.write(level as ngx_uint_t, what);
                None
            }
        }
    }

    /// One line, prefixed, formatted on the stack (as nginx's own macros do) and only when
    /// the log's level wants it.
    fn write(&self, level: ngx_uint_t, args: fmt::Arguments<'_>) {
        // SAFETY: the pointer is valid for the process lifetime (see `new`).
        let log = unsafe { &*self.0 };
        if level <= log.log_level {
            let mut buf = [const { MaybeUninit::<u8>::uninit() }; ngx::log::LOG_BUFFER_SIZE];
            let message = ngx::log::write_fmt(&mut buf, format_args!("{PREFIX}{args}"));
            // SAFETY: log is valid; the message is a plain byte slice.
            unsafe { ngx::log::log_error(level, self.0, 0, message) };
        }
    }
}
