//! `usher certs`: what the ACME manager holds for each site (read from storage, so it works
//! while usher runs, and later across machines), and `usher certs revoke NAME`.

use instant_acme::{Account, AccountCredentials, RevocationRequest};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use super::{http::AcmeHttp, stored};
use crate::certs::{FileStorage, Storage};
use crate::config::{Config, TlsMode};

fn when(secs: Option<u64>) -> String {
    secs.map_or("-".into(), |s| {
        humantime::format_rfc3339_seconds(stored::time(s)).to_string()
    })
}

/// One line per ACME site: names, issuer, expiry, planned renewal, next attempt, last error.
pub async fn list(config: &Config) -> Result<String, String> {
    let storage = FileStorage::at(&config.certs_dir);
    let mut rows = vec![[
        "NAMES".to_owned(),
        "ISSUER".into(),
        "EXPIRES".into(),
        "RENEWAL".into(),
        "NEXT ATTEMPT".into(),
        "LAST ERROR".into(),
    ]];
    for site in config.sites.iter().filter(|s| s.tls == TlsMode::Acme) {
        let primary = &site.names[0];
        let stored = stored::load_public(&storage, primary)
            .await
            .map_err(|e| format!("{}: {e}", storage.describe(primary)))?;
        let state = stored::load_state(&storage, primary)
            .await
            .unwrap_or_default();
        let (issuer, expires, renewal) = match &stored {
            Some((meta, _)) => (
                meta.issuer.clone(),
                when(Some(meta.not_after)),
                when(Some(meta.renew_at)),
            ),
            None => ("(none yet)".into(), "-".into(), "-".into()),
        };
        rows.push([
            site.names.join(","),
            issuer,
            expires,
            renewal,
            when(state.next_attempt),
            state.last_error.unwrap_or_else(|| "-".into()),
        ]);
    }
    if rows.len() == 1 {
        return Ok("no site uses ACME\n".into());
    }
    let widths: Vec<usize> = (0..6)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        for (c, cell) in row.iter().enumerate() {
            if c == 5 {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  ", w = widths[c]));
            }
        }
        out.push('\n');
    }
    Ok(out)
}

/// Revokes the stored certificate of the ACME site named `name` at the CA that issued it,
/// then removes it from storage. A running usher keeps serving it until it restarts.
pub async fn revoke(config: &Config, name: &str) -> Result<String, String> {
    let name = name.to_ascii_lowercase();
    let site = config
        .sites
        .iter()
        .find(|s| s.tls == TlsMode::Acme && s.names.contains(&name))
        .ok_or_else(|| format!("no ACME site is named {name:?}"))?;
    let primary = &site.names[0];
    let storage = FileStorage::at(&config.certs_dir);
    let (meta, chain) = stored::load_public(&storage, primary)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("no stored certificate for {primary}"))?;
    let cert = CertificateDer::from_pem_slice(chain.as_bytes()).map_err(|e| e.to_string())?;
    let key = stored::account_key(&meta.issuer);
    let creds = storage
        .load(&key)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| {
            format!(
                "no account for {} in {}",
                meta.issuer,
                storage.describe(&key)
            )
        })?;
    let creds: AccountCredentials = serde_json::from_slice(&creds).map_err(|e| e.to_string())?;
    let http = AcmeHttp::new(&config.acme.ca_roots)?;
    let account = Account::builder_with_http(Box::new(http))
        .from_credentials(creds)
        .await
        .map_err(|e| super::describe(&e))?;
    account
        .revoke(&RevocationRequest {
            certificate: &cert,
            reason: None,
        })
        .await
        .map_err(|e| super::describe(&e))?;
    stored::remove(&storage, primary)
        .await
        .map_err(|e| e.to_string())?;
    Ok(format!(
        "revoked and removed the certificate of {} (issuer {}); a running usher serves it until restarted, then orders a new one\n",
        site.names.join(","),
        meta.issuer
    ))
}
