//! Certificate material: the `certs/` layout behind [`Storage`], the local CA that issues
//! certificates for `tls = "internal"` sites, and loading operator-supplied PEM files.
//!
//! Layout (keys in storage):
//! - `local-ca/root.crt`, `local-ca/root.key` (0600): the local CA, created on first start.
//!
//! Leaf certificates of internal sites are derived from the CA at start and re-issued by the
//! server long before they expire, so they are not stored.

mod storage;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use time::OffsetDateTime;

pub use storage::{write_atomic, FileStorage, Storage, StorageFuture};

use crate::error::StartupError;

const CA_CERT: &str = "local-ca/root.crt";
const CA_KEY: &str = "local-ca/root.key";

/// Lifetime of a leaf certificate from the local CA. Short, like Caddy's internal issuer, so a
/// leaked leaf is of little use; the server re-issues well before expiry.
pub const INTERNAL_LEAF_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);

/// usher's local certificate authority (`tls = "internal"`).
pub struct LocalCa {
    issuer: rcgen::Certificate,
    key: KeyPair,
    cert_pem: String,
    location: String,
}

impl std::fmt::Debug for LocalCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // never print key material
        f.debug_struct("LocalCa")
            .field("location", &self.location)
            .finish()
    }
}

impl LocalCa {
    /// Loads the CA from storage, or creates and stores a new one when there is none. A CA that
    /// exists but cannot be read is an error: replacing it would silently break every client
    /// that trusts it.
    pub async fn load_or_create(storage: &dyn Storage) -> Result<LocalCa, StartupError> {
        let io_err = |key: &str| {
            let path = storage.describe(key);
            move |source| StartupError::Storage {
                path: path.into(),
                source,
            }
        };
        let cert = storage.load(CA_CERT).await.map_err(io_err(CA_CERT))?;
        let key = storage.load(CA_KEY).await.map_err(io_err(CA_KEY))?;
        let location = storage.describe(CA_CERT);
        let bad = |key: &str, reason: String| StartupError::BadCertificate {
            path: storage.describe(key).into(),
            reason,
        };
        match (cert, key) {
            (None, None) => {
                let key = KeyPair::generate().map_err(gen_err("local CA key"))?;
                let issuer = ca_params().self_signed(&key).map_err(gen_err("local CA"))?;
                let cert_pem = issuer.pem();
                storage
                    .store(CA_KEY, key.serialize_pem().as_bytes(), true)
                    .await
                    .map_err(io_err(CA_KEY))?;
                storage
                    .store(CA_CERT, cert_pem.as_bytes(), false)
                    .await
                    .map_err(io_err(CA_CERT))?;
                tracing::info!(path = %location, "created a new local CA");
                Ok(LocalCa { issuer, key, cert_pem, location })
            }
            (Some(cert), Some(key)) => {
                let cert_pem = String::from_utf8(cert)
                    .map_err(|_| bad(CA_CERT, "not a PEM file".into()))?;
                let key_pem =
                    String::from_utf8(key).map_err(|_| bad(CA_KEY, "not a PEM file".into()))?;
                let key = KeyPair::from_pem(&key_pem)
                    .map_err(|e| bad(CA_KEY, format!("not a usable private key: {e}")))?;
                let params = CertificateParams::from_ca_cert_pem(&cert_pem)
                    .map_err(|e| bad(CA_CERT, format!("not a usable CA certificate: {e}")))?;
                // A key restored from another CA would sign leaves no client trusts: check
                // that the pair belongs together before using it.
                let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
                    .map_err(|e| bad(CA_CERT, format!("not a usable CA certificate: {e}")))?;
                let key_der = PrivateKeyDer::try_from(key.serialize_der())
                    .map_err(|e| bad(CA_KEY, format!("not a usable private key: {e}")))?;
                let provider = rustls::crypto::aws_lc_rs::default_provider();
                CertifiedKey::from_der(vec![cert_der], key_der, &provider)
                    .and_then(|ck| ck.keys_match())
                    .map_err(|e| bad(CA_KEY, format!("does not belong to {CA_CERT}: {e}")))?;
                // Re-signing the parsed params rebuilds an issuer with the same name and key;
                // only the stored certificate is ever handed to clients.
                let issuer = params
                    .self_signed(&key)
                    .map_err(|e| bad(CA_KEY, format!("does not match {CA_CERT}: {e}")))?;
                Ok(LocalCa { issuer, key, cert_pem, location })
            }
            (Some(_), None) => Err(bad(CA_KEY, "missing while the CA certificate exists; restore it, or remove the whole local-ca folder to create a new CA (clients must then trust the new one)".into())),
            (None, Some(_)) => Err(bad(CA_CERT, "missing while the CA key exists; restore it, or remove the whole local-ca folder to create a new CA".into())),
        }
    }

    /// Where the CA certificate is, for users to trust it.
    pub fn cert_location(&self) -> &str {
        &self.location
    }

    /// The CA certificate in PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Issues a leaf certificate for `names` (DNS names, `*.` wildcards or IP addresses).
    pub fn issue(
        &self,
        names: &[String],
        provider: &CryptoProvider,
    ) -> Result<Arc<CertifiedKey>, StartupError> {
        let what = || names.join(", ");
        let key = KeyPair::generate().map_err(gen_err(&what()))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        params.distinguished_name = dn;
        params.subject_alt_names = names
            .iter()
            .map(|n| match n.parse() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => n.clone().try_into().map(SanType::DnsName),
            })
            .collect::<Result<_, _>>()
            .map_err(gen_err(&what()))?;
        let now = OffsetDateTime::now_utc();
        // Backdated an hour for clients whose clocks run a little slow.
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + INTERNAL_LEAF_LIFETIME;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &self.issuer, &self.key)
            .map_err(gen_err(&what()))?;
        let chain = vec![cert.der().clone()];
        let key_der = PrivateKeyDer::try_from(key.serialize_der()).map_err(|e| {
            StartupError::BadCertificate {
                path: what().into(),
                reason: e.to_string(),
            }
        })?;
        Ok(Arc::new(CertifiedKey::from_der(chain, key_der, provider)?))
    }
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    let now = OffsetDateTime::now_utc();
    dn.push(DnType::CommonName, format!("usher local CA {}", now.date()));
    dn.push(DnType::OrganizationName, "usher");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(3650);
    params
}

fn gen_err(what: &str) -> impl FnOnce(rcgen::Error) -> StartupError + '_ {
    move |source| StartupError::CertGen {
        what: what.to_owned(),
        source,
    }
}

/// Loads an operator's certificate chain and private key (PEM) and checks that they match.
pub fn load_pem_files(
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, StartupError> {
    let bad = |path: &Path, reason: String| StartupError::BadCertificate {
        path: path.to_owned(),
        reason,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| bad(cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(bad(cert, "contains no CERTIFICATE block".into()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(key, e.to_string()))?;
    CertifiedKey::from_der(chain, key_der, provider)
        .map(Arc::new)
        .map_err(|e| bad(key, format!("does not match {}: {e}", cert.display())))
}
