//! Which sidecars are (or were lately) connected, as endpoints of their services: written as
//! streams open and close, read when meshd starts so that it serves the endpoints it knew while
//! the sidecars reconnect. With several replicas, also which replica holds each stream and the
//! TrustBundle version the sidecar ACKed there, and which replicas are alive (heartbeats): the
//! CA rotation's gates count the sidecars of every replica from these rows.

use super::{Result, Store, StoreError};

/// One sidecar as an endpoint.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Registration {
    pub id: String,
    pub namespace: String,
    pub service: String,
    /// JSON object.
    pub labels: String,
    pub inbound_address: String,
    pub identity: String,
    pub connected_at: i64,
    pub disconnected_at: Option<i64>,
    /// The replica that holds (or held) the stream.
    pub replica: String,
}

/// A change to record, in the order it happened. `replica` is the replica reporting it: a
/// late event of a replica the sidecar already left does not touch its new replica's row.
#[derive(Debug, Clone)]
pub enum RegistrationEvent {
    Connected(Registration),
    Disconnected {
        id: String,
        replica: String,
        at: i64,
    },
    /// The sidecar ACKed this TrustBundle type version (reported only when it changes).
    BundleAcked {
        id: String,
        replica: String,
        version: String,
    },
}

/// What a CA rotation's gate asks of every connected sidecar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SidecarGate<'a> {
    /// It ACKed this TrustBundle type version.
    Bundle(&'a str),
    /// It holds a certificate of this issuer (signing certificate fingerprint) that is not
    /// expired at `now`.
    Certificate { issuer: &'a str, now: i64 },
}

/// How far the sidecars of the live replicas are with a [`SidecarGate`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GateCount {
    pub connected: u64,
    pub done: u64,
    /// Ids of a few sidecars not done, by id.
    pub stragglers: Vec<String>,
}

/// The sidecars with an open stream on a replica heard from at or after `$1`, as `s`.
macro_rules! connected_from {
    () => {
        " FROM sidecar_registrations s JOIN meshd_replicas r ON r.name = s.replica \
         WHERE s.disconnected_at IS NULL AND r.heartbeat_at >= $1"
    };
}

/// Whether sidecar `s` is done with a [`SidecarGate::Bundle`] (`$2`: the version).
macro_rules! bundle_done {
    () => {
        "s.bundle_version = $2"
    };
}

/// Whether sidecar `s` is done with a [`SidecarGate::Certificate`] (`$2`: the issuer, `$3`:
/// now). `issued_certificates_by_sidecar` makes it one index probe per sidecar.
macro_rules! certificate_done {
    () => {
        "EXISTS (SELECT 1 FROM issued_certificates c WHERE c.sidecar = s.id \
         AND c.identity = s.identity AND c.issuer_fingerprint = $2 AND c.not_after >= $3)"
    };
}

/// The two statements of a gate: (connected, done) and a few stragglers (`$last`: how many).
macro_rules! gate_sql {
    ($done:expr, $last:literal) => {
        (
            concat!(
                "SELECT COUNT(*), COUNT(CASE WHEN ",
                $done,
                " THEN 1 END)",
                connected_from!()
            ),
            concat!(
                "SELECT s.id",
                connected_from!(),
                " AND CASE WHEN ",
                $done,
                " THEN 1 ELSE 0 END = 0 ORDER BY s.id LIMIT ",
                $last
            ),
        )
    };
}

/// A sidecar with an open stream on a live replica: an endpoint of its service for every
/// replica.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ConnectedSidecar {
    #[sqlx(flatten)]
    pub registration: Registration,
    /// The TrustBundle type version it ACKed on that stream; `None` before its first ACK.
    pub bundle_version: Option<String>,
}

// === impl Store ===

