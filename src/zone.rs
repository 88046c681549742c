//! The shared memory zone: declared to nginx at configuration time, attached in every
//! process. Its layout and locking are the core's (`cf_access_core::zone`); this file only
//! asks nginx for the memory and finds it again in each cycle.
//!
//! nginx keeps a zone across reloads when its name, size and tag are unchanged, so the
//! newest key sets and the refresh schedule outlive every worker generation.

use std::ffi::c_void;
use std::ptr;
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

use cf_access_core::zone::{Counters, Zone};
use ngx::core::Status;
use ngx::ffi::{
    ngx_conf_t, ngx_cycle_t, ngx_int_t, ngx_list_part_t, ngx_shared_memory_add, ngx_shm_zone_t,
    ngx_slab_calloc, ngx_slab_pool_t, ngx_str_t,
};
use ngx::ngx_string;

use crate::ngx_http_cf_access_module;

/// Room for nginx's slab allocator header and page table next to the zone itself.
const SLAB_OVERHEAD: usize = 64 * 1024;

/// The zone's size: the layout rounded up to pages, plus the slab allocator's header and the
/// page lost to alignment (`ngx_slab_init` aligns to a page: 64 KiB on some aarch64
/// kernels). Constant on a host, so nginx keeps the zone across reloads.
fn zone_size() -> usize {
    // SAFETY: a plain global nginx sets at startup (ngx_os_init), before any configuration.
    let page = (unsafe { ngx::ffi::ngx_pagesize }).max(4096);
    Zone::SIZE.div_ceil(page) * page + 2 * page + SLAB_OVERHEAD
}

/// This process's zone, set from the current cycle in `init_module` / `init_process`.
static CURRENT: AtomicPtr<u8> = AtomicPtr::new(ptr::null_mut());

fn tag() -> *mut c_void {
    ptr::addr_of_mut!(ngx_http_cf_access_module).cast()
}

/// Declares the zone (once per configuration that uses the module).
pub fn declare(cf: *mut ngx_conf_t) -> Status {
    let mut name: ngx_str_t = ngx_string!("ngx_http_cf_access");
    // SAFETY: cf is the configuration being parsed; nginx copies the name struct (whose bytes
    // are static) and the tag is this module's address, stable while the module is loaded.
    let shm = unsafe { ngx_shared_memory_add(cf, &mut name, zone_size(), tag()) };
    if shm.is_null() {
        return Status::NGX_ERROR;
    }
    // SAFETY: nginx returned a valid zone entry of the configuration being parsed.
    unsafe { (*shm).init = Some(init_zone) };
    Status::NGX_OK
}

/// nginx's zone init callback, in the master: `data` is the previous cycle's zone data when
/// the zone is kept across a reload.
unsafe extern "C" fn init_zone(shm_zone: *mut ngx_shm_zone_t, data: *mut c_void) -> ngx_int_t {
    // SAFETY: nginx passes the zone being initialized, mapped and with its slab pool set up.
    let shm_zone = unsafe { &mut *shm_zone };
    let base = if !data.is_null() {
        data.cast::<u8>()
    } else {
        let pool = shm_zone.shm.addr.cast::<ngx_slab_pool_t>();
        // SAFETY: a new zone starts with its slab pool; only the master runs this, before
        // any worker exists, and calloc hands back zeroed, page-aligned memory.
        let p = unsafe { ngx_slab_calloc(pool, Zone::SIZE) };
        if p.is_null() {
            return Status::NGX_ERROR.into();
        }
        // SAFETY: as above; `data` is where nginx's convention keeps a zone's own data.
        unsafe { (*pool).data = p };
        p.cast::<u8>()
    };
    // SAFETY: `base` is Zone::SIZE bytes of this zone, zeroed or laid out by a previous cycle.
    let Some(zone) = (unsafe { Zone::attach(base, Zone::SIZE) }) else {
        return Status::NGX_ERROR.into();
    };
    // A zone set up anew starts its `seq` numbers at the wall clock, so they never repeat
    // one a process may hold from an earlier zone.
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    zone.init(seed);
    shm_zone.data = base.cast();
    Status::NGX_OK.into()
}

/// Finds this module's zone in `cycle` and makes it the process's current one (none, when
/// the configuration declares no zone: a zone of an earlier cycle may be gone).
pub fn attach(cycle: &ngx_cycle_t) -> Option<Zone> {
    CURRENT.store(ptr::null_mut(), Ordering::Release);
    let mut part: *const ngx_list_part_t = &cycle.shared_memory.part;
    while !part.is_null() {
        // SAFETY: the cycle's shared memory list is valid: each part holds nelts zones.
        let (elts, n, next) = unsafe { ((*part).elts, (*part).nelts, (*part).next) };
        for i in 0..n {
            // SAFETY: i < nelts of this part.
            let shm_zone = unsafe { &*elts.cast::<ngx_shm_zone_t>().add(i) };
            if shm_zone.tag == tag() && !shm_zone.data.is_null() {
                let base = shm_zone.data.cast::<u8>();
                CURRENT.store(base, Ordering::Release);
                return current();
            }
        }
        part = next;
    }
    None
}

/// Adds `n` to one of the instance-wide counters (`counter` picks it), lock-free; nothing
/// when `n` is 0 or no zone is attached.
pub fn count(n: u64, counter: impl FnOnce(&Counters) -> &AtomicU64) {
    if n == 0 {
        return;
    }
    if let Some(zone) = current() {
        counter(zone.counters()).fetch_add(n, Ordering::Relaxed);
    }
}

/// The zone attached last in this process.
pub fn current() -> Option<Zone> {
    let base = CURRENT.load(Ordering::Acquire);
    if base.is_null() {
        return None;
    }
    // SAFETY: `base` came from the current cycle's zone data (set up by init_zone); the
    // mapping lives as long as that cycle, and `attach` replaces it for the next one.
    unsafe { Zone::attach(base, Zone::SIZE) }
}
