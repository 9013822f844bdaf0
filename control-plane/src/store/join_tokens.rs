//! Join tokens: how a workload outside Kubernetes proves its identity for its first
//! certificate. Only a hash of each token is stored; the caller hashes, the store never sees the
//! secret. Consuming a token is one conditional `UPDATE`, so a token with N uses admits at most
//! N callers however many race for it.

use super::{Result, Store, StoreError, now_unix};

/// A join token to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinTokenRecord {
    /// The public, short id (shown by `meshctl`, used to revoke).
    pub id: String,
    /// Hex SHA-256 of the secret token (stored lowercase).
    pub token_hash: String,
    /// The SPIFFE ID the token lets its bearer obtain.
    pub identity: String,
    /// Unix seconds; the token is refused from this instant on.
    pub expires_at: i64,
    pub uses_remaining: u32,
    pub created_by: String,
}

/// A stored join token, as listed. Its hash is deliberately left out: nothing outside the store
/// needs it, and a hash of a short secret is worth protecting too.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct JoinToken {
    pub id: String,
    pub identity: String,
    pub expires_at: i64,
    pub uses_remaining: u32,
    pub created_by: String,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
    pub last_used_at: Option<i64>,
}

/// The result of [`Store::consume_join_token`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsumeOutcome {
    /// One use was taken; the bearer may be issued a certificate for `identity`.
    Accepted { id: String, identity: String },
    /// No token has this hash.
    Unknown,
    /// The token expired.
    Expired,
    /// The token has no uses left.
    UsedUp,
    /// The token was revoked.
    Revoked,
}

#[derive(sqlx::FromRow)]
struct JoinTokenRow {
    id: String,
    identity: String,
    expires_at: i64,
    uses_remaining: i64,
    created_by: String,
    created_at: i64,
    revoked_at: Option<i64>,
    last_used_at: Option<i64>,
}

// === impl Store ===

impl Store {
    /// Stores a new join token (by its hash). [`StoreError::Conflict`] if the id or the hash
    /// is taken.
    pub async fn create_join_token(&self, token: &JoinTokenRecord) -> Result<()> {
        let hash = token.token_hash.to_ascii_lowercase();
        with_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO join_tokens \
                 (id, token_hash, identity, expires_at, uses_remaining, created_by, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(token.id.as_str())
            .bind(hash.as_str())
            .bind(token.identity.as_str())
            .bind(token.expires_at)
            .bind(i64::from(token.uses_remaining))
            .bind(token.created_by.as_str())
            .bind(now_unix())
            .execute(pool)
            .await
            .map(|_| ())
        })
        .map_err(|e| {
            StoreError::conflict_or_database(
                format!("join token {}", token.id),
                "creating a join token",
                e,
            )
        })?;
        Ok(())
    }

    /// Every join token (including expired, used-up and revoked ones), newest first.
    pub async fn list_join_tokens(&self) -> Result<Vec<JoinToken>> {
        let rows: Vec<JoinTokenRow> = with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT id, identity, expires_at, uses_remaining, created_by, created_at, \
                 revoked_at, last_used_at FROM join_tokens ORDER BY created_at DESC, id",
            )
            .fetch_all(pool)
            .await
        })
        .map_err(|e| StoreError::database("listing join tokens", e))?;
        Ok(rows
            .into_iter()
            .map(|row| JoinToken {
                uses_remaining: u32::try_from(row.uses_remaining).unwrap_or(0),
                id: row.id,
                identity: row.identity,
                expires_at: row.expires_at,
                created_by: row.created_by,
                created_at: row.created_at,
                revoked_at: row.revoked_at,
                last_used_at: row.last_used_at,
            })
            .collect())
    }

    /// Revokes a token: it is refused from now on. Revoking twice is not an error (the first
    /// revocation time is kept). [`StoreError::JoinTokenNotFound`] if there is no such id.
    pub async fn revoke_join_token(&self, id: &str) -> Result<()> {
        let revoked = with_pool!(self, pool => {
            sqlx::query(
                "UPDATE join_tokens SET revoked_at = COALESCE(revoked_at, $2) WHERE id = $1",
            )
            .bind(id)
            .bind(now_unix())
            .execute(pool)
            .await
            .map(|r| r.rows_affected())
        })
        .map_err(|e| StoreError::database(format!("revoking join token {id}"), e))?;
        if revoked == 0 {
            return Err(StoreError::JoinTokenNotFound { id: id.to_owned() });
        }
        Ok(())
    }

    /// Takes one use of the token whose hash is `token_hash`, if it is valid at `now`.
    ///
    /// The check and the decrement are one statement (`UPDATE ... WHERE uses_remaining > 0 AND
    /// ... RETURNING`), so concurrent consumers cannot overspend a token: PostgreSQL re-checks
    /// the `WHERE` on the row after waiting for a concurrent update, and SQLite runs one writer
    /// at a time. Only when no use was taken does a second read find out why.
    pub async fn consume_join_token(&self, token_hash: &str, now: i64) -> Result<ConsumeOutcome> {
        let hash = token_hash.to_ascii_lowercase();
        let err = |e| StoreError::database("consuming a join token", e);
        let taken: Option<(String, String)> = with_pool!(self, pool => {
            sqlx::query_as(
                "UPDATE join_tokens SET uses_remaining = uses_remaining - 1, last_used_at = $2 \
                 WHERE token_hash = $1 AND revoked_at IS NULL AND expires_at > $2 \
                 AND uses_remaining > 0 \
                 RETURNING id, identity",
            )
            .bind(hash.as_str())
            .bind(now)
            .fetch_optional(pool)
            .await
        })
        .map_err(err)?;
        if let Some((id, identity)) = taken {
            return Ok(ConsumeOutcome::Accepted { id, identity });
        }

        let state: Option<(Option<i64>, i64, i64)> = with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT revoked_at, expires_at, uses_remaining FROM join_tokens \
                 WHERE token_hash = $1",
            )
            .bind(hash.as_str())
            .fetch_optional(pool)
            .await
        })
        .map_err(err)?;
        Ok(match state {
            None => ConsumeOutcome::Unknown,
            Some((Some(_), _, _)) => ConsumeOutcome::Revoked,
            Some((None, expires_at, _)) if expires_at <= now => ConsumeOutcome::Expired,
            // Whatever else: the token is spent (its last use may have been taken between the
            // two statements).
            Some(_) => ConsumeOutcome::UsedUp,
        })
    }
}
