//! TLS: the SNI certificate resolver (a snapshot swapped atomically when certificates change)
//! and the one rustls `ServerConfig` every TLS connection uses.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::crypto::{aws_lc_rs, CryptoProvider};
use rustls::server::{ClientHello, ResolvesServerCert, ServerConfig, ServerSessionMemoryCache};
use rustls::sign::CertifiedKey;

use crate::acme::{Challenges, ACME_TLS_ALPN};
use crate::config::{Config, TlsMode};

/// How many TLS sessions the server remembers for resumption by session ID (tickets need none).
const SESSION_CACHE_SIZE: usize = 4096;

/// The crypto provider: aws-lc-rs, with AES-128-GCM preferred (as nginx and HAProxy do, and
/// fastest on CPUs with AES instructions).
pub fn provider() -> Arc<CryptoProvider> {
    let mut p = aws_lc_rs::default_provider();
    p.cipher_suites.sort_by_key(|s| {
        use rustls::CipherSuite::*;
        match s.suite() {
            TLS13_AES_128_GCM_SHA256 => 0,
            TLS13_AES_256_GCM_SHA384 => 1,
            TLS13_CHACHA20_POLY1305_SHA256 => 2,
            _ => 3,
        }
    });
    Arc::new(p)
}

/// Certificates by host name, replaced whole on every change. A name whose certificate is
/// still on its way (`None`) refuses the handshake instead of falling back to the default.
#[derive(Debug, Default)]
pub struct CertMap {
    exact: HashMap<String, Option<Arc<CertifiedKey>>>,
    /// `*.example.com` stored under `example.com`.
    wildcard: HashMap<String, Option<Arc<CertifiedKey>>>,
    default: Option<Arc<CertifiedKey>>,
}

impl CertMap {
    /// Adds `cert` for every name in `names`; `default` also makes it the no-SNI certificate.
    pub fn insert(&mut self, names: &[String], cert: Arc<CertifiedKey>, default: bool) {
        self.names(names, Some(cert.clone()));
        if default {
            self.default = Some(cert);
        }
    }

    /// Marks `names` as served but without a certificate yet.
    pub fn pending(&mut self, names: &[String]) {
        self.names(names, None);
    }

    fn names(&mut self, names: &[String], cert: Option<Arc<CertifiedKey>>) {
        for name in names {
            match name.strip_prefix("*.") {
                Some(parent) => self.wildcard.insert(parent.to_owned(), cert.clone()),
                None => self.exact.insert(name.clone(), cert.clone()),
            };
        }
    }

    /// The certificate for an SNI name (exact, then one-label wildcard), else the default.
    pub fn lookup(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = sni else {
            return self.default.clone();
        };
        let lower;
        let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = name.to_ascii_lowercase();
            lower.as_str()
        } else {
            name
        };
        let known = self.exact.get(name).or_else(|| {
            let (_, parent) = name.split_once('.')?;
            self.wildcard.get(parent)
        });
        match known {
            Some(cert) => cert.clone(),
            None => self.default.clone(),
        }
    }
}

/// Picks the certificate for each handshake from the current [`CertMap`]. An unknown SNI with
/// no default site gets no certificate, and rustls refuses the handshake with an alert. A
/// handshake offering ALPN `acme-tls/1` is a CA validating TLS-ALPN-01 and gets the challenge
/// certificate (or nothing).
#[derive(Debug, Default)]
pub struct CertResolver {
    map: ArcSwap<CertMap>,
    challenges: Arc<Challenges>,
    /// The [`SiteCerts`] whose map is served (0: none yet); changes are serialized by it.
    owner: std::sync::Mutex<u64>,
}

impl CertResolver {
    /// A resolver that also answers TLS-ALPN-01 from `challenges`.
    pub fn new(challenges: Arc<Challenges>) -> CertResolver {
        CertResolver {
            map: ArcSwap::default(),
            challenges,
            owner: std::sync::Mutex::new(0),
        }
    }

    /// Serves `map` if the set `id` owns the resolver (or `take` makes it the owner).
    fn publish(&self, id: u64, map: CertMap, take: bool) {
        let mut owner = self.owner.lock().unwrap_or_else(|e| e.into_inner());
        if take {
            *owner = id;
        }
        if *owner == id {
            self.map.store(Arc::new(map));
        }
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // Only a handshake that offers acme-tls/1 alone is a CA validating TLS-ALPN-01; one
        // that also offers h2 or http/1.1 gets the site's certificate.
        if let Some(mut alpn) = hello.alpn() {
            if alpn.next() == Some(ACME_TLS_ALPN) && alpn.next().is_none() {
                return self.challenges.tls_answer(hello.server_name()?);
            }
        }
        self.map.load().lookup(hello.server_name())
    }
}

/// TLS 1.3 tickets sent after each handshake. One, as Caddy (Go) sends after every handshake and
/// nginx and HAProxy (OpenSSL) after a resumed one: each connection leaves the client a ticket
/// for its next. rustls's default of two cost clients that reconnect a second ticket to
/// process on every connection (the `hs_resume` benchmark row, where the client's CPU is the
/// limit).
const TLS13_TICKETS: usize = 1;

/// Most tickets sent to a client that asks for more (RFC 9149 `ticket_request`), for one
/// that opens connections in parallel.
const MAX_TLS13_TICKETS: usize = 4;

