//! Slow-client buffering: usher, not the app, waits for slow clients.
//!
//! - A request body is read whole ([`read_request`]) before an upstream member is chosen: in
//!   memory up to `request_memory`, then in a temporary file. The app gets it at full speed
//!   with a Content-Length, and a copy can be sent again on a retry ([`Spooled`] is cheap to
//!   clone).
//! - A response body is read as fast as the app sends it ([`spool_response`]) into memory up
//!   to `response_memory`, then a temporary file, so the app's connection (and its worker) is
//!   free as soon as the response is complete; the client gets it at its own pace.
//!
//! Memory all buffers hold together is capped (`max_memory`): past it, bodies go to disk.
//! Temporary files are created already unlinked, so nothing is left behind, whatever happens
//! (error, client gone, crash).

use std::collections::VecDeque;
use std::fs::File;
use std::io::Write as _;
use std::os::unix::fs::FileExt as _;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::time::Instant;

use crate::body::{BoxError, ClientBody, UpstreamBody};
use crate::config::{Buffering, Timeouts};
use crate::error::ProxyError;

/// Size of one read from a spooled file.
const FILE_CHUNK: usize = 64 * 1024;

/// The buffers' shared settings and the memory they hold right now.
#[derive(Debug)]
pub struct Buffers {
    used: AtomicUsize,
    /// Temporary files made (request bodies and responses).
    files: std::sync::atomic::AtomicU64,
    settings: Buffering,
}

impl Buffers {
    /// Buffers with the configured limits.
    pub fn new(settings: Buffering) -> Arc<Buffers> {
        Arc::new(Buffers {
            used: AtomicUsize::new(0),
            files: std::sync::atomic::AtomicU64::new(0),
            settings,
        })
    }

    /// What it was made with.
    pub fn settings(&self) -> &Buffering {
        &self.settings
    }

    /// Bytes of the memory budget in use now.
    pub fn memory_used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Temporary files made so far.
    pub fn files_made(&self) -> u64 {
        self.files.load(Ordering::Relaxed)
    }

    /// The most of one response body kept in memory.
    pub fn response_memory(&self) -> usize {
        self.settings.response_memory
    }

    /// Takes `n` bytes of the global memory budget, if that many are left.
    fn reserve(&self, n: usize) -> bool {
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            if used + n > self.settings.max_memory {
                return false;
            }
            match self.used.compare_exchange_weak(
                used,
                used + n,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(now) => used = now,
            }
        }
    }

    fn release(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::Relaxed);
    }

    /// A new temporary file, already unlinked.
    fn temp_file(&self) -> Result<File, ProxyError> {
        self.files.fetch_add(1, Ordering::Relaxed);
        tempfile::tempfile_in(&self.settings.temp_dir).map_err(ProxyError::Spool)
    }
}

/// Memory taken from the budget, given back on drop.
#[derive(Debug)]
struct Reservation {
    buffers: Arc<Buffers>,
    bytes: usize,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.buffers.release(self.bytes);
    }
}

/// A complete request body held by usher: chunks in memory, or a temporary file.
#[derive(Debug, Clone)]
pub struct Spooled(Arc<SpoolData>);

#[derive(Debug)]
enum SpoolData {
    Memory {
        chunks: Vec<Bytes>,
        len: u64,
        _reserved: Reservation,
    },
    File {
        file: Arc<File>,
        len: u64,
    },
}

impl Spooled {
    /// The body's size in bytes.
    pub fn size(&self) -> u64 {
        match &*self.0 {
            SpoolData::Memory { len, .. } | SpoolData::File { len, .. } => *len,
        }
    }

    /// A body that sends it from the start (each call is independent: a retry gets its own).
    pub fn body(&self) -> SpooledBody {
        SpooledBody {
            data: self.clone(),
            next: 0,
        }
    }
}

/// What ended a request body read early.
fn too_large(limit: u64) -> ProxyError {
    ProxyError::BodyTooLarge { limit }
}

