//! ngx_http_cf_access_module: verifies Cloudflare Access JWTs at the origin.
//!
//! This file holds the module statics and nginx glue only:
//! - `conf.rs`: directives, set functions, merge;
//! - `handler.rs`: the access-phase handler; `ctx.rs`: the per-request verdict;
//! - `variables.rs`: `$cf_access_*`;
//! - `keys.rs`: process-wide key sets and fetching; `refresher.rs`: the per-worker thread;
//! - `cf-access-core` (core/): token, JWKS and claims logic, free of nginx.

use std::ffi::{c_char, c_void};
use std::ptr;

use ngx::core::Status;
use ngx::ffi::{
    ngx_array_push, ngx_command_t, ngx_conf_t, ngx_cycle_t, ngx_http_handler_pt, ngx_http_module_t,
    ngx_http_phases_NGX_HTTP_ACCESS_PHASE, ngx_int_t, ngx_module_t, ngx_process, ngx_test_config,
    ngx_uint_t, NGX_CONF_1MORE, NGX_CONF_FLAG, NGX_CONF_TAKE1, NGX_HTTP_LOC_CONF,
    NGX_HTTP_LOC_CONF_OFFSET, NGX_HTTP_MAIN_CONF, NGX_HTTP_MAIN_CONF_OFFSET, NGX_HTTP_MODULE,
    NGX_HTTP_SRV_CONF, NGX_LOG_EMERG, NGX_LOG_NOTICE, NGX_LOG_WARN, NGX_PROCESS_SINGLE,
    NGX_PROCESS_WORKER,
};
use ngx::http::{HttpModule, HttpModuleLocationConf, HttpModuleMainConf, NgxHttpCoreModule};
use ngx::{ngx_conf_log_error, ngx_log_error, ngx_string};

mod conf;
mod ctx;
mod handler;
mod keys;
mod log;
mod refresher;
mod signals;
mod variables;

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
        let Some(cmcf) = NgxHttpCoreModule::main_conf_mut(cf) else {
            return Status::NGX_ERROR.into();
        };
        let phase = &mut cmcf.phases[ngx_http_phases_NGX_HTTP_ACCESS_PHASE as usize];
        // SAFETY: the phase handler array is a valid ngx_array_t of handler pointers.
        let h = unsafe { ngx_array_push(&mut phase.handlers) } as *mut ngx_http_handler_pt;
        if h.is_null() {
            return Status::NGX_ERROR.into();
        }
        // SAFETY: h points at the new element just pushed.
        unsafe { *h = Some(handler::access_handler) };
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

const ANY_LEVEL: u32 = NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF;

static mut COMMANDS: [ngx_command_t; 9] = [
    ngx_command_t {
        name: ngx_string!("cf_access"),
        type_: (ANY_LEVEL | NGX_CONF_FLAG) as ngx_uint_t,
        set: Some(conf::set_enabled),
        conf: NGX_HTTP_LOC_CONF_OFFSET,
        offset: 0,
        post: ptr::null_mut(),
    },
    ngx_command_t {
        name: ngx_string!("cf_access_team_domain"),
        type_: (ANY_LEVEL | NGX_CONF_TAKE1) as ngx_uint_t,
        set: Some(conf::set_team_domain),
        conf: NGX_HTTP_LOC_CONF_OFFSET,
        offset: 0,
        post: ptr::null_mut(),
    },
    ngx_command_t {
        name: ngx_string!("cf_access_aud"),
        type_: (ANY_LEVEL | NGX_CONF_1MORE) as ngx_uint_t,
        set: Some(conf::set_audiences),
        conf: NGX_HTTP_LOC_CONF_OFFSET,
        offset: 0,
        post: ptr::null_mut(),
    },
    ngx_command_t {
        name: ngx_string!("cf_access_certs_url"),
        type_: (ANY_LEVEL | NGX_CONF_TAKE1) as ngx_uint_t,
        set: Some(conf::set_certs_url),
        conf: NGX_HTTP_LOC_CONF_OFFSET,
        offset: 0,
        post: ptr::null_mut(),
    },
    ngx_command_t {
        name: ngx_string!("cf_access_leeway"),
        type_: (ANY_LEVEL | NGX_CONF_TAKE1) as ngx_uint_t,
        set: Some(conf::set_leeway),
        conf: NGX_HTTP_LOC_CONF_OFFSET,
        offset: 0,
        post: ptr::null_mut(),
    },
    ngx_command_t {
        name: ngx_string!("cf_access_refresh"),
        type_: (NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1) as ngx_uint_t,
        set: Some(conf::set_refresh),
        conf: NGX_HTTP_MAIN_CONF_OFFSET,
        offset: 0,
        post: ptr::null_mut(),
    },
    ngx_command_t {
        name: ngx_string!("cf_access_cache_size"),
        type_: (NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1) as ngx_uint_t,
        set: Some(conf::set_cache_size),
        conf: NGX_HTTP_MAIN_CONF_OFFSET,
        offset: 0,
        post: ptr::null_mut(),
    },
    ngx_command_t {
        name: ngx_string!("cf_access_keys_cache"),
        type_: (NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1) as ngx_uint_t,
        set: Some(conf::set_keys_cache),
        conf: NGX_HTTP_MAIN_CONF_OFFSET,
        offset: 0,
        post: ptr::null_mut(),
    },
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
    init_module: Some(init_module),
    init_process: Some(init_process),
    exit_process: Some(exit_process),
    ..ngx_module_t::default()
};

