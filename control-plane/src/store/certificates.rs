//! Certificates the CA issued: what it signed for whom, and until when. The CA rotation reads
//! it to know when no live certificate chains to an old issuer any more.

use super::{Result, Store, StoreError};

/// One issued certificate. Hex values are stored lowercase, whatever case they are given in.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize)]
pub struct IssuedCert {
    /// The certificate's serial number, hex.
    pub serial_hex: String,
    /// The SPIFFE ID in its URI SAN.
    pub identity: String,
    /// Fingerprint (hex) of the certificate of the CA that signed it.
    pub issuer_fingerprint: String,
    /// Validity, unix seconds, both ends inclusive (as in X.509).
    pub not_before: i64,
    pub not_after: i64,
    /// The sidecar it was issued to, when known.
    pub sidecar: Option<String>,
    /// When its holder renewed with it (unix seconds): from then on it is no longer in use.
    #[sqlx(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub superseded_at: Option<i64>,
}

/// One signature's records, for [`Store::record_issues`].
#[derive(Debug, Clone)]
pub struct IssueRecord {
    pub cert: IssuedCert,
    /// The serial of the certificate its holder presented to renew (now superseded).
    pub renewed_with: Option<String>,
    pub audit: super::AuditEntry,
}

/// Writes a batch in one transaction: the same text for both backends, begun by `$begin`.
macro_rules! write_batch {
    ($db:ty, $begin:expr, $batch:expr, $at:expr) => {
        async {
            // Three statements for the whole batch, not three per record: on SQLite every
            // statement is a hand-off to the connection's thread, and those hand-offs, not
            // SQLite, were most of the CA's cost per signature (see BENCHMARKS.md).
            let mut tx = $begin.await?;
            let mut certs = sqlx::QueryBuilder::<$db>::new(
                "INSERT INTO issued_certificates \
                 (issuer_fingerprint, serial_hex, identity, not_before, not_after, sidecar) ",
            );
            certs.push_values($batch, |mut b, r| {
                b.push_bind(r.cert.issuer_fingerprint.to_ascii_lowercase())
                    .push_bind(r.cert.serial_hex.to_ascii_lowercase())
                    .push_bind(r.cert.identity.as_str())
                    .push_bind(r.cert.not_before)
                    .push_bind(r.cert.not_after)
                    .push_bind(r.cert.sidecar.as_deref());
            });
            certs.build().execute(&mut *tx).await?;
            let renewals: Vec<(String, &str)> = $batch
                .iter()
                .filter_map(|r| {
                    let old = r.renewed_with.as_ref()?;
                    Some((old.to_ascii_lowercase(), r.cert.identity.as_str()))
                })
                .collect();
            if !renewals.is_empty() {
                let mut update = sqlx::QueryBuilder::<$db>::new(
                    "UPDATE issued_certificates SET superseded_at = ",
                );
                update
                    .push_bind($at)
                    .push(" WHERE superseded_at IS NULL AND (");
                for (i, (serial, identity)) in renewals.iter().enumerate() {
                    if i > 0 {
                        update.push(" OR ");
                    }
                    update
                        .push("(serial_hex = ")
                        .push_bind(serial.as_str())
                        .push(" AND identity = ")
                        .push_bind(*identity)
                        .push(")");
                }
                update.push(")");
                update.build().execute(&mut *tx).await?;
            }
            let mut audit = sqlx::QueryBuilder::<$db>::new(
                "INSERT INTO audit_log (at, actor, action, target, outcome, detail) ",
            );
            audit.push_values($batch, |mut b, r| {
                b.push_bind($at)
                    .push_bind(r.audit.actor.as_str())
                    .push_bind(r.audit.action.as_str())
                    .push_bind(r.audit.target.as_str())
                    .push_bind(r.audit.outcome.as_str())
                    .push_bind(r.audit.detail.as_str());
            });
            audit.build().execute(&mut *tx).await?;
            tx.commit().await
        }
        .await
    };
}

const INSERT_CERTIFICATE: &str = "INSERT INTO issued_certificates \
     (issuer_fingerprint, serial_hex, identity, not_before, not_after, sidecar) \
     VALUES ($1, $2, $3, $4, $5, $6)";
// === impl Store ===

impl Store {
    /// Records an issued certificate. [`StoreError::Conflict`] if the issuer already has a
    /// certificate with that serial.
    pub async fn record_certificate(&self, cert: &IssuedCert) -> Result<()> {
        let serial = cert.serial_hex.to_ascii_lowercase();
        let issuer = cert.issuer_fingerprint.to_ascii_lowercase();
        with_pool!(self, pool => {
            sqlx::query(INSERT_CERTIFICATE)
            .bind(issuer.as_str())
            .bind(serial.as_str())
            .bind(cert.identity.as_str())
            .bind(cert.not_before)
            .bind(cert.not_after)
            .bind(cert.sidecar.as_deref())
            .execute(pool)
            .await
            .map(|_| ())
        })
        .map_err(|e| {
            StoreError::conflict_or_database(
                format!("certificate with serial {serial} from issuer {issuer}"),
                "recording a certificate",
                e,
            )
        })?;
        Ok(())
    }

