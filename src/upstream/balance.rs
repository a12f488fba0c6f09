//! Choosing a pool member, lock-free: a precomputed weighted schedule for round robin; power of
//! two random choices over in-flight requests or over a peak-EWMA latency cost (the idea of
//! tower's balance module); a consistent-hash ring with virtual nodes, so a member leaving moves
//! only its own share of keys.

use std::cell::Cell;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use http::header::{HeaderMap, COOKIE};
use tokio::time::Instant;

use crate::config::Balance;

/// Virtual nodes per unit of weight on the hash ring: enough for an even spread (about ±10%
/// at this count) while the ring for a few members stays a few KiB.
const VNODES_PER_WEIGHT: usize = 160;

/// How fast the latency estimate forgets: the weight of an old sample halves about every 7 s.
const EWMA_DECAY: Duration = Duration::from_secs(10);

/// What a member's choice may depend on.
pub struct Key<'a> {
    /// The client's address (`ip_hash`).
    pub client: IpAddr,
    /// The request headers (`header_hash`, `cookie`).
    pub headers: &'a HeaderMap,
}

/// Per-member load figures the balancer reads and the pool updates.
#[derive(Debug)]
pub struct Load {
    /// Requests sent and not yet finished.
    pub in_flight: AtomicUsize,
    /// Peak-EWMA of the time to response head, in microseconds (f64 bits).
    ewma_us: AtomicU64,
    /// When `ewma_us` was last updated, in microseconds since `epoch`.
    updated_us: AtomicU64,
    epoch: Instant,
}

impl Default for Load {
    fn default() -> Load {
        Load {
            in_flight: AtomicUsize::new(0),
            ewma_us: AtomicU64::new(0f64.to_bits()),
            updated_us: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }
}

impl Load {
    /// Records one response head after `rtt`: peaks are taken at once, decreases decay.
    pub fn observe(&self, rtt: Duration) {
        let now_us = self.epoch.elapsed().as_micros() as u64;
        let since = now_us.saturating_sub(self.updated_us.swap(now_us, Ordering::Relaxed));
        let old = f64::from_bits(self.ewma_us.load(Ordering::Relaxed));
        let rtt = rtt.as_micros() as f64;
        let new = if rtt >= old {
            rtt
        } else {
            let keep = (-(since as f64) / EWMA_DECAY.as_micros() as f64).exp();
            old * keep + rtt * (1.0 - keep)
        };
        self.ewma_us.store(new.to_bits(), Ordering::Relaxed);
    }

    fn ewma_us(&self) -> f64 {
        f64::from_bits(self.ewma_us.load(Ordering::Relaxed))
    }
}

/// A pool's policy with what it precomputed.
#[derive(Debug)]
pub enum Balancer {
    /// Indices in a smooth weighted order (nginx's interleaving), walked by an atomic counter.
    RoundRobin {
        schedule: Vec<usize>,
        next: AtomicUsize,
    },
    /// Two random choices, fewer in-flight requests per weight wins.
    LeastRequests,
    /// Two random choices, lower latency estimate times (in-flight + 1) per weight wins.
    PeakEwma,
    /// A sorted ring of (hash, member).
    Hash { ring: Vec<(u64, usize)>, on: HashOn },
}

/// What a hashing policy hashes.
#[derive(Debug)]
pub enum HashOn {
    /// The client address.
    Ip,
    /// A header's value.
    Header(http::HeaderName),
    /// A cookie's value.
    Cookie(String),
}

impl Balancer {
    /// Precomputes for `policy` over members with `weights` (labels name them on the ring).
    pub fn new(policy: &Balance, weights: &[u32], labels: &[String]) -> Balancer {
        let ring = |on| {
            let mut ring = Vec::new();
            for (i, (w, label)) in weights.iter().zip(labels).enumerate() {
                for v in 0..(*w as usize * VNODES_PER_WEIGHT) {
                    ring.push((hash(&(label, v)), i));
                }
            }
            ring.sort_unstable();
            Balancer::Hash { ring, on }
        };
        match policy {
            Balance::RoundRobin => Balancer::RoundRobin {
                schedule: smooth_schedule(weights),
                next: AtomicUsize::new(0),
            },
            Balance::LeastRequests => Balancer::LeastRequests,
            Balance::PeakEwma => Balancer::PeakEwma,
            Balance::IpHash => ring(HashOn::Ip),
            Balance::HeaderHash(h) => ring(HashOn::Header(h.clone())),
            Balance::Cookie(c) => ring(HashOn::Cookie(c.clone())),
        }
    }

