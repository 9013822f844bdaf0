//! Config documents and their revision history.
//!
//! A document is identified by (kind, namespace, name) and holds its body (JSON or YAML text,
//! opaque to the store) and labels. Every create, update and delete appends a row to
//! `document_history` under the next global revision, and writes an audit row, in the same
//! transaction as the change itself.

use std::collections::BTreeMap;

use super::audit::{AuditOutcome, INSERT_AUDIT};
use super::{Result, Store, StoreError, now_unix};

/// Labels of a document. A `BTreeMap` so that its JSON form is canonical (sorted keys), which
/// makes "same labels" a plain string comparison.
pub type Labels = BTreeMap<String, String>;

/// A document as it is now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub body: String,
    pub labels: Labels,
    /// The revision of the last change to this document.
    pub revision: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

/// The result of [`Store::apply_document`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApplyOutcome {
    /// The document's revision after the apply (the new one if `changed`, else the current one).
    pub revision: i64,
    /// False when the stored document was already identical: no revision was created.
    pub changed: bool,
}

/// What a history entry did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevisionOp {
    Create,
    Update,
    Delete,
}

impl RevisionOp {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Update => "update",
            Self::Delete => "delete",
        }
    }

    fn parse(s: &str) -> Result<Self> {
        match s {
            "create" => Ok(Self::Create),
            "update" => Ok(Self::Update),
            "delete" => Ok(Self::Delete),
            other => Err(StoreError::Corrupt {
                what: "document_history.op".into(),
                detail: format!("unknown operation {other:?}"),
            }),
        }
    }
}

impl std::fmt::Display for RevisionOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One entry of a document's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revision {
    pub revision: i64,
    pub op: RevisionOp,
    /// The body after the change; `None` for a delete.
    pub body: Option<String>,
    /// The labels after the change; empty for a delete.
    pub labels: Labels,
    pub actor: String,
    pub at: i64,
}

#[derive(sqlx::FromRow)]
struct DocumentRow {
    kind: String,
    namespace: String,
    name: String,
    body: String,
    labels: String,
    revision: i64,
    created_at: i64,
    updated_at: i64,
}

