//! Configuration mistakes nginx itself would not mention: a `cf_access on` location with
//! `satisfy any` whose rewrite directives (`return`, `rewrite`, `if`) answer before any
//! access check. With `satisfy all` the module enforces the token in the rewrite phase, so
//! only `satisfy any` leaves that gap; `nginx -t` warns about each such location.

use std::ffi::CStr;

use ngx::ffi::{
    ngx_array_t, ngx_conf_t, ngx_flag_t, ngx_http_conf_ctx_t, ngx_uint_t, NGX_HTTP_SATISFY_ANY,
    NGX_LOG_WARN,
};
use ngx::http::{HttpModuleLocationConf, NgxHttpCoreModule};

use crate::conf::LocConf;

/// `ngx_http_rewrite_loc_conf_t` (private to ngx_http_rewrite_module.c, unchanged since
/// 2009): only `codes` is read, non-NULL when the location has rewrite-module directives.
#[repr(C)]
struct RewriteLocConf {
    codes: *mut ngx_array_t,
    stack_size: ngx_uint_t,
    log: ngx_flag_t,
    uninitialized_variable_warn: ngx_flag_t,
}

/// The rewrite module's `ctx_index`, found by name (it may be compiled out).
fn rewrite_index(cf: &ngx_conf_t) -> Option<usize> {
    // SAFETY: cf->cycle is the cycle being configured; its modules array holds modules_n
    // valid module pointers with NUL-terminated names.
    unsafe {
        let cycle = &*cf.cycle;
        (0..cycle.modules_n).find_map(|i| {
            let m = &**cycle.modules.add(i);
            (!m.name.is_null() && CStr::from_ptr(m.name) == c"ngx_http_rewrite_module")
                .then_some(m.ctx_index)
        })
    }
}

/// During the merge of `conf` (cf->ctx holds the location's configurations): warns when
/// the location is `cf_access on`, `satisfy any`, and has rewrite directives.
pub fn warn_unenforced_rewrites(cf: *mut ngx_conf_t, conf: &LocConf) {
    if conf.verifier.as_ref().is_none_or(|v| !v.mode.may_enforce()) {
        return;
    }
    // SAFETY: nginx passes the configuration being merged.
    let cf = unsafe { &*cf };
    let Some(clcf) = NgxHttpCoreModule::location_conf(cf) else {
        return;
    };
    // Locations only: the server level's rewrite directives run before any location is
    // chosen (the README says so).
    if clcf.satisfy != NGX_HTTP_SATISFY_ANY as ngx_uint_t || clcf.name.len == 0 {
        return;
    }
    let Some(index) = rewrite_index(cf) else {
        return;
    };
    // SAFETY: during a merge, cf->ctx is the http configuration context whose loc_conf
    // array is the location's being merged; the rewrite module's entry is its loc conf.
    let has_codes = unsafe {
        let ctx = &*cf.ctx.cast::<ngx_http_conf_ctx_t>();
        let rlcf = (*ctx.loc_conf.add(index)).cast::<RewriteLocConf>();
        !rlcf.is_null() && !(*rlcf).codes.is_null()
    };
    if has_codes {
        let at = conf.mode_at.as_deref().unwrap_or("the configuration");
        crate::log_error!(
            NGX_LOG_WARN,
            cf.log,
            "location \"{}\" (\"cf_access on\" in {}) has \"satisfy any\" and \
             rewrite directives: \"return\" and \"rewrite\" there answer before any access \
             check, without a token",
            clcf.name,
            at
        );
    }
}
