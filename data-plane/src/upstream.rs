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
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
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

/// A pooled connection and how many requests it was given.
struct Pooled {
    sender: SendRequest<Body>,
    sent: u64,
}

type Slot = Arc<tokio::sync::Mutex<Option<Pooled>>>;

pub struct Upstreams {
    identity: Arc<Identity>,
    metrics: Metrics,
    /// (TLS policy generation, connections made under it).
    mesh: Mutex<(u64, HashMap<MeshKey, Slot>)>,
    plain: Client<HttpConnector, Body>,
    plain_h2: Client<HttpConnector, Body>,
    /// `--max-requests-per-connection` (0: no limit).
    max_requests: std::sync::atomic::AtomicU64,
}

// === impl Upstreams ===

impl Upstreams {
    pub fn new(identity: Arc<Identity>, metrics: Metrics) -> Arc<Self> {
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
    ) -> Result<Response<Incoming>, UpstreamError> {
        let client = if h2 { &self.plain_h2 } else { &self.plain };
        client.request(req).await.map_err(|e| {
            let text = crate::error_chain(&e);
            if e.is_connect() {
                UpstreamError::Connect(text)
            } else {
                UpstreamError::Reset(text)
            }
        })
    }

    /// HTTP/2 over mesh mTLS to `endpoint` of `cluster`.
    pub async fn send_mesh(
        &self,
        snap: &Snapshot,
        cluster: &Cluster,
        endpoint: &Endpoint,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, UpstreamError> {
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
            let mut sender = {
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
                        p.sender.clone()
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
                        let s = self
                            .connect(snap, cluster, endpoint)
                            .await
                            .inspect_err(|_| {
                                self.metrics.upstream_failure(&cluster.name);
                            })?;
                        *guard = Some(Pooled {
                            sender: s.clone(),
                            sent: 1,
                        });
                        s
                    }
                }
            };
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok(resp),
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

    async fn connect(
        &self,
        snap: &Snapshot,
        cluster: &Cluster,
        endpoint: &Endpoint,
    ) -> Result<SendRequest<Body>, UpstreamError> {
        let config = crate::tls::client_config(
            &snap.tls,
            self.identity.cert.clone(),
            self.identity.anchors.clone(),
            &endpoint.expected,
        )
        .map_err(|e| UpstreamError::Connect(format!("TLS configuration: {e}")))?;
        let addr = endpoint.address;
        let connect = async {
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
            let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .keep_alive_interval(Duration::from_secs(30))
                .keep_alive_timeout(Duration::from_secs(10))
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
            Ok(sender)
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
