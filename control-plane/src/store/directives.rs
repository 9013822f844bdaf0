//! Forced re-issue directives (`reissue_directives`): stored as JSON, opaque to the store.

use super::{Result, Store, StoreError};

impl Store {
    /// Stores a directive (JSON) under its generation; storing the same generation again is a
    /// no-op.
    pub async fn record_directive(
        &self,
        generation: u64,
        directive_json: &str,
        reissue_before: i64,
    ) -> Result<()> {
        let generation = i64::try_from(generation).map_err(|_| StoreError::Corrupt {
            what: "a re-issue directive".into(),
            detail: format!("generation {generation} does not fit a BIGINT"),
        })?;
        with_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO reissue_directives (generation, directive, reissue_before) \
                 VALUES ($1, $2, $3) ON CONFLICT (generation) DO NOTHING",
            )
            .bind(generation)
            .bind(directive_json)
            .bind(reissue_before)
            .execute(pool)
            .await
            .map(|_| ())
        })
        .map_err(|e| StoreError::database("recording a re-issue directive", e))?;
        Ok(())
    }

    /// The directives (JSON) whose window ends at or after `since` (unix seconds), oldest first.
    pub async fn directives_since(&self, since: i64) -> Result<Vec<String>> {
        let rows: Vec<(String,)> = with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT directive FROM reissue_directives WHERE reissue_before >= $1 \
                 ORDER BY generation",
            )
            .bind(since)
            .fetch_all(pool)
            .await
        })
        .map_err(|e| StoreError::database("reading re-issue directives", e))?;
        Ok(rows.into_iter().map(|(d,)| d).collect())
    }
}
