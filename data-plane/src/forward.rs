//! Sending one routed request upstream: backend cluster by weight, endpoint by the cluster's
//! load balancer, retries (with a buffered body), per-try and whole-request deadlines, circuit
//! breaking and outlier bookkeeping. Both directions use it: inbound sends to the local
//! application, outbound to other sidecars.

use crate::http_util::{Body, boxed, error_response, is_idempotent, strip_hop_by_hop};
use crate::metrics::Metrics;
use crate::resources::{Cluster, Protocol, Route, UpstreamTls};
use crate::upstream::{UpstreamError, Upstreams};
use crate::xds::store::Snapshot;
use bytes::Bytes;
use http::request::Parts;
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Incoming};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// The largest request body kept in memory so that it can be sent again on a retry. A larger
/// (or unknown-length, streaming) body is sent once, without retries.
pub const MAX_RETRY_BUFFER: u64 = 64 * 1024;

/// Where a request goes.
#[derive(Debug, Clone, Copy)]
pub enum Direction {
    /// To the local application at this address: plain HTTP/1.1, or HTTP/2 with prior
    /// knowledge when the calling application spoke HTTP/2 (`h2`).
    Inbound { app: SocketAddr, h2: bool },
    /// To the chosen cluster's endpoints.
    Outbound,
}

pub struct Forwarder {
    pub upstreams: Arc<Upstreams>,
    pub metrics: Metrics,
}

enum ReqBody {
    Buffered(Bytes),
    Streaming(Option<Incoming>),
}

impl ReqBody {
    fn take(&mut self) -> Option<Body> {
        match self {
            Self::Buffered(b) => Some(crate::http_util::full(b.clone())),
            Self::Streaming(b) => b.take().map(boxed),
        }
    }

    fn replayable(&self) -> bool {
        matches!(self, Self::Buffered(_))
    }
}