/// Reads a whole request body under the body-phase limits: no piece for `client_body`
/// (idle), slower than `client_min_rate` after the grace period, longer than
/// `client_body_max` in all: 408. More than `max_size` bytes (declared or sent): 413. A
/// malformed or cut-off body (bad chunk sizes, fewer bytes than declared): 400.
pub async fn read_request(
    mut body: ClientBody,
    max_size: u64,
    buffers: &Arc<Buffers>,
    timeouts: &Timeouts,
) -> Result<Spooled, ProxyError> {
    use http_body_util::BodyExt as _;
    if let Some(declared) = body.size_hint().exact() {
        if declared > max_size {
            return Err(too_large(max_size));
        }
    }
    let start = Instant::now();
    let ceiling = start
        .checked_add(timeouts.client_body_max)
        .unwrap_or(start + Duration::from_secs(86400 * 365));
    let mut last_progress = start;
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut len: u64 = 0;
    let mut reserved = Reservation {
        buffers: buffers.clone(),
        bytes: 0,
    };
    let mut file: Option<File> = None;
    loop {
        // wake at the idle limit, the ceiling, or (with a minimum rate) every second to check it
        let mut deadline = last_progress
            .checked_add(timeouts.client_body)
            .map_or(ceiling, |d| d.min(ceiling));
        if timeouts.client_min_rate > 0 {
            deadline = deadline.min(Instant::now() + Duration::from_secs(1));
        }
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(Some(Ok(frame))) => frame,
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                tracing::debug!(error = %e, "request body unreadable");
                return Err(ProxyError::BadRequest(
                    "the request body is malformed or incomplete",
                ));
            }
            Err(_) => {
                let now = Instant::now();
                if now >= ceiling {
                    return Err(ProxyError::ClientTimeout("request body took too long"));
                }
                if now >= last_progress + timeouts.client_body {
                    return Err(ProxyError::ClientTimeout("request body stalled"));
                }
                if too_slow(len, start, now, timeouts) {
                    return Err(ProxyError::ClientTimeout(
                        "request body below the minimum rate",
                    ));
                }
                continue;
            }
        };
        last_progress = Instant::now();
        if last_progress >= ceiling {
            return Err(ProxyError::ClientTimeout("request body took too long"));
        }
        let Ok(data) = frame.into_data() else {
            continue; // trailers of a request: not forwarded
        };
        len += data.len() as u64;
        if len > max_size {
            return Err(too_large(max_size));
        }
        if too_slow(len, start, Instant::now(), timeouts) {
            return Err(ProxyError::ClientTimeout(
                "request body below the minimum rate",
            ));
        }
        match &mut file {
            Some(f) => write_all(f, &data)?,
            None if len as usize <= buffers.settings.request_memory
                && buffers.reserve(data.len()) =>
            {
                reserved.bytes += data.len();
                chunks.push(data);
            }
            None => {
                // over the per-request or global memory limit: everything to disk
                let mut f = buffers.temp_file()?;
                for c in chunks.drain(..) {
                    write_all(&mut f, &c)?;
                }
                write_all(&mut f, &data)?;
                buffers.release(std::mem::take(&mut reserved.bytes));
                file = Some(f);
            }
        }
    }
    Ok(Spooled(Arc::new(match file {
        Some(f) => SpoolData::File {
            file: Arc::new(f),
            len,
        },
        None => SpoolData::Memory {
            chunks,
            len,
            _reserved: reserved,
        },
    })))
}

/// Whether a body at `len` bytes after `start` is below the minimum rate (after the grace).
fn too_slow(len: u64, start: Instant, now: Instant, t: &Timeouts) -> bool {
    let elapsed = now.duration_since(start);
    t.client_min_rate > 0
        && elapsed > t.client_min_rate_grace
        && (len as f64) < t.client_min_rate as f64 * elapsed.as_secs_f64()
}

