//! `$cf_access_email`, `$cf_access_sub`, `$cf_access_status`.
//!
//! Values come from the main request's verdict, so subrequests (`auth_request`, `mirror`)
//! see what the main request saw. Unverified requests get empty identity values: nothing
//! a client sent is ever reflected.

use ngx::core::Status as NgxStatus;
use ngx::ffi::{
    ngx_conf_t, ngx_http_add_variable, ngx_http_request_t, ngx_http_variable_t, ngx_int_t,
    ngx_str_t, ngx_variable_value_t, NGX_HTTP_VAR_NOCACHEABLE,
};
use ngx::http::Request;

use crate::ctx::RequestCtx;

type Getter = fn(&RequestCtx) -> &str;

struct Var {
    name: &'static str,
    get: Getter,
}

static VARIABLES: [Var; 3] = [
    Var {
        name: "cf_access_email",
        get: |c| &c.identity.email,
    },
    Var {
        name: "cf_access_sub",
        get: |c| &c.identity.sub,
    },
    Var {
        name: "cf_access_status",
        get: |c| c.status.as_str(),
    },
];

/// Registers the variables (preconfiguration).
pub fn add(cf: *mut ngx_conf_t) -> NgxStatus {
    for (index, var) in VARIABLES.iter().enumerate() {
        let mut name = ngx_str_t {
            len: var.name.len(),
            data: var.name.as_ptr() as *mut u8,
        };
        // SAFETY: cf is nginx's; the name is a static string nginx copies.
        let v: *mut ngx_http_variable_t =
            unsafe { ngx_http_add_variable(cf, &mut name, NGX_HTTP_VAR_NOCACHEABLE as _) };
        if v.is_null() {
            return NgxStatus::NGX_ERROR;
        }
        // SAFETY: ngx_http_add_variable returned a valid variable.
        unsafe {
            (*v).get_handler = Some(get_variable);
            (*v).data = index;
        }
    }
    NgxStatus::NGX_OK
}

unsafe extern "C" fn get_variable(
    r: *mut ngx_http_request_t,
    v: *mut ngx_variable_value_t,
    data: usize,
) -> ngx_int_t {
    // SAFETY: nginx passes a valid request and value slot.
    let (r, v) = unsafe { (Request::from_ngx_http_request(r), &mut *v) };
    let value = match (RequestCtx::get(r), VARIABLES.get(data)) {
        (Some(ctx), Some(var)) => (var.get)(ctx),
        _ => "",
    };
    // The value lives in the request's context (or is static), which outlives the variable.
    v.data = value.as_ptr() as *mut u8;
    v.set_len(value.len() as u32);
    v.set_valid(1);
    v.set_no_cacheable(0);
    v.set_not_found(0);
    NgxStatus::NGX_OK.into()
}
