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
//! still need it. One meshd replica drives a rotation; see ARCHITECTURE.md for several replicas.

use crate::ca::{Authority, IDLE, State};
use crate::metrics::Metrics;
use crate::store::{AuditEntry, AuditOutcome, CaStateRecord, Store};
use crate::tls::ServingTls;
use crate::xds::view::{Directive, ReissueTarget};
use crate::xds::{Xds, issued_after};
use anyhow::Context;
use mesh_ca::rotation::{Effects, FleetView, Mode, Phase, Rotation, RotationError};
use mesh_ca::{CertificateAuthority, TrustBundle};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// How often the driver looks at the fleet.
pub const TICK: Duration = Duration::from_secs(1);
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

struct Inner {
    authority: Authority,
    store: Store,
    xds: Xds,
    tls: ServingTls,
    grpc_addr: SocketAddr,
    metrics: Metrics,
    data: tokio::sync::Mutex<Option<RotationData>>,
    fleet: std::sync::Mutex<FleetView>,
    wake: Notify,
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
    if record.rotation_phase == IDLE {
        return Ok(None);
    }
    let data: RotationData = serde_json::from_str(&record.rotation_data)
        .context("reading the stored CA rotation (ca_state.rotation_data)")?;
    let state = authority.state();
    let planned = plan(&data, &state.current, state.next.as_ref())?;
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
    /// Starts the driver task. `restored` is what [`restore`] returned.
    pub fn start(
        authority: Authority,
        store: Store,
        xds: Xds,
        tls: ServingTls,
        grpc_addr: SocketAddr,
        metrics: Metrics,
        restored: Option<RotationData>,
    ) -> Self {
        if let Some((_, d)) = restored
            .as_ref()
            .filter(|d| d.rotation.effects().directive.is_some())
            .and_then(|d| d.directive.clone())
        {
            xds.install_directive(d);
        }
        let rotations = Self {
            inner: Arc::new(Inner {
                authority,
                store,
                xds,
                tls,
                grpc_addr,
                metrics,
                data: tokio::sync::Mutex::new(restored),
                fleet: std::sync::Mutex::new(FleetView::default()),
                wake: Notify::new(),
            }),
        };
        tokio::spawn(rotations.clone().run());
        rotations
    }

