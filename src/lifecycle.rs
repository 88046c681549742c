//! Process hooks: the master's round over every certs URL after loading the configuration,
//! the per-worker refresher's start and stop, and the master saving the key cache file as
//! it exits. A panic in any of them is caught: it must not unwind into nginx (which would
//! abort the process).

use ngx::core::Status;
use ngx::ffi::{
    ngx_cycle_t, ngx_int_t, ngx_process, ngx_test_config, NGX_LOG_ALERT, NGX_LOG_EMERG,
    NGX_PROCESS_SINGLE, NGX_PROCESS_WORKER,
};
use ngx::http::HttpModuleMainConf;

use crate::keys::round::{self, RoundSettings};
use crate::keys::{saved, Role};
use crate::log::ThreadLog;
use crate::{refresher, zone, Module};

/// In the master, after the configuration is loaded (start and reload): give each certs URL
/// its zone slot, adopt what the zone holds (a reload keeps it) or fetch what it lacks (in
/// parallel, bounded by one fetch deadline), fall
/// back to the key cache file, and rewrite that file from the zone. Workers then fork with
/// the instance's newest sets. Nothing here fails the cycle (on a reload nginx would exit):
/// requests fail closed until a refresh succeeds. Skipped by `nginx -t` (`nginx -s` stops
/// before init_module).
pub extern "C" fn init_module(cycle: *mut ngx_cycle_t) -> ngx_int_t {
    // SAFETY: nginx passes the new, fully configured cycle.
    let cycle = unsafe { &*cycle };
    // SAFETY: a plain global nginx sets while parsing its command line.
    if unsafe { ngx_test_config } != 0 {
        return Status::NGX_OK.into();
    }
    // SAFETY: the cycle's log outlives this call, the only use of `log`.
    let log = unsafe { ThreadLog::new(cycle.log) };
    log.catch_panic(
        NGX_LOG_ALERT,
        format_args!("loading keys panicked; requests are refused until a refresh succeeds"),
        || master_round(cycle, &log),
    );
    Status::NGX_OK.into()
}

fn master_round(cycle: &ngx_cycle_t, log: &ThreadLog) {
    let zone = zone::attach(cycle);
    let Some(main) = Module::main_conf(cycle).filter(|m| !m.stores.is_empty()) else {
        return;
    };
    let Some(zone) = zone else {
        log.alert(format_args!("the shared zone is missing; requests are refused"));
        return;
    };
    let urls: Vec<&str> = main.stores.iter().map(|s| s.url.as_str()).collect();
    match zone.assign(&urls) {
        Ok(slots) => {
            for (store, slot) in main.stores.iter().zip(slots) {
                store.set_slot(slot);
            }
        }
        Err(e) => {
            log.alert(format_args!(
                "cannot give the certs urls their places in the shared zone: {e}; \
                 keys are kept as they are"
            ));
            return;
        }
    }
    // Workers of the previous configuration only adopt from now on.
    let generation = zone.next_generation();
    let settings = RoundSettings {
        interval: main.refresh(),
        egress: &main.egress,
        role: Role::Master,
        generation,
        log,
    };
    // The master never waits on the network for what the zone holds (a reload with the zone
    // kept): it adopts, and the workers' refreshers keep those sets current. Only URLs the
    // zone has no set for (the first start, a new URL) are fetched here, all at once, so
    // that a start or reload waits at most one fetch deadline however many there are. (The
    // threads inherit the master's blocked signals, and are joined before nginx goes on.)
    let (held, missing): (Vec<_>, Vec<_>) =
        main.stores.iter().partition(|store| round::zone_has_set(&zone, store));
    for store in held {
        round::adopt(&zone, store, log);
    }
    match missing.as_slice() {
        [] => {}
        [store] => {
            round::run(&zone, store, &settings);
        }
        stores => std::thread::scope(|scope| {
            for &store in stores {
                let (zone, settings) = (&zone, &settings);
                if let Err(e) = std::thread::Builder::new()
                    .name("cf-access-fetch".into())
                    .spawn_scoped(scope, move || round::run(zone, store, settings))
                {
                    log.warn(format_args!("cannot fetch keys for \"{}\" now: {e}", store.url));
                }
            }
        }),
    }
    if let Some(path) = &main.keys_cache {
        saved::offer(&zone, &main.stores, path, log);
        saved::write(&zone, &main.stores, path, log);
    }
    for store in main.stores.iter().filter(|s| !s.has_keys()) {
        log.warn(format_args!(
            "no keys for \"{}\": requests are refused until a refresh succeeds",
            store.url
        ));
    }
}

