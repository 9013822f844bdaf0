//! Sources of configuration → the one validated model. Documents come from the admin API (and
//! `meshctl apply`), from `--config-dir`, and later from Kubernetes; each change is validated
//! against the whole current set, stored with its revision, and published as a new immutable
//! [`Mesh`] that the discovery server watches.
//!
//! - [`Documents`]: the current model and every way to change it (apply, delete, rollback),
//!   serialized by one lock so that each change is validated against the model it replaces.
//! - [`config_dir`]: `--config-dir`, a directory polled for `*.yaml` / `*.yml` / `*.json`.
//! - `diff`: the line diff that a dry run shows.

pub mod config_dir;
mod diff;

use crate::model::{Document, DocumentKey, Kind, Mesh, MeshOptions, ModelErrors};
use crate::store::{Backend, Revision, RevisionOp, Store, StoreError};
use anyhow::Context;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use tokio::sync::watch;

pub use config_dir::ConfigDirWatcher;

/// What an apply did to one document (kubectl's words).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// It did not exist: stored under a new revision.
    Created,
    /// It existed with another body: stored under a new revision.
    Configured,
    /// It existed with exactly this body: nothing written, no new revision.
    Unchanged,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Configured => "configured",
            Self::Unchanged => "unchanged",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One document of an apply, after it was stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub key: DocumentKey,
    /// The document's revision now: the new one, or (unchanged) the one it already had.
    pub revision: i64,
    pub outcome: Outcome,
}

/// One document of a dry run: what [`Documents::apply`] would do with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub key: DocumentKey,
    pub outcome: Outcome,
    /// The revision stored now (`None` when it would be created).
    pub revision: Option<i64>,
    /// A unified diff of the canonical YAML, stored → applied (`None` when unchanged).
    pub diff: Option<String>,
}

/// A delete that happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deleted {
    pub key: DocumentKey,
    /// The revision of the delete.
    pub revision: i64,
}

/// Why a change was refused. Nothing was stored, except as [`ApplyError::Store`] says.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// A document is invalid, alone or together with the rest of the model (HTTP 400). One
    /// error per line: `HTTPRoute default/reviews: spec.rules[0].backends[1].weight: ...`.
    #[error("{0}")]
    Invalid(ModelErrors),
    /// No such document or revision (HTTP 404).
    #[error("{0}")]
    NotFound(String),
    /// The change contradicts the current state: a delete of something still referenced, a
    /// rollback to a delete (HTTP 409).
    #[error("{0}")]
    Conflict(String),
    /// The store failed (HTTP 503). `stored` lists the documents of the batch that were stored
    /// before the failure (the store writes one document per transaction).
    #[error("{error}{}", partial_note(stored))]
    Store {
        error: StoreError,
        stored: Vec<DocumentKey>,
    },
}

fn partial_note(stored: &[DocumentKey]) -> String {
    if stored.is_empty() {
        return String::new();
    }
    let keys: Vec<String> = stored.iter().map(ToString::to_string).collect();
    format!(
        " (stored before the failure: {}; apply again to finish)",
        keys.join(", ")
    )
}

impl From<StoreError> for ApplyError {
    fn from(e: StoreError) -> Self {
        if e.is_not_found() {
            Self::NotFound(e.to_string())
        } else if e.is_conflict() {
            Self::Conflict(e.to_string())
        } else {
            Self::Store {
                error: e,
                stored: Vec::new(),
            }
        }
    }
}

/// The current model and the way to change it. Cheap to clone.
///
/// With several replicas on one PostgreSQL, a change applied on another replica reaches this
/// one through [`Documents::follow_store`]: the model is rebuilt from the store whenever the
/// store's latest revision passed the one the model reflects.
#[derive(Clone)]
pub struct Documents {
    store: Store,
    mesh: Arc<watch::Sender<Arc<Mesh>>>,
    /// Serializes changes: each one is validated against the model it replaces.
    write: Arc<tokio::sync::Mutex<()>>,
    /// The model reflects every stored change up to this revision (revisions commit in
    /// increasing order, so nothing below it can still appear).
    seen: Arc<AtomicI64>,
}

