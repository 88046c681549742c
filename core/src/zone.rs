//! The layout of the shared memory zone that makes one nginx instance agree on its keys.
//!
//! nginx maps the zone before it forks and keeps it across reloads; this module only sees
//! the bytes. The zone holds one [`Slot`] per certs URL: the URL, its [`Shared`] refresh
//! state, the newest key set (as the canonical certs JSON of [`crate::KeySet`]) and the
//! last fetch error. Every slot has its own lock, a word holding the owner's process id:
//! critical sections are a few copies long, a lock whose owner died is taken over, and a
//! lock that cannot be had within a bound is reported instead of waited on forever. Nothing
//! here calls nginx, so the refresher thread may use it.

use std::cell::UnsafeCell;
use std::mem::{align_of, size_of};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::refresh::Shared;

/// Certs URLs one instance can use at once.
pub const MAX_URLS: usize = 16;
/// Longest certs URL.
pub const URL_CAP: usize = 1024;
/// Largest canonical key set (about 100 RSA-2048 keys; Cloudflare serves two).
pub const BODY_CAP: usize = 64 * 1024;
/// Longest last-error text kept.
pub const ERROR_CAP: usize = 240;

/// "cfaccess" + layout version: a zone from another layout is set up anew.
const MAGIC: u64 = 0x6366_6163_6365_0002;

/// Room for per-status request counters (more than there are statuses).
pub const STATUS_SLOTS: usize = 16;

#[repr(C)]
struct Layout {
    magic: AtomicU64,
    /// The last `seq` handed out; every stored set gets a new one.
    last_seq: AtomicU64,
    counters: Counters,
    slots: [Slot; MAX_URLS],
}

/// Instance-wide request counters, incremented lock-free by every worker.
#[repr(C)]
pub struct Counters {
    /// Requests by verdict, indexed by `Status::index`.
    pub requests: [AtomicU64; STATUS_SLOTS],
    pub cache_hits: AtomicU64,
    pub cache_misses: AtomicU64,
}

#[repr(C)]
struct Slot {
    /// 0: free; else the pid of the process holding the lock.
    lock: AtomicU32,
    data: UnsafeCell<SlotData>,
}

#[repr(C)]
struct SlotData {
    state: Shared,
    url_len: u32,
    body_len: u32,
    /// Keys in the stored set.
    key_count: u32,
    error_len: u32,
    url: [u8; URL_CAP],
    error: [u8; ERROR_CAP],
    body: [u8; BODY_CAP],
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ZoneError {
    #[error("more than {MAX_URLS} certs urls")]
    TooManyUrls,
    #[error("certs url longer than {URL_CAP} bytes")]
    UrlTooLong,
    #[error("key set of {0} bytes is larger than the shared zone's {BODY_CAP}")]
    BodyTooLarge(usize),
    #[error("the shared zone stayed locked by process {0}")]
    Busy(u32),
}

/// The zone, attached to memory nginx mapped (or any memory the tests provide).
#[derive(Clone, Copy)]
pub struct Zone {
    layout: NonNull<Layout>,
}

// SAFETY: all access to slot data goes through the per-slot lock; the header words are
// atomics.
unsafe impl Send for Zone {}
// SAFETY: as above.
unsafe impl Sync for Zone {}

// The zone stays small: nginx maps it in every process.
const _: () = assert!(Zone::SIZE < 2 * 1024 * 1024);

/// How long a lock is waited for before the caller is told the zone is busy.
pub const LOCK_WAIT: Duration = Duration::from_secs(2);

/// Whether process `pid` exists (a lock or lease holder that does not is gone for good).
pub fn process_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill with signal 0 only checks for existence and permission.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// This process's id.
pub fn current_pid() -> u32 {
    std::process::id()
}

impl Zone {
    /// Bytes the zone needs.
    pub const SIZE: usize = size_of::<Layout>();