/// In each worker: adopt the zone's newest sets (a respawned worker must not verify with the
/// master's older copy; if the zone cannot be read, it verifies with nothing until its
/// refresher can), then start the refresher thread.
pub extern "C" fn init_process(cycle: *mut ngx_cycle_t) -> ngx_int_t {
    // SAFETY: nginx passes the worker's cycle, valid for the life of the process.
    let cycle = unsafe { &*cycle };
    // SAFETY: a plain global nginx sets before calling init_process.
    let process = unsafe { ngx_process } as u32;
    if process != NGX_PROCESS_WORKER && process != NGX_PROCESS_SINGLE {
        return Status::NGX_OK.into();
    }
    // SAFETY: the cycle's log lives as long as the worker process.
    let log = unsafe { ThreadLog::new(cycle.log) };
    let started = log.catch_panic(NGX_LOG_EMERG, format_args!("worker start panicked"), || {
        start_worker(cycle, log)
    });
    started.unwrap_or(Status::NGX_ERROR).into()
}

fn start_worker(cycle: &ngx_cycle_t, log: ThreadLog) -> Status {
    let zone = zone::attach(cycle);
    let Some(main) = Module::main_conf(cycle).filter(|m| !m.stores.is_empty()) else {
        return Status::NGX_OK;
    };
    crate::verdict::init_cache(main.cache_size());
    let Some(zone) = zone else {
        crate::log_error!(NGX_LOG_EMERG, cycle.log, "shared zone not found");
        return Status::NGX_ERROR;
    };
    for store in &main.stores {
        if !round::adopt(&zone, store, &log) {
            store.clear();
        }
    }
    let settings = refresher::Settings {
        zone,
        generation: zone.generation(),
        stores: main.stores.clone(),
        interval: main.refresh(),
        egress: main.egress.clone(),
    };
    match refresher::start(settings, log) {
        Ok(()) => Status::NGX_OK,
        Err(e) => {
            crate::log_error!(
                NGX_LOG_EMERG,
                cycle.log,
                "cannot start the key refresher thread: {}",
                e
            );
            Status::NGX_ERROR
        }
    }
}

pub extern "C" fn exit_process(_cycle: *mut ngx_cycle_t) {
    refresher::stop();
}

/// In the master as it exits (`nginx -s quit`, `nginx -s stop`, and with `master_process
/// off`), after its workers are gone: saves the zone's sets to the key cache file, so that a
/// restart during an outage starts from the newest set the workers fetched rather than the
/// one of the last start or reload.
pub extern "C" fn exit_master(cycle: *mut ngx_cycle_t) {
    // SAFETY: nginx passes the current cycle, valid until the master exits.
    let cycle = unsafe { &*cycle };
    // SAFETY: the cycle's log outlives this call, the only use of `log`.
    let log = unsafe { ThreadLog::new(cycle.log) };
    log.catch_panic(NGX_LOG_ALERT, format_args!("saving the key cache panicked"), || {
        save_on_exit(cycle, &log)
    });
}

fn save_on_exit(cycle: &ngx_cycle_t, log: &ThreadLog) {
    let Some(main) = Module::main_conf(cycle) else {
        return;
    };
    let (Some(path), Some(zone)) = (&main.keys_cache, zone::current()) else {
        return;
    };
    saved::write(&zone, &main.stores, path, log);
}
