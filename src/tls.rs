//! TLS: the SNI certificate resolver (a snapshot swapped atomically when certificates change)
//! and the one rustls `ServerConfig` every TLS connection uses.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::crypto::{aws_lc_rs, CryptoProvider};
use rustls::server::{ClientHello, ResolvesServerCert, ServerConfig, ServerSessionMemoryCache};
use rustls::sign::CertifiedKey;

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

/// Certificates by host name, replaced whole on every change.
#[derive(Debug, Default)]
pub struct CertMap {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` stored under `example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

impl CertMap {
    /// Adds `cert` for every name in `names`; `default` also makes it the no-SNI certificate.
    pub fn insert(&mut self, names: &[String], cert: Arc<CertifiedKey>, default: bool) {
        for name in names {
            match name.strip_prefix("*.") {
                Some(parent) => self.wildcard.insert(parent.to_owned(), cert.clone()),
                None => self.exact.insert(name.clone(), cert.clone()),
            };
        }
        if default {
            self.default = Some(cert);
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
        self.exact
            .get(name)
            .or_else(|| {
                let (_, parent) = name.split_once('.')?;
                self.wildcard.get(parent)
            })
            .or(self.default.as_ref())
            .cloned()
    }
}

/// Picks the certificate for each handshake from the current [`CertMap`]. An unknown SNI with
/// no default site gets no certificate, and rustls refuses the handshake with an alert.
#[derive(Debug, Default)]
pub struct CertResolver {
    map: ArcSwap<CertMap>,
}

impl CertResolver {
    /// Replaces every certificate at once; handshakes in progress finish with the old map.
    pub fn replace(&self, map: CertMap) {
        self.map.store(Arc::new(map));
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.map.load().lookup(hello.server_name())
    }
}

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
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.ignore_client_order = true;
    config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE_SIZE);
    config.ticketer = aws_lc_rs::Ticketer::new()?;
    Ok(Arc::new(config))
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
