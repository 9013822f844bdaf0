//! The discovery server: per-scope snapshots, one delta stream per sidecar, and the status of
//! every (sidecar, type) for `meshctl status` and the dashboard.
//!
//! Flow: a change (a new model, a sidecar that comes or goes, a new trust bundle) marks the
//! server dirty → the push task waits for a quiet window (debounce) → it rebuilds the snapshot
//! of every scope that has sidecars, once per scope → each stream task sees its scope's new
//! snapshot and sends the sidecar only what differs ([`stream::StreamState`]).

pub mod snapshot;
pub mod stream;
pub mod tls_bridge;
pub mod view;

use crate::metrics::Metrics;
use crate::model::Mesh;
use crate::store::{Registration, RegistrationEvent};
use crate::tls::PeerInfo;
use mesh_ca::{SpiffeId, TrustBundle};
use mesh_proto::ResourceType;
use mesh_proto::v1::discovery_server::Discovery;
use mesh_proto::v1::resource::Body;
use mesh_proto::v1::{
    self as pb, ControlPlane, DiscoveryRequest, DiscoveryResponse, ReportResponse, SidecarReport,
};
use snapshot::Snapshot;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use stream::{StreamState, TypeStatus};
use tokio::sync::{Notify, Semaphore, watch};
use tonic::{Request, Response, Status, Streaming};
use view::{Directive, Inputs, LiveEndpoint, ReissueTarget, ScopeKey};

/// Debounce: after a push, further changes are pushed once they have been quiet this long…
pub const DEBOUNCE_QUIET: Duration = Duration::from_millis(100);
/// …or this long after the first change, whichever comes first.
pub const DEBOUNCE_MAX: Duration = Duration::from_secs(1);
/// How many streams may compute and send a push at the same time.
const PUSH_CONCURRENCY: usize = 256;
/// How long a new stream may take to send its first request.
const FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a bridged TLS policy change looks for its last ACKs.
const BRIDGE_CHECK: Duration = Duration::from_millis(200);

/// One connected sidecar, as `meshctl status` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SidecarStatus {
    pub id: String,
    pub identity: String,
    pub namespace: String,
    pub service: String,
    pub workload: String,
    pub inbound_address: String,
    /// Where its admin endpoint listens (`/ready`, `/metrics`), as it says.
    pub admin_address: String,
    pub proxy_version: String,
    pub labels: BTreeMap<String, String>,
    /// Its place in percentage rollouts (0–99): a rollout of P % includes it when this is below P.
    pub rollout_bucket: u8,
    pub remote: String,
    /// The meshd replica the stream is on.
    pub control_plane: String,
    pub connected_at: i64,
    pub last_seen: i64,
    pub types: Vec<TypeStatus>,
    /// What its TLS connections negotiated, from its latest report.
    pub tls: Vec<NegotiatedTls>,
}

/// One line of a sidecar's TLS report.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NegotiatedTls {
    pub direction: String,
    pub version: String,
    pub cipher_suite: String,
    pub group: String,
    pub open_connections: u64,
    pub handshakes: u64,
}

struct Entry {
    status: SidecarStatus,
    scope: ScopeKey,
    /// Tells the stream its scope changed (a percentage rollout now includes it, or not).
    rescoped: watch::Sender<ScopeKey>,
    generation: u64,
    /// Notified to end this stream (a newer one from the same sidecar id replaced it).
    replaced: Arc<Notify>,
}

/// A TLS policy change in flight through an interim policy ([`tls_bridge`]).
#[derive(Default)]
struct Bridge {
    /// The scopes whose change is bridged: the policy their sidecars ran before, and the change.
    scopes: HashMap<ScopeKey, Bridged>,
    since: Option<Instant>,
    /// Every sidecar of those scopes ACKed the interim: the next push makes the changes.
    release: bool,
}

struct Bridged {
    from: pb::TlsPolicy,
    to: pb::TlsPolicy,
    interim: pb::TlsPolicy,
}

