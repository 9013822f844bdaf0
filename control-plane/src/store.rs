//! The config store: config documents with their revision history, CA state, issued
//! certificates, join tokens and the audit log, in SQLite (the embedded default) or PostgreSQL
//! (several replicas over one database).
//!
//! # One copy of each query
//!
//! [`Store`] wraps an enum over a native `SqlitePool` / `PgPool` rather than sqlx's `Any`
//! driver: the native pools keep the SQLite connect options (WAL, foreign keys, busy timeout)
//! and give access to PostgreSQL-only features we will need (LISTEN/NOTIFY between replicas,
//! advisory locks). Every query is still written once: the `with_pool!` macro below expands one
//! block of code for each backend, and the SQL in it is the portable subset both accept
//! (`$1` placeholders, `ON CONFLICT ... DO UPDATE`, `RETURNING`, `BIGINT`-sized integers).
//! Only the DDL differs, in `migrations/sqlite` and `migrations/postgres`.
//!
//! # Revisions
//!
//! Every change to a document takes the next number from a one-row counter table
//! (`revision_counter`) as the first statement of its transaction. The counter is never
//! decremented (only a rolled-back transaction gives its number back), so revisions only grow,
//! across restarts and deletes. Unlike an identity column / `AUTOINCREMENT`, the counter row is
//! also a lock: writers are serialized, so revisions are *committed* in increasing order, and a
//! replica that follows "everything after revision N" can never miss a change that committed
//! late with a smaller number.

use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};

/// Expands `$body` once per backend with `$pool` bound to the native pool (`&SqlitePool` or
/// `&PgPool`), so each query is written once and compiled for both drivers.
macro_rules! with_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match &$store.pool {
            $crate::store::DbPool::Sqlite($pool) => $body,
            $crate::store::DbPool::Postgres($pool) => $body,
        }
    };
}

mod audit;
mod ca;
mod certificates;
mod changes;
mod directives;
mod documents;
mod join_tokens;
mod lease;
mod registrations;

pub use audit::{AuditEntry, AuditOutcome, AuditRecord};
pub use ca::CaStateRecord;
pub use certificates::{IssueRecord, IssuedCert};
pub use changes::{Changes, Topic};
pub use documents::{ApplyOutcome, Document, Labels, Revision, RevisionOp};
pub use join_tokens::{ConsumeOutcome, JoinToken, JoinTokenRecord};
pub use lease::{DocumentWriteLock, Lease, LeaseKey};
pub use registrations::{
    ConnectedSidecar, GateCount, Registration, RegistrationEvent, SidecarGate,
};

/// How long a SQLite connection waits for another writer before giving up with "database is
/// locked". Writes are short transactions, so a few seconds is plenty.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections per pool. SQLite serializes writers anyway; readers run in parallel under WAL.
const MAX_CONNECTIONS: u32 = 10;
/// How long an operation waits for a free pooled connection.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);
/// The file name of the embedded SQLite database inside the data directory.
pub const SQLITE_FILE_NAME: &str = "meshd.db";

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// What went wrong in the store. Messages name the value that was wrong.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "unsupported database URL {url}: expected sqlite://<path>[?mode=rwc] or postgres://..."
    )]
    UnsupportedUrl { url: String },

    #[error("cannot open database {url}: {error}")]
    Open { url: String, error: sqlx::Error },

    #[error("cannot create directory {path} for database {url}: {error}")]
    CreateDir {
        path: String,
        url: String,
        error: std::io::Error,
    },

    #[error("cannot migrate database {url}: {error}")]
    Migrate {
        url: String,
        error: sqlx::migrate::MigrateError,
    },

    #[error("document {kind} {namespace}/{name} not found")]
    DocumentNotFound {
        kind: String,
        namespace: String,
        name: String,
    },

    #[error("revision {revision} of {kind} {namespace}/{name} not found")]
    RevisionNotFound {
        revision: i64,
        kind: String,
        namespace: String,
        name: String,
    },

    #[error("join token {id} not found")]
    JoinTokenNotFound { id: String },

    /// A unique key is taken (e.g. a certificate serial or join token id recorded twice).
    #[error("{what} already exists")]
    Conflict { what: String },

    /// A stored value the store cannot read back (e.g. a label map that is not JSON).
    #[error("invalid stored data in {what}: {detail}")]
    Corrupt { what: String, detail: String },

    #[error("database error while {op}: {error}")]
    Database { op: String, error: sqlx::Error },
}

impl StoreError {
    /// True for the "does not exist" errors (maps to HTTP 404 / gRPC `NotFound`).
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            Self::DocumentNotFound { .. }
                | Self::RevisionNotFound { .. }
                | Self::JoinTokenNotFound { .. }
        )
    }

    /// True when a unique key was already taken (maps to HTTP 409 / gRPC `AlreadyExists`).
    pub fn is_conflict(&self) -> bool {
        matches!(self, Self::Conflict { .. })
    }

    fn database(op: impl Into<String>, error: sqlx::Error) -> Self {
        Self::Database {
            op: op.into(),
            error,
        }
    }

    /// Turns a unique violation into [`StoreError::Conflict`], anything else into `Database`.
    fn conflict_or_database(what: impl Into<String>, op: &str, error: sqlx::Error) -> Self {
        let unique = error
            .as_database_error()
            .is_some_and(|e| e.is_unique_violation());
        if unique {
            Self::Conflict { what: what.into() }
        } else {
            Self::database(op, error)
        }
    }
}

/// Which database a [`Store`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Clone)]
pub(crate) enum DbPool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// The storage layer. Cheap to clone: clones share one connection pool.
#[derive(Clone)]
pub struct Store {
    pool: DbPool,
    /// The URL it was opened with, password removed, for messages.
    url: String,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend())
            .field("url", &self.url)
            .finish()
    }
}