impl DocumentRow {
    fn into_document(self) -> Result<Document> {
        Ok(Document {
            labels: parse_labels(&self.labels, &self.kind, &self.namespace, &self.name)?,
            kind: self.kind,
            namespace: self.namespace,
            name: self.name,
            body: self.body,
            revision: self.revision,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

#[derive(sqlx::FromRow)]
struct RevisionRow {
    revision: i64,
    op: String,
    body: Option<String>,
    labels: Option<String>,
    actor: String,
    at: i64,
}

impl RevisionRow {
    fn into_revision(self, kind: &str, ns: &str, name: &str) -> Result<Revision> {
        let labels = match &self.labels {
            Some(json) => parse_labels(json, kind, ns, name)?,
            None => Labels::new(),
        };
        Ok(Revision {
            revision: self.revision,
            op: RevisionOp::parse(&self.op)?,
            body: self.body,
            labels,
            actor: self.actor,
            at: self.at,
        })
    }
}

fn parse_labels(json: &str, kind: &str, ns: &str, name: &str) -> Result<Labels> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt {
        what: format!("labels of {kind} {ns}/{name}"),
        detail: e.to_string(),
    })
}

fn labels_json(labels: &Labels) -> Result<String> {
    serde_json::to_string(labels).map_err(|e| StoreError::Corrupt {
        what: "labels".into(),
        detail: e.to_string(),
    })
}

/// Takes the next revision. As the first write of a transaction it also serializes writers
/// (row lock on PostgreSQL, the write lock on SQLite): see the module docs of `store`.
const NEXT_REVISION: &str =
    "UPDATE revision_counter SET value = value + 1 WHERE id = 1 RETURNING value";

const SELECT_DOCUMENT: &str = "SELECT kind, namespace, name, body, labels, revision, created_at, updated_at \
     FROM documents WHERE kind = $1 AND namespace = $2 AND name = $3";

const INSERT_HISTORY: &str = "INSERT INTO document_history \
     (revision, kind, namespace, name, op, body, labels, actor, at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";

// === impl Store ===

impl Store {
    /// Creates or replaces a document (with no labels). See [`Store::apply_document_with_labels`].
    pub async fn apply_document(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
        body: &str,
        actor: &str,
    ) -> Result<ApplyOutcome> {
        self.apply_document_with_labels(kind, namespace, name, body, &Labels::new(), actor)
            .await
    }

    /// Creates or replaces a document. Idempotent: if the stored body and labels are already
    /// identical, nothing is written and `changed` is false. Otherwise the document, a history
    /// row under a new revision and an audit row are written in one transaction.
    pub async fn apply_document_with_labels(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
        body: &str,
        labels: &Labels,
        actor: &str,
    ) -> Result<ApplyOutcome> {
        let target = format!("{kind} {namespace}/{name}");
        let op_name = format!("applying {target}");
        let err = |e| StoreError::database(op_name.as_str(), e);
        let labels = labels_json(labels)?;
        let now = now_unix();

        let revision = with_pool!(self, pool => {
            let mut tx = pool.begin().await.map_err(err)?;
            let revision: i64 = sqlx::query_scalar(NEXT_REVISION)
                .fetch_one(&mut *tx)
                .await
                .map_err(err)?;
            let current: Option<(String, String, i64)> = sqlx::query_as(
                "SELECT body, labels, revision FROM documents \
                 WHERE kind = $1 AND namespace = $2 AND name = $3",
            )
            .bind(kind)
            .bind(namespace)
            .bind(name)
            .fetch_optional(&mut *tx)
            .await
            .map_err(err)?;

            let op = match &current {
                Some((old_body, old_labels, old_revision))
                    if old_body == body && *old_labels == labels =>
                {
                    // Gives the revision number back: the counter update is undone too.
                    tx.rollback().await.map_err(err)?;
                    return Ok(ApplyOutcome { revision: *old_revision, changed: false });
                }
                Some(_) => RevisionOp::Update,
                None => RevisionOp::Create,
            };

            sqlx::query(INSERT_HISTORY)
                .bind(revision)
                .bind(kind)
                .bind(namespace)
                .bind(name)
                .bind(op.as_str())
                .bind(Some(body))
                .bind(Some(labels.as_str()))
                .bind(actor)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(err)?;
            sqlx::query(
                "INSERT INTO documents \
                 (kind, namespace, name, body, labels, revision, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $7) \
                 ON CONFLICT (kind, namespace, name) DO UPDATE SET \
                 body = excluded.body, labels = excluded.labels, \
                 revision = excluded.revision, updated_at = excluded.updated_at",
            )
            .bind(kind)
            .bind(namespace)
            .bind(name)
            .bind(body)
            .bind(labels.as_str())
            .bind(revision)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(err)?;
            sqlx::query(INSERT_AUDIT)
                .bind(now)
                .bind(actor)
                .bind("document.apply")
                .bind(target.as_str())
                .bind(AuditOutcome::Ok.as_str())
                .bind(format!("revision {revision} ({op})"))
                .execute(&mut *tx)
                .await
                .map_err(err)?;
            tx.commit().await.map_err(err)?;
            revision
        });

        tracing::debug!(%kind, %namespace, %name, revision, "document applied");
        Ok(ApplyOutcome {
            revision,
            changed: true,
        })
    }

    /// The latest revision taken by any change (0 before the first). Revisions commit in
    /// increasing order (see the module doc of `store`), so a reader that saw every change up
    /// to this number and reads again when it grows misses nothing.
    pub async fn latest_revision(&self) -> Result<i64> {
        with_pool!(self, pool => {
            sqlx::query_scalar("SELECT value FROM revision_counter WHERE id = 1")
                .fetch_one(pool)
                .await
        })
        .map_err(|e| StoreError::database("reading the latest revision", e))
    }

    /// The document as it is now, or [`StoreError::DocumentNotFound`].
    pub async fn get_document(&self, kind: &str, namespace: &str, name: &str) -> Result<Document> {
        let row: Option<DocumentRow> = with_pool!(self, pool => {
            sqlx::query_as(SELECT_DOCUMENT)
                .bind(kind)
                .bind(namespace)
                .bind(name)
                .fetch_optional(pool)
                .await
        })
        .map_err(|e| StoreError::database(format!("reading {kind} {namespace}/{name}"), e))?;
        row.ok_or_else(|| not_found(kind, namespace, name))?
            .into_document()
    }

    /// All documents, optionally of one kind and/or in one namespace, ordered by kind,
    /// namespace, name.
    pub async fn list_documents(
        &self,
        kind: Option<&str>,
        namespace: Option<&str>,
    ) -> Result<Vec<Document>> {
        let rows: Vec<DocumentRow> = with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT kind, namespace, name, body, labels, revision, created_at, updated_at \
                 FROM documents \
                 WHERE ($1 IS NULL OR kind = $1) AND ($2 IS NULL OR namespace = $2) \
                 ORDER BY kind, namespace, name",
            )
            .bind(kind)
            .bind(namespace)
            .fetch_all(pool)
            .await
        })
        .map_err(|e| StoreError::database("listing documents", e))?;
        rows.into_iter().map(DocumentRow::into_document).collect()
    }

    /// Deletes a document; its history stays. Returns the revision of the delete, or
    /// [`StoreError::DocumentNotFound`] (and writes nothing) if there is no such document.
    pub async fn delete_document(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
        actor: &str,
    ) -> Result<i64> {
        let target = format!("{kind} {namespace}/{name}");
        let op_name = format!("deleting {target}");
        let err = |e| StoreError::database(op_name.as_str(), e);
        let now = now_unix();

        let revision = with_pool!(self, pool => {
            let mut tx = pool.begin().await.map_err(err)?;
            let revision: i64 = sqlx::query_scalar(NEXT_REVISION)
                .fetch_one(&mut *tx)
                .await
                .map_err(err)?;
            let deleted = sqlx::query(
                "DELETE FROM documents WHERE kind = $1 AND namespace = $2 AND name = $3",
            )
            .bind(kind)
            .bind(namespace)
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(err)?;
            if deleted.rows_affected() == 0 {
                tx.rollback().await.map_err(err)?;
                return Err(not_found(kind, namespace, name));
            }
            sqlx::query(INSERT_HISTORY)
                .bind(revision)
                .bind(kind)
                .bind(namespace)
                .bind(name)
                .bind(RevisionOp::Delete.as_str())
                .bind(None::<&str>)
                .bind(None::<&str>)
                .bind(actor)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(err)?;
            sqlx::query(INSERT_AUDIT)
                .bind(now)
                .bind(actor)
                .bind("document.delete")
                .bind(target.as_str())
                .bind(AuditOutcome::Ok.as_str())
                .bind(format!("revision {revision} (delete)"))
                .execute(&mut *tx)
                .await
                .map_err(err)?;
            tx.commit().await.map_err(err)?;
            revision
        });

        tracing::debug!(%kind, %namespace, %name, revision, "document deleted");
        Ok(revision)
    }

    /// Every change of a document, oldest first, including those from before it was deleted
    /// (and re-created). [`StoreError::DocumentNotFound`] if it never existed.
    pub async fn history(&self, kind: &str, namespace: &str, name: &str) -> Result<Vec<Revision>> {
        let rows: Vec<RevisionRow> = with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT revision, op, body, labels, actor, at FROM document_history \
                 WHERE kind = $1 AND namespace = $2 AND name = $3 ORDER BY revision",
            )
            .bind(kind)
            .bind(namespace)
            .bind(name)
            .fetch_all(pool)
            .await
        })
        .map_err(|e| {
            StoreError::database(format!("reading history of {kind} {namespace}/{name}"), e)
        })?;
        if rows.is_empty() {
            return Err(not_found(kind, namespace, name));
        }
        rows.into_iter()
            .map(|row| row.into_revision(kind, namespace, name))
            .collect()
    }

    /// The document as it was at global revision `revision`: its latest change at or before
    /// that revision (so any revision listed by [`Store::history`] gives exactly that entry).
    /// [`StoreError::RevisionNotFound`] if the document did not exist then (not created yet,
    /// or deleted).
    pub async fn document_at_revision(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
        revision: i64,
    ) -> Result<Revision> {
        let row: Option<RevisionRow> = with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT revision, op, body, labels, actor, at FROM document_history \
                 WHERE kind = $1 AND namespace = $2 AND name = $3 AND revision <= $4 \
                 ORDER BY revision DESC LIMIT 1",
            )
            .bind(kind)
            .bind(namespace)
            .bind(name)
            .bind(revision)
            .fetch_optional(pool)
            .await
        })
        .map_err(|e| {
            StoreError::database(
                format!("reading revision {revision} of {kind} {namespace}/{name}"),
                e,
            )
        })?;
        let found = row
            .map(|row| row.into_revision(kind, namespace, name))
            .transpose()?
            .filter(|r| r.op != RevisionOp::Delete);
        found.ok_or_else(|| StoreError::RevisionNotFound {
            revision,
            kind: kind.to_owned(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
    }

    /// The highest revision in the store, 0 if nothing was ever written.
    pub async fn current_revision(&self) -> Result<i64> {
        with_pool!(self, pool => {
            sqlx::query_scalar("SELECT COALESCE(MAX(revision), 0) FROM document_history")
                .fetch_one(pool)
                .await
        })
        .map_err(|e| StoreError::database("reading the current revision", e))
    }
}

fn not_found(kind: &str, namespace: &str, name: &str) -> StoreError {
    StoreError::DocumentNotFound {
        kind: kind.to_owned(),
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    }
}