/// Appends to a temporary file. Written in place, as nginx does with its temp files: a
/// write of one chunk goes to the page cache in microseconds, far less than a hop to the
/// blocking pool. A full disk is a 507.
fn write_all(file: &mut File, data: &Bytes) -> Result<(), ProxyError> {
    file.write_all(data).map_err(ProxyError::Spool)
}

/// Reads `n` bytes at `at` from a temporary file (in place, like the writes).
fn read_at(file: &File, at: u64, n: usize) -> std::io::Result<Bytes> {
    let mut buf = vec![0u8; n];
    file.read_exact_at(&mut buf, at)?;
    Ok(Bytes::from(buf))
}

/// A [`Spooled`] body being sent.
#[derive(Debug)]
pub struct SpooledBody {
    data: Spooled,
    /// Next chunk index (memory) or byte offset (file).
    next: u64,
}

impl SpooledBody {
    /// The same body from its start.
    pub fn again(&self) -> SpooledBody {
        self.data.body()
    }
}

impl HttpBody for SpooledBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = &mut *self;
        match &*this.data.0 {
            SpoolData::Memory { chunks, .. } => {
                let chunk = chunks.get(this.next as usize).cloned();
                this.next += 1;
                Poll::Ready(chunk.map(|c| Ok(Frame::data(c))))
            }
            SpoolData::File { file, len } => {
                if this.next >= *len {
                    return Poll::Ready(None);
                }
                let n = FILE_CHUNK.min((*len - this.next) as usize);
                let chunk = read_at(file, this.next, n)?;
                this.next += n as u64;
                Poll::Ready(Some(Ok(Frame::data(chunk))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &*self.data.0 {
            SpoolData::Memory { chunks, .. } => self.next as usize >= chunks.len(),
            SpoolData::File { len, .. } => self.next >= *len,
        }
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.data.size())
    }
}

/// What the producer of a spooled response shares with the body the client reads.
#[derive(Debug, Default)]
struct Spool {
    /// Chunks in memory, in order. While `spilling`, later chunks go to the file; the
    /// client reads the memory first, then the file.
    memory: VecDeque<(Bytes, Reservation)>,
    /// Bytes in `memory`: a client that keeps up keeps it small, and nothing goes to disk.
    memory_bytes: usize,
    /// The temporary file, created at the first spill and reused after.
    file: Option<File>,
    spilling: bool,
    /// Bytes in the file, and how far the client has read them.
    written: u64,
    read: u64,
    /// The response is complete (with its trailers) or failed.
    done: Option<Result<Option<HeaderMap>, String>>,
    /// When the app had sent everything (set with `done`, but not taken).
    complete: Option<Instant>,
    client_gone: bool,
    waker: Option<Waker>,
}

impl Spool {
    fn wake(&mut self) {
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    /// Takes one chunk from the app.
    fn push(&mut self, data: Bytes, buffers: &Arc<Buffers>) -> Result<(), String> {
        if self.spilling && self.memory.is_empty() && self.read == self.written {
            // the client caught up with the file: back to memory, the file reused from its start
            self.spilling = false;
            self.written = 0;
            self.read = 0;
        }
        if !self.spilling
            && self.memory_bytes + data.len() <= buffers.settings.response_memory
            && buffers.reserve(data.len())
        {
            self.memory_bytes += data.len();
            let reserved = Reservation {
                buffers: buffers.clone(),
                bytes: data.len(),
            };
            self.memory.push_back((data, reserved));
            return Ok(());
        }
        if self.file.is_none() {
            self.file = Some(buffers.temp_file().map_err(|e| e.to_string())?);
        }
        let file = self.file.as_ref().expect("created above");
        file.write_all_at(&data, self.written)
            .map_err(|e| format!("spooling the response to disk: {e}"))?;
        self.written += data.len() as u64;
        self.spilling = true;
        Ok(())
    }
}

/// Reads `upstream` to its end on a task of its own, as fast as the app sends it, and
/// returns the body the client reads at its own pace. The upstream connection goes back to
/// its pool as soon as the app has sent everything.
pub fn spool_response(
    upstream: UpstreamBody,
    buffers: &Arc<Buffers>,
    timeouts: &Timeouts,
) -> SpooledResponse {
    let shared = Arc::new(SpoolShared::default());
    let producer = Finisher(shared.clone());
    let buffers = buffers.clone();
    tokio::spawn(async move {
        let result = produce(upstream, &producer.0, &buffers).await;
        producer.finish(result);
    });
    SpooledResponse {
        shared,
        finished: false,
        limits: SendLimits::new(timeouts),
    }
}

/// The spool and the signal the client's side gives the producer: it read from the file
/// (room again under `max_file_size`), or it went away.
#[derive(Debug, Default)]
struct SpoolShared {
    spool: Mutex<Spool>,
    progress: tokio::sync::Notify,
}

impl SpoolShared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Spool> {
        self.spool.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Marks the response finished when the producer ends, however it ends (a panic
/// included), so the client's side never waits for nothing.
struct Finisher(Arc<SpoolShared>);

impl Finisher {
    fn finish(self, result: Result<Option<HeaderMap>, String>) {
        let mut s = self.0.lock();
        s.done = Some(result);
        s.complete = Some(Instant::now());
        s.wake();
    }
}

impl Drop for Finisher {
    fn drop(&mut self) {
        let mut s = self.0.lock();
        if s.complete.is_none() {
            s.done = Some(Err("the response was abandoned".into()));
            s.complete = Some(Instant::now());
            s.wake();
        }
    }
}

/// The response phase's limits, counted once the app has sent everything (from then on
/// any slowness is the client's own, and a long stream from a slow app is not cut): a
/// ceiling on the rest of the delivery, and a minimum rate after the grace period.
#[derive(Debug)]
struct SendLimits {
    max: Duration,
    rate: u64,
    grace: Duration,
    delivered: u64,
    /// When the whole response was in usher's hands, and how much had been delivered then.
    complete_at: Option<(Instant, u64)>,
    /// When the body was first asked for.
    first_asked: Option<Instant>,
}

impl SendLimits {
    fn new(t: &Timeouts) -> SendLimits {
        SendLimits {
            max: t.client_send_max,
            rate: t.client_min_rate,
            grace: t.client_min_rate_grace,
            delivered: 0,
            complete_at: None,
            first_asked: None,
        }
    }

    /// Counts `n` bytes handed to the client; an error when the client is too slow.
    fn sent(&mut self, n: usize) -> Result<(), BoxError> {
        self.delivered += n as u64;
        if let Some((at, before)) = self.complete_at {
            let elapsed = Instant::now().duration_since(at);
            if elapsed > self.max {
                return Err("response delivery took longer than client_send_max".into());
            }
            if self.rate > 0
                && elapsed > self.grace
                && ((self.delivered - before) as f64) < self.rate as f64 * elapsed.as_secs_f64()
            {
                return Err("client reads the response below client_min_rate".into());
            }
        }
        Ok(())
    }
}

async fn produce(
    mut upstream: UpstreamBody,
    shared: &SpoolShared,
    buffers: &Arc<Buffers>,
) -> Result<Option<HeaderMap>, String> {
    use http_body_util::BodyExt as _;
    // nobody to deliver to: stop reading; the upstream connection closes
    let gone = || Err("client gone".to_owned());
    loop {
        let frame = tokio::select! {
            f = upstream.frame() => f,
            // the client's side went away (or read on) while the app was quiet
            _ = shared.progress.notified() => {
                if shared.lock().client_gone {
                    return gone();
                }
                continue;
            }
        };
        let data = match frame {
            None => return Ok(None),
            Some(Err(e)) => return Err(e.to_string()),
            Some(Ok(f)) => match f.into_data() {
                Ok(d) => d,
                Err(f) => return Ok(f.into_trailers().ok()),
            },
        };
        {
            let mut s = shared.lock();
            if s.client_gone {
                return gone();
            }
            s.push(data, buffers)?;
            s.wake();
        }
        // past max_file_size on disk, read the app only as fast as the client reads
        loop {
            {
                let s = shared.lock();
                if s.client_gone {
                    return gone();
                }
                if s.written - s.read <= buffers.settings.max_file_size {
                    break;
                }
            }
            shared.progress.notified().await;
        }
    }
}

/// The client's side of a spooled response.
#[derive(Debug)]
pub struct SpooledResponse {
    shared: Arc<SpoolShared>,
    finished: bool,
    limits: SendLimits,
}

impl SpooledResponse {
    /// `chunk` for the client, unless the client has been too slow.
    fn deliver(&mut self, chunk: Bytes) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Err(e) = self.limits.sent(chunk.len()) {
            tracing::debug!(error = %e, "cutting a slow client's response");
            self.finished = true;
            return Poll::Ready(Some(Err(e)));
        }
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }
}

impl HttpBody for SpooledResponse {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.finished {
            return Poll::Ready(None);
        }
        let mut s = this.shared.lock();
        let first_asked = *this.limits.first_asked.get_or_insert_with(Instant::now);
        // (timed from the app's end, not from this look: a client whose socket was full
        // meanwhile has been slow since then, and nothing was delivered in between; but never
        // from before the body was first asked for, which can wait on HTTP/2 flow control or
        // a pipelined response ahead of it)
        if let (Some(at), None) = (s.complete, this.limits.complete_at) {
            this.limits.complete_at = Some((at.max(first_asked), this.limits.delivered));
        }
        if let Some((chunk, _reserved)) = s.memory.pop_front() {
            s.memory_bytes -= chunk.len();
            drop(s);
            return this.deliver(chunk);
        }
        if s.read < s.written {
            let n = FILE_CHUNK.min((s.written - s.read) as usize);
            let file = s.file.as_ref().expect("written to");
            let chunk = read_at(file, s.read, n)?;
            s.read += n as u64;
            drop(s);
            this.shared.progress.notify_one();
            return this.deliver(chunk);
        }
        match s.done.take() {
            Some(Ok(trailers)) => {
                this.finished = true;
                Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))))
            }
            Some(Err(e)) => {
                this.finished = true;
                Poll::Ready(Some(Err(e.into())))
            }
            None => {
                s.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.finished
    }
}

