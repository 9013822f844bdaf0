//! Work that must happen once across replicas (the CA rotation's state machine) is driven by
//! the replica holding a lease: a PostgreSQL session-level advisory lock, taken on a connection
//! of its own. The lock lives exactly as long as that session, so a replica that dies (or loses
//! its database connection) gives it up without any expiry to wait for, and another replica
//! takes it on its next try. With SQLite there is one replica: it always holds the lease.

use super::{DbPool, Store};
use sqlx::Connection;
use sqlx::postgres::PgConnection;
use std::time::Duration;

/// Which lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseKey {
    /// Who drives the CA rotation.
    CaRotation,
}

impl LeaseKey {
    /// The advisory lock's key. Advisory locks share one key space per database with sqlx's
    /// migration lock (a key derived from the database name), so ours start with "mesh".
    fn lock_key(self) -> i64 {
        match self {
            Self::CaRotation => 0x6d65_7368_0000_0001,
        }
    }
}

/// The advisory lock that serializes changes to the documents across replicas.
const DOCUMENT_WRITES_KEY: i64 = 0x6d65_7368_0000_0002;
/// How long a change to the documents waits for another replica's change to finish.
const DOCUMENT_WRITES_WAIT: Duration = Duration::from_secs(30);

/// Held while a replica validates and stores a change to the documents (PostgreSQL), so that
/// two replicas never validate against the same model and store changes that are valid only
/// apart (a route to a service the other replica deletes). Dropping it ends its database
/// session, which releases the lock. With SQLite there is one replica and nothing to hold.
pub struct DocumentWriteLock {
    _session: Option<PgConnection>,
}

impl Store {
    /// Waits (up to 30 s) until no other replica is changing the documents, then holds the
    /// lock until the returned guard is dropped.
    pub async fn document_write_lock(&self) -> super::Result<DocumentWriteLock> {
        let DbPool::Postgres(pool) = &self.pool else {
            return Ok(DocumentWriteLock { _session: None });
        };
        let failed = |error| super::StoreError::Database {
            op: "waiting for another replica's change to the documents".into(),
            error,
        };
        let locked = tokio::time::timeout(DOCUMENT_WRITES_WAIT, async {
            // Out of the pool: the session ends, and the lock with it, when the guard drops.
            let mut session = pool.acquire().await?.detach();
            sqlx::query("SELECT pg_advisory_lock($1)")
                .bind(DOCUMENT_WRITES_KEY)
                .execute(&mut session)
                .await?;
            Ok::<_, sqlx::Error>(session)
        })
        .await
        .map_err(|_| failed(sqlx::Error::PoolTimedOut))?
        .map_err(failed)?;
        Ok(DocumentWriteLock {
            _session: Some(locked),
        })
    }
}

/// How long one round trip of the lease may take before the lease counts as lost.
const ROUND_TRIP: Duration = Duration::from_secs(5);

/// A replica's claim to a [`LeaseKey`]: [`Lease::poll`] keeps it or tries to take it.
pub struct Lease {
    store: Store,
    key: LeaseKey,
    /// The dedicated session (PostgreSQL): holds the lock once taken.
    session: Option<PgConnection>,
    held: bool,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("key", &self.key)
            .field("held", &self.held)
            .finish()
    }
}

impl Store {
    /// A claim to `key`, not held yet: [`Lease::poll`] takes it when it is free.
    pub fn lease(&self, key: LeaseKey) -> Lease {
        Lease {
            store: self.clone(),
            key,
            session: None,
            held: false,
        }
    }
}

// === impl Lease ===

impl Lease {
    /// Whether this replica holds the lease now. Held: checks that its session is still alive
    /// (a lost session lost the lock). Not held: tries to take it, without waiting for another
    /// holder. Errors count as "not held" and are logged; the next poll tries again.
    pub async fn poll(&mut self) -> bool {
        let pool = match &self.store.pool {
            DbPool::Sqlite(_) => {
                self.held = true;
                return true;
            }
            DbPool::Postgres(pool) => pool.clone(),
        };
        let key = self.key.lock_key();
        let outcome = tokio::time::timeout(ROUND_TRIP, async {
            if self.session.is_none() {
                // Out of the pool for good: the lock must stay with this one session.
                self.session = Some(pool.acquire().await?.detach());
            }
            let Some(session) = self.session.as_mut() else {
                return Ok(false);
            };
            if self.held {
                sqlx::query("SELECT 1").execute(&mut *session).await?;
                Ok(true)
            } else {
                sqlx::query_scalar::<_, bool>("SELECT pg_try_advisory_lock($1)")
                    .bind(key)
                    .fetch_one(&mut *session)
                    .await
            }
        })
        .await;
        let held = match outcome {
            Ok(Ok(held)) => held,
            Ok(Err(e)) => {
                tracing::warn!(lease = ?self.key, error = %e, "lease: database session failed");
                self.session = None;
                false
            }
            Err(_) => {
                tracing::warn!(lease = ?self.key, "lease: database session did not answer within {ROUND_TRIP:?}");
                self.session = None;
                false
            }
        };
        if held != self.held {
            tracing::info!(lease = ?self.key, held, "lease changed hands");
        }
        self.held = held;
        held
    }

    /// Whether the last [`Lease::poll`] found it held.
    pub fn is_held(&self) -> bool {
        self.held
    }

    /// Gives the lease up at once (closes the session; dropping the `Lease` does the same
    /// without waiting for the server's goodbye).
    pub async fn release(&mut self) {
        if let Some(session) = self.session.take() {
            let _ = session.close().await;
        }
        self.held = false;
    }
}
