//! `$cf_access_*` variables.
//!
//! Where `cf_access` is `on` or `report`, reading one in any phase (`if`, `set`, `map`,
//! `limit_req` keys, headers, logs) gives the verified value: the first read decides the
//! request's verdict (once; the access phase reuses it). Elsewhere they show the verdict the
//! request (or, for a subrequest, its main request) already has. Unverified requests get
//! empty identity values: nothing a client sent is ever reflected. Claim values have control
//! characters replaced, so they cannot split a header when passed on.
//!
//! The get-identity variables (`$cf_access_groups`, `$cf_access_identity_<field>`, ...) have
//! their values once the identity is settled, in the access phase; `$cf_access_token` has
//! one only in the module's own get-identity subrequest.

use std::borrow::Cow;

use cf_access_core::claim;
use cf_access_core::identity::Identity;
use ngx::core::Status as NgxStatus;
use ngx::ffi::{
    ngx_conf_t, ngx_http_add_variable, ngx_http_request_t, ngx_http_variable_t, ngx_int_t,
    ngx_str_t, ngx_variable_value_t, NGX_HTTP_VAR_NOCACHEABLE, NGX_HTTP_VAR_PREFIX,
};
use ngx::http::Request;

use crate::verdict::{self, RequestCtx};
use crate::{identity, pool};

/// How a variable reads its value from a request's verdict; `name` is the full variable
/// name (for the prefix variables).
type Getter = for<'a> fn(&'a RequestCtx, &str) -> Option<Cow<'a, str>>;

struct Var {
    name: &'static str,
    prefix: bool,
    get: Getter,
}

const CLAIM_PREFIX: &str = "cf_access_claim_";
const CUSTOM_PREFIX: &str = "cf_access_custom_";
const IDENTITY_PREFIX: &str = "cf_access_identity_";

/// A value of the identity, once had.
fn of_identity<'a>(c: &RequestCtx, value: impl Fn(&Identity) -> String) -> Option<Cow<'a, str>> {
    c.identity.borrow().identity().map(|identity| Cow::Owned(value(identity)))
}

static VARIABLES: [Var; 12] = [
    Var {
        name: "cf_access_email",
        prefix: false,
        get: |c, _| Some(c.verified.as_ref()?.identity.email.as_str().into()),
    },
    Var {
        name: "cf_access_sub",
        prefix: false,
        get: |c, _| Some(c.verified.as_ref()?.identity.sub.as_str().into()),
    },
    Var {
        name: "cf_access_status",
        prefix: false,
        get: |c, _| Some(c.status.get().as_str().into()),
    },
    Var {
        name: "cf_access_common_name",
        prefix: false,
        get: |c, _| Some(c.verified.as_ref()?.identity.common_name.as_str().into()),
    },
    Var {
        name: "cf_access_identity_nonce",
        prefix: false,
        get: |c, _| Some(c.verified.as_ref()?.identity.identity_nonce.as_str().into()),
    },
    Var {
        name: "cf_access_country",
        prefix: false,
        get: |c, _| Some(c.verified.as_ref()?.identity.country.as_str().into()),
    },
    Var {
        name: CLAIM_PREFIX,
        prefix: true,
        get: |c, name| {
            let claim = name.strip_prefix(CLAIM_PREFIX)?;
            claim::lookup(c.verified.as_ref()?.claims_map(), false, claim).map(Cow::Owned)
        },
    },
    Var {
        name: CUSTOM_PREFIX,
        prefix: true,
        get: |c, name| {
            let claim = name.strip_prefix(CUSTOM_PREFIX)?;
            claim::lookup(c.verified.as_ref()?.claims_map(), true, claim).map(Cow::Owned)
        },
    },
    Var {
        name: "cf_access_groups",
        prefix: false,
        get: |c, _| of_identity(c, |i| i.group_names().to_string()),
    },
    Var {
        name: "cf_access_group_ids",
        prefix: false,
        get: |c, _| of_identity(c, |i| i.group_ids().to_string()),
    },
    Var {
        name: "cf_access_group_emails",
        prefix: false,
        get: |c, _| of_identity(c, |i| i.group_emails().to_string()),
    },
    Var {
        name: IDENTITY_PREFIX,
        prefix: true,
        get: |c, name| {
            let field = name.strip_prefix(IDENTITY_PREFIX)?;
            c.identity.borrow().identity()?.field(field).map(Cow::Owned)
        },
    },
];

const TOKEN: &str = "cf_access_token";

