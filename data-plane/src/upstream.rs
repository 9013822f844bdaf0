//! Connections to upstreams, pooled:
//!
//! - **mesh**: mTLS to another sidecar's inbound listener, HTTP/2 (ALPN `h2`), one multiplexed
//!   connection per (endpoint, expected identities, TLS policy generation). The server's
//!   SPIFFE ID is checked against what the cluster expects during the handshake.
//! - **plain**: HTTP/1.1 to the local application (inbound) or to a cluster with upstream TLS
//!   disabled, through hyper-util's pooled client.
//!
//! Errors say whether anything reached the upstream: a retry of a non-idempotent request is
//! safe only when nothing did.

use crate::http_util::Body;
use crate::identity::Identity;
use crate::metrics::Metrics;
use crate::resources::{Cluster, Endpoint};
use crate::xds::store::Snapshot;
use http::{Request, Response};
use hyper::client::conn::http2::SendRequest;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// Nothing was sent: TCP connect, TLS handshake or peer identity failed, or the pooled
    /// connection was gone before the request was written.
    #[error("connect: {0}")]
    Connect(String),
    /// The request was (at least partly) sent, then the connection or stream failed before
    /// response headers arrived.
    #[error("reset: {0}")]
    Reset(String),
    /// The request's headers are larger than the upstream advertised it accepts
    /// (SETTINGS_MAX_HEADER_LIST_SIZE): nothing sent, the shared connection untouched.
    #[error(
        "the request headers are {size} bytes (HTTP/2 header-list size); the upstream accepts at most {limit}"
    )]
    HeadersTooLarge { size: usize, limit: u32 },
    /// A circuit breaker limit of the cluster is reached: failed fast, nothing sent.
    #[error("{0}")]
    Overflow(String),
}

/// Decrements a counter when dropped.
struct Counted<'a>(&'a AtomicUsize);