    async fn run(self) {
        let mut last_count: Option<std::time::Instant> = None;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(TICK) => {}
                _ = self.inner.wake.notified() => {}
            }
            // Counting live certificates by issuer reads the table: not every tick.
            if last_count.is_none_or(|t| t.elapsed() >= METRICS_INTERVAL) {
                self.update_certificate_metrics().await;
                last_count = Some(std::time::Instant::now());
            }
            if let Err(e) = self.step().await {
                tracing::warn!(error = %format!("{e:#}"), "CA rotation step");
            }
        }
    }

    /// One look at the fleet: in automatic mode, moves on when the phase's gate is met.
    async fn step(&self) -> anyhow::Result<()> {
        let mut guard = self.inner.data.lock().await;
        let Some(data) = guard.as_ref() else {
            return Ok(());
        };
        self.inner
            .metrics
            .rotation_phase(data.rotation.phase.as_str());
        if data.rotation.phase.is_terminal() {
            return Ok(());
        }
        let fleet = self.fleet_view(&data.rotation).await?;
        let mut next = data.clone();
        let changed = next.rotation.tick(&fleet, now());
        let progress = next.rotation.progress(&fleet);
        self.inner
            .metrics
            .rotation_progress(progress.done, progress.total);
        *self.inner.fleet.lock().unwrap_or_else(|p| p.into_inner()) = fleet;
        if changed {
            let next = self.commit(next).await?;
            tracing::info!(
                phase = next.rotation.phase.as_str(),
                generation = next.rotation.generation,
                "CA rotation moved on"
            );
            self.audit("system", &format!("phase {}", next.rotation.phase.as_str()))
                .await;
            *guard = Some(next);
            self.inner.wake.notify_one();
        } else {
            *guard = Some(next);
        }
        Ok(())
    }

    /// Starts a rotation to a new CA (generated, or imported).
    pub async fn begin(&self, req: StartRequest, actor: &str) -> Result<Value, RotateError> {
        if req.window > MAX_WINDOW {
            return Err(RotateError::BadRequest("window: at most 24h".into()));
        }
        let mut guard = self.inner.data.lock().await;
        if let Some(d) = guard.as_ref()
            && !d.rotation.phase.is_terminal()
        {
            return Err(RotateError::Busy(d.rotation.phase.as_str()));
        }
        let state = self.inner.authority.state();
        let td = self.inner.authority.trust_domain().clone();
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
        let new = self.inner.authority.adopt(new);
        let generation = guard.as_ref().map_or(1, |d| d.rotation.generation + 1);
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
        let data = self
            .commit_with(data, &state.current, Some(&new))
            .await
            .map_err(RotateError::Internal)?;
        tracing::info!(
            generation,
            new_root = %new.root().fingerprint,
            mode = ?req.mode,
            "CA rotation started"
        );
        *guard = Some(data);
        drop(guard);
        self.inner.wake.notify_one();
        Ok(self.status().await)
    }

    /// Pause, resume, roll back, or (manual mode) move on.
    pub async fn command(&self, command: Command) -> Result<Value, RotateError> {
        let mut guard = self.inner.data.lock().await;
        let Some(data) = guard.as_ref() else {
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
        let next = self.commit(next).await.map_err(RotateError::Internal)?;
        tracing::info!(
            command = command.as_str(),
            phase = next.rotation.phase.as_str(),
            "CA rotation command"
        );
        *guard = Some(next);
        drop(guard);
        self.inner.wake.notify_one();
        Ok(self.status().await)
    }

    /// The rotation for status displays: phase, progress, what it waits for.
    pub async fn status(&self) -> Value {
        let guard = self.inner.data.lock().await;
        let Some(d) = guard.as_ref() else {
            return json!({ "phase": IDLE });
        };
        let fleet = self
            .inner
            .fleet
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let r = &d.rotation;
        let progress = r.progress(&fleet);
        json!({
            "phase": r.phase.as_str(),
            "generation": r.generation,
            "mode": r.mode,
            "paused": r.paused,
            "old_root": r.old_root,
            "new_root": r.new_root,
            "old_signer": r.old_signer,
            "new_signer": r.new_signer,
            "window_secs": r.window_secs,
            "phase_started_at": r.phase_started_at,
            "reissue_before": r.reissue_before,
            "waiting_for": if r.phase.is_terminal() { "" } else { r.waiting_for.as_str() },
            "progress": if r.phase.is_terminal() { json!(null) } else { json!(progress) },
            "stragglers": if r.phase.is_terminal() { vec![] } else { fleet.stragglers.clone() },
            "retiring_certificates_in_use": fleet.live_retiring_certs,
            "started_by": d.started_by,
            "started_at": d.started_at,
        })
    }

    /// Persists `data` for the authority's current CAs, then applies it.
    async fn commit(&self, data: RotationData) -> anyhow::Result<RotationData> {
        let state = self.inner.authority.state();
        self.commit_with(data, &state.current, state.next.as_ref())
            .await
    }

    async fn commit_with(
        &self,
        mut data: RotationData,
        current: &Arc<CertificateAuthority>,
        next: Option<&Arc<CertificateAuthority>>,
    ) -> anyhow::Result<RotationData> {
        let effects = data.rotation.effects();
        if let Some((key, reissue_before)) = effects.directive
            && data.directive.as_ref().map(|(k, _)| *k) != Some(key)
        {
            let backdate = self.inner.authority.signer().policy().backdate;
            let reason = if data.rotation.phase == Phase::RollingBack {
                "ca-rotation-rollback"
            } else {
                "ca-rotation"
            };
            let directive = self.inner.xds.new_directive(
                ReissueTarget::All,
                reissue_before,
                issued_after(now(), backdate),
                reason,
            );
            data.directive = Some((key, directive));
        }
        let planned = plan(&data, current, next)?;
        let record = CaStateRecord {
            signing_key: self.inner.authority.seal(&planned.current)?,
            cert_chain_pem: planned.current.chain_pem(),
            roots_pem: planned.bundle.roots().iter().map(|r| r.to_pem()).collect(),
            rotation_phase: data.rotation.phase.as_str().into(),
            rotation_data: serde_json::to_string(&data).context("encoding the rotation")?,
            pending_key: match &planned.next {
                Some(n) => Some(self.inner.authority.seal(n)?),
                None => None,
            },
            previous_key: None,
            updated_at: now(),
        };
        self.inner
            .store
            .save_ca_state(&record)
            .await
            .context("saving the CA rotation")?;
        self.apply(planned, &data)?;
        Ok(data)
    }

    /// Makes the in-memory world match a persisted state.
    fn apply(&self, planned: State, data: &RotationData) -> anyhow::Result<()> {
        let before = self.inner.authority.state();
        let bundle_changed = before.bundle.fingerprints() != planned.bundle.fingerprints();
        let signer_changed =
            before.signer.signing_cert().fingerprint != planned.signer.signing_cert().fingerprint;
        let bundle = planned.bundle.clone();
        self.inner.authority.install(planned)?;
        if bundle_changed {
            self.inner.tls.anchors.replace(&bundle)?;
            self.inner.xds.set_bundle(bundle);
        }
        if signer_changed {
            self.inner
                .tls
                .renew(&self.inner.authority, self.inner.grpc_addr)?;
        }
        if data.rotation.effects().directive.is_some()
            && let Some((_, d)) = &data.directive
        {
            self.inner.xds.install_directive(d.clone());
        }
        Ok(())
    }

    /// What the fleet shows of the current phase.
    async fn fleet_view(&self, r: &Rotation) -> anyhow::Result<FleetView> {
        let sidecars = self.inner.xds.sidecars();
        let mut fleet = FleetView {
            connected: sidecars.len(),
            ..FleetView::default()
        };
        match r.phase {
            Phase::Prepare | Phase::Finalize => {
                let want = self.inner.xds.bundle_version();
                for s in &sidecars {
                    let holds = s.types.iter().any(|t| {
                        t.type_url == mesh_proto::TRUST_BUNDLE_TYPE_URL
                            && t.acked_version == want
                            && t.nack.is_none()
                    });
                    if holds {
                        fleet.bundle_acked += 1;
                    } else if fleet.stragglers.len() < STRAGGLERS {
                        fleet.stragglers.push(s.id.clone());
                    }
                }
            }
            Phase::Switch | Phase::RollingBack => {
                let (wanted, retiring) = if r.phase == Phase::Switch {
                    (&r.new_signer, &r.old_signer)
                } else {
                    (&r.old_signer, &r.new_signer)
                };
                let at = now();
                let holders: HashSet<(String, String)> = self
                    .inner
                    .store
                    .sidecars_with_certificate_from(wanted, at)
                    .await?
                    .into_iter()
                    .collect();
                for s in &sidecars {
                    if holders.contains(&(s.id.clone(), s.identity.clone())) {
                        fleet.reissued += 1;
                    } else if fleet.stragglers.len() < STRAGGLERS {
                        fleet.stragglers.push(s.id.clone());
                    }
                }
                let (in_use, identities) = self
                    .inner
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
        match self.inner.store.live_certificates_by_issuer(now()).await {
            Ok(by_issuer) => self.inner.metrics.certificates_by_issuer(&by_issuer),
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
        if let Err(e) = self.inner.store.audit(&entry).await {
            tracing::error!(error = %e, "writing the audit log");
        }
    }
}
