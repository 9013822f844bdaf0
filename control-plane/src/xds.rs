//! The discovery server: per-scope snapshots, one delta stream per sidecar, and the status of
//! every (sidecar, type) for `meshctl status` and the dashboard.
//!
//! Flow: a change (a new model, a sidecar that comes or goes, a new trust bundle, a directive)
//! marks the server dirty → the push loop (here) debounces → the scope cache
//! ([`scopes`]) rebuilds the snapshot of every scope that has sidecars, once per scope, checks
//! it and publishes what changed → each stream ([`session`]) sends its sidecar only what
//! differs ([`stream::StreamState`]). The fleet registry ([`fleet`]) knows the streams; the
//! admin API reads it through a [`FleetView`].

pub mod bridge;
pub mod fleet;
mod scopes;
pub mod session;
pub mod snapshot;
pub mod stream;
pub mod view;

pub use fleet::{FleetView, NegotiatedTls, SidecarStatus};

use crate::metrics::Metrics;
use crate::model::Mesh;
use crate::reissue::Directives;
use crate::store::RegistrationEvent;
use mesh_ca::{SpiffeId, TrustBundle};
use mesh_proto::ResourceType;
use mesh_proto::v1::ControlPlane;
use snapshot::Snapshot;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, Semaphore, watch};
use view::{Inputs, LiveEndpoint, ScopeKey};

/// Debounce: after a push, further changes are pushed once they have been quiet this long…
pub const DEBOUNCE_QUIET: Duration = Duration::from_millis(100);
/// …or this long after the first change, whichever comes first.
pub const DEBOUNCE_MAX: Duration = Duration::from_secs(1);
/// How many streams may compute and send a push at the same time.
const PUSH_CONCURRENCY: usize = 256;

/// "Something the snapshots are built from changed": set by every input, taken by the push
/// loop with the time of the first change since the last push. Cheap to clone.
#[derive(Clone, Default)]
pub struct Dirty(Arc<DirtyInner>);

#[derive(Default)]
struct DirtyInner {
    since: Mutex<Option<Instant>>,
    notify: Notify,
}

// === impl Dirty ===

impl Dirty {
    pub fn mark(&self) {
        let mut since = lock(&self.0.since);
        if since.is_none() {
            *since = Some(Instant::now());
        }
        drop(since);
        self.0.notify.notify_one();
    }

    /// Whether a change waits for its push.
    fn pending(&self) -> bool {
        lock(&self.0.since).is_some()
    }

    fn take(&self) -> Option<Instant> {
        lock(&self.0.since).take()
    }

    async fn notified(&self) {
        self.0.notify.notified().await
    }
}

/// The discovery server's shared state. Cheap to clone.
#[derive(Clone)]
pub struct Xds {
    inner: Arc<Inner>,
}

struct Inner {
    /// The inputs every snapshot is built from, besides the fleet's endpoints.
    mesh: RwLock<Arc<Mesh>>,
    bundle: RwLock<TrustBundle>,
    directives: Directives,
    fleet: fleet::Registry,
    scopes: scopes::Scopes,
    dirty: Dirty,
    permits: Semaphore,
    control_plane: ControlPlane,
    trust_domain: String,
    metrics: Metrics,
    shutdown: watch::Receiver<bool>,
}

// === impl Xds ===

impl Xds {
    /// Starts the push task. `shutdown` ends every stream with `UNAVAILABLE`.
    pub fn start(
        mesh: Arc<Mesh>,
        bundle: TrustBundle,
        identity: &SpiffeId,
        replica: &str,
        metrics: Metrics,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        let dirty = Dirty::default();
        let xds = Self {
            inner: Arc::new(Inner {
                mesh: RwLock::new(mesh),
                bundle: RwLock::new(bundle),
                directives: Directives::new(dirty.clone()),
                fleet: fleet::Registry::new(replica, metrics.clone()),
                scopes: scopes::Scopes::default(),
                dirty,
                permits: Semaphore::new(PUSH_CONCURRENCY),
                control_plane: ControlPlane {
                    identity: identity.to_string(),
                    replica: replica.to_string(),
                },
                trust_domain: identity.trust_domain().to_string(),
                metrics,
                shutdown,
            }),
        };
        tokio::spawn(xds.clone().push_loop());
        xds
    }