impl<'a> Counted<'a> {
    fn new(c: &'a AtomicUsize) -> (Self, usize) {
        let before = c.fetch_add(1, Ordering::Relaxed);
        (Self(c), before)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct MeshKey {
    addr: SocketAddr,
    expected: String,
}

/// A pooled mesh connection, the header-list size its server advertised (0: its SETTINGS
/// have not arrived yet), and how many requests it was given.
struct Pooled {
    sender: SendRequest<Body>,
    peer_limit: Arc<AtomicU32>,
    sent: u64,
}

pub type TlsStream = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

type Slot = Arc<tokio::sync::Mutex<Option<Pooled>>>;

pub struct Upstreams {
    identity: Arc<Identity>,
    metrics: Metrics,
    /// (TLS policy generation, connections made under it).
    mesh: Mutex<(u64, HashMap<MeshKey, Slot>)>,
    plain: Client<HttpConnector, Body>,
    plain_h2: Client<HttpConnector, Body>,
    /// HTTP/1.1 to the local application, capped.
    app: Arc<crate::app_pool::AppPool>,
    /// `--max-requests-per-connection` (0: no limit).
    max_requests: std::sync::atomic::AtomicU64,
}

// === impl Upstreams ===

impl Upstreams {
    pub fn new(
        identity: Arc<Identity>,
        metrics: Metrics,
        app: Arc<crate::app_pool::AppPool>,
    ) -> Arc<Self> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let plain = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_timer(TokioTimer::new())
            .build(connector.clone());
        let plain_h2 = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .http2_only(true)
            .build(connector);
        Arc::new(Self {
            identity,
            metrics,
            mesh: Mutex::new((0, HashMap::new())),
            plain,
            plain_h2,
            app,
            max_requests: Default::default(),
        })
    }

    /// A mesh connection is replaced after `n` requests (0: never).
    pub fn set_max_requests_per_connection(&self, n: u64) {
        self.max_requests.store(n, Ordering::Relaxed);
    }

    /// Plain HTTP/1.1, or HTTP/2 with prior knowledge (`h2`); `req`'s URI must be absolute
    /// (`http://addr/path`).
    pub async fn send_plain(
        &self,
        req: Request<Body>,
        h2: bool,
    ) -> Result<Response<Body>, UpstreamError> {
        let client = if h2 { &self.plain_h2 } else { &self.plain };
        let resp = client.request(req).await.map_err(|e| {
            let text = crate::error_chain(&e);
            if e.is_connect() {
                UpstreamError::Connect(text)
            } else {
                UpstreamError::Reset(text)
            }
        })?;
        Ok(resp.map(crate::http_util::boxed))
    }

    /// HTTP/1.1 to the local application at `addr`, through the capped pool; `req`'s URI may
    /// be absolute (only its path is sent).
    pub async fn send_app(
        &self,
        addr: SocketAddr,
        mut req: Request<Body>,
    ) -> Result<Response<Body>, UpstreamError> {
        if let Some(pq) = req.uri().path_and_query().cloned() {
            *req.uri_mut() = http::Uri::from(pq);
        }
        self.app.send(addr, req).await
    }

    /// HTTP/2 over mesh mTLS to `endpoint` of `cluster`.
    pub async fn send_mesh(
        &self,
        snap: &Snapshot,
        cluster: &Cluster,
        endpoint: &Endpoint,
        req: Request<Body>,
    ) -> Result<Response<Body>, UpstreamError> {
        let key = MeshKey {
            addr: endpoint.address,
            expected: endpoint.expected_key.clone(),
        };
        let slot = {
            let mut pool = self.mesh.lock().unwrap_or_else(|p| p.into_inner());
            if pool.0 != snap.tls_generation {
                // A new TLS policy: connections made under the old one leave the pool. Their
                // in-flight streams finish; hyper closes each once its last sender is gone.
                pool.0 = snap.tls_generation;
                pool.1.clear();
            }
            pool.1.entry(key).or_default().clone()
        };
        let mut req = req;
        // At most two rounds: a pooled connection that turns out closed before the request
        // was written is replaced once.
        for round in 0..2 {
            let sender = {
                let limits = cluster.circuit_breaker;
                let (_pending, waiting) = Counted::new(&cluster.pending);
                if let Some(cb) = limits
                    && cb.max_pending_requests > 0
                    && waiting >= cb.max_pending_requests as usize
                {
                    return Err(UpstreamError::Overflow(format!(
                        "cluster {} is over its max_pending_requests limit",
                        cluster.name
                    )));
                }
                let mut guard = slot.lock().await;
                let max = self.max_requests.load(Ordering::Relaxed);
                match guard.as_mut() {
                    Some(p) if !p.sender.is_closed() && (max == 0 || p.sent < max) => {
                        p.sent += 1;
                        (p.sender.clone(), p.peer_limit.clone())
                    }
                    // Closed, or used up: a new connection replaces it (requests in flight on
                    // the old one finish; hyper closes it once its last sender is gone).
                    _ => {
                        if let Some(cb) = limits
                            && cb.max_connections > 0
                            && cluster.connections.load(Ordering::Relaxed)
                                >= cb.max_connections as usize
                        {
                            return Err(UpstreamError::Overflow(format!(
                                "cluster {} is over its max_connections limit",
                                cluster.name
                            )));
                        }
                        let p = self
                            .connect(snap, cluster, endpoint)
                            .await
                            .inspect_err(|_| {
                                self.metrics.upstream_failure(&cluster.name);
                            })?;
                        let pair = (p.sender.clone(), p.peer_limit.clone());
                        *guard = Some(p);
                        pair
                    }
                }
            };
            let (mut sender, peer_limit) = sender;
            // A header list the server refuses would cost the shared connection (h2 answers
            // an oversized block with GOAWAY): refuse this one request instead.
            let limit = match peer_limit.load(Ordering::Relaxed) {
                0 => crate::http_util::MAX_HEADER_LIST_SIZE,
                n => n,
            };
            let size = crate::http_util::header_list_size(&req);
            if size > limit as usize {
                return Err(UpstreamError::HeadersTooLarge { size, limit });
            }
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok(resp.map(crate::http_util::boxed)),
                Err(mut e) => match e.take_message() {
                    Some(unsent) if round == 0 => {
                        *slot.lock().await = None;
                        req = unsent;
                    }
                    Some(_) => {
                        return Err(UpstreamError::Connect(crate::error_chain(&e.into_error())));
                    }
                    None => return Err(UpstreamError::Reset(crate::error_chain(&e.into_error()))),
                },
            }
        }
        Err(UpstreamError::Connect(
            "the connection closed before the request was sent".into(),
        ))
    }