    /// The member to use among `loads` (same order as the weights given to `new`), among
    /// those `usable` says may take traffic; when none may, among all (fail open).
    ///
    /// Allocates nothing: it runs for every request.
    pub fn pick<L: Loads + ?Sized>(
        &self,
        weights: &[u32],
        loads: &L,
        key: &Key<'_>,
        usable: &dyn Fn(usize) -> bool,
    ) -> usize {
        let n = loads.count();
        if n == 1 {
            return 0;
        }
        // one snapshot of who may take traffic (slots free up concurrently; a draw must not
        // see a member change its mind halfway), as bits for the first 64 members
        let mut mask: u64 = 0;
        for i in 0..n.min(64) {
            if usable(i) {
                mask |= 1 << i;
            }
        }
        let any_usable = mask != 0 || (64..n).any(usable);
        let usable = |i: usize| {
            !any_usable
                || if i < 64 {
                    mask & (1 << i) != 0
                } else {
                    usable(i)
                }
        };
        // an unusable member weighs nothing
        let weights = |i: usize| if usable(i) { weights[i] } else { 0 };
        let loads = |i: usize| loads.load(i);
        match self {
            Balancer::RoundRobin { schedule, next } => {
                for _ in 0..schedule.len() {
                    let i = schedule[next.fetch_add(1, Ordering::Relaxed) % schedule.len()];
                    if usable(i) {
                        return i;
                    }
                }
                0
            }
            Balancer::LeastRequests => p2c(n, weights, |i| {
                loads(i).in_flight.load(Ordering::Relaxed) as f64
            }),
            Balancer::PeakEwma => p2c(n, weights, |i| {
                // unmeasured members look fast, so they get tried
                let ewma = loads(i).ewma_us().max(1.0);
                ewma * (loads(i).in_flight.load(Ordering::Relaxed) + 1) as f64
            }),
            Balancer::Hash { ring, on } => {
                let h = match on {
                    HashOn::Ip => Some(hash(&key.client)),
                    HashOn::Header(name) => key.headers.get(name).map(|v| hash(&v.as_bytes())),
                    HashOn::Cookie(name) => cookie(key.headers, name).map(|v| hash(&v)),
                };
                match h {
                    // the first ring node at or after the key's hash, wrapping around
                    Some(h) => {
                        let at = ring.partition_point(|(node, _)| *node < h);
                        // the next node whose member may take traffic
                        (0..ring.len())
                            .map(|k| ring[(at + k) % ring.len()].1)
                            .find(|&m| usable(m))
                            .unwrap_or(ring[at % ring.len()].1)
                    }
                    // no key (header or cookie absent): any member, by weight
                    None => weighted_random(n, weights),
                }
            }
        }
    }
}

/// Two distinct members drawn by weight; the one with the lower `cost / weight` wins.
fn p2c(n: usize, weights: impl Fn(usize) -> u32, cost: impl Fn(usize) -> f64) -> usize {
    let a = weighted_random(n, &weights);
    let mut b = weighted_random(n, &weights);
    for _ in 0..4 {
        if b != a {
            break;
        }
        b = weighted_random(n, &weights);
    }
    let score = |i: usize| cost(i) / f64::from(weights(i).max(1));
    if score(b) < score(a) {
        b
    } else {
        a
    }
}

/// A member drawn with probability proportional to its weight (`n` members).
fn weighted_random(n: usize, weights: impl Fn(usize) -> u32) -> usize {
    let total: u64 = (0..n).map(|i| u64::from(weights(i))).sum();
    let mut r = random() % total.max(1);
    for i in 0..n {
        let w = u64::from(weights(i));
        if r < w {
            return i;
        }
        r -= w;
    }
    0
}

/// The members' load figures, by index, as the pool holds them.
pub trait Loads {
    /// How many members.
    fn count(&self) -> usize;
    /// Member `i`'s figures.
    fn load(&self, i: usize) -> &Load;
}

impl Loads for [&Load] {
    fn count(&self) -> usize {
        self.len()
    }
    fn load(&self, i: usize) -> &Load {
        self[i]
    }
}

impl<const N: usize> Loads for [&Load; N] {
    fn count(&self) -> usize {
        N
    }
    fn load(&self, i: usize) -> &Load {
        self[i]
    }
}

/// nginx's smooth weighted round robin, unrolled once: weights 5,1,1 give a,a,b,a,c,a,a.
fn smooth_schedule(weights: &[u32]) -> Vec<usize> {
    let total: i64 = weights.iter().map(|w| i64::from(*w)).sum();
    let mut current = vec![0i64; weights.len()];
    (0..total)
        .map(|_| {
            for (c, w) in current.iter_mut().zip(weights) {
                *c += i64::from(*w);
            }
            let best = (0..weights.len())
                .max_by_key(|&i| (current[i], std::cmp::Reverse(i)))
                .unwrap_or(0);
            current[best] -= total;
            best
        })
        .collect()
}

/// The value of cookie `name` in the request's Cookie headers.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then_some(v)
        })
}

