//! Converting the raw serde structs into a validated [`Config`], collecting every issue.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::StatusCode;
use toml::Spanned;

use super::raw::{self, RawConfig, RawRoute, RawSite};
use super::units::{parse_duration, parse_size};
use super::*;
use crate::error::ConfigIssue;

/// Collects issues while converting raw structs into domain types.
pub(super) struct Checker<'a> {
    pub(super) text: &'a str,
    pub(super) base: PathBuf,
    pub(super) issues: Vec<ConfigIssue>,
    /// Names of the `[upstream.NAME]` pools, for routes that refer to them.
    pub(super) pool_names: Vec<String>,
    /// `limits.max_body_size`, the default of every proxy route.
    pub(super) max_body_size: u64,
}

impl Checker<'_> {
    pub(super) fn line_col(&self, offset: usize) -> (usize, usize) {
        let before = &self.text[..offset.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        (line, col)
    }

    pub(super) fn issue(
        &mut self,
        span: Option<Range<usize>>,
        key: impl Into<String>,
        message: String,
    ) {
        let line_col = span.map(|s| self.line_col(s.start));
        self.issues.push(ConfigIssue {
            line_col,
            key: key.into(),
            message,
        });
    }

    fn path(&self, p: &str) -> PathBuf {
        self.base.join(p)
    }

    pub(super) fn duration(
        &mut self,
        v: &Option<Spanned<String>>,
        key: &str,
        default: Duration,
    ) -> Duration {
        let Some(v) = v else { return default };
        parse_duration(v.get_ref()).unwrap_or_else(|msg| {
            self.issue(Some(v.span()), key, msg);
            default
        })
    }

    /// `duration`, where zero ("0s") is allowed too.
    fn duration_or_zero(
        &mut self,
        v: &Option<Spanned<String>>,
        key: &str,
        default: Duration,
    ) -> Duration {
        match v {
            Some(t)
                if t.get_ref().starts_with('0')
                    && t.get_ref()
                        .trim_start_matches('0')
                        .chars()
                        .all(|c| c.is_ascii_alphabetic()) =>
            {
                Duration::ZERO
            }
            _ => self.duration(v, key, default),
        }
    }

    fn listener(
        &mut self,
        v: &Option<Spanned<String>>,
        key: &str,
        default: &str,
    ) -> Option<SocketAddr> {
        let (text, span) = match v {
            Some(v) => (v.get_ref().as_str(), Some(v.span())),
            None => (default, None),
        };
        if text == "off" {
            return None;
        }
        match text.parse() {
            Ok(a) => Some(a),
            Err(_) => {
                self.issue(span, key, format!("{text:?} is not an address; write it like \"0.0.0.0:443\", \"[::]:443\", or \"off\""));
                None
            }
        }
    }

    pub(super) fn config(&mut self, raw: RawConfig, path: &Path) -> Config {
        let s = &raw.server;
        let http = self.listener(&s.http, "server.http", "0.0.0.0:80");
        let https = self.listener(&s.https, "server.https", "0.0.0.0:443");
        if http.is_none() && https.is_none() && s.http.is_some() && s.https.is_some() {
            self.issue(
                s.http.as_ref().map(|v| v.span()),
                "server.http",
                "both listeners are off; keep at least one".into(),
            );
        }
        let certs_dir = self.path(s.certs_dir.as_ref().map_or("certs", |v| v.get_ref()));
        let access_log = match s
            .access_log
            .as_ref()
            .map(|v| (v.get_ref().as_str(), v.span()))
        {
            None | Some(("text", _)) => AccessLogFormat::Text,
            Some(("json", _)) => AccessLogFormat::Json,
            Some(("off", _)) => AccessLogFormat::Off,
            Some((other, span)) => {
                self.issue(
                    Some(span),
                    "server.access_log",
                    format!("{other:?} is not a log format; allowed: \"text\", \"json\", \"off\""),
                );
                AccessLogFormat::Text
            }
        };
        let grace_period = self.duration(
            &s.grace_period,
            "server.grace_period",
            Duration::from_secs(30),
        );
        let t = &raw.timeouts;
        let min_rate = t.client_min_rate.as_ref().and_then(|v| {
            let text = v.get_ref().trim_end_matches("/s");
            match parse_size(text) {
                Ok(n) => Some(n),
                Err(msg) => {
                    self.issue(Some(v.span()), "timeouts.client_min_rate", msg);
                    None
                }
            }
        });
        let timeouts = Timeouts {
            client_header: self.duration(
                &t.client_header,
                "timeouts.client_header",
                Duration::from_secs(10),
            ),
            client_header_idle: self.duration(
                &t.client_header_idle,
                "timeouts.client_header_idle",
                Duration::from_secs(5),
            ),
            client_body: self.duration(
                &t.client_body,
                "timeouts.client_body",
                Duration::from_secs(60),
            ),
            client_body_max: self.duration(
                &t.client_body_max,
                "timeouts.client_body_max",
                Duration::from_secs(3600),
            ),
            client_send_max: self.duration(
                &t.client_send_max,
                "timeouts.client_send_max",
                Duration::from_secs(3600),
            ),
            client_min_rate: min_rate.unwrap_or(512),
            client_min_rate_grace: self.duration(
                &t.client_min_rate_grace,
                "timeouts.client_min_rate_grace",
                Duration::from_secs(10),
            ),
            client_idle: self.duration(
                &t.client_idle,
                "timeouts.client_idle",
                Duration::from_secs(75),
            ),
            tls_handshake: self.duration(
                &t.tls_handshake,
                "timeouts.tls_handshake",
                Duration::from_secs(10),
            ),
            upstream_connect: self.duration(
                &t.upstream_connect,
                "timeouts.upstream_connect",
                Duration::from_secs(5),
            ),
            upstream_response: self.duration(
                &t.upstream_response,
                "timeouts.upstream_response",
                Duration::from_secs(60),
            ),
            // Below gunicorn's 2 s keep-alive default, so usher closes a pooled connection
            // before the app does and never writes a request onto a socket the app just closed.
            upstream_idle: self.duration(
                &t.upstream_idle,
                "timeouts.upstream_idle",
                Duration::from_millis(1500),
            ),
        };
        let limits = self.limits(&raw.limits);
        let buffering = self.buffering(&raw.buffering);
        let cache = self.cache_settings(&raw.cache);
        let admin = raw
            .admin
            .listen
            .as_ref()
            .and_then(|_| self.listener(&raw.admin.listen, "admin.listen", "off"));
        let upstreams = self.upstreams(&raw.upstreams);
        if raw.sites.is_empty() {
            self.issue(
                None,
                "site",
                "no sites; add at least one [[site]] with names and a [[site.route]]".into(),
            );
        }
        let sites: Vec<Site> = raw
            .sites
            .iter()
            .enumerate()
            .map(|(i, s)| self.site(i, s, https.is_some()))
            .collect();
        self.cross_site(&raw.sites, &sites);
        let any_acme = sites.iter().any(|s| s.tls == TlsMode::Acme);
        let acme = self.acme(&raw.acme, http.is_some(), https.is_some(), any_acme);
        if http.is_some_and(|a| a.port() != 0) && http == https {
            self.issue(
                s.https.as_ref().map(|v| v.span()),
                "server.https",
                "the same address as server.http; give the listeners different ports".into(),
            );
        }
        if http.is_none() && !sites.iter().any(|s| s.tls != TlsMode::Off) && !sites.is_empty() {
            self.issue(
                s.http.as_ref().map(|v| v.span()),
                "server.http",
                "is \"off\" and no site uses TLS: nothing would be served".into(),
            );
        }
        let compression = s.compression.as_ref().is_none_or(|c| *c.get_ref());
        let user = s.user.as_ref().and_then(|u| {
            let name = u.get_ref();
            match nix::unistd::User::from_name(name) {
                Ok(Some(found)) if found.uid.is_root() => {
                    self.issue(
                        Some(u.span()),
                        "server.user",
                        "root is what usher drops from; name an unprivileged user".into(),
                    );
                    None
                }
                Ok(Some(found)) => Some(RunAs {
                    name: name.clone(),
                    uid: found.uid.as_raw(),
                    gid: found.gid.as_raw(),
                }),
                Ok(None) => {
                    self.issue(
                        Some(u.span()),
                        "server.user",
                        format!("no user {name:?} on this machine"),
                    );
                    None
                }
                Err(e) => {
                    self.issue(
                        Some(u.span()),
                        "server.user",
                        format!("cannot look up {name:?}: {e}"),
                    );
                    None
                }
            }
        });
        Config {
            file: path.to_owned(),
            compression,
            user,
            http,
            https,
            certs_dir,
            access_log,
            grace_period,
            acme,
            upstreams,
            timeouts,
            limits,
            buffering,
            cache,
            admin,
            sites,
        }
    }

    fn limits(&mut self, l: &raw::RawLimits) -> Limits {
        // hyper cannot read a request head in less than 8 KiB of buffer.
        let mut max_header_size = 64 * 1024;
        if let Some(v) = &l.max_header_size {
            match parse_size(v.get_ref()) {
                Ok(n) if (8192..=1 << 20).contains(&n) => max_header_size = n as usize,
                Ok(n) => self.issue(
                    Some(v.span()),
                    "limits.max_header_size",
                    format!("{n} bytes is outside the allowed range 8KiB..1MiB"),
                ),
                Err(msg) => self.issue(Some(v.span()), "limits.max_header_size", msg),
            }
        }
        let mut max_headers = 100;
        if let Some(v) = &l.max_headers {
            match usize::try_from(*v.get_ref()) {
                Ok(n) if (1..=1000).contains(&n) => max_headers = n,
                _ => self.issue(
                    Some(v.span()),
                    "limits.max_headers",
                    format!("{} is outside the allowed range 1..1000", v.get_ref()),
                ),
            }
        }
        let max_body_size = self
            .size(&l.max_body_size, "limits.max_body_size", 0, u64::MAX)
            .unwrap_or(10 << 20);
        self.max_body_size = max_body_size;
        let max_uri_length = self
            .size(&l.max_uri_length, "limits.max_uri_length", 256, 64 << 10)
            .unwrap_or(8 << 10) as usize;
        let mut count = |v: &Option<Spanned<i64>>, name: &str| match v {
            None => 0,
            Some(n) => match usize::try_from(*n.get_ref()) {
                Ok(n) if n <= 10_000_000 => n,
                _ => {
                    self.issue(
                        Some(n.span()),
                        format!("limits.{name}"),
                        format!("{} is outside 0..10000000 (0: no cap)", n.get_ref()),
                    );
                    0
                }
            },
        };
        let max_connections = count(&l.max_connections, "max_connections");
        let max_connections_per_ip = count(&l.max_connections_per_ip, "max_connections_per_ip");
        let rate_per_ip = count(&l.rate_per_ip, "rate_per_ip").min(1_000_000) as u32;
        let rate_burst = match count(&l.rate_burst, "rate_burst") {
            0 => rate_per_ip,
            n => n.min(10_000_000) as u32,
        };
        Limits {
            max_header_size,
            max_headers,
            max_body_size,
            max_uri_length,
            max_connections,
            max_connections_per_ip,
            rate_per_ip,
            rate_burst,
        }
    }

    /// A size like "10MiB" within `min..=max` bytes; `None` when absent or wrong (reported).
    fn size(&mut self, v: &Option<Spanned<String>>, key: &str, min: u64, max: u64) -> Option<u64> {
        let v = v.as_ref()?;
        match parse_size(v.get_ref()) {
            Ok(n) if (min..=max).contains(&n) => Some(n),
            Ok(n) => {
                self.issue(
                    Some(v.span()),
                    key,
                    format!("{n} bytes is outside the allowed range {min}..{max}"),
                );
                None
            }
            Err(msg) => {
                self.issue(Some(v.span()), key, msg);
                None
            }
        }
    }

    fn route_cache(&mut self, key: &str, c: &raw::RawRouteCache) -> RouteCache {
        let mut key_headers = Vec::new();
        for h in c
            .key_headers
            .as_ref()
            .map(|v| v.get_ref().as_slice())
            .unwrap_or(&[])
        {
            match http::HeaderName::from_bytes(h.get_ref().as_bytes()) {
                Ok(name) => key_headers.push(name),
                Err(_) => self.issue(
                    Some(h.span()),
                    format!("{key}.key_headers"),
                    format!("{:?} is not a header name", h.get_ref()),
                ),
            }
        }
        RouteCache {
            ignore_query: c.ignore_query.as_ref().is_some_and(|b| *b.get_ref()),
            key_headers,
            stale_if_error: self.duration(
                &c.stale_if_error,
                &format!("{key}.stale_if_error"),
                Duration::ZERO,
            ),
            stale_while_revalidate: self.duration(
                &c.stale_while_revalidate,
                &format!("{key}.stale_while_revalidate"),
                Duration::ZERO,
            ),
        }
    }

    fn cache_settings(&mut self, c: &raw::RawCache) -> CacheSettings {
        CacheSettings {
            memory: self
                .size(&c.memory, "cache.memory", 0, 1 << 40)
                .unwrap_or(64 << 20),
            max_entry: self
                .size(&c.max_entry, "cache.max_entry", 0, 1 << 30)
                .unwrap_or(1 << 20) as usize,
            disk: self.cache_disk(c),
        }
    }

    /// `disk_dir` and `disk_size`. Whether the folder can be written is found at startup
    /// (it is created then if missing); here only a path that is not a folder is an error.
    fn cache_disk(&mut self, c: &raw::RawCache) -> Option<CacheDisk> {
        let size = self.size(&c.disk_size, "cache.disk_size", 1 << 20, u64::MAX);
        let Some(d) = &c.disk_dir else {
            if let Some(s) = &c.disk_size {
                self.issue(
                    Some(s.span()),
                    "cache.disk_size",
                    "only with cache.disk_dir (the folder the disk tier uses)".into(),
                );
            }
            return None;
        };
        let dir = self.path(d.get_ref());
        if dir.exists() && !dir.is_dir() {
            self.issue(
                Some(d.span()),
                "cache.disk_dir",
                format!("{} is not a folder", dir.display()),
            );
        }
        Some(CacheDisk {
            dir,
            size: size.unwrap_or(1 << 30),
        })
    }

    fn buffering(&mut self, b: &raw::RawBuffering) -> Buffering {
        let request_memory = self
            .size(&b.request_memory, "buffering.request_memory", 0, 1 << 30)
            .unwrap_or(64 << 10) as usize;
        let response_memory = self
            .size(&b.response_memory, "buffering.response_memory", 0, 1 << 30)
            .unwrap_or(1 << 20) as usize;
        let max_memory = self
            .size(&b.max_memory, "buffering.max_memory", 0, 1 << 40)
            .unwrap_or(256 << 20) as usize;
        let max_file_size = self
            .size(&b.max_file_size, "buffering.max_file_size", 0, u64::MAX)
            .unwrap_or(1 << 30);
        let temp_dir = match &b.temp_dir {
            None => std::env::temp_dir(),
            Some(d) => {
                let dir = self.path(d.get_ref());
                if !dir.is_dir() {
                    self.issue(
                        Some(d.span()),
                        "buffering.temp_dir",
                        format!("{} is not a folder", dir.display()),
                    );
                }
                dir
            }
        };
        Buffering {
            request_memory,
            response_memory,
            max_memory,
            max_file_size,
            temp_dir,
        }
    }

    fn site(&mut self, i: usize, raw: &Spanned<RawSite>, https_on: bool) -> Site {
        let key = format!("site[{i}]");
        let span = raw.span();
        let raw = raw.get_ref();
        let mut names = Vec::new();
        match &raw.names {
            None => self.issue(
                Some(span.clone()),
                format!("{key}.names"),
                "missing; list the host names this site answers, like names = [\"example.com\"]"
                    .into(),
            ),
            Some(v) if v.get_ref().is_empty() => self.issue(
                Some(v.span()),
                format!("{key}.names"),
                "empty; list at least one host name".into(),
            ),
            Some(v) => {
                for n in v.get_ref() {
                    let name = n.get_ref().trim_end_matches('.').to_ascii_lowercase();
                    if valid_host_name(&name) {
                        names.push(name);
                    } else {
                        self.issue(Some(n.span()), format!("{key}.names"), format!("{:?} is not a host name or IP address (a leading \"*.\" is allowed)", n.get_ref()));
                    }
                }
            }
        }
        let tls = self.tls(&key, raw, &span, &names);
        if tls != TlsMode::Off && !https_on {
            self.issue(
                Some(span.clone()),
                format!("{key}.tls"),
                "this site uses TLS but server.https is \"off\"; enable it or set tls = \"off\""
                    .into(),
            );
        }
        if raw.routes.is_empty() {
            self.issue(
                Some(span),
                format!("{key}.route"),
                "no routes; add a [[site.route]] with path and one of static, proxy, redirect"
                    .into(),
            );
        }
        let mut routes: Vec<Route> = Vec::new();
        for (j, r) in raw.routes.iter().enumerate() {
            let rkey = format!("{key}.route[{j}]");
            if let Some(route) = self.route(&rkey, r) {
                if routes.iter().any(|o| o.path == route.path) {
                    self.issue(
                        r.get_ref().path.as_ref().map(|p| p.span()),
                        format!("{rkey}.path"),
                        format!(
                            "{:?} is already used by another route of this site",
                            route.path
                        ),
                    );
                }
                routes.push(route);
            }
        }
        // Longest prefix first: the first match is the longest.
        routes.sort_by_key(|r| std::cmp::Reverse(r.path.len()));
        Site {
            names,
            default: raw.default.as_ref().is_some_and(|d| *d.get_ref()),
            http_redirect: raw.http_redirect.as_ref().is_none_or(|r| *r.get_ref()),
            tls,
            routes,
        }
    }

    fn tls(&mut self, key: &str, raw: &RawSite, span: &Range<usize>, names: &[String]) -> TlsMode {
        let mode = raw.tls.as_ref().map(|t| (t.get_ref().as_str(), t.span()));
        let has_mode = mode.is_some();
        match (mode, &raw.cert, &raw.key) {
            (None | Some(("files", _)), Some(c), Some(k)) => {
                let (cert, key_path) = (self.path(c.get_ref()), self.path(k.get_ref()));
                for (p, v, name) in [(&cert, c, "cert"), (&key_path, k, "key")] {
                    if let Err(e) = std::fs::metadata(p) {
                        self.issue(
                            Some(v.span()),
                            format!("{key}.{name}"),
                            format!("cannot read {}: {e}", p.display()),
                        );
                    }
                }
                TlsMode::Files {
                    cert,
                    key: key_path,
                }
            }
            (None | Some(("files", _)), c, k) if c.is_some() || k.is_some() || has_mode => {
                self.issue(
                    Some(span.clone()),
                    format!("{key}.cert"),
                    "give both cert and key (PEM file paths)".into(),
                );
                TlsMode::Internal
            }
            (Some((m, s)), c, k) if c.is_some() || k.is_some() => {
                self.issue(
                    Some(s),
                    format!("{key}.tls"),
                    format!("tls = {m:?} does not take cert/key files; remove tls or cert and key"),
                );
                TlsMode::Internal
            }
            // Like Caddy: public names get ACME, local ones the local CA.
            (None, _, _) if names.iter().all(|n| is_local_name(n)) => TlsMode::Internal,
            (None, _, _) => self.acme_site(key, raw, names, span.clone()),
            (Some(("internal", _)), _, _) => TlsMode::Internal,
            (Some(("off", _)), _, _) => TlsMode::Off,
            (Some(("acme", s)), _, _) => self.acme_site(key, raw, names, s),
            (Some((m, s)), _, _) => {
                self.issue(Some(s), format!("{key}.tls"), format!("{m:?} is not a TLS mode; allowed: \"internal\", \"off\", \"acme\", or cert and key files"));
                TlsMode::Internal
            }
        }
    }

    /// An ACME site: its names must be ones a CA can validate over HTTP-01 or TLS-ALPN-01.
    fn acme_site(
        &mut self,
        key: &str,
        raw: &RawSite,
        names: &[String],
        span: Range<usize>,
    ) -> TlsMode {
        let span = raw.names.as_ref().map_or(span, |n| n.span());
        for name in names {
            let why = if name.starts_with("*.") {
                "is a wildcard: wildcard certificates need the DNS-01 challenge, which usher does not do yet; list the names, or use cert and key files"
            } else if name.parse::<IpAddr>().is_ok() {
                "is an IP address: usher does not order ACME certificates for IP addresses yet; use tls = \"internal\" or cert and key files"
            } else {
                continue;
            };
            self.issue(
                Some(span.clone()),
                format!("{key}.names"),
                format!("{name:?} {why}"),
            );
        }
        TlsMode::Acme
    }

    fn route(&mut self, key: &str, raw: &Spanned<RawRoute>) -> Option<Route> {
        let span = raw.span();
        let r = raw.get_ref();
        let path = match &r.path {
            None => {
                self.issue(
                    Some(span.clone()),
                    format!("{key}.path"),
                    "missing; give the path prefix this route serves, like path = \"/\"".into(),
                );
                String::new()
            }
            Some(p) if !p.get_ref().starts_with('/') => {
                self.issue(
                    Some(p.span()),
                    format!("{key}.path"),
                    format!("{:?} must start with \"/\"", p.get_ref()),
                );
                String::new()
            }
            Some(p) => p.get_ref().clone(),
        };
        let strip_prefix = r.strip_prefix.as_ref().is_some_and(|s| *s.get_ref());
        let given = [
            r.static_root.is_some(),
            r.proxy.is_some(),
            r.redirect.is_some(),
        ];
        if given.iter().filter(|g| **g).count() != 1 {
            self.issue(
                Some(span),
                key,
                "give exactly one of static, proxy, redirect".into(),
            );
            return None;
        }
        self.only_for(key, "index", &r.index, r.static_root.is_some(), "static");
        self.only_for(
            key,
            "file_cache_valid",
            &r.file_cache_valid,
            r.static_root.is_some(),
            "static",
        );
        self.only_for(
            key,
            "fallback",
            &r.fallback,
            r.static_root.is_some(),
            "static",
        );
        self.only_for(key, "status", &r.status, r.redirect.is_some(), "redirect");
        let action = if let Some(root) = &r.static_root {
            let dir = self.path(root.get_ref());
            if !dir.is_dir() {
                self.issue(
                    Some(root.span()),
                    format!("{key}.static"),
                    format!("{} is not a readable folder", dir.display()),
                );
            }
            let index = r
                .index
                .as_ref()
                .map_or("index.html".to_owned(), |i| i.get_ref().clone());
            let fallback = r
                .fallback
                .as_ref()
                .map(|f| f.get_ref().trim_start_matches('/').to_owned());
            for (name, v) in [("index", &Some(index.clone())), ("fallback", &fallback)] {
                if let Some(v) = v {
                    if v.is_empty()
                        || v.contains("..")
                        || v.contains('\\')
                        || (name == "index" && v.contains('/'))
                    {
                        self.issue(
                            Some(root.span()),
                            format!("{key}.{name}"),
                            format!("{v:?} must be a file name inside the static folder"),
                        );
                    } else if name == "fallback" && !dir.join(v).is_file() {
                        self.issue(
                            r.fallback.as_ref().map(|f| f.span()),
                            format!("{key}.fallback"),
                            format!("{} is not a file", dir.join(v).display()),
                        );
                    }
                }
            }
            let file_cache_valid = self.duration_or_zero(
                &r.file_cache_valid,
                &format!("{key}.file_cache_valid"),
                Duration::from_secs(1),
            );
            Action::Static(StaticRoute {
                root: dir,
                index,
                fallback,
                file_cache_valid,
            })
        } else if let Some(proxy) = &r.proxy {
            Action::Proxy(self.proxy_target(key, proxy))
        } else {
            let to = r
                .redirect
                .as_ref()
                .map(|t| t.get_ref().clone())
                .unwrap_or_default();
            let status = match &r.status {
                None => StatusCode::PERMANENT_REDIRECT,
                Some(s) => {
                    match *s.get_ref() {
                        n @ (301 | 302 | 303 | 307 | 308) => {
                            StatusCode::from_u16(n as u16).expect("listed codes are valid")
                        }
                        n => {
                            self.issue(Some(s.span()), format!("{key}.status"), format!("{n} is not a redirect status; allowed: 301, 302, 303, 307, 308"));
                            StatusCode::PERMANENT_REDIRECT
                        }
                    }
                }
            };
            let valid = http::HeaderValue::from_str(&to.replace("{uri}", "/")).is_ok();
            if to.is_empty() || !valid {
                self.issue(
                    r.redirect.as_ref().map(|t| t.span()),
                    format!("{key}.redirect"),
                    "give a target URL or path (\"{uri}\" stands for the request's path and query)"
                        .into(),
                );
            }
            Action::Redirect { status, to }
        };
        let proxy = r.proxy.is_some();
        self.only_for(key, "buffer_requests", &r.buffer_requests, proxy, "proxy");
        self.only_for(key, "buffer_responses", &r.buffer_responses, proxy, "proxy");
        self.only_for(key, "max_body_size", &r.max_body_size, proxy, "proxy");
        self.only_for(key, "cache", &r.cache, proxy, "proxy");
        let cache = r
            .cache
            .as_ref()
            .filter(|_| proxy)
            .map(|c| self.route_cache(&format!("{key}.cache"), c.get_ref()));
        let body = BodyPolicy {
            buffer_requests: r.buffer_requests.as_ref().is_none_or(|b| *b.get_ref()),
            buffer_responses: r.buffer_responses.as_ref().is_none_or(|b| *b.get_ref()),
            max_body_size: self
                .size(
                    &r.max_body_size,
                    &format!("{key}.max_body_size"),
                    0,
                    u64::MAX,
                )
                .unwrap_or(self.max_body_size),
        };
        Some(Route {
            path,
            strip_prefix,
            body,
            cache,
            action,
        })
    }

    fn only_for<T>(
        &mut self,
        key: &str,
        name: &str,
        v: &Option<Spanned<T>>,
        ok: bool,
        action: &str,
    ) {
        if let (Some(v), false) = (v, ok) {
            self.issue(
                Some(v.span()),
                format!("{key}.{name}"),
                format!("{name} only applies to {action} routes"),
            );
        }
    }

    pub(super) fn resolve_unix(&self, addr: UpstreamAddr) -> UpstreamAddr {
        match addr {
            UpstreamAddr::Unix(p) => UpstreamAddr::Unix(self.base.join(p)),
            tcp => tcp,
        }
    }

    fn cross_site(&mut self, raw: &[Spanned<RawSite>], sites: &[Site]) {
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (i, site) in sites.iter().enumerate() {
            for name in &site.names {
                if let Some(first) = seen.insert(name, i) {
                    let span = raw[i].get_ref().names.as_ref().map(|n| n.span());
                    self.issue(
                        span,
                        format!("site[{i}].names"),
                        format!("{name:?} is already a name of site[{first}]"),
                    );
                }
            }
        }
        // Clients connecting by IP address send no SNI, so only the default site's certificate
        // can reach them.
        for (i, site) in sites.iter().enumerate() {
            let ip = site.names.iter().find(|n| n.parse::<IpAddr>().is_ok());
            if let (Some(ip), false, false) = (ip, site.default, site.tls == TlsMode::Off) {
                let span = raw[i].get_ref().names.as_ref().map(|n| n.span());
                self.issue(span, format!("site[{i}].names"), format!("{ip:?} is an IP address: TLS clients send no SNI for it, so only the default site can answer; set default = true on this site or tls = \"off\""));
            }
        }
        let defaults: Vec<usize> = (0..sites.len()).filter(|&i| sites[i].default).collect();
        for &i in defaults.iter().skip(1) {
            let span = raw[i].get_ref().default.as_ref().map(|d| d.span());
            self.issue(
                span,
                format!("site[{i}].default"),
                format!(
                    "site[{}] is already the default site; only one may be",
                    defaults[0]
                ),
            );
        }
    }
}

