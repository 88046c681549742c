//! The layout of the shared memory zone that makes one nginx instance agree on its keys.
//!
//! nginx maps the zone before it forks and keeps it across reloads; this module only sees
//! the bytes. The zone holds one [`Slot`] per certs URL: the URL, its [`UrlState`] refresh
//! state, the newest key set (as the canonical certs JSON of [`crate::KeySet`]) and the
//! last fetch error. Every slot has its own lock, a process-shared robust pthread mutex:
//! critical sections are a few copies long; when a holder dies (a worker killed mid-copy)
//! the next one gets the lock and, if the slot was being written, finds it emptied rather
//! than torn (the set is fetched again); a lock that cannot be had within a bound is
//! reported instead of waited on forever. Nothing here calls nginx, so the refresher thread
//! may use it.

use std::cell::UnsafeCell;
use std::mem::{align_of, size_of};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use thiserror::Error;

use crate::refresh::UrlState;

/// Certs URLs one instance can use at once.
pub const MAX_URLS: usize = 16;
/// Longest certs URL.
pub const URL_CAP: usize = 1024;
/// Largest canonical key set (about 100 RSA-2048 keys; Cloudflare serves two).
pub const BODY_CAP: usize = 64 * 1024;
/// Longest last-error text kept.
pub const ERROR_CAP: usize = 240;

/// "cfaccess" + layout version: a zone from another layout is set up anew.
const MAGIC: u64 = 0x6366_6163_6365_0004;

/// Room for per-status request counters (more than there are statuses).
pub const STATUS_SLOTS: usize = 16;

#[repr(C)]
struct Layout {
    magic: AtomicU64,
    /// The last `seq` handed out; every stored set gets a new one.
    last_seq: AtomicU64,
    /// Bumped by the master at every start and reload: workers of an older configuration
    /// (shutting down gracefully) adopt sets but no longer fetch.
    generation: AtomicU64,
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
    /// get-identity subrequests made, answers served from a worker's cache, and fetches
    /// that left a request without its identity.
    pub identity_fetches: AtomicU64,
    pub identity_hits: AtomicU64,
    pub identity_failures: AtomicU64,
}

#[repr(C)]
struct Slot {
    /// Process-shared, robust; set up by [`Zone::init`].
    lock: UnsafeCell<libc::pthread_mutex_t>,
    /// The `seq` of the stored set, readable without the lock: the request path compares
    /// it with its own to wake its refresher at once when another process stored a newer set.
    published: AtomicU64,
    data: UnsafeCell<SlotData>,
}

