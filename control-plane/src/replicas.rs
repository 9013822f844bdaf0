//! Several meshd replicas on one store: each records that it is alive (a heartbeat), counts
//! only the sidecars of live replicas, serves the other replicas' sidecars as endpoints, and
//! after a restart serves the endpoints it knew while their sidecars reconnect. Every notion of
//! "alive" comes from here.

use crate::store::{Registration, Store};
use crate::xds::Xds;
use crate::xds::view::LiveEndpoint;
use std::time::Duration;

/// How often a replica records that it is alive ([`Store::heartbeat`]).
pub const HEARTBEAT: Duration = Duration::from_secs(5);
/// The sidecars of a replica whose heartbeat is older than this no longer count as connected
/// (it died without closing their streams); they count again once they reconnect elsewhere.
pub const REPLICA_TTL: Duration = Duration::from_secs(15);

/// A replica whose last heartbeat is at or after this (for `now`, unix seconds) is alive.
pub fn alive_since(now: i64) -> i64 {
    now - REPLICA_TTL.as_secs() as i64
}

/// How long a replica must have been silent before another one closes the streams it left
/// recorded as open. Much longer than [`REPLICA_TTL`] (which already stops them counting): a
/// replica that is only slow must not find its live streams closed behind its back.
const REAP_AFTER: Duration = Duration::from_secs(300);

/// Records that this replica is alive, every [`HEARTBEAT`], until aborted; and closes the
/// streams that replicas which died (no heartbeat for [`REAP_AFTER`]) left recorded as open,
/// so that no later start takes their sidecars for known endpoints.
pub async fn heartbeat(store: Store, replica: String) {
    loop {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        if let Err(e) = store.heartbeat(&replica, now).await {
            tracing::warn!(error = %e, "recording this replica's heartbeat");
        }
        match store
            .reap_replicas(now - REAP_AFTER.as_secs() as i64, now)
            .await
        {
            Ok(0) => {}
            Ok(closed) => tracing::info!(
                streams = closed,
                "closed the streams of replicas that stopped without closing them"
            ),
            Err(e) => tracing::warn!(error = %e, "closing the streams of dead replicas"),
        }
        tokio::time::sleep(HEARTBEAT).await;
    }
}

/// How long a restarted meshd serves the endpoints it knew before, waiting for their sidecars
/// to reconnect (their reconnect backoff is capped at 30 s).
pub const WARMUP: Duration = Duration::from_secs(60);
/// Sidecars that disconnected this recently before a start count as known endpoints (a
/// graceful shutdown records the disconnections of every stream it ends).
const RECENT_DISCONNECT: i64 = 120;

/// Records the sidecars' streams in the store from now on, and serves the endpoints the store
/// knew as connected during [`WARMUP`].
pub async fn remember_endpoints(xds: &Xds, store: &Store) {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let _ = store.prune_registrations(now - 24 * 3600).await;
    match store.recent_registrations(now - RECENT_DISCONNECT).await {
        Ok(known) => {
            let endpoints = known.into_iter().filter_map(endpoint).collect();
            xds.remember(endpoints, WARMUP);
        }
        Err(e) => tracing::warn!(error = %e, "reading the sidecars known before this start"),
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    xds.record_registrations(tx);
    let store = store.clone();
    tokio::spawn(async move {
        let mut batch = Vec::new();
        while rx.recv_many(&mut batch, 512).await > 0 {
            if let Err(e) = store.record_registrations(&batch).await {
                tracing::warn!(error = %e, "recording sidecar registrations");
            }
            batch.clear();
        }
    });
}

/// A stored registration as an endpoint of its service (`None` for a sidecar of no service).
fn endpoint(r: Registration) -> Option<(String, LiveEndpoint)> {
    if r.service.is_empty() {
        return None;
    }
    let endpoint = LiveEndpoint {
        namespace: r.namespace,
        service: r.service,
        labels: serde_json::from_str(&r.labels).unwrap_or_default(),
        address: r.inbound_address,
        identity: r.identity,
    };
    Some((r.id, endpoint))
}

/// The shortest time between two reads of the other replicas' sidecars: with a busy fleet,
/// notifications come faster than that.
const ENDPOINTS_MIN_INTERVAL: Duration = Duration::from_secs(1);

/// Serves the sidecars connected to the other live replicas as endpoints too, read from the
/// store whenever a stream opens or closes somewhere (NOTIFY), at least every
/// [`crate::rotation::RESYNC`], at most every [`ENDPOINTS_MIN_INTERVAL`]. With SQLite there is
/// one replica and no other sidecars.
pub async fn follow_endpoints(
    xds: Xds,
    store: Store,
    mut changes: tokio::sync::watch::Receiver<u64>,
) {
    if store.backend() == crate::store::Backend::Sqlite {
        return;
    }
    loop {
        let alive_since = alive_since(time::OffsetDateTime::now_utc().unix_timestamp());
        match store.connected_sidecars(alive_since).await {
            Ok(fleet) => xds.set_remote(
                fleet
                    .into_iter()
                    .map(|s| s.registration)
                    .filter(|r| r.replica != xds.replica())
                    .filter_map(endpoint)
                    .collect(),
            ),
            Err(e) => tracing::warn!(error = %e, "reading the other replicas' sidecars"),
        }
        tokio::time::sleep(ENDPOINTS_MIN_INTERVAL).await;
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(crate::rotation::RESYNC) => {}
        }
    }
}

/// This replica's name: the host name (a pod name in Kubernetes) and the process id.
pub fn name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "meshd".into());
    format!("{host}-{}", std::process::id())
}
