//! Challenge answers while an order is in progress: HTTP-01 tokens for the plain listener and
//! TLS-ALPN-01 certificates for handshakes that offer ALPN `acme-tls/1`. An answer stays until
//! its order is done (the CA validates from several places, several times).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use rcgen::{CertificateParams, CustomExtension, KeyPair};
use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::PrivateKeyDer;

/// The ALPN protocol of TLS-ALPN-01 (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// The answers usher currently gives.
#[derive(Debug, Default)]
pub struct Challenges {
    http: RwLock<HashMap<String, String>>,
    tls: RwLock<HashMap<String, Arc<CertifiedKey>>>,
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

impl Challenges {
    /// The key authorization for an HTTP-01 token.
    pub fn http_answer(&self, token: &str) -> Option<String> {
        read(&self.http).get(token).cloned()
    }

    /// The TLS-ALPN-01 certificate for a name.
    pub fn tls_answer(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        read(&self.tls).get(&name.to_ascii_lowercase()).cloned()
    }

    /// Starts answering an HTTP-01 token.
    pub fn add_http(&self, token: String, key_authorization: String) {
        write(&self.http).insert(token, key_authorization);
    }

    /// Starts answering TLS-ALPN-01 for `name` with a certificate carrying `digest`
    /// (SHA-256 of the key authorization) in the critical acmeIdentifier extension.
    pub fn add_tls(
        &self,
        name: &str,
        digest: &[u8],
        provider: &CryptoProvider,
    ) -> Result<(), String> {
        let key = KeyPair::generate().map_err(|e| e.to_string())?;
        let mut params =
            CertificateParams::new(vec![name.to_owned()]).map_err(|e| e.to_string())?;
        params.custom_extensions = vec![CustomExtension::new_acme_identifier(digest)];
        let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
        let key_der = PrivateKeyDer::try_from(key.serialize_der()).map_err(|e| e.to_string())?;
        // Not CertifiedKey::from_der: its key check parses the certificate with webpki, which
        // rejects the critical acmeIdentifier extension this certificate exists to carry. The
        // pair was made together just above.
        let signing = provider
            .key_provider
            .load_private_key(key_der)
            .map_err(|e| e.to_string())?;
        let ck = CertifiedKey::new(vec![cert.der().clone()], signing);
        write(&self.tls).insert(name.to_ascii_lowercase(), Arc::new(ck));
        Ok(())
    }

    /// Stops answering for a finished order.
    pub fn remove(&self, tokens: &[String], names: &[String]) {
        let mut http = write(&self.http);
        for t in tokens {
            http.remove(t);
        }
        drop(http);
        let mut tls = write(&self.tls);
        for n in names {
            tls.remove(&n.to_ascii_lowercase());
        }
    }
}
