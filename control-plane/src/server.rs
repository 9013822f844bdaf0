//! Wiring: open the store, bootstrap the CA, write the data-directory files, serve until shutdown.

use crate::ca::{Authority, write_private_or_public};
use crate::config::Config;
use crate::store::Store;
use anyhow::Context;
use std::future::Future;

/// The file in the data directory holding the admin API's bearer token.
pub const ADMIN_TOKEN_FILE: &str = "admin-token";

/// Runs meshd until `shutdown` completes.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating --data-dir {}", config.data_dir.display()))?;
    let store = Store::open(&config.database_url).await?;
    let authority = Authority::bootstrap(&config, &store).await?;
    ensure_admin_token(&config)?;
    tracing::info!(
        trust_domain = %config.trust_domain,
        root = %authority.bundle().fingerprints().join(","),
        data_dir = %config.data_dir.display(),
        "meshd ready"
    );
    shutdown.await;
    tracing::info!("shutting down");
    store.close().await;
    Ok(())
}

/// Creates `<data-dir>/admin-token` (mode 0600) on first start; later starts keep it.
fn ensure_admin_token(config: &Config) -> anyhow::Result<()> {
    let path = config.data_dir.join(ADMIN_TOKEN_FILE);
    if path.exists() {
        return Ok(());
    }
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::fill(&mut bytes)
        .map_err(|_| anyhow::anyhow!("random number generator failed"))?;
    write_private_or_public(&path, mesh_ca::hex(&bytes).as_bytes(), 0o600)
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
