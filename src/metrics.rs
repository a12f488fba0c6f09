//! Metrics for `GET /metrics` on the admin listener, in the Prometheus text format
//! (OpenMetrics 1.0, which Prometheus scrapes), encoded by the prometheus-client crate.
//!
//! Nothing on the request path takes a lock: each route resolves its counters and its
//! histogram once, when routes are compiled (a reload keeps the series of routes that
//! stay), and a request adds to atomics of its thread's shard, summed when scraped (the
//! crate's own counters share one cache line between cores, and its histogram takes a
//! mutex per observation). Gauges (connections, pool members, buffers, cache,
//! certificates) are read from the running server when scraped, by a collector the server
//! registers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{StatusCode, Version};
use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

/// Upper bounds of the latency buckets, in seconds (then +Inf).
pub const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// Counters are kept per thread in this many shards (summed when scraped): two threads
/// adding to one cache line slow each other down, measurably at 50,000 requests a second.
const SHARDS: usize = 8;

/// The calling thread's shard.
fn shard() -> usize {
    use std::sync::atomic::AtomicUsize;
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    SHARD.with(|s| *s)
}

/// One thread's share of a histogram, on cache lines of its own.
#[derive(Debug, Default)]
#[repr(align(128))]
struct HistoShard {
    /// Per bucket (not cumulative), the last one +Inf.
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_ns: AtomicU64,
}

/// A latency histogram made of per-thread atomics; clones share it.
#[derive(Debug, Clone)]
pub struct Histo(Arc<[HistoShard]>);

impl Default for Histo {
    fn default() -> Histo {
        Histo((0..SHARDS).map(|_| HistoShard::default()).collect())
    }
}

impl Histo {
    /// Counts one observation of `d`.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        let s = &self.0[shard()];
        s.counts[i].fetch_add(1, Ordering::Relaxed);
        s.sum_ns.fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }

    /// (sum in seconds, count, per-bucket counts) as the encoder wants them.
    pub fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let buckets: Vec<(f64, u64)> = BUCKETS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .enumerate()
            .map(|(i, b)| {
                let n = self
                    .0
                    .iter()
                    .map(|s| s.counts[i].load(Ordering::Relaxed))
                    .sum();
                (b, n)
            })
            .collect();
        let count = buckets.iter().map(|(_, c)| c).sum();
        let sum_ns: u64 = self
            .0
            .iter()
            .map(|s| s.sum_ns.load(Ordering::Relaxed))
            .sum();
        (sum_ns as f64 / 1e9, count, buckets)
    }

    /// Writes it with `encoder`.
    pub fn encode_to(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let (sum, count, buckets) = self.snapshot();
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }
}

impl TypedMetric for Histo {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Histo {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        self.encode_to(encoder)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
const PROTOS: [&str; 3] = ["http1.1", "http2", "http1.0"];

/// One thread's share of a route's counters.
#[derive(Debug, Default)]
#[repr(align(128))]
struct RouteShard {
    /// By status class, then protocol.
    requests: [[AtomicU64; 3]; 5],
    bytes: AtomicU64,
}

/// The counters and the histogram of one route, resolved once.
#[derive(Debug)]
pub struct RouteMetrics {
    counts: Box<[RouteShard]>,
    duration: Histo,
}

impl Default for RouteMetrics {
    fn default() -> RouteMetrics {
        RouteMetrics {
            counts: (0..SHARDS).map(|_| RouteShard::default()).collect(),
            duration: Histo::default(),
        }
    }
}

impl RouteMetrics {
    /// Counts a finished request.
    pub fn record(&self, status: StatusCode, version: Version, took: Duration, bytes: u64) {
        let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        let proto = match version {
            Version::HTTP_2 => 1,
            Version::HTTP_10 | Version::HTTP_09 => 2,
            _ => 0,
        };
        let s = &self.counts[shard()];
        s.requests[class][proto].fetch_add(1, Ordering::Relaxed);
        s.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.duration.observe(took);
    }

    fn requests(&self, class: usize, proto: usize) -> u64 {
        self.counts
            .iter()
            .map(|s| s.requests[class][proto].load(Ordering::Relaxed))
            .sum()
    }