/// The TlsPolicy of a snapshot (a sidecar holds at most one).
fn tls_of(snapshot: &Snapshot) -> Option<pb::TlsPolicy> {
    match snapshot
        .resources(ResourceType::TlsPolicy)
        .next()?
        .body
        .as_ref()?
    {
        Body::TlsPolicy(p) => Some(p.clone()),
        _ => None,
    }
}

impl Bridge {
    /// Makes `next` (the new snapshot of `scope`, whose sidecars were sent `published`) safe to
    /// push: when its TlsPolicy shares nothing with what the sidecars run, the interim policy
    /// replaces it until the bridge is released. Returns whether a new bridge started.
    fn apply(
        &mut self,
        scope: &ScopeKey,
        published: Option<&Snapshot>,
        next: &mut Snapshot,
    ) -> bool {
        let from = match self.scopes.get(scope) {
            Some(b) => Some(b.from.clone()),
            None => published.and_then(tls_of),
        };
        let to = tls_of(next);
        let interim = match (&from, &to) {
            (Some(from), Some(to)) => tls_bridge::interim(from, to),
            // A scope new to this meshd during a bridge: the interim of the same change.
            (None, Some(to)) => self
                .scopes
                .values()
                .find(|b| &b.to == to)
                .map(|b| b.interim.clone()),
            _ => None,
        };
        let (Some(interim), Some(to)) = (interim, to) else {
            self.scopes.remove(scope);
            return false;
        };
        next.insert(Body::TlsPolicy(interim.clone()));
        let from = from.unwrap_or_else(|| interim.clone());
        self.scopes
            .insert(scope.clone(), Bridged { from, to, interim });
        let started = self.since.is_none();
        self.since.get_or_insert_with(Instant::now);
        started
    }
}

/// The `issued_before` of a directive made at `now` (unix seconds) by a CA that backdates
/// notBefore by `backdate`: notBefore has one-second resolution, so only a certificate from the
/// next second on is certainly newer than the directive (a key compromised now must not survive).
pub fn issued_after(now: i64, backdate: Duration) -> i64 {
    now + 1 - backdate.as_secs() as i64
}

/// A stream's responses on their way to tonic. Boxed in the channel: the channel allocates its
/// slots in blocks of 32, and a `Result<DiscoveryResponse, Status>` is large (tonic's `Status`
/// carries a header map), which cost every stream ~2.7 KiB for an almost always empty queue.
pub struct Outbox(tokio::sync::mpsc::Sender<Box<Result<DiscoveryResponse, Status>>>);

impl Outbox {
    async fn send(&self, item: Result<DiscoveryResponse, Status>) -> Result<(), ()> {
        self.0.send(Box::new(item)).await.map_err(|_| ())
    }
}

/// The receiving end of an [`Outbox`], as tonic's response stream.
pub struct Responses(
    tokio_stream::wrappers::ReceiverStream<Box<Result<DiscoveryResponse, Status>>>,
);

impl tokio_stream::Stream for Responses {
    type Item = Result<DiscoveryResponse, Status>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        std::pin::Pin::new(&mut self.0)
            .poll_next(cx)
            .map(|item| item.map(|b| *b))
    }
}

/// The discovery server's shared state. Cheap to clone.
#[derive(Clone)]
pub struct Xds {
    inner: Arc<Inner>,
}

