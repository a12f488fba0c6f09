//! The floor of a proxy on this box: a relay that copies bytes between each client connection
//! and an upstream connection of its own, with no HTTP at all. It makes the same four socket
//! calls per proxied request as usher (read the request, write it upstream, read the answer,
//! write it back), so its CPU time per request is what the kernel and tokio cost before any
//! proxy work. `benches/adapters/floor-relay.sh` runs it in the shared harness's h1_small row
//! (see "The floor" under Benchmarks in the README).
//!
//!   cargo build --release --example floor_relay
//!   target/release/examples/floor_relay LISTEN UPSTREAM      e.g. 127.0.0.1:8080 127.0.0.1:9000

use tokio::net::{TcpListener, TcpStream};

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        eprintln!("usage: floor_relay LISTEN UPSTREAM");
        std::process::exit(2);
    };
    // one thread, as usher runs in the comparison (one CPU given)
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = TcpListener::bind(&listen).await?;
        loop {
            let (mut client, _) = listener.accept().await?;
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let Ok(mut app) = TcpStream::connect(&upstream).await else {
                    return;
                };
                let _ = client.set_nodelay(true);
                let _ = app.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut app).await;
            });
        }
    })
}
