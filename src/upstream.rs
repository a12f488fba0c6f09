//! Upstream pools: members, the balancing policy (`upstream/balance.rs`), and a keep-alive
//! connection pool per member built
//! on `hyper::client::conn::http1`, so later work can add per-member caps, a queue, idle
//! timeouts learned from `Keep-Alive`, and replay on a dead pooled connection.

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

use crate::config::{Timeouts, UpstreamAddr, UpstreamPool};
use crate::error::ProxyError;

mod balance;

use balance::{Balancer, Key, Load};

/// The request body type sent upstream.
pub type ReqBody = Incoming;

/// How long checkout waits for a pooled connection to become ready again. One whose response
/// ended while its request body was still being sent (an app answering an upload early) can
/// stay busy; after this wait it is dropped and the next one tried, instead of stalling the
/// request.
const READY_WAIT: Duration = Duration::from_millis(250);

/// Most idle connections kept per member; more are closed when returned.
const MAX_IDLE_PER_MEMBER: usize = 256;

/// A route's upstream members.
#[derive(Debug)]
pub struct Pool {
    members: Vec<Arc<Member>>,
    weights: Vec<u32>,
    balancer: Balancer,
    connect_timeout: Duration,
    response_timeout: Duration,
    idle_timeout: Duration,
}

/// One upstream address and its idle connections.
#[derive(Debug)]
pub struct Member {
    addr: UpstreamAddr,
    /// `addr` as text, shared with every access-log line that names it.
    label: Arc<str>,
    idle: Mutex<Vec<IdleConn>>,
    load: Load,
}

/// Counts a request as in flight on its member until dropped (when the response body is done
/// or abandoned, or the attempt failed).
#[derive(Debug)]
pub struct InFlight(Arc<Member>);

impl InFlight {
    fn new(member: &Arc<Member>) -> InFlight {
        member.load.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(member.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.load.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Debug)]
struct IdleConn {
    sender: SendRequest<ReqBody>,
    since: Instant,
}

/// A connection checked out of a member's pool. Give it back with [`PooledConn::release`] once
/// the response body has been read to its end; dropping it closes the connection.
#[derive(Debug)]
pub struct PooledConn {
    sender: SendRequest<ReqBody>,
    member: Arc<Member>,
}

impl PooledConn {
    /// Returns the connection to its member's idle list for reuse.
    pub fn release(self) {
        if self.sender.is_closed() {
            return;
        }
        let mut idle = self.member.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE_PER_MEMBER {
            idle.push(IdleConn {
                sender: self.sender,
                since: Instant::now(),
            });
        }
    }
}

/// What `Pool::send` returns: the response head and body, the connection to release when the
/// body is done, and the member's label for the access log.
pub struct Sent {
    /// The upstream's response.
    pub response: Response<Incoming>,
    /// The connection it came on.
    pub conn: PooledConn,
    /// Which member answered.
    pub upstream: Arc<str>,
    /// Keeps the request counted on its member until the body is done.
    pub in_flight: InFlight,
}

impl Pool {
    /// The longest wait for the response head, and between two reads of the response body.
    pub fn read_timeout(&self) -> Duration {
        self.response_timeout
    }

    /// A pool over `addrs` with the configured timeouts.
    pub fn new(pool: &UpstreamPool, timeouts: &Timeouts) -> Pool {
        let weights: Vec<u32> = pool.members.iter().map(|m| m.weight).collect();
        let labels: Vec<String> = pool.members.iter().map(|m| m.addr.to_string()).collect();
        Pool {
            members: pool
                .members
                .iter()
                .zip(&labels)
                .map(|(m, label)| {
                    Arc::new(Member {
                        addr: m.addr.clone(),
                        label: label.as_str().into(),
                        idle: Mutex::new(Vec::new()),
                        load: Load::default(),
                    })
                })
                .collect(),
            balancer: Balancer::new(&pool.balance, &weights, &labels),
            weights,
            connect_timeout: timeouts.upstream_connect,
            response_timeout: timeouts.upstream_response,
            idle_timeout: timeouts.upstream_idle,
        }
    }

    /// Sends `req` to the member the pool's policy picks and waits for its response head.
    pub async fn send(
        &self,
        req: Request<ReqBody>,
        client: IpAddr,
    ) -> Result<Sent, (ProxyError, Arc<str>)> {
        let i = if self.members.len() == 1 {
            0
        } else {
            // at most a handful of members: a small stack-free Vec is fine, once per request
            let loads: Vec<&Load> = self.members.iter().map(|m| &m.load).collect();
            self.balancer.pick(
                &self.weights,
                &loads,
                &Key {
                    client,
                    headers: req.headers(),
                },
            )
        };
        let member = &self.members[i];
        tracing::debug!(upstream = %member.label, "member chosen");
        let in_flight = InFlight::new(member);
        let started = Instant::now();
        let fail = |e| (e, member.label.clone());
        let mut conn = match self.checkout(member).await {
            Some(c) => c,
            None => self.connect(member).await.map_err(fail)?,
        };
        let response = tokio::time::timeout(self.response_timeout, conn.sender.send_request(req))
            .await
            .map_err(|_| {
                fail(ProxyError::UpstreamTimeout {
                    addr: member.label.to_string(),
                })
            })?
            .map_err(|source| {
                fail(ProxyError::UpstreamProtocol {
                    addr: member.label.to_string(),
                    source,
                })
            })?;
        member.load.observe(started.elapsed());
        Ok(Sent {
            response,
            conn,
            upstream: member.label.clone(),
            in_flight,
        })
    }

    /// The most recently used idle connection that is still open and fresh.
    async fn checkout(&self, member: &Arc<Member>) -> Option<PooledConn> {
        loop {
            let candidate = {
                let mut idle = member.idle.lock().unwrap_or_else(|e| e.into_inner());
                match idle.pop() {
                    // LIFO: if the newest is too old, all are.
                    Some(c) if c.since.elapsed() >= self.idle_timeout => {
                        idle.clear();
                        None
                    }
                    other => other,
                }
            }?;
            let mut sender = candidate.sender;
            if sender.is_closed() {
                continue;
            }
            if sender.is_ready() {
                return Some(PooledConn {
                    sender,
                    member: member.clone(),
                });
            }
            // A connection released right after its response body ended may need a moment for
            // its task to become ready again; one that fails here is dead, so try the next.
            match tokio::time::timeout(READY_WAIT, sender.ready()).await {
                Ok(Ok(())) => {
                    return Some(PooledConn {
                        sender,
                        member: member.clone(),
                    })
                }
                _ => continue,
            }
        }
    }

    async fn connect(&self, member: &Arc<Member>) -> Result<PooledConn, ProxyError> {
        let label = || member.label.to_string();
        let connecting = async {
            match &member.addr {
                UpstreamAddr::Tcp { host, port } => {
                    let tcp = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
                    tcp.set_nodelay(true)?;
                    handshake(tcp).await
                }
                UpstreamAddr::Unix(path) => {
                    handshake(tokio::net::UnixStream::connect(path).await?).await
                }
            }
        };
        let sender = tokio::time::timeout(self.connect_timeout, connecting)
            .await
            .map_err(|_| ProxyError::UpstreamConnectTimeout { addr: label() })?
            .map_err(|source| ProxyError::UpstreamConnect {
                addr: label(),
                source,
            })?;
        Ok(PooledConn {
            sender,
            member: member.clone(),
        })
    }
}

async fn handshake<T>(io: T) -> std::io::Result<SendRequest<ReqBody>>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, conn) = http1::Builder::new()
        .handshake(TokioIo::new(io))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}
