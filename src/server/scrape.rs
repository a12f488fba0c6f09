//! What `/metrics` reads from the running server when it is scraped: connections, the
//! config generation, pools and their members, buffers, the cache and certificates.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use std::sync::atomic::Ordering;
use std::sync::{OnceLock, Weak};

use super::reload::Core;

/// The collector; it holds the server weakly (the server holds the registry).
#[derive(Debug)]
pub struct Scrape(pub std::sync::Arc<OnceLock<Weak<Core>>>);

/// One unlabelled value.
fn single(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    v: u64,
) -> Result<(), std::fmt::Error> {
    value(e.encode_descriptor(name, help, None, kind)?, kind, v)
}

/// Writes `v` as a counter or a gauge, as `kind` says.
fn value(mut m: MetricEncoder, kind: MetricType, v: u64) -> Result<(), std::fmt::Error> {
    match kind {
        MetricType::Counter => m.encode_counter::<NoLabelSet, _, u64>(&v, None),
        _ => m.encode_gauge(&(v as i64)),
    }
}

impl Collector for Scrape {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(core) = self.0.get().and_then(Weak::upgrade) else {
            return Ok(());
        };
        let shared = &core.shared;
        let live = shared.live.load();
        single(
            &mut e,
            "connections_open",
            "Open client connections",
            MetricType::Gauge,
            shared.caps.open.load(Ordering::Relaxed) as u64,
        )?;
        single(
            &mut e,
            "connections_parked",
            "Idle HTTP/1.1 client connections parked: holding their socket and TLS session only",
            MetricType::Gauge,
            shared.caps.parked.load(Ordering::Relaxed) as u64,
        )?;
        let status = core.status();
        if let Some(s) = status.as_ref() {
            single(
                &mut e,
                "config_generation",
                "The running config: 1 at start, +1 for each reload that took",
                MetricType::Gauge,
                s.generation,
            )?;
            single(
                &mut e,
                "config_last_reload_failed",
                "1 when the last reload failed (the running config stayed)",
                MetricType::Gauge,
                u64::from(s.failed.is_some()),
            )?;
        }

        // pools and members
        let pools = live.proxy.routes().pools();
        let snaps: Vec<_> = pools.iter().map(|p| (p.name(), p.snapshot())).collect();
        // (families only with series: some parsers refuse an empty one)
        if !pools.is_empty() {
            let per_member = |e: &mut DescriptorEncoder,
                              name: &str,
                              help: &str,
                              f: &dyn Fn(&crate::upstream::MemberSnapshot) -> u64|
             -> Result<(), std::fmt::Error> {
                let mut d = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
                for (pool, s) in &snaps {
                    for m in &s.members {
                        let labels = [("pool", *pool), ("member", &*m.addr)];
                        value(d.encode_family(&labels)?, MetricType::Gauge, f(m))?;
                    }
                }
                Ok(())
            };
            per_member(
                &mut e,
                "upstream_member_up",
                "1 when a member takes requests (passing health checks, not ejected)",
                &|m| u64::from(m.healthy && !m.ejected),
            )?;
            per_member(
                &mut e,
                "upstream_member_in_flight",
                "Requests sent to a member and not finished",
                &|m| m.in_flight as u64,
            )?;
            let per_pool = |e: &mut DescriptorEncoder,
                            name: &str,
                            help: &str,
                            kind: MetricType,
                            f: &dyn Fn(&crate::upstream::PoolSnapshot) -> u64|
             -> Result<(), std::fmt::Error> {
                let mut d = e.encode_descriptor(name, help, None, kind)?;
                for (pool, s) in &snaps {
                    let labels = [("pool", *pool)];
                    value(d.encode_family(&labels)?, kind, f(s))?;
                }
                Ok(())
            };
            per_pool(
                &mut e,
                "upstream_queue_depth",
                "Requests waiting for a free slot of a pool with max_conns",
                MetricType::Gauge,
                &|s| s.queued as u64,
            )?;
            per_pool(
                &mut e,
                "upstream_retries",
                "Requests sent again, to another member or on a new connection",
                MetricType::Counter,
                &|s| s.retried,
            )?;
            per_pool(
                &mut e,
                "upstream_ejections",
                "Members ejected after consecutive failures",
                MetricType::Counter,
                &|s| s.ejections,
            )?;
            let mut latency = e.encode_descriptor(
                "upstream_response_seconds",
                "Time from sending a request upstream to its response head",
                None,
                MetricType::Histogram,
            )?;
            for p in pools {
                p.latency()
                    .encode(latency.encode_family(&[("pool", p.name())])?)?;
            }
        }

        // buffers
        let buffers = live.proxy.buffers();
        single(
            &mut e,
            "buffer_memory_bytes",
            "Memory holding request and response bodies for slow clients and apps",
            MetricType::Gauge,
            buffers.memory_used() as u64,
        )?;
        single(
            &mut e,
            "buffer_temp_files",
            "Temporary files made for bodies over the memory limits",
            MetricType::Counter,
            buffers.files_made(),
        )?;

        // cache
        if let Some(cache) = live.proxy.cache() {
            let st = cache.stats();
            let mut lookups = e.encode_descriptor(
                "cache_lookups",
                "Cache lookups, by result (hit, miss, stale: a stale entry served)",
                None,
                MetricType::Counter,
            )?;
            for (result, v) in [("hit", st.hits), ("miss", st.misses), ("stale", st.stale)] {
                value(
                    lookups.encode_family(&[("result", result)])?,
                    MetricType::Counter,
                    v,
                )?;
            }
            single(
                &mut e,
                "cache_entries",
                "Entries in the memory tier",
                MetricType::Gauge,
                st.entries,
            )?;
            single(
                &mut e,
                "cache_memory_bytes",
                "Bytes the memory tier holds",
                MetricType::Gauge,
                st.bytes,
            )?;
            if let Some(d) = st.disk_bytes {
                single(
                    &mut e,
                    "cache_disk_bytes",
                    "Bytes of the disk tier's files",
                    MetricType::Gauge,
                    d,
                )?;
            }
        }

        // certificates
        let expiries = core
            .certs
            .load_full()
            .map(|c| c.expiries())
            .unwrap_or_default();
        if expiries.iter().any(|(_, at)| at.is_some()) {
            let mut expiry = e.encode_descriptor(
                "certificate_expiry_timestamp_seconds",
                "When each TLS site's certificate expires (Unix time)",
                None,
                MetricType::Gauge,
            )?;
            for (site, at) in expiries {
                if let Some(at) = at {
                    expiry
                        .encode_family(&[("site", site.as_str())])?
                        .encode_gauge(&(crate::acme::stored::secs(at) as i64))?;
                }
            }
        }
        Ok(())
    }
}
