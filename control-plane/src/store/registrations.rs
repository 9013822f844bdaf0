//! Which sidecars are (or were lately) connected, as endpoints of their services: written as
//! streams open and close, read when meshd starts so that it serves the endpoints it knew while
//! the sidecars reconnect.

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
}

/// A change to record, in the order it happened.
#[derive(Debug, Clone)]
pub enum RegistrationEvent {
    Connected(Registration),
    Disconnected { id: String, at: i64 },
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
                             inbound_address, identity, connected_at, disconnected_at) \
                             VALUES ($1, $2, $3, $4, $5, $6, $7, NULL) \
                             ON CONFLICT (id) DO UPDATE SET namespace = excluded.namespace, \
                             service = excluded.service, labels = excluded.labels, \
                             inbound_address = excluded.inbound_address, \
                             identity = excluded.identity, connected_at = excluded.connected_at, \
                             disconnected_at = NULL",
                        )
                        .bind(r.id.as_str())
                        .bind(r.namespace.as_str())
                        .bind(r.service.as_str())
                        .bind(r.labels.as_str())
                        .bind(r.inbound_address.as_str())
                        .bind(r.identity.as_str())
                        .bind(r.connected_at)
                        .execute(&mut *tx)
                        .await
                        .map_err(err)?;
                    }
                    RegistrationEvent::Disconnected { id, at } => {
                        sqlx::query(
                            "UPDATE sidecar_registrations SET disconnected_at = $1 WHERE id = $2",
                        )
                        .bind(*at)
                        .bind(id.as_str())
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
                 disconnected_at FROM sidecar_registrations \
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
}
