//! Limits on the connections of one listener (inbound or outbound): how many may be open, how
//! long a client may take to send a complete request head, and how long a connection may sit
//! with no request in flight.
//!
//! - **Header-read timeout**: from accept (TLS handshake included) to the first complete
//!   request head; on HTTP/1.1, also from the first byte of each later request to its complete
//!   head. Slowloris, silent connections and HTTP/2 without its preface or a first request
//!   are closed when it passes.
//! - **Idle timeout**: with no request in flight (a request counts until its response body
//!   is sent), the connection is closed gracefully (HTTP/2 GOAWAY) when it passes.
//! - **Connection limit**: beyond it, a new connection is closed at once.
//!
//! Each of these is counted in `/metrics` when it fires.

use crate::http_util::Body;
use crate::metrics::Metrics;
use bytes::Bytes;
use hyper::body::{Frame, SizeHint};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// The limits of one listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            max_connections: 10_000,
        }
    }
}

/// The open connections of one listener, bounded by [`Limits::max_connections`].
pub struct Gate {
    pub limits: Limits,
    direction: &'static str,
    slots: Arc<Semaphore>,
    metrics: Metrics,
}

/// Held for as long as a connection is open.
pub struct Admitted {
    _permit: OwnedSemaphorePermit,
    _open: crate::metrics::OpenGauge,
}

impl Gate {
    pub fn new(direction: &'static str, limits: Limits, metrics: Metrics) -> Arc<Self> {
        Arc::new(Self {
            limits,
            direction,
            slots: Arc::new(Semaphore::new(limits.max_connections)),
            metrics,
        })
    }

    /// A slot for a newly accepted connection, or `None` (counted) when the listener is full.
    pub fn admit(&self) -> Option<Admitted> {
        match self.slots.clone().try_acquire_owned() {
            Ok(permit) => Some(Admitted {
                _permit: permit,
                _open: self.metrics.connection_open(self.direction),
            }),
            Err(_) => {
                self.metrics.connection_refused(self.direction);
                None
            }
        }
    }

    /// The activity record of a connection accepted now.
    pub fn activity(&self) -> Arc<Activity> {
        Arc::new(Activity {
            start: Instant::now(),
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            idle_since: AtomicU64::new(0),
            head_since: AtomicU64::new(NONE),
            seen_bytes: AtomicBool::new(false),
            http2: AtomicBool::new(false),
            changed: tokio::sync::Notify::new(),
        })
    }

    /// Counts a timeout that closed a connection.
    pub fn timed_out(&self, kind: Expiry) {
        self.metrics.connection_timeout(
            self.direction,
            match kind {
                Expiry::HeaderRead => "header_read",
                Expiry::Idle => "idle",
            },
        );
    }
}

const NONE: u64 = u64::MAX;

/// What a connection is waiting for when its deadline passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// A complete request head.
    HeaderRead,
    /// Its next request.
    Idle,
}

/// What one connection is doing, shared by its I/O wrapper, its requests and its watchdog.
/// Times are milliseconds since `start`.
pub struct Activity {
    start: Instant,
    in_flight: AtomicUsize,
    requests: AtomicU64,
    idle_since: AtomicU64,
    /// HTTP/1.1: when the first byte of a request head arrived with nothing in flight.
    head_since: AtomicU64,
    seen_bytes: AtomicBool,
    http2: AtomicBool,
    /// Woken when a head starts (the deadline moves earlier).
    changed: tokio::sync::Notify,
}

