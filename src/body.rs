//! Response body types. One enum instead of a boxed trait object, so the common paths (a short
//! usher-made body, an upstream body, a static file) cost no allocation of their own.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_http::compression::CompressionBody;
use tower_http::services::fs::ServeFileSystemResponseBody;

use crate::access_log::LogTail;
use crate::buffer::{HeldResponse, SpooledResponse};
use crate::upstream::{InFlight, PooledConn, RespBody};
use crate::wire::{EncodedHead, PassedHead};

/// The error type of every response body.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pin_project! {
    /// What usher sends to a client.
    #[project = BodyProj]
    pub enum Body {
        /// A body usher made (error text, redirects); `None` once sent.
        Full { data: Option<Bytes> },
        /// A body given with an encoded head, for usher's HTTP/1.1 path only: the response's
        /// header map is empty (see [`Body::encoded`]).
        Encoded { data: Option<Bytes>, head: Arc<EncodedHead>, numbers: [u64; 2] },
        /// An upstream response, streamed. (The larger bodies are boxed: a response moves
        /// several times on its way out, and a large enum would be copied each time.)
        Upstream { body: Box<UpstreamBody> },
        /// A static file.
        Static { #[pin] body: ServeFileSystemResponseBody },
        /// An upstream response read ahead of the client (response buffering).
        Spooled { body: Box<SpooledResponse> },
        /// A small upstream response read whole (response buffering).
        Held { body: Box<HeldResponse> },
        /// Any of the others, compressed for a client that accepts it.
        Compressed { body: Pin<Box<CompressionBody<Body>>> },
    }
}

impl Body {
    /// An empty body.
    pub fn empty() -> Body {
        Body::Full { data: None }
    }

    /// A body of fixed bytes.
    pub fn full(data: impl Into<Bytes>) -> Body {
        let data = data.into();
        Body::Full {
            data: (!data.is_empty()).then_some(data),
        }
    }

    /// `data` (`None` for a HEAD) sent with `head`, the numbered lines filled in with
    /// `numbers`. Only for usher's HTTP/1.1 path (see `proxy::Writer`): its response carries no
    /// header map, so hyper could not send it.
    pub fn encoded(data: Option<Bytes>, head: Arc<EncodedHead>, numbers: [u64; 2]) -> Body {
        Body::Encoded {
            data: data.filter(|d| !d.is_empty()),
            head,
            numbers,
        }
    }

    /// The encoded head and its numbers, for a body made by [`Body::encoded`].
    pub fn encoded_head(&self) -> Option<(&EncodedHead, &[u64; 2])> {
        match self {
            Body::Encoded { head, numbers, .. } => Some((head, numbers)),
            _ => None,
        }
    }

    /// The app's header lines, passed on in place of the response's (empty) header map: only
    /// for usher's HTTP/1.1 path (see `Pool::send`).
    pub fn passed_head(&self) -> Option<&PassedHead> {
        match self {
            Body::Upstream { body } => body.passed_head(),
            _ => None,
        }
    }
}

impl HttpBody for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project() {
            BodyProj::Full { data } | BodyProj::Encoded { data, .. } => {
                Poll::Ready(data.take().map(|d| Ok(Frame::data(d))))
            }
            BodyProj::Upstream { body } => Pin::new(body).poll_frame(cx),
            BodyProj::Static { body } => body.poll_frame(cx).map_err(Into::into),
            BodyProj::Spooled { body } => Pin::new(body).poll_frame(cx),
            BodyProj::Held { body } => Pin::new(body).poll_frame(cx),
            BodyProj::Compressed { body } => body.as_mut().poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Full { data } | Body::Encoded { data, .. } => data.is_none(),
            Body::Upstream { body } => body.is_end_stream(),
            Body::Static { body } => body.is_end_stream(),
            Body::Spooled { body } => body.is_end_stream(),
            Body::Held { body } => body.is_end_stream(),
            Body::Compressed { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full { data } | Body::Encoded { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Body::Upstream { body } => body.size_hint(),
            Body::Static { body } => body.size_hint(),
            Body::Spooled { body } => body.size_hint(),
            Body::Held { body } => body.size_hint(),
            Body::Compressed { body } => body.size_hint(),
        }
    }
}

/// A client's request body: hyper's, or none (the HTTP/1.1 fast path in `server/h1.rs` takes
/// only requests without one).
#[derive(Debug)]
pub enum ClientBody {
    /// The body as hyper reads it.
    Hyper(Incoming),
    /// No body.
    Empty,
}

