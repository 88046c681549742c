//! ngx_http_cf_access_module: verifies Cloudflare Access JWTs at the origin.
//!
//! This file holds the module statics and nginx glue only:
//! - `conf.rs`: directives, set functions, merge;
//! - `handler.rs`: the access-phase handler; `ctx.rs`: the per-request verdict;
//! - `variables.rs`: `$cf_access_*`; `metrics.rs`: `cf_access_metrics` and the counters;
//! - `zone.rs`: the shared memory zone every process of the instance agrees through;
//! - `keys/`: this process's key sets, one bounded fetch, one refresh round, the key cache
//!   file; `refresher.rs`: the per-worker thread running refresh rounds;
//! - `lifecycle.rs`: the master's round at start and reload, starting and stopping the
//!   refresher;
//! - `cf-access-core` (core/): token, JWKS and claims logic, free of nginx.

use std::ffi::{c_char, c_void};
use std::ptr;

use ngx::core::Status;
use ngx::ffi::{
    ngx_array_push, ngx_command_t, ngx_conf_t, ngx_http_handler_pt, ngx_http_module_t,
    ngx_http_phases_NGX_HTTP_ACCESS_PHASE, ngx_http_phases_NGX_HTTP_LOG_PHASE, ngx_http_request_t,
    ngx_int_t, ngx_module_t, ngx_str_t, ngx_uint_t, NGX_CONF_1MORE, NGX_CONF_FLAG, NGX_CONF_NOARGS,
    NGX_CONF_TAKE1, NGX_HTTP_LOC_CONF, NGX_HTTP_LOC_CONF_OFFSET, NGX_HTTP_MAIN_CONF,
    NGX_HTTP_MAIN_CONF_OFFSET, NGX_HTTP_MODULE, NGX_HTTP_SRV_CONF, NGX_LOG_EMERG,
};
use ngx::http::{HttpModule, HttpModuleLocationConf, HttpModuleMainConf, NgxHttpCoreModule};
use ngx::{ngx_conf_log_error, ngx_string};

use cf_access_core::zone::MAX_URLS;

mod conf;
mod ctx;
mod handler;
mod keys;
mod lifecycle;
mod log;
mod metrics;
mod refresher;
mod signals;
mod variables;
mod zone;

use conf::{LocConf, MainConf};

pub(crate) struct Module;

impl HttpModule for Module {
    fn module() -> &'static ngx_module_t {
        // SAFETY: the module static is initialized at load time and never moved.
        unsafe { &*ptr::addr_of!(ngx_http_cf_access_module) }
    }

    unsafe extern "C" fn preconfiguration(cf: *mut ngx_conf_t) -> ngx_int_t {
        variables::add(cf).into()
    }

    unsafe extern "C" fn postconfiguration(cf: *mut ngx_conf_t) -> ngx_int_t {
        // SAFETY: nginx passes a valid cf within the http block.
        let cf = unsafe { &mut *cf };
        let urls = Module::main_conf(cf).map_or(0, |m| m.stores.len());
        if urls > MAX_URLS {
            ngx_conf_log_error!(
                NGX_LOG_EMERG,
                cf,
                "\"cf_access\" uses {} certs urls, at most {} are supported",
                urls,
                MAX_URLS
            );
            return Status::NGX_ERROR.into();
        }
        if urls > 0 && zone::declare(cf) != Status::NGX_OK {
            return Status::NGX_ERROR.into();
        }
        let Some(cmcf) = NgxHttpCoreModule::main_conf_mut(cf) else {
            return Status::NGX_ERROR.into();
        };
        for (phase, handler) in [
            (
                ngx_http_phases_NGX_HTTP_ACCESS_PHASE,
                handler::access_handler as HandlerFn,
            ),
            (ngx_http_phases_NGX_HTTP_LOG_PHASE, metrics::log_handler),
        ] {
            let phase = &mut cmcf.phases[phase as usize];
            // SAFETY: the phase handler array is a valid ngx_array_t of handler pointers.
            let h = unsafe { ngx_array_push(&mut phase.handlers) } as *mut ngx_http_handler_pt;
            if h.is_null() {
                return Status::NGX_ERROR.into();
            }
            // SAFETY: h points at the new element just pushed.
            unsafe { *h = Some(handler) };
        }
        Status::NGX_OK.into()
    }
}

// SAFETY: MainConf is the type create_main_conf allocates for this module.
unsafe impl HttpModuleMainConf for Module {
    type MainConf = MainConf;
}