    /// Attaches to `len` bytes at `ptr`. Returns `None` if they are too few or misaligned.
    ///
    /// # Safety
    /// `ptr` must be valid for reads and writes of `len` bytes for as long as the returned
    /// value (and its copies) are used, shared only with other users of this module, and
    /// either zeroed or laid out by this module before.
    pub unsafe fn attach(ptr: *mut u8, len: usize) -> Option<Zone> {
        if len < Self::SIZE || (ptr as usize) % align_of::<Layout>() != 0 {
            return None;
        }
        Some(Zone {
            layout: NonNull::new(ptr.cast())?,
        })
    }

    fn layout(&self) -> &Layout {
        // SAFETY: `attach`'s contract: the memory is valid and laid out (or zeroed, which is
        // a valid Layout: all integers and atomics).
        unsafe { self.layout.as_ref() }
    }

    /// Sets the zone up unless it already holds this layout (a reload keeps it). Call once,
    /// in the master, before any process uses it. Returns whether it was set up anew.
    pub fn init(&self) -> bool {
        let layout = self.layout();
        if layout.magic.load(Ordering::Acquire) == MAGIC {
            return false;
        }
        for slot in &layout.slots {
            slot.lock.store(0, Ordering::Relaxed);
            // SAFETY: no other process uses the zone yet (see above); the data is plain.
            let data = unsafe { &mut *slot.data.get() };
            data.state = Shared::default();
            data.url_len = 0;
            data.body_len = 0;
            data.key_count = 0;
            data.error_len = 0;
        }
        layout.last_seq.store(0, Ordering::Relaxed);
        let c = &layout.counters;
        for n in c.requests.iter().chain([&c.cache_hits, &c.cache_misses]) {
            n.store(0, Ordering::Relaxed);
        }
        layout.magic.store(MAGIC, Ordering::Release);
        true
    }

    /// The instance-wide counters (lock-free).
    pub fn counters(&self) -> &Counters {
        &self.layout().counters
    }

    /// A new, never used `seq` for a set about to be stored.
    pub fn next_seq(&self) -> u64 {
        self.layout().last_seq.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Locks slot `index`, waiting at most [`LOCK_WAIT`].
    pub fn lock(&self, index: usize) -> Result<SlotGuard<'_>, ZoneError> {
        self.lock_with(index, LOCK_WAIT, current_pid(), process_alive)
    }

    /// [`Zone::lock`] with the wait, the caller's id and the liveness check given.
    pub fn lock_with(
        &self,
        index: usize,
        wait: Duration,
        me: u32,
        alive: impl Fn(u32) -> bool,
    ) -> Result<SlotGuard<'_>, ZoneError> {
        let slot = self
            .layout()
            .slots
            .get(index)
            .ok_or(ZoneError::TooManyUrls)?;
        let started = Instant::now();
        let mut spins = 0u32;
        loop {
            let owner =
                match slot
                    .lock
                    .compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed)
                {
                    Ok(_) => break,
                    Err(owner) => owner,
                };
            if owner != me
                && !alive(owner)
                && slot
                    .lock
                    .compare_exchange(owner, me, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                break;
            }
            spins += 1;
            if spins < 64 {
                std::hint::spin_loop();
            } else if started.elapsed() >= wait {
                return Err(ZoneError::Busy(owner));
            } else {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        Ok(SlotGuard {
            slot,
            // SAFETY: the lock is held, so no one else touches the data until the guard drops.
            data: unsafe { &mut *slot.data.get() },
        })
    }

