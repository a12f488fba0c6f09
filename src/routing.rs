//! The routing table compiled from config: host -> site -> longest path prefix -> route.
//! Built once per config and shared read-only; lookups allocate nothing for lower-case hosts.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use http::StatusCode;

use crate::config::{Action, BodyPolicy, Config, ProxyTarget, RouteCache, TlsMode};
use crate::error::ProxyError;
use crate::static_files::StaticFiles;
use crate::upstream::{Pool, PoolSpec};

/// The hasher of the maps looked up on every request (hosts, cache keys, hot files):
/// foldhash, seeded per process, hashes a short key in a fraction of SipHash's time.
pub type FastHash = foldhash::fast::RandomState;

/// Index of a site in [`Routes`].
pub type SiteId = usize;

/// Every site and route of one config.
#[derive(Debug, Default)]
pub struct Routes {
    sites: Vec<SiteEntry>,
    exact: HashMap<String, SiteId, FastHash>,
    /// `*.example.com` under `example.com`.
    wildcard: HashMap<String, SiteId, FastHash>,
    default: Option<SiteId>,
    /// Every upstream pool, once each (for their health checks).
    pools: Vec<Arc<Pool>>,
    /// The counters of requests that reach no route.
    pub unrouted: Arc<crate::metrics::RouteMetrics>,
}

/// One site's routes.
#[derive(Debug)]
pub struct SiteEntry {
    /// Plain HTTP requests get a 308 to https (a TLS site with `http_redirect` on).
    pub redirect_http: bool,
    /// Longest prefix first.
    pub routes: Vec<RouteEntry>,
}

/// One route, ready to serve.
#[derive(Debug)]
pub struct RouteEntry {
    /// The prefix that selects it.
    pub path: String,
    /// Remove `path` before serving or forwarding.
    pub strip_prefix: bool,
    /// Body buffering and size limit (proxy routes).
    pub body: BodyPolicy,
    /// Response caching (proxy routes).
    pub cache: Option<RouteCache>,
    /// Its request counters and latency histogram.
    pub metrics: Arc<crate::metrics::RouteMetrics>,
    /// What it does.
    pub action: RouteAction,
}

/// A route's action with its runtime state.
#[derive(Debug)]
pub enum RouteAction {
    /// Files from a folder.
    Static(StaticFiles),
    /// An upstream pool.
    Proxy(Arc<Pool>),
    /// A fixed redirect.
    Redirect { status: StatusCode, to: String },
}

impl Routes {
    /// Compiles the config. Static roots are resolved here, so a root that vanished since
    /// `usher check` fails the start, not the first request.
    pub fn build(config: &Config) -> std::io::Result<Routes> {
        Routes::rebuild(config, None, &crate::metrics::Metrics::new())
    }

