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
}

// === impl Store ===

impl Store {
    /// Replaces the CA state, atomically (one statement).
    pub async fn save_ca_state(&self, state: &CaStateRecord) -> Result<()> {
        // The roots as a JSON array of PEM strings: no PEM parsing needed to split them again.
        let roots = serde_json::to_string(&state.roots_pem).map_err(|e| StoreError::Corrupt {
            what: "ca_state.roots_pem".into(),
            detail: e.to_string(),
        })?;
        with_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO ca_state (id, signing_key, cert_chain_pem, roots_pem, rotation_phase, \
                 rotation_data, pending_key, previous_key, updated_at) \
                 VALUES (1, $1, $2, $3, $4, $5, $6, $7, $8) \
                 ON CONFLICT (id) DO UPDATE SET \
                 signing_key = excluded.signing_key, cert_chain_pem = excluded.cert_chain_pem, \
                 roots_pem = excluded.roots_pem, rotation_phase = excluded.rotation_phase, \
                 rotation_data = excluded.rotation_data, pending_key = excluded.pending_key, \
                 previous_key = excluded.previous_key, updated_at = excluded.updated_at",
            )
            .bind(state.signing_key.as_slice())
            .bind(state.cert_chain_pem.as_str())
            .bind(roots.as_str())
            .bind(state.rotation_phase.as_str())
            .bind(state.rotation_data.as_str())
            .bind(state.pending_key.as_deref())
            .bind(state.previous_key.as_deref())
            .bind(state.updated_at)
            .execute(pool)
            .await
            .map(|_| ())
        })
        .map_err(|e| StoreError::database("saving the CA state", e))?;
        Ok(())
    }

    /// The CA state, or `None` before the CA was first initialized.
    pub async fn load_ca_state(&self) -> Result<Option<CaStateRecord>> {
        let row: Option<CaStateRow> = with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT signing_key, cert_chain_pem, roots_pem, rotation_phase, rotation_data, \
                 pending_key, previous_key, updated_at FROM ca_state WHERE id = 1",
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
        }))
    }
}
