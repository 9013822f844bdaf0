//! Readiness (discovery.proto, section 6): ready once a certificate is held and every type's
//! first response was ACKed. Until then the inbound listener accepts no traffic, so that no
//! request is served without its authorization policies (fail closed).

use crate::identity::Identity;
use mesh_proto::ResourceType;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

pub struct Readiness {
    identity: Arc<Identity>,
    acked: [AtomicBool; ResourceType::ALL.len()],
    /// Latched once ready: a later lost control plane never makes the sidecar unready.
    ready: AtomicBool,
}

fn index(ty: ResourceType) -> usize {
    ResourceType::ALL
        .iter()
        .position(|t| *t == ty)
        .unwrap_or_default()
}

impl Readiness {
    pub fn new(identity: Arc<Identity>) -> Arc<Self> {
        Arc::new(Self {
            identity,
            acked: Default::default(),
            ready: AtomicBool::new(false),
        })
    }

    /// A response of `ty` was ACKed (or restored from the state directory).
    pub fn acked(&self, ty: ResourceType) {
        self.acked[index(ty)].store(true, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        if self.ready.load(Ordering::Relaxed) {
            return true;
        }
        let ready = self.pending().is_empty();
        if ready {
            self.ready.store(true, Ordering::Relaxed);
        }
        ready
    }

    /// Completes once the sidecar is ready (checked every 50 ms: a handful of atomic loads).
    pub async fn wait(&self) {
        while !self.is_ready() {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// What readiness still waits for.
    pub fn pending(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if !self.identity.has_cert() {
            out.push("certificate");
        }
        for ty in ResourceType::ALL {
            if !self.acked[index(ty)].load(Ordering::Relaxed) {
                out.push(ty.name());
            }
        }
        out
    }
}