    fn bytes(&self) -> u64 {
        self.counts
            .iter()
            .map(|s| s.bytes.load(Ordering::Relaxed))
            .sum()
    }
}

/// Every route's metrics, by site and route (kept across reloads).
type RouteTable = std::sync::Mutex<std::collections::HashMap<(String, String), Arc<RouteMetrics>>>;

/// Encodes the routes' series when scraped.
#[derive(Debug)]
struct RouteCollector(Arc<RouteTable>);

impl prometheus_client::collector::Collector for RouteCollector {
    fn encode(
        &self,
        mut e: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        let mut routes: Vec<(String, String, Arc<RouteMetrics>)> = self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|((site, route), m)| (site.clone(), route.clone(), m.clone()))
            .collect();
        routes.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        // a series appears with its first request (and the family with its first series)
        let mut counted = Vec::new();
        for (site, route, m) in &routes {
            for (c, status) in CLASSES.iter().enumerate() {
                for (p, proto) in PROTOS.iter().enumerate() {
                    let n = m.requests(c, p);
                    if n > 0 {
                        counted.push((site, route, *status, *proto, n));
                    }
                }
            }
        }
        if !counted.is_empty() {
            let mut d = e.encode_descriptor(
                "requests",
                "Requests answered, by site, route, status class and protocol",
                None,
                MetricType::Counter,
            )?;
            for (site, route, status, proto, n) in counted {
                let labels = [
                    ("site", site.as_str()),
                    ("route", route.as_str()),
                    ("status", status),
                    ("proto", proto),
                ];
                d.encode_family(&labels)?
                    .encode_counter::<NoLabelSet, u64, u64>(&n, None)?;
            }
        }
        let mut d = e.encode_descriptor(
            "request_duration_seconds",
            "Time from a request's arrival until its response was sent (or the client left)",
            None,
            MetricType::Histogram,
        )?;
        for (site, route, m) in &routes {
            let labels = [("site", site.as_str()), ("route", route.as_str())];
            m.duration.encode_to(d.encode_family(&labels)?)?;
        }
        let mut d = e.encode_descriptor(
            "response_body_bytes",
            "Response body bytes sent to clients",
            None,
            MetricType::Counter,
        )?;
        for (site, route, m) in &routes {
            let labels = [("site", site.as_str()), ("route", route.as_str())];
            d.encode_family(&labels)?
                .encode_counter::<NoLabelSet, u64, u64>(&m.bytes(), None)?;
        }
        Ok(())
    }
}

/// TLS handshakes by result.
#[derive(Debug)]
pub struct Handshakes {
    pub ok: Counter,
    pub failed: Counter,
    pub timed_out: Counter,
}

/// Every metric that requests add to, and the registry that encodes them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    routes: Arc<RouteTable>,
    /// For requests that reached no route.
    pub unrouted: Arc<RouteMetrics>,
    pub handshakes: Handshakes,
    /// Bytes read from clients (counted when each connection closes).
    pub received: Counter,
    /// Failed ACME certificate orders.
    pub cert_failures: Counter,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("usher");
        let routes: Arc<RouteTable> = Arc::default();
        registry.register_collector(Box::new(RouteCollector(routes.clone())));
        let handshakes = Family::<ResultLabels, Counter>::default();
        let received = Counter::default();
        let cert_failures = Counter::default();
        registry.register(
            "certificate_order_failures",
            "Failed ACME certificate orders (each is retried with backoff)",
            cert_failures.clone(),
        );
        registry.register(
            "tls_handshakes",
            "TLS handshakes, by result (ok, failed, timeout)",
            handshakes.clone(),
        );
        registry.register(
            "client_received_bytes",
            "Bytes read from clients, counted as each connection closes",
            received.clone(),
        );
        let result = |r: &'static str| {
            handshakes
                .get_or_create(&ResultLabels { result: r })
                .clone()
        };
        let mut m = Metrics {
            handshakes: Handshakes {
                ok: result("ok"),
                failed: result("failed"),
                timed_out: result("timeout"),
            },
            registry,
            routes,
            unrouted: Arc::default(),
            received,
            cert_failures,
        };
        m.unrouted = m.route("-", "-");
        m
    }

    /// The metrics of the route `path` of the site named `site`: the same as before a
    /// reload, when the route stays.
    pub fn route(&self, site: &str, path: &str) -> Arc<RouteMetrics> {
        self.routes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((site.to_owned(), path.to_owned()))
            .or_default()
            .clone()
    }

    /// Adds the collector of what is read at scrape time.
    pub fn register_collector(&mut self, c: Box<dyn prometheus_client::collector::Collector>) {
        self.registry.register_collector(c);
    }

    /// Everything, in the text format.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(16 << 10);
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}
