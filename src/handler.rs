//! The request path: the verdict for a request under its location's settings, decided once
//! by the core (`cf_access_core::decide`) in the first phase that needs it; the rewrite and
//! access phase handlers that enforce it.

use std::cell::RefCell;
use std::rc::Rc;

use cf_access_core::decide::{self, Check};
use cf_access_core::{Status, TokenCache};
use ngx::core;
use ngx::ffi::{
    ngx_cached_time, ngx_http_complex_value, ngx_http_request_t, ngx_int_t, ngx_str_t,
    NGX_HTTP_SATISFY_ALL, NGX_LOG_INFO, NGX_OK,
};
use ngx::http::{HttpModuleLocationConf, NgxHttpCoreModule, Request};
use ngx::{ngx_log_debug_http, ngx_log_error};

use crate::conf::{Mode, Verifier};
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

/// The verifier of `r`'s current location; `None` where `cf_access` is off.
pub fn verifier(r: &Request) -> Option<&Rc<Verifier>> {
    Module::location_conf(r)?.verifier.as_ref()
}

/// `r`'s verdict under `verifier`: the one already reached with the same settings, or a new
/// one (decided, logged, stored on `r`). `None` only when the pool is exhausted.
pub fn verdict<'r>(r: &'r Request, verifier: &Rc<Verifier>) -> Option<&'r RequestCtx> {
    if let Some(ctx) = RequestCtx::own(r).filter(|c| c.verifier.same_check(verifier)) {
        return Some(ctx);
    }
    let store = &verifier.store;
    let snapshot = store.current();
    // Another process stored a newer set: have this worker's refresher adopt it now rather
    // than at its next look (this request still uses the set in hand).
    if let (Some(zone), Some(slot)) = (crate::zone::current(), store.slot()) {
        let published = zone.published(slot);
        let held = snapshot.as_deref().map_or(0, |s| s.seq);
        if published != 0 && published != held && store.want_refresh() {
            crate::refresher::wake();
        }
    }
    let check =
        Check { policy: &verifier.policy, keys: snapshot.as_deref().map(|s| &s.set), now: now() };
    let headers = r.headers_in_iterator().map(|(name, value)| (name.as_bytes(), value.as_bytes()));
    let (decision, (hits, misses)) = CACHE.with_borrow_mut(|cache| {
        let decision = decide::decide(headers, &check, cache);
        (decision, cache.take_lookups())
    });
    crate::metrics::count_lookups((hits, misses));
    ngx_log_debug_http!(
        r,
        "cf_access: {} for \"{}\" (token cache: {} hit, {} miss)",
        decision.status.as_str(),
        store.url,
        hits,
        misses
    );
    if decision.wants_refresh && store.want_refresh() {
        // Perhaps the keys were rotated: have the refresher look (rate limited there).
        crate::refresher::wake();
    }
    if let Some(v) = &decision.verified {
        ngx_log_debug_http!(r, "cf_access: token verified (kid {})", v.kid);
    }
    let ctx = RequestCtx::set(
        r,
        RequestCtx {
            status: decision.status.into(),
            verified: decision.verified,
            verifier: verifier.clone(),
            deny_with: 403.into(),
        },
    )?;
    match decision.error {
        Some(e) => log_denial(r, verifier.mode, e.status(), &e.to_string()),
        None => check_requires(r, ctx, verifier),
    }
    Some(ctx)
}

/// The `cf_access_require` rules, once the token verified (their values may read the
/// `$cf_access_*` variables, which see this verdict).
fn check_requires(r: &Request, ctx: &RequestCtx, verifier: &Verifier) {
    let Some(requires) = &verifier.requires else {
        return;
    };
    for require in requires.iter() {
        let mut values = Vec::with_capacity(require.values.len());
        for &cv in &require.values {
            let mut value = ngx_str_t::default();
            // SAFETY: `cv` was compiled at configuration time for this cycle; `r` is live.
            let rc =
                unsafe { ngx_http_complex_value(r.as_ref() as *const _ as *mut _, cv, &mut value) };
            if rc != NGX_OK as ngx_int_t {
                value = ngx_str_t::default();
            }
            values.push(value);
        }
        if decide::first_unmet(values.iter().map(|v| v.as_bytes())).is_some() {
            ctx.status.set(Status::NotAllowed);
            ctx.deny_with.set(require.error);
            let why = format!("\"cf_access_require\" in {} is not met", require.at);
            log_denial(r, verifier.mode, Status::NotAllowed, &why);
            return;
        }
    }
}

/// The one line a refused request gets (`info`).
fn log_denial(r: &Request, mode: Mode, status: Status, why: &str) {
    let would = if mode == Mode::Report { "report: " } else { "" };
    let verb = if mode == Mode::Report { "would be denied" } else { "denied" };
    ngx_log_error!(
        NGX_LOG_INFO,
        r.log(),
        "cf_access: {}access {} ({}): {}",
        would,
        verb,
        status.as_str(),
        why
    );
}

/// What a phase handler returns for a verdict: go on, or the status to deny with.
fn enforce(ctx: &RequestCtx) -> ngx_int_t {
    if ctx.verifier.mode == Mode::Report {
        return core::Status::NGX_DECLINED.into();
    }
    match ctx.status.get() {
        Status::Ok => core::Status::NGX_OK.into(),
        _ => ngx_int_t::from(ctx.deny_with.get() as i16),
    }
}

/// The rewrite phase, before the rewrite module's `return`/`rewrite`/`if` run: where
/// `satisfy all` applies (nothing else could let the request in) and for subrequests (nginx
/// runs no access phase for them), the verdict is enforced here, so a location answered by
/// `return`, and a protected location reached by `auth_request`, SSI or `mirror`, is never
/// served without a token.
///
/// # Safety
/// Called by nginx in the rewrite phase with a valid request.
pub unsafe extern "C" fn rewrite_handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: nginx passes a valid request.
    let r = unsafe { Request::from_ngx_http_request(r) };
    let Some(verifier) = verifier(r) else {
        return core::Status::NGX_DECLINED.into();
    };
    let satisfy_all = NgxHttpCoreModule::location_conf(r)
        .is_some_and(|clcf| clcf.satisfy == NGX_HTTP_SATISFY_ALL as ngx::ffi::ngx_uint_t);
    if !satisfy_all && r.is_main() {
        return core::Status::NGX_DECLINED.into();
    }
    let Some(ctx) = verdict(r, verifier) else {
        return core::Status::NGX_ERROR.into();
    };
    let rc = enforce(ctx);
    if rc == ngx_int_t::from(core::Status::NGX_OK) {
        // Allowed: the access phase (for a main request) says so again.
        return core::Status::NGX_DECLINED.into();
    }
    rc
}

/// The access phase (main requests only; nginx skips it for subrequests).
///
/// # Safety
/// Called by nginx in the access phase with a valid request.
pub unsafe extern "C" fn access_handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: nginx passes a valid request.
    let r = unsafe { Request::from_ngx_http_request(r) };
    let Some(verifier) = verifier(r) else {
        return core::Status::NGX_DECLINED.into();
    };
    match verdict(r, verifier) {
        Some(ctx) => enforce(ctx),
        None => core::Status::NGX_ERROR.into(),
    }
}