impl HttpBody for ClientBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ClientBody::Hyper(body) => Pin::new(body).poll_frame(cx),
            ClientBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Hyper(body) => body.is_end_stream(),
            ClientBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::Hyper(body) => body.size_hint(),
            ClientBody::Empty => SizeHint::with_exact(0),
        }
    }
}

/// An upstream response body that hands its connection back to the pool once read to the end,
/// and gives up on an upstream that stalls: no data for `read_timeout` ends the body with an
/// error (the client sees the response cut) and closes the upstream connection.
#[derive(Debug)]
pub struct UpstreamBody {
    body: RespBody,
    conn: Option<PooledConn>,
    /// Counts the request on its member until the body is done or dropped.
    _in_flight: Option<InFlight>,
    read_timeout: Duration,
    /// Created on the first read that has to wait, so bodies that arrive whole cost no timer.
    stall: Option<Pin<Box<Sleep>>>,
    /// The whole body, read before the response was handed on; `body` is then at its end.
    read: Option<Bytes>,
}

impl UpstreamBody {
    /// Wraps an upstream body and the connection it arrives on; `read`, the whole body when
    /// it was read before the response was handed on (`Sent::read`).
    pub fn new(
        body: RespBody,
        conn: PooledConn,
        read_timeout: Duration,
        in_flight: Option<InFlight>,
        read: Option<Bytes>,
    ) -> UpstreamBody {
        UpstreamBody {
            body,
            conn: Some(conn),
            _in_flight: in_flight,
            read_timeout,
            stall: None,
            read,
        }
    }

    /// The app's header lines, when the response passes them on as they came.
    pub fn passed_head(&self) -> Option<&PassedHead> {
        match &self.body {
            RespBody::Wire(b) => b.passed_head(),
            RespBody::Hyper(_) => None,
        }
    }

    /// The same, taken out (the response needs its header map after all).
    pub fn take_passed_head(&mut self) -> Option<PassedHead> {
        match &mut self.body {
            RespBody::Wire(b) => b.take_passed_head(),
            RespBody::Hyper(_) => None,
        }
    }

    fn release(&mut self) {
        if let Some(conn) = self.conn.take() {
            conn.release(&mut self.body);
        }
    }
}

impl HttpBody for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(data) = self.read.take() {
            self.release();
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        let timeout = self.read_timeout;
        let frame = match Pin::new(&mut self.body).poll_frame(cx) {
            Poll::Ready(frame) => {
                if let Some(stall) = self.stall.as_mut() {
                    stall.as_mut().reset(Instant::now() + timeout);
                }
                frame
            }
            Poll::Pending => {
                let stall = self
                    .stall
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                ready!(stall.as_mut().poll(cx));
                self.conn = None;
                let msg = format!("upstream sent no body data for {timeout:?}");
                tracing::error!("{msg}; cutting the response");
                return Poll::Ready(Some(Err(msg.into())));
            }
        };
        match &frame {
            None => self.release(),
            Some(Ok(_)) if self.body.is_end_stream() => self.release(),
            // An error mid-body leaves the connection in an unknown state: drop it.
            Some(Err(_)) => self.conn = None,
            Some(Ok(_)) => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.read.is_none() && self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match &self.read {
            Some(data) => SizeHint::with_exact(data.len() as u64),
            None => self.body.size_hint(),
        }
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // hyper may stop polling once `is_end_stream` says so: the connection is still reusable.
        // A body dropped half-read (client went away) closes its connection with the drop.
        if self.body.is_end_stream() {
            self.release();
        }
    }
}

pin_project! {
    /// The body actually handed to hyper: counts bytes for the access log, which it writes
    /// when the response is done (or abandoned), and marks the request finished for the
    /// connection's idle watcher.
    pub struct Logged {
        #[pin]
        inner: Body,
        tail: LogTail,
    }
}

impl Logged {
    /// Wraps `inner`; `tail` writes the log line on drop.
    pub fn new(inner: Body, tail: LogTail) -> Logged {
        Logged { inner, tail }
    }
}

impl Logged {
    /// See [`Body::encoded_head`].
    pub fn encoded_head(&self) -> Option<(&EncodedHead, &[u64; 2])> {
        self.inner.encoded_head()
    }

    /// See [`Body::passed_head`].
    pub fn passed_head(&self) -> Option<&PassedHead> {
        self.inner.passed_head()
    }
}

impl HttpBody for Logged {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        if let Some(Ok(f)) = &frame {
            if let Some(d) = f.data_ref() {
                this.tail.bytes += d.len() as u64;
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
