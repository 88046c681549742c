//! The refresh state machine of one certs URL, shared by every process of an nginx instance.
//!
//! The instance-wide part ([`UrlState`]) lives in nginx's shared memory zone, so that the
//! master and every worker, across reloads and respawns, agree on which key set is the
//! newest, when the next fetch is due, who is fetching, how many fetches failed in a row and
//! when the last forced refresh happened. Each process adds a little of its own ([`Local`]):
//! which set it verifies with and whether one of its requests asked for a forced refresh.
//!
//! The functions here only decide; they are called with the shared state locked, and the
//! time passed in (`now`: monotonic milliseconds, the same clock in every process of the
//! machine; `unix`: wall-clock seconds, for reporting only). Nothing here reads a clock,
//! fetches, or logs: the callers do, as the returned [`Step`]s and [`Event`]s say.

use std::time::Duration;

/// First retry after a failed fetch; doubles per consecutive failure.
pub const RETRY_MIN: Duration = Duration::from_secs(5);
/// Failed fetches are retried at least this often, however long the refresh interval.
pub const RETRY_MAX: Duration = Duration::from_secs(300);
/// Refreshes forced by tokens with an unknown `kid` happen at most this often per certs URL,
/// instance-wide, so a flood of made-up `kid`s cannot become a flood of fetches.
pub const FORCED_MIN_GAP: Duration = Duration::from_secs(10);
/// How often an idle process looks at the shared state for a set another process fetched.
pub const POLL: Duration = Duration::from_secs(1);
/// How long a fetch may hold the lease before another process may take over. Longer than
/// a fetch's overall deadline; a lease whose holder died is taken over at once.
pub const LEASE: Duration = Duration::from_secs(15);

/// How long to wait before the next fetch of a certs URL.
///
/// After a success: the configured interval. After `failures` consecutive failures:
/// `RETRY_MIN * 2^(failures-1)`, capped by `RETRY_MAX` and by the interval, so that an
/// outage (or a start without keys) heals soon after the endpoint does.
pub fn next_delay(interval: Duration, failures: u32) -> Duration {
    if failures == 0 {
        return interval;
    }
    let backoff = RETRY_MIN.saturating_mul(1u32 << (failures - 1).min(16));
    backoff.min(RETRY_MAX).min(interval)
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// What the whole instance knows about one certs URL. Plain data, kept in the shared zone
/// and only read or written with the zone's slot locked.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UrlState {
    /// Version of the stored key set, unique in the zone; 0: no set stored.
    pub seq: u64,
    /// When the fetch that produced the stored set started (monotonic ms); 0 for a set that
    /// came from the key cache file. A fetch that started earlier never replaces it.
    pub set_started: u64,
    /// When the stored set was last confirmed by the certs endpoint (unix seconds).
    pub fetched_at: u64,
    /// The next scheduled fetch (monotonic ms).
    pub next_due: u64,
    /// When the last fetch attempt started (monotonic ms); 0: never.
    pub last_attempt: u64,
    /// When the last forced fetch (unknown `kid`) started (monotonic ms); 0: never.
    pub last_forced: u64,
    /// Until when the fetch in flight holds the lease (monotonic ms).
    pub lease_until: u64,
    /// The process holding the lease; 0: none.
    pub lease_pid: u32,
    /// Consecutive failed fetches.
    pub failures: u32,
    /// 1 once the current run of failures has been warned about (by one worker).
    pub warned: u32,
    /// Fetches that succeeded / failed (instance-wide, since the zone was created).
    pub fetches_ok: u64,
    pub fetches_err: u64,
    /// When a fetch last succeeded (unix seconds); 0: never.
    pub last_success: u64,
}

/// What one process keeps about one certs URL.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Local {
    /// The `seq` of the set this process verifies with; 0: none.
    pub held: u64,
    /// When a request of this process asked for a forced refresh (unknown `kid`), until a
    /// fetch that started after it has been made (by any process).
    pub wish: Option<u64>,
}

