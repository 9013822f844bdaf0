//! The scope cache: one immutable snapshot per scope that has sidecars, published on a watch
//! channel its streams follow (go-control-plane's snapshot cache). A rebuild builds every scope
//! once from the same prepared view, checks it (every reference resolves) and publishes the
//! ones whose content changed; a TLS change that cannot go in one step is bridged here.

use super::bridge::Bridge;
use super::lock;
use super::snapshot::Snapshot;
use super::view::{self, Inputs, ScopeKey};
use crate::metrics::Metrics;
use mesh_proto::ResourceType;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::watch;

#[derive(Default)]
pub(super) struct Scopes {
    map: Mutex<HashMap<ScopeKey, watch::Sender<Arc<Snapshot>>>>,
    /// Locked after `map` when both are needed.
    bridge: Mutex<Bridge>,
}

// === impl Scopes ===

impl Scopes {
    /// The scope's snapshot channel, built now with `inputs` if the scope is new. `inputs` is
    /// called with the cache locked, so that no rebuild runs between reading the inputs and
    /// publishing what they built.
    pub fn subscribe(
        &self,
        key: &ScopeKey,
        inputs: impl FnOnce(&mut dyn FnMut(&Inputs)),
        metrics: &Metrics,
    ) -> watch::Receiver<Arc<Snapshot>> {
        let mut map = lock(&self.map);
        if let Some(tx) = map.get(key) {
            return tx.subscribe();
        }
        let mut snapshot = None;
        inputs(&mut |inputs| {
            snapshot = Some(view::build(
                &view::Prepared::new(inputs),
                key,
                Instant::now(),
            ));
        });
        let mut snapshot = snapshot.unwrap_or_else(|| Snapshot::new(Instant::now()));
        lock(&self.bridge).apply(key, None, &mut snapshot);
        // A new scope has no previous snapshot to keep: it is served, and the bug reported.
        checked(key, &snapshot, metrics);
        let (tx, rx) = watch::channel(Arc::new(snapshot));
        map.insert(key.clone(), tx);
        rx
    }

    /// Rebuilds the snapshot of every scope that has sidecars, once per scope, and publishes
    /// the ones whose content changed. Returns whether a TLS bridge started.
    pub fn rebuild(&self, inputs: &Inputs, changed_at: Instant, metrics: &Metrics) -> bool {
        let mut map = lock(&self.map);
        map.retain(|_, tx| tx.receiver_count() > 0);
        let mut bridge = lock(&self.bridge);
        bridge.prepare(|k| map.contains_key(k));
        let mut started = false;
        let prepared = view::Prepared::new(inputs);
        for (scope, tx) in map.iter() {
            let mut next = view::build(&prepared, scope, changed_at);
            started |= bridge.apply(scope, Some(&tx.borrow()), &mut next);
            // An inconsistent snapshot is a bug of the view: the previous one stays.
            if !checked(scope, &next, metrics) {
                continue;
            }
            if !tx.borrow().same_content(&next) {
                tx.send_replace(Arc::new(next));
            }
        }
        bridge.finish();
        if started {
            tracing::info!(
                scopes = bridge.scope_count(),
                "TLS policy change shares no version, suite or group with what the sidecars run: \
                 pushing a policy that accepts both until every sidecar ACKed it"
            );
        }
        started
    }

    /// The snapshot `key` holds now.
    pub fn current(&self, key: &ScopeKey) -> Option<Arc<Snapshot>> {
        lock(&self.map).get(key).map(|tx| tx.borrow().clone())
    }

    /// Whether a TLS policy change waits for ACKs of its interim policy.
    pub fn bridging(&self) -> bool {
        lock(&self.bridge).waiting()
    }

    /// Since when a TLS change is bridged, and the TlsPolicy type version each bridged scope's
    /// sidecars must ACK; `None` when no change is bridged.
    pub fn bridge_wants(&self) -> Option<(Instant, HashMap<ScopeKey, String>)> {
        let map = lock(&self.map);
        let bridge = lock(&self.bridge);
        let (since, scopes) = bridge.bridged()?;
        let wanted = scopes
            .filter_map(|k| {
                let version = map
                    .get(k)?
                    .borrow()
                    .type_version(ResourceType::TlsPolicy)
                    .to_string();
                Some((k.clone(), version))
            })
            .collect();
        Some((since, wanted))
    }

    /// The bridged change goes ahead at the next rebuild.
    pub fn release_bridge(&self) {
        lock(&self.bridge).release();
    }
}

/// Whether `snapshot` is consistent; an inconsistency is logged and counted.
fn checked(scope: &ScopeKey, snapshot: &Snapshot, metrics: &Metrics) -> bool {
    match snapshot.check_consistent() {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(?scope, error = %e, "inconsistent snapshot (a bug): not published");
            metrics.snapshot_inconsistent();
            false
        }
    }
}
