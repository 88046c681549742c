//! Process hooks: the master's round over every certs URL after loading the configuration,
//! and the per-worker refresher's start and stop.

use ngx::core::Status;
use ngx::ffi::{
    ngx_cycle_t, ngx_int_t, ngx_process, ngx_test_config, NGX_LOG_EMERG, NGX_PROCESS_SINGLE,
    NGX_PROCESS_WORKER,
};
use ngx::http::HttpModuleMainConf;
use ngx::ngx_log_error;

use crate::keys::sync::{self, Env};
use crate::keys::{saved, Caller};
use crate::{log, refresher, zone, Module};

/// In the master, after the configuration is loaded (start and reload): give each certs URL
/// its zone slot, adopt what the zone holds (a reload keeps it) or fetch what it lacks, fall
/// back to the key cache file, and rewrite that file from the zone. Workers then fork with
/// the instance's newest sets. Failure is not fatal: requests fail closed until a refresh
/// succeeds. Skipped by `nginx -t` (`nginx -s` stops before init_module).
pub extern "C" fn init_module(cycle: *mut ngx_cycle_t) -> ngx_int_t {
    // SAFETY: nginx passes the new, fully configured cycle.
    let cycle = unsafe { &*cycle };
    // SAFETY: a plain global nginx sets while parsing its command line.
    if unsafe { ngx_test_config } != 0 {
        return Status::NGX_OK.into();
    }
    let Some(main) = Module::main_conf(cycle) else {
        return Status::NGX_OK.into();
    };
    if main.stores.is_empty() {
        return Status::NGX_OK.into();
    }
    let Some(zone) = zone::attach(cycle) else {
        ngx_log_error!(NGX_LOG_EMERG, cycle.log, "cf_access: shared zone not found");
        return Status::NGX_ERROR.into();
    };
    let urls: Vec<&str> = main.stores.iter().map(|s| s.url.as_str()).collect();
    match zone.assign(&urls) {
        Ok(slots) => {
            for (store, slot) in main.stores.iter().zip(slots) {
                store.set_slot(slot);
            }
        }
        Err(e) => {
            ngx_log_error!(NGX_LOG_EMERG, cycle.log, "cf_access: {}", e);
            return Status::NGX_ERROR.into();
        }
    }
    // SAFETY: the cycle's log outlives this call, the only use of `log`.
    let log = unsafe { log::ThreadLog::new(cycle.log) };
    let env = Env {
        interval: main.refresh(),
        egress: &main.egress,
        caller: Caller::Master,
        log: &log,
    };
    for store in &main.stores {
        sync::round(&zone, store, &mut None, &env);
    }
    if let Some(path) = &main.keys_cache {
        saved::offer(&zone, &main.stores, path, &log);
        saved::write(&zone, &main.stores, path, &log);
    }
    for store in main.stores.iter().filter(|s| !s.has_keys()) {
        log.warn(&format!(
            "cf_access: no keys for \"{}\": requests are refused until a refresh succeeds",
            store.url
        ));
    }
    Status::NGX_OK.into()
}

/// In each worker: adopt the zone's newest sets (a respawned worker must not verify with the
/// master's older copy), then start the refresher thread.
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
    let Some(zone) = zone::attach(cycle_ref) else {
        ngx_log_error!(
            NGX_LOG_EMERG,
            cycle_ref.log,
            "cf_access: shared zone not found"
        );
        return Status::NGX_ERROR.into();
    };
    for store in &main.stores {
        sync::adopt(&zone, store, &log);
    }
    let settings = refresher::Settings {
        zone,
        stores: main.stores.clone(),
        interval: main.refresh(),
        egress: main.egress.clone(),
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
