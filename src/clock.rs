//! Cheap readings of the clock, for bookkeeping that needs milliseconds, not nanoseconds:
//! when a connection last moved, when a pooled upstream connection expires, the Date header.
//!
//! A request read the clock 9 times (a static file from memory) to 15 times (proxied), and a
//! precise reading costs 19 ns on this project's test machine (the timestamp counter, read
//! through the vDSO), 1.3% of usher's CPU per static request. The kernel's coarse clocks are
//! the time of its last tick, read without the counter: 4.5 ns. They lag by up to a tick or
//! so (1 to 10 ms, with the kernel's HZ), which no timeout of usher's can tell. What a client or
//! an operator sees to the microsecond (a request's duration, an upstream's latency) still
//! reads `Instant::now`.
//!
//! (tokio's `Instant`, which the timers take, is `std`'s.)

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::time::{clock_getres, clock_gettime, ClockId};
use tokio::time::Instant;

/// `Instant` reads CLOCK_MONOTONIC; its coarse reading is an offset from a base
/// taken from both together.
struct Base {
    instant: Instant,
    coarse: Duration,
}

static BASE: OnceLock<Base> = OnceLock::new();

fn base() -> Base {
    let tick = clock_getres(ClockId::CLOCK_MONOTONIC_COARSE)
        .map(Duration::from)
        .unwrap_or(Duration::from_millis(10));
    // The precise reading first: the coarse one after it is no earlier (less its lag, under a
    // tick). Placed two ticks back, a later coarse reading cannot map to a time ahead of the
    // precise clock; it is up to three ticks behind, and the time between the two readings
    // (taken again if a preemption made that long).
    let (mut now, mut coarse) = (Instant::now(), coarse_mono().unwrap_or_default());
    for _ in 0..3 {
        if now.elapsed() < Duration::from_millis(1) {
            break;
        }
        (now, coarse) = (Instant::now(), coarse_mono().unwrap_or_default());
    }
    Base {
        instant: now.checked_sub(tick * 2).unwrap_or(now),
        coarse,
    }
}

fn coarse_mono() -> Option<Duration> {
    clock_gettime(ClockId::CLOCK_MONOTONIC_COARSE)
        .ok()
        .map(Duration::from)
}

/// Now, up to three kernel ticks (a tick is 1 to 10 ms) behind `Instant::now()`, not ahead.
pub fn coarse_now() -> Instant {
    let base = BASE.get_or_init(base);
    match coarse_mono() {
        Some(c) => base.instant + c.saturating_sub(base.coarse),
        None => Instant::now(),
    }
}

/// The wall-clock time, a tick or two behind: for what HTTP counts in whole seconds (the
/// Date header, a cached response's age and freshness).
pub fn coarse_wall() -> SystemTime {
    match clock_gettime(ClockId::CLOCK_REALTIME_COARSE) {
        // (before 1970 is no time to serve HTTP in: the precise clock says what it says)
        Ok(t) if t.tv_sec() >= 0 => UNIX_EPOCH + Duration::from(t),
        _ => SystemTime::now(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coarse_time_is_not_ahead_and_a_few_ticks_behind_at_most() {
        let tick = clock_getres(ClockId::CLOCK_MONOTONIC_COARSE)
            .map(Duration::from)
            .unwrap();
        // (three ticks, and room for a virtual machine whose CPU the host holds back: the
        // kernel's tick is late then)
        let behind = (tick * 3 + Duration::from_millis(1)).max(Duration::from_millis(50));
        for _ in 0..10_000 {
            let before = Instant::now();
            let coarse = coarse_now();
            let after = Instant::now();
            assert!(coarse <= after, "ahead by {:?}", coarse - after);
            assert!(
                before.saturating_duration_since(coarse) <= behind,
                "behind by {:?} (tick {tick:?})",
                before - coarse
            );
        }
    }

    #[test]
    fn coarse_wall_time_follows_the_wall_clock() {
        let tick = clock_getres(ClockId::CLOCK_REALTIME_COARSE)
            .map(Duration::from)
            .unwrap();
        let before = SystemTime::now();
        let coarse = coarse_wall();
        let after = SystemTime::now();
        assert!(coarse <= after, "ahead");
        // (with a tick's slack, as above)
        assert!(coarse + tick * 2 >= before, "behind by more than two ticks");
    }
}