impl Activity {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(NONE - 1)
    }

    fn at(&self, ms: u64) -> Instant {
        self.start + Duration::from_millis(ms)
    }

    /// A request's head is complete: it is in flight until the guard (kept by its response
    /// body) is dropped.
    pub fn begin(self: &Arc<Self>) -> RequestGuard {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.requests.fetch_add(1, Ordering::SeqCst);
        self.head_since.store(NONE, Ordering::SeqCst);
        RequestGuard(self.clone())
    }

    fn read(&self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if !self.seen_bytes.swap(true, Ordering::SeqCst) && bytes.starts_with(b"PRI ") {
            self.http2.store(true, Ordering::SeqCst);
        }
        // HTTP/2 carries frames between requests (PING, WINDOW_UPDATE): only HTTP/1.1 bytes
        // with nothing in flight start a request head.
        if !self.http2.load(Ordering::SeqCst)
            && self.in_flight.load(Ordering::SeqCst) == 0
            && self.requests.load(Ordering::SeqCst) > 0
            && self
                .head_since
                .compare_exchange(NONE, self.now_ms(), Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        {
            self.changed.notify_one();
        }
    }

    /// When the connection expires if nothing changes, and why; `None` while a request is in
    /// flight.
    fn deadline(&self, limits: &Limits) -> Option<(Instant, Expiry)> {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return None;
        }
        if self.requests.load(Ordering::SeqCst) == 0 {
            return Some((self.start + limits.header_read_timeout, Expiry::HeaderRead));
        }
        let head = self.head_since.load(Ordering::SeqCst);
        if head != NONE {
            return Some((
                self.at(head) + limits.header_read_timeout,
                Expiry::HeaderRead,
            ));
        }
        Some((
            self.at(self.idle_since.load(Ordering::SeqCst)) + limits.idle_timeout,
            Expiry::Idle,
        ))
    }

    /// Resolves when the connection has expired under `limits`, saying why.
    pub async fn expired(&self, limits: &Limits) -> Expiry {
        loop {
            let now = Instant::now();
            let (wake, expiry) = match self.deadline(limits) {
                Some((at, why)) if at <= now => return why,
                Some((at, why)) => (at, Some(why)),
                // A request in flight: look again after an idle period (or when a head starts).
                None => (now + limits.idle_timeout, None),
            };
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => {
                    if let Some(why) = expiry
                        && self.deadline(limits).is_some_and(|(at, _)| at <= Instant::now())
                    {
                        return why;
                    }
                }
                _ = self.changed.notified() => {}
            }
        }
    }
}

/// One request in flight on a connection.
pub struct RequestGuard(Arc<Activity>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let a = &self.0;
        a.idle_since.store(a.now_ms(), Ordering::SeqCst);
        a.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A response body that keeps its request counted as in flight until it is sent (or dropped).
pub fn guarded(body: Body, guard: RequestGuard) -> Body {
    http_body_util::BodyExt::boxed_unsync(Guarded {
        inner: body,
        _guard: guard,
    })
}

struct Guarded {
    inner: Body,
    _guard: RequestGuard,
}

impl hyper::body::Body for Guarded {
    type Data = Bytes;
    type Error = crate::http_util::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The connection's I/O, noting what it reads in its [`Activity`].
pub struct Watched<IO> {
    io: IO,
    activity: Arc<Activity>,
}

impl<IO> Watched<IO> {
    pub fn new(io: IO, activity: Arc<Activity>) -> Self {
        Self { io, activity }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Watched<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            let fresh = &buf.filled()[before..];
            self.activity.read(fresh);
        }
        r
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Watched<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn limits() -> Limits {
        Limits {
            header_read_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(5),
            max_connections: 2,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_expires_waiting_for_its_head_then_when_idle() {
        let gate = Gate::new("test", limits(), Metrics::new());
        let a = gate.activity();
        let started = Instant::now();
        assert_eq!(a.expired(&gate.limits).await, Expiry::HeaderRead);
        assert_eq!(started.elapsed(), Duration::from_secs(2));

        // A request, then its response done: idle from then on.
        let a = gate.activity();
        let guard = a.begin();
        tokio::time::advance(Duration::from_secs(30)).await;
        drop(guard);
        let idle = Instant::now();
        assert_eq!(a.expired(&gate.limits).await, Expiry::Idle);
        assert_eq!(idle.elapsed(), Duration::from_secs(5));

        // HTTP/1.1: the first byte of the next head starts the header timer.
        let a = gate.activity();
        a.read(b"GET / HTTP/1.1\r\n\r\n");
        drop(a.begin());
        tokio::time::advance(Duration::from_secs(1)).await;
        a.read(b"G");
        let head = Instant::now();
        assert_eq!(a.expired(&gate.limits).await, Expiry::HeaderRead);
        assert_eq!(head.elapsed(), Duration::from_secs(2));

        // HTTP/2 frames between requests do not.
        let a = gate.activity();
        a.read(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        drop(a.begin());
        a.read(b"\0\0\x08\x06\0\0\0\0\0ping1234");
        assert_eq!(a.expired(&gate.limits).await, Expiry::Idle);
    }

    #[test]
    fn the_listener_admits_up_to_its_limit() {
        let gate = Gate::new("test", limits(), Metrics::new());
        let one = gate.admit().unwrap();
        let _two = gate.admit().unwrap();
        assert!(gate.admit().is_none());
        drop(one);
        assert!(gate.admit().is_some());
    }
}
