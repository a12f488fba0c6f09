//! Upgrade requests (WebSocket and the like): the 101, then bytes both ways, plain and TLS.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::support::client::{tls_config, Proto};
use crate::support::{bounded, TestServer, Upstream};

/// Sends an upgrade request on `s`, checks the 101, then checks that bytes come back echoed.
pub(crate) async fn upgrade_and_echo<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S) {
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        bounded("101 head", s.read_exact(&mut byte)).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    for msg in [&b"ping"[..], b"a longer message through the tunnel"] {
        s.write_all(msg).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        bounded("echo", s.read_exact(&mut back)).await.unwrap();
        assert_eq!(back, msg);
    }
}

fn config(up: &Upstream) -> String {
    format!(
        "[[site]]\nnames = [\"app.test\"]\nhttp_redirect = false\n[[site.route]]\npath = \"/\"\nproxy = [\"{}\"]\n",
        up.addr
    )
}

#[tokio::test]
async fn upgrade_tunnel_over_plain_http() {
    let up = Upstream::start("ws").await;
    let usher = TestServer::start(&config(&up)).await;
    let mut s = tokio::net::TcpStream::connect(usher.http).await.unwrap();
    upgrade_and_echo(&mut s).await;
    // the app got the upgrade headers, which are stripped as hop-by-hop from other requests
    let seen = &up.seen()[0];
    assert_eq!(seen.headers["upgrade"], "websocket");
    assert_eq!(seen.headers["connection"], "upgrade");
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
}

#[tokio::test]
async fn upgrade_tunnel_over_tls() {
    let up = Upstream::start("ws").await;
    let usher = TestServer::start(&config(&up)).await;
    let connector = tokio_rustls::TlsConnector::from(tls_config(usher.ca(), Proto::H1));
    let tcp = tokio::net::TcpStream::connect(usher.https()).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("app.test").unwrap();
    let mut s = bounded("tls", connector.connect(name, tcp)).await.unwrap();
    upgrade_and_echo(&mut s).await;
}

#[tokio::test]
async fn an_idle_tunnel_is_closed() {
    let up = Upstream::start("ws").await;
    let usher = TestServer::start(&format!(
        "[timeouts]\nclient_idle = \"300ms\"\n{}",
        config(&up)
    ))
    .await;
    let mut s = tokio::net::TcpStream::connect(usher.http).await.unwrap();
    upgrade_and_echo(&mut s).await;
    // nothing sent: after client_idle usher closes the tunnel (read returns 0)
    let mut buf = [0u8; 16];
    let n = bounded("tunnel close", s.read(&mut buf)).await.unwrap_or(0);
    assert_eq!(n, 0);
}

/// An upgraded tunnel keeps counting under `max_connections_per_ip` after its HTTP
/// connection has become a tunnel: a second connection from the address is closed.
#[tokio::test]
async fn a_tunnel_counts_under_the_per_ip_cap() {
    let up = Upstream::start("ws").await;
    let usher = TestServer::start(&format!(
        "[limits]\nmax_connections_per_ip = 1\n{}",
        config(&up)
    ))
    .await;
    let mut s = tokio::net::TcpStream::connect(usher.http).await.unwrap();
    upgrade_and_echo(&mut s).await;
    let mut second = tokio::net::TcpStream::connect(usher.http).await.unwrap();
    let _ = second
        .write_all(b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .await;
    let mut buf = [0u8; 64];
    let n = bounded("second connection", second.read(&mut buf))
        .await
        .unwrap_or(0);
    assert_eq!(
        n, 0,
        "a second connection was served while the tunnel was open"
    );
    // the tunnel still works
    s.write_all(b"still here").await.unwrap();
    let mut back = [0u8; 10];
    bounded("echo", s.read_exact(&mut back)).await.unwrap();
    assert_eq!(&back, b"still here");
}
