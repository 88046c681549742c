//! Values kept in a request's pool: moved in as a cleanup entry of their own, dropped when
//! nginx destroys the pool; strings copied in.

use std::ffi::c_void;
use std::{mem, ptr};

use ngx::ffi::{ngx_pnalloc, ngx_pool_cleanup_add, ngx_pool_t, ngx_str_t};

/// A pool cleanup handler.
pub type CleanupFn = unsafe extern "C" fn(*mut c_void);

/// Moves `value` into `pool`, in a cleanup entry whose `handler` drops it with the pool
/// (`drop_value::<T>`, or a handler of the caller's that it can recognise the entry by).
pub fn keep<T>(pool: *mut ngx_pool_t, value: T, handler: CleanupFn) -> Option<*mut T> {
    // SAFETY: the pool is live; nginx returns null or an entry whose `data` points at `size`
    // fresh bytes of the pool, aligned to NGX_ALIGNMENT.
    let cln = unsafe { ngx_pool_cleanup_add(pool, mem::size_of::<T>()) };
    if cln.is_null() {
        return None;
    }
    // SAFETY: the entry just added (its handler still unset).
    let cln = unsafe { &mut *cln };
    let p = cln.data.cast::<T>();
    if p.is_null() || !p.is_aligned() {
        return None;
    }
    // SAFETY: fresh, large enough and aligned (checked).
    unsafe { p.write(value) };
    cln.handler = Some(handler);
    Some(p)
}

/// Drops a value [`keep`] put in a pool, as the pool is destroyed.
///
/// # Safety
/// Only as the cleanup handler of an entry [`keep`] wrote a `T` into (nginx calls it once).
pub unsafe extern "C" fn drop_value<T>(data: *mut c_void) {
    // SAFETY: `data` holds the T `keep` wrote.
    unsafe { ptr::drop_in_place(data.cast::<T>()) };
}

/// `s` copied into `pool`.
pub fn copy_str(pool: *mut ngx_pool_t, s: &str) -> Option<ngx_str_t> {
    // SAFETY: the pool is live.
    let p = unsafe { ngx_pnalloc(pool, s.len().max(1)) }.cast::<u8>();
    if p.is_null() {
        return None;
    }
    // SAFETY: `p` has room for `s` and does not overlap it.
    unsafe { ptr::copy_nonoverlapping(s.as_ptr(), p, s.len()) };
    Some(ngx_str_t { len: s.len(), data: p })
}