/// How often the store's latest revision is checked without a notification (a safety net for
/// a lost one).
const RESYNC: std::time::Duration = std::time::Duration::from_secs(5);

// === impl Documents ===

impl Documents {
    /// Loads every stored document and builds the model. A stored set that no longer validates
    /// (e.g. after an upgrade made a check stricter) is an error that names each problem.
    pub async fn load(store: Store, options: MeshOptions) -> anyhow::Result<Self> {
        // Read first: a change committed while the documents are read is read again later.
        let seen = store.latest_revision().await?;
        let mesh = build_from_store(&store, options).await?;
        let (tx, _) = watch::channel(Arc::new(mesh));
        Ok(Self {
            store,
            mesh: Arc::new(tx),
            write: Arc::new(tokio::sync::Mutex::new(())),
            seen: Arc::new(AtomicI64::new(seen)),
        })
    }

    /// Follows changes other replicas make (PostgreSQL): on every notification of `changes`,
    /// and every [`RESYNC`] in case one was lost, the model is rebuilt if the store moved on.
    /// With SQLite there is one replica and nothing to follow.
    pub fn follow_store(&self, mut changes: watch::Receiver<u64>) {
        if self.store.backend() == Backend::Sqlite {
            return;
        }
        let documents = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    changed = changes.changed() => if changed.is_err() { return },
                    _ = tokio::time::sleep(RESYNC) => {}
                }
                let _write = documents.write.lock().await;
                documents.catch_up().await;
            }
        });
    }

    /// Rebuilds the model from the store if another replica stored a change this model does
    /// not reflect yet. Callers hold the write lock.
    async fn catch_up(&self) {
        if self.store.backend() == Backend::Sqlite {
            return;
        }
        match self.store.latest_revision().await {
            Ok(latest) if latest > self.seen.load(Ordering::SeqCst) => {
                tracing::info!(revision = latest, "documents changed on another replica");
                self.reload().await;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "reading the latest revision"),
        }
    }

    /// Notes that this replica stored `revision`: the model (about to be published) reflects it
    /// if it directly follows what the model reflected; otherwise another replica's change lies
    /// between, and the next [`Documents::catch_up`] reads it.
    fn stored(&self, revision: i64) {
        let _ =
            self.seen
                .compare_exchange(revision - 1, revision, Ordering::SeqCst, Ordering::SeqCst);
    }

    /// The current model.
    pub fn current(&self) -> Arc<Mesh> {
        self.mesh.borrow().clone()
    }

    /// Notified with every new model.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Mesh>> {
        self.mesh.subscribe()
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Publishes `mesh` as the current model (callers hold the write lock).
    fn publish(&self, mesh: Mesh) {
        self.mesh.send_replace(Arc::new(mesh));
    }

    /// Applies `docs` as one change: all of them are validated together with the rest of the
    /// current model, and only if the whole set is valid is each one stored and the new model
    /// published. An identical re-apply stores nothing (the body is the canonical JSON, so
    /// formatting, key order and comments do not count as changes). Results are in the order
    /// of `docs`. The store writes the audit rows.
    pub async fn apply(
        &self,
        docs: Vec<Document>,
        actor: &str,
    ) -> Result<Vec<Applied>, ApplyError> {
        let _write = self.write.lock().await;
        // One replica at a time validates and stores (the others wait), against everything the
        // others stored before.
        let _replicas = self.store.document_write_lock().await?;
        self.catch_up().await;
        let current = self.current();
        let next = current
            .with_documents(docs.clone())
            .map_err(ApplyError::Invalid)?;

        // Services first, then routes, then policies (the order of `Kind`): should the store
        // fail half-way, what was stored refers only to what exists.
        let mut order: Vec<usize> = (0..docs.len()).collect();
        order.sort_by_key(|&i| docs[i].kind());
        let mut results: Vec<Option<Applied>> = vec![None; docs.len()];
        let mut stored = Vec::new();
        for i in order {
            let doc = &docs[i];
            let key = doc.key();
            let written = self
                .store
                .apply_document_with_labels(
                    doc.kind().as_str(),
                    doc.namespace(),
                    doc.name(),
                    &doc.canonical_json(),
                    &doc.metadata().labels,
                    actor,
                )
                .await;
            let written = match written {
                Ok(w) => w,
                Err(error) => {
                    if !stored.is_empty() {
                        self.reload().await;
                    }
                    return Err(ApplyError::Store { error, stored });
                }
            };
            let outcome = if !written.changed {
                Outcome::Unchanged
            } else if current.document(&key).is_some() {
                Outcome::Configured
            } else {
                Outcome::Created
            };
            if written.changed {
                self.stored(written.revision);
                stored.push(key.clone());
                tracing::info!(document = %key, revision = written.revision, %outcome, %actor, "document applied");
            }
            results[i] = Some(Applied {
                key,
                revision: written.revision,
                outcome,
            });
        }
        if !stored.is_empty() {
            self.publish(next);
        }
        Ok(results.into_iter().flatten().collect())
    }

    /// What [`Documents::apply`] would do with `docs`, without storing anything: the same
    /// validation, then per document created / configured (with a diff) / unchanged.
    pub async fn plan(&self, docs: Vec<Document>) -> Result<Vec<Planned>, ApplyError> {
        self.current()
            .with_documents(docs.clone())
            .map_err(ApplyError::Invalid)?;
        let mut planned = Vec::with_capacity(docs.len());
        for doc in docs {
            let key = doc.key();
            let new_yaml = doc.to_yaml();
            let stored = match self
                .store
                .get_document(key.kind.as_str(), &key.namespace, &key.name)
                .await
            {
                Ok(stored) => Some(stored),
                Err(e) if e.is_not_found() => None,
                Err(e) => return Err(e.into()),
            };
            let plan = match stored {
                None => Planned {
                    diff: Some(diff::unified(
                        "/dev/null",
                        &format!("{key} (applied)"),
                        "",
                        &new_yaml,
                    )),
                    key,
                    outcome: Outcome::Created,
                    revision: None,
                },
                Some(s) if s.body == doc.canonical_json() && s.labels == doc.metadata().labels => {
                    Planned {
                        key,
                        outcome: Outcome::Unchanged,
                        revision: Some(s.revision),
                        diff: None,
                    }
                }
                Some(s) => {
                    // A stored body is canonical JSON; show it as the same canonical YAML.
                    let old_yaml = Document::parse_json(&s.body)
                        .map(|d| d.to_yaml())
                        .unwrap_or(s.body);
                    Planned {
                        diff: Some(diff::unified(
                            &format!("{key} (revision {})", s.revision),
                            &format!("{key} (applied)"),
                            &old_yaml,
                            &new_yaml,
                        )),
                        key,
                        outcome: Outcome::Configured,
                        revision: Some(s.revision),
                    }
                }
            };
            planned.push(plan);
        }
        Ok(planned)
    }

    /// Deletes one document if the rest of the model stays valid without it (a Service that a
    /// route still sends to cannot go: [`ApplyError::Conflict`] names what refers to it).
    pub async fn delete(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        actor: &str,
    ) -> Result<Deleted, ApplyError> {
        let _write = self.write.lock().await;
        let _replicas = self.store.document_write_lock().await?;
        self.catch_up().await;
        let key = DocumentKey {
            kind,
            namespace: namespace.to_string(),
            name: name.to_string(),
        };
        let next = self
            .current()
            .without(kind, namespace, name)
            .map_err(|errors| {
                ApplyError::Conflict(format!(
                    "cannot delete {key}: it is still referenced; change or delete these first:\n{errors}"
                ))
            })?;
        let revision = self
            .store
            .delete_document(kind.as_str(), namespace, name, actor)
            .await?;
        tracing::info!(document = %key, revision, %actor, "document deleted");
        self.stored(revision);
        self.publish(next);
        Ok(Deleted { key, revision })
    }

    /// Every change of a document, oldest first (also from before a delete).
    pub async fn history(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
    ) -> Result<Vec<Revision>, ApplyError> {
        Ok(self.store.history(kind.as_str(), namespace, name).await?)
    }

    /// Re-applies the body the document had at `revision` (one of its own revisions, see
    /// [`Documents::history`]), validated like any apply; a real change gets a new revision.
    /// Rolling back to a revision that deleted the document is a [`ApplyError::Conflict`]:
    /// there is no body to restore (delete it again with a delete).
    pub async fn rollback(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        revision: i64,
        actor: &str,
    ) -> Result<Applied, ApplyError> {
        let key = DocumentKey {
            kind,
            namespace: namespace.to_string(),
            name: name.to_string(),
        };
        let history = self.history(kind, namespace, name).await?;
        let listed = |keep: fn(&Revision) -> bool| {
            history
                .iter()
                .filter(|r| keep(r))
                .map(|r| r.revision.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let Some(entry) = history.iter().find(|r| r.revision == revision) else {
            return Err(ApplyError::NotFound(format!(
                "{key} has no revision {revision} (its revisions: {})",
                listed(|_| true)
            )));
        };
        let body = match (&entry.op, &entry.body) {
            (RevisionOp::Delete, _) | (_, None) => {
                return Err(ApplyError::Conflict(format!(
                    "revision {revision} of {key} is its deletion; there is no body to roll back to \
                     (delete it again with `meshctl delete`, or roll back to one of revisions {})",
                    listed(|r| r.op != RevisionOp::Delete)
                )));
            }
            (_, Some(body)) => body,
        };
        let doc = Document::parse_json(body).map_err(ApplyError::Invalid)?;
        if doc.key() != key {
            return Err(ApplyError::Conflict(format!(
                "revision {revision} of {key} holds {}, not this document",
                doc.key()
            )));
        }
        let mut applied = self.apply(vec![doc], actor).await?;
        applied.pop().ok_or_else(|| {
            ApplyError::NotFound(format!("revision {revision} of {key} applied nothing"))
        })
    }

    /// Rebuilds the model from the store and publishes it (after a batch was stored in part,
    /// or another replica stored a change). Callers hold the write lock.
    async fn reload(&self) {
        let options = self.current().options().clone();
        let latest = match self.store.latest_revision().await {
            Ok(latest) => latest,
            Err(e) => {
                tracing::error!(error = %e, "reading the latest revision; the model stays as it is");
                return;
            }
        };
        match build_from_store(&self.store, options).await {
            Ok(mesh) => {
                self.seen.fetch_max(latest, Ordering::SeqCst);
                self.publish(mesh)
            }
            Err(e) => tracing::error!(
                error = format!("{e:#}"),
                "the stored documents do not build a model; the previous model stays in effect"
            ),
        }
    }
}

async fn build_from_store(store: &Store, options: MeshOptions) -> anyhow::Result<Mesh> {
    let stored = store
        .list_documents(None, None)
        .await
        .context("reading stored documents")?;
    let mut docs = Vec::with_capacity(stored.len());
    for d in &stored {
        let doc = Document::parse_json(&d.body).map_err(|e| {
            anyhow::anyhow!(
                "stored {} {}/{} no longer validates: {e}",
                d.kind,
                d.namespace,
                d.name
            )
        })?;
        docs.push(doc);
    }
    Mesh::build_with(options, docs)
        .map_err(|e| anyhow::anyhow!("the stored documents no longer validate as a set:\n{e}"))
}
