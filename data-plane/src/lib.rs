//! `mesh-proxy`, the sidecar: it holds the workload's identity (a certificate from meshd), keeps
//! its configuration in sync over the discovery stream, and proxies the workload's traffic:
//! inbound (other sidecars → the application, mTLS, authorization, rate limits) and outbound
//! (the application → other services, routing, load balancing, retries, mTLS).
//!
//! - [`config`]: flags and environment → checked [`config::Config`].
//! - [`identity`]: key, CSR, `Identity.Sign`, renewal, `--state-dir` credentials.
//! - [`xds`]: the discovery client; [`xds::store`] holds resources and publishes snapshots.
//! - [`resources`]: `mesh.v1` resources validated into the types the proxies use.
//! - [`inbound`], [`outbound`], [`forward`], [`upstream`]: the proxies.
//! - [`tls`]: rustls configs from the TlsPolicy; [`admin`], [`metrics`], [`readiness`],
//!   [`drain`].

pub mod admin;
pub mod app_pool;
pub mod backoff;
pub mod config;
pub mod conn;
pub mod drain;
pub mod dump;
pub mod forward;
pub mod http_util;
pub mod identity;
pub mod inbound;
pub mod metrics;
pub mod outbound;
pub mod readiness;
pub mod resources;
pub mod tls;
pub mod upgrade;
pub mod upstream;
pub mod xds;

use anyhow::Context;
use config::Config;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;

/// `mesh-proxy/<version>`, sent to meshd in `Node.proxy_version`.
pub const PROXY_VERSION: &str = concat!("mesh-proxy/", env!("CARGO_PKG_VERSION"));

/// The chain of an error's messages, outermost first.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(next) = cur {
        let text = next.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = next.source();
    }
    out
}

/// The address other sidecars dial for a bound inbound address: an unspecified IP (0.0.0.0,
/// [::]) becomes loopback, which is right outside Kubernetes on one host; in a pod the
/// operator binds the pod IP.
pub fn advertised(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        let ip = match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        };
        SocketAddr::new(ip, addr.port())
    } else {
        addr
    }
}

