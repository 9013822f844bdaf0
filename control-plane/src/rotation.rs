//! The CA rotation driver: the state machine of [`mesh_ca::rotation`] run against the real
//! fleet. Every second (or at once after a command) it builds a [`FleetView`] from the
//! discovery streams (which TrustBundle each sidecar ACKed) and from the CA's records (which
//! sidecar holds a certificate of which CA, which certificates are still in use), ticks the
//! machine, and makes the phase's [`Effects`] true:
//!
//! 1. the new state is persisted first (`ca_state`: the established CA's sealed key and chain,
//!    the new CA's sealed key in `pending_key`, the rotation as JSON in `rotation_data`), so a
//!    restart resumes exactly where the rotation was;
//! 2. then the [`Authority`] signs with the phase's signer and trusts the phase's roots, the
//!    discovery server pushes the bundle, meshd's own serving certificate and client
//!    verification follow, and the phase's re-issue directive is put in force.
//!
//! A certificate counts as "in use" until it expires or its holder renews by presenting it
//! (`issued_certificates.superseded_at`), so the old root leaves the bundle only when nobody can
//! still need it.
//!
//! # Several replicas
//!
//! Every replica runs this driver over one store, and one of them *leads*: the holder of the
//! [`LeaseKey::CaRotation`] lease (a PostgreSQL advisory lock; with SQLite, the one replica).
//! Only the leader ticks the machine. Every replica *follows* `ca_state`: when it changes
//! (NOTIFY, or the periodic re-read [`RESYNC`]) it reads the rotation and makes its own
//! authority, bundle, serving certificate and directive match it ([`Rotations::sync`]), so its
//! own sidecars see the same phase. The gates count every replica's sidecars: each replica
//! records in `sidecar_registrations` the bundle its sidecars ACKed, and the fleet view reads
//! those rows (of replicas whose heartbeat is recent).
//!
//! An operator's command (start, pause, resume, rollback, next) is carried out by the replica
//! that receives it, like a tick: read the stored state, change it, write it back only if
//! nobody wrote in between (`ca_state.version`, compare-and-swap), then apply it. Every write of
//! `ca_state` is such a compare-and-swap, so a command and the leader's tick never overwrite
//! each other unseen; the loser reads again. A new leader (the old one died, its lock went with
//! its database session) resumes from the stored state.

use crate::ca::{Authority, IDLE, State};
use crate::metrics::Metrics;
use crate::reissue::{Directive, ReissueTarget, issued_after};
use crate::store::{
    AuditEntry, AuditOutcome, CaStateRecord, Changes, LeaseKey, SidecarGate, Store, Topic,
};
use crate::tls::ServingTls;
use crate::xds::Xds;
use anyhow::Context;
use mesh_admin_api::RotationStatus;
use mesh_ca::rotation::{Effects, FleetView, Mode, Phase, Rotation, RotationError};
use mesh_ca::{CertificateAuthority, TrustBundle};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// How often the driver looks at the fleet (and a replica that does not lead tries to).
pub const TICK: Duration = Duration::from_secs(1);
/// How often every replica re-reads `ca_state` without being notified (a safety net for a
/// lost notification).
pub const RESYNC: Duration = Duration::from_secs(5);
/// How often `meshd_certificates_live` is recounted.
const METRICS_INTERVAL: Duration = Duration::from_secs(15);
/// How many stragglers a status names.
const STRAGGLERS: usize = 5;
/// The longest stagger window accepted.
pub const MAX_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// The rotation as persisted in `ca_state.rotation_data`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RotationData {
    pub rotation: Rotation,
    /// The chain of the CA the rotation moves to (its sealed key is `ca_state.pending_key`).
    pub next_chain_pem: String,
    /// The re-issue directive of the current phase: the machine's key for it, and the
    /// directive the sidecars received (reinstalled unchanged after a restart).
    #[serde(default)]
    pub directive: Option<(u64, Directive)>,
    pub started_by: String,
    pub started_at: i64,
}

/// How to start a rotation.
#[derive(Debug)]
pub struct StartRequest {
    pub mode: Mode,
    pub window: Duration,
    /// The new CA as PEM (chain, signing certificate first) and its PKCS#8 key; generated
    /// when absent.
    pub import: Option<(String, String)>,
}

/// An operator's command to a rotation under way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Pause,
    Resume,
    Rollback,
    Next,
}