impl Store {
    /// Records `events` in order, in one transaction.
    pub async fn record_registrations(&self, events: &[RegistrationEvent]) -> Result<()> {
        let err = |e| StoreError::database("recording sidecar registrations", e);
        with_pool!(self, pool => {
            let mut tx = pool.begin().await.map_err(err)?;
            for event in events {
                match event {
                    RegistrationEvent::Connected(r) => {
                        sqlx::query(
                            "INSERT INTO sidecar_registrations (id, namespace, service, labels, \
                             inbound_address, identity, connected_at, disconnected_at, replica, \
                             bundle_version) VALUES ($1, $2, $3, $4, $5, $6, $7, NULL, $8, NULL) \
                             ON CONFLICT (id) DO UPDATE SET namespace = excluded.namespace, \
                             service = excluded.service, labels = excluded.labels, \
                             inbound_address = excluded.inbound_address, \
                             identity = excluded.identity, connected_at = excluded.connected_at, \
                             disconnected_at = NULL, replica = excluded.replica, \
                             bundle_version = NULL",
                        )
                        .bind(r.id.as_str())
                        .bind(r.namespace.as_str())
                        .bind(r.service.as_str())
                        .bind(r.labels.as_str())
                        .bind(r.inbound_address.as_str())
                        .bind(r.identity.as_str())
                        .bind(r.connected_at)
                        .bind(r.replica.as_str())
                        .execute(&mut *tx)
                        .await
                        .map_err(err)?;
                    }
                    RegistrationEvent::Disconnected { id, replica, at } => {
                        sqlx::query(
                            "UPDATE sidecar_registrations SET disconnected_at = $1 \
                             WHERE id = $2 AND replica = $3",
                        )
                        .bind(*at)
                        .bind(id.as_str())
                        .bind(replica.as_str())
                        .execute(&mut *tx)
                        .await
                        .map_err(err)?;
                    }
                    RegistrationEvent::BundleAcked { id, replica, version } => {
                        sqlx::query(
                            "UPDATE sidecar_registrations SET bundle_version = $1 \
                             WHERE id = $2 AND replica = $3 AND disconnected_at IS NULL",
                        )
                        .bind(version.as_str())
                        .bind(id.as_str())
                        .bind(replica.as_str())
                        .execute(&mut *tx)
                        .await
                        .map_err(err)?;
                    }
                }
            }
            tx.commit().await.map_err(err)
        })
    }

