//! Process hooks: the master's first fetch after loading the configuration, and the
//! per-worker refresher's start and stop.

use ngx::core::Status;
use ngx::ffi::{
    ngx_cycle_t, ngx_int_t, ngx_process, ngx_test_config, NGX_LOG_EMERG, NGX_LOG_NOTICE,
    NGX_LOG_WARN, NGX_PROCESS_SINGLE, NGX_PROCESS_WORKER,
};
use ngx::http::HttpModuleMainConf;
use ngx::ngx_log_error;

use crate::{keys, log, refresher, Module};

/// In the master, after the configuration is loaded: fetch every certs URL once so that
/// workers fork with keys in hand. Failure is not fatal: requests fail closed until a
/// refresh succeeds. Skipped by `nginx -t`.
pub extern "C" fn init_module(cycle: *mut ngx_cycle_t) -> ngx_int_t {
    // SAFETY: nginx passes the new, fully configured cycle.
    let cycle = unsafe { &*cycle };
    // `nginx -t` loads the configuration too but needs no keys (`nginx -s` stops before
    // init_module).
    // SAFETY: a plain global nginx sets while parsing its command line.
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
pub extern "C" fn init_process(cycle: *mut ngx_cycle_t) -> ngx_int_t {
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

pub extern "C" fn exit_process(_cycle: *mut ngx_cycle_t) {
    refresher::stop();
}
