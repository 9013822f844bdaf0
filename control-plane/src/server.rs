//! Wiring: open the store, bootstrap the CA, bind the gRPC (TLS) and admin (HTTP) listeners,
//! serve until shutdown, then drain within a grace period.

use crate::admin::{self, AdminState};
use crate::ca::{Authority, write_private_or_public};
use crate::config::Config;
use crate::identity::IdentityService;
use crate::metrics::Metrics;
use crate::model::MeshOptions;
use crate::source::Documents;
use crate::store::{Store, Topic};
use crate::tls::ServingTls;
use crate::xds::Xds;
use anyhow::Context;
use mesh_proto::v1::discovery_server::DiscoveryServer;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// The file in the data directory holding the admin API's bearer token.
pub const ADMIN_TOKEN_FILE: &str = "admin-token";
/// The file in the data directory holding the read-only (viewer) bearer token: every `GET` of
/// the admin API and the dashboard, no change.
pub const VIEWER_TOKEN_FILE: &str = "viewer-token";
/// How long open requests and streams get to finish after SIGTERM.
pub const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// Runs meshd until `shutdown` completes.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    // Ports first: a meshd that cannot serve creates nothing (no data dir, no CA, no tokens).
    let grpc_listener = bind("--grpc-addr", config.grpc_addr).await?;
    let admin_listener = bind("--admin-addr", config.admin_addr).await?;
    let grpc_addr = grpc_listener.local_addr()?;
    let admin_addr = admin_listener.local_addr()?;

    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating --data-dir {}", config.data_dir.display()))?;
    // One meshd per data directory: two on one SQLite file would both drive rotations. Held
    // until this process exits (the kernel releases it even on SIGKILL).
    let _data_dir_lock = lock_data_dir(&config.data_dir)?;
    let store = Store::open(&config.database_url).await?;
    // Listening before anything is read: a change committed after a read is never missed.
    let changes = store.changes();
    let replica = crate::replicas::name();
    let restored = Authority::bootstrap(&config, &store).await?;
    let authority = restored.authority;
    let rotation = crate::rotation::restore(&authority, &restored.record)?;
    let admin_token = ensure_token(&config, ADMIN_TOKEN_FILE)?;
    let viewer_token = ensure_token(&config, VIEWER_TOKEN_FILE)?;
    let metrics = Metrics::new();
    let documents = Documents::load(store.clone(), MeshOptions::default()).await?;
    documents.follow_store(changes.subscribe(Topic::Documents));
    // `--config-dir`: applied once now, then polled until `run` returns (dropping the watcher).
    let _config_dir = documents.watch_config_dir(config.config_dir.clone()).await;

    let (tls, valid_for) = ServingTls::new(&authority, grpc_addr)?;
    let renew = tokio::spawn(
        tls.clone()
            .renew_forever(authority.clone(), grpc_addr, valid_for),
    );

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };

    let xds = Xds::start(
        documents.current(),
        authority.bundle(),
        &crate::tls::control_plane_identity(&config.trust_domain),
        &replica,
        metrics.clone(),
        stop_rx.clone(),
    );
    xds.follow(documents.subscribe());
    crate::replicas::remember_endpoints(&xds, &store).await;
    tokio::spawn(crate::replicas::follow_endpoints(
        xds.clone(),
        store.clone(),
        changes.subscribe(Topic::Sidecars),
    ));
    let heartbeat = tokio::spawn(crate::replicas::heartbeat(store.clone(), replica.clone()));
    // Forced re-issues ordered before a restart (in force before anything is served), or on
    // another replica.
    crate::reissue::load(&store, xds.directives()).await;
    crate::reissue::follow(
        store.clone(),
        xds.directives().clone(),
        changes.subscribe(crate::reissue::TOPIC),
        crate::rotation::RESYNC,
        stop_rx.clone(),
    );
    let rotations = crate::rotation::Rotations::start(
        crate::rotation::Wiring {
            authority: authority.clone(),
            store: store.clone(),
            xds: xds.clone(),
            tls: tls.clone(),
            grpc_addr,
            metrics: metrics.clone(),
            changes,
            shutdown: stop_rx.clone(),
        },
        rotation,
        restored.record.version,
    );

    let kubernetes = match &config.kubernetes {
        Some(k) => Some(crate::kubernetes::TokenReviewer::new(k)?),
        None => None,
    };
    let identity = IdentityService::new(
        authority.clone(),
        store.clone(),
        metrics.clone(),
        kubernetes,
    );
    let grpc = tonic::transport::Server::builder()
        .add_service(crate::identity::AuditedIdentity::new(identity))
        .add_service(DiscoveryServer::new(xds.clone()))
        .serve_with_incoming_shutdown(tls.incoming(grpc_listener), stopped(stop_rx.clone()));
    let grpc = tokio::spawn(grpc);

    let state = AdminState {
        store: store.clone(),
        authority: authority.clone(),
        metrics: metrics.clone(),
        documents: documents.clone(),
        xds: xds.view(),
        directives: xds.directives().clone(),
        rotations,
        admin_token: Arc::from(admin_token.as_str()),
        viewer_token: Arc::from(viewer_token.as_str()),
        shutdown: stop_rx.clone(),
    };
    let admin = axum::serve(admin_listener, admin::router(state))
        .with_graceful_shutdown(stopped(stop_rx.clone()));
    let admin = tokio::spawn(async move { admin.await });

    tracing::info!(
        trust_domain = %config.trust_domain,
        root = %authority.bundle().fingerprints().join(","),
        data_dir = %config.data_dir.display(),
        %grpc_addr,
        %admin_addr,
        %replica,
        "meshd ready"
    );
    shutdown.await;
    tracing::info!("shutting down: draining for up to {DRAIN_GRACE:?}");
    let _ = stop_tx.send(true);
    renew.abort();
    let drained = tokio::time::timeout(DRAIN_GRACE, async {
        let (g, a) = tokio::join!(grpc, admin);
        if let Ok(Err(e)) = g {
            tracing::warn!(error = %e, "gRPC server");
        }
        if let Ok(Err(e)) = a {
            tracing::warn!(error = %e, "admin server");
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!("grace period over; closing the remaining connections");
    }
    heartbeat.abort();
    if let Err(e) = store.forget_replica(&replica).await {
        tracing::warn!(error = %e, "removing this replica from the store");
    }
    store.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// Binds `addr` (given by `flag`); an address in use says which flag to change.
async fn bind(flag: &str, addr: std::net::SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::AddrInUse => anyhow::anyhow!(
            "{flag} {addr} is already in use (another meshd?): stop it, or give {flag} a free address"
        ),
        std::io::ErrorKind::AddrNotAvailable => anyhow::anyhow!(
            "{flag} {addr}: no such local address on this machine: give {flag} an address of it"
        ),
        _ => anyhow::anyhow!("binding {flag} {addr}: {e}"),
    })
}

