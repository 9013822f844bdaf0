//! The fleet registry: which sidecars have a stream to this replica, each one's status (what it
//! was sent, ACKed and NACKed per type, its TLS report), and the endpoints it and the sidecars
//! of other replicas serve. The session ([`super::session`]) writes it; everything else reads it
//! through a [`FleetView`], the read-only handle the admin API holds.

use super::snapshot::Snapshot;
use super::stream::{StreamState, SyncState, TypeStatus};
use super::view::{LiveEndpoint, ScopeKey};
use super::{Xds, read, write};
use crate::metrics::Metrics;
use crate::model::Mesh;
use crate::reissue::Directive;
use crate::store::{Registration, RegistrationEvent};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;
use tokio::sync::{Notify, watch};

/// One connected sidecar and one line of its TLS report, as the admin API shows them.
pub use mesh_admin_api::{NegotiatedTls, SidecarStatus};

/// A registered stream: what [`Registry::register`] hands its session.
pub struct Registered {
    pub generation: u64,
    /// Notified when a newer stream from the same sidecar id replaced this one.
    pub replaced: Arc<Notify>,
    /// Tells the stream its scope changed (a percentage rollout now includes it, or not).
    pub rescoped: watch::Receiver<ScopeKey>,
}

struct Entry {
    status: SidecarStatus,
    scope: ScopeKey,
    rescoped: watch::Sender<ScopeKey>,
    generation: u64,
    replaced: Arc<Notify>,
}

/// The sidecars of this replica, and the endpoints known from elsewhere.
pub(super) struct Registry {
    sidecars: RwLock<BTreeMap<String, Entry>>,
    /// Sidecars known from the store as connected before this meshd started, served as
    /// endpoints until they reconnect or the warm-up ends ([`Xds::remember`]).
    remembered: RwLock<BTreeMap<String, LiveEndpoint>>,
    /// Sidecars whose streams are on other replicas (from the store), served as endpoints
    /// ([`Xds::set_remote`]).
    remote: RwLock<BTreeMap<String, LiveEndpoint>>,
    /// Where streams that open and close are reported, to be recorded in the store.
    reporter: std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<RegistrationEvent>>,
    next_generation: AtomicU64,
    replica: String,
    metrics: Metrics,
}

// === impl Registry ===

impl Registry {
    pub fn new(replica: &str, metrics: Metrics) -> Self {
        Self {
            sidecars: RwLock::default(),
            remembered: RwLock::default(),
            remote: RwLock::default(),
            reporter: std::sync::OnceLock::new(),
            next_generation: AtomicU64::new(1),
            replica: replica.to_string(),
            metrics,
        }
    }

    pub fn replica(&self) -> &str {
        &self.replica
    }

    pub fn record_registrations(&self, tx: tokio::sync::mpsc::UnboundedSender<RegistrationEvent>) {
        let _ = self.reporter.set(tx);
    }

    fn report(&self, event: RegistrationEvent) {
        if let Some(tx) = self.reporter.get() {
            let _ = tx.send(event);
        }
    }

    /// Adds a stream (ending an older one of the same sidecar id).
    pub fn register(&self, status: SidecarStatus, scope: ScopeKey) -> Registered {
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        let replaced = Arc::new(Notify::new());
        let id = status.id.clone();
        write(&self.remembered).remove(&id);
        self.report(RegistrationEvent::Connected(Registration {
            id: id.clone(),
            namespace: status.namespace.clone(),
            service: status.service.clone(),
            labels: serde_json::to_string(&status.labels).unwrap_or_else(|_| "{}".into()),
            inbound_address: status.inbound_address.clone(),
            identity: status.identity.clone(),
            connected_at: status.connected_at,
            disconnected_at: None,
            replica: self.replica.clone(),
        }));
        let (rescoped, rescoped_rx) = watch::channel(scope.clone());
        let old = write(&self.sidecars).insert(
            id,
            Entry {
                status,
                scope,
                rescoped,
                generation,
                replaced: replaced.clone(),
            },
        );
        match old {
            Some(old) => old.replaced.notify_one(),
            None => self.metrics.sidecar_connected(),
        }
        Registered {
            generation,
            replaced,
            rescoped: rescoped_rx,
        }
    }

    /// Removes the stream `generation` of `id` (not a newer one); whether it was there.
    pub fn deregister(&self, id: &str, generation: u64) -> bool {
        let mut sidecars = write(&self.sidecars);
        if sidecars.get(id).is_none_or(|e| e.generation != generation) {
            return false;
        }
        sidecars.remove(id);
        drop(sidecars);
        self.report(RegistrationEvent::Disconnected {
            id: id.to_string(),
            replica: self.replica.clone(),
            at: super::now(),
        });
        self.metrics.sidecar_disconnected();
        true
    }

    /// Records what the stream `generation` of `id` was sent and answered.
    pub fn update_status(&self, id: &str, generation: u64, state: &StreamState) {
        let mut sidecars = write(&self.sidecars);
        let Some(e) = sidecars.get_mut(id).filter(|e| e.generation == generation) else {
            return;
        };
        let before = held_bundle(&e.status.types).map(str::to_owned);
        state.write_status(&mut e.status.types, false);
        e.status.last_seen = super::now();
        let after = held_bundle(&e.status.types).map(str::to_owned);
        drop(sidecars);
        // Recorded in the store for the CA rotation's gates, which count every replica's
        // sidecars: only when it changes, not with every ACK.
        if let Some(version) = after.filter(|a| before.as_ref() != Some(a)) {
            self.report(RegistrationEvent::BundleAcked {
                id: id.to_string(),
                replica: self.replica.clone(),
                version,
            });
        }
    }