#[repr(C)]
struct SlotData {
    /// 1 while the body or URL is being copied: a holder that dies then leaves it torn.
    writing: u32,
    state: UrlState,
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
    #[error("the shared zone stayed locked for {} s", LOCK_WAIT.as_secs())]
    Busy,
    #[error("the shared zone's lock is unusable ({0})")]
    Lock(i32),
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

/// Whether process `pid` exists and has not exited (a lease holder that does not is gone
/// for good; an exited, not yet reaped worker is a zombie and counts as gone).
pub fn process_alive(pid: u32) -> bool {
    let Ok(pid_t) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill with signal 0 only checks for existence and permission.
    let rc = unsafe { libc::kill(pid_t, 0) };
    if rc != 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EPERM) {
        return false;
    }
    // "pid (comm) S ...": the state follows the last ')'.
    let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let rest = &stat[stat.rfind(')')? + 1..];
            rest.split_whitespace().next().map(|state| state == "Z" || state == "X")
        })
        .unwrap_or(false);
    !zombie
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
        Some(Zone { layout: NonNull::new(ptr.cast())? })
    }

    fn layout(&self) -> &Layout {
        // SAFETY: `attach`'s contract: the memory is valid and laid out (or zeroed, which is
        // a valid Layout: all integers and atomics).
        unsafe { self.layout.as_ref() }
    }

    /// Sets the zone up unless it already holds this layout (a reload keeps it). Call once,
    /// in the master, before any process uses it. `seed` starts the `seq` numbers (e.g. the
    /// wall clock in nanoseconds), so that a zone created anew never repeats a `seq` a
    /// process may still hold from an earlier one.
    pub fn init(&self, seed: u64) {
        let layout = self.layout();
        if layout.magic.load(Ordering::Acquire) == MAGIC {
            return;
        }
        for slot in &layout.slots {
            // SAFETY: no other process or thread uses the zone yet (see above): the mutex
            // is initialized in place, process-shared and robust, before anyone locks it.
            unsafe { init_mutex(slot.lock.get()) };
            // SAFETY: as above; the data is plain.
            let data = unsafe { &mut *slot.data.get() };
            data.reset("", &slot.published);
        }
        layout.last_seq.store(seed, Ordering::Relaxed);
        layout.generation.store(0, Ordering::Relaxed);
        let c = &layout.counters;
        let others = [
            &c.cache_hits,
            &c.cache_misses,
            &c.identity_fetches,
            &c.identity_hits,
            &c.identity_failures,
        ];
        for n in c.requests.iter().chain(others) {
            n.store(0, Ordering::Relaxed);
        }
        layout.magic.store(MAGIC, Ordering::Release);
    }

    /// A new configuration generation (the master, at every start and reload).
    pub fn next_generation(&self) -> u64 {
        self.layout().generation.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// The current configuration generation.
    pub fn generation(&self) -> u64 {
        self.layout().generation.load(Ordering::Acquire)
    }

    /// The `seq` of the set slot `index` holds (0: none, or no such slot), lock-free.
    pub fn published(&self, index: usize) -> u64 {
        self.layout().slots.get(index).map_or(0, |s| s.published.load(Ordering::Acquire))
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
        self.lock_within(index, LOCK_WAIT)
    }

    /// Locks slot `index` if it still belongs to `url`: `Ok(None)` when the slot went to
    /// another URL (a newer configuration took it).
    pub fn lock_url(&self, index: usize, url: &str) -> Result<Option<SlotGuard<'_>>, ZoneError> {
        let guard = self.lock(index)?;
        Ok((guard.url() == url).then_some(guard))
    }

    /// Locks slot `index`, waiting at most `wait`.
    pub fn lock_within(&self, index: usize, wait: Duration) -> Result<SlotGuard<'_>, ZoneError> {
        let slot = self.layout().slots.get(index).ok_or(ZoneError::TooManyUrls)?;
        let until = realtime_after(wait);
        // SAFETY: the mutex was initialized by `init` (process-shared, robust) and lives in
        // the zone for as long as `self` may be used.
        let rc = unsafe { libc::pthread_mutex_timedlock(slot.lock.get(), &until) };
        match rc {
            0 => {}
            libc::EOWNERDEAD => {
                // The holder died holding it. The lock is ours; make it usable again, and
                // forget a body it may have left half-copied.
                // SAFETY: we hold the mutex (EOWNERDEAD hands it over).
                unsafe { libc::pthread_mutex_consistent(slot.lock.get()) };
                // SAFETY: we hold the lock, so no one else touches the data.
                let data = unsafe { &mut *slot.data.get() };
                if data.writing != 0 {
                    data.forget_body(&slot.published);
                }
            }
            libc::ETIMEDOUT => return Err(ZoneError::Busy),
            e => return Err(ZoneError::Lock(e)),
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
                owners.iter().position(|o| o.as_deref().is_some_and(|o| !urls.contains(&o)))
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
        // SAFETY: this guard holds the mutex.
        unsafe { libc::pthread_mutex_unlock(self.slot.lock.get()) };
    }
}

/// Sets up a process-shared, robust mutex in place.
///
/// # Safety
/// `m` must be valid for writes and not in use by anyone.
unsafe fn init_mutex(m: *mut libc::pthread_mutex_t) {
    let mut attr = std::mem::MaybeUninit::<libc::pthread_mutexattr_t>::uninit();
    // SAFETY: attr is initialized by pthread_mutexattr_init before it is used; `m` is
    // valid (the caller's contract). These calls only fail on invalid arguments.
    unsafe {
        libc::pthread_mutexattr_init(attr.as_mut_ptr());
        libc::pthread_mutexattr_setpshared(attr.as_mut_ptr(), libc::PTHREAD_PROCESS_SHARED);
        libc::pthread_mutexattr_setrobust(attr.as_mut_ptr(), libc::PTHREAD_MUTEX_ROBUST);
        libc::pthread_mutex_init(m, attr.as_ptr());
        libc::pthread_mutexattr_destroy(attr.as_mut_ptr());
    }
}

/// CLOCK_REALTIME `wait` from now, as pthread_mutex_timedlock wants it.
fn realtime_after(wait: Duration) -> libc::timespec {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut now) };
    let nanos = now.tv_nsec as u64 + u64::from(wait.subsec_nanos());
    // `as _`: the type of tv_sec (libc deprecates its time_t alias on musl).
    let secs = wait.as_secs().saturating_add(nanos / 1_000_000_000);
    libc::timespec {
        tv_sec: now.tv_sec.saturating_add(secs.min(i64::MAX as u64) as _),
        tv_nsec: (nanos % 1_000_000_000) as _,
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

    pub fn state(&self) -> &UrlState {
        &self.data.state
    }

    pub fn state_mut(&mut self) -> &mut UrlState {
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
        self.data.writing = 1;
        self.data.body[..body.len()].copy_from_slice(body);
        self.data.body_len = body.len() as u32;
        self.data.key_count = u32::try_from(keys).unwrap_or(u32::MAX);
        self.data.state.seq = seq;
        self.data.writing = 0;
        self.slot.published.store(seq, Ordering::Release);
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
        self.data.reset(url, &self.slot.published);
    }

    /// Forgets the stored set so that it is fetched again (it could not be read).
    pub fn discard_body(&mut self) {
        self.data.forget_body(&self.slot.published);
    }
}