/// The lock file in the data directory: held (`flock`) by the one meshd that uses it, and
/// naming its process id for whoever finds it held.
pub const LOCK_FILE: &str = "meshd.lock";

/// Takes the data directory's exclusive lock, or says which process holds it.
fn lock_data_dir(dir: &std::path::Path) -> anyhow::Result<std::fs::File> {
    use std::io::{Read, Seek, Write};
    let path = dir.join(LOCK_FILE);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            let holder = if holder.is_empty() {
                String::new()
            } else {
                format!(" (pid {holder})")
            };
            anyhow::bail!(
                "--data-dir {} is in use by another meshd{holder}: stop it, or give this one its own --data-dir",
                dir.display()
            );
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("locking {}", path.display()));
        }
    }
    file.set_len(0)?;
    file.rewind()?;
    writeln!(file, "{}", std::process::id())?;
    Ok(file)
}

/// Reads the token `<data-dir>/<file>` ([`ADMIN_TOKEN_FILE`], [`VIEWER_TOKEN_FILE`]), creating
/// it (mode 0600) on first start.
fn ensure_token(config: &Config, file: &str) -> anyhow::Result<String> {
    let path = config.data_dir.join(file);
    if path.exists() {
        let token = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        return Ok(token.trim().to_string());
    }
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::fill(&mut bytes)
        .map_err(|_| anyhow::anyhow!("random number generator failed"))?;
    let token = mesh_ca::hex(&bytes);
    write_private_or_public(&path, token.as_bytes(), 0o600)?;
    Ok(token)
}

/// Completes on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