// === impl Store ===

impl Store {
    /// The URL of the embedded default: `meshd.db` in `data_dir`, created if missing.
    pub fn default_sqlite_url(data_dir: &Path) -> String {
        format!(
            "sqlite://{}?mode=rwc",
            data_dir.join(SQLITE_FILE_NAME).display()
        )
    }

    /// Opens the database at `url` and brings its schema up to date.
    ///
    /// - `sqlite://<path>[?mode=rwc]` (or `sqlite:<path>`): the file is created if missing
    ///   (unless the URL asks for another `mode`), with its parent directory; WAL journal,
    ///   foreign keys on, a busy timeout so concurrent writers wait instead of failing.
    /// - `postgres://...` / `postgresql://...`: a pool over that database. Concurrent
    ///   migrations from several replicas are serialized by sqlx with an advisory lock.
    pub async fn open(url: &str) -> Result<Self> {
        let shown = redact_url(url);
        let pool = if url.starts_with("sqlite:") {
            DbPool::Sqlite(open_sqlite(url, &shown).await?)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            DbPool::Postgres(open_postgres(url, &shown).await?)
        } else {
            return Err(StoreError::UnsupportedUrl { url: shown });
        };
        let store = Self { pool, url: shown };
        store.migrate().await?;
        tracing::info!(url = %store.url, backend = ?store.backend(), "store opened");
        Ok(store)
    }

    async fn migrate(&self) -> Result<()> {
        let result = match &self.pool {
            DbPool::Sqlite(pool) => sqlx::migrate!("migrations/sqlite").run(pool).await,
            DbPool::Postgres(pool) => sqlx::migrate!("migrations/postgres").run(pool).await,
        };
        result.map_err(|error| StoreError::Migrate {
            url: self.url.clone(),
            error,
        })
    }

    pub fn backend(&self) -> Backend {
        match self.pool {
            DbPool::Sqlite(_) => Backend::Sqlite,
            DbPool::Postgres(_) => Backend::Postgres,
        }
    }

    /// The URL the store was opened with, without its password.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Health check: one round trip to the database.
    pub async fn ping(&self) -> Result<()> {
        with_pool!(self, pool => {
            sqlx::query("SELECT 1")
                .execute(pool)
                .await
                .map(|_| ())
                .map_err(|e| StoreError::database(format!("pinging {}", self.url), e))
        })
    }

    /// Closes every connection of the pool (of all clones); later calls fail.
    pub async fn close(&self) {
        with_pool!(self, pool => pool.close().await)
    }
}

async fn open_sqlite(url: &str, shown: &str) -> Result<SqlitePool> {
    let open_err = |error| StoreError::Open {
        url: shown.to_owned(),
        error,
    };
    let mut options = SqliteConnectOptions::from_str(url).map_err(open_err)?;
    // "Create it if missing" unless the operator chose a mode (e.g. `mode=ro`) in the URL.
    if !url.contains("mode=") {
        options = options.create_if_missing(true);
    }
    let options = options
        .journal_mode(SqliteJournalMode::Wal)
        // With WAL, NORMAL never corrupts the database; a power loss may lose the last
        // transactions (sqlx's default FULL syncs on every commit, the CA's hot path).
        .synchronous(sqlx::sqlite::SqliteSynchronous::Normal)
        .foreign_keys(true)
        .busy_timeout(SQLITE_BUSY_TIMEOUT);

    let file = options.get_filename();
    // In-memory databases have a bare name, hence no parent to create.
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|error| StoreError::CreateDir {
                path: dir.display().to_string(),
                url: shown.to_owned(),
                error,
            })?;
    }

    SqlitePoolOptions::new()
        .max_connections(MAX_CONNECTIONS)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_with(options)
        .await
        .map_err(open_err)
}

async fn open_postgres(url: &str, shown: &str) -> Result<PgPool> {
    let open_err = |error| StoreError::Open {
        url: shown.to_owned(),
        error,
    };
    let options = PgConnectOptions::from_str(url)
        .map_err(open_err)?
        .application_name("meshd");
    // The pool retries refused connections until its acquire timeout and then reports only
    // "pool timed out"; one direct attempt first gives the operator the real reason at once.
    PgConnection::connect_with(&options)
        .await
        .map_err(open_err)?
        .close()
        .await
        .ok();
    PgPoolOptions::new()
        .max_connections(MAX_CONNECTIONS)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_with(options)
        .await
        .map_err(open_err)
}

/// `postgres://user:secret@host/db` → `postgres://user:***@host/db`, so that URLs can be shown in
/// errors and logs.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let Some((userinfo, host)) = authority.rsplit_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:***@{host}{tail}"),
        None => url.to_owned(),
    }
}

/// Now, in unix seconds (0 if the clock is before 1970).
fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords_only() {
        assert_eq!(
            redact_url("postgres://meshd:s3cr@t@db:5432/mesh?sslmode=require"),
            "postgres://meshd:***@db:5432/mesh?sslmode=require"
        );
        assert_eq!(
            redact_url("postgres://meshd@db/mesh"),
            "postgres://meshd@db/mesh"
        );
        assert_eq!(
            redact_url("sqlite:///var/lib/meshd/meshd.db?mode=rwc"),
            "sqlite:///var/lib/meshd/meshd.db?mode=rwc"
        );
    }

    #[test]
    fn errors_name_the_value() {
        let err = StoreError::RevisionNotFound {
            revision: 7,
            kind: "HTTPRoute".into(),
            namespace: "default".into(),
            name: "r".into(),
        };
        assert_eq!(
            err.to_string(),
            "revision 7 of HTTPRoute default/r not found"
        );
        assert!(err.is_not_found());
    }
}