impl Command {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pause" => Some(Self::Pause),
            "resume" => Some(Self::Resume),
            "rollback" => Some(Self::Rollback),
            "next" => Some(Self::Next),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Pause => "pause",
            Self::Resume => "resume",
            Self::Rollback => "rollback",
            Self::Next => "next",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    #[error(transparent)]
    Refused(#[from] RotationError),
    #[error(
        "a rotation is already under way (phase {0}): let it finish, or roll it back, before starting another"
    )]
    Busy(&'static str),
    #[error("no rotation is under way: start one with `meshctl ca rotate`")]
    NoRotation,
    #[error("the CA rotation was changed by another meshd replica meanwhile: try again")]
    Stale,
    #[error("{0}")]
    BadRequest(String),
    #[error("{0:#}")]
    Internal(anyhow::Error),
}

/// The rotation driver. Cheap to clone.
#[derive(Clone)]
pub struct Rotations {
    inner: Arc<Inner>,
}

/// What the driver works with.
pub struct Wiring {
    pub authority: Authority,
    pub store: Store,
    pub xds: Xds,
    pub tls: ServingTls,
    pub grpc_addr: SocketAddr,
    pub metrics: Metrics,
    /// Other replicas' changes to `ca_state`.
    pub changes: Changes,
    /// Becomes `true` at shutdown: the driver stops and gives its lease up at once.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
}

struct Inner {
    w: Wiring,
    /// The rotation as this replica last read or wrote it.
    followed: tokio::sync::Mutex<Followed>,
    fleet: std::sync::Mutex<FleetView>,
    /// Whether this replica holds the lease (drives the machine).
    leads: AtomicBool,
    wake: Notify,
}

/// The stored rotation this replica follows, and the `ca_state` version it was read at.
struct Followed {
    data: Option<RotationData>,
    version: i64,
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Reads the rotation of a stored record and makes the authority sign and trust what its phase
/// says, before anything is served. `None` when no rotation ever ran.
pub fn restore(
    authority: &Authority,
    record: &CaStateRecord,
) -> anyhow::Result<Option<RotationData>> {
    let Some((data, planned)) = read(authority, record)? else {
        return Ok(None);
    };
    authority.install(planned)?;
    if !data.rotation.phase.is_terminal() {
        tracing::info!(
            phase = data.rotation.phase.as_str(),
            generation = data.rotation.generation,
            "CA rotation resumed from the store"
        );
    }
    Ok(Some(data))
}

/// The rotation of a stored record and what the authority holds for its phase; `None` when no
/// rotation ever ran.
fn read(
    authority: &Authority,
    record: &CaStateRecord,
) -> anyhow::Result<Option<(RotationData, State)>> {
    if record.rotation_phase == IDLE {
        return Ok(None);
    }
    let data: RotationData = serde_json::from_str(&record.rotation_data)
        .context("reading the stored CA rotation (ca_state.rotation_data)")?;
    let (current, next) = authority.unseal(record)?;
    let planned = plan(&data, &current, next.as_ref())?;
    Ok(Some((data, planned)))
}

/// What the authority holds for `data`'s phase, given the established CA and the new one.
fn plan(
    data: &RotationData,
    current: &Arc<CertificateAuthority>,
    next: Option<&Arc<CertificateAuthority>>,
) -> anyhow::Result<State> {
    let effects: Effects = data.rotation.effects();
    let (current, next) = match (data.rotation.phase, next) {
        // Done: the new CA is the established one now.
        (Phase::Done, Some(next)) => (next.clone(), None),
        (Phase::Done | Phase::RolledBack, _) => (current.clone(), None),
        (_, next) => (current.clone(), next.cloned()),
    };
    let cas: Vec<&Arc<CertificateAuthority>> = std::iter::once(&current).chain(&next).collect();
    let signer = cas
        .iter()
        .find(|c| c.signing_cert().fingerprint == effects.signer)
        .map(|c| (*c).clone())
        .with_context(|| {
            format!(
                "the rotation wants CA {} to sign, and meshd holds no such CA",
                effects.signer
            )
        })?;
    let mut bundle = TrustBundle::default();
    for fingerprint in &effects.bundle_roots {
        let root = cas
            .iter()
            .map(|c| c.root())
            .find(|r| &r.fingerprint == fingerprint)
            .with_context(|| format!("the rotation wants root {fingerprint}, which meshd lacks"))?;
        bundle
            .add(root.clone())
            .context("building the trust bundle")?;
    }
    Ok(State {
        current,
        next,
        signer,
        bundle,
    })
}

// === impl Rotations ===

impl Rotations {
    /// Starts the driver task. `restored` is what [`restore`] returned for the record read at
    /// `version`.
    pub fn start(wiring: Wiring, restored: Option<RotationData>, version: i64) -> Self {
        if let Some((_, d)) = restored
            .as_ref()
            .filter(|d| d.rotation.effects().directive.is_some())
            .and_then(|d| d.directive.clone())
        {
            wiring.xds.directives().install(d);
        }
        let changes = wiring.changes.subscribe(Topic::Ca);
        let rotations = Self {
            inner: Arc::new(Inner {
                w: wiring,
                followed: tokio::sync::Mutex::new(Followed {
                    data: restored,
                    version,
                }),
                fleet: std::sync::Mutex::new(FleetView::default()),
                leads: AtomicBool::new(false),
                wake: Notify::new(),
            }),
        };
        tokio::spawn(rotations.clone().run(changes));
        rotations
    }