    /// The TLS report of the sidecar `id` of `identity`; false when no such stream is here.
    pub fn set_tls(&self, id: &str, identity: &str, tls: Vec<NegotiatedTls>) -> bool {
        let mut sidecars = write(&self.sidecars);
        let Some(entry) = sidecars
            .get_mut(id)
            .filter(|e| e.status.identity == identity)
        else {
            return false;
        };
        entry.status.tls = tls;
        entry.status.last_seen = super::now();
        true
    }

    /// Moves each sidecar whose percentage rollouts changed with the model to its new scope.
    pub fn rescope(&self, mesh: &Mesh) {
        let mut sidecars = write(&self.sidecars);
        for (id, e) in sidecars.iter_mut() {
            let s = &e.status;
            let key = ScopeKey::of(mesh, id, &s.namespace, &s.service, &s.labels);
            if key != e.scope {
                e.scope = key.clone();
                e.rescoped.send_replace(key);
            }
        }
    }

    pub fn scope_of(&self, id: &str) -> Option<ScopeKey> {
        read(&self.sidecars).get(id).map(|e| e.scope.clone())
    }

    /// Every connected sidecar; with `pending` (a change waits for its push), SYNCED shows as
    /// STALE.
    pub fn sidecars(&self, pending: bool) -> Vec<SidecarStatus> {
        read(&self.sidecars)
            .values()
            .map(|e| {
                let mut s = e.status.clone();
                if pending {
                    for t in &mut s.types {
                        if t.state == SyncState::Synced {
                            t.state = SyncState::Stale;
                        }
                    }
                }
                s
            })
            .collect()
    }

    /// How many sidecars of the scopes in `wanted` have not ACKed the version of `type_url`
    /// wanted for their scope.
    pub fn not_acked(&self, wanted: &HashMap<ScopeKey, String>, type_url: &str) -> usize {
        read(&self.sidecars)
            .values()
            .filter(|e| {
                wanted.get(&e.scope).is_some_and(|v| {
                    !e.status
                        .types
                        .iter()
                        .any(|t| t.type_url == type_url && &t.acked_version == v)
                })
            })
            .count()
    }

    /// What every scope's clusters are built from: this replica's sidecars, then the other
    /// replicas' and those known before a restart, each once.
    pub fn endpoints(&self) -> Vec<LiveEndpoint> {
        let sidecars = read(&self.sidecars);
        let mut out: Vec<LiveEndpoint> = sidecars
            .values()
            .filter(|e| !e.status.service.is_empty())
            .map(|e| LiveEndpoint {
                namespace: e.status.namespace.clone(),
                service: e.status.service.clone(),
                labels: e.status.labels.clone(),
                address: e.status.inbound_address.clone(),
                identity: e.status.identity.clone(),
            })
            .collect();
        let remembered = read(&self.remembered);
        let remote = read(&self.remote);
        let mut seen: HashSet<&String> = sidecars.keys().collect();
        out.extend(
            remote
                .iter()
                .chain(remembered.iter())
                .filter(|(id, _)| seen.insert(*id))
                .map(|(_, e)| e.clone()),
        );
        out
    }

    pub fn set_remembered(&self, endpoints: BTreeMap<String, LiveEndpoint>) {
        *write(&self.remembered) = endpoints;
    }

    /// Ends the warm-up: how many remembered sidecars never reconnected.
    pub fn forget_remembered(&self) -> usize {
        std::mem::take(&mut *write(&self.remembered)).len()
    }

    /// Whether `endpoints` differ from the remote ones held (then they replace them).
    pub fn set_remote(&self, endpoints: BTreeMap<String, LiveEndpoint>) -> bool {
        let mut remote = write(&self.remote);
        if *remote == endpoints {
            return false;
        }
        *remote = endpoints;
        true
    }
}

/// The TrustBundle type version a sidecar ACKed (and has not NACKed since), if any.
fn held_bundle(types: &[TypeStatus]) -> Option<&str> {
    types
        .iter()
        .find(|t| t.type_url == mesh_proto::TRUST_BUNDLE_TYPE_URL && t.nack.is_none())
        .map(|t| t.acked_version.as_str())
        .filter(|v| !v.is_empty())
}

/// A read-only handle on the discovery server: the fleet and what it is sent, for the admin
/// API and the dashboard, which never change it. Cheap to clone.
#[derive(Clone)]
pub struct FleetView(pub(super) Xds);

// === impl FleetView ===

impl FleetView {
    /// Every connected sidecar with the sync state of each type.
    pub fn sidecars(&self) -> Vec<SidecarStatus> {
        self.0.sidecars()
    }

    /// The resources a sidecar's scope holds now (what the sidecar runs once SYNCED).
    pub fn config_of(&self, sidecar_id: &str) -> Option<Arc<Snapshot>> {
        self.0.config_of(sidecar_id)
    }

    /// The re-issue directives in force, oldest first.
    pub fn directives(&self) -> Vec<Directive> {
        self.0.directives().list()
    }

    /// This replica's name.
    pub fn replica(&self) -> &str {
        self.0.replica()
    }

    /// How many sidecars the interim TLS policy still waits for, and since when.
    pub fn bridge_waiting(&self) -> Option<(Instant, usize)> {
        self.0.bridge_waiting()
    }
}
