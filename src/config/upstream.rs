//! `[upstream.NAME]` pools and the `proxy` key of routes.

use std::collections::BTreeMap;

use toml::Spanned;

use super::check::Checker;
use std::time::Duration;

use super::raw::{RawHealth, RawMember, RawProxy, RawUpstream};
use super::{
    parse_upstream, Balance, HealthCheck, PoolMember, ProxyTarget, UpstreamPool, UpstreamProtocol,
};

/// Further attempts on other members, as HAProxy's `retries` and nginx's next-upstream.
const DEFAULT_RETRIES: u32 = 2;
/// Consecutive failures that eject a member (Envoy's consecutive_5xx default is 5).
const DEFAULT_EJECT_AFTER: u32 = 5;
/// First ejection period.
const DEFAULT_EJECT_FOR: std::time::Duration = std::time::Duration::from_secs(10);

/// Most of a pool ejected at once (Envoy's max_ejection_percent is 10; with the two or
/// three members app pools usually have, 10% would never eject anything).
const DEFAULT_MAX_EJECTED_PERCENT: u32 = 50;

/// Requests that may wait for a member under its cap (HAProxy's queue is unbounded by
/// default; a bound keeps memory flat under a flood).
const DEFAULT_QUEUE: u32 = 1024;
/// Longest wait in the queue.
const DEFAULT_QUEUE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Allowed `balance` values, for error messages.
const POLICIES: &str =
    "\"round_robin\", \"least_requests\", \"peak_ewma\", \"ip_hash\", \"header_hash\", \"cookie\"";