    /// The slot of each of `urls` (in order), claiming free slots for new URLs and, when
    /// none is free, slots of URLs not in `urls`. Called by the master at every start and
    /// reload.
    pub fn assign(&self, urls: &[&str]) -> Result<Vec<usize>, ZoneError> {
        if urls.len() > MAX_URLS {
            return Err(ZoneError::TooManyUrls);
        }
        if urls.iter().any(|u| u.len() > URL_CAP) {
            return Err(ZoneError::UrlTooLong);
        }
        let mut owners: Vec<Option<String>> = Vec::with_capacity(MAX_URLS);
        for i in 0..MAX_URLS {
            let guard = self.lock(i)?;
            owners.push((!guard.url().is_empty()).then(|| guard.url().to_string()));
        }
        let mut result = Vec::with_capacity(urls.len());
        for url in urls {
            if let Some(i) = owners.iter().position(|o| o.as_deref() == Some(*url)) {
                result.push(i);
                continue;
            }
            let free = owners.iter().position(Option::is_none).or_else(|| {
                owners
                    .iter()
                    .position(|o| o.as_deref().is_some_and(|o| !urls.contains(&o)))
            });
            let i = free.ok_or(ZoneError::TooManyUrls)?;
            let mut guard = self.lock(i)?;
            guard.claim(url);
            owners[i] = Some(url.to_string());
            result.push(i);
        }
        Ok(result)
    }
}

/// One locked slot; unlocked on drop.
pub struct SlotGuard<'a> {
    slot: &'a Slot,
    data: &'a mut SlotData,
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        self.slot.lock.store(0, Ordering::Release);
    }
}

fn clamp(len: u32, cap: usize) -> usize {
    (len as usize).min(cap)
}