impl SlotData {
    /// The slot as new, for `url` ("": free). `url` fits: [`Zone::assign`] checked it.
    fn reset(&mut self, url: &str, published: &AtomicU64) {
        self.writing = 1;
        let len = url.len().min(URL_CAP);
        self.url[..len].copy_from_slice(&url.as_bytes()[..len]);
        self.url_len = len as u32;
        self.state = UrlState::default();
        self.body_len = 0;
        self.key_count = 0;
        self.error_len = 0;
        self.writing = 0;
        published.store(0, Ordering::Release);
    }

    /// No stored set, and a fetch due at once; the URL and the counters stay.
    fn forget_body(&mut self, published: &AtomicU64) {
        self.writing = 0;
        self.body_len = 0;
        self.key_count = 0;
        self.state.seq = 0;
        self.state.next_due = 0;
        published.store(0, Ordering::Release);
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
        z.init(7);
        let i = z.assign(&["https://a/certs"]).unwrap()[0];
        let seq = z.next_seq();
        assert_eq!(seq, 8, "seq numbers start at the seed");
        z.lock(i).unwrap().set_body(b"{}", 0, seq).unwrap();
        z.init(0); // a reload keeps the zone
        assert_eq!(z.next_seq(), seq + 1);
        let g = z.lock(i).unwrap();
        assert_eq!((g.url(), g.body(), g.state().seq), ("https://a/certs", &b"{}"[..], seq));
        assert_eq!(z.published(i), seq, "readable without the lock");
        assert_eq!(z.published(MAX_URLS), 0);
    }

    #[test]
    fn assign_finds_claims_and_reclaims() {
        let mut m = Memory::new();
        let z = m.zone();
        z.init(0);
        let urls: Vec<String> = (0..MAX_URLS).map(|i| format!("https://t{i}/certs")).collect();
        let refs: Vec<&str> = urls.iter().map(String::as_str).collect();
        let first = z.assign(&refs).unwrap();
        assert_eq!(first, (0..MAX_URLS).collect::<Vec<_>>());
        // The same URLs in another order keep their slots.
        let mut rev = refs.clone();
        rev.reverse();
        let again = z.assign(&rev).unwrap();
        assert_eq!(again[0], MAX_URLS - 1);
        // A new URL when all are taken reclaims one no longer configured.
        let i = z.assign(&["https://t3/certs", "https://new/certs"]).unwrap();
        assert_eq!(i[0], 3);
        assert_ne!(i[1], 3);
        let g = z.lock(i[1]).unwrap();
        assert_eq!((g.url(), g.state().seq), ("https://new/certs", 0));
        drop(g);
        let too_many: Vec<String> = (0..=MAX_URLS).map(|i| format!("u{i}")).collect();
        let refs: Vec<&str> = too_many.iter().map(String::as_str).collect();
        assert_eq!(z.assign(&refs), Err(ZoneError::TooManyUrls));
        assert_eq!(z.assign(&[&"x".repeat(URL_CAP + 1)]), Err(ZoneError::UrlTooLong));
    }

    #[test]
    fn bodies_and_errors_are_bounded() {
        let mut m = Memory::new();
        let z = m.zone();
        z.init(0);
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
        z.init(0);
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
    fn a_dead_holder_hands_the_lock_over_and_a_torn_body_is_dropped() {
        let mut m = Memory::new();
        let z = m.zone();
        z.init(0);
        let i = z.assign(&["https://t/certs"]).unwrap()[0];
        z.lock(i).unwrap().set_body(b"{}", 1, z.next_seq()).unwrap();
        // A holder that dies (here a thread that exits) with the lock, mid-copy.
        std::thread::scope(|s| {
            s.spawn(|| {
                let g = z.lock(i).unwrap();
                g.data.writing = 1;
                std::mem::forget(g);
            });
        });
        let g = z.lock_within(i, Duration::from_millis(500)).unwrap();
        assert_eq!((g.state().seq, g.body()), (0, &b""[..]), "a torn body is forgotten");
        assert_eq!(g.url(), "https://t/certs");
        drop(g);
        // A holder that dies after a complete copy leaves the slot as it was.
        std::thread::scope(|s| {
            s.spawn(|| {
                let mut g = z.lock(i).unwrap();
                g.set_body(b"{}", 1, 9).unwrap();
                std::mem::forget(g);
            });
        });
        assert_eq!(z.lock(i).unwrap().state().seq, 9);
    }

    #[test]
    fn a_live_holder_makes_us_give_up_in_time() {
        let mut m = Memory::new();
        let z = m.zone();
        z.init(0);
        let held = z.lock(0).unwrap();
        std::thread::scope(|s| {
            s.spawn(|| {
                let started = std::time::Instant::now();
                assert_eq!(
                    z.lock_within(0, Duration::from_millis(100)).err(),
                    Some(ZoneError::Busy)
                );
                assert!(started.elapsed() < Duration::from_secs(1));
            });
        });
        drop(held);
        assert!(z.lock(0).is_ok());
        assert!(!process_alive(u32::MAX));
        assert!(process_alive(current_pid()));
    }
}
