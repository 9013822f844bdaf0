//! Sources of configuration → the one validated model. Documents come from the admin API (and
//! `meshctl apply`), from `--config-dir`, and later from Kubernetes; each change is validated
//! against the whole current set, stored with its revision, and published as a new immutable
//! [`Mesh`] that the discovery server watches.

use crate::model::{Document, Mesh, MeshOptions};
use crate::store::Store;
use anyhow::Context;
use std::sync::Arc;
use tokio::sync::watch;

/// The current model and the way to change it. Cheap to clone.
#[derive(Clone)]
pub struct Documents {
    store: Store,
    mesh: Arc<watch::Sender<Arc<Mesh>>>,
    /// Serializes changes: each one is validated against the model it replaces.
    write: Arc<tokio::sync::Mutex<()>>,
}

// === impl Documents ===

impl Documents {
    /// Loads every stored document and builds the model. A stored set that no longer validates
    /// (e.g. after an upgrade made a check stricter) is an error that names each problem.
    pub async fn load(store: Store, options: MeshOptions) -> anyhow::Result<Self> {
        let stored = store.list_documents(None, None).await.context("reading stored documents")?;
        let mut docs = Vec::with_capacity(stored.len());
        for d in &stored {
            let doc = Document::parse_json(&d.body).map_err(|e| {
                anyhow::anyhow!("stored {} {}/{} no longer validates: {e}", d.kind, d.namespace, d.name)
            })?;
            docs.push(doc);
        }
        let mesh = Mesh::build_with(options, docs)
            .map_err(|e| anyhow::anyhow!("the stored documents no longer validate as a set:\n{e}"))?;
        let (tx, _) = watch::channel(Arc::new(mesh));
        Ok(Self { store, mesh: Arc::new(tx), write: Arc::new(tokio::sync::Mutex::new(())) })
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
}
