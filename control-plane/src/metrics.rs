//! meshd's Prometheus metrics: one registry, typed handles, rendered at `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::Arc;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabel {
    pub phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IssuerLabel {
    pub issuer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabel {
    pub type_url: String,
}

/// Cheap to clone; every clone updates the same series.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    certificates_issued: Counter,
    refusals: Family<ReasonLabel, Counter>,
    connected_sidecars: Gauge,
    pushes: Family<TypeLabel, Counter>,
    nacks: Family<TypeLabel, Counter>,
    push_latency: Histogram,
    rotation_phase: Family<PhaseLabel, Gauge>,
    rotation_sidecars: Family<StateLabel, Gauge>,
    certificates_live: Family<IssuerLabel, Gauge>,
    tls_bridges: Counter,
    inconsistent_snapshots: Counter,
    tls_bridging: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("meshd");
        let certificates_issued = Counter::default();
        registry.register(
            "certificates_issued",
            "Workload certificates signed",
            certificates_issued.clone(),
        );
        let refusals = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "certificate_refusals",
            "Certificate requests refused, by reason",
            refusals.clone(),
        );
        let connected_sidecars = Gauge::default();
        registry.register(
            "connected_sidecars",
            "Sidecars with an open discovery stream",
            connected_sidecars.clone(),
        );
        let pushes = Family::<TypeLabel, Counter>::default();
        registry.register(
            "pushes",
            "Discovery responses sent, by type",
            pushes.clone(),
        );
        let nacks = Family::<TypeLabel, Counter>::default();
        registry.register(
            "nacks",
            "Discovery responses NACKed by sidecars, by type",
            nacks.clone(),
        );
        // 1 ms .. ~16 s
        let push_latency = Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 15),
        );
        registry.register(
            "push_latency_seconds",
            "Time from a configuration change to the last sidecar's ACK",
            push_latency.clone(),
        );
        let rotation_phase = Family::<PhaseLabel, Gauge>::default();
        registry.register(
            "ca_rotation_phase",
            "1 for the phase the latest CA rotation is in (idle when none ever ran)",
            rotation_phase.clone(),
        );
        let rotation_sidecars = Family::<StateLabel, Gauge>::default();
        registry.register(
            "ca_rotation_sidecars",
            "Connected sidecars done / pending with the current rotation phase",
            rotation_sidecars.clone(),
        );
        let certificates_live = Family::<IssuerLabel, Gauge>::default();
        registry.register(
            "certificates_live",
            "Workload certificates in use (unexpired, not superseded by a renewal, of a trusted CA), by the fingerprint of the CA that signed them",
            certificates_live.clone(),
        );
        let tls_bridges = Counter::default();
        registry.register(
            "tls_policy_bridges",
            "TLS policy changes pushed through an interim policy accepting the old and new settings",
            tls_bridges.clone(),
        );
        let inconsistent_snapshots = Counter::default();
        registry.register(
            "inconsistent_snapshots",
            "Scope snapshots not published because a reference did not resolve (a bug of meshd)",
            inconsistent_snapshots.clone(),
        );
        let tls_bridging = Gauge::default();
        registry.register(
            "tls_policy_bridging_sidecars",
            "Sidecars an interim TLS policy still waits for (0 when no change is bridged)",
            tls_bridging.clone(),
        );
        rotation_phase
            .get_or_create(&PhaseLabel {
                phase: "idle".into(),
            })
            .set(1);
        Self {
            inner: Arc::new(Inner {
                registry,
                certificates_issued,
                refusals,
                connected_sidecars,
                pushes,
                nacks,
                push_latency,
                rotation_phase,
                rotation_sidecars,
                certificates_live,
                tls_bridges,
                inconsistent_snapshots,
                tls_bridging,
            }),
        }
    }

    /// The phase of the latest rotation (the other phases read 0).
    pub fn rotation_phase(&self, phase: &str) {
        self.inner.rotation_phase.clear();
        self.inner
            .rotation_phase
            .get_or_create(&PhaseLabel {
                phase: phase.to_string(),
            })
            .set(1);
    }

    pub fn rotation_progress(&self, done: usize, total: usize) {
        let set = |state: &str, n: usize| {
            self.inner
                .rotation_sidecars
                .get_or_create(&StateLabel {
                    state: state.into(),
                })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        };
        set("done", done);
        set("pending", total.saturating_sub(done));
    }

    /// Live certificates per issuing CA (issuers absent from `counts` are dropped).
    pub fn certificates_by_issuer(&self, counts: &[(String, u64)]) {
        self.inner.certificates_live.clear();
        for (issuer, n) in counts {
            self.inner
                .certificates_live
                .get_or_create(&IssuerLabel {
                    issuer: issuer.clone(),
                })
                .set(i64::try_from(*n).unwrap_or(i64::MAX));
        }
    }

    /// A TLS policy change started through an interim policy.
    pub fn tls_bridge_started(&self) {
        self.inner.tls_bridges.inc();
    }

    pub fn snapshot_inconsistent(&self) {
        self.inner.inconsistent_snapshots.inc();
    }

    /// How many sidecars the interim TLS policy waits for.
    pub fn tls_bridge_waiting(&self, sidecars: usize) {
        self.inner.tls_bridging.set(sidecars as i64);
    }

    pub fn certificate_issued(&self) {
        self.inner.certificates_issued.inc();
    }

    pub fn refusal(&self, reason: &str) {
        self.inner
            .refusals
            .get_or_create(&ReasonLabel {
                reason: reason.into(),
            })
            .inc();
    }

    pub fn sidecar_connected(&self) {
        self.inner.connected_sidecars.inc();
    }

    pub fn sidecar_disconnected(&self) {
        self.inner.connected_sidecars.dec();
    }

    pub fn pushed(&self, type_url: &str) {
        self.inner
            .pushes
            .get_or_create(&TypeLabel {
                type_url: type_url.into(),
            })
            .inc();
    }

    pub fn nacked(&self, type_url: &str) {
        self.inner
            .nacks
            .get_or_create(&TypeLabel {
                type_url: type_url.into(),
            })
            .inc();
    }

    pub fn push_latency(&self, seconds: f64) {
        self.inner.push_latency.observe(seconds);
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.inner.registry).is_err() {
            out.clear();
        }
        out
    }
}
