//! The CA's persistent state: one row (`ca_state`, `id = 1`), replaced as a whole by one
//! upsert statement, so a reader never sees half of a rotation step.

use super::{Result, Store, StoreError};

/// Everything the CA needs to resume after a restart. Key blobs are stored exactly as given:
/// they must already be encrypted with the key-encryption key (the store never sees a
/// plaintext key, and `Debug` prints only their length).
#[derive(Clone, PartialEq, Eq)]
pub struct CaStateRecord {
    /// The active signing key, encrypted.
    pub signing_key: Vec<u8>,
    /// The active signing certificate chain, PEM, leaf-most first.
    pub cert_chain_pem: String,
    /// The trust bundle: every root sidecars must trust (two during a rotation), PEM each.
    pub roots_pem: Vec<String>,
    /// The rotation state machine's phase, e.g. `idle`.
    pub rotation_phase: String,
    /// The rotation state machine's data as JSON, opaque to the store.
    pub rotation_data: String,
    /// The next signing key during a rotation, encrypted.
    pub pending_key: Option<Vec<u8>>,
    /// The previous signing key, kept for rollback, encrypted.
    pub previous_key: Option<Vec<u8>>,
    /// Unix seconds.
    pub updated_at: i64,
    /// Set by the store: grows with every write (ignored when writing). A replica that
    /// changes the state names the version it read ([`Store::replace_ca_state`]).
    pub version: i64,
}

impl std::fmt::Debug for CaStateRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let blob = |b: &Option<Vec<u8>>| b.as_ref().map(|b| format!("<{} bytes>", b.len()));
        f.debug_struct("CaStateRecord")
            .field(
                "signing_key",
                &format_args!("<{} bytes>", self.signing_key.len()),
            )
            .field("cert_chain_pem", &self.cert_chain_pem)
            .field("roots_pem", &self.roots_pem)
            .field("rotation_phase", &self.rotation_phase)
            .field("rotation_data", &self.rotation_data)
            .field("pending_key", &blob(&self.pending_key))
            .field("previous_key", &blob(&self.previous_key))
            .field("updated_at", &self.updated_at)
            .field("version", &self.version)
            .finish()
    }
}

#[derive(sqlx::FromRow)]
struct CaStateRow {
    signing_key: Vec<u8>,
    cert_chain_pem: String,
    roots_pem: String,
    rotation_phase: String,
    rotation_data: String,
    pending_key: Option<Vec<u8>>,
    previous_key: Option<Vec<u8>>,
    updated_at: i64,
    version: i64,
}

/// The columns written, `$1`…`$8` in the order of [`bind_record`]. Literal SQL (macros, so that
/// `concat!` builds `&'static str` statements).
macro_rules! columns {
    () => {
        "signing_key, cert_chain_pem, roots_pem, rotation_phase, rotation_data, pending_key, \
         previous_key, updated_at"
    };
}
macro_rules! set_columns {
    () => {
        "signing_key = $1, cert_chain_pem = $2, roots_pem = $3, rotation_phase = $4, \
         rotation_data = $5, pending_key = $6, previous_key = $7, updated_at = $8"
    };
}

/// Binds a record's columns in the order of `columns!()`.
macro_rules! bind_record {
    ($query:expr, $state:expr, $roots:expr) => {
        $query
            .bind($state.signing_key.as_slice())
            .bind($state.cert_chain_pem.as_str())
            .bind($roots)
            .bind($state.rotation_phase.as_str())
            .bind($state.rotation_data.as_str())
            .bind($state.pending_key.as_deref())
            .bind($state.previous_key.as_deref())
            .bind($state.updated_at)
    };
}

/// The roots as a JSON array of PEM strings: no PEM parsing needed to split them again.
fn roots_json(state: &CaStateRecord) -> Result<String> {
    serde_json::to_string(&state.roots_pem).map_err(|e| StoreError::Corrupt {
        what: "ca_state.roots_pem".into(),
        detail: e.to_string(),
    })
}

// === impl Store ===

impl Store {
    /// Writes the CA state whatever is stored (one statement), taking the next version.
    pub async fn save_ca_state(&self, state: &CaStateRecord) -> Result<()> {
        let roots = roots_json(state)?;
        const SQL: &str = concat!(
            "INSERT INTO ca_state (id, ",
            columns!(),
            ", version) VALUES (1, $1, $2, $3, $4, $5, $6, $7, $8, 1) ON CONFLICT (id) DO UPDATE SET ",
            set_columns!(),
            ", version = ca_state.version + 1"
        );
        with_pool!(self, pool => {
            bind_record!(sqlx::query(SQL), state, roots.as_str())
                .execute(pool)
                .await
                .map(|_| ())
        })
        .map_err(|e| StoreError::database("saving the CA state", e))
    }

    /// Stores the CA state of a first start, unless one is stored already (another replica
    /// started first): then `false`, and nothing was written.
    pub async fn create_ca_state(&self, state: &CaStateRecord) -> Result<bool> {
        let roots = roots_json(state)?;
        const SQL: &str = concat!(
            "INSERT INTO ca_state (id, ",
            columns!(),
            ", version) VALUES (1, $1, $2, $3, $4, $5, $6, $7, $8, 1) ON CONFLICT (id) DO NOTHING"
        );
        with_pool!(self, pool => {
            bind_record!(sqlx::query(SQL), state, roots.as_str())
                .execute(pool)
                .await
                .map(|r| r.rows_affected() == 1)
        })
        .map_err(|e| StoreError::database("creating the CA state", e))
    }

    /// Replaces the CA state if it is still at version `read` (compare-and-swap, one
    /// statement): the new version, or `None` when another writer changed it meanwhile.
    pub async fn replace_ca_state(&self, state: &CaStateRecord, read: i64) -> Result<Option<i64>> {
        let roots = roots_json(state)?;
        const SQL: &str = concat!(
            "UPDATE ca_state SET ",
            set_columns!(),
            ", version = version + 1 WHERE id = 1 AND version = $9 RETURNING version"
        );
        with_pool!(self, pool => {
            bind_record!(sqlx::query_scalar(SQL), state, roots.as_str())
                .bind(read)
                .fetch_optional(pool)
                .await
        })
        .map_err(|e| StoreError::database("replacing the CA state", e))
    }

    /// The CA state, or `None` before the CA was first initialized.
    pub async fn load_ca_state(&self) -> Result<Option<CaStateRecord>> {
        let row: Option<CaStateRow> = with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT signing_key, cert_chain_pem, roots_pem, rotation_phase, rotation_data, \
                 pending_key, previous_key, updated_at, version FROM ca_state WHERE id = 1",
            )
            .fetch_optional(pool)
            .await
        })
        .map_err(|e| StoreError::database("loading the CA state", e))?;
        let Some(row) = row else { return Ok(None) };
        let roots_pem = serde_json::from_str(&row.roots_pem).map_err(|e| StoreError::Corrupt {
            what: "ca_state.roots_pem".into(),
            detail: e.to_string(),
        })?;
        Ok(Some(CaStateRecord {
            signing_key: row.signing_key,
            cert_chain_pem: row.cert_chain_pem,
            roots_pem,
            rotation_phase: row.rotation_phase,
            rotation_data: row.rotation_data,
            pending_key: row.pending_key,
            previous_key: row.previous_key,
            updated_at: row.updated_at,
            version: row.version,
        }))
    }
}
