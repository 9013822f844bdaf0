//! How a replica learns that another one changed the CA state, a document or its sidecars: PostgreSQL
//! LISTEN/NOTIFY (triggers in `migrations/postgres/0005_replicas.sql` notify on every committed
//! write). A notification only says "look again"; the reader re-reads the store, so a lost
//! notification (the listening session dropped and reconnected) is covered by waking every
//! topic after each (re)connect, and by the readers' own periodic re-read. With SQLite there is
//! one replica and nothing is ever notified.

use super::{DbPool, Store};
use sqlx::postgres::PgListener;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// What changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topic {
    /// `ca_state` (a CA rotation step).
    Ca,
    /// A config document (applied, deleted, rolled back).
    Documents,
    /// A sidecar's stream opened or closed on some replica (endpoints), or a replica left.
    Sidecars,
}

impl Topic {
    const ALL: [Topic; 3] = [Topic::Ca, Topic::Documents, Topic::Sidecars];

    /// The NOTIFY channel, as the migration's triggers name it.
    fn channel(self) -> &'static str {
        match self {
            Self::Ca => "meshd_ca",
            Self::Documents => "meshd_documents",
            Self::Sidecars => "meshd_sidecars",
        }
    }
}

/// How long to wait before listening again after the listener failed.
const RELISTEN: Duration = Duration::from_secs(1);

/// Change notifications by topic. Cheap to clone.
#[derive(Clone)]
pub struct Changes {
    ca: Arc<watch::Sender<u64>>,
    documents: Arc<watch::Sender<u64>>,
    sidecars: Arc<watch::Sender<u64>>,
}

impl Store {
    /// Starts listening for other replicas' changes (PostgreSQL; a no-op with SQLite). The
    /// listener runs until the store is closed.
    pub fn changes(&self) -> Changes {
        let changes = Changes {
            ca: Arc::new(watch::channel(0).0),
            documents: Arc::new(watch::channel(0).0),
            sidecars: Arc::new(watch::channel(0).0),
        };
        if let DbPool::Postgres(pool) = &self.pool {
            tokio::spawn(listen(pool.clone(), changes.clone()));
        }
        changes
    }
}

// === impl Changes ===

impl Changes {
    /// Marked changed whenever `topic` may have changed in the store.
    pub fn subscribe(&self, topic: Topic) -> watch::Receiver<u64> {
        self.sender(topic).subscribe()
    }

    fn sender(&self, topic: Topic) -> &watch::Sender<u64> {
        match topic {
            Topic::Ca => &self.ca,
            Topic::Documents => &self.documents,
            Topic::Sidecars => &self.sidecars,
        }
    }

    fn wake(&self, topic: Topic) {
        self.sender(topic).send_modify(|n| *n = n.wrapping_add(1));
    }

    fn wake_all(&self) {
        for topic in Topic::ALL {
            self.wake(topic);
        }
    }
}

async fn listen(pool: sqlx::PgPool, changes: Changes) {
    loop {
        if pool.is_closed() {
            return;
        }
        let listener = async {
            let mut l = PgListener::connect_with(&pool).await?;
            l.listen_all(Topic::ALL.map(Topic::channel)).await?;
            Ok::<_, sqlx::Error>(l)
        };
        let mut listener = match listener.await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "listening for other replicas' changes");
                tokio::time::sleep(RELISTEN).await;
                continue;
            }
        };
        // Whatever happened while nobody listened.
        changes.wake_all();
        loop {
            match listener.try_recv().await {
                Ok(Some(n)) => match Topic::ALL.into_iter().find(|t| t.channel() == n.channel()) {
                    Some(topic) => changes.wake(topic),
                    None => tracing::debug!(channel = n.channel(), "unexpected notification"),
                },
                // The session was lost (and is re-established by the next call): notifications
                // may have been lost with it.
                Ok(None) => changes.wake_all(),
                Err(sqlx::Error::PoolClosed) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "listening for other replicas' changes");
                    tokio::time::sleep(RELISTEN).await;
                    break;
                }
            }
        }
    }
}
