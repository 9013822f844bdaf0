//! The admin listener (loopback by default): `/ready`, `/live`, `/metrics`, `/config_dump`,
//! `/certs`. Read-only; it never shows a private key.

use crate::drain;
use crate::http_util::{Body, full};
use crate::identity::Identity;
use crate::metrics::Metrics;
use crate::readiness::Readiness;
use crate::xds::store::Store;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use mesh_proto::v1::Node;
use serde_json::json;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

pub struct Admin {
    pub readiness: Arc<Readiness>,
    pub store: Arc<Store>,
    pub identity: Arc<Identity>,
    pub metrics: Metrics,
    pub node: Node,
    /// Set when the drain has started: `/ready` turns 503 so that nothing new is sent here.
    pub drain: drain::Status,
}

fn respond(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn json_response(v: &serde_json::Value) -> Response<Body> {
    respond(
        StatusCode::OK,
        "application/json",
        serde_json::to_string_pretty(v).unwrap_or_default() + "\n",
    )
}

// === impl Admin ===

impl Admin {
    /// Serves until the task is aborted.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            let (tcp, _) = match listener.accept().await {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("admin accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let this = self.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let this = this.clone();
                    async move { Ok::<_, Infallible>(this.handle(&req)) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    }

    fn handle(&self, req: &Request<Incoming>) -> Response<Body> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return respond(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain",
                "only GET\n".into(),
            );
        }
        match req.uri().path() {
            "/ready" => self.ready(),
            "/live" => respond(StatusCode::OK, "text/plain", "live\n".into()),
            "/metrics" => respond(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                self.metrics
                    .render(self.identity.current().map(|c| c.not_after)),
            ),
            "/config_dump" => json_response(&self.config_dump()),
            "/certs" => json_response(&self.certs()),
            _ => respond(
                StatusCode::NOT_FOUND,
                "text/plain",
                "not found; try /ready /live /metrics /config_dump /certs\n".into(),
            ),
        }
    }

    fn ready(&self) -> Response<Body> {
        if self.drain.is_draining() {
            return respond(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                "draining\n".into(),
            );
        }
        if self.readiness.is_ready() {
            return respond(StatusCode::OK, "text/plain", "ready\n".into());
        }
        respond(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            format!(
                "not ready: waiting for {}\n",
                self.readiness.pending().join(", ")
            ),
        )
    }

    fn config_dump(&self) -> serde_json::Value {
        let mut types = serde_json::Map::new();
        for (ty, held) in self.store.held() {
            let list: Vec<serde_json::Value> = held
                .values()
                .map(|h| {
                    json!({
                        "name": h.raw.name,
                        "version": h.version,
                        "resource": h.raw.body.as_ref().map(crate::dump::body),
                    })
                })
                .collect();
            types.insert(ty.name().to_string(), serde_json::Value::Array(list));
        }
        json!({
            "node": {
                "id": self.node.id,
                "namespace": self.node.namespace,
                "service": self.node.service,
                "workload": self.node.workload,
                "inbound_address": self.node.inbound_address,
                "labels": self.node.labels,
                "proxy_version": self.node.proxy_version,
            },
            "identity": self.identity.id.to_string(),
            "ready": self.readiness.is_ready(),
            "resources": types,
        })
    }

    fn certs(&self) -> serde_json::Value {
        let Some(c) = self.identity.current() else {
            return json!({ "identity": self.identity.id.to_string(), "certificate": null });
        };
        let chain: Vec<serde_json::Value> = c
            .chain
            .iter()
            .map(|info| {
                json!({
                    "subject": info.subject,
                    "issuer": info.issuer,
                    "serial": info.serial_hex,
                    "sha256_fingerprint": info.fingerprint,
                    "not_before": info.not_before,
                    "not_after": info.not_after,
                    "uri_sans": info.uri_sans,
                })
            })
            .collect();
        let leaf = c.chain.first();
        json!({
            "identity": self.identity.id.to_string(),
            "certificate": {
                "subject": leaf.map(|l| l.subject.clone()),
                "spiffe_id": leaf.and_then(|l| l.spiffe_id()).map(|i| i.to_string()),
                "serial": leaf.map(|l| l.serial_hex.clone()),
                "not_before": c.not_before,
                "not_after": c.not_after,
                "expires_in_seconds": c.not_after - crate::identity::unix_now(),
                "chain": chain,
            },
        })
    }
}
