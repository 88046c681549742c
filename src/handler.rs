//! The access-phase handler: find the token, verify it, record the verdict.

use std::cell::RefCell;
use std::sync::Arc;

use cf_access_core::{extract, Status, TokenCache, Verified, VerifyError};
use ngx::core;
use ngx::ffi::{ngx_cached_time, ngx_http_request_t, ngx_int_t, NGX_HTTP_FORBIDDEN, NGX_LOG_INFO};
use ngx::http::{HttpModuleLocationConf, Request};
use ngx::ngx_log_error;

use crate::conf::Verifier;
use crate::ctx::RequestCtx;
use crate::Module;

thread_local! {
    /// This worker's verified-token cache (the event loop's thread only).
    static CACHE: RefCell<TokenCache> = RefCell::new(TokenCache::new(0));
}

/// Sizes this worker's cache (`cf_access_cache_size`); called from `init_process`.
pub fn init_cache(capacity: usize) {
    CACHE.with_borrow_mut(|c| *c = TokenCache::new(capacity));
}

/// The current time from nginx's cached clock (updated every event loop iteration).
#[allow(clippy::unnecessary_cast)] // time_t is not i64 on every platform
fn now() -> i64 {
    // SAFETY: ngx_cached_time always points at a valid slot once nginx has started.
    unsafe { (*ngx_cached_time).sec as i64 }
}

fn check(r: &Request, verifier: &Verifier) -> Result<Arc<Verified>, VerifyError> {
    let headers = r
        .headers_in_iterator()
        .map(|(name, value)| (name.as_bytes(), value.as_bytes()));
    let token = extract::find_token(headers)
        .map_err(VerifyError::Malformed)?
        .ok_or(VerifyError::NoToken)?;
    let token =
        std::str::from_utf8(token).map_err(|_| VerifyError::Malformed("token is not ascii"))?;
    let store = &verifier.store;
    let snapshot = store.current();
    let keys = snapshot.as_deref().map(|s| &s.set);
    let (result, lookups) = CACHE.with_borrow_mut(|cache| {
        let result =
            cf_access_core::verify_cached(token, keys, &verifier.policy, now(), cache, &store.url);
        (result, cache.take_lookups())
    });
    crate::metrics::count_lookups(lookups);
    if matches!(result, Err(VerifyError::UnknownKid)) {
        // Perhaps the keys were rotated: have the refresher look (rate limited).
        if store.want_refresh() {
            crate::refresher::wake();
        }
    }
    result
}

/// # Safety
/// Called by nginx in the access phase with a valid request.
pub unsafe extern "C" fn access_handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: nginx passes a valid request.
    let r = unsafe { Request::from_ngx_http_request(r) };
    let Some(verifier) = Module::location_conf(r).and_then(|c| c.verifier.as_ref()) else {
        return core::Status::NGX_DECLINED.into();
    };
    let (status, verified) = match check(r, verifier) {
        Ok(verified) => (Status::Ok, Some(verified)),
        Err(e) => {
            ngx_log_error!(
                NGX_LOG_INFO,
                r.log(),
                "cf_access: access denied ({}): {}",
                e.status().as_str(),
                e
            );
            (e.status(), None)
        }
    };
    if RequestCtx::set(r, status, verified).is_none() {
        return core::Status::NGX_ERROR.into();
    }
    match status {
        Status::Ok => core::Status::NGX_OK.into(),
        _ => NGX_HTTP_FORBIDDEN as ngx_int_t,
    }
}
