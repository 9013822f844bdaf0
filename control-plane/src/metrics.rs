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
        Self {
            inner: Arc::new(Inner {
                registry,
                certificates_issued,
                refusals,
                connected_sidecars,
                pushes,
                nacks,
                push_latency,
            }),
        }
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