/// Decrements a counter when dropped.
struct InFlight<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> InFlight<'a> {
    fn new(c: &'a std::sync::atomic::AtomicUsize) -> Self {
        c.fetch_add(1, Ordering::Relaxed);
        Self(c)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What one try ended with.
enum Try {
    Response(Response<Incoming>),
    Failed(UpstreamError),
    TimedOut,
}

// === impl Forwarder ===

impl Forwarder {
    /// Sends the request along `route`; returns the response and the cluster it went to.
    pub async fn forward(
        &self,
        snap: &Snapshot,
        route: &Route,
        direction: Direction,
        authority: &str,
        parts: Parts,
        body: Incoming,
    ) -> (Response<Body>, String) {
        let start = Instant::now();
        let deadline = route.timeout.map(|t| start + t);
        let work = self.forward_inner(snap, route, direction, authority, parts, body, deadline);
        match deadline {
            None => work.await,
            Some(d) => match tokio::time::timeout_at(d.into(), work).await {
                Ok(r) => r,
                Err(_) => (
                    error_response(StatusCode::GATEWAY_TIMEOUT, "request timeout"),
                    String::new(),
                ),
            },
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn forward_inner(
        &self,
        snap: &Snapshot,
        route: &Route,
        direction: Direction,
        authority: &str,
        mut parts: Parts,
        body: Incoming,
        deadline: Option<Instant>,
    ) -> (Response<Body>, String) {
        let cluster_name = route.pick_backend().to_string();
        let Some(cluster) = snap
            .clusters
            .get(&cluster_name)
            .filter(|c| c.protocol == Protocol::Http)
        else {
            return (
                error_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("cluster {cluster_name} is not known (yet)"),
                ),
                cluster_name,
            );
        };
        if let Some(cb) = &cluster.circuit_breaker
            && cb.max_requests > 0
            && cluster.in_flight.load(Ordering::Relaxed) >= cb.max_requests as usize
        {
            self.metrics.overflow(&cluster.name);
            return (
                error_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("cluster {} is over its max_requests limit", cluster.name),
                ),
                cluster_name,
            );
        }
        let _cluster_load = InFlight::new(&cluster.in_flight);

        let retry = route.retry.clone().unwrap_or_default();
        let mut body = if retry.attempts > 0 {
            buffer(body).await
        } else {
            ReqBody::Streaming(Some(body))
        };
        let idempotent = is_idempotent(&parts.method);
        strip_hop_by_hop(&mut parts.headers);
        let path = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into());

        let mut tried = Vec::new();
        let mut attempt = 0u32;
        loop {
            let Some(req_body) = body.take() else {
                return (
                    error_response(StatusCode::BAD_GATEWAY, "the request body was already sent"),
                    cluster_name,
                );
            };
            let now = Instant::now();
            if deadline.is_some_and(|d| d <= now) {
                return (
                    error_response(StatusCode::GATEWAY_TIMEOUT, "request timeout"),
                    cluster_name,
                );
            }
            let outcome = match direction {
                Direction::Inbound { app, h2 } => {
                    let req = plain_request(&parts, authority, app, &path, req_body, h2);
                    self.try_once(retry.per_try_timeout, self.upstreams.send_plain(req, h2))
                        .await
                }
                Direction::Outbound => {
                    let Some(i) = cluster.pick(&tried, now) else {
                        return (
                            error_response(
                                StatusCode::SERVICE_UNAVAILABLE,
                                &format!("no healthy endpoints in cluster {}", cluster.name),
                            ),
                            cluster_name,
                        );
                    };
                    tried.push(i);
                    let endpoint = &cluster.endpoints[i];
                    let _load = InFlight::new(&endpoint.in_flight);
                    let outcome = match cluster.upstream_tls {
                        UpstreamTls::Mutual => {
                            let req = mesh_request(&parts, authority, &path, req_body);
                            let send = self.upstreams.send_mesh(snap, cluster, endpoint, req);
                            self.try_once(retry.per_try_timeout, send).await
                        }
                        UpstreamTls::Disabled => {
                            let h2 = parts.version == Version::HTTP_2;
                            let req = plain_request(
                                &parts,
                                authority,
                                endpoint.address,
                                &path,
                                req_body,
                                h2,
                            );
                            self.try_once(retry.per_try_timeout, self.upstreams.send_plain(req, h2))
                                .await
                        }
                    };
                    let failed = match &outcome {
                        Try::Response(r) => Some(r.status().is_server_error()),
                        // The endpoint was never tried: nothing to learn about its health.
                        Try::Failed(UpstreamError::Overflow(_)) => {
                            self.metrics.overflow(&cluster.name);
                            None
                        }
                        Try::Failed(_) | Try::TimedOut => Some(true),
                    };
                    if let Some(failed) = failed
                        && cluster.record(i, failed, Instant::now())
                    {
                        self.metrics.outlier_ejection(&cluster.name);
                    }
                    outcome
                }
            };

            let more = attempt < retry.attempts && body.replayable();
            let retry_it = more
                && match &outcome {
                    Try::Response(r) => idempotent && retry.retry_status(r.status()),
                    // Nothing reached the upstream: safe for any method.
                    Try::Failed(UpstreamError::Connect(_)) => {
                        retry.on_connect_failure || retry.on_5xx
                    }
                    Try::Failed(UpstreamError::Reset(_)) => {
                        idempotent && (retry.on_reset || retry.on_5xx)
                    }
                    // Retrying into a full cluster only adds load.
                    Try::Failed(UpstreamError::Overflow(_)) => false,
                    Try::TimedOut => idempotent,
                };
            if retry_it {
                attempt += 1;
                self.metrics.retry(&cluster.name);
                tracing::debug!(cluster = %cluster.name, attempt, "retrying");
                continue;
            }
            return (respond(outcome, cluster), cluster_name);
        }
    }

    async fn try_once(
        &self,
        per_try: Option<Duration>,
        send: impl Future<Output = Result<Response<Incoming>, UpstreamError>>,
    ) -> Try {
        let result = match per_try {
            None => send.await,
            Some(t) => match tokio::time::timeout(t, send).await {
                Ok(r) => r,
                Err(_) => return Try::TimedOut,
            },
        };
        match result {
            Ok(r) => Try::Response(r),
            Err(e) => Try::Failed(e),
        }
    }
}