/// In the master, after the configuration is loaded: fetch every certs URL once so that
/// workers fork with keys in hand. Failure is not fatal: requests fail closed until a
/// refresh succeeds. Skipped by `nginx -t`.
extern "C" fn init_module(cycle: *mut ngx_cycle_t) -> ngx_int_t {
    // SAFETY: nginx passes the new, fully configured cycle.
    let cycle = unsafe { &*cycle };
    // SAFETY: a plain global nginx sets before loading the configuration.
    if unsafe { ngx_test_config } != 0 {
        return Status::NGX_OK.into();
    }
    let Some(main) = Module::main_conf(cycle) else {
        return Status::NGX_OK.into();
    };
    for store in &main.stores {
        match keys::refresh(store) {
            Ok((n, _)) => {
                ngx_log_error!(
                    NGX_LOG_NOTICE,
                    cycle.log,
                    "cf_access: loaded {} keys from \"{}\"",
                    n,
                    store.url
                );
            }
            Err(e) => {
                ngx_log_error!(
                    NGX_LOG_WARN,
                    cycle.log,
                    "cf_access: fetching keys from \"{}\" failed: {}",
                    store.url,
                    e
                );
                load_saved_keys(cycle, store, main.keys_cache.as_deref());
            }
        }
    }
    if let Some(path) = &main.keys_cache {
        if let Err(e) = keys::save(&main.stores, path) {
            ngx_log_error!(
                NGX_LOG_WARN,
                cycle.log,
                "cf_access: cannot write the key cache \"{}\": {}",
                path.display(),
                e
            );
        }
    }
    Status::NGX_OK.into()
}

/// After a failed fetch in the master: keep the keys loaded before (a reload), else use
/// the key cache file if there is one, else refuse requests until a refresh succeeds.
fn load_saved_keys(cycle: &ngx_cycle_t, store: &keys::KeyStore, path: Option<&std::path::Path>) {
    if store.has_keys() {
        ngx_log_error!(
            NGX_LOG_WARN,
            cycle.log,
            "cf_access: keeping the key set loaded before for \"{}\"",
            store.url
        );
        return;
    }
    let loaded = match path.map(|p| keys::load_saved(store, p)) {
        Some(Ok(Some(n))) => {
            ngx_log_error!(
                NGX_LOG_WARN,
                cycle.log,
                "cf_access: using {} keys for \"{}\" from the key cache \"{}\"",
                n,
                store.url,
                path.map(|p| p.display().to_string()).unwrap_or_default()
            );
            true
        }
        Some(Ok(None)) => false,
        Some(Err(e)) => {
            ngx_log_error!(
                NGX_LOG_WARN,
                cycle.log,
                "cf_access: ignoring the key cache \"{}\": {}",
                path.map(|p| p.display().to_string()).unwrap_or_default(),
                e
            );
            false
        }
        None => false,
    };
    if !loaded {
        ngx_log_error!(
            NGX_LOG_WARN,
            cycle.log,
            "cf_access: no keys for \"{}\": requests are refused until a refresh succeeds",
            store.url
        );
    }
}

/// In each worker: start the refresher thread.
extern "C" fn init_process(cycle: *mut ngx_cycle_t) -> ngx_int_t {
    // SAFETY: nginx passes the worker's cycle, valid for the life of the process.
    let cycle_ref = unsafe { &*cycle };
    // SAFETY: a plain global nginx sets before calling init_process.
    let process = unsafe { ngx_process } as u32;
    if process != NGX_PROCESS_WORKER && process != NGX_PROCESS_SINGLE {
        return Status::NGX_OK.into();
    }
    let Some(main) = Module::main_conf(cycle_ref) else {
        return Status::NGX_OK.into();
    };
    if main.stores.is_empty() {
        return Status::NGX_OK.into();
    }
    crate::handler::init_cache(main.cache_size());
    // SAFETY: the cycle's log lives as long as the worker process.
    let log = unsafe { log::ThreadLog::new(cycle_ref.log) };
    let settings = refresher::Settings {
        stores: main.stores.clone(),
        interval: main.refresh(),
        keys_cache: main.keys_cache.clone(),
    };
    match refresher::start(settings, log) {
        Ok(()) => Status::NGX_OK.into(),
        Err(e) => {
            ngx_log_error!(
                NGX_LOG_EMERG,
                cycle_ref.log,
                "cf_access: cannot start the key refresher thread: {}",
                e
            );
            Status::NGX_ERROR.into()
        }
    }
}

extern "C" fn exit_process(_cycle: *mut ngx_cycle_t) {
    refresher::stop();
}
