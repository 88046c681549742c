//! Logging from the refresher thread into the cycle's error log.

use ngx::ffi::{ngx_log_t, NGX_LOG_ALERT, NGX_LOG_NOTICE, NGX_LOG_WARN};

/// The cycle's error log, for use from a thread of ours.
///
/// nginx's logger writes each line with one `write(2)` from a stack buffer, which is safe
/// from another thread; the log lives as long as the worker's cycle, i.e. the process.
pub struct ThreadLog(*mut ngx_log_t);

// SAFETY: see the type's documentation; the pointer is only used to call the logger.
unsafe impl Send for ThreadLog {}

impl ThreadLog {
    /// # Safety
    /// `log` must stay valid for the rest of the process (the cycle's log does).
    pub unsafe fn new(log: *mut ngx_log_t) -> ThreadLog {
        ThreadLog(log)
    }

    pub fn alert(&self, msg: &str) {
        self.write(NGX_LOG_ALERT as _, msg);
    }

    pub fn warn(&self, msg: &str) {
        self.write(NGX_LOG_WARN as _, msg);
    }

    pub fn notice(&self, msg: &str) {
        self.write(NGX_LOG_NOTICE as _, msg);
    }

    fn write(&self, level: ngx::ffi::ngx_uint_t, msg: &str) {
        // SAFETY: the pointer is valid for the process lifetime (see `new`).
        let log = unsafe { &*self.0 };
        if level <= log.log_level {
            // SAFETY: log is valid; the message is a plain byte slice.
            unsafe { ngx::log::log_error(level, self.0, 0, msg.as_bytes()) };
        }
    }
}
