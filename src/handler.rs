//! The access-phase handler: find the token, verify it, record the verdict.

use cf_access_core::extract;
use cf_access_core::{Identity, Status, VerifyError};
use ngx::core;
use ngx::ffi::{ngx_cached_time, ngx_http_request_t, ngx_int_t, NGX_HTTP_FORBIDDEN, NGX_LOG_INFO};
use ngx::http::{HttpModuleLocationConf, Request};
use ngx::ngx_log_error;

use crate::conf::Verifier;
use crate::ctx::RequestCtx;
use crate::Module;

/// The current time from nginx's cached clock (updated every event loop iteration).
#[allow(clippy::unnecessary_cast)] // time_t is not i64 on every platform
fn now() -> i64 {
    // SAFETY: ngx_cached_time always points at a valid slot once nginx has started.
    unsafe { (*ngx_cached_time).sec as i64 }
}

fn check(r: &Request, verifier: &Verifier) -> Result<Identity, VerifyError> {
    let headers = r
        .headers_in_iterator()
        .map(|(name, value)| (name.as_bytes(), value.as_bytes()));
    let token = extract::find_token(headers)
        .map_err(VerifyError::Malformed)?
        .ok_or(VerifyError::NoToken)?;
    let token =
        std::str::from_utf8(token).map_err(|_| VerifyError::Malformed("token is not ascii"))?;
    let keys = verifier.store.current();
    cf_access_core::verify(token, keys.as_deref(), &verifier.policy, now())
}

/// # Safety
/// Called by nginx in the access phase with a valid request.
pub unsafe extern "C" fn access_handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: nginx passes a valid request.
    let r = unsafe { Request::from_ngx_http_request(r) };
    let Some(verifier) = Module::location_conf(r).and_then(|c| c.verifier.as_ref()) else {
        return core::Status::NGX_DECLINED.into();
    };
    let result = check(r, verifier);
    let (status, identity) = match result {
        Ok(identity) => (Status::Ok, identity),
        Err(ref e) => {
            ngx_log_error!(
                NGX_LOG_INFO,
                r.log(),
                "cf_access: access denied ({}): {}",
                e.status().as_str(),
                e
            );
            (e.status(), Identity::default())
        }
    };
    if RequestCtx::set(r, status, identity).is_none() {
        return core::Status::NGX_ERROR.into();
    }
    match status {
        Status::Ok => core::Status::NGX_OK.into(),
        _ => NGX_HTTP_FORBIDDEN as ngx_int_t,
    }
}
