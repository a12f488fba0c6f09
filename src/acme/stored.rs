//! ACME state in storage. Keys:
//! - `acme/accounts/<issuer>.json` (0600): the account credentials for one directory URL;
//! - `acme/sites/<name>/<version>/cert.pem`, `key.pem` (0600), `meta.json`: one issued
//!   certificate of a site, keyed by the site's first name;
//! - `acme/sites/<name>/current`: which version is in use. A new certificate is written in
//!   full under a new version first, then `current` is switched with one atomic write, then
//!   the old version is removed: a crash at any point leaves one complete, matching set.
//! - `acme/sites/<name>/state.json`: the manager's progress (failures, last error, next try).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};

use crate::certs::Storage;

/// What `meta.json` records about a stored certificate.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Meta {
    /// The directory URL of the CA that issued it.
    pub issuer: String,
    /// The names it covers, sorted.
    pub names: Vec<String>,
    /// Validity, in seconds since the Unix epoch.
    pub not_before: u64,
    /// Validity end, in seconds since the Unix epoch.
    pub not_after: u64,
    /// When usher plans to renew it, in seconds since the Unix epoch.
    pub renew_at: u64,
}

/// The manager's progress for a site, kept in `state.json` so `usher certs` (another
/// process, later another machine) can show it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct State {
    /// Consecutive failed attempts.
    pub failures: u32,
    /// The last failure, as logged.
    pub last_error: Option<String>,
    /// When the next attempt is planned, in seconds since the Unix epoch.
    pub next_attempt: Option<u64>,
}

/// Records a site's progress; a failure to write it is logged, never fatal.
pub async fn save_state(storage: &dyn Storage, primary: &str, state: &State) {
    let key = site_key(primary, "state.json");
    let bytes = serde_json::to_vec_pretty(state).unwrap_or_default();
    if let Err(e) = storage.store(&key, &bytes, false).await {
        tracing::warn!(path = %storage.describe(&key), error = %e, "cannot record ACME state");
    }
}

/// A site's recorded progress, if any.
pub async fn load_state(storage: &dyn Storage, primary: &str) -> Option<State> {
    let bytes = storage
        .load(&site_key(primary, "state.json"))
        .await
        .ok()??;
    serde_json::from_slice(&bytes).ok()
}

/// Reads the stored metadata and chain of a site without checking the key (for listing and
/// revocation, which do not serve it).
pub async fn load_public(
    storage: &dyn Storage,
    primary: &str,
) -> std::io::Result<Option<(Meta, String)>> {
    let Some(v) = current_version(storage, primary).await? else {
        return Ok(None);
    };
    let (Some(meta), Some(chain)) = (
        storage.load(&version_key(primary, &v, "meta.json")).await?,
        storage.load(&version_key(primary, &v, "cert.pem")).await?,
    ) else {
        return Ok(None);
    };
    let meta: Meta = serde_json::from_slice(&meta).map_err(std::io::Error::other)?;
    Ok(Some((meta, String::from_utf8_lossy(&chain).into_owned())))
}

/// Removes a site's stored certificate, key, metadata and state.
pub async fn remove(storage: &dyn Storage, primary: &str) -> std::io::Result<()> {
    if let Some(v) = current_version(storage, primary).await? {
        storage.delete(&site_key(primary, "current")).await?;
        for f in FILES {
            storage.delete(&version_key(primary, &v, f)).await?;
        }
    }
    storage.delete(&site_key(primary, "state.json")).await
}

/// A certificate ready to serve, with what is known about it.
#[derive(Debug, Clone)]
pub struct Stored {
    /// The chain and key, for the TLS resolver.
    pub certified: Arc<CertifiedKey>,
    /// Its metadata.
    pub meta: Meta,
}