fn respond(outcome: Try, cluster: &Cluster) -> Response<Body> {
    match outcome {
        Try::Response(r) => {
            let (mut parts, body) = r.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            // Our own connection to the client decides its version, not the upstream's.
            parts.version = Version::HTTP_11;
            Response::from_parts(parts, boxed(body))
        }
        Try::Failed(UpstreamError::Connect(e)) => {
            tracing::debug!(cluster = %cluster.name, "upstream connect failure: {e}");
            error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("upstream connect error ({}): {e}", cluster.name),
            )
        }
        Try::Failed(UpstreamError::Reset(e)) => {
            tracing::debug!(cluster = %cluster.name, "upstream reset: {e}");
            error_response(
                StatusCode::BAD_GATEWAY,
                &format!("upstream reset ({}): {e}", cluster.name),
            )
        }
        Try::Failed(UpstreamError::Overflow(e)) => {
            error_response(StatusCode::SERVICE_UNAVAILABLE, &e)
        }
        Try::TimedOut => error_response(StatusCode::GATEWAY_TIMEOUT, "upstream per-try timeout"),
    }
}

/// Keeps a small body in memory for retries; a large or streaming one is passed through.
async fn buffer(body: Incoming) -> ReqBody {
    if body.is_end_stream() {
        return ReqBody::Buffered(Bytes::new());
    }
    match body.size_hint().upper() {
        Some(n) if n <= MAX_RETRY_BUFFER => match body.collect().await {
            Ok(collected) => ReqBody::Buffered(collected.to_bytes()),
            // The client went away mid-body: nothing can be sent.
            Err(_) => ReqBody::Streaming(None),
        },
        _ => ReqBody::Streaming(Some(body)),
    }
}

/// An HTTP/2 request for the mesh hop: absolute URI (`:authority` is the original host),
/// no `Host` header.
fn mesh_request(parts: &Parts, authority: &str, path: &str, body: Body) -> Request<Body> {
    let mut req = Request::new(body);
    *req.method_mut() = parts.method.clone();
    *req.version_mut() = Version::HTTP_2;
    *req.headers_mut() = parts.headers.clone();
    req.headers_mut().remove(http::header::HOST);
    *req.uri_mut() = Uri::builder()
        .scheme("http")
        .authority(authority)
        .path_and_query(path)
        .build()
        .unwrap_or_else(|_| Uri::from_static("http://invalid/"));
    req
}

/// A plain request to `addr`: HTTP/1.1 keeping the original `Host`, or HTTP/2 (where
/// `:authority` is `addr`, and a `Host` that differs from it is not allowed).
fn plain_request(
    parts: &Parts,
    authority: &str,
    addr: SocketAddr,
    path: &str,
    body: Body,
    h2: bool,
) -> Request<Body> {
    let mut req = Request::new(body);
    *req.method_mut() = parts.method.clone();
    *req.headers_mut() = parts.headers.clone();
    // Only for the mesh hop.
    req.headers_mut().remove(&crate::http_util::APP_PROTOCOL);
    if h2 {
        *req.version_mut() = Version::HTTP_2;
        req.headers_mut().remove(http::header::HOST);
    } else {
        *req.version_mut() = Version::HTTP_11;
        if let Ok(host) = http::HeaderValue::from_str(authority) {
            req.headers_mut().insert(http::header::HOST, host);
        }
    }
    *req.uri_mut() = Uri::builder()
        .scheme("http")
        .authority(addr.to_string())
        .path_and_query(path)
        .build()
        .unwrap_or_else(|_| Uri::from_static("http://invalid/"));
    req
}