impl Checker<'_> {
    pub(super) fn upstreams(
        &mut self,
        raw: &BTreeMap<String, Spanned<RawUpstream>>,
    ) -> BTreeMap<String, UpstreamPool> {
        self.pool_names = raw.keys().cloned().collect();
        raw.iter()
            .map(|(name, u)| (name.clone(), self.pool(&format!("upstream.{name}"), u)))
            .collect()
    }

    fn pool(&mut self, key: &str, raw: &Spanned<RawUpstream>) -> UpstreamPool {
        let span = raw.span();
        let u = raw.get_ref();
        let mut members: Vec<PoolMember> = Vec::new();
        match &u.members {
            None => self.issue(
                Some(span.clone()),
                format!("{key}.members"),
                "missing; list the pool's addresses, like members = [\"127.0.0.1:8000\"]".into(),
            ),
            Some(list) if list.get_ref().is_empty() => self.issue(
                Some(list.span()),
                format!("{key}.members"),
                "empty; a pool needs at least one member".into(),
            ),
            Some(list) => {
                for m in list.get_ref() {
                    let (addr, weight) = match m.get_ref() {
                        RawMember::Addr(a) => (a.as_str(), 1),
                        RawMember::Weighted(w) => (w.addr.as_str(), w.weight.unwrap_or(1)),
                    };
                    let weight = match u32::try_from(weight) {
                        Ok(w) if (1..=1000).contains(&w) => w,
                        _ => {
                            self.issue(
                                Some(m.span()),
                                format!("{key}.members"),
                                format!("weight {weight} of {addr:?} is outside 1..1000"),
                            );
                            1
                        }
                    };
                    match parse_upstream(addr) {
                        Ok(a) => {
                            let addr = self.resolve_unix(a);
                            if members.iter().any(|o| o.addr == addr) {
                                self.issue(
                                    Some(m.span()),
                                    format!("{key}.members"),
                                    format!("{addr} is listed twice; give it a weight instead"),
                                );
                            } else {
                                members.push(PoolMember { addr, weight });
                            }
                        }
                        Err(msg) => self.issue(Some(m.span()), format!("{key}.members"), msg),
                    }
                }
            }
        }
        let only_for =
            |this: &mut Self, v: &Option<Spanned<String>>, name: &str, policy: &str, ok: bool| {
                if let (Some(v), false) = (v, ok) {
                    this.issue(
                        Some(v.span()),
                        format!("{key}.{name}"),
                        format!("{name} only applies to balance = {policy:?}"),
                    );
                }
            };
        let policy = u.balance.as_ref().map(|b| (b.get_ref().as_str(), b.span()));
        let policy_name = policy.as_ref().map_or("peak_ewma", |p| p.0);
        only_for(
            self,
            &u.hash_header,
            "hash_header",
            "header_hash",
            policy_name == "header_hash",
        );
        only_for(
            self,
            &u.hash_cookie,
            "hash_cookie",
            "cookie",
            policy_name == "cookie",
        );
        let balance = match policy {
            None | Some(("peak_ewma", _)) => Balance::PeakEwma,
            Some(("round_robin", _)) => Balance::RoundRobin,
            Some(("least_requests", _)) => Balance::LeastRequests,
            Some(("ip_hash", _)) => Balance::IpHash,
            Some(("header_hash", s)) => match u
                .hash_header
                .as_ref()
                .map(|h| http::HeaderName::from_bytes(h.get_ref().as_bytes()))
            {
                Some(Ok(h)) => Balance::HeaderHash(h),
                Some(Err(_)) => {
                    self.issue(
                        u.hash_header.as_ref().map(|h| h.span()),
                        format!("{key}.hash_header"),
                        "is not a header name".into(),
                    );
                    Balance::PeakEwma
                }
                None => {
                    self.issue(
                        Some(s),
                        format!("{key}.hash_header"),
                        "balance = \"header_hash\" needs hash_header = \"HEADER-NAME\"".into(),
                    );
                    Balance::PeakEwma
                }
            },
            Some(("cookie", s)) => match &u.hash_cookie {
                Some(c) if !c.get_ref().is_empty() => Balance::Cookie(c.get_ref().clone()),
                _ => {
                    self.issue(
                        Some(s),
                        format!("{key}.hash_cookie"),
                        "balance = \"cookie\" needs hash_cookie = \"COOKIE-NAME\"".into(),
                    );
                    Balance::PeakEwma
                }
            },
            Some((other, s)) => {
                self.issue(
                    Some(s),
                    format!("{key}.balance"),
                    format!("{other:?} is not a policy; allowed: {POLICIES}"),
                );
                Balance::PeakEwma
            }
        };
        let count =
            |this: &mut Self, v: &Option<Spanned<i64>>, name: &str, default: u32, max: u32| match v
            {
                None => default,
                Some(n) => match u32::try_from(*n.get_ref()) {
                    Ok(n) if n <= max => n,
                    _ => {
                        this.issue(
                            Some(n.span()),
                            format!("{key}.{name}"),
                            format!("{} is outside 0..{max}", n.get_ref()),
                        );
                        default
                    }
                },
            };
        let retries = count(self, &u.retries, "retries", DEFAULT_RETRIES, 10);
        let eject_after = count(
            self,
            &u.eject_after,
            "eject_after",
            DEFAULT_EJECT_AFTER,
            1000,
        );
        let eject_for = self.duration(&u.eject_for, &format!("{key}.eject_for"), DEFAULT_EJECT_FOR);
        let max_ejected_percent = count(
            self,
            &u.max_ejected_percent,
            "max_ejected_percent",
            DEFAULT_MAX_EJECTED_PERCENT,
            100,
        );
        let protocol = match &u.protocol {
            None => UpstreamProtocol::Http1,
            Some(p) => match p.get_ref().as_str() {
                "http1" => UpstreamProtocol::Http1,
                "h2c" => UpstreamProtocol::H2c,
                other => {
                    self.issue(
                        Some(p.span()),
                        format!("{key}.protocol"),
                        format!("{other:?} is not a protocol; allowed: \"http1\", \"h2c\""),
                    );
                    UpstreamProtocol::Http1
                }
            },
        };
        let health = u
            .health
            .as_ref()
            .map(|h| self.health(&format!("{key}.health"), h));
        let max_conns = match count(self, &u.max_conns, "max_conns", 0, 100_000) {
            0 => None,
            n => Some(n),
        };
        let queue = count(self, &u.queue, "queue", DEFAULT_QUEUE, 1_000_000);
        let queue_timeout = self.duration(
            &u.queue_timeout,
            &format!("{key}.queue_timeout"),
            DEFAULT_QUEUE_TIMEOUT,
        );
        let idle_timeout = u.idle_timeout.as_ref().map(|_| {
            self.duration(
                &u.idle_timeout,
                &format!("{key}.idle_timeout"),
                Duration::from_secs(1),
            )
        });
        UpstreamPool {
            members,
            balance,
            retries,
            eject_after,
            eject_for,
            max_ejected_percent,
            protocol,
            health,
            max_conns,
            idle_timeout,
            queue,
            queue_timeout,
        }
    }

    fn health(&mut self, key: &str, raw: &Spanned<RawHealth>) -> HealthCheck {
        let h = raw.get_ref();
        let path = match &h.path {
            Some(p) if p.get_ref().starts_with('/') => p.get_ref().clone(),
            Some(p) => {
                self.issue(
                    Some(p.span()),
                    format!("{key}.path"),
                    format!("{:?} must start with \"/\"", p.get_ref()),
                );
                "/".into()
            }
            None => {
                self.issue(
                    Some(raw.span()),
                    format!("{key}.path"),
                    "missing; give the path to check, like path = \"/healthz\"".into(),
                );
                "/".into()
            }
        };
        let interval = self.duration(
            &h.interval,
            &format!("{key}.interval"),
            Duration::from_secs(5),
        );
        let timeout = self.duration(
            &h.timeout,
            &format!("{key}.timeout"),
            Duration::from_secs(2),
        );
        let status = match &h.status {
            None => (200, 399),
            Some(s) => {
                let parsed = match s.get_ref().split_once('-') {
                    Some((a, b)) => a.trim().parse().ok().zip(b.trim().parse().ok()),
                    None => s.get_ref().trim().parse().ok().map(|n| (n, n)),
                };
                match parsed {
                    Some((a, b)) if (100..=599).contains(&a) && a <= b && b <= 599 => (a, b),
                    _ => {
                        self.issue(
                            Some(s.span()),
                            format!("{key}.status"),
                            format!(
                                "{:?} is not a status or range like \"200-399\"",
                                s.get_ref()
                            ),
                        );
                        (200, 399)
                    }
                }
            }
        };
        let mut threshold = |v: &Option<Spanned<i64>>, name: &str, default: u32| match v {
            None => default,
            Some(n) => match u32::try_from(*n.get_ref()) {
                Ok(n) if (1..=100).contains(&n) => n,
                _ => {
                    self.issue(
                        Some(n.span()),
                        format!("{key}.{name}"),
                        format!("{} is outside 1..100", n.get_ref()),
                    );
                    default
                }
            },
        };
        // one pass brings a member back, as in nginx, Caddy and Traefik
        let healthy_after = threshold(&h.healthy_after, "healthy_after", 1);
        let unhealthy_after = threshold(&h.unhealthy_after, "unhealthy_after", 3);
        HealthCheck {
            path,
            interval,
            timeout,
            status,
            healthy_after,
            unhealthy_after,
        }
    }

    pub(super) fn proxy_target(&mut self, key: &str, raw: &Spanned<RawProxy>) -> ProxyTarget {
        let span = raw.span();
        match raw.get_ref() {
            RawProxy::Pool(name) => {
                if !self.pool_names.contains(name) {
                    let defined = if self.pool_names.is_empty() {
                        "none; add an [upstream.NAME] table, or list addresses here".to_owned()
                    } else {
                        self.pool_names
                            .iter()
                            .map(|n| format!("{n:?}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    };
                    self.issue(
                        Some(span),
                        format!("{key}.proxy"),
                        format!("unknown upstream {name:?} (defined: {defined})"),
                    );
                }
                ProxyTarget::Pool(name.clone())
            }
            RawProxy::List(list) => {
                if list.is_empty() {
                    self.issue(Some(span.clone()), format!("{key}.proxy"), "empty; list at least one upstream like \"127.0.0.1:8000\" or \"unix:/run/app.sock\", or name an [upstream.NAME] pool".into());
                }
                let mut members = Vec::new();
                for a in list {
                    match parse_upstream(a) {
                        Ok(addr) => members.push(PoolMember {
                            addr: self.resolve_unix(addr),
                            weight: 1,
                        }),
                        Err(msg) => self.issue(Some(span.clone()), format!("{key}.proxy"), msg),
                    }
                }
                ProxyTarget::Inline(UpstreamPool {
                    health: None,
                    max_conns: None,
                    idle_timeout: None,
                    queue: DEFAULT_QUEUE,
                    queue_timeout: DEFAULT_QUEUE_TIMEOUT,
                    retries: DEFAULT_RETRIES,
                    eject_after: DEFAULT_EJECT_AFTER,
                    eject_for: DEFAULT_EJECT_FOR,
                    max_ejected_percent: DEFAULT_MAX_EJECTED_PERCENT,
                    protocol: UpstreamProtocol::Http1,
                    members,
                    balance: Balance::RoundRobin,
                })
            }
        }
    }
}
