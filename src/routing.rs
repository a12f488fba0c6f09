//! The routing table compiled from config: host -> site -> longest path prefix -> route.
//! Built once per config and shared read-only; lookups allocate nothing for lower-case hosts.

use std::collections::HashMap;
use std::sync::Arc;

use http::StatusCode;

use crate::config::{Action, Config, TlsMode};
use crate::static_files::StaticFiles;
use crate::upstream::Pool;

/// Index of a site in [`Routes`].
pub type SiteId = usize;

/// Every site and route of one config.
#[derive(Debug)]
pub struct Routes {
    sites: Vec<SiteEntry>,
    exact: HashMap<String, SiteId>,
    /// `*.example.com` under `example.com`.
    wildcard: HashMap<String, SiteId>,
    default: Option<SiteId>,
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
        let mut routes = Routes {
            sites: Vec::with_capacity(config.sites.len()),
            exact: HashMap::new(),
            wildcard: HashMap::new(),
            default: None,
        };
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
            let mut entries = Vec::with_capacity(site.routes.len());
            for r in &site.routes {
                let action = match &r.action {
                    Action::Static(s) => RouteAction::Static(StaticFiles::new(s)?),
                    Action::Proxy(addrs) => {
                        RouteAction::Proxy(Arc::new(Pool::new(addrs, &config.timeouts)))
                    }
                    Action::Redirect { status, to } => RouteAction::Redirect {
                        status: *status,
                        to: to.clone(),
                    },
                };
                entries.push(RouteEntry {
                    path: r.path.clone(),
                    strip_prefix: r.strip_prefix,
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

    /// The site with this id.
    pub fn site(&self, id: SiteId) -> &SiteEntry {
        &self.sites[id]
    }
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
