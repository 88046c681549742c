//! Spawning threads that never take signals meant for nginx.

use std::mem::MaybeUninit;
use std::thread;

use nginx_sys::{pthread_sigmask, sigfillset, sigset_t, SIG_SETMASK};

/// Spawns `f` on a new thread with every signal blocked. The mask is set on the calling
/// thread before the spawn (a new thread inherits it) and restored right after, so there
/// is no window in which the new thread could take a signal.
pub fn spawn_with_signals_blocked<F>(f: F) -> std::io::Result<()>
where
    F: FnOnce() + Send + 'static,
{
    let mut all = MaybeUninit::<sigset_t>::uninit();
    let mut old = MaybeUninit::<sigset_t>::uninit();
    // SAFETY: sigfillset initializes the set it is given; pthread_sigmask reads `all` (now
    // initialized) and writes the previous mask into `old`.
    let rc = unsafe {
        sigfillset(all.as_mut_ptr());
        pthread_sigmask(SIG_SETMASK as _, all.as_ptr(), old.as_mut_ptr())
    };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(rc));
    }
    let spawned = thread::Builder::new().name("cf_access_keys".into()).spawn(f).map(drop);
    // SAFETY: `old` was initialized by the successful pthread_sigmask call above.
    unsafe {
        pthread_sigmask(SIG_SETMASK as _, old.as_ptr(), std::ptr::null_mut());
    }
    spawned
}