/// Seconds since the epoch.
pub fn secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The time at `secs` seconds since the epoch.
pub fn time(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

fn site_key(primary: &str, file: &str) -> String {
    format!("acme/sites/{primary}/{file}")
}

const FILES: [&str; 3] = ["cert.pem", "key.pem", "meta.json"];

/// The version `current` points at; `None` when there is none (or it is not a version name).
async fn current_version(storage: &dyn Storage, primary: &str) -> std::io::Result<Option<String>> {
    let Some(v) = storage.load(&site_key(primary, "current")).await? else {
        return Ok(None);
    };
    let v = String::from_utf8_lossy(&v).trim().to_owned();
    let valid = !v.is_empty() && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    Ok(valid.then_some(v))
}

fn version_key(primary: &str, version: &str, file: &str) -> String {
    format!("acme/sites/{primary}/{version}/{file}")
}

/// The storage key of an issuer's account: its directory URL made file-name safe.
pub fn account_key(directory: &str) -> String {
    let slug: String = directory
        .trim_start_matches("https://")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("acme/accounts/{slug}.json")
}

/// The validity period of the first certificate of a PEM chain.
pub fn validity(chain_pem: &str) -> Result<(SystemTime, SystemTime), String> {
    let der = CertificateDer::from_pem_slice(chain_pem.as_bytes()).map_err(|e| e.to_string())?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|e| e.to_string())?;
    let v = cert.validity();
    let t = |ts: i64| time(u64::try_from(ts).unwrap_or(0));
    Ok((t(v.not_before.timestamp()), t(v.not_after.timestamp())))
}

/// The ARI identifier of a certificate (RFC 9773 section 4.1): its Authority Key Identifier
/// and serial number, as they are encoded in the certificate.
pub fn certificate_id(
    cert: &CertificateDer<'_>,
) -> Option<instant_acme::CertificateIdentifier<'static>> {
    use x509_parser::extensions::ParsedExtension;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    let aki = parsed
        .iter_extensions()
        .find_map(|ext| match ext.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(aki) => {
                aki.key_identifier.as_ref().map(|k| k.0.to_vec())
            }
            _ => None,
        })?;
    let serial = parsed.tbs_certificate.raw_serial().to_vec();
    Some(
        instant_acme::CertificateIdentifier::new(
            rustls_pki_types::Der::from_slice(&aki),
            rustls_pki_types::Der::from_slice(&serial),
        )
        .into_owned(),
    )
}