    /// mTLS to `endpoint`, offering `alpn`, checking its identity; the connection counts as
    /// open (TLS inventory) while the guard lives.
    async fn tls_connect(
        &self,
        snap: &Snapshot,
        endpoint: &Endpoint,
        alpn: &[u8],
    ) -> Result<(TlsStream, crate::metrics::OpenConnection), UpstreamError> {
        let config = crate::tls::client_config(
            &snap.tls,
            self.identity.cert.clone(),
            self.identity.anchors.clone(),
            &endpoint.expected,
            alpn,
        )
        .map_err(|e| UpstreamError::Connect(format!("TLS configuration: {e}")))?;
        let addr = endpoint.address;
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| UpstreamError::Connect(format!("{addr}: {e}")))?;
        let _ = tcp.set_nodelay(true);
        let server_name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(server_name, tcp)
            .await;
        self.metrics.handshake("outbound", tls.is_ok());
        let tls = tls.map_err(|e| UpstreamError::Connect(format!("{addr}: TLS: {e}")))?;
        let open = self.metrics.negotiated("outbound", tls.get_ref().1);
        Ok((tls, open))
    }

    /// A connection of its own to `endpoint` for an HTTP/1.1 upgrade (mTLS, ALPN http/1.1),
    /// within the cluster's connect timeout.
    pub async fn connect_upgrade(
        &self,
        snap: &Snapshot,
        cluster: &Cluster,
        endpoint: &Endpoint,
    ) -> Result<(TlsStream, crate::metrics::OpenConnection), UpstreamError> {
        let addr = endpoint.address;
        tokio::time::timeout(
            cluster.connect_timeout,
            self.tls_connect(snap, endpoint, b"http/1.1"),
        )
        .await
        .map_err(|_| {
            UpstreamError::Connect(format!(
                "{addr}: no connection within {:?}",
                cluster.connect_timeout
            ))
        })?
        .inspect_err(|_| self.metrics.upstream_failure(&cluster.name))
    }

    async fn connect(
        &self,
        snap: &Snapshot,
        cluster: &Cluster,
        endpoint: &Endpoint,
    ) -> Result<Pooled, UpstreamError> {
        let addr = endpoint.address;
        let connect = async {
            let (tls, open) = self.tls_connect(snap, endpoint, b"h2").await?;
            let peer_limit = Arc::new(AtomicU32::new(0));
            let tls = SettingsSniffer::new(tls, peer_limit.clone());
            let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .keep_alive_interval(Duration::from_secs(30))
                .keep_alive_timeout(Duration::from_secs(10))
                .max_header_list_size(crate::http_util::MAX_HEADER_LIST_SIZE)
                .handshake(TokioIo::new(tls))
                .await
                .map_err(|e| UpstreamError::Connect(format!("{addr}: HTTP/2: {e}")))?;
            let cluster_name = cluster.name.clone();
            let connections = cluster.connections.clone();
            connections.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(cluster = %cluster_name, %addr, "upstream connection ended: {e}");
                }
                connections.fetch_sub(1, Ordering::Relaxed);
                drop(open);
            });
            Ok(Pooled {
                sender,
                peer_limit,
                sent: 1,
            })
        };
        tokio::time::timeout(cluster.connect_timeout, connect)
            .await
            .map_err(|_| {
                UpstreamError::Connect(format!(
                    "{addr}: no connection within {:?}",
                    cluster.connect_timeout
                ))
            })?
    }
}

/// Reads the server's first HTTP/2 frame (its SETTINGS, RFC 9113 §3.4) as it passes, to learn
/// the SETTINGS_MAX_HEADER_LIST_SIZE it advertises (`u32::MAX`: none, unlimited). Everything
/// is passed through untouched; after the first frame it only forwards.
struct SettingsSniffer<IO> {
    io: IO,
    limit: Arc<AtomicU32>,
    head: Vec<u8>,
    done: bool,
}

/// More than any real first SETTINGS frame (a few 6-byte entries).
const MAX_SNIFFED: usize = 9 + 6 * 64;

impl<IO> SettingsSniffer<IO> {
    fn new(io: IO, limit: Arc<AtomicU32>) -> Self {
        Self {
            io,
            limit,
            head: Vec::new(),
            done: false,
        }
    }

    fn sniff(&mut self, bytes: &[u8]) {
        self.head.extend_from_slice(bytes);
        if self.head.len() < 9 {
            return;
        }
        let len = (usize::from(self.head[0]) << 16)
            | (usize::from(self.head[1]) << 8)
            | usize::from(self.head[2]);
        let (kind, flags) = (self.head[3], self.head[4]);
        // Not a SETTINGS frame, an ACK, or too big to be plausible: keep the default.
        if kind != 0x4 || flags & 0x1 != 0 || 9 + len > MAX_SNIFFED {
            self.finish(None);
            return;
        }
        if self.head.len() < 9 + len {
            return;
        }
        let limit = self.head[9..9 + len]
            .chunks_exact(6)
            .find(|e| u16::from_be_bytes([e[0], e[1]]) == 0x6)
            .map(|e| u32::from_be_bytes([e[2], e[3], e[4], e[5]]));
        self.finish(Some(limit.unwrap_or(u32::MAX)));
    }

    fn finish(&mut self, limit: Option<u32>) {
        if let Some(l) = limit {
            self.limit.store(l.max(1), Ordering::Relaxed);
        }
        self.done = true;
        self.head = Vec::new();
    }
}

impl<IO: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for SettingsSniffer<IO> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.io).poll_read(cx, buf);
        if !self.done
            && let std::task::Poll::Ready(Ok(())) = r
        {
            let fresh = buf.filled()[before..].to_vec();
            self.sniff(&fresh);
        }
        r
    }
}

impl<IO: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for SettingsSniffer<IO> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_servers_first_settings_frame_gives_its_header_list_limit() {
        let limit = Arc::new(AtomicU32::new(0));
        let mut s = SettingsSniffer::new((), limit.clone());
        // SETTINGS: MAX_CONCURRENT_STREAMS 100, MAX_HEADER_LIST_SIZE 16384; in two reads.
        let frame = [
            0, 0, 12, 0x4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100, 0, 6, 0, 0, 0x40, 0,
        ];
        s.sniff(&frame[..5]);
        assert_eq!(limit.load(Ordering::Relaxed), 0);
        s.sniff(&frame[5..]);
        assert_eq!(limit.load(Ordering::Relaxed), 16384);
        // None advertised: unlimited.
        let limit = Arc::new(AtomicU32::new(0));
        let mut s = SettingsSniffer::new((), limit.clone());
        s.sniff(&[0, 0, 6, 0x4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100]);
        assert_eq!(limit.load(Ordering::Relaxed), u32::MAX);
    }
}