/// A stable hash (SipHash with fixed keys): the same key lands on the same member in every
/// usher process, so several instances agree.
fn hash<T: Hash + ?Sized>(v: &T) -> u64 {
    #[allow(deprecated)]
    let mut h = std::hash::SipHasher::new();
    v.hash(&mut h);
    h.finish()
}

thread_local! {
    static RNG: Cell<u64> = Cell::new({
        let seed = (crate::acme::timing::random_unit() * u64::MAX as f64) as u64;
        seed | 1
    });
}

/// xorshift64*: fast, per thread, good enough to spread load (not for secrets).
fn random() -> u64 {
    RNG.with(|s| {
        let mut x = s.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{i}:80")).collect()
    }

    fn counts(
        b: &Balancer,
        weights: &[u32],
        loads: &[&Load],
        rounds: usize,
        key: impl Fn(usize) -> (IpAddr, HeaderMap),
    ) -> Vec<usize> {
        let mut c = vec![0; weights.len()];
        for r in 0..rounds {
            let (client, headers) = key(r);
            c[b.pick(
                weights,
                loads,
                &Key {
                    client,
                    headers: &headers,
                },
                &|_| true,
            )] += 1;
        }
        c
    }

    fn any(_: usize) -> (IpAddr, HeaderMap) {
        ("127.0.0.1".parse().unwrap(), HeaderMap::new())
    }

    #[test]
    fn round_robin_follows_weights_smoothly() {
        assert_eq!(smooth_schedule(&[5, 1, 1]), [0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(smooth_schedule(&[1, 1]), [0, 1]);
        let w = [3, 1];
        let b = Balancer::new(&Balance::RoundRobin, &w, &labels(2));
        let loads = [&Load::default(), &Load::default()];
        assert_eq!(counts(&b, &w, &loads, 400, any), [300, 100]);
    }

    #[test]
    fn least_requests_avoids_the_busy_member() {
        let w = [1, 1, 1];
        let b = Balancer::new(&Balance::LeastRequests, &w, &labels(3));
        let (busy, idle1, idle2) = (Load::default(), Load::default(), Load::default());
        busy.in_flight.store(10, Ordering::Relaxed);
        let c = counts(&b, &w, &[&busy, &idle1, &idle2], 3000, any);
        // the busy one is only chosen when both draws land on it, which p2c avoids
        assert!(c[0] < 100, "{c:?}");
    }

    #[test]
    fn peak_ewma_prefers_the_fast_member() {
        let w = [1, 1, 1];
        let b = Balancer::new(&Balance::PeakEwma, &w, &labels(3));
        let (slow, fast1, fast2) = (Load::default(), Load::default(), Load::default());
        slow.observe(Duration::from_millis(200));
        fast1.observe(Duration::from_millis(2));
        fast2.observe(Duration::from_millis(2));
        let c = counts(&b, &w, &[&slow, &fast1, &fast2], 3000, any);
        assert!(c[0] < 100, "{c:?}");
        // peaks count at once; lower samples decay in
        slow.observe(Duration::from_millis(1));
        assert!(
            slow.ewma_us() > 100_000.0,
            "a single fast sample must not erase a peak"
        );
    }

    #[test]
    fn consistent_hashing_is_sticky_and_moves_only_the_leavers_share() {
        let ip = |r: usize| -> (IpAddr, HeaderMap) {
            (
                format!("192.0.2.{}", r % 250).parse().unwrap(),
                HeaderMap::new(),
            )
        };
        let w4 = [1, 1, 1, 1];
        let four = Balancer::new(&Balance::IpHash, &w4, &labels(4));
        let l = Load::default();
        let loads4 = [&l, &l, &l, &l];
        let picks = || -> Vec<usize> {
            (0..250)
                .map(|r| {
                    let (c, h) = ip(r);
                    let key = Key {
                        client: c,
                        headers: &h,
                    };
                    four.pick(&w4, &loads4, &key, &|_| true)
                })
                .collect()
        };
        let before = picks();
        // the same client always lands on the same member
        assert_eq!(before, picks());
        // drop member 3: only its clients move
        let three = Balancer::new(&Balance::IpHash, &[1, 1, 1], &labels(3));
        let loads3 = [&l, &l, &l];
        for (r, &was) in before.iter().enumerate() {
            let (c, h) = ip(r);
            let now = three.pick(
                &[1, 1, 1],
                &loads3,
                &Key {
                    client: c,
                    headers: &h,
                },
                &|_| true,
            );
            if was != 3 {
                assert_eq!(now, was, "client {r} moved although its member stayed");
            }
        }
        // the spread is even enough
        let per: Vec<usize> = (0..4)
            .map(|m| before.iter().filter(|&&b| b == m).count())
            .collect();
        assert!(per.iter().all(|&n| n > 30), "{per:?}");
    }

    #[test]
    fn unusable_members_are_skipped_and_all_unusable_fails_open() {
        let w = [1, 1, 1];
        let l = Load::default();
        let loads = [&l, &l, &l];
        let key_headers = HeaderMap::new();
        let key = Key {
            client: "127.0.0.1".parse().unwrap(),
            headers: &key_headers,
        };
        for policy in [
            Balance::RoundRobin,
            Balance::LeastRequests,
            Balance::PeakEwma,
            Balance::IpHash,
        ] {
            let b = Balancer::new(&policy, &w, &labels(3));
            for _ in 0..50 {
                assert_ne!(b.pick(&w, &loads, &key, &|i| i != 1), 1, "{policy:?}");
            }
            // nobody usable: still an answer
            assert!(b.pick(&w, &loads, &key, &|_| false) < 3);
        }
    }

    #[test]
    fn header_and_cookie_hashing() {
        let w = [1, 1, 1];
        let l = Load::default();
        let loads = [&l, &l, &l];
        let by_cookie = Balancer::new(&Balance::Cookie("sid".into()), &w, &labels(3));
        let with = |cookie: &str| {
            let mut h = HeaderMap::new();
            h.insert(COOKIE, cookie.parse().unwrap());
            h
        };
        let pick = |b: &Balancer, h: &HeaderMap| {
            b.pick(
                &w,
                &loads,
                &Key {
                    client: "127.0.0.1".parse().unwrap(),
                    headers: h,
                },
                &|_| true,
            )
        };
        let a = pick(&by_cookie, &with("theme=dark; sid=abc"));
        for _ in 0..20 {
            assert_eq!(pick(&by_cookie, &with("sid=abc; other=1")), a);
        }
        assert_eq!(cookie(&with("a=1; sid=xyz"), "sid"), Some("xyz"));
        assert_eq!(cookie(&with("sidx=1"), "sid"), None);
        let by_header = Balancer::new(
            &Balance::HeaderHash(http::HeaderName::from_static("x-user")),
            &w,
            &labels(3),
        );
        let mut h = HeaderMap::new();
        h.insert("x-user", "42".parse().unwrap());
        let first = pick(&by_header, &h);
        assert!((0..20).all(|_| pick(&by_header, &h) == first));
    }
}