/// What a process does next for one certs URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The shared zone has another set than this process holds: read it (locking the slot
    /// again; it may have changed since, which is fine: the newest is taken), verify with
    /// it, and decide again with `held` set to its `seq`. A pending wish was dropped: if
    /// that set still lacks the `kid`, the next request with it asks again (rate limited).
    Adopt,
    /// This process took the lease: fetch now (unlocked), then call [`record_success`] or
    /// [`record_failure`] with `started`.
    Fetch { started: u64 },
    /// Nothing to do until `until` (monotonic ms), unless woken.
    Wait { until: u64 },
}

/// Who is deciding.
#[derive(Debug, Clone, Copy)]
pub struct Me {
    /// This process's id.
    pub pid: u32,
    /// Whether this process may fetch: a worker of an older configuration only adopts.
    pub may_fetch: bool,
}

/// Decides the next step for one certs URL; may take the lease (then the caller must fetch).
/// `alive` tells whether the lease holder still exists.
pub fn decide(
    s: &mut UrlState,
    local: &mut Local,
    now: u64,
    interval: Duration,
    me: Me,
    alive: impl Fn(u32) -> bool,
) -> Step {
    if s.seq != 0 && s.seq != local.held {
        local.wish = None;
        return Step::Adopt;
    }
    if !me.may_fetch {
        return Step::Wait { until: now.saturating_add(ms(POLL)) };
    }
    let me = me.pid;
    if local.wish.is_some_and(|w| s.last_attempt >= w && s.last_attempt != 0) {
        // A fetch that started after the wish was made (or is being made) answers it.
        local.wish = None;
    }
    // The shared schedule; after a success never later than one interval after the last
    // attempt (a reload may have shortened the interval). After failures, the backoff rules.
    let due = match s.last_attempt {
        last if last != 0 && s.failures == 0 => s.next_due.min(last.saturating_add(ms(interval))),
        _ => s.next_due,
    };
    let forced_at = match s.last_forced {
        0 => 0,
        last => last.saturating_add(ms(FORCED_MIN_GAP)),
    };
    let forced = local.wish.is_some() && now >= forced_at && now < due;
    if now >= due || forced {
        let lease_free =
            s.lease_pid == 0 || s.lease_until <= now || (s.lease_pid != me && !alive(s.lease_pid));
        if !lease_free {
            return Step::Wait { until: s.lease_until.min(now.saturating_add(ms(POLL))) };
        }
        s.lease_pid = me;
        s.lease_until = now.saturating_add(ms(LEASE));
        s.last_attempt = now;
        if forced {
            s.last_forced = now;
        }
        // This fetch answers this process's wish (and any other made before now).
        local.wish = None;
        return Step::Fetch { started: now };
    }
    let mut until = due.min(now.saturating_add(ms(POLL)));
    if local.wish.is_some() {
        until = until.min(forced_at);
    }
    Step::Wait { until }
}

/// What a recorded fetch result means for the log (once per change of state, instance-wide).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Nothing worth a line.
    Quiet,
    /// A new key set was stored ("updated").
    Updated,
    /// The endpoint answers again after failing ("loaded again").
    Recovered,
    /// The first failure after a success (or at start): one warning.
    FirstFailure,
}

/// The result of a successful fetch that started at `started`. `changed`: whether its set
/// differs from the stored one. Returns whether the caller must store the new body (then
/// with `seq` set to a fresh value by the caller) and what to log.
pub fn record_success(
    s: &mut UrlState,
    started: u64,
    changed: bool,
    now: u64,
    unix: u64,
    interval: Duration,
    me: u32,
) -> (bool, Event) {
    release(s, me);
    s.fetches_ok = s.fetches_ok.saturating_add(1);
    s.last_success = unix;
    let recovered = s.failures > 0;
    s.failures = 0;
    s.warned = 0;
    s.next_due = now.saturating_add(ms(interval));
    let newest = s.seq == 0 || started >= s.set_started;
    let store = newest && (changed || s.seq == 0);
    if newest {
        s.set_started = started;
        s.fetched_at = unix;
    }
    let event = if recovered {
        Event::Recovered
    } else if store {
        Event::Updated
    } else {
        Event::Quiet
    };
    (store, event)
}

