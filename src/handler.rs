//! The rewrite and access phase handlers: they enforce the request's verdict
//! (`verdict.rs`) where nginx's `satisfy` and subrequest rules say it applies, once its
//! identity is settled (`identity.rs`; the request waits for it).

use cf_access_core::Status;
use ngx::core::Status as NgxStatus;
use ngx::ffi::{
    ngx_http_request_t, ngx_int_t, NGX_HTTP_INTERNAL_SERVER_ERROR, NGX_HTTP_SATISFY_ALL,
    NGX_LOG_ERR,
};
use ngx::http::{HttpModuleLocationConf, NgxHttpCoreModule, Request};

use crate::conf::{Mode, Verifier};
use crate::identity::{self, Progress};
use crate::verdict::{mode, verdict, verifier, RequestCtx};

/// What a phase handler returns for a verdict: go on, the status to deny with, or `wait`
/// while the request waits for its identity (`Err`: parked, for another request's). `raw`
/// is nginx's pointer to the request, no reference to which may be in use: waiting writes it.
fn enforce(
    raw: *mut ngx_http_request_t,
    ctx: &RequestCtx,
    wait: NgxStatus,
) -> Result<ngx_int_t, ngx_int_t> {
    if !ctx.judged.get() {
        // SAFETY: see above.
        match unsafe { identity::resolve(raw, ctx) } {
            Progress::Done => {}
            Progress::Wait => return Ok(wait.into()),
            Progress::Park => return Err(wait.into()),
        }
    }
    Ok(decision(ctx))
}

/// A parked request: its handlers set through nginx's own pointer, once no reference to
/// the request is in use (see `identity::park`).
fn parked(raw: *mut ngx_http_request_t, rc: ngx_int_t) -> ngx_int_t {
    // SAFETY: `raw` is the request nginx passed to the calling phase handler, whose
    // references to it are no longer used.
    unsafe { identity::park(raw) };
    rc
}

/// The verdict's answer: go on, or the status to deny with.
fn decision(ctx: &RequestCtx) -> ngx_int_t {
    if ctx.mode == Mode::Report {
        return NgxStatus::NGX_DECLINED.into();
    }
    match ctx.status.get() {
        Status::Ok => NgxStatus::NGX_OK.into(),
        _ => ngx_int_t::from(ctx.deny_with.get() as i16),
    }
}

/// `cf_access` with variables evaluated to something else than `on`, `off` or `report`: a
/// misconfiguration, never an open door. One `[error]` line, and 500.
fn misconfigured(r: &Request, value: &str) -> ngx_int_t {
    crate::log_error!(
        NGX_LOG_ERR,
        r.log(),
        "\"cf_access\" evaluated to \"{}\", not \"on\", \"off\" or \"report\": refused",
        value.escape_default()
    );
    NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t
}

/// The mode `r` is checked in under `verifier`, or what to return instead of checking.
#[inline]
fn check(r: &Request, verifier: &Verifier) -> Result<Mode, ngx_int_t> {
    match mode(r, verifier) {
        Ok(Mode::Off) => Err(NgxStatus::NGX_DECLINED.into()),
        Ok(mode) => Ok(mode),
        Err(value) => Err(misconfigured(r, &value)),
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
pub unsafe extern "C" fn rewrite_handler(raw: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: nginx passes a valid request.
    let r = unsafe { Request::from_ngx_http_request(raw) };
    let Some(verifier) = verifier(r) else {
        return NgxStatus::NGX_DECLINED.into();
    };
    if identity::fetch_of(r).is_some() {
        // The module's own get-identity subrequest, for a request it verified.
        return NgxStatus::NGX_DECLINED.into();
    }
    let satisfy_all = NgxHttpCoreModule::location_conf(r)
        .is_some_and(|clcf| clcf.satisfy == NGX_HTTP_SATISFY_ALL as ngx::ffi::ngx_uint_t);
    if !satisfy_all && r.is_main() {
        return NgxStatus::NGX_DECLINED.into();
    }
    let mode = match check(r, verifier) {
        Ok(mode) => mode,
        Err(rc) => return rc,
    };
    let Some(ctx) = verdict(r, verifier, mode) else {
        return NgxStatus::NGX_ERROR.into();
    };
    // The rewrite phase's checker ends the phases on NGX_DONE without finalizing.
    let rc = match enforce(raw, ctx, NgxStatus::NGX_DONE) {
        Ok(rc) => rc,
        Err(rc) => return parked(raw, rc),
    };
    if rc == ngx_int_t::from(NgxStatus::NGX_OK) {
        // Allowed: the access phase (for a main request) says so again.
        return NgxStatus::NGX_DECLINED.into();
    }
    rc
}

/// The access phase (main requests only; nginx skips it for subrequests).
///
/// # Safety
/// Called by nginx in the access phase with a valid request.
pub unsafe extern "C" fn access_handler(raw: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: nginx passes a valid request.
    let r = unsafe { Request::from_ngx_http_request(raw) };
    let Some(verifier) = verifier(r) else {
        return NgxStatus::NGX_DECLINED.into();
    };
    let mode = match check(r, verifier) {
        Ok(mode) => mode,
        Err(rc) => return rc,
    };
    match verdict(r, verifier, mode) {
        Some(ctx) => match enforce(raw, ctx, NgxStatus::NGX_AGAIN) {
            Ok(rc) => rc,
            Err(rc) => parked(raw, rc),
        },
        None => NgxStatus::NGX_ERROR.into(),
    }
}
