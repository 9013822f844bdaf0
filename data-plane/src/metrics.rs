//! The sidecar's Prometheus metrics: one registry, typed handles, rendered at `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `inbound` or `outbound`.
    pub direction: &'static str,
    /// The route name, or empty when none matched.
    pub route: String,
    pub status: u16,
    /// Inbound: the caller's SPIFFE ID (empty for plaintext). Outbound: the upstream cluster.
    pub peer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabel {
    pub direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TimeoutLabels {
    pub direction: &'static str,
    /// `header_read` or `idle`.
    pub kind: &'static str,
}

/// Held while a connection of a listener is open: counts it in `connections_open`.
pub struct OpenGauge {
    gauge: Gauge,
}

impl Drop for OpenGauge {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandshakeLabels {
    pub direction: &'static str,
    /// `ok` or `error`.
    pub result: &'static str,
}

/// What a mesh TLS connection negotiated.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct NegotiatedLabels {
    pub direction: &'static str,
    /// As rustls names it: `TLSv1_3`.
    pub version: String,
    pub cipher_suite: String,
    pub group: String,
}

/// Who vouched for each side of a mesh handshake: a CA rotation shows here as handshakes
/// between a sidecar holding a certificate of one CA and a peer holding one of the other.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IssuerLabels {
    pub direction: &'static str,
    /// The issuer (subject of the signing CA) of our certificate at the handshake.
    pub local_issuer: String,
    /// The issuer of the certificate the peer presented.
    pub peer_issuer: String,
    /// The subjects of the roots we trusted at the handshake, joined by `" | "`.
    pub trusted: String,
}

/// Counts for one kind of negotiated connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NegotiatedCount {
    pub open: u64,
    pub handshakes: u64,
}