    /// Compiles the routes of `config`, keeping the pools of `previous` whose definition
    /// did not change (with their health, connections and load), as a reload does.
    pub fn rebuild(
        config: &Config,
        previous: Option<&Routes>,
        metrics: &crate::metrics::Metrics,
    ) -> std::io::Result<Routes> {
        let mut old: Vec<Option<Arc<Pool>>> = previous
            .map(|r| r.pools.iter().cloned().map(Some).collect())
            .unwrap_or_default();
        let mut pool_for = |name: &str, p: &crate::config::UpstreamPool| -> Arc<Pool> {
            let spec = PoolSpec::new(name, p, &config.timeouts);
            old.iter_mut()
                .find(|o| o.as_ref().is_some_and(|o| o.built_from(&spec)))
                .and_then(Option::take)
                .unwrap_or_else(|| Arc::new(Pool::new(name, p, &config.timeouts)))
        };
        let mut routes = Routes {
            sites: Vec::with_capacity(config.sites.len()),
            exact: HashMap::default(),
            wildcard: HashMap::default(),
            default: None,
            pools: Vec::new(),
            unrouted: metrics.unrouted.clone(),
        };
        // One runtime pool per named pool, shared by every route that names it.
        let named: HashMap<&str, Arc<Pool>> = config
            .upstreams
            .iter()
            .map(|(name, p)| (name.as_str(), pool_for(name, p)))
            .collect();
        routes.pools.extend(named.values().cloned());
        for (id, site) in config.sites.iter().enumerate() {
            for name in &site.names {
                match name.strip_prefix("*.") {
                    Some(parent) => routes.wildcard.insert(parent.to_owned(), id),
                    None => routes.exact.insert(name.clone(), id),
                };
            }
            if site.default {
                routes.default = Some(id);
            }
            let site_name = site.names.first().map_or("-", String::as_str);
            let mut entries = Vec::with_capacity(site.routes.len());
            for r in &site.routes {
                let action = match &r.action {
                    Action::Static(s) => RouteAction::Static(StaticFiles::new(s)?),
                    Action::Proxy(ProxyTarget::Pool(name)) => match named.get(name.as_str()) {
                        Some(pool) => RouteAction::Proxy(pool.clone()),
                        None => {
                            return Err(std::io::Error::other(format!("unknown upstream {name:?}")))
                        }
                    },
                    Action::Proxy(ProxyTarget::Inline(pool)) => {
                        let pool = pool_for(&format!("{}{}", site_name, r.path), pool);
                        routes.pools.push(pool.clone());
                        RouteAction::Proxy(pool)
                    }
                    Action::Redirect { status, to } => RouteAction::Redirect {
                        status: *status,
                        to: to.clone(),
                    },
                };
                entries.push(RouteEntry {
                    path: r.path.clone(),
                    strip_prefix: r.strip_prefix,
                    body: r.body,
                    cache: r.cache.clone(),
                    metrics: metrics.route(site_name, &r.path),
                    action,
                });
            }
            routes.sites.push(SiteEntry {
                redirect_http: site.tls != TlsMode::Off && site.http_redirect,
                routes: entries,
            });
        }
        Ok(routes)
    }

    /// The site for a host name (no port; any case): exact name, then a one-label wildcard,
    /// then the default site.
    pub fn site_for(&self, host: &str) -> Option<SiteId> {
        let lower;
        let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = host.to_ascii_lowercase();
            lower.as_str()
        } else {
            host
        };
        let host = host.strip_suffix('.').unwrap_or(host);
        // IPv6 names are configured without brackets.
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        self.exact
            .get(host)
            .or_else(|| {
                let (_, parent) = host.split_once('.')?;
                self.wildcard.get(parent)
            })
            .copied()
            .or(self.default)
    }

    /// Every upstream pool, once each.
    pub fn pools(&self) -> &[Arc<Pool>] {
        &self.pools
    }

    /// The site with this id.
    pub fn site(&self, id: SiteId) -> &SiteEntry {
        &self.sites[id]
    }
}

/// The path routes are matched on: runs of `/` merged, percent-escapes of unreserved characters
/// decoded (RFC 3986 section 6.2.2.2: `/%61` and `/a` are the same path), other escapes kept;
/// a `.` or `..` segment (also encoded) is refused with 400 rather than resolved. Ordinary
/// paths come back as they are, without allocating.
pub fn normalize_path(path: &str) -> Result<Cow<'_, str>, ProxyError> {
    // one pass for the common clean path: no `%`, no `//`, no `/.`
    let b = path.as_bytes();
    let clean = b
        .iter()
        .enumerate()
        .all(|(i, &c)| c != b'%' && (c != b'/' || !matches!(b.get(i + 1), Some(b'/' | b'.'))));
    if clean {
        return Ok(Cow::Borrowed(path));
    }
    let unreserved = |c: u8| c.is_ascii_alphanumeric() || b"-._~".contains(&c);
    let hex = |c: u8| (c as char).to_digit(16);
    let mut out = String::with_capacity(path.len());
    for seg in path.split('/').filter(|s| !s.is_empty()) {
        out.push('/');
        let start = out.len();
        let mut rest = seg;
        while let Some(pos) = rest.find('%') {
            out.push_str(&rest[..pos]);
            let b = rest.as_bytes();
            let decoded = match (b.get(pos + 1), b.get(pos + 2)) {
                (Some(&h), Some(&l)) => hex(h)
                    .zip(hex(l))
                    .map(|(h, l)| (h * 16 + l) as u8)
                    .filter(|c| unreserved(*c)),
                _ => None,
            };
            match decoded {
                Some(c) => {
                    out.push(c as char);
                    rest = &rest[pos + 3..];
                }
                None => {
                    out.push('%');
                    rest = &rest[pos + 1..];
                }
            }
        }
        out.push_str(rest);
        if matches!(&out[start..], "." | "..") {
            return Err(ProxyError::BadRequest("dot segment in path"));
        }
    }
    if path.ends_with('/') || out.is_empty() {
        out.push('/');
    }
    Ok(Cow::Owned(out))
}

