//! The HTTP client instant-acme talks to the CA through: one short HTTPS connection per
//! request (ACME traffic is a few dozen requests per certificate), TCP_NODELAY (Nagle made
//! issuance about ten times slower on loopback), public roots plus the configured `ca_roots`,
//! and a time limit on every step.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{header, Request, Response, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use instant_acme::{BodyWrapper, BytesResponse, Error, HttpClient};
use rustls::pki_types::ServerName;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

type RetryAfter = Arc<std::sync::Mutex<std::collections::HashMap<String, SystemTime>>>;

/// Longest wait for any one step of a request to the CA.
const STEP: Duration = Duration::from_secs(30);

/// See the module docs.
#[derive(Clone)]
pub struct AcmeHttp {
    tls: tokio_rustls::TlsConnector,
    /// Per CA (host:port), the time before which it asked not to be contacted again, from
    /// Retry-After on a 429 or 503 (instant-acme's errors do not carry it). Every site's
    /// back-off honours it.
    retry_after: RetryAfter,
}

impl AcmeHttp {
    /// Trusts the public web roots plus every certificate in the `extra` PEM files.
    pub fn new(extra: &[PathBuf]) -> Result<AcmeHttp, String> {
        let mut roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        for path in extra {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("acme.ca_roots {}: {e}", path.display()))?;
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| format!("acme.ca_roots {}: {e}", path.display()))?;
            }
        }
        let config = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(AcmeHttp {
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
            retry_after: Arc::default(),
        })
    }

    /// How much longer the CA behind `directory` asked not to be contacted, if it did.
    pub fn retry_after_for(&self, directory: &str) -> Option<Duration> {
        let authority = directory
            .parse::<Uri>()
            .ok()?
            .authority()?
            .as_str()
            .to_owned();
        let map = self.retry_after.lock().unwrap_or_else(|e| e.into_inner());
        let left = map
            .get(&authority)?
            .duration_since(SystemTime::now())
            .ok()?;
        (!left.is_zero()).then_some(left)
    }
}

fn other(e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::Other(Box::new(e))
}

fn timed_out(what: &'static str) -> Error {
    Error::Other(format!("{what}: no answer from the CA within {STEP:?}").into())
}

async fn send(
    tls: tokio_rustls::TlsConnector,
    retry_after: RetryAfter,
    req: Request<BodyWrapper<Bytes>>,
) -> Result<BytesResponse, Error> {
    let uri = req.uri().clone();
    let host = uri
        .host()
        .ok_or(Error::Str("no host in the ACME URL"))?
        .to_owned();
    if uri.scheme_str() != Some("https") {
        return Err(Error::Str("ACME URLs must be https"));
    }
    let port = uri.port_u16().unwrap_or(443);
    let bare = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let tcp = tokio::time::timeout(STEP, tokio::net::TcpStream::connect((bare.as_str(), port)))
        .await
        .map_err(|_| timed_out("connect"))?
        .map_err(other)?;
    tcp.set_nodelay(true).map_err(other)?;
    let name = ServerName::try_from(bare).map_err(other)?;
    let stream = tokio::time::timeout(STEP, tls.connect(name, tcp))
        .await
        .map_err(|_| timed_out("TLS handshake"))?
        .map_err(other)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(other)?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let (mut parts, body) = req.into_parts();
    let authority = uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .unwrap_or_default();
    parts
        .headers
        .insert(header::HOST, authority.parse().map_err(other)?);
    parts.uri = uri
        .path_and_query()
        .map_or(Ok(Uri::from_static("/")), |pq| Uri::try_from(pq.as_str()))?;
    let resp = tokio::time::timeout(STEP, sender.send_request(Request::from_parts(parts, body)))
        .await
        .map_err(|_| timed_out("response"))?
        .map_err(other)?;
    let (parts, body) = resp.into_parts();
    if matches!(parts.status.as_u16(), 429 | 503) {
        if let Some(at) = parts
            .headers
            .get(header::RETRY_AFTER)
            .and_then(|v| retry_at(v.to_str().ok()?))
        {
            retry_after
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(authority.clone(), at);
        }
    }
    let body = tokio::time::timeout(STEP, body.collect())
        .await
        .map_err(|_| timed_out("response body"))?
        .map_err(other)?
        .to_bytes();
    Ok(BytesResponse::from(Response::from_parts(
        parts,
        Full::new(body),
    )))
}

impl HttpClient for AcmeHttp {
    fn request(
        &self,
        req: Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, Error>> + Send>> {
        Box::pin(send(self.tls.clone(), self.retry_after.clone(), req))
    }
}

/// A Retry-After value (RFC 9110 section 10.2.3): delay seconds or an HTTP-date.
fn retry_at(v: &str) -> Option<SystemTime> {
    match v.trim().parse::<u64>() {
        Ok(secs) => Some(SystemTime::now() + Duration::from_secs(secs)),
        Err(_) => httpdate::parse_http_date(v.trim()).ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_kept_per_ca() {
        let http = AcmeHttp::new(&[]).unwrap();
        let later = SystemTime::now() + Duration::from_secs(600);
        http.retry_after
            .lock()
            .unwrap()
            .insert("ca.example:443".into(), later);
        let left = http.retry_after_for("https://ca.example:443/dir").unwrap();
        assert!(left > Duration::from_secs(590));
        // every site asking about that CA sees it; another CA does not
        assert!(http.retry_after_for("https://ca.example:443/dir").is_some());
        assert!(http.retry_after_for("https://other.example/dir").is_none());
        // a time in the past is no wait
        http.retry_after
            .lock()
            .unwrap()
            .insert("old.example".into(), SystemTime::UNIX_EPOCH);
        assert!(http.retry_after_for("https://old.example/dir").is_none());
    }

    #[test]
    fn retry_after_forms() {
        let soon = retry_at("120").unwrap();
        let d = soon.duration_since(SystemTime::now()).unwrap();
        assert!(d > Duration::from_secs(118) && d <= Duration::from_secs(120));
        let date = retry_at("Wed, 21 Oct 2015 07:28:00 GMT").unwrap();
        assert_eq!(
            date,
            httpdate::parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT").unwrap()
        );
        assert!(retry_at("soon").is_none());
    }
}