/// Held for as long as a mesh TLS connection is open: counts it in the inventory.
pub struct OpenConnection {
    metrics: Metrics,
    labels: NegotiatedLabels,
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.metrics
            .inner
            .tls_open
            .get_or_create(&self.labels)
            .dec();
        let mut inventory = self
            .metrics
            .inner
            .inventory
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(c) = inventory.get_mut(&self.labels) {
            c.open = c.open.saturating_sub(1);
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConfigLabels {
    pub r#type: &'static str,
    /// `ack` or `nack`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabel {
    pub r#type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabel {
    pub cluster: String,
}

/// Cheap to clone; every clone updates the same series.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    tls_open: Family<NegotiatedLabels, Gauge>,
    tls_negotiated: Family<NegotiatedLabels, Counter>,
    /// The same counts, readable (a Family cannot be listed): the report to meshd.
    inventory: std::sync::Mutex<std::collections::BTreeMap<NegotiatedLabels, NegotiatedCount>>,
    requests: Family<RequestLabels, Counter>,
    latency: Family<DirectionLabel, Histogram, fn() -> Histogram>,
    handshakes: Family<HandshakeLabels, Counter>,
    handshakes_by_issuer: Family<IssuerLabels, Counter>,
    /// Our certificate and trust anchors, for `handshakes_by_issuer`.
    identity: std::sync::OnceLock<(Arc<mesh_ca::tls::CertSlot>, Arc<mesh_ca::tls::TrustAnchors>)>,
    /// The issuer of the certificate last seen in the slot (by address), parsed once.
    local_issuer: std::sync::Mutex<Option<(usize, String)>>,
    cert_expiry: Gauge,
    control_plane_connected: Gauge,
    config_updates: Family<ConfigLabels, Counter>,
    config_resources: Family<TypeLabel, Gauge>,
    config_received: Family<TypeLabel, Counter>,
    upstream_failures: Family<ClusterLabel, Counter>,
    retries: Family<ClusterLabel, Counter>,
    overflows: Family<ClusterLabel, Counter>,
    connections_open: Family<DirectionLabel, Gauge>,
    connections_refused: Family<DirectionLabel, Counter>,
    connection_timeouts: Family<TimeoutLabels, Counter>,
    app_connections: Gauge,
    app_queue_overflows: Counter,
    header_list_too_large: Family<DirectionLabel, Counter>,
    ejections: Family<ClusterLabel, Counter>,
}

fn latency_histogram() -> Histogram {
    // 1 ms .. ~33 s
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("mesh_proxy");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "HTTP requests by direction, route, status and peer",
            requests.clone(),
        );
        let latency = Family::<DirectionLabel, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        registry.register(
            "request_duration_seconds",
            "Time from request to response headers",
            latency.clone(),
        );
        let tls_open = Family::<NegotiatedLabels, Gauge>::default();
        registry.register(
            "tls_connections_open",
            "Open mesh TLS connections by direction, version, cipher suite and key-exchange group",
            tls_open.clone(),
        );
        let tls_negotiated = Family::<NegotiatedLabels, Counter>::default();
        registry.register(
            "tls_negotiated",
            "Mesh TLS handshakes by direction, version, cipher suite and key-exchange group",
            tls_negotiated.clone(),
        );
        let handshakes = Family::<HandshakeLabels, Counter>::default();
        registry.register(
            "tls_handshakes",
            "Mesh TLS handshakes by direction and result",
            handshakes.clone(),
        );
        let handshakes_by_issuer = Family::<IssuerLabels, Counter>::default();
        registry.register(
            "tls_handshakes_by_issuer",
            "Completed mesh TLS handshakes by direction, the issuer of our certificate and of \
             the peer's, and the roots trusted",
            handshakes_by_issuer.clone(),
        );
        let cert_expiry = Gauge::default();
        registry.register(
            "certificate_expiry_seconds",
            "Seconds until the workload certificate expires (negative: expired; absent: none yet)",
            cert_expiry.clone(),
        );
        let control_plane_connected = Gauge::default();
        registry.register(
            "control_plane_connected",
            "1 while the discovery stream to meshd is open",
            control_plane_connected.clone(),
        );
        let config_updates = Family::<ConfigLabels, Counter>::default();
        registry.register(
            "config_updates",
            "Discovery responses ACKed or NACKed, by type",
            config_updates.clone(),
        );
        let config_resources = Family::<TypeLabel, Gauge>::default();
        registry.register(
            "config_resources",
            "Resources held, by type",
            config_resources.clone(),
        );
        let config_received = Family::<TypeLabel, Counter>::default();
        registry.register(
            "config_resources_received",
            "Resources received in discovery responses (added or changed), by type",
            config_received.clone(),
        );
        let upstream_failures = Family::<ClusterLabel, Counter>::default();
        registry.register(
            "upstream_connect_failures",
            "Failed connections to upstream endpoints (TCP, TLS or identity)",
            upstream_failures.clone(),
        );
        let retries = Family::<ClusterLabel, Counter>::default();
        registry.register("retries", "Retried tries, by cluster", retries.clone());
        let overflows = Family::<ClusterLabel, Counter>::default();
        registry.register(
            "circuit_breaker_overflows",
            "Requests failed fast by a circuit breaker, by cluster",
            overflows.clone(),
        );
        let connections_open = Family::<DirectionLabel, Gauge>::default();
        registry.register(
            "connections_open",
            "Open connections of the inbound and outbound listeners",
            connections_open.clone(),
        );
        let connections_refused = Family::<DirectionLabel, Counter>::default();
        registry.register(
            "connections_refused",
            "Connections closed at accept because the listener had --max-connections open",
            connections_refused.clone(),
        );
        let connection_timeouts = Family::<TimeoutLabels, Counter>::default();
        registry.register(
            "connection_timeouts",
            "Connections closed by --header-read-timeout (kind header_read) or --idle-timeout \
             (kind idle)",
            connection_timeouts.clone(),
        );
        let app_connections = Gauge::default();
        registry.register(
            "app_connections",
            "Open HTTP/1.1 connections to the local application (at most --max-app-connections)",
            app_connections.clone(),
        );
        let app_queue_overflows = Counter::default();
        registry.register(
            "app_queue_overflows",
            "Inbound requests answered 503 because no application connection was free within \
             --app-queue-timeout",
            app_queue_overflows.clone(),
        );
        let header_list_too_large = Family::<DirectionLabel, Counter>::default();
        registry.register(
            "header_list_too_large",
            "Requests answered 431 because their headers exceed what the next hop accepts",
            header_list_too_large.clone(),
        );
        let ejections = Family::<ClusterLabel, Counter>::default();
        registry.register(
            "outlier_ejections",
            "Endpoints ejected by outlier detection, by cluster",
            ejections.clone(),
        );
        Self {
            inner: Arc::new(Inner {
                connections_open,
                connections_refused,
                connection_timeouts,
                app_connections,
                app_queue_overflows,
                header_list_too_large,
                registry,
                requests,
                latency,
                handshakes,
                handshakes_by_issuer,
                identity: std::sync::OnceLock::new(),
                local_issuer: std::sync::Mutex::new(None),
                tls_open,
                tls_negotiated,
                inventory: std::sync::Mutex::default(),
                cert_expiry,
                control_plane_connected,
                config_updates,
                config_resources,
                config_received,
                upstream_failures,
                retries,
                overflows,
                ejections,
            }),
        }
    }

    pub fn request(
        &self,
        direction: &'static str,
        route: &str,
        status: u16,
        peer: &str,
        elapsed: Duration,
    ) {
        self.inner
            .requests
            .get_or_create(&RequestLabels {
                direction,
                route: route.to_string(),
                status,
                peer: peer.to_string(),
            })
            .inc();
        self.inner
            .latency
            .get_or_create(&DirectionLabel { direction })
            .observe(elapsed.as_secs_f64());
    }

    pub fn handshake(&self, direction: &'static str, ok: bool) {
        self.inner
            .handshakes
            .get_or_create(&HandshakeLabels {
                direction,
                result: if ok { "ok" } else { "error" },
            })
            .inc();
    }

    /// Where our certificate and trust anchors live (set once at start), so that every
    /// handshake is counted by issuer too.
    pub fn watch_identity(
        &self,
        cert: Arc<mesh_ca::tls::CertSlot>,
        anchors: Arc<mesh_ca::tls::TrustAnchors>,
    ) {
        let _ = self.inner.identity.set((cert, anchors));
    }

    /// The issuer of our current certificate ("" when none).
    fn local_issuer(&self, cert: &mesh_ca::tls::CertSlot) -> String {
        let Some(key) = cert.get() else {
            return String::new();
        };
        let addr = Arc::as_ptr(&key) as usize;
        let mut cached = self
            .inner
            .local_issuer
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match &*cached {
            Some((a, issuer)) if *a == addr => issuer.clone(),
            _ => {
                let issuer = issuer_of(key.cert.first().map(|c| c.as_ref()));
                *cached = Some((addr, issuer.clone()));
                issuer
            }
        }
    }

    fn count_issuers(&self, direction: &'static str, conn: &rustls::CommonState) {
        let Some((cert, anchors)) = self.inner.identity.get() else {
            return;
        };
        let labels = IssuerLabels {
            direction,
            // Read right after the handshake: a renewal in between is a race of microseconds
            // once per certificate, acceptable for a counter.
            local_issuer: self.local_issuer(cert),
            peer_issuer: issuer_of(
                conn.peer_certificates()
                    .and_then(|c| c.first())
                    .map(|c| c.as_ref()),
            ),
            trusted: anchors.subjects().to_string(),
        };
        self.inner.handshakes_by_issuer.get_or_create(&labels).inc();
    }

    /// Counts a finished handshake by what it negotiated; the connection counts as open until
    /// the returned guard is dropped.
    pub fn negotiated(
        &self,
        direction: &'static str,
        conn: &rustls::CommonState,
    ) -> OpenConnection {
        let labels = NegotiatedLabels {
            direction,
            version: conn
                .protocol_version()
                .map(|v| format!("{v:?}"))
                .unwrap_or_default(),
            cipher_suite: conn
                .negotiated_cipher_suite()
                .map(|s| format!("{:?}", s.suite()))
                .unwrap_or_default(),
            group: conn
                .negotiated_key_exchange_group()
                .map(|g| format!("{:?}", g.name()))
                .unwrap_or_default(),
        };
        self.count_issuers(direction, conn);
        self.inner.tls_open.get_or_create(&labels).inc();
        self.inner.tls_negotiated.get_or_create(&labels).inc();
        let mut inventory = self
            .inner
            .inventory
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let c = inventory.entry(labels.clone()).or_default();
        c.open += 1;
        c.handshakes += 1;
        drop(inventory);
        OpenConnection {
            metrics: self.clone(),
            labels,
        }
    }

    /// Every kind of connection negotiated since start, with its counts.
    pub fn tls_inventory(&self) -> Vec<(NegotiatedLabels, NegotiatedCount)> {
        self.inner
            .inventory
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(l, c)| (l.clone(), *c))
            .collect()
    }

    pub fn control_plane_connected(&self, connected: bool) {
        self.inner.control_plane_connected.set(i64::from(connected));
    }

    pub fn config_update(
        &self,
        ty: mesh_proto::ResourceType,
        received: usize,
        acked: bool,
        held: usize,
    ) {
        self.inner
            .config_received
            .get_or_create(&TypeLabel { r#type: ty.name() })
            .inc_by(u64::try_from(received).unwrap_or(u64::MAX));
        self.inner
            .config_updates
            .get_or_create(&ConfigLabels {
                r#type: ty.name(),
                result: if acked { "ack" } else { "nack" },
            })
            .inc();
        self.inner
            .config_resources
            .get_or_create(&TypeLabel { r#type: ty.name() })
            .set(i64::try_from(held).unwrap_or(i64::MAX));
    }

    pub fn upstream_failure(&self, cluster: &str) {
        self.inner
            .upstream_failures
            .get_or_create(&ClusterLabel {
                cluster: cluster.to_string(),
            })
            .inc();
    }

    pub fn retry(&self, cluster: &str) {
        self.inner
            .retries
            .get_or_create(&ClusterLabel {
                cluster: cluster.to_string(),
            })
            .inc();
    }

    pub fn overflow(&self, cluster: &str) {
        self.inner
            .overflows
            .get_or_create(&ClusterLabel {
                cluster: cluster.to_string(),
            })
            .inc();
    }

    pub fn connection_open(&self, direction: &'static str) -> OpenGauge {
        let gauge = self
            .inner
            .connections_open
            .get_or_create(&DirectionLabel { direction })
            .clone();
        gauge.inc();
        OpenGauge { gauge }
    }

    pub fn connection_refused(&self, direction: &'static str) {
        self.inner
            .connections_refused
            .get_or_create(&DirectionLabel { direction })
            .inc();
    }

    pub fn connection_timeout(&self, direction: &'static str, kind: &'static str) {
        self.inner
            .connection_timeouts
            .get_or_create(&TimeoutLabels { direction, kind })
            .inc();
    }

    /// Counts an open application connection until the guard is dropped.
    pub fn app_connection(&self) -> OpenGauge {
        let gauge = self.inner.app_connections.clone();
        gauge.inc();
        OpenGauge { gauge }
    }

    pub fn app_queue_overflow(&self) {
        self.inner.app_queue_overflows.inc();
    }

    pub fn header_list_too_large(&self, direction: &'static str) {
        self.inner
            .header_list_too_large
            .get_or_create(&DirectionLabel { direction })
            .inc();
    }

    pub fn outlier_ejection(&self, cluster: &str) {
        self.inner
            .ejections
            .get_or_create(&ClusterLabel {
                cluster: cluster.to_string(),
            })
            .inc();
    }

    /// The text exposition; `cert_not_after` (Unix seconds) sets the expiry gauge first.
    pub fn render(&self, cert_not_after: Option<i64>) -> String {
        if let Some(not_after) = cert_not_after {
            self.inner
                .cert_expiry
                .set(not_after - crate::identity::unix_now());
        }
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.inner.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// The issuer DN of a DER certificate ("" when absent or unreadable).
fn issuer_of(der: Option<&[u8]>) -> String {
    der.and_then(|d| mesh_ca::CertInfo::from_der(d).ok())
        .map(|c| c.issuer)
        .unwrap_or_default()
}
