//! Per-client-address request rate limits: a token bucket per IP address (`rate_per_ip`
//! requests a second, bursts up to `rate_burst`), answered with 429 and Retry-After. Off by
//! default; when off it costs nothing per request.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::Mutex;

use tokio::time::Instant;

/// Locks are split by address so concurrent clients rarely wait on each other.
const SHARDS: usize = 16;
/// A shard with more addresses than this drops the ones whose bucket is full again, at
/// most once a second (so a flood of new addresses cannot make every request a sweep).
const PRUNE_AT: usize = 4096;
/// A shard still this full after a sweep starts over: a flood of addresses (rotating IPv6
/// sources) costs them their buckets, never usher its memory.
const HARD_CAP: usize = 65536;

/// Token buckets by client address.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    hasher: RandomState,
    shards: Vec<Mutex<Shard>>,
    epoch: Instant,
}

#[derive(Debug, Default)]
struct Shard {
    buckets: HashMap<IpAddr, Bucket>,
    /// Seconds since `epoch` at the last sweep.
    swept: f64,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    /// Seconds since `epoch` at the last refill.
    at: f64,
}

impl RateLimiter {
    /// `rate` requests a second per address, bursts of up to `burst`; `None` when `rate` is 0.
    pub fn new(rate: u32, burst: u32) -> Option<RateLimiter> {
        (rate > 0).then(|| RateLimiter {
            rate: f64::from(rate),
            burst: f64::from(burst.max(1)),
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            epoch: Instant::now(),
        })
    }

    /// Whether it allows `rate` a second with bursts of `burst` (as [`RateLimiter::new`]).
    pub fn is(&self, rate: u32, burst: u32) -> bool {
        self.rate == f64::from(rate) && self.burst == f64::from(burst.max(1))
    }

    /// Takes one request from `ip`'s bucket; when it is empty, the whole seconds until the
    /// next token (for Retry-After).
    pub fn check(&self, ip: IpAddr) -> Result<(), u64> {
        self.check_at(ip, self.epoch.elapsed().as_secs_f64())
    }

    fn check_at(&self, ip: IpAddr, now: f64) -> Result<(), u64> {
        let shard = &self.shards[self.hasher.hash_one(ip) as usize % SHARDS];
        let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
        if shard.buckets.len() > PRUNE_AT && now - shard.swept >= 1.0 {
            let (rate, burst) = (self.rate, self.burst);
            shard.swept = now;
            shard
                .buckets
                .retain(|_, b| b.tokens + (now - b.at) * rate < burst);
        }
        if shard.buckets.len() > HARD_CAP {
            shard.buckets.clear();
        }
        let b = shard.buckets.entry(ip).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        b.tokens = (b.tokens + (now - b.at) * self.rate).min(self.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - b.tokens) / self.rate).ceil().max(1.0) as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate() {
        let l = RateLimiter::new(2, 4).unwrap();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..4 {
            assert_eq!(l.check_at(ip, 0.0), Ok(()));
        }
        assert_eq!(l.check_at(ip, 0.0), Err(1));
        // half a second gives one token back at 2/s
        assert_eq!(l.check_at(ip, 0.5), Ok(()));
        assert!(l.check_at(ip, 0.5).is_err());
        // other addresses have their own buckets
        assert_eq!(l.check_at("192.0.2.2".parse().unwrap(), 0.5), Ok(()));
        assert!(RateLimiter::new(0, 10).is_none());
    }

    #[test]
    fn idle_addresses_are_forgotten() {
        let l = RateLimiter::new(100, 100).unwrap();
        for i in 0..(SHARDS * PRUNE_AT * 2) as u32 {
            let ip = IpAddr::from(i.to_be_bytes());
            l.check_at(ip, f64::from(i) / 1000.0).unwrap();
        }
        let held: usize = l
            .shards
            .iter()
            .map(|s| s.lock().unwrap().buckets.len())
            .sum();
        assert!(held <= SHARDS * (PRUNE_AT + 1000), "{held} addresses held");
    }
}