struct Inner {
    mesh: RwLock<Arc<Mesh>>,
    bundle: RwLock<TrustBundle>,
    directives: RwLock<Vec<Directive>>,
    sidecars: RwLock<BTreeMap<String, Entry>>,
    /// Sidecars known from the store as connected before this meshd started, served as
    /// endpoints until they reconnect or the warm-up ends ([`Xds::remember`]).
    remembered: RwLock<BTreeMap<String, LiveEndpoint>>,
    /// Sidecars whose streams are on other replicas (from the store), served as endpoints
    /// ([`Xds::set_remote`]).
    remote: RwLock<BTreeMap<String, LiveEndpoint>>,
    /// Where streams that open and close are reported, to be recorded in the store.
    registry: std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<RegistrationEvent>>,
    scopes: Mutex<HashMap<ScopeKey, watch::Sender<Arc<Snapshot>>>>,
    /// Locked after `scopes` when both are needed.
    bridge: Mutex<Bridge>,
    /// Set while a change waits for its push; the time of the first such change.
    pending_since: Mutex<Option<Instant>>,
    dirty: Notify,
    permits: Semaphore,
    next_generation: std::sync::atomic::AtomicU64,
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
        let xds = Self {
            inner: Arc::new(Inner {
                mesh: RwLock::new(mesh),
                bundle: RwLock::new(bundle),
                directives: RwLock::new(Vec::new()),
                sidecars: RwLock::new(BTreeMap::new()),
                remembered: RwLock::new(BTreeMap::new()),
                remote: RwLock::new(BTreeMap::new()),
                registry: std::sync::OnceLock::new(),
                scopes: Mutex::new(HashMap::new()),
                bridge: Mutex::new(Bridge::default()),
                pending_since: Mutex::new(None),
                dirty: Notify::new(),
                permits: Semaphore::new(PUSH_CONCURRENCY),
                next_generation: std::sync::atomic::AtomicU64::new(1),
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

    /// Follows a model source: every new model is pushed.
    pub fn follow(&self, mut models: watch::Receiver<Arc<Mesh>>) {
        let xds = self.clone();
        tokio::spawn(async move {
            while models.changed().await.is_ok() {
                let mesh = models.borrow_and_update().clone();
                *write(&xds.inner.mesh) = mesh.clone();
                xds.rescope(&mesh);
                xds.mark_changed();
            }
        });
    }

    /// Reports every stream that opens or closes to `tx` (meshd records them in the store).
    pub fn record_registrations(&self, tx: tokio::sync::mpsc::UnboundedSender<RegistrationEvent>) {
        let _ = self.inner.registry.set(tx);
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
        *write(&self.inner.remembered) = endpoints;
        self.mark_changed();
        let xds = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            let left = std::mem::take(&mut *write(&xds.inner.remembered));
            if !left.is_empty() {
                tracing::info!(
                    sidecars = left.len(),
                    "warm-up over: sidecars that did not reconnect are no longer endpoints"
                );
                xds.mark_changed();
            }
        });
    }

    /// Serves `endpoints` (id → endpoint: sidecars connected to the other replicas, as the store
    /// knows them) besides this replica's own sidecars; pushed only if they changed.
    pub fn set_remote(&self, endpoints: BTreeMap<String, LiveEndpoint>) {
        let mut remote = write(&self.inner.remote);
        if *remote == endpoints {
            return;
        }
        *remote = endpoints;
        drop(remote);
        self.mark_changed();
    }

    /// This replica's name (sidecars' `control_plane`, the store's `replica`).
    pub fn replica(&self) -> &str {
        &self.inner.control_plane.replica
    }

    fn report(&self, event: RegistrationEvent) {
        if let Some(tx) = self.inner.registry.get() {
            let _ = tx.send(event);
        }
    }

    /// A new trust bundle (CA rotation) for every sidecar.
    pub fn set_bundle(&self, bundle: TrustBundle) {
        *write(&self.inner.bundle) = bundle;
        self.mark_changed();
    }

    /// A directive telling the sidecars of `target` to re-issue their certificates within
    /// `window`, each at a random moment of it (so the CA sees a smooth rate); not in force yet
    /// ([`crate::reissue::order`] stores it, then installs it). `backdate` is the CA's notBefore
    /// backdating, so that a certificate issued after this call counts as re-issued.
    pub fn reissue_directive(
        &self,
        target: ReissueTarget,
        window: Duration,
        backdate: Duration,
        reason: &str,
    ) -> Directive {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        self.new_directive(
            target,
            now + window.as_secs() as i64,
            issued_after(now, backdate),
            reason,
        )
    }

    /// A directive with a generation never used before (not installed yet).
    pub fn new_directive(
        &self,
        target: ReissueTarget,
        reissue_before: i64,
        issued_before: i64,
        reason: &str,
    ) -> Directive {
        let now_ms = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as u64;
        let last = read(&self.inner.directives)
            .iter()
            .map(|d| d.generation)
            .max()
            .unwrap_or(0);
        Directive {
            generation: now_ms.max(last + 1),
            target,
            reissue_before,
            issued_before,
            reason: reason.to_string(),
        }
    }

    /// Puts `directive` in force (replacing one of the same generation, so reinstalling a
    /// persisted directive after a restart is harmless).
    pub fn install_directive(&self, directive: Directive) {
        let mut directives = write(&self.inner.directives);
        directives.retain(|d| d.generation != directive.generation);
        directives.push(directive);
        directives.sort_by_key(|d| d.generation);
        drop(directives);
        self.mark_changed();
    }

    /// The type version of the TrustBundle every sidecar should hold now: a sidecar that
    /// ACKed this version holds the current bundle.
    pub fn bundle_version(&self) -> String {
        let bundle = read(&self.inner.bundle).clone();
        let mut snap = Snapshot::new(Instant::now());
        snap.insert(view::trust_bundle(&self.inner.trust_domain, &bundle));
        snap.type_version(mesh_proto::ResourceType::TrustBundle)
            .to_string()
    }

    /// The directives issued by this replica, oldest first.
    pub fn directives(&self) -> Vec<Directive> {
        read(&self.inner.directives).clone()
    }

    /// Every connected sidecar with the sync state of each type.
    pub fn sidecars(&self) -> Vec<SidecarStatus> {
        let pending = lock(&self.inner.pending_since).is_some();
        read(&self.inner.sidecars)
            .values()
            .map(|e| {
                let mut s = e.status.clone();
                if pending {
                    for t in &mut s.types {
                        if t.state == stream::SyncState::Synced {
                            t.state = stream::SyncState::Stale;
                        }
                    }
                }
                s
            })
            .collect()
    }

    /// The resources a sidecar's scope holds now (what the sidecar runs once SYNCED).
    pub fn config_of(&self, sidecar_id: &str) -> Option<Arc<Snapshot>> {
        let scope = read(&self.inner.sidecars).get(sidecar_id)?.scope.clone();
        lock(&self.inner.scopes)
            .get(&scope)
            .map(|tx| tx.borrow().clone())
    }

    /// Moves each sidecar whose percentage rollouts changed with the model to its new scope.
    fn rescope(&self, mesh: &Mesh) {
        let mut sidecars = write(&self.inner.sidecars);
        for (id, e) in sidecars.iter_mut() {
            let s = &e.status;
            let key = ScopeKey::of(mesh, id, &s.namespace, &s.service, &s.labels);
            if key != e.scope {
                e.scope = key.clone();
                e.rescoped.send_replace(key);
            }
        }
    }

    /// Whether a TLS policy change waits for ACKs of its interim policy.
    fn bridging(&self) -> bool {
        let bridge = lock(&self.inner.bridge);
        !bridge.scopes.is_empty() && !bridge.release
    }

    /// How many sidecars the interim TLS policy still waits for, and since when; `None` when
    /// no change is bridged.
    pub fn bridge_waiting(&self) -> Option<(Instant, usize)> {
        let (since, wanted) = {
            let scopes = lock(&self.inner.scopes);
            let bridge = lock(&self.inner.bridge);
            let since = bridge.since.filter(|_| !bridge.scopes.is_empty())?;
            let wanted: HashMap<ScopeKey, String> = bridge
                .scopes
                .keys()
                .filter_map(|k| {
                    let version = scopes
                        .get(k)?
                        .borrow()
                        .type_version(ResourceType::TlsPolicy)
                        .to_string();
                    Some((k.clone(), version))
                })
                .collect();
            (since, wanted)
        };
        let type_url = ResourceType::TlsPolicy.type_url();
        let waiting = read(&self.inner.sidecars)
            .values()
            .filter(|e| {
                wanted.get(&e.scope).is_some_and(|v| {
                    !e.status
                        .types
                        .iter()
                        .any(|t| t.type_url == type_url && &t.acked_version == v)
                })
            })
            .count();
        Some((since, waiting))
    }

    /// Releases the bridged TLS change once every sidecar of its scopes ACKed the interim policy
    /// (or [`tls_bridge::MAX_WAIT`] passed).
    fn check_bridge(&self) {
        let Some((since, waiting)) = self.bridge_waiting() else {
            return;
        };
        self.inner.metrics.tls_bridge_waiting(waiting);
        let overdue = since.elapsed() >= tls_bridge::MAX_WAIT;
        if waiting > 0 && !overdue {
            return;
        }
        if waiting > 0 {
            tracing::warn!(
                waiting,
                "TLS policy change: sidecars did not ACK the interim policy within {:?}; \
                 pushing the change anyway (see `meshctl status` for NACKs)",
                tls_bridge::MAX_WAIT
            );
        } else {
            tracing::info!(
                after = ?since.elapsed(),
                "TLS policy change: every sidecar runs the interim policy; pushing the change"
            );
        }
        lock(&self.inner.bridge).release = true;
        self.inner.metrics.tls_bridge_waiting(0);
        self.mark_changed();
    }

    fn mark_changed(&self) {
        let mut since = lock(&self.inner.pending_since);
        if since.is_none() {
            *since = Some(Instant::now());
        }
        drop(since);
        self.inner.dirty.notify_one();
    }

    /// Leading-edge debounce: a change after a quiet period is pushed at once (an operator's
    /// single change should not wait for a timer); changes that follow within the quiet window
    /// are coalesced until it has been quiet for [`DEBOUNCE_QUIET`], or [`DEBOUNCE_MAX`] passed.
    async fn push_loop(self) {
        let mut last_push: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = self.inner.dirty.notified() => {}
                _ = tokio::time::sleep(BRIDGE_CHECK), if self.bridging() => {
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
                        _ = self.inner.dirty.notified() => continue,
                        _ = tokio::time::sleep(DEBOUNCE_QUIET.min(left)) => break,
                    }
                }
            }
            let changed_at = lock(&self.inner.pending_since).take().unwrap_or(first);
            self.rebuild(changed_at);
            last_push = Some(Instant::now());
        }
    }

    /// Rebuilds the snapshot of every scope that has sidecars, once per scope, and publishes
    /// the ones whose content changed.
    fn rebuild(&self, changed_at: Instant) {
        let mesh = read(&self.inner.mesh).clone();
        let bundle = read(&self.inner.bundle).clone();
        let endpoints = self.endpoints();
        let directives = read(&self.inner.directives).clone();
        let inputs = Inputs {
            trust_domain: &self.inner.trust_domain,
            directives: &directives,
            mesh: &mesh,
            bundle: &bundle,
            endpoints: &endpoints,
        };
        let mut scopes = lock(&self.inner.scopes);
        scopes.retain(|_, tx| tx.receiver_count() > 0);
        let mut bridge = lock(&self.inner.bridge);
        if std::mem::take(&mut bridge.release) {
            bridge.scopes.clear();
            bridge.since = None;
        }
        bridge.scopes.retain(|k, _| scopes.contains_key(k));
        let mut started = false;
        let prepared = view::Prepared::new(&inputs);
        for (scope, tx) in scopes.iter() {
            let mut next = view::build(&prepared, scope, changed_at);
            started |= bridge.apply(scope, Some(&tx.borrow()), &mut next);
            if !tx.borrow().same_content(&next) {
                tx.send_replace(Arc::new(next));
            }
        }
        if bridge.scopes.is_empty() {
            bridge.since = None;
        }
        if started {
            tracing::info!(
                scopes = bridge.scopes.len(),
                "TLS policy change shares no version, suite or group with what the sidecars run: \
                 pushing a policy that accepts both until every sidecar ACKed it"
            );
            self.inner.metrics.tls_bridge_started();
        }
    }

    fn endpoints(&self) -> Vec<LiveEndpoint> {
        let sidecars = read(&self.inner.sidecars);
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
        // Then the other replicas' sidecars and those known before a restart, each once.
        let remembered = read(&self.inner.remembered);
        let remote = read(&self.inner.remote);
        let mut seen: std::collections::HashSet<&String> = sidecars.keys().collect();
        out.extend(
            remote
                .iter()
                .chain(remembered.iter())
                .filter(|(id, _)| seen.insert(*id))
                .map(|(_, e)| e.clone()),
        );
        out
    }

    /// The scope's snapshot channel, built now if the scope is new.
    fn scope(&self, key: &ScopeKey) -> watch::Receiver<Arc<Snapshot>> {
        let mut scopes = lock(&self.inner.scopes);
        if let Some(tx) = scopes.get(key) {
            return tx.subscribe();
        }
        let mesh = read(&self.inner.mesh).clone();
        let bundle = read(&self.inner.bundle).clone();
        let endpoints = self.endpoints();
        let directives = read(&self.inner.directives).clone();
        let inputs = Inputs {
            trust_domain: &self.inner.trust_domain,
            directives: &directives,
            mesh: &mesh,
            bundle: &bundle,
            endpoints: &endpoints,
        };
        let mut snapshot = view::build(&view::Prepared::new(&inputs), key, Instant::now());
        lock(&self.inner.bridge).apply(key, None, &mut snapshot);
        let (tx, rx) = watch::channel(Arc::new(snapshot));
        scopes.insert(key.clone(), tx);
        rx
    }

    fn register(
        &self,
        status: SidecarStatus,
        scope: ScopeKey,
    ) -> (u64, Arc<Notify>, watch::Receiver<ScopeKey>) {
        let generation = self
            .inner
            .next_generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let replaced = Arc::new(Notify::new());
        let id = status.id.clone();
        write(&self.inner.remembered).remove(&id);
        self.report(RegistrationEvent::Connected(Registration {
            id: id.clone(),
            namespace: status.namespace.clone(),
            service: status.service.clone(),
            labels: serde_json::to_string(&status.labels).unwrap_or_else(|_| "{}".into()),
            inbound_address: status.inbound_address.clone(),
            identity: status.identity.clone(),
            connected_at: status.connected_at,
            disconnected_at: None,
            replica: self.inner.control_plane.replica.clone(),
        }));
        let (rescoped, rescoped_rx) = watch::channel(scope.clone());
        let old = write(&self.inner.sidecars).insert(
            id.clone(),
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
            None => self.inner.metrics.sidecar_connected(),
        }
        self.mark_changed();
        (generation, replaced, rescoped_rx)
    }

    fn deregister(&self, id: &str, generation: u64) {
        let mut sidecars = write(&self.inner.sidecars);
        if sidecars.get(id).is_some_and(|e| e.generation == generation) {
            sidecars.remove(id);
            drop(sidecars);
            self.report(RegistrationEvent::Disconnected {
                id: id.to_string(),
                replica: self.inner.control_plane.replica.clone(),
                at: now(),
            });
            self.inner.metrics.sidecar_disconnected();
            self.mark_changed();
        }
    }

    fn update_status(&self, id: &str, generation: u64, state: &StreamState) {
        let mut sidecars = write(&self.inner.sidecars);
        let Some(e) = sidecars.get_mut(id).filter(|e| e.generation == generation) else {
            return;
        };
        let before = held_bundle(&e.status.types).map(str::to_owned);
        state.write_status(&mut e.status.types, false);
        e.status.last_seen = now();
        let after = held_bundle(&e.status.types).map(str::to_owned);
        drop(sidecars);
        // Recorded in the store for the CA rotation's gates, which count every replica's
        // sidecars: only when it changes, not with every ACK.
        if let Some(version) = after.filter(|a| before.as_ref() != Some(a)) {
            self.report(RegistrationEvent::BundleAcked {
                id: id.to_string(),
                replica: self.inner.control_plane.replica.clone(),
                version,
            });
        }
    }

    async fn run_stream(
        self,
        peer: PeerInfo,
        identity: SpiffeId,
        mut requests: Streaming<DiscoveryRequest>,
        tx: Outbox,
    ) {
        let first = match tokio::time::timeout(FIRST_REQUEST_TIMEOUT, requests.message()).await {
            Ok(Ok(Some(first))) => first,
            Ok(Ok(None)) | Ok(Err(_)) => return,
            Err(_) => {
                let _ = tx
                    .send(Err(Status::invalid_argument("no first request within 30s")))
                    .await;
                return;
            }
        };
        let Some(node) = first.node.clone() else {
            let _ = tx
                .send(Err(Status::invalid_argument(
                    "the first request must carry node",
                )))
                .await;
            return;
        };
        if !node.namespace.is_empty() && node.namespace != identity.namespace() {
            let _ = tx
                .send(Err(Status::permission_denied(format!(
                    "node namespace {:?} contradicts the certificate's identity {identity}",
                    node.namespace
                ))))
                .await;
            return;
        }
        let id = if node.id.is_empty() {
            format!("{identity}@{}", peer.remote)
        } else {
            node.id.clone()
        };
        let mut labels = node.labels.clone();
        if !node.service.is_empty() {
            labels
                .entry("app".into())
                .or_insert_with(|| node.service.clone());
        }
        let scope = ScopeKey::of(
            &read(&self.inner.mesh),
            &id,
            identity.namespace(),
            &node.service,
            &labels,
        );
        let status = SidecarStatus {
            id: id.clone(),
            identity: identity.to_string(),
            namespace: identity.namespace().to_string(),
            service: node.service.clone(),
            workload: node.workload.clone(),
            inbound_address: node.inbound_address.clone(),
            admin_address: node.admin_address.clone(),
            proxy_version: node.proxy_version.clone(),
            labels,
            rollout_bucket: crate::model::rollout_bucket(&id),
            remote: peer.remote.to_string(),
            control_plane: self.inner.control_plane.replica.clone(),
            connected_at: now(),
            last_seen: now(),
            types: Vec::new(),
            tls: Vec::new(),
        };
        tracing::info!(sidecar = %id, %identity, remote = %peer.remote, "sidecar connected");
        // Registered first, so that the scope's first snapshot already has this sidecar as an
        // endpoint of its own service.
        let (generation, replaced, mut rescoped) = self.register(status, scope.clone());
        let mut snapshots = self.scope(&scope);
        let mut state = StreamState::new(self.inner.control_plane.clone());
        let mut shutdown = self.inner.shutdown.clone();

        let mut next = Some(first);
        let end: Result<(), Status> = loop {
            if let Some(request) = next.take() {
                let snapshot = snapshots.borrow().clone();
                match state.on_request(&request, &snapshot) {
                    Ok(outcome) => {
                        for (_, latency) in &outcome.acked {
                            self.inner.metrics.push_latency(latency.as_secs_f64());
                        }
                        for (ty, error) in &outcome.nacked {
                            tracing::warn!(sidecar = %id, type_url = ty.type_url(), %error, "NACK");
                            self.inner.metrics.nacked(ty.type_url());
                        }
                        if !self.send_all(&tx, outcome.responses).await {
                            break Ok(());
                        }
                    }
                    Err(e) => break Err(Status::invalid_argument(e.0)),
                }
                self.update_status(&id, generation, &state);
                continue;
            }
            tokio::select! {
                message = requests.message() => match message {
                    Ok(Some(request)) => next = Some(request),
                    Ok(None) => break Ok(()),
                    Err(status) => {
                        tracing::debug!(error = %status, "stream ended");
                        break Ok(());
                    }
                },
                changed = snapshots.changed() => {
                    if changed.is_err() {
                        break Err(Status::unavailable("scope closed"));
                    }
                    let snapshot = snapshots.borrow_and_update().clone();
                    if !self.push(&tx, &mut state, &snapshot).await {
                        break Ok(());
                    }
                    self.update_status(&id, generation, &state);
                }
                changed = rescoped.changed() => {
                    if changed.is_err() {
                        break Err(Status::aborted("replaced by a newer stream from the same sidecar"));
                    }
                    let key = rescoped.borrow_and_update().clone();
                    snapshots = self.scope(&key);
                    let snapshot = snapshots.borrow_and_update().clone();
                    if !self.push(&tx, &mut state, &snapshot).await {
                        break Ok(());
                    }
                    self.update_status(&id, generation, &state);
                }
                _ = replaced.notified() => break Err(Status::aborted("replaced by a newer stream from the same sidecar")),
                _ = async { let _ = shutdown.wait_for(|s| *s).await; } => break Err(Status::unavailable("meshd is shutting down; reconnect to any replica")),
            }
        };
        if let Err(status) = end {
            let _ = tx.send(Err(status)).await;
        }
        self.deregister(&id, generation);
        tracing::info!(sidecar = %id, "sidecar disconnected");
    }

    /// Sends the sidecar what `snapshot` changes for it; false when the stream is gone.
    async fn push(&self, tx: &Outbox, state: &mut StreamState, snapshot: &Snapshot) -> bool {
        let _permit = self.inner.permits.acquire().await;
        let responses = state.on_snapshot(snapshot);
        self.send_all(tx, responses).await
    }

    async fn send_all(&self, tx: &Outbox, responses: Vec<DiscoveryResponse>) -> bool {
        for response in responses {
            self.inner.metrics.pushed(&response.type_url);
            if tx.send(Ok(response)).await.is_err() {
                return false;
            }
        }
        true
    }
}