/// A failed fetch: back off, and say whether this is the failure to warn about. The
/// master's fetch at start logs its own line and passes `may_warn = false`, so that the
/// workers still warn once about a run of failures.
pub fn record_failure(
    s: &mut UrlState,
    now: u64,
    interval: Duration,
    me: u32,
    may_warn: bool,
) -> Event {
    release(s, me);
    s.fetches_err = s.fetches_err.saturating_add(1);
    s.failures = s.failures.saturating_add(1);
    s.next_due = now.saturating_add(ms(next_delay(interval, s.failures)));
    if may_warn && s.warned == 0 {
        s.warned = 1;
        Event::FirstFailure
    } else {
        Event::Quiet
    }
}

/// A set read from the key cache file, fetched at `fetched_at` (unix seconds). Returns
/// whether the zone has none (then the caller stores it, and the next fetch is due at once:
/// a saved set is only a stopgap).
pub fn offer_saved(s: &mut UrlState, fetched_at: u64, now: u64) -> bool {
    // The zone outlives reloads: a set it holds is the instance's newest, whatever the
    // wall clock said when either was fetched (it may have been stepped back since).
    if s.seq != 0 {
        return false;
    }
    s.next_due = s.next_due.min(now);
    s.set_started = 0;
    s.fetched_at = fetched_at;
    true
}

