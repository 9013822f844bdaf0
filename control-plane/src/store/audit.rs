//! The audit log: who did what to which target, and whether it was allowed.

use super::{Result, Store, StoreError, now_unix};

/// Shared by [`Store::audit`] and the document writes, which add their audit row inside their
/// own transaction. Binds: at, actor, action, target, outcome, detail; returns the new id.
pub(super) const INSERT_AUDIT: &str = "INSERT INTO audit_log (at, actor, action, target, outcome, detail) \
     VALUES ($1, $2, $3, $4, $5, $6) RETURNING id";

/// How an audited action ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditOutcome {
    Ok,
    Denied,
    Error,
}

impl AuditOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Denied => "denied",
            Self::Error => "error",
        }
    }

    fn parse(s: &str) -> Result<Self> {
        match s {
            "ok" => Ok(Self::Ok),
            "denied" => Ok(Self::Denied),
            "error" => Ok(Self::Error),
            other => Err(StoreError::Corrupt {
                what: "audit_log.outcome".into(),
                detail: format!("unknown outcome {other:?}"),
            }),
        }
    }
}

impl std::fmt::Display for AuditOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An entry to append to the audit log. Never put secrets in `detail`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// Who: an admin token's name, a SPIFFE ID, `system`.
    pub actor: String,
    /// What, as `<area>.<verb>`: `document.apply`, `join_token.create`, `ca.rotate`.
    pub action: String,
    /// On what: `HTTPRoute default/r`, a join token id, a SPIFFE ID.
    pub target: String,
    pub outcome: AuditOutcome,
    pub detail: String,
}

/// A stored audit entry.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AuditRecord {
    /// Grows with every entry; use it as `since_id` to page or tail.
    pub id: i64,
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub outcome: AuditOutcome,
    pub detail: String,
}

#[derive(sqlx::FromRow)]
struct AuditRow {
    id: i64,
    at: i64,
    actor: String,
    action: String,
    target: String,
    outcome: String,
    detail: String,
}

impl AuditRow {
    fn into_record(self) -> Result<AuditRecord> {
        Ok(AuditRecord {
            outcome: AuditOutcome::parse(&self.outcome)?,
            id: self.id,
            at: self.at,
            actor: self.actor,
            action: self.action,
            target: self.target,
            detail: self.detail,
        })
    }
}

// === impl Store ===

impl Store {
    /// Appends an entry, stamped with the current time; returns its id.
    pub async fn audit(&self, entry: &AuditEntry) -> Result<i64> {
        with_pool!(self, pool => {
            sqlx::query_scalar(INSERT_AUDIT)
                .bind(now_unix())
                .bind(entry.actor.as_str())
                .bind(entry.action.as_str())
                .bind(entry.target.as_str())
                .bind(entry.outcome.as_str())
                .bind(entry.detail.as_str())
                .fetch_one(pool)
                .await
        })
        .map_err(|e| {
            StoreError::database(
                format!("writing audit entry {} {}", entry.action, entry.target),
                e,
            )
        })
    }

    /// The newest `limit` entries with an id greater than `since_id` (all if `None`),
    /// **newest first**.
    pub async fn list_audit(&self, limit: u32, since_id: Option<i64>) -> Result<Vec<AuditRecord>> {
        let rows: Vec<AuditRow> = with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT id, at, actor, action, target, outcome, detail FROM audit_log \
                 WHERE id > $1 ORDER BY id DESC LIMIT $2",
            )
            .bind(since_id.unwrap_or(0))
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await
        })
        .map_err(|e| StoreError::database("listing the audit log", e))?;
        rows.into_iter().map(AuditRow::into_record).collect()
    }
}