#[tonic::async_trait]
impl Discovery for Xds {
    type StreamStream = Responses;

    async fn stream(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let peer = request.extensions().get::<PeerInfo>().cloned();
        let Some((peer, identity)) = peer.and_then(|p| p.identity.clone().map(|id| (p, id))) else {
            self.inner
                .metrics
                .refusal("discovery_without_client_certificate");
            return Err(Status::unauthenticated(
                "the discovery stream needs a mesh client certificate (mTLS)",
            ));
        };
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(
            self.clone()
                .run_stream(peer, identity, request.into_inner(), Outbox(tx)),
        );
        Ok(Response::new(Responses(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn report(
        &self,
        request: Request<SidecarReport>,
    ) -> Result<Response<ReportResponse>, Status> {
        let identity = request
            .extensions()
            .get::<PeerInfo>()
            .and_then(|p| p.identity.clone())
            .ok_or_else(|| Status::unauthenticated("a report needs a mesh client certificate"))?;
        let report = request.into_inner();
        const MAX_LINES: usize = 256;
        if report.tls.len() > MAX_LINES {
            return Err(Status::invalid_argument(format!(
                "a report holds at most {MAX_LINES} TLS lines"
            )));
        }
        let mut sidecars = write(&self.inner.sidecars);
        let entry = sidecars
            .get_mut(&report.sidecar_id)
            .filter(|e| e.status.identity == identity.to_string())
            .ok_or_else(|| {
                Status::not_found(format!(
                    "no discovery stream of {identity} with sidecar id {:?} on this replica",
                    report.sidecar_id
                ))
            })?;
        entry.status.tls = report
            .tls
            .into_iter()
            .map(|t| NegotiatedTls {
                direction: t.direction,
                version: t.version,
                cipher_suite: t.cipher_suite,
                group: t.group,
                open_connections: t.open_connections,
                handshakes: t.handshakes,
            })
            .collect();
        entry.status.last_seen = now();
        Ok(Response::new(ReportResponse {}))
    }
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// The TrustBundle type version a sidecar ACKed (and has not NACKed since), if any.
fn held_bundle(types: &[TypeStatus]) -> Option<&str> {
    types
        .iter()
        .find(|t| t.type_url == mesh_proto::TRUST_BUNDLE_TYPE_URL && t.nack.is_none())
        .map(|t| t.acked_version.as_str())
        .filter(|v| !v.is_empty())
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