/// Runs the sidecar until `shutdown` resolves, then drains.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let bind = |what: &'static str, addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {what} {addr}"))
    };
    let inbound_listener = bind("--inbound-addr", config.inbound_addr).await?;
    let outbound_listener = bind("--outbound-addr", config.outbound_addr).await?;
    let admin_listener = bind("--admin-addr", config.admin_addr).await?;
    let inbound_addr = inbound_listener.local_addr()?;
    let outbound_addr = outbound_listener.local_addr()?;
    let admin_addr = admin_listener.local_addr()?;

    let metrics = metrics::Metrics::new();
    let identity = identity::Identity::new(
        config.identity.clone(),
        &config.ca_bundle,
        identity::IdentityOptions {
            control_planes: config.control_planes.clone(),
            bootstrap: config.bootstrap.clone(),
            ttl: config.cert_ttl,
            state_dir: config.state_dir.clone(),
            sidecar_id: config.id.clone(),
        },
    )?;
    let readiness = readiness::Readiness::new(identity.clone());
    let store = xds::store::Store::new(
        xds::store::OwnAddrs {
            inbound: inbound_addr,
            outbound: outbound_addr,
        },
        identity.clone(),
        config.ca_bundle.clone(),
    );
    let node = mesh_proto::v1::Node {
        id: config.id.clone(),
        workload: config.workload.clone(),
        namespace: config.namespace.clone(),
        service: config.service.clone(),
        inbound_address: advertised(inbound_addr).to_string(),
        admin_address: advertised(admin_addr).to_string(),
        proxy_version: PROXY_VERSION.into(),
        capabilities: Vec::new(),
        labels: config.labels.clone(),
    };
    let xds = xds::XdsClient {
        control_planes: config.control_planes.clone(),
        node: node.clone(),
        identity: identity.clone(),
        store: store.clone(),
        readiness: readiness.clone(),
        metrics: metrics.clone(),
        state_dir: config.state_dir.clone(),
        report_interval: config.report_interval,
    };
    match xds.restore() {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            types = n,
            "restored the last good configuration from the state directory"
        ),
        Err(e) => tracing::warn!("cannot restore the stored configuration: {e:#}"),
    }

    metrics.watch_identity(identity.cert.clone(), identity.anchors.clone());
    let app_pool = app_pool::AppPool::new(
        config.max_app_connections,
        config.app_queue_timeout,
        config
            .limits
            .idle_timeout
            .min(std::time::Duration::from_secs(90)),
        metrics.clone(),
    );
    let upstreams = upstream::Upstreams::new(identity.clone(), metrics.clone(), app_pool);
    upstreams.set_max_requests_per_connection(config.max_requests_per_connection);
    let forwarder = Arc::new(forward::Forwarder {
        upstreams,
        metrics: metrics.clone(),
    });
    let (trigger, watch) = drain::new();
    let inbound = Arc::new(inbound::Inbound {
        gate: conn::Gate::new("inbound", config.limits, metrics.clone()),
        store: store.clone(),
        readiness: readiness.clone(),
        forwarder: forwarder.clone(),
        metrics: metrics.clone(),
        app_addr: config.app_addr,
    });
    let outbound = Arc::new(outbound::Outbound {
        gate: conn::Gate::new("outbound", config.limits, metrics.clone()),
        store: store.clone(),
        forwarder,
        metrics: metrics.clone(),
    });
    let readiness_for_log = readiness.clone();
    let admin = Arc::new(admin::Admin {
        readiness,
        store,
        identity: identity.clone(),
        metrics,
        node,
        drain: trigger.status(),
    });

    let mut background = tokio::task::JoinSet::new();
    background.spawn(identity.clone().run());
    background.spawn(xds.run());
    background.spawn(admin.serve(admin_listener));
    let mut proxies = tokio::task::JoinSet::new();
    proxies.spawn(inbound.serve(inbound_listener, watch.clone()));
    proxies.spawn(outbound.serve(outbound_listener, watch.clone()));
    drop(watch);

    tracing::info!(
        identity = %config.identity,
        id = %config.id,
        %inbound_addr,
        %outbound_addr,
        %admin_addr,
        "mesh-proxy listening; not ready until it holds a certificate and every type's first configuration"
    );
    // "ready" is said when it is true (the inbound listener refuses traffic until then).
    let announce = {
        let readiness = readiness_for_log;
        let identity = config.identity.clone();
        let id = config.id.clone();
        async move {
            readiness.wait().await;
            tracing::info!(
                %identity,
                %id,
                %inbound_addr,
                %outbound_addr,
                %admin_addr,
                "mesh-proxy ready"
            );
        }
    };
    background.spawn(announce);

    shutdown.await;
    tracing::info!(grace = ?config.drain_grace, "shutting down: draining");
    let drained = trigger.drain(config.drain_grace).await;
    if drained {
        tracing::info!("drained");
    } else {
        tracing::warn!("grace period over with requests still in flight");
    }
    proxies.abort_all();
    background.abort_all();
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

/// `mesh-proxy wait-ready`: polls `http://<admin_addr>/ready` until it answers 200.
pub async fn wait_ready(admin_addr: &str, timeout: std::time::Duration) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let start = std::time::Instant::now();
    loop {
        let attempt = async {
            let mut s = tokio::net::TcpStream::connect(admin_addr).await?;
            s.write_all(
                format!("GET /ready HTTP/1.1\r\nHost: {admin_addr}\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await?;
            let mut buf = Vec::new();
            s.read_to_end(&mut buf).await?;
            Ok::<_, std::io::Error>(String::from_utf8_lossy(&buf).into_owned())
        };
        let last = match tokio::time::timeout(std::time::Duration::from_secs(2), attempt).await {
            Ok(Ok(text)) if text.starts_with("HTTP/1.1 200") => return Ok(()),
            Ok(Ok(text)) => text
                .split("\r\n\r\n")
                .nth(1)
                .unwrap_or("")
                .trim()
                .to_string(),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "no answer within 2s".into(),
        };
        if start.elapsed() > timeout {
            anyhow::bail!("not ready after {timeout:?}: {last}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
