//! When to renew and when to retry: pure functions, so the rules are unit-tested without a CA.

use std::time::{Duration, SystemTime};

/// Lifetimes shorter than this renew at half their life instead of a third: a 6-day
/// certificate renewed 2 days before expiry leaves too little room for a CA outage.
const SHORT_LIFETIME: Duration = Duration::from_secs(10 * 24 * 3600);

/// Up to this share of the lifetime is taken off the renewal time at random, so names issued
/// together do not all renew in the same second.
const JITTER_SHARE: f64 = 0.05;

/// When to renew a certificate valid from `not_before` to `not_after`, without ARI: when a
/// third of its lifetime remains (half for lifetimes under 10 days), moved earlier by up to 5%
/// of the lifetime by `random` (uniform in 0..1).
pub fn renew_at(not_before: SystemTime, not_after: SystemTime, random: f64) -> SystemTime {
    let lifetime = not_after.duration_since(not_before).unwrap_or_default();
    let remaining = if lifetime < SHORT_LIFETIME {
        lifetime / 2
    } else {
        lifetime / 3
    };
    let jitter = lifetime.mul_f64(JITTER_SHARE * random.clamp(0.0, 1.0));
    not_after - remaining - jitter
}

/// When to renew inside a CA's ARI window (RFC 9773 section 4.2): a uniformly random point of
/// the window, or now if the window has begun; a window that ended is treated as "now".
pub fn ari_pick(start: SystemTime, end: SystemTime, now: SystemTime, random: f64) -> SystemTime {
    if start <= now || end <= start {
        return now;
    }
    let span = end.duration_since(start).unwrap_or_default();
    start + span.mul_f64(random.clamp(0.0, 1.0))
}

/// The wait before attempt `failures + 1`: `initial` doubled per failure, capped at `max`, and
/// never shorter than what the CA asked for with Retry-After (itself capped at a day).
pub fn backoff(
    failures: u32,
    initial: Duration,
    max: Duration,
    retry_after: Option<Duration>,
) -> Duration {
    let exp = failures.saturating_sub(1).min(30);
    let wait = initial.saturating_mul(1u32 << exp).min(max);
    match retry_after {
        Some(ra) => wait.max(ra.min(Duration::from_secs(24 * 3600))),
        None => wait,
    }
}

/// A number in 0..1 from the system's secure random source (for jitter only).
pub fn random_unit() -> f64 {
    let mut b = [0u8; 8];
    let _ = rustls::crypto::aws_lc_rs::default_provider()
        .secure_random
        .fill(&mut b);
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn t(days: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + DAY * days as u32
    }

    #[test]
    fn a_third_of_the_lifetime_remains_for_long_certificates() {
        // 90 days: renew 30 days before expiry, jitter moves it up to 4.5 days earlier
        assert_eq!(renew_at(t(0), t(90), 0.0), t(60));
        assert_eq!(renew_at(t(0), t(90), 1.0), t(60) - DAY * 9 / 2);
        assert!(renew_at(t(0), t(90), 0.5) < t(60));
    }

    #[test]
    fn half_the_lifetime_remains_for_short_certificates() {
        assert_eq!(renew_at(t(0), t(6), 0.0), t(3));
        let minute = Duration::from_secs(60);
        let nb = SystemTime::UNIX_EPOCH;
        assert_eq!(renew_at(nb, nb + minute, 0.0), nb + minute / 2);
    }

    #[test]
    fn ari_window() {
        // a future window: a point inside it
        assert_eq!(ari_pick(t(10), t(12), t(1), 0.0), t(10));
        assert_eq!(ari_pick(t(10), t(12), t(1), 0.5), t(11));
        assert_eq!(ari_pick(t(10), t(12), t(1), 1.0), t(12));
        // a window that began (or ended, or is empty): now
        assert_eq!(ari_pick(t(10), t(12), t(11), 0.9), t(11));
        assert_eq!(ari_pick(t(10), t(12), t(20), 0.9), t(20));
        assert_eq!(ari_pick(t(12), t(10), t(1), 0.5), t(1));
    }

    #[test]
    fn backoff_doubles_caps_and_honours_retry_after() {
        let (i, m) = (Duration::from_secs(60), Duration::from_secs(3600));
        assert_eq!(backoff(1, i, m, None), i);
        assert_eq!(backoff(2, i, m, None), i * 2);
        assert_eq!(backoff(4, i, m, None), i * 8);
        assert_eq!(backoff(10, i, m, None), m);
        assert_eq!(backoff(100, i, m, None), m);
        assert_eq!(
            backoff(1, i, m, Some(Duration::from_secs(600))),
            Duration::from_secs(600)
        );
        assert_eq!(backoff(1, i, m, Some(DAY * 9)), DAY);
    }

    #[test]
    fn random_is_a_unit_fraction() {
        for _ in 0..100 {
            let r = random_unit();
            assert!((0.0..1.0).contains(&r));
        }
    }
}