    /// Issued certificates, optionally only those valid at `valid_at` (unix seconds) and/or
    /// issued to `identity`; ordered by expiry.
    pub async fn list_certificates(
        &self,
        valid_at: Option<i64>,
        identity: Option<&str>,
    ) -> Result<Vec<IssuedCert>> {
        with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT serial_hex, identity, issuer_fingerprint, not_before, not_after, sidecar, \
                 superseded_at FROM issued_certificates \
                 WHERE ($1 IS NULL OR (not_before <= $1 AND not_after >= $1)) \
                 AND ($2 IS NULL OR identity = $2) \
                 ORDER BY not_after, issuer_fingerprint, serial_hex",
            )
            .bind(valid_at)
            .bind(identity)
            .fetch_all(pool)
            .await
        })
        .map_err(|e| StoreError::database("listing certificates", e))
    }

    /// For each issuer, how many of its certificates are in use at `now`: not expired
    /// (including ones whose validity starts later) and not superseded by a renewal. Ordered by
    /// issuer fingerprint; issuers with no live certificate are absent.
    pub async fn live_certificates_by_issuer(&self, now: i64) -> Result<Vec<(String, u64)>> {
        let rows: Vec<(String, i64)> = with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT issuer_fingerprint, COUNT(*) FROM issued_certificates \
                 WHERE not_after >= $1 AND superseded_at IS NULL \
                 GROUP BY issuer_fingerprint ORDER BY issuer_fingerprint",
            )
            .bind(now)
            .fetch_all(pool)
            .await
        })
        .map_err(|e| StoreError::database("counting live certificates", e))?;
        Ok(rows
            .into_iter()
            .map(|(issuer, count)| (issuer, u64::try_from(count).unwrap_or(0)))
            .collect())
    }

    /// Records a batch of signatures in one transaction (one commit for all: group commit).
    /// On SQLite the transaction takes the write lock at once (`BEGIN IMMEDIATE`), so it never
    /// holds a read lock it must upgrade while other writers wait. All or nothing.
    pub async fn record_issues(&self, batch: &[IssueRecord]) -> Result<()> {
        let at = super::now_unix();
        let result = match &self.pool {
            super::DbPool::Sqlite(pool) => {
                write_batch!(sqlx::Sqlite, pool.begin_with("BEGIN IMMEDIATE"), batch, at)
            }
            super::DbPool::Postgres(pool) => write_batch!(sqlx::Postgres, pool.begin(), batch, at),
        };
        result.map_err(|e| {
            StoreError::conflict_or_database(
                format!("one of {} certificates", batch.len()),
                "recording issued certificates",
                e,
            )
        })
    }

    /// Certificates of `issuer` still in use as far as the CA knows: not expired at `now` and
    /// not superseded by a renewal. Returns the count and up to `sample` of their identities.
    pub async fn certificates_in_use(
        &self,
        issuer: &str,
        now: i64,
        sample: u32,
    ) -> Result<(u64, Vec<String>)> {
        let issuer = issuer.to_ascii_lowercase();
        let (count, identities): (i64, Vec<(String,)>) = with_pool!(self, pool => {
            async {
                let count: (i64,) = sqlx::query_as(
                    "SELECT COUNT(*) FROM issued_certificates \
                     WHERE issuer_fingerprint = $1 AND not_after >= $2 AND superseded_at IS NULL",
                )
                .bind(issuer.as_str())
                .bind(now)
                .fetch_one(pool)
                .await?;
                let identities = sqlx::query_as(
                    "SELECT DISTINCT identity FROM issued_certificates \
                     WHERE issuer_fingerprint = $1 AND not_after >= $2 AND superseded_at IS NULL \
                     ORDER BY identity LIMIT $3",
                )
                .bind(issuer.as_str())
                .bind(now)
                .bind(i64::from(sample))
                .fetch_all(pool)
                .await?;
                Ok::<_, sqlx::Error>((count.0, identities))
            }.await
        })
        .map_err(|e| StoreError::database("counting certificates in use", e))?;
        Ok((
            u64::try_from(count).unwrap_or(0),
            identities.into_iter().map(|(i,)| i).collect(),
        ))
    }

    /// Forgets certificates that expired before `expired_before`; returns how many. Keeps the
    /// table from growing forever with short-lived certificates.
    pub async fn prune_certificates(&self, expired_before: i64) -> Result<u64> {
        with_pool!(self, pool => {
            sqlx::query("DELETE FROM issued_certificates WHERE not_after < $1")
                .bind(expired_before)
                .execute(pool)
                .await
                .map(|r| r.rows_affected())
        })
        .map_err(|e| StoreError::database("pruning expired certificates", e))
    }
}