/// Builds the servable form of a chain and key.
pub fn certified(
    chain_pem: &str,
    key_pem: &str,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, String> {
    let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("certificate: {e}"))?;
    if chain.is_empty() {
        return Err("no certificate in the chain".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| format!("key: {e}"))?;
    let ck = CertifiedKey::from_der(chain, key, provider).map_err(|e| e.to_string())?;
    ck.keys_match()
        .map_err(|e| format!("key does not belong to the certificate: {e}"))?;
    Ok(Arc::new(ck))
}

/// Loads a site's stored certificate. `None` when there is none; a damaged one is reported
/// with its path, set aside (renamed, kept for inspection) and treated as absent.
pub async fn load(
    storage: &dyn Storage,
    primary: &str,
    provider: &CryptoProvider,
) -> Option<Stored> {
    let version = match current_version(storage, primary).await {
        Ok(Some(v)) => v,
        Ok(None) => return None,
        Err(e) => {
            tracing::error!(path = %storage.describe(&site_key(primary, "current")), error = %e, "cannot read the stored certificate pointer");
            return None;
        }
    };
    let keys = FILES.map(|f| version_key(primary, &version, f));
    let mut files = Vec::new();
    for k in &keys {
        match storage.load(k).await {
            Ok(v) => files.push(v),
            Err(e) => {
                tracing::error!(path = %storage.describe(k), error = %e, "cannot read a stored certificate file");
                return None;
            }
        }
    }
    if files.iter().all(Option::is_none) {
        return None;
    }
    let parsed = (|| {
        let text = |v: &Option<Vec<u8>>, what: &str| {
            v.as_ref()
                .ok_or(format!("{what} is missing"))
                .and_then(|b| {
                    String::from_utf8(b.clone()).map_err(|_| format!("{what} is not text"))
                })
        };
        let (chain, key, meta) = (
            text(&files[0], "cert.pem")?,
            text(&files[1], "key.pem")?,
            text(&files[2], "meta.json")?,
        );
        let meta: Meta = serde_json::from_str(&meta).map_err(|e| format!("meta.json: {e}"))?;
        Ok::<_, String>(Stored {
            certified: certified(&chain, &key, provider)?,
            meta,
        })
    })();
    match parsed {
        Ok(s) => Some(s),
        Err(reason) => {
            for (k, f) in keys.iter().zip(&files) {
                if f.is_some() {
                    match storage.set_aside(k).await {
                        Ok(to) => {
                            tracing::error!(path = %storage.describe(k), set_aside = %to, %reason, "stored certificate is damaged; ordering a new one")
                        }
                        Err(e) => {
                            tracing::error!(path = %storage.describe(k), error = %e, %reason, "stored certificate is damaged and could not be set aside")
                        }
                    }
                }
            }
            None
        }
    }
}

/// Stores a new certificate as a new version, switches `current` to it, then removes the
/// version it replaces (see the module docs for why a crash can never mix two sets).
pub async fn save(
    storage: &dyn Storage,
    primary: &str,
    chain_pem: &str,
    key_pem: &str,
    meta: &Meta,
) -> std::io::Result<()> {
    let old = current_version(storage, primary).await.ok().flatten();
    let version = format!(
        "{}-{:06x}",
        secs(SystemTime::now()),
        (super::timing::random_unit() * f64::from(0xff_ffff)) as u32
    );
    let meta = serde_json::to_vec_pretty(meta).map_err(std::io::Error::other)?;
    storage
        .store(
            &version_key(primary, &version, "key.pem"),
            key_pem.as_bytes(),
            true,
        )
        .await?;
    storage
        .store(
            &version_key(primary, &version, "cert.pem"),
            chain_pem.as_bytes(),
            false,
        )
        .await?;
    storage
        .store(&version_key(primary, &version, "meta.json"), &meta, false)
        .await?;
    storage
        .store(&site_key(primary, "current"), version.as_bytes(), false)
        .await?;
    if let Some(old) = old.filter(|o| *o != version) {
        for f in FILES {
            if let Err(e) = storage.delete(&version_key(primary, &old, f)).await {
                tracing::warn!(path = %storage.describe(&version_key(primary, &old, f)), error = %e, "cannot remove a replaced certificate file");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ari_identifier_of_a_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let storage = crate::certs::FileStorage::open(dir.path()).unwrap();
        let ca = crate::certs::LocalCa::load_or_create(&storage)
            .await
            .unwrap();
        let leaf = ca
            .issue(&["a.test".into()], &crate::tls::provider())
            .unwrap();
        let id = certificate_id(&leaf.cert[0]).expect("the local CA's leaves carry an AKI");
        // base64url, no padding, joined by a dot when sent
        let text = id.to_string();
        let (aki, serial) = text.split_once('.').unwrap();
        assert!(!aki.is_empty() && !serial.is_empty());
        assert!(!text.contains('=') && !text.contains('+') && !text.contains('/'));
        // a certificate without an AKI has no identifier
        let key = rcgen::KeyPair::generate().unwrap();
        let bare = rcgen::CertificateParams::new(vec!["b.test".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        assert!(certificate_id(bare.der()).is_none());
    }

    #[test]
    fn account_keys_are_file_names() {
        assert_eq!(
            account_key("https://acme-v02.api.letsencrypt.org/directory"),
            "acme/accounts/acme-v02.api.letsencrypt.org_directory.json"
        );
        assert_eq!(
            account_key("https://127.0.0.1:14000/dir"),
            "acme/accounts/127.0.0.1_14000_dir.json"
        );
    }
}