    async fn run(self, mut changes: tokio::sync::watch::Receiver<u64>) {
        let mut lease = self.inner.w.store.lease(LeaseKey::CaRotation);
        let mut last_count: Option<Instant> = None;
        let mut last_sync = Instant::now();
        let mut changed = false;
        let mut shutdown = self.inner.w.shutdown.clone();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(TICK) => {}
                _ = self.inner.wake.notified() => {}
                // `Changes` lives in `Inner`, so its sender never goes away.
                Ok(()) = changes.changed() => changed = true,
                _ = async { let _ = shutdown.wait_for(|stop| *stop).await; } => {
                    // Another replica takes over on its next try, not when our process ends.
                    lease.release().await;
                    self.inner.leads.store(false, Ordering::Relaxed);
                    return;
                }
            }
            // Counting live certificates by issuer reads the table: not every tick.
            if last_count.is_none_or(|t| t.elapsed() >= METRICS_INTERVAL) {
                self.update_certificate_metrics().await;
                last_count = Some(Instant::now());
            }
            let led = lease.is_held();
            let leads = lease.poll().await;
            self.inner.leads.store(leads, Ordering::Relaxed);
            if leads && !led {
                tracing::info!("this replica drives CA rotations now");
                // Resume from what is stored, not from what this replica last followed.
                changed = true;
            }
            if changed || last_sync.elapsed() >= RESYNC {
                let recount = changed;
                changed = false;
                last_sync = Instant::now();
                let mut followed = self.inner.followed.lock().await;
                if let Err(e) = self.sync(&mut followed).await {
                    tracing::warn!(error = %format!("{e:#}"), "following the stored CA state");
                }
                drop(followed);
                // The CA state changed (a root may have left the bundle): recount at once.
                if recount {
                    self.update_certificate_metrics().await;
                    last_count = Some(Instant::now());
                }
            }
            match self.step(leads).await {
                Ok(()) => {}
                // A command on another replica changed it: read it again at once.
                Err(RotateError::Stale) => changed = true,
                Err(e) => tracing::warn!(error = %e, "CA rotation step"),
            }
        }
    }

    /// Reads `ca_state` and, if it changed since `followed` was read, makes this replica's
    /// authority, bundle, serving certificate and directive match it.
    async fn sync(&self, followed: &mut Followed) -> anyhow::Result<()> {
        let record = self
            .inner
            .w
            .store
            .load_ca_state()
            .await
            .context("reading the CA state")?
            .context("the store holds no CA state")?;
        if record.version == followed.version {
            return Ok(());
        }
        if let Some((data, planned)) = read(&self.inner.w.authority, &record)? {
            self.apply(planned, &data)?;
            let before = followed
                .data
                .as_ref()
                .map(|d| (d.rotation.generation, d.rotation.phase));
            if before != Some((data.rotation.generation, data.rotation.phase)) {
                tracing::info!(
                    phase = data.rotation.phase.as_str(),
                    generation = data.rotation.generation,
                    "CA rotation followed from the store"
                );
            }
            followed.data = Some(data);
        }
        followed.version = record.version;
        Ok(())
    }

    /// One look at the fleet; the leader, in automatic mode, moves on when the phase's gate is
    /// met. Every replica keeps its fleet view for status displays.
    async fn step(&self, leads: bool) -> Result<(), RotateError> {
        let mut followed = self.inner.followed.lock().await;
        let Some(data) = followed.data.as_ref() else {
            return Ok(());
        };
        self.inner
            .w
            .metrics
            .rotation_phase(data.rotation.phase.as_str());
        if data.rotation.phase.is_terminal() {
            return Ok(());
        }
        let fleet = self
            .fleet_view(&data.rotation)
            .await
            .map_err(RotateError::Internal)?;
        let mut next = data.clone();
        let changed = leads && next.rotation.tick(&fleet, now());
        let progress = next.rotation.progress(&fleet);
        self.inner
            .w
            .metrics
            .rotation_progress(progress.done, progress.total);
        *self.inner.fleet.lock().unwrap_or_else(|p| p.into_inner()) = fleet;
        if !changed {
            // `tick` may have updated what it waits for.
            followed.data = Some(next);
            return Ok(());
        }
        self.commit(&mut followed, next).await?;
        if let Some(next) = &followed.data {
            tracing::info!(
                phase = next.rotation.phase.as_str(),
                generation = next.rotation.generation,
                "CA rotation moved on"
            );
            let detail = format!("phase {}", next.rotation.phase.as_str());
            self.audit("system", &detail).await;
        }
        self.inner.wake.notify_one();
        Ok(())
    }

    /// Starts a rotation to a new CA (generated, or imported).
    pub async fn begin(
        &self,
        req: StartRequest,
        actor: &str,
    ) -> Result<RotationStatus, RotateError> {
        if req.window > MAX_WINDOW {
            return Err(RotateError::BadRequest("window: at most 24h".into()));
        }
        let mut followed = self.inner.followed.lock().await;
        self.sync(&mut followed)
            .await
            .map_err(RotateError::Internal)?;
        if let Some(d) = followed.data.as_ref()
            && !d.rotation.phase.is_terminal()
        {
            return Err(RotateError::Busy(d.rotation.phase.as_str()));
        }
        let authority = &self.inner.w.authority;
        let state = authority.state();
        let td = authority.trust_domain().clone();
        let new = match &req.import {
            Some((cert, key)) => CertificateAuthority::from_pem(cert, key, td)
                .map_err(|e| RotateError::BadRequest(format!("the imported CA: {e}")))?,
            None if state.current.signing_cert().fingerprint
                != state.current.root().fingerprint =>
            {
                return Err(RotateError::BadRequest(
                    "this meshd signs with an intermediate of an offline root, so it cannot make \
                     its successor: import the new intermediate with --import-cert and --import-key"
                        .into(),
                ));
            }
            None => CertificateAuthority::generate_root(&mesh_ca::CaOptions::new(td))
                .map_err(|e| RotateError::Internal(e.into()))?,
        };
        if new.signing_cert().fingerprint == state.current.signing_cert().fingerprint {
            return Err(RotateError::BadRequest(
                "the imported CA is the one already in use: nothing to rotate".into(),
            ));
        }
        let new = authority.adopt(new);
        let generation = followed
            .data
            .as_ref()
            .map_or(1, |d| d.rotation.generation + 1);
        let rotation = Rotation::start(
            generation,
            req.mode,
            &state.current.root().fingerprint,
            &state.current.signing_cert().fingerprint,
            &new.root().fingerprint,
            &new.signing_cert().fingerprint,
            req.window.as_secs(),
            now(),
        );
        let data = RotationData {
            rotation,
            next_chain_pem: new.chain_pem(),
            directive: None,
            started_by: actor.to_string(),
            started_at: now(),
        };
        self.commit_with(&mut followed, data, &state.current, Some(&new))
            .await?;
        tracing::info!(
            generation,
            new_root = %new.root().fingerprint,
            mode = ?req.mode,
            "CA rotation started"
        );
        drop(followed);
        self.inner.wake.notify_one();
        Ok(self.status().await)
    }

    /// Pause, resume, roll back, or (manual mode) move on. Retried when another replica wrote
    /// in between (its write is read first, then the command is checked against it).
    pub async fn command(&self, command: Command) -> Result<RotationStatus, RotateError> {
        const ATTEMPTS: usize = 3;
        for attempt in 1..=ATTEMPTS {
            match self.try_command(command).await {
                Err(RotateError::Stale) if attempt < ATTEMPTS => continue,
                Err(e) => return Err(e),
                Ok(()) => break,
            }
        }
        self.inner.wake.notify_one();
        Ok(self.status().await)
    }

    async fn try_command(&self, command: Command) -> Result<(), RotateError> {
        let mut followed = self.inner.followed.lock().await;
        self.sync(&mut followed)
            .await
            .map_err(RotateError::Internal)?;
        let Some(data) = followed.data.as_ref() else {
            return Err(RotateError::NoRotation);
        };
        let mut next = data.clone();
        let at = now();
        match command {
            Command::Pause => next.rotation.pause()?,
            Command::Resume => next.rotation.resume()?,
            Command::Rollback => next.rotation.rollback(at)?,
            Command::Next => {
                let fleet = self
                    .fleet_view(&next.rotation)
                    .await
                    .map_err(RotateError::Internal)?;
                next.rotation.next(&fleet, at)?;
            }
        }
        self.commit(&mut followed, next).await?;
        if let Some(next) = &followed.data {
            tracing::info!(
                command = command.as_str(),
                phase = next.rotation.phase.as_str(),
                "CA rotation command"
            );
        }
        Ok(())
    }

    /// The rotation for status displays: phase, progress, what it waits for, and whether this
    /// replica drives it.
    pub async fn status(&self) -> RotationStatus {
        let followed = self.inner.followed.lock().await;
        let driven_here = self.inner.leads.load(Ordering::Relaxed);
        let Some(d) = followed.data.as_ref() else {
            return RotationStatus {
                phase: IDLE.into(),
                driven_here,
                rotation: None,
            };
        };
        let fleet = self
            .inner
            .fleet
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let r = &d.rotation;
        let progress = r.progress(&fleet);
        let over = r.phase.is_terminal();
        RotationStatus {
            phase: r.phase.as_str().into(),
            driven_here,
            rotation: Some(mesh_admin_api::Rotation {
                generation: r.generation,
                mode: match r.mode {
                    Mode::Automatic => mesh_admin_api::RotationMode::Automatic,
                    Mode::Manual => mesh_admin_api::RotationMode::Manual,
                },
                paused: r.paused,
                old_root: r.old_root.clone(),
                new_root: r.new_root.clone(),
                old_signer: r.old_signer.clone(),
                new_signer: r.new_signer.clone(),
                window_secs: r.window_secs,
                phase_started_at: r.phase_started_at,
                reissue_before: r.reissue_before,
                waiting_for: if over {
                    String::new()
                } else {
                    r.waiting_for.clone()
                },
                progress: (!over).then_some(mesh_admin_api::Progress {
                    done: progress.done,
                    total: progress.total,
                }),
                stragglers: if over {
                    vec![]
                } else {
                    fleet.stragglers.clone()
                },
                retiring_certificates_in_use: fleet.live_retiring_certs,
                started_by: d.started_by.clone(),
                started_at: d.started_at,
            }),
        }
    }

    /// Persists `data` for the authority's current CAs, then applies it.
    async fn commit(&self, followed: &mut Followed, data: RotationData) -> Result<(), RotateError> {
        let state = self.inner.w.authority.state();
        self.commit_with(followed, data, &state.current, state.next.as_ref())
            .await
    }

    /// Writes `data` over the stored state `followed` was read at (or [`RotateError::Stale`],
    /// writing nothing, when another replica wrote since), then applies it.
    async fn commit_with(
        &self,
        followed: &mut Followed,
        mut data: RotationData,
        current: &Arc<CertificateAuthority>,
        next: Option<&Arc<CertificateAuthority>>,
    ) -> Result<(), RotateError> {
        let w = &self.inner.w;
        let effects = data.rotation.effects();
        if let Some((key, reissue_before)) = effects.directive
            && data.directive.as_ref().map(|(k, _)| *k) != Some(key)
        {
            let backdate = w.authority.signer().policy().backdate;
            let reason = if data.rotation.phase == Phase::RollingBack {
                "ca-rotation-rollback"
            } else {
                "ca-rotation"
            };
            let directive = w.xds.directives().new_directive(
                ReissueTarget::All,
                reissue_before,
                issued_after(now(), backdate),
                reason,
            );
            data.directive = Some((key, directive));
        }
        let record = (|| {
            let planned = plan(&data, current, next)?;
            let record = CaStateRecord {
                signing_key: w.authority.seal(&planned.current)?,
                cert_chain_pem: planned.current.chain_pem(),
                roots_pem: planned.bundle.roots().iter().map(|r| r.to_pem()).collect(),
                rotation_phase: data.rotation.phase.as_str().into(),
                rotation_data: serde_json::to_string(&data).context("encoding the rotation")?,
                pending_key: match &planned.next {
                    Some(n) => Some(w.authority.seal(n)?),
                    None => None,
                },
                previous_key: None,
                updated_at: now(),
                version: followed.version,
            };
            Ok::<_, anyhow::Error>((planned, record))
        })();
        let (planned, record) = record.map_err(RotateError::Internal)?;
        let written = w
            .store
            .replace_ca_state(&record, followed.version)
            .await
            .context("saving the CA rotation")
            .map_err(RotateError::Internal)?;
        let Some(version) = written else {
            return Err(RotateError::Stale);
        };
        followed.version = version;
        self.apply(planned, &data).map_err(RotateError::Internal)?;
        followed.data = Some(data);
        Ok(())
    }

    /// Makes the in-memory world match a persisted state.
    fn apply(&self, planned: State, data: &RotationData) -> anyhow::Result<()> {
        let w = &self.inner.w;
        let before = w.authority.state();
        let bundle_changed = before.bundle.fingerprints() != planned.bundle.fingerprints();
        let signer_changed =
            before.signer.signing_cert().fingerprint != planned.signer.signing_cert().fingerprint;
        let bundle = planned.bundle.clone();
        w.authority.install(planned)?;
        if bundle_changed {
            w.tls.anchors.replace(&bundle)?;
            w.xds.set_bundle(bundle);
        }
        if signer_changed {
            w.tls.renew(&w.authority, w.grpc_addr)?;
        }
        if data.rotation.effects().directive.is_some()
            && let Some((_, d)) = &data.directive
        {
            w.xds.directives().install(d.clone());
        }
        Ok(())
    }

    /// What the fleet shows of the current phase: the sidecars of every live replica, as the
    /// store records them (`sidecar_registrations`, see [`Store::gate_count`]).
    async fn fleet_view(&self, r: &Rotation) -> anyhow::Result<FleetView> {
        let w = &self.inner.w;
        let at = now();
        let alive_since = crate::replicas::alive_since(at);
        let mut fleet = FleetView::default();
        match r.phase {
            Phase::Prepare | Phase::Finalize => {
                // Every replica computes the same version for the same bundle (a content hash).
                let want = w.xds.bundle_version();
                let gate = w
                    .store
                    .gate_count(alive_since, SidecarGate::Bundle(&want), STRAGGLERS as u32)
                    .await?;
                fleet.connected = gate.connected as usize;
                fleet.bundle_acked = gate.done as usize;
                fleet.stragglers = gate.stragglers;
            }
            Phase::Switch | Phase::RollingBack => {
                let (wanted, retiring) = if r.phase == Phase::Switch {
                    (&r.new_signer, &r.old_signer)
                } else {
                    (&r.old_signer, &r.new_signer)
                };
                let issuer = SidecarGate::Certificate {
                    issuer: wanted,
                    now: at,
                };
                let gate = w
                    .store
                    .gate_count(alive_since, issuer, STRAGGLERS as u32)
                    .await?;
                fleet.connected = gate.connected as usize;
                fleet.reissued = gate.done as usize;
                fleet.stragglers = gate.stragglers;
                let (in_use, identities) = w
                    .store
                    .certificates_in_use(retiring, at, STRAGGLERS as u32)
                    .await?;
                fleet.live_retiring_certs = in_use;
                if fleet.stragglers.is_empty() {
                    fleet.stragglers = identities;
                }
            }
            Phase::Done | Phase::RolledBack => {}
        }
        Ok(fleet)
    }

    async fn update_certificate_metrics(&self) {
        match self.inner.w.store.live_certificates_by_issuer(now()).await {
            Ok(mut by_issuer) => {
                // A certificate of a root that left the bundle is accepted by no sidecar: not
                // live, whatever its expiry.
                let trusted = self.inner.w.authority.trusted_issuers();
                by_issuer.retain(|(issuer, _)| trusted.contains(&issuer.to_ascii_lowercase()));
                self.inner.w.metrics.certificates_by_issuer(&by_issuer)
            }
            Err(e) => tracing::debug!(error = %e, "counting certificates by issuer"),
        }
    }

    async fn audit(&self, actor: &str, detail: &str) {
        let entry = AuditEntry {
            actor: actor.to_string(),
            action: "ca.rotation".into(),
            target: "ca".into(),
            outcome: AuditOutcome::Ok,
            detail: detail.to_string(),
        };
        if let Err(e) = self.inner.w.store.audit(&entry).await {
            tracing::error!(error = %e, "writing the audit log");
        }
    }
}