/// The server config: TLS 1.2 and 1.3, ALPN h2 then http/1.1, server cipher order, session
/// tickets and a session cache for cheap resumption.
pub fn server_config(
    resolver: Arc<CertResolver>,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    // acme-tls/1 last: only a CA validating TLS-ALPN-01 offers it, and such a connection is
    // closed right after the handshake.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), ACME_TLS_ALPN.to_vec()];
    config.ignore_client_order = true;
    config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE_SIZE);
    config.ticketer = aws_lc_rs::Ticketer::new()?;
    config.send_tls13_tickets = TLS13_TICKETS;
    config.max_tls13_tickets = MAX_TLS13_TICKETS;
    Ok(Arc::new(config))
}

/// Every site's current certificate, for one config. Once active, changing one rebuilds
/// the whole [`CertMap`] (a few entries per site, on a certificate change, never per
/// request) and swaps it in. A reload prepares the next config's set inactive, activates
/// it when it commits, and retires the old one (so a loop of the old config finishing late
/// cannot put its map back).
#[derive(Debug)]
pub struct SiteCerts {
    sites: Vec<(Vec<String>, bool)>,
    certs: std::sync::Mutex<Vec<Option<Arc<CertifiedKey>>>>,
    resolver: Arc<CertResolver>,
    /// Names this set to the resolver.
    id: u64,
}

impl SiteCerts {
    /// No certificates yet; TLS sites are pending until `set`.
    pub fn new(config: &Config, resolver: Arc<CertResolver>) -> SiteCerts {
        let sites: Vec<(Vec<String>, bool)> = config
            .sites
            .iter()
            .map(|s| {
                (
                    if s.tls == TlsMode::Off {
                        Vec::new()
                    } else {
                        s.names.clone()
                    },
                    s.default,
                )
            })
            .collect();
        let certs = vec![None; sites.len()];
        SiteCerts {
            sites,
            certs: std::sync::Mutex::new(certs),
            resolver,
            id: {
                static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
                NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            },
        }
    }

    /// Takes the certificates of `old` for the sites with the same names.
    pub fn carry_over(&self, old: &SiteCerts) {
        let mut certs = self.certs.lock().unwrap_or_else(|e| e.into_inner());
        let old_certs = old.certs.lock().unwrap_or_else(|e| e.into_inner());
        for ((names, _), cert) in self.sites.iter().zip(certs.iter_mut()) {
            if names.is_empty() {
                continue;
            }
            if let Some(i) = old.sites.iter().position(|(n, _)| n == names) {
                cert.clone_from(&old_certs[i]);
            }
        }
    }

    /// Serves this set from the next handshake on; from then on, only this set's changes
    /// reach the resolver (an older set's late `set` is kept to itself).
    pub fn activate(&self) {
        let certs = self.certs.lock().unwrap_or_else(|e| e.into_inner());
        self.resolver.publish(self.id, self.map(&certs), true);
    }

    /// Serves `cert` for site `site` from the next handshake on (once active).
    pub fn set(&self, site: usize, cert: Arc<CertifiedKey>) {
        let mut certs = self.certs.lock().unwrap_or_else(|e| e.into_inner());
        certs[site] = Some(cert);
        self.resolver.publish(self.id, self.map(&certs), false);
    }

    /// Each TLS site's first name, and when its certificate expires (`None`: none yet).
    pub fn expiries(&self) -> Vec<(String, Option<std::time::SystemTime>)> {
        let certs = self.certs.lock().unwrap_or_else(|e| e.into_inner());
        self.sites
            .iter()
            .zip(certs.iter())
            .filter(|((names, _), _)| !names.is_empty())
            .map(|((names, _), cert)| {
                let expiry = cert.as_ref().and_then(|c| {
                    let (_, x) =
                        x509_parser::parse_x509_certificate(c.end_entity_cert().ok()?).ok()?;
                    let secs = u64::try_from(x.validity().not_after.timestamp()).ok()?;
                    Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
                });
                (names[0].clone(), expiry)
            })
            .collect()
    }

    fn map(&self, certs: &[Option<Arc<CertifiedKey>>]) -> CertMap {
        let mut map = CertMap::default();
        for ((names, default), cert) in self.sites.iter().zip(certs.iter()) {
            match cert {
                Some(c) => map.insert(names, c.clone(), *default),
                None => map.pending(names),
            }
        }
        map
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::LocalCa;

    #[tokio::test]
    async fn lookup_prefers_exact_then_wildcard_then_default() {
        let dir = tempfile::tempdir().unwrap();
        let storage = crate::certs::FileStorage::open(dir.path()).unwrap();
        let ca = LocalCa::load_or_create(&storage).await.unwrap();
        let p = provider();
        let a = ca.issue(&["a.test".into()], &p).unwrap();
        let w = ca.issue(&["*.w.test".into()], &p).unwrap();
        let mut map = CertMap::default();
        map.insert(&["a.test".into()], a.clone(), true);
        map.insert(&["*.w.test".into()], w.clone(), false);
        assert!(Arc::ptr_eq(&map.lookup(Some("A.test")).unwrap(), &a));
        assert!(Arc::ptr_eq(&map.lookup(Some("x.w.test")).unwrap(), &w));
        // one label only: a.b.w.test is not covered by *.w.test
        assert!(Arc::ptr_eq(&map.lookup(Some("a.b.w.test")).unwrap(), &a));
        assert!(Arc::ptr_eq(&map.lookup(None).unwrap(), &a));
        let mut no_default = CertMap::default();
        no_default.insert(&["a.test".into()], a, false);
        assert!(no_default.lookup(Some("b.test")).is_none());
        assert!(no_default.lookup(None).is_none());
    }
}
