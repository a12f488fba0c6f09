//! A test client: HTTP/1.1 or HTTP/2, plain or TLS (rustls, trusting a given CA, real SNI).

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use tokio::net::TcpStream;

use super::bounded;

/// Which HTTP version to speak (over TLS it is also the only ALPN protocol offered).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    H1,
    H2,
}

enum Sender {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

/// One client connection.
pub struct Client {
    sender: Sender,
    tls: bool,
    /// The leaf certificate the server presented (TLS only).
    pub peer_cert: Option<CertificateDer<'static>>,
    /// The ALPN protocol agreed (TLS only).
    pub alpn: Option<Vec<u8>>,
}

/// A complete response.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// Trailer fields after the body, if any came.
    pub trailers: Option<HeaderMap>,
}

impl Resp {
    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header as text ("" when absent).
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", |v| v.to_str().unwrap())
    }
}

/// A rustls client config that trusts `ca_pem` and offers `proto` only.
pub fn tls_config(ca_pem: &str, proto: Proto) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![match proto {
        Proto::H1 => b"http/1.1".to_vec(),
        Proto::H2 => b"h2".to_vec(),
    }];
    Arc::new(config)
}

impl Client {
    /// Connects without TLS (HTTP/2 is prior knowledge, h2c).
    pub async fn plain(addr: SocketAddr, proto: Proto) -> Client {
        let tcp = bounded("connect", TcpStream::connect(addr)).await.unwrap();
        let sender = handshake(TokioIo::new(tcp), proto).await.unwrap();
        Client {
            sender,
            tls: false,
            peer_cert: None,
            alpn: None,
        }
    }

    /// Connects over TLS, verifying the server as `server_name` (an IP address sends no SNI).
    pub async fn tls(
        addr: SocketAddr,
        server_name: &str,
        ca_pem: &str,
        proto: Proto,
    ) -> std::io::Result<Client> {
        let connector = tokio_rustls::TlsConnector::from(tls_config(ca_pem, proto));
        let name = ServerName::try_from(server_name.to_owned()).unwrap();
        let tcp = bounded("connect", TcpStream::connect(addr)).await?;
        let tls = bounded("TLS handshake", connector.connect(name, tcp)).await?;
        let (_, conn) = tls.get_ref();
        let peer_cert = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.clone().into_owned());
        let alpn = conn.alpn_protocol().map(<[u8]>::to_vec);
        let sender = handshake(TokioIo::new(tls), proto).await?;
        Ok(Client {
            sender,
            tls: true,
            peer_cert,
            alpn,
        })
    }

    /// Sends a request and returns the response head; the body streams.
    pub async fn send_streaming(
        &mut self,
        mut req: Request<Full<Bytes>>,
    ) -> hyper::Result<Response<Incoming>> {
        match &mut self.sender {
            Sender::H1(s) => {
                bounded("connection ready", s.ready()).await?;
                bounded("response head", s.send_request(req)).await
            }
            Sender::H2(s) => {
                // HTTP/2 carries the host in :authority, taken from an absolute URI.
                if req.uri().authority().is_none() {
                    let host = req.headers_mut().remove(http::header::HOST);
                    let host = host.as_ref().map_or("localhost", |h| h.to_str().unwrap());
                    let scheme = if self.tls { "https" } else { "http" };
                    let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
                    *req.uri_mut() = format!("{scheme}://{host}{pq}").parse().unwrap();
                }
                bounded("connection ready", s.ready()).await?;
                bounded("response head", s.send_request(req)).await
            }
        }
    }

    /// Sends a request and reads the whole response.
    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> Resp {
        let resp = self.send_streaming(req).await.expect("request failed");
        let (parts, body) = resp.into_parts();
        let collected = bounded("response body", body.collect()).await.unwrap();
        let trailers = collected.trailers().cloned();
        Resp {
            status: parts.status,
            version: parts.version,
            headers: parts.headers,
            body: collected.to_bytes(),
            trailers,
        }
    }

    /// GET `path` with `Host: host`.
    pub async fn get(&mut self, host: &str, path: &str) -> Resp {
        self.send(get(host, path)).await
    }
}

/// A GET request with a Host header and an empty body.
pub fn get(host: &str, path: &str) -> Request<Full<Bytes>> {
    Request::get(path)
        .header("host", host)
        .body(Full::default())
        .unwrap()
}

async fn handshake<T>(io: TokioIo<T>, proto: Proto) -> std::io::Result<Sender>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let err = std::io::Error::other;
    Ok(match proto {
        Proto::H1 => {
            let (s, conn) = bounded("h1 handshake", http1::handshake(io))
                .await
                .map_err(err)?;
            tokio::spawn(conn);
            Sender::H1(s)
        }
        Proto::H2 => {
            let (s, conn) = bounded("h2 handshake", http2::handshake(TokioExecutor::new(), io))
                .await
                .map_err(err)?;
            tokio::spawn(conn);
            Sender::H2(s)
        }
    })
}
