//! Forced re-issue (`meshctl certs reissue`, `POST /api/v1/reissue`), e.g. after a key
//! compromise. A directive is stored before it is put in force, so that a restarted meshd and
//! every replica put it in force too: the replica that took the order at once, the others when
//! the store tells them (PostgreSQL NOTIFY on the CA topic) or at their next re-read.

use crate::store::{Store, Topic};
use crate::xds::Dirty;
use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::watch;

// The directive as stored, pushed and shown is one type, the admin API's.
pub use mesh_admin_api::{Directive, ReissueTarget};

/// The `issued_before` of a directive made at `now` (unix seconds) by a CA that backdates
/// notBefore by `backdate`: notBefore has one-second resolution, so only a certificate from the
/// next second on is certainly newer than the directive (a key compromised now must not survive).
pub fn issued_after(now: i64, backdate: Duration) -> i64 {
    now + 1 - backdate.as_secs() as i64
}

/// The directives in force on this replica: put in force by re-issue orders and the CA
/// rotation, read by every push of the discovery server. Cheap to clone.
#[derive(Clone)]
pub struct Directives {
    list: Arc<RwLock<Vec<Directive>>>,
    dirty: Dirty,
}

// === impl Directives ===

impl Directives {
    /// An empty set; every change marks `dirty` (the discovery server pushes it).
    pub fn new(dirty: Dirty) -> Self {
        Self {
            list: Arc::default(),
            dirty,
        }
    }

    /// The directives in force, oldest first.
    pub fn list(&self) -> Vec<Directive> {
        self.list.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A directive telling the sidecars of `target` to re-issue their certificates within
    /// `window`, each at a random moment of it (so the CA sees a smooth rate); not in force yet
    /// ([`order`] stores it, then installs it). `backdate` is the CA's notBefore backdating, so
    /// that a certificate issued after this call counts as re-issued.
    pub fn reissue(
        &self,
        target: ReissueTarget,
        window: Duration,
        backdate: Duration,
        reason: &str,
    ) -> Directive {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        self.new_directive(
            target,
            now + window.as_secs() as i64,
            issued_after(now, backdate),
            reason,
        )
    }

    /// A directive with a generation never used before (not installed yet).
    pub fn new_directive(
        &self,
        target: ReissueTarget,
        reissue_before: i64,
        issued_before: i64,
        reason: &str,
    ) -> Directive {
        let now_ms = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as u64;
        let last = self.list().iter().map(|d| d.generation).max().unwrap_or(0);
        Directive {
            generation: now_ms.max(last + 1),
            target,
            reissue_before,
            issued_before,
            reason: reason.to_string(),
        }
    }

    /// Puts `directive` in force (replacing one of the same generation, so reinstalling a
    /// persisted directive after a restart is harmless).
    pub fn install(&self, directive: Directive) {
        let mut directives = self.list.write().unwrap_or_else(|p| p.into_inner());
        directives.retain(|d| d.generation != directive.generation);
        directives.push(directive);
        directives.sort_by_key(|d| d.generation);
        drop(directives);
        self.dirty.mark();
    }
}

/// How long after its window a directive is still put in force: a certificate issued before it
/// can live this long (meshd's longest certificate TTL), so a sidecar restarted with one still
/// has to re-issue.
const KEEP_AFTER_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// Orders the sidecars of `target` to re-issue within `window`: stored, then put in force here.
pub async fn order(
    store: &Store,
    directives: &Directives,
    target: ReissueTarget,
    window: Duration,
    backdate: Duration,
    reason: &str,
) -> crate::store::Result<Directive> {
    let directive = directives.reissue(target, window, backdate, reason);
    let json =
        serde_json::to_string(&directive).map_err(|e| crate::store::StoreError::Corrupt {
            what: "a re-issue directive".into(),
            detail: e.to_string(),
        })?;
    store
        .record_directive(directive.generation, &json, directive.reissue_before)
        .await?;
    directives.install(directive.clone());
    Ok(directive)
}

/// Puts in force the stored directives this meshd does not hold yet ([`load`] at start, before
/// anything is served), then whenever the CA topic changes and every `resync`. Ends when
/// `shutdown` turns true.
pub fn follow(
    store: Store,
    directives: Directives,
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
            load(&store, &directives).await;
        }
    });
}

/// Puts in force the stored directives (of the last day) that `directives` does not hold yet.
pub async fn load(store: &Store, directives: &Directives) {
    let since =
        time::OffsetDateTime::now_utc().unix_timestamp() - KEEP_AFTER_WINDOW.as_secs() as i64;
    let stored = match store.directives_since(since).await {
        Ok(stored) => stored,
        Err(e) => {
            tracing::warn!(error = %e, "reading the stored re-issue directives");
            return;
        }
    };
    let held: HashSet<u64> = directives.list().iter().map(|d| d.generation).collect();
    for json in stored {
        match serde_json::from_str::<Directive>(&json) {
            Ok(d) if !held.contains(&d.generation) => {
                tracing::info!(generation = d.generation, target = ?d.target, "re-issue directive put in force");
                directives.install(d);
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
