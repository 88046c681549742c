//! ngx_http_cf_access_module: verifies Cloudflare Access JWTs at the origin.
//!
//! This file holds the module statics and nginx glue only. What every other file owns is in
//! one place, the file map in `docs/design.md`.

use std::ffi::{c_char, c_void};
use std::ptr;

use ngx::core::Status;
use ngx::ffi::{
    ngx_array_push, ngx_command_t, ngx_conf_t, ngx_http_handler_pt, ngx_http_module_t,
    ngx_http_phases_NGX_HTTP_ACCESS_PHASE, ngx_http_phases_NGX_HTTP_LOG_PHASE,
    ngx_http_phases_NGX_HTTP_REWRITE_PHASE, ngx_http_request_t, ngx_int_t, ngx_module_t,
    NGX_HTTP_MODULE, NGX_LOG_EMERG,
};
use ngx::http::{HttpModule, HttpModuleLocationConf, HttpModuleMainConf, NgxHttpCoreModule};
use ngx::ngx_conf_log_error;

use cf_access_core::zone::MAX_URLS;

mod conf;
mod handler;
mod identity;
mod keys;
mod lifecycle;
mod log;
mod metrics;
mod pitfalls;
mod pool;
mod refresher;
mod signals;
mod time;
mod variables;
mod verdict;
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
        // Within a phase nginx runs the handlers added last first: this module's rewrite
        // handler runs before the rewrite module's (`return`, `rewrite`, `if`).
        for (phase, handler) in [
            (ngx_http_phases_NGX_HTTP_REWRITE_PHASE, handler::rewrite_handler as HandlerFn),
            (ngx_http_phases_NGX_HTTP_ACCESS_PHASE, handler::access_handler),
            (ngx_http_phases_NGX_HTTP_LOG_PHASE, verdict::log_handler),
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
        Ok(()) => {
            pitfalls::warn_unenforced_rewrites(cf, conf);
            ngx::core::NGX_CONF_OK
        }
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

/// The module, under the C name nginx's own build (`--add-dynamic-module`) links it by.
#[used]
#[no_mangle]
#[allow(non_upper_case_globals)]
pub static mut ngx_http_cf_access_module: ngx_module_t = ngx_module_t {
    ctx: ptr::addr_of!(MODULE_CTX) as _,
    commands: ptr::addr_of_mut!(conf::COMMANDS) as *mut ngx_command_t,
    type_: NGX_HTTP_MODULE as _,
    init_module: Some(lifecycle::init_module),
    init_process: Some(lifecycle::init_process),
    exit_process: Some(lifecycle::exit_process),
    exit_master: Some(lifecycle::exit_master),
    ..ngx_module_t::default()
};