/// Registers the variables (preconfiguration).
pub fn add(cf: *mut ngx_conf_t) -> NgxStatus {
    for (index, var) in VARIABLES.iter().enumerate() {
        let mut name = ngx_str_t { len: var.name.len(), data: var.name.as_ptr() as *mut u8 };
        let mut flags = NGX_HTTP_VAR_NOCACHEABLE;
        if var.prefix {
            flags |= NGX_HTTP_VAR_PREFIX;
        }
        // SAFETY: cf is nginx's; the name is a static string nginx copies.
        let v: *mut ngx_http_variable_t =
            unsafe { ngx_http_add_variable(cf, &mut name, flags as _) };
        if v.is_null() {
            return NgxStatus::NGX_ERROR;
        }
        // SAFETY: ngx_http_add_variable returned a valid variable. For prefix variables
        // nginx replaces `data` with a pointer to the full variable name, so the index is
        // only used for the others.
        unsafe {
            (*v).get_handler = Some(if var.prefix { get_prefixed } else { get_variable });
            (*v).data = index;
        }
    }
    let mut name = ngx_str_t { len: TOKEN.len(), data: TOKEN.as_ptr() as *mut u8 };
    // SAFETY: as above.
    let v = unsafe { ngx_http_add_variable(cf, &mut name, NGX_HTTP_VAR_NOCACHEABLE as _) };
    if v.is_null() {
        return NgxStatus::NGX_ERROR;
    }
    // SAFETY: ngx_http_add_variable returned a valid variable.
    unsafe { (*v).get_handler = Some(get_token) };
    NgxStatus::NGX_OK
}

/// `$cf_access_token`: the verified token, in the module's own get-identity subrequest only
/// (for its `Cookie: CF_Authorization=...`); empty everywhere else.
unsafe extern "C" fn get_token(
    r: *mut ngx_http_request_t,
    v: *mut ngx_variable_value_t,
    _data: usize,
) -> ngx_int_t {
    // SAFETY: nginx passes a valid request and value slot.
    let (r, v) = unsafe { (Request::from_ngx_http_request(r), &mut *v) };
    let token = identity::fetch_of(r).and_then(|f| f.token());
    set_value(r, v, token.map(Cow::Borrowed))
}

fn set_value(r: &Request, v: &mut ngx_variable_value_t, value: Option<Cow<'_, str>>) -> ngx_int_t {
    let value = value.unwrap_or(Cow::Borrowed(""));
    let data = match &value {
        // Borrowed from the request's context (or static): outlives the variable.
        Cow::Borrowed(s) => s.as_ptr().cast_mut(),
        // Computed now: copied into the request's pool.
        Cow::Owned(s) => match pool::copy_str(r.as_ref().pool, s) {
            Some(copy) => copy.data,
            None => return NgxStatus::NGX_ERROR.into(),
        },
    };
    v.data = data;
    v.set_len(value.len() as u32);
    v.set_valid(1);
    v.set_no_cacheable(0);
    v.set_not_found(0);
    NgxStatus::NGX_OK.into()
}

unsafe extern "C" fn get_variable(
    r: *mut ngx_http_request_t,
    v: *mut ngx_variable_value_t,
    data: usize,
) -> ngx_int_t {
    // SAFETY: nginx passes a valid request and value slot.
    let (r, v) = unsafe { (Request::from_ngx_http_request(r), &mut *v) };
    let value = match (verdict(r), VARIABLES.get(data)) {
        (Some(ctx), Some(var)) => (var.get)(ctx, var.name),
        _ => None,
    };
    set_value(r, v, value)
}

/// The verdict a variable shows: decided now where `cf_access` applies, else the one the
/// request already has.
fn verdict(r: &Request) -> Option<&RequestCtx> {
    match verdict::applies(r) {
        verdict::Applies::Yes(verifier, mode) => verdict::verdict(r, verifier, mode),
        verdict::Applies::No => RequestCtx::get(r),
        // The handlers refuse the request (and log it once); the variables stay empty.
        verdict::Applies::Invalid => None,
    }
}

unsafe extern "C" fn get_prefixed(
    r: *mut ngx_http_request_t,
    v: *mut ngx_variable_value_t,
    data: usize,
) -> ngx_int_t {
    // SAFETY: nginx passes a valid request and value slot; for prefix variables `data`
    // points at the variable's full name.
    let (r, v, name) =
        unsafe { (Request::from_ngx_http_request(r), &mut *v, &*(data as *const ngx_str_t)) };
    let Ok(name) = name.to_str() else {
        return set_value(r, v, None);
    };
    let var = VARIABLES.iter().find(|var| var.prefix && name.starts_with(var.name));
    let value = match (verdict(r), var) {
        (Some(ctx), Some(var)) => (var.get)(ctx, name),
        _ => None,
    };
    set_value(r, v, value)
}