impl SlotGuard<'_> {
    /// The certs URL this slot belongs to ("" when free).
    pub fn url(&self) -> &str {
        let bytes = &self.data.url[..clamp(self.data.url_len, URL_CAP)];
        std::str::from_utf8(bytes).unwrap_or("")
    }

    pub fn state(&self) -> &Shared {
        &self.data.state
    }

    pub fn state_mut(&mut self) -> &mut Shared {
        &mut self.data.state
    }

    /// The stored key set's canonical JSON (empty when none).
    pub fn body(&self) -> &[u8] {
        &self.data.body[..clamp(self.data.body_len, BODY_CAP)]
    }

    /// Stores a key set of `keys` keys as `seq` (from [`Zone::next_seq`]).
    pub fn set_body(&mut self, body: &[u8], keys: usize, seq: u64) -> Result<(), ZoneError> {
        if body.len() > BODY_CAP {
            return Err(ZoneError::BodyTooLarge(body.len()));
        }
        self.data.body[..body.len()].copy_from_slice(body);
        self.data.body_len = body.len() as u32;
        self.data.key_count = u32::try_from(keys).unwrap_or(u32::MAX);
        self.data.state.seq = seq;
        Ok(())
    }

    /// Keys in the stored set.
    pub fn key_count(&self) -> u32 {
        self.data.key_count
    }

    /// The last fetch error ("" after a success).
    pub fn error(&self) -> &str {
        let bytes = &self.data.error[..clamp(self.data.error_len, ERROR_CAP)];
        std::str::from_utf8(bytes).unwrap_or("")
    }

    /// Keeps `text` (cut at a character boundary) as the last fetch error.
    pub fn set_error(&mut self, text: &str) {
        let mut end = text.len().min(ERROR_CAP);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        self.data.error[..end].copy_from_slice(&text.as_bytes()[..end]);
        self.data.error_len = end as u32;
    }

    /// Gives this slot to `url`, forgetting what it held.
    fn claim(&mut self, url: &str) {
        self.data.url[..url.len()].copy_from_slice(url.as_bytes());
        self.data.url_len = url.len() as u32;
        self.data.state = Shared::default();
        self.data.body_len = 0;
        self.data.key_count = 0;
        self.data.error_len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Zeroed, aligned memory for one zone (as nginx's anonymous mapping is).
    struct Memory(Vec<u64>);

    impl Memory {
        fn new() -> Memory {
            Memory(vec![0u64; Zone::SIZE.div_ceil(8)])
        }

        fn zone(&mut self) -> Zone {
            // SAFETY: the vector is zeroed, aligned to 8 and outlives every use in a test.
            unsafe { Zone::attach(self.0.as_mut_ptr().cast(), self.0.len() * 8) }.unwrap()
        }
    }

    #[test]
    fn attach_checks_size_and_alignment() {
        let mut m = Memory::new();
        let p = m.0.as_mut_ptr().cast::<u8>();
        // SAFETY: only checked, never dereferenced.
        unsafe {
            assert!(Zone::attach(p, Zone::SIZE - 1).is_none());
            assert!(Zone::attach(p.add(1), Zone::SIZE).is_none());
        }
    }

    #[test]
    fn init_keeps_a_zone_that_is_already_set_up() {
        let mut m = Memory::new();
        let z = m.zone();
        assert!(z.init());
        let i = z.assign(&["https://a/certs"]).unwrap()[0];
        let seq = z.next_seq();
        z.lock(i).unwrap().set_body(b"{}", 0, seq).unwrap();
        assert!(!z.init(), "a reload keeps the zone");
        let g = z.lock(i).unwrap();
        assert_eq!(
            (g.url(), g.body(), g.state().seq),
            ("https://a/certs", &b"{}"[..], seq)
        );
    }

    #[test]
    fn assign_finds_claims_and_reclaims() {
        let mut m = Memory::new();
        let z = m.zone();
        z.init();
        let urls: Vec<String> = (0..MAX_URLS)
            .map(|i| format!("https://t{i}/certs"))
            .collect();
        let refs: Vec<&str> = urls.iter().map(String::as_str).collect();
        let first = z.assign(&refs).unwrap();
        assert_eq!(first, (0..MAX_URLS).collect::<Vec<_>>());
        // The same URLs in another order keep their slots.
        let mut rev = refs.clone();
        rev.reverse();
        let again = z.assign(&rev).unwrap();
        assert_eq!(again[0], MAX_URLS - 1);
        // A new URL when all are taken reclaims one no longer configured.
        let i = z
            .assign(&["https://t3/certs", "https://new/certs"])
            .unwrap();
        assert_eq!(i[0], 3);
        assert_ne!(i[1], 3);
        let g = z.lock(i[1]).unwrap();
        assert_eq!((g.url(), g.state().seq), ("https://new/certs", 0));
        drop(g);
        let too_many: Vec<String> = (0..=MAX_URLS).map(|i| format!("u{i}")).collect();
        let refs: Vec<&str> = too_many.iter().map(String::as_str).collect();
        assert_eq!(z.assign(&refs), Err(ZoneError::TooManyUrls));
        assert_eq!(
            z.assign(&[&"x".repeat(URL_CAP + 1)]),
            Err(ZoneError::UrlTooLong)
        );
    }

    #[test]
    fn bodies_and_errors_are_bounded() {
        let mut m = Memory::new();
        let z = m.zone();
        z.init();
        let mut g = z.lock(0).unwrap();
        assert_eq!(
            g.set_body(&vec![b' '; BODY_CAP + 1], 1, 1),
            Err(ZoneError::BodyTooLarge(BODY_CAP + 1))
        );
        g.set_error(&"é".repeat(ERROR_CAP));
        assert!(g.error().len() <= ERROR_CAP && g.error().starts_with('é'));
    }

    #[test]
    fn a_lock_is_exclusive_across_threads() {
        let mut m = Memory::new();
        let z = m.zone();
        z.init();
        let counter = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let counter = counter.clone();
                std::thread::spawn(move || {
                    for _ in 0..2000 {
                        let mut g = z.lock(0).unwrap();
                        // A non-atomic read-modify-write under the lock.
                        let n = g.state().fetches_ok;
                        std::hint::black_box(n);
                        g.state_mut().fetches_ok = n + 1;
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(z.lock(0).unwrap().state().fetches_ok, 8000);
    }

    #[test]
    fn a_dead_owner_loses_the_lock_and_a_live_one_makes_us_give_up() {
        let mut m = Memory::new();
        let z = m.zone();
        z.init();
        let held = z.lock_with(0, LOCK_WAIT, 4242, |_| true).unwrap();
        std::mem::forget(held); // the "process" 4242 dies holding the lock
        let wait = Duration::from_millis(50);
        assert_eq!(
            z.lock_with(0, wait, 1, |_| true).err(),
            Some(ZoneError::Busy(4242))
        );
        assert!(z.lock_with(0, wait, 1, |pid| pid != 4242).is_ok());
        assert!(!process_alive(u32::MAX));
        assert!(process_alive(current_pid()));
    }
}