impl Drop for SpooledResponse {
    fn drop(&mut self) {
        {
            let mut s = self.shared.lock();
            s.client_gone = true;
            s.memory.clear();
            s.memory_bytes = 0;
        }
        self.shared.progress.notify_one();
    }
}

/// A small response read whole before its head is sent (its length was known and within
/// `response_memory`): no task, no lock, and the app's connection is already free.
#[derive(Debug)]
pub struct HeldResponse {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
    _reserved: Reservation,
}

/// Reads a response body of known `len` (at most `response_memory`) whole, taking its
/// memory from the budget; gives the body back untouched when the budget is spent.
pub async fn hold_response(
    upstream: UpstreamBody,
    len: u64,
    buffers: &Arc<Buffers>,
) -> Result<Result<HeldResponse, UpstreamBody>, BoxError> {
    use http_body_util::BodyExt as _;
    let len = len as usize;
    if !buffers.reserve(len) {
        return Ok(Err(upstream));
    }
    let reserved = Reservation {
        buffers: buffers.clone(),
        bytes: len,
    };
    let collected = upstream.collect().await?;
    let trailers = collected.trailers().cloned();
    let data = collected.to_bytes();
    Ok(Ok(HeldResponse {
        data: (!data.is_empty()).then_some(data),
        trailers,
        _reserved: reserved,
    }))
}

impl HttpBody for HeldResponse {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(d) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(d))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.data.as_ref().map_or(0, |d| d.len() as u64))
    }
}
