//! Metrics for `GET /metrics` on the admin listener, in the Prometheus text format
//! (OpenMetrics 1.0, which Prometheus scrapes), encoded by the prometheus-client crate.
//!
//! Nothing on the request path takes a lock: each route resolves its counters and its
//! histogram once, when routes are compiled (a reload keeps the series of routes that
//! stay), and a request adds to atomics. [`Histo`] is a lock-free histogram (the crate's
//! own takes a mutex per observation). Gauges (connections, pool members, buffers, cache,
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

/// A latency histogram made of atomics; clones share it.
#[derive(Debug, Default, Clone)]
pub struct Histo(Arc<HistoCounts>);

#[derive(Debug, Default)]
struct HistoCounts {
    /// Per bucket (not cumulative), the last one +Inf.
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_ns: AtomicU64,
}

impl Histo {
    /// Counts one observation of `d`.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        self.0.counts[i].fetch_add(1, Ordering::Relaxed);
        self.0
            .sum_ns
            .fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }

    /// (sum in seconds, count, per-bucket counts) as the encoder wants them.
    pub fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let buckets: Vec<(f64, u64)> = BUCKETS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(&self.0.counts)
            .map(|(b, c)| (b, c.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, c)| c).sum();
        let sum = self.0.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        (sum, count, buckets)
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

/// A route, by its site's first name and its path (`-` for requests no route took).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub site: String,
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    site: String,
    route: String,
    status: &'static str,
    proto: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
const PROTOS: [&str; 3] = ["http1.1", "http2", "http1.0"];

/// The counters and the histogram of one route, resolved once.
#[derive(Debug, Default)]
pub struct RouteMetrics {
    /// By status class, then protocol.
    requests: [[Counter; 3]; 5],
    duration: Histo,
    sent: Counter,
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
        self.requests[class][proto].inc();
        self.duration.observe(took);
        self.sent.inc_by(bytes);
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
    requests: Family<RequestLabels, Counter>,
    duration: Family<RouteLabels, Histo>,
    sent: Family<RouteLabels, Counter>,
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
        let requests = Family::<RequestLabels, Counter>::default();
        let duration = Family::<RouteLabels, Histo>::default();
        let sent = Family::<RouteLabels, Counter>::default();
        let handshakes = Family::<ResultLabels, Counter>::default();
        let received = Counter::default();
        let cert_failures = Counter::default();
        registry.register(
            "certificate_order_failures",
            "Failed ACME certificate orders (each is retried with backoff)",
            cert_failures.clone(),
        );
        registry.register(
            "requests",
            "Requests answered, by site, route, status class and protocol",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from a request's arrival until its response was sent (or the client left)",
            duration.clone(),
        );
        registry.register(
            "response_body_bytes",
            "Response body bytes sent to clients",
            sent.clone(),
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
            requests,
            duration,
            sent,
            unrouted: Arc::default(),
            received,
            cert_failures,
        };
        m.unrouted = m.route("-", "-");
        m
    }

    /// The handles of the route `path` of the site named `site` (the same series as
    /// before a reload, when the route stays).
    pub fn route(&self, site: &str, path: &str) -> Arc<RouteMetrics> {
        let labels = RouteLabels {
            site: site.to_owned(),
            route: path.to_owned(),
        };
        let requests = CLASSES.map(|status| {
            PROTOS.map(|proto| {
                self.requests
                    .get_or_create(&RequestLabels {
                        site: labels.site.clone(),
                        route: labels.route.clone(),
                        status,
                        proto,
                    })
                    .clone()
            })
        });
        Arc::new(RouteMetrics {
            requests,
            duration: self.duration.get_or_create(&labels).clone(),
            sent: self.sent.get_or_create(&labels).clone(),
        })
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
