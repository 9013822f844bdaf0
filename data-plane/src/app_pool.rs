//! HTTP/1.1 connections to the local application, pooled and capped: however many inbound
//! requests (HTTP/2 streams from many callers) arrive at once, at most `max` connections are
//! open to the app (`--max-app-connections`); a request waits for a free one up to
//! `queue_timeout` (`--app-queue-timeout`), then gets a 503. A connection returns to the pool
//! when its response body has been read to the end, and one idle for `idle_timeout` is closed,
//! so that a burst's connections (and their memory) go away.
//!
//! Invariant: a request holds a slot (semaphore permit) from before it takes or opens a
//! connection until its response is done, and a connection is opened only when none is idle;
//! a finished connection is returned to the pool before its slot is released. So open
//! connections never exceed `max`.

use crate::http_util::Body;
use crate::metrics::Metrics;
use crate::upstream::UpstreamError;
use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub struct AppPool {
    max: usize,
    slots: Arc<Semaphore>,
    idle: Mutex<Vec<(SendRequest<Body>, Instant)>>,
    queue_timeout: Duration,
    idle_timeout: Duration,
    connect_timeout: Duration,
    metrics: Metrics,
}

impl AppPool {
    pub fn new(
        max: usize,
        queue_timeout: Duration,
        idle_timeout: Duration,
        metrics: Metrics,
    ) -> Arc<Self> {
        let pool = Arc::new(Self {
            max,
            slots: Arc::new(Semaphore::new(max)),
            idle: Mutex::new(Vec::new()),
            queue_timeout,
            idle_timeout,
            connect_timeout: Duration::from_secs(5),
            metrics,
        });
        // Closes connections idle too long, even when no request comes to reuse them.
        let weak: Weak<Self> = Arc::downgrade(&pool);
        let every = (idle_timeout / 2).clamp(Duration::from_millis(100), Duration::from_secs(10));
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    let Some(pool) = weak.upgrade() else { return };
                    pool.prune();
                }
            });
        }
        pool
    }

    fn prune(&self) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.retain(|(s, since)| !s.is_closed() && since.elapsed() < self.idle_timeout);
    }

    /// Sends `req` (origin-form URI, `Host` set) to the application at `addr`.
    pub async fn send(
        self: &Arc<Self>,
        addr: SocketAddr,
        req: Request<Body>,
    ) -> Result<Response<Body>, UpstreamError> {
        let permit = match tokio::time::timeout(
            self.queue_timeout,
            self.slots.clone().acquire_owned(),
        )
        .await
        {
            Ok(Ok(p)) => p,
            _ => {
                self.metrics.app_queue_overflow();
                return Err(UpstreamError::Overflow(format!(
                    "no connection to the application was free within {:?} \
                     (--max-app-connections {})",
                    self.queue_timeout, self.max
                )));
            }
        };
        let mut req = req;
        // A pooled connection that turns out closed before the request was written is
        // replaced by a new one, once.
        for round in 0..2 {
            let (mut sender, reused) = match self.take_idle().await {
                Some(s) if round == 0 => (s, true),
                _ => (self.connect(addr).await?, false),
            };
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    let back = Some((sender, self.clone(), permit));
                    return Ok(resp.map(|inner| {
                        crate::http_util::boxed(Returning {
                            inner,
                            done: false,
                            back,
                        })
                    }));
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) if reused => req = unsent,
                    Some(_) => {
                        return Err(UpstreamError::Connect(crate::error_chain(&e.into_error())));
                    }
                    None => return Err(UpstreamError::Reset(crate::error_chain(&e.into_error()))),
                },
            }
        }
        Err(UpstreamError::Connect(
            "the application connection closed before the request was sent".into(),
        ))
    }

    /// An idle connection that is still usable.
    async fn take_idle(&self) -> Option<SendRequest<Body>> {
        loop {
            let (mut s, since) = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop()?;
            if s.is_closed() || since.elapsed() >= self.idle_timeout {
                continue;
            }
            // Ready once the previous exchange is fully through hyper.
            if tokio::time::timeout(Duration::from_secs(1), s.ready())
                .await
                .is_ok_and(|r| r.is_ok())
            {
                return Some(s);
            }
        }
    }

    async fn connect(&self, addr: SocketAddr) -> Result<SendRequest<Body>, UpstreamError> {
        let connect = async {
            let tcp = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|e| UpstreamError::Connect(format!("application {addr}: {e}")))?;
            let _ = tcp.set_nodelay(true);
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                .await
                .map_err(|e| {
                    UpstreamError::Connect(format!(
                        "application {addr}: {}",
                        crate::error_chain(&e)
                    ))
                })?;
            let open = self.metrics.app_connection();
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(%addr, "application connection ended: {e}");
                }
                drop(open);
            });
            Ok(sender)
        };
        tokio::time::timeout(self.connect_timeout, connect)
            .await
            .map_err(|_| {
                UpstreamError::Connect(format!(
                    "application {addr}: no connection within {:?}",
                    self.connect_timeout
                ))
            })?
    }
}

/// A response body from the application: when read to the end, its connection goes back to
/// the pool (then the slot is freed); dropped early, the connection is closed.
struct Returning {
    inner: Incoming,
    done: bool,
    back: Option<(SendRequest<Body>, Arc<AppPool>, OwnedSemaphorePermit)>,
}

impl hyper::body::Body for Returning {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        match &r {
            Poll::Ready(None) => self.done = true,
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.done = true,
            _ => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Returning {
    fn drop(&mut self) {
        if let Some((sender, pool, permit)) = self.back.take() {
            if self.done || self.inner.is_end_stream() {
                pool.idle
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((sender, Instant::now()));
            }
            drop(permit);
        }
    }
}