    /// The read-only handle (the admin API's).
    pub fn view(&self) -> FleetView {
        FleetView(self.clone())
    }

    /// The re-issue directives in force: the handle that puts new ones in force.
    pub fn directives(&self) -> &Directives {
        &self.inner.directives
    }

    /// Follows a model source: every new model is pushed.
    pub fn follow(&self, mut models: watch::Receiver<Arc<Mesh>>) {
        let xds = self.clone();
        tokio::spawn(async move {
            while models.changed().await.is_ok() {
                let mesh = models.borrow_and_update().clone();
                *write(&xds.inner.mesh) = mesh.clone();
                xds.inner.fleet.rescope(&mesh);
                xds.mark_changed();
            }
        });
    }

    /// Reports every stream that opens or closes to `tx` (meshd records them in the store).
    pub fn record_registrations(&self, tx: tokio::sync::mpsc::UnboundedSender<RegistrationEvent>) {
        self.inner.fleet.record_registrations(tx);
    }

    /// Serves `endpoints` (id → endpoint: sidecars the store knew as connected) as if they were
    /// connected, each until it reconnects, all at most for `grace`. A restarted meshd must not
    /// tell every client that a service lost its endpoints while its sidecars are reconnecting.
    pub fn remember(&self, endpoints: BTreeMap<String, LiveEndpoint>, grace: Duration) {
        if endpoints.is_empty() {
            return;
        }
        tracing::info!(
            sidecars = endpoints.len(),
            ?grace,
            "serving the endpoints known before the restart while their sidecars reconnect"
        );
        self.inner.fleet.set_remembered(endpoints);
        self.mark_changed();
        let xds = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            let left = xds.inner.fleet.forget_remembered();
            if left > 0 {
                tracing::info!(
                    sidecars = left,
                    "warm-up over: sidecars that did not reconnect are no longer endpoints"
                );
                xds.mark_changed();
            }
        });
    }

    /// Serves `endpoints` (id → endpoint: sidecars connected to the other replicas, as the store
    /// knows them) besides this replica's own sidecars; pushed only if they changed.
    pub fn set_remote(&self, endpoints: BTreeMap<String, LiveEndpoint>) {
        if self.inner.fleet.set_remote(endpoints) {
            self.mark_changed();
        }
    }

    /// This replica's name (sidecars' `control_plane`, the store's `replica`).
    pub fn replica(&self) -> &str {
        self.inner.fleet.replica()
    }

    /// A new trust bundle (CA rotation) for every sidecar.
    pub fn set_bundle(&self, bundle: TrustBundle) {
        *write(&self.inner.bundle) = bundle;
        self.mark_changed();
    }

    /// The type version of the TrustBundle every sidecar should hold now: a sidecar that
    /// ACKed this version holds the current bundle.
    pub fn bundle_version(&self) -> String {
        let bundle = read(&self.inner.bundle).clone();
        let mut snap = Snapshot::new(Instant::now());
        snap.insert(view::trust_bundle(&self.inner.trust_domain, &bundle));
        snap.type_version(ResourceType::TrustBundle).to_string()
    }

    /// Every connected sidecar with the sync state of each type.
    pub fn sidecars(&self) -> Vec<SidecarStatus> {
        self.inner.fleet.sidecars(self.inner.dirty.pending())
    }

    /// The resources a sidecar's scope holds now (what the sidecar runs once SYNCED).
    pub fn config_of(&self, sidecar_id: &str) -> Option<Arc<Snapshot>> {
        let scope = self.inner.fleet.scope_of(sidecar_id)?;
        self.inner.scopes.current(&scope)
    }

    /// How many sidecars the interim TLS policy still waits for, and since when; `None` when
    /// no change is bridged.
    pub fn bridge_waiting(&self) -> Option<(Instant, usize)> {
        let (since, wanted) = self.inner.scopes.bridge_wants()?;
        let waiting = self
            .inner
            .fleet
            .not_acked(&wanted, ResourceType::TlsPolicy.type_url());
        Some((since, waiting))
    }

    /// Releases the bridged TLS change once every sidecar of its scopes ACKed the interim policy
    /// (or [`bridge::MAX_WAIT`] passed).
    fn check_bridge(&self) {
        let Some((since, waiting)) = self.bridge_waiting() else {
            return;
        };
        self.inner.metrics.tls_bridge_waiting(waiting);
        let overdue = since.elapsed() >= bridge::MAX_WAIT;
        if waiting > 0 && !overdue {
            return;
        }
        if waiting > 0 {
            tracing::warn!(
                waiting,
                "TLS policy change: sidecars did not ACK the interim policy within {:?}; \
                 pushing the change anyway (see `meshctl status` for NACKs)",
                bridge::MAX_WAIT
            );
        } else {
            tracing::info!(
                after = ?since.elapsed(),
                "TLS policy change: every sidecar runs the interim policy; pushing the change"
            );
        }
        self.inner.scopes.release_bridge();
        self.inner.metrics.tls_bridge_waiting(0);
        self.mark_changed();
    }

    fn mark_changed(&self) {
        self.inner.dirty.mark();
    }

    fn mesh(&self) -> Arc<Mesh> {
        read(&self.inner.mesh).clone()
    }

    /// Calls `f` with what every snapshot is built from now.
    fn with_inputs(&self, f: &mut dyn FnMut(&Inputs)) {
        let mesh = self.mesh();
        let bundle = read(&self.inner.bundle).clone();
        let endpoints = self.inner.fleet.endpoints();
        let directives = self.inner.directives.list();
        f(&Inputs {
            trust_domain: &self.inner.trust_domain,
            directives: &directives,
            mesh: &mesh,
            bundle: &bundle,
            endpoints: &endpoints,
        });
    }

    /// Leading-edge debounce: a change after a quiet period is pushed at once (an operator's
    /// single change should not wait for a timer); changes that follow within the quiet window
    /// are coalesced until it has been quiet for [`DEBOUNCE_QUIET`], or [`DEBOUNCE_MAX`] passed.
    async fn push_loop(self) {
        let mut last_push: Option<Instant> = None;
        let dirty = &self.inner.dirty;
        loop {
            tokio::select! {
                _ = dirty.notified() => {}
                _ = tokio::time::sleep(bridge::CHECK_EVERY), if self.inner.scopes.bridging() => {
                    self.check_bridge();
                    continue;
                }
            }
            let first = Instant::now();
            let isolated = last_push.is_none_or(|t| t.elapsed() >= DEBOUNCE_QUIET);
            if !isolated {
                loop {
                    let left = DEBOUNCE_MAX.saturating_sub(first.elapsed());
                    if left.is_zero() {
                        break;
                    }
                    tokio::select! {
                        _ = dirty.notified() => continue,
                        _ = tokio::time::sleep(DEBOUNCE_QUIET.min(left)) => break,
                    }
                }
            }
            let changed_at = dirty.take().unwrap_or(first);
            let metrics = &self.inner.metrics;
            self.with_inputs(&mut |inputs| {
                if self.inner.scopes.rebuild(inputs, changed_at, metrics) {
                    metrics.tls_bridge_started();
                }
            });
            last_push = Some(Instant::now());
        }
    }

    /// The scope's snapshot channel, built now if the scope is new.
    fn scope(&self, key: &ScopeKey) -> watch::Receiver<Arc<Snapshot>> {
        self.inner
            .scopes
            .subscribe(key, |f| self.with_inputs(f), &self.inner.metrics)
    }
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

// Locks are never held across an await, and a panic cannot leave their data half-written (each
// write replaces a whole value), so a poisoned lock is still safe to use.
fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}
fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}
fn lock<T>(l: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    l.lock().unwrap_or_else(|p| p.into_inner())
}
