//! When a key-set refresher fetches next. Pure: the caller passes the outcome and the time.

use std::time::{Duration, Instant};

/// First retry after a failed fetch; doubles per consecutive failure.
pub const RETRY_MIN: Duration = Duration::from_secs(5);
/// Failed fetches are retried at least this often, however long the refresh interval.
pub const RETRY_MAX: Duration = Duration::from_secs(300);

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

/// Refreshes forced by tokens with an unknown `kid` happen at most this often per certs URL,
/// so a flood of made-up `kid`s cannot become a flood of fetches.
pub const FORCED_MIN_GAP: Duration = Duration::from_secs(10);

/// When a forced refresh asked for at `now` may run, given when the URL was last fetched.
pub fn forced_due(last_fetch: Option<Instant>, now: Instant) -> Instant {
    match last_fetch {
        Some(last) => now.max(last + FORCED_MIN_GAP),
        None => now,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forced_refreshes_are_rate_limited() {
        let t0 = Instant::now();
        assert_eq!(forced_due(None, t0), t0);
        assert_eq!(
            forced_due(Some(t0), t0 + Duration::from_secs(3)),
            t0 + FORCED_MIN_GAP
        );
        let later = t0 + Duration::from_secs(30);
        assert_eq!(forced_due(Some(t0), later), later);
    }

    const HOUR: Duration = Duration::from_secs(3600);

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
        assert_eq!(
            next_delay(Duration::from_secs(2), 3),
            Duration::from_secs(2)
        );
    }
}