    /// Sidecars connected now as far as the store knows, or disconnected at or after `since`.
    pub async fn recent_registrations(&self, since: i64) -> Result<Vec<Registration>> {
        with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT id, namespace, service, labels, inbound_address, identity, connected_at, \
                 disconnected_at, replica FROM sidecar_registrations \
                 WHERE disconnected_at IS NULL OR disconnected_at >= $1 ORDER BY id",
            )
            .bind(since)
            .fetch_all(pool)
            .await
        })
        .map_err(|e| StoreError::database("reading sidecar registrations", e))
    }

    /// Forgets sidecars that disconnected before `before`; returns how many.
    pub async fn prune_registrations(&self, before: i64) -> Result<u64> {
        with_pool!(self, pool => {
            sqlx::query("DELETE FROM sidecar_registrations WHERE disconnected_at < $1")
                .bind(before)
                .execute(pool)
                .await
                .map(|r| r.rows_affected())
        })
        .map_err(|e| StoreError::database("pruning sidecar registrations", e))
    }

    /// Records that `replica` is alive at `now` (unix seconds).
    pub async fn heartbeat(&self, replica: &str, now: i64) -> Result<()> {
        with_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO meshd_replicas (name, heartbeat_at) VALUES ($1, $2) \
                 ON CONFLICT (name) DO UPDATE SET heartbeat_at = excluded.heartbeat_at",
            )
            .bind(replica)
            .bind(now)
            .execute(pool)
            .await
            .map(|_| ())
        })
        .map_err(|e| StoreError::database("recording the replica's heartbeat", e))
    }

    /// Closes the streams still recorded as open on replicas not heard from since
    /// `alive_since` (they died without closing them) as of `now`, and forgets those replicas;
    /// returns how many streams. Any replica may do it, as often as it likes.
    pub async fn reap_replicas(&self, alive_since: i64, now: i64) -> Result<u64> {
        let err = |e| StoreError::database("closing the streams of dead replicas", e);
        with_pool!(self, pool => {
            let mut tx = pool.begin().await.map_err(err)?;
            let closed = sqlx::query(
                "UPDATE sidecar_registrations SET disconnected_at = $2 \
                 WHERE disconnected_at IS NULL AND replica NOT IN \
                 (SELECT name FROM meshd_replicas WHERE heartbeat_at >= $1)",
            )
            .bind(alive_since)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(err)?
            .rows_affected();
            sqlx::query("DELETE FROM meshd_replicas WHERE heartbeat_at < $1")
                .bind(alive_since)
                .execute(&mut *tx)
                .await
                .map_err(err)?;
            tx.commit().await.map_err(err)?;
            Ok(closed)
        })
    }

    /// Forgets `replica` (a graceful shutdown): its sidecars stop counting at once.
    pub async fn forget_replica(&self, replica: &str) -> Result<()> {
        with_pool!(self, pool => {
            sqlx::query("DELETE FROM meshd_replicas WHERE name = $1")
                .bind(replica)
                .execute(pool)
                .await
                .map(|_| ())
        })
        .map_err(|e| StoreError::database("removing the replica", e))
    }

    /// The sidecars with an open stream on a replica whose heartbeat is at or after
    /// `alive_since`, by id. A replica that died without closing its streams stops counting
    /// once its heartbeat is older; its sidecars count again when they reconnect elsewhere.
    pub async fn connected_sidecars(&self, alive_since: i64) -> Result<Vec<ConnectedSidecar>> {
        with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT s.id, s.namespace, s.service, s.labels, s.inbound_address, s.identity, \
                 s.connected_at, s.disconnected_at, s.replica, s.bundle_version \
                 FROM sidecar_registrations s JOIN meshd_replicas r ON r.name = s.replica \
                 WHERE s.disconnected_at IS NULL AND r.heartbeat_at >= $1 ORDER BY s.id",
            )
            .bind(alive_since)
            .fetch_all(pool)
            .await
        })
        .map_err(|e| StoreError::database("listing connected sidecars", e))
    }

    /// How many sidecars have an open stream on another live replica than `replica`.
    pub async fn connected_elsewhere(&self, replica: &str, alive_since: i64) -> Result<u64> {
        let (count,): (i64,) = with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT COUNT(*) FROM sidecar_registrations s \
                 JOIN meshd_replicas r ON r.name = s.replica \
                 WHERE s.disconnected_at IS NULL AND r.heartbeat_at >= $1 AND s.replica <> $2",
            )
            .bind(alive_since)
            .bind(replica)
            .fetch_one(pool)
            .await
        })
        .map_err(|e| StoreError::database("counting the other replicas' sidecars", e))?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    /// How far the sidecars connected to live replicas (heard from at or after `alive_since`)
    /// are with `gate`, counted in the database (a fleet of thousands is not read row by row
    /// every second), with up to `sample` stragglers.
    pub async fn gate_count(
        &self,
        alive_since: i64,
        gate: SidecarGate<'_>,
        sample: u32,
    ) -> Result<GateCount> {
        let err = |e| StoreError::database("counting sidecars at a rotation gate", e);
        let sample = i64::from(sample);
        let ((connected, done), stragglers): ((i64, i64), Vec<String>) = match gate {
            SidecarGate::Bundle(version) => {
                let (count, late) = gate_sql!(bundle_done!(), "$3");
                with_pool!(self, pool => {
                    let counted = sqlx::query_as(count)
                        .bind(alive_since)
                        .bind(version)
                        .fetch_one(pool)
                        .await
                        .map_err(err)?;
                    let late = sqlx::query_scalar(late)
                        .bind(alive_since)
                        .bind(version)
                        .bind(sample)
                        .fetch_all(pool)
                        .await
                        .map_err(err)?;
                    (counted, late)
                })
            }
            SidecarGate::Certificate { issuer, now } => {
                let issuer = issuer.to_ascii_lowercase();
                let (count, late) = gate_sql!(certificate_done!(), "$4");
                with_pool!(self, pool => {
                    let counted = sqlx::query_as(count)
                        .bind(alive_since)
                        .bind(issuer.as_str())
                        .bind(now)
                        .fetch_one(pool)
                        .await
                        .map_err(err)?;
                    let late = sqlx::query_scalar(late)
                        .bind(alive_since)
                        .bind(issuer.as_str())
                        .bind(now)
                        .bind(sample)
                        .fetch_all(pool)
                        .await
                        .map_err(err)?;
                    (counted, late)
                })
            }
        };
        Ok(GateCount {
            connected: u64::try_from(connected).unwrap_or(0),
            done: u64::try_from(done).unwrap_or(0),
            stragglers,
        })
    }
}