// SAFETY: LocConf is the type create_loc_conf allocates for this module.
unsafe impl HttpModuleLocationConf for Module {
    type LocationConf = LocConf;
}

type HandlerFn = unsafe extern "C" fn(*mut ngx_http_request_t) -> ngx_int_t;

const ANY_LEVEL: u32 = NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF;

type SetFn = extern "C" fn(*mut ngx_conf_t, *mut ngx_command_t, *mut c_void) -> *mut c_char;

/// A directive of this module: location-level ones are set on `LocConf`, http-only ones on
/// `MainConf`.
const fn command(name: ngx_str_t, flags: u32, set: SetFn) -> ngx_command_t {
    ngx_command_t {
        name,
        type_: flags as ngx_uint_t,
        set: Some(set),
        conf: if flags & NGX_HTTP_LOC_CONF != 0 {
            NGX_HTTP_LOC_CONF_OFFSET
        } else {
            NGX_HTTP_MAIN_CONF_OFFSET
        },
        offset: 0,
        post: ptr::null_mut(),
    }
}

static mut COMMANDS: [ngx_command_t; 12] = [
    command(
        ngx_string!("cf_access"),
        ANY_LEVEL | NGX_CONF_FLAG,
        conf::set_enabled,
    ),
    command(
        ngx_string!("cf_access_team_domain"),
        ANY_LEVEL | NGX_CONF_TAKE1,
        conf::set_team_domain,
    ),
    command(
        ngx_string!("cf_access_aud"),
        ANY_LEVEL | NGX_CONF_1MORE,
        conf::set_audiences,
    ),
    command(
        ngx_string!("cf_access_certs_url"),
        ANY_LEVEL | NGX_CONF_TAKE1,
        conf::set_certs_url,
    ),
    command(
        ngx_string!("cf_access_leeway"),
        ANY_LEVEL | NGX_CONF_TAKE1,
        conf::set_leeway,
    ),
    command(
        ngx_string!("cf_access_refresh"),
        NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1,
        conf::set_refresh,
    ),
    command(
        ngx_string!("cf_access_cache_size"),
        NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1,
        conf::set_cache_size,
    ),
    command(
        ngx_string!("cf_access_keys_cache"),
        NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1,
        conf::set_keys_cache,
    ),
    command(
        ngx_string!("cf_access_proxy"),
        NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1,
        conf::set_proxy,
    ),
    command(
        ngx_string!("cf_access_trusted_certificate"),
        NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1,
        conf::set_trusted_certificate,
    ),
    command(
        ngx_string!("cf_access_metrics"),
        NGX_HTTP_LOC_CONF | NGX_CONF_NOARGS,
        metrics::set_metrics,
    ),
    ngx_command_t::empty(),
];

/// Merges a location's settings with its parent's (see `LocConf::merge`).
unsafe extern "C" fn merge_loc_conf(
    cf: *mut ngx_conf_t,
    prev: *mut c_void,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx passes this module's parent and child LocConf and a valid cf.
    let (prev, conf) = unsafe { (&*prev.cast::<LocConf>(), &mut *conf.cast::<LocConf>()) };
    // SAFETY: as above.
    let Some(main) = Module::main_conf_mut(unsafe { &*cf }) else {
        return ngx::core::NGX_CONF_ERROR;
    };
    match conf.merge(prev, main) {
        Ok(()) => ngx::core::NGX_CONF_OK,
        Err(e) => {
            ngx_conf_log_error!(NGX_LOG_EMERG, cf, "{}", e);
            ngx::core::NGX_CONF_ERROR
        }
    }
}

static MODULE_CTX: ngx_http_module_t = ngx_http_module_t {
    preconfiguration: Some(Module::preconfiguration),
    postconfiguration: Some(Module::postconfiguration),
    create_main_conf: Some(Module::create_main_conf),
    init_main_conf: None,
    create_srv_conf: None,
    merge_srv_conf: None,
    create_loc_conf: Some(Module::create_loc_conf),
    merge_loc_conf: Some(merge_loc_conf),
};

ngx::ngx_modules!(ngx_http_cf_access_module);

#[used]
#[allow(non_upper_case_globals)]
pub static mut ngx_http_cf_access_module: ngx_module_t = ngx_module_t {
    ctx: ptr::addr_of!(MODULE_CTX) as _,
    commands: ptr::addr_of_mut!(COMMANDS) as *mut ngx_command_t,
    type_: NGX_HTTP_MODULE as _,
    init_module: Some(lifecycle::init_module),
    init_process: Some(lifecycle::init_process),
    exit_process: Some(lifecycle::exit_process),
    ..ngx_module_t::default()
};