impl SiteEntry {
    /// The route whose prefix is the longest one matching `path`.
    pub fn route_for(&self, path: &str) -> Option<&RouteEntry> {
        self.routes
            .iter()
            .find(|r| path.starts_with(r.path.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn routes(toml: &str) -> Routes {
        let c = Config::parse(toml, Path::new("/tmp/proxy.toml")).unwrap();
        Routes::build(&c).unwrap()
    }

    const TWO_SITES: &str = r#"
        [[site]]
        names = ["a.test", "*.w.test"]
        tls = "off"
        [[site.route]]
        path = "/"
        redirect = "/x"
        [[site.route]]
        path = "/api/"
        proxy = ["127.0.0.1:9"]
        [[site.route]]
        path = "/api/v2/"
        proxy = ["127.0.0.1:9"]

        [[site]]
        names = ["b.test", "127.0.0.1", "::1"]
        default = true
        tls = "off"
        [[site.route]]
        path = "/"
        redirect = "/y"
    "#;

    #[test]
    fn host_lookup() {
        let r = routes(TWO_SITES);
        assert_eq!(r.site_for("a.test"), Some(0));
        assert_eq!(r.site_for("A.Test"), Some(0));
        assert_eq!(r.site_for("a.test."), Some(0));
        assert_eq!(r.site_for("x.w.test"), Some(0));
        assert_eq!(r.site_for("b.test"), Some(1));
        assert_eq!(r.site_for("127.0.0.1"), Some(1));
        assert_eq!(r.site_for("[::1]"), Some(1));
        // unknown names go to the default site
        assert_eq!(r.site_for("other.test"), Some(1));
        assert_eq!(r.site_for("x.y.w.test"), Some(1));
    }

    #[test]
    fn longest_prefix_wins() {
        let r = routes(TWO_SITES);
        let s = r.site(0);
        assert_eq!(s.route_for("/api/v2/users").unwrap().path, "/api/v2/");
        assert_eq!(s.route_for("/api/v1").unwrap().path, "/api/");
        assert_eq!(s.route_for("/apix").unwrap().path, "/");
        assert_eq!(s.route_for("/").unwrap().path, "/");
    }

    #[test]
    fn paths_are_normalised_for_routing() {
        let n = |p: &str| normalize_path(p).map(|c| c.into_owned());
        assert!(matches!(
            normalize_path("/api/v1/users"),
            Ok(Cow::Borrowed(_))
        ));
        assert_eq!(n("//drafts/x").unwrap(), "/drafts/x");
        assert_eq!(n("/%64rafts/x").unwrap(), "/drafts/x");
        assert_eq!(n("/a%2Fb/%7euser").unwrap(), "/a%2Fb/~user");
        assert_eq!(n("/a//b/").unwrap(), "/a/b/");
        assert_eq!(n("/%").unwrap(), "/%");
        assert_eq!(n("/%4").unwrap(), "/%4");
        assert_eq!(n("/%zz").unwrap(), "/%zz");
        assert_eq!(n("/caf%C3%A9").unwrap(), "/caf%C3%A9");
        assert_eq!(n("/.well-known/x").unwrap(), "/.well-known/x");
        assert_eq!(n("//").unwrap(), "/");
        for bad in [
            "/a/../b",
            "/./a",
            "/a/..",
            "/%2e%2e/x",
            "/%2E/x",
            "/a/.%2e/b",
        ] {
            assert!(normalize_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn no_default_means_no_site() {
        let r = routes(
            r#"
            [[site]]
            names = ["a.test"]
            tls = "off"
            [[site.route]]
            path = "/"
            redirect = "/x"
        "#,
        );
        assert_eq!(r.site_for("b.test"), None);
    }
}