fn release(s: &mut UrlState, me: u32) {
    if s.lease_pid == me {
        s.lease_pid = 0;
        s.lease_until = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);
    const SEC: u64 = 1000;
    const A: u32 = 100;
    const B: u32 = 200;
    const T0: u64 = 1_000_000;

    fn me(pid: u32) -> Me {
        Me { pid, may_fetch: true }
    }

    fn alive(_: u32) -> bool {
        true
    }

    fn dead(_: u32) -> bool {
        false
    }

    /// A zone holding set 7, fetched at T0, next due an hour later; `local` holds it.
    /// Another process, verifying with set `seq` and wishing for nothing.
    fn holding(seq: u64) -> Local {
        Local { held: seq, wish: None }
    }

    fn settled() -> (UrlState, Local) {
        let mut s = UrlState::default();
        let mut l = Local::default();
        assert!(matches!(
            decide(&mut s, &mut l, T0, HOUR, me(A), alive),
            Step::Fetch { started: T0, .. }
        ));
        let (store, event) = record_success(&mut s, T0, true, T0, 1, HOUR, A);
        assert!(store);
        assert_eq!(event, Event::Updated);
        s.seq = 7;
        l.held = 7;
        (s, l)
    }

    #[test]
    fn success_waits_the_interval() {
        assert_eq!(next_delay(HOUR, 0), HOUR);
    }

    #[test]
    fn failures_back_off_and_cap() {
        assert_eq!(next_delay(HOUR, 1), Duration::from_secs(5));
        assert_eq!(next_delay(HOUR, 2), Duration::from_secs(10));
        assert_eq!(next_delay(HOUR, 7), Duration::from_secs(300));
        assert_eq!(next_delay(HOUR, u32::MAX), Duration::from_secs(300));
        assert_eq!(next_delay(Duration::from_secs(2), 3), Duration::from_secs(2));
    }

    #[test]
    fn an_empty_zone_is_fetched_at_once_by_one_process() {
        let mut s = UrlState::default();
        let (mut a, mut b) = (Local::default(), Local::default());
        assert!(matches!(decide(&mut s, &mut a, T0, HOUR, me(A), alive), Step::Fetch { .. }));
        // B sees the lease and waits (polling), it does not fetch too.
        assert!(matches!(
            decide(&mut s, &mut b, T0 + 10, HOUR, me(B), alive),
            Step::Wait { until } if until <= T0 + 10 + SEC
        ));
    }

    #[test]
    fn one_fetch_per_interval_instance_wide() {
        let (mut s, mut a) = settled();
        let mut b = Local::default();
        assert_eq!(decide(&mut s, &mut b, T0 + 5, HOUR, me(B), alive), Step::Adopt);
        b.held = s.seq;
        for (l, who) in [(&mut a, A), (&mut b, B)] {
            assert!(matches!(
                decide(&mut s, l, T0 + 30 * SEC, HOUR, me(who), alive),
                Step::Wait { .. }
            ));
        }
        let due = T0 + 3600 * SEC;
        assert_eq!(decide(&mut s, &mut b, due, HOUR, me(B), alive), Step::Fetch { started: due });
        assert_eq!(s.last_forced, 0, "a scheduled fetch");
        assert!(matches!(decide(&mut s, &mut a, due + 1, HOUR, me(A), alive), Step::Wait { .. }));
        let (store, event) = record_success(&mut s, due, false, due + 50, 2, HOUR, B);
        assert!(!store && event == Event::Quiet, "same keys: nothing to store");
        assert!(matches!(decide(&mut s, &mut a, due + 60, HOUR, me(A), alive), Step::Wait { .. }));
        assert_eq!(s.fetches_ok, 2);
        assert_eq!(s.lease_pid, 0);
    }

    #[test]
    fn a_lease_whose_holder_died_or_expired_is_taken_over() {
        let mut s = UrlState::default();
        let (mut a, mut b) = (Local::default(), Local::default());
        decide(&mut s, &mut a, T0, HOUR, me(A), alive);
        assert!(matches!(decide(&mut s, &mut b, T0 + 1, HOUR, me(B), dead), Step::Fetch { .. }));
        assert_eq!(s.lease_pid, B);
        let expired = T0 + 1 + ms(LEASE);
        assert!(matches!(decide(&mut s, &mut a, expired, HOUR, me(A), alive), Step::Fetch { .. }));
        assert_eq!(s.lease_pid, A);
    }

    #[test]
    fn unknown_kids_force_one_fetch_per_gap_instance_wide() {
        let (mut s, mut a) = settled();
        let mut b = holding(7);
        let t = T0 + 20 * SEC;
        a.wish = Some(t);
        b.wish = Some(t + 1);
        assert_eq!(decide(&mut s, &mut a, t, HOUR, me(A), alive), Step::Fetch { started: t });
        assert_eq!(s.last_forced, t);
        // B's wish came before A's fetch ended: that fetch answers it.
        assert!(matches!(decide(&mut s, &mut b, t + 2, HOUR, me(B), alive), Step::Wait { .. }));
        record_success(&mut s, t, false, t + 100, 3, HOUR, A);
        assert!(a.wish.is_none());
        // A new wish right after: rate limited until the gap since the last attempt.
        b.wish = Some(t + 200);
        let gap_end = t + ms(FORCED_MIN_GAP);
        assert_eq!(
            decide(&mut s, &mut b, gap_end - 1, HOUR, me(B), alive),
            Step::Wait { until: gap_end }
        );
        assert!(matches!(decide(&mut s, &mut b, gap_end, HOUR, me(B), alive), Step::Fetch { .. }));
        assert_eq!(s.last_forced, gap_end);
    }

    #[test]
    fn a_scheduled_fetch_does_not_delay_the_first_forced_one() {
        let (mut s, mut a) = settled();
        a.wish = Some(T0 + 1);
        assert_eq!(
            decide(&mut s, &mut a, T0 + 1, HOUR, me(A), alive),
            Step::Fetch { started: T0 + 1 }
        );
        assert_eq!(s.last_forced, T0 + 1);
    }

    #[test]
    fn adopting_a_newer_set_drops_the_wish() {
        let (mut s, mut a) = settled();
        let mut b = holding(7);
        let t = T0 + 20 * SEC;
        a.wish = Some(t);
        decide(&mut s, &mut a, t, HOUR, me(A), alive);
        record_success(&mut s, t, true, t + 100, 3, HOUR, A);
        s.seq = 8;
        // B asked before it saw set 8 (its poll had not come yet).
        b.wish = Some(t - 5);
        assert_eq!(decide(&mut s, &mut b, t + 150, HOUR, me(B), alive), Step::Adopt);
        assert_eq!(b.wish, None);
        b.held = 8;
        assert!(matches!(decide(&mut s, &mut b, t + 160, HOUR, me(B), alive), Step::Wait { .. }));
    }

    #[test]
    fn failures_warn_once_back_off_and_recover() {
        let (mut s, mut a) = settled();
        let due = T0 + 3600 * SEC;
        decide(&mut s, &mut a, due, HOUR, me(A), alive);
        assert_eq!(record_failure(&mut s, due, HOUR, A, true), Event::FirstFailure);
        assert_eq!(s.next_due, due + 5 * SEC);
        let t = s.next_due;
        decide(&mut s, &mut a, t, HOUR, me(A), alive);
        assert_eq!(record_failure(&mut s, t, HOUR, A, true), Event::Quiet);
        assert_eq!(s.next_due, t + 10 * SEC);
        let t = s.next_due;
        decide(&mut s, &mut a, t, HOUR, me(A), alive);
        let (store, event) = record_success(&mut s, t, false, t, 9, HOUR, A);
        assert_eq!((store, event), (false, Event::Recovered));
        assert_eq!((s.failures, s.fetches_err), (0, 2));
    }

    #[test]
    fn the_masters_failure_leaves_the_warning_to_a_worker() {
        let mut s = UrlState::default();
        let mut m = Local::default();
        decide(&mut s, &mut m, T0, HOUR, me(A), alive);
        assert_eq!(record_failure(&mut s, T0, HOUR, A, false), Event::Quiet);
        let mut w = Local::default();
        let t = s.next_due;
        assert!(matches!(decide(&mut s, &mut w, t, HOUR, me(B), alive), Step::Fetch { .. }));
        assert_eq!(record_failure(&mut s, t, HOUR, B, true), Event::FirstFailure);
        assert_eq!(s.failures, 2);
    }

    #[test]
    fn an_older_fetch_never_replaces_a_newer_set() {
        let (mut s, _) = settled();
        s.set_started = T0 + 50;
        let (store, _) = record_success(&mut s, T0 + 10, true, T0 + 60, 2, HOUR, A);
        assert!(!store);
        assert_eq!(s.set_started, T0 + 50);
    }

    #[test]
    fn a_saved_set_is_used_only_when_the_zone_has_none() {
        let mut s = UrlState::default();
        assert!(offer_saved(&mut s, 100, T0));
        assert_eq!((s.fetched_at, s.next_due), (100, 0));
        s.seq = 1;
        s.next_due = T0 + 3600 * SEC;
        assert!(!offer_saved(&mut s, 50, T0), "older than the zone's");
        assert!(!offer_saved(&mut s, 200, T0), "even with a later (wall-clock) time");
        assert_eq!(s.next_due, T0 + 3600 * SEC, "the schedule is left alone");
    }

    #[test]
    fn a_worker_of_an_old_configuration_adopts_but_never_fetches() {
        let (mut s, mut a) = settled();
        let old = Me { pid: A, may_fetch: false };
        a.wish = Some(T0 + 1);
        let due = T0 + 3600 * SEC;
        assert!(matches!(decide(&mut s, &mut a, due, HOUR, old, alive), Step::Wait { .. }));
        s.seq = 8;
        assert_eq!(decide(&mut s, &mut a, due, HOUR, old, alive), Step::Adopt);
    }

    #[test]
    fn a_slow_failure_is_not_retried_before_its_backoff() {
        let mut s = UrlState::default();
        let mut l = Local::default();
        let short = Duration::from_secs(1);
        decide(&mut s, &mut l, T0, short, me(A), alive);
        // The fetch took 5 s (a timeout) before it failed.
        let failed = T0 + 5 * SEC;
        record_failure(&mut s, failed, short, A, true);
        assert_eq!(
            decide(&mut s, &mut l, failed + 1, short, me(A), alive),
            Step::Wait { until: failed + SEC }
        );
    }

    #[test]
    fn a_shorter_interval_after_reload_applies_at_once() {
        let (mut s, mut a) = settled();
        let short = Duration::from_secs(1);
        assert!(matches!(
            decide(&mut s, &mut a, T0 + 2 * SEC, short, me(A), alive),
            Step::Fetch { .. }
        ));
        assert_eq!(s.last_forced, 0);
    }
}
