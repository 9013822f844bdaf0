//! Forced re-issue (`meshctl certs reissue`, `POST /api/v1/reissue`), e.g. after a key
//! compromise. A directive is stored before it is put in force, so that a restarted meshd and
//! every replica put it in force too: the replica that took the order at once, the others when
//! the store tells them (PostgreSQL NOTIFY on the CA topic) or at their next re-read.

use crate::store::{Store, Topic};
use crate::xds::Xds;
use crate::xds::view::{Directive, ReissueTarget};
use std::collections::HashSet;
use std::time::Duration;
use tokio::sync::watch;

/// How long after its window a directive is still put in force: a certificate issued before it
/// can live this long (meshd's longest certificate TTL), so a sidecar restarted with one still
/// has to re-issue.
const KEEP_AFTER_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// Orders the sidecars of `target` to re-issue within `window`: stored, then put in force here.
pub async fn order(
    store: &Store,
    xds: &Xds,
    target: ReissueTarget,
    window: Duration,
    backdate: Duration,
    reason: &str,
) -> crate::store::Result<Directive> {
    let directive = xds.reissue_directive(target, window, backdate, reason);
    let json =
        serde_json::to_string(&directive).map_err(|e| crate::store::StoreError::Corrupt {
            what: "a re-issue directive".into(),
            detail: e.to_string(),
        })?;
    store
        .record_directive(directive.generation, &json, directive.reissue_before)
        .await?;
    xds.install_directive(directive.clone());
    Ok(directive)
}

/// Puts in force the stored directives this meshd does not hold yet ([`load`] at start, before
/// anything is served), then whenever the CA topic changes and every `resync`. Ends when
/// `shutdown` turns true.
pub fn follow(
    store: Store,
    xds: Xds,
    mut changes: watch::Receiver<u64>,
    resync: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep(resync) => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
            load(&store, &xds).await;
        }
    });
}

/// Puts in force the stored directives (of the last day) that `xds` does not hold yet.
pub async fn load(store: &Store, xds: &Xds) {
    let since =
        time::OffsetDateTime::now_utc().unix_timestamp() - KEEP_AFTER_WINDOW.as_secs() as i64;
    let stored = match store.directives_since(since).await {
        Ok(stored) => stored,
        Err(e) => {
            tracing::warn!(error = %e, "reading the stored re-issue directives");
            return;
        }
    };
    let held: HashSet<u64> = xds.directives().iter().map(|d| d.generation).collect();
    for json in stored {
        match serde_json::from_str::<Directive>(&json) {
            Ok(d) if !held.contains(&d.generation) => {
                tracing::info!(generation = d.generation, target = ?d.target, "re-issue directive put in force");
                xds.install_directive(d);
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "a stored re-issue directive does not parse; skipped")
            }
        }
    }
}

/// The store's topic for directives (the CA's).
pub const TOPIC: Topic = Topic::Ca;