/// Parses `host:port`, `[v6]:port` or `unix:/path`.
pub fn parse_upstream(s: &str) -> Result<UpstreamAddr, String> {
    if let Some(path) = s.strip_prefix("unix:") {
        if path.is_empty() {
            return Err(format!(
                "{s:?} names no socket path; write it like \"unix:/run/app.sock\""
            ));
        }
        return Ok(UpstreamAddr::Unix(PathBuf::from(path)));
    }
    let bad = || {
        format!("{s:?} is not an upstream address; write it like \"127.0.0.1:8000\", \"app:8000\" or \"unix:/run/app.sock\"")
    };
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().ok().filter(|p| *p != 0).ok_or_else(bad)?;
    let host = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6
            .parse::<std::net::Ipv6Addr>()
            .map_err(|_| bad())?
            .to_string(),
        None if valid_host_name(host) && !host.starts_with('*') => host.to_owned(),
        None => return Err(bad()),
    };
    Ok(UpstreamAddr::Tcp { host, port })
}

/// A DNS name (optionally with a leading `*.`) or an IP address.
fn valid_host_name(name: &str) -> bool {
    if name.parse::<IpAddr>().is_ok() {
        return true;
    }
    let name = name.strip_prefix("*.").unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                && !label.starts_with('-')
        })
}
