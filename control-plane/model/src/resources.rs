//! The internal, validated types that the xDS layer reads from a [`Mesh`](super::Mesh).
//!
//! Every value here passed validation: durations are `Duration`s of whole milliseconds (the
//! wire carries milliseconds), addresses are `SocketAddr`s, identities are `SpiffeId`s, regexes
//! are compiled, and defaults are filled in, so an encoder only translates.
//!
//! The closed sets (`Protocol`, `LbPolicy`, ...) are shared with the document shapes in
//! [`spec`](super::spec); their serde names are what operators write.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use mesh_ca::SpiffeId;
use serde::{Deserialize, Serialize};

/// Labels of a workload, an endpoint or a document.
pub type Labels = BTreeMap<String, String>;

/// `namespace/name` of an object of a known kind.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectRef {
    pub namespace: String,
    pub name: String,
}

impl ObjectRef {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

// ---------------------------------------------------------------------------------------------
// Shared closed sets
// ---------------------------------------------------------------------------------------------

/// The application protocol of a service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/1.1 or HTTP/2: routes, retries, timeouts, per-request policy.
    Http,
    /// Opaque TCP: mTLS, identity-based authorization and connection metrics only.
    Tcp,
}

/// What the application behind a service port speaks (Kubernetes' `appProtocol`): the
/// version the sidecar talks to it in, whatever version the caller used. A peer cannot choose
/// it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum AppProtocol {
    /// HTTP/1.1 (the default).
    #[default]
    #[serde(rename = "http")]
    Http,
    /// HTTP/2 with prior knowledge (cleartext h2c).
    #[serde(rename = "http2", alias = "h2c")]
    Http2,
    /// gRPC: HTTP/2 with prior knowledge.
    #[serde(rename = "grpc")]
    Grpc,
}

impl AppProtocol {
    /// Without an `appProtocol`, Istio's port naming convention (`<protocol>[-<suffix>]`):
    /// `grpc`, `grpc-*` (not `grpc-web`, which is HTTP/1.1), `http2`, `http2-*`, `h2c`,
    /// `h2c-*` are HTTP/2; any other name is HTTP/1.1.
    pub fn from_port_name(name: &str) -> Self {
        let family = name.split('-').next().unwrap_or_default();
        match family {
            "grpc" if !name.starts_with("grpc-web") => Self::Grpc,
            "http2" | "h2c" => Self::Http2,
            _ => Self::Http,
        }
    }

    /// Whether the application is spoken to in HTTP/2.
    pub fn is_http2(self) -> bool {
        matches!(self, Self::Http2 | Self::Grpc)
    }
}

/// How a client sidecar picks an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum LbPolicy {
    /// Weighted round robin over healthy endpoints (the default).
    #[default]
    RoundRobin,
    /// Power of two choices: of two random endpoints, the one with fewer requests in flight.
    LeastRequest,
}

/// How client sidecars secure connections to a service's endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum UpstreamTls {
    /// Mesh mTLS with a checked peer identity (the default).
    #[default]
    Mutual,
    /// Plaintext: for destinations outside the mesh. Never a default, so that a missing
    /// identity cannot silently turn into plaintext.
    Disabled,
}

/// Which TLS an inbound listener accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TlsMode {
    /// Only mesh mTLS (the default).
    #[default]
    Strict,
    /// mTLS and plaintext, detected per connection (for migrating workloads into the mesh).
    Permissive,
    /// Plaintext only. Allowed on a Service port (e.g. a kubelet health check), not on a
    /// TlsPolicy.
    Disabled,
}

/// What a matching AuthorizationPolicy does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Action {
    Allow,
    Deny,
}

/// A failure that allows a retry (the values of `retryOn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum RetryOn {
    /// Any 5xx response, and a connect failure or reset.
    #[serde(rename = "5xx")]
    FiveXx,
    /// A 502, 503 or 504 response.
    #[serde(rename = "gateway-error")]
    GatewayError,
    /// No connection (including a TLS handshake or peer identity failure).
    #[serde(rename = "connect-failure")]
    ConnectFailure,
    /// The connection or stream was reset before response headers.
    #[serde(rename = "reset")]
    Reset,
}

impl RetryOn {
    /// The wire spelling (`RetryPolicy.retry_on`), the same as the document's.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FiveXx => "5xx",
            Self::GatewayError => "gateway-error",
            Self::ConnectFailure => "connect-failure",
            Self::Reset => "reset",
        }
    }
}

/// What one rate-limit bucket covers, as written in a document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RateLimitScope {
    /// One bucket for all inbound HTTP requests of the workload (the default).
    #[default]
    Workload,
    /// One bucket for the requests of one HTTPRoute (or one rule of it).
    Route,
}

// ---------------------------------------------------------------------------------------------
// Selectors and identities
// ---------------------------------------------------------------------------------------------

/// Which workloads a policy applies to. A policy applies to workloads of its own namespace, or
/// to the whole mesh when it lives in the root namespace (see
/// [`MeshOptions::root_namespace`](super::MeshOptions)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// No selector: every workload in scope.
    All,
    /// Workloads that carry every one of these labels.
    MatchLabels(Labels),
    /// Workloads behind this Service (its `selector` matches their labels). The service is in
    /// the policy's namespace and exists (checked by `Mesh::build`).
    Service(String),
}

/// An identity that a client accepts from a service's endpoints (`Service.identities`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentityMatch {
    Exact(SpiffeId),
    /// A prefix of the URI, written with a trailing `*` (`spiffe://cluster.local/ns/shop/*`).
    Prefix(String),
}

impl IdentityMatch {
    pub fn matches(&self, id: &SpiffeId) -> bool {
        match self {
            Self::Exact(e) => e == id,
            Self::Prefix(p) => id.to_uri().starts_with(p.as_str()),
        }
    }
}

impl fmt::Display for IdentityMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(id) => write!(f, "{id}"),
            Self::Prefix(p) => write!(f, "{p}*"),
        }
    }
}

/// A caller identity in an authorization rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// `*`: any authenticated caller.
    Any,
    Exact(SpiffeId),
    /// `spiffe://cluster.local/ns/shop/*`: the URI starts with this.
    Prefix(String),
    /// `*/sa/frontend`: the URI ends with this.
    Suffix(String),
}

impl Principal {
    pub fn matches(&self, id: &SpiffeId) -> bool {
        match self {
            Self::Any => true,
            Self::Exact(e) => e == id,
            Self::Prefix(p) => id.to_uri().starts_with(p.as_str()),
            Self::Suffix(s) => id.to_uri().ends_with(s.as_str()),
        }
    }
}

impl fmt::Display for Principal {
    /// The wire spelling (`Source.principals`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("*"),
            Self::Exact(id) => write!(f, "{id}"),
            Self::Prefix(p) => write!(f, "{p}*"),
            Self::Suffix(s) => write!(f, "*{s}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Service
// ---------------------------------------------------------------------------------------------

/// A service: its ports, its endpoints and how clients connect to them. One Cluster per port
/// on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub namespace: String,
    pub name: String,
    /// `metadata.labels` of the document.
    pub labels: Labels,
    /// At least one; names and numbers unique.
    pub ports: Vec<ServicePort>,
    /// Labels that select the workloads behind this service (as a Kubernetes Service's
    /// selector). Empty: only the static `endpoints`.
    pub selector: Labels,
    /// Static endpoints, in document order.
    pub endpoints: Vec<Endpoint>,
    /// Identities accepted from endpoints that carry none of their own (the wire's
    /// `expected_identities`).
    pub identities: Vec<IdentityMatch>,
    pub upstream_tls: UpstreamTls,
    pub lb_policy: LbPolicy,
    pub circuit_breaker: Option<CircuitBreaker>,
    pub outlier_detection: Option<OutlierDetection>,
    /// Default 5 s.
    pub connect_timeout: Duration,
}

impl Service {
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

    pub fn key(&self) -> ObjectRef {
        ObjectRef::new(&self.namespace, &self.name)
    }

    pub fn port(&self, port: u16) -> Option<&ServicePort> {
        self.ports.iter().find(|p| p.port == port)
    }

    pub fn port_named(&self, name: &str) -> Option<&ServicePort> {
        self.ports.iter().find(|p| p.name == name)
    }

    /// Whether a workload belongs to this service: same namespace, and the service's selector
    /// is not empty and matches the workload's labels.
    pub fn selects(&self, namespace: &str, labels: &Labels) -> bool {
        namespace == self.namespace
            && !self.selector.is_empty()
            && labels_match(&self.selector, labels)
    }

    /// Every host name this service answers to, most qualified first:
    /// `name.ns.svc.<cluster domain>`, `name.ns.svc`, `name.ns`, `name`. The last one works
    /// only for clients in the same namespace (as in Kubernetes DNS); each form is also valid
    /// with `:port`.
    pub fn hostnames(&self, cluster_domain: &str) -> Vec<String> {
        let (n, ns) = (&self.name, &self.namespace);
        vec![
            format!("{n}.{ns}.svc.{cluster_domain}"),
            format!("{n}.{ns}.svc"),
            format!("{n}.{ns}"),
            n.clone(),
        ]
    }
}

/// One port of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    /// A DNS-1123 label, unique in the service.
    pub name: String,
    /// The port clients address (`reviews:9080`).
    pub port: u16,
    /// The port of the application behind the inbound sidecar (default: `port`).
    pub target_port: u16,
    pub protocol: Protocol,
    /// What the application speaks on this port (HTTP ports); default HTTP/1.1.
    pub app_protocol: AppProtocol,
    /// The inbound TLS of this port. `None`: the workload's TlsPolicy decides.
    pub inbound_tls: Option<TlsMode>,
}

/// A static endpoint of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// For a meshed endpoint, the address of its sidecar's inbound listener.
    pub address: SocketAddr,
    /// The identity the endpoint must present. `None`: one of `Service.identities` (or an
    /// upstream TLS of DISABLED); validation guarantees one of these holds.
    pub identity: Option<SpiffeId>,
    pub labels: Labels,
    /// Relative weight, at least 1 (default 1).
    pub weight: u32,
}

/// Limits per client sidecar on the whole service; `None` is "no limit".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CircuitBreaker {
    pub max_connections: Option<u32>,
    pub max_pending_requests: Option<u32>,
    pub max_requests: Option<u32>,
}

/// Passive health checking, with the defaults filled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutlierDetection {
    /// Default 5.
    pub consecutive_5xx: u32,
    /// Default 10 s.
    pub interval: Duration,
    /// Default 30 s.
    pub base_ejection_time: Duration,
    /// 1..=100, default 10.
    pub max_ejection_percent: u32,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        Self {
            consecutive_5xx: 5,
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_percent: 10,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// HTTPRoute
// ---------------------------------------------------------------------------------------------

/// How requests to some host names, or to a service, are routed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRoute {
    pub namespace: String,
    pub name: String,
    /// Host names the route serves (may start with `*.`), lower case, no port.
    pub hostnames: Vec<String>,
    /// Services whose traffic this route takes over (GAMMA-style). Each exists and the port,
    /// if given, is an HTTP port of it.
    pub parents: Vec<ParentRef>,
    /// At least one; tried in order.
    pub rules: Vec<RouteRule>,
}

impl HttpRoute {
    pub fn key(&self) -> ObjectRef {
        ObjectRef::new(&self.namespace, &self.name)
    }

    pub fn rule_named(&self, name: &str) -> Option<&RouteRule> {
        self.rules.iter().find(|r| r.name.as_deref() == Some(name))
    }
}

/// A service whose traffic a route takes over: all of its HTTP ports, or one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentRef {
    pub service: ObjectRef,
    pub port: Option<u16>,
}

/// One rule of a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteRule {
    /// Optional, unique in the route; a RateLimitPolicy may name it.
    pub name: Option<String>,
    /// Any one must match. Empty: every request.
    pub matches: Vec<RouteMatch>,
    /// At least one, weights not all 0. Each names an existing service's HTTP port.
    pub backends: Vec<Backend>,
    pub retry: Option<RetryPolicy>,
    /// Deadline of the whole request, retries included. `None`: no deadline.
    pub timeout: Option<Duration>,
}

/// Conditions on a request; all that are set must hold.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RouteMatch {
    pub path: Option<PathMatch>,
    pub headers: Vec<HeaderMatch>,
    /// Upper case.
    pub method: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    /// Starts with `/`.
    Exact(String),
    /// A plain string prefix starting with `/`.
    Prefix(String),
    /// Must match the whole path.
    Regex(Pattern),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderMatch {
    /// Lower case.
    pub name: String,
    pub condition: HeaderCondition,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderCondition {
    Exact(String),
    Regex(Pattern),
    /// true: present with any value; false: absent.
    Present(bool),
}

/// A compiled regular expression (Rust `regex`, RE2 syntax), anchored at both ends, that
/// remembers the text the operator wrote (which is what goes on the wire).
#[derive(Debug, Clone)]
pub struct Pattern {
    source: String,
    regex: regex::Regex,
}

impl Pattern {
    /// Compiled regexes are bounded so that a document cannot make meshd or a sidecar allocate
    /// without limit.
    const SIZE_LIMIT: usize = 1 << 20;

    pub(crate) fn new(source: &str) -> Result<Self, String> {
        let regex = regex::RegexBuilder::new(&format!("^(?:{source})$"))
            .size_limit(Self::SIZE_LIMIT)
            .build()
            .map_err(|e| regex_message(source, &e))?;
        Ok(Self {
            source: source.to_string(),
            regex,
        })
    }

    /// The expression as written (unanchored).
    pub fn as_str(&self) -> &str {
        &self.source
    }

    pub fn is_match(&self, text: &str) -> bool {
        self.regex.is_match(text)
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for Pattern {}

/// `regex` errors span several lines (with a caret diagram); an error line of ours must not.
fn regex_message(source: &str, e: &regex::Error) -> String {
    let text = e.to_string();
    let reason = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("error: "))
        .map(str::to_string)
        .unwrap_or_else(|| text.split_whitespace().collect::<Vec<_>>().join(" "));
    format!("invalid regular expression {source:?}: {reason}")
}

/// A share of a rule's requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub service: ObjectRef,
    pub port: u16,
    /// 0..=100, default 1.
    pub weight: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first try, 1..=10.
    pub attempts: u32,
    pub per_try_timeout: Option<Duration>,
    /// Not empty, no duplicates. Default: `connect-failure`, `reset`, `gateway-error` (close to
    /// Istio's default retry conditions).
    pub retry_on: Vec<RetryOn>,
}

// ---------------------------------------------------------------------------------------------
// Policies
// ---------------------------------------------------------------------------------------------

/// Who may call the selected workloads (Istio semantics: any matching DENY denies; otherwise,
/// with ALLOW policies present, one must match).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizationPolicy {
    pub namespace: String,
    pub name: String,
    pub selector: Selector,
    pub action: Action,
    /// Any one must match. Empty only for ALLOW ("allow nothing").
    pub rules: Vec<AuthzRule>,
}

/// Matches if some `from` matches (or it is empty) and some `to` matches (or it is empty).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuthzRule {
    pub from: Vec<Source>,
    pub to: Vec<Operation>,
}

/// Conditions on the caller; at least one field is set.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Source {
    pub principals: Vec<Principal>,
    pub namespaces: Vec<String>,
}

/// Conditions on the request; at least one field is set.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Operation {
    pub paths: Vec<PathPattern>,
    /// Upper case.
    pub methods: Vec<String>,
    pub ports: Vec<u16>,
}

/// A path in an authorization rule: exact, `/api/*` (prefix), `*.json` (suffix) or `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathPattern {
    Any,
    Exact(String),
    Prefix(String),
    Suffix(String),
}

impl PathPattern {
    pub fn matches(&self, path: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Exact(e) => path == e,
            Self::Prefix(p) => path.starts_with(p.as_str()),
            Self::Suffix(s) => path.ends_with(s.as_str()),
        }
    }
}

impl fmt::Display for PathPattern {
    /// The wire spelling (`Operation.paths`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("*"),
            Self::Exact(e) => f.write_str(e),
            Self::Prefix(p) => write!(f, "{p}*"),
            Self::Suffix(s) => write!(f, "*{s}"),
        }
    }
}

/// A local token bucket on inbound HTTP requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitPolicy {
    pub namespace: String,
    pub name: String,
    pub selector: Selector,
    /// At least 1.
    pub requests_per_second: u32,
    /// At least 1; default `requests_per_second`.
    pub burst: u32,
    pub target: RateLimitTarget,
}

/// What one bucket covers, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateLimitTarget {
    Workload,
    /// An existing HTTPRoute of the policy's namespace, and optionally one named rule of it.
    Route {
        route: ObjectRef,
        rule: Option<String>,
    },
}

// ---------------------------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------------------------

/// The TLS parameters of mesh connections, with defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPolicy {
    pub namespace: String,
    pub name: String,
    pub selector: Selector,
    /// A staged rollout's share of the selected sidecars (1–99); `None`: all of them.
    pub rollout_percent: Option<u8>,
    /// Default TLS 1.2.
    pub min_version: TlsVersion,
    /// Default TLS 1.3; never below `min_version`.
    pub max_version: TlsVersion,
    /// In order of preference. Empty: the crypto provider's defaults. Otherwise at least one
    /// is usable by an enabled version with the mesh's ECDSA certificates.
    pub cipher_suites: Vec<CipherSuite>,
    /// In order of preference. Empty: the provider's defaults.
    pub key_exchange_groups: Vec<KeyExchangeGroup>,
    /// STRICT or PERMISSIVE (never DISABLED). Default STRICT.
    pub inbound_mode: TlsMode,
    /// How long connections set up under the previous policy may finish. Default 30 s.
    pub drain_grace_period: Duration,
}

impl TlsPolicy {
    pub const DEFAULT_DRAIN_GRACE_PERIOD: Duration = Duration::from_secs(30);

    /// `namespace/name`, as a sidecar's [`WorkloadRef::rollouts`] names it.
    ///
    /// [`WorkloadRef::rollouts`]: crate::WorkloadRef::rollouts
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// `kind: Sidecar`: which services the selected workloads reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sidecar {
    pub namespace: String,
    pub name: String,
    pub selector: Selector,
    pub egress: Vec<SidecarEgress>,
}

/// One `NAMESPACE/SERVICE` pattern of a Sidecar's egress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SidecarEgress {
    /// `None`: the workload's own namespace (`.`); `Some(None)`: any (`*`).
    pub namespace: Option<Option<String>>,
    /// `None`: any service (`*`).
    pub service: Option<String>,
}

impl Sidecar {
    /// Whether a workload of `workload_namespace` reaches service `namespace/name`.
    pub fn reaches(&self, workload_namespace: &str, namespace: &str, name: &str) -> bool {
        self.egress.iter().any(|e| {
            let ns_ok = match &e.namespace {
                None => namespace == workload_namespace,
                Some(None) => true,
                Some(Some(ns)) => ns == namespace,
            };
            ns_ok && e.service.as_deref().is_none_or(|s| s == name)
        })
    }
}

/// A sidecar's place in percentage rollouts: 0–99, from a hash of its id, the same on every
/// replica and after every restart. A rollout of P % covers the sidecars whose bucket is below P.
pub fn rollout_bucket(sidecar_id: &str) -> u8 {
    let h = mesh_ca::sha256(sidecar_id.as_bytes());
    (u64::from_be_bytes(h[..8].try_into().expect("8 bytes")) % 100) as u8
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

impl TlsVersion {
    /// As written in documents: `"1.2"`, `"1.3"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tls12 => "1.2",
            Self::Tls13 => "1.3",
        }
    }

    pub(crate) fn parse(s: &str) -> Result<Self, String> {
        match s {
            "1.2" => Ok(Self::Tls12),
            "1.3" => Ok(Self::Tls13),
            "1.0" | "1.1" => Err(format!(
                "TLS {s} is not supported (it is obsolete); use \"1.2\" or \"1.3\""
            )),
            other => Err(format!(
                "unknown TLS version {other:?}; use \"1.2\" or \"1.3\""
            )),
        }
    }
}

/// The cipher suites a mesh sidecar may be told to use, spelled as rustls (and IANA) spell
/// them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CipherSuite {
    Tls13Aes128GcmSha256,
    Tls13Aes256GcmSha384,
    Tls13Chacha20Poly1305Sha256,
    EcdheEcdsaAes128GcmSha256,
    EcdheEcdsaAes256GcmSha384,
    EcdheEcdsaChacha20Poly1305Sha256,
    /// Accepted, but unusable with the mesh's ECDSA certificates.
    EcdheRsaAes128GcmSha256,
    EcdheRsaAes256GcmSha384,
    EcdheRsaChacha20Poly1305Sha256,
}

impl CipherSuite {
    pub const ALL: [Self; 9] = [
        Self::Tls13Aes128GcmSha256,
        Self::Tls13Aes256GcmSha384,
        Self::Tls13Chacha20Poly1305Sha256,
        Self::EcdheEcdsaAes128GcmSha256,
        Self::EcdheEcdsaAes256GcmSha384,
        Self::EcdheEcdsaChacha20Poly1305Sha256,
        Self::EcdheRsaAes128GcmSha256,
        Self::EcdheRsaAes256GcmSha384,
        Self::EcdheRsaChacha20Poly1305Sha256,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Tls13Aes128GcmSha256 => "TLS13_AES_128_GCM_SHA256",
            Self::Tls13Aes256GcmSha384 => "TLS13_AES_256_GCM_SHA384",
            Self::Tls13Chacha20Poly1305Sha256 => "TLS13_CHACHA20_POLY1305_SHA256",
            Self::EcdheEcdsaAes128GcmSha256 => "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
            Self::EcdheEcdsaAes256GcmSha384 => "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
            Self::EcdheEcdsaChacha20Poly1305Sha256 => {
                "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256"
            }
            Self::EcdheRsaAes128GcmSha256 => "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
            Self::EcdheRsaAes256GcmSha384 => "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
            Self::EcdheRsaChacha20Poly1305Sha256 => "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }

    pub fn version(self) -> TlsVersion {
        match self {
            Self::Tls13Aes128GcmSha256
            | Self::Tls13Aes256GcmSha384
            | Self::Tls13Chacha20Poly1305Sha256 => TlsVersion::Tls13,
            _ => TlsVersion::Tls12,
        }
    }

    /// Whether a handshake with the mesh's ECDSA certificates can use it: every TLS 1.3 suite
    /// (they do not fix the signature algorithm) and the ECDSA suites of TLS 1.2.
    pub fn usable_with_ecdsa(self) -> bool {
        !matches!(
            self,
            Self::EcdheRsaAes128GcmSha256
                | Self::EcdheRsaAes256GcmSha384
                | Self::EcdheRsaChacha20Poly1305Sha256
        )
    }
}

/// Key-exchange groups, spelled as rustls spells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyExchangeGroup {
    /// The post-quantum hybrid; TLS 1.3 only.
    X25519MlKem768,
    X25519,
    Secp256r1,
    Secp384r1,
}

impl KeyExchangeGroup {
    pub const ALL: [Self; 4] = [
        Self::X25519MlKem768,
        Self::X25519,
        Self::Secp256r1,
        Self::Secp384r1,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::X25519MlKem768 => "X25519MLKEM768",
            Self::X25519 => "X25519",
            Self::Secp256r1 => "secp256r1",
            Self::Secp384r1 => "secp384r1",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|g| g.name() == name)
    }

    /// TLS 1.2 cannot negotiate the hybrid group.
    pub fn supports_tls12(self) -> bool {
        self != Self::X25519MlKem768
    }
}

/// Whether `labels` carries every one of `selector`'s labels with the same value.
pub(crate) fn labels_match(selector: &Labels, labels: &Labels) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_are_anchored_and_keep_their_source() {
        let p = Pattern::new("/api/v[0-9]+").unwrap();
        assert!(p.is_match("/api/v2"));
        assert!(!p.is_match("/x/api/v2"));
        assert!(!p.is_match("/api/v2/items"));
        assert_eq!(p.as_str(), "/api/v[0-9]+");
        let err = Pattern::new("(abc").unwrap_err();
        assert!(!err.contains('\n'), "{err}");
        assert!(err.contains("unclosed group"), "{err}");
    }

    #[test]
    fn principals_match_exact_prefix_and_suffix() {
        let id: SpiffeId = "spiffe://cluster.local/ns/shop/sa/frontend"
            .parse()
            .unwrap();
        assert!(Principal::Any.matches(&id));
        assert!(Principal::Exact(id.clone()).matches(&id));
        assert!(Principal::Prefix("spiffe://cluster.local/ns/shop/".into()).matches(&id));
        assert!(!Principal::Prefix("spiffe://cluster.local/ns/other/".into()).matches(&id));
        assert!(Principal::Suffix("/sa/frontend".into()).matches(&id));
        assert_eq!(
            Principal::Suffix("/sa/frontend".into()).to_string(),
            "*/sa/frontend"
        );
    }

    #[test]
    fn cipher_suites_know_their_version_and_names() {
        for s in CipherSuite::ALL {
            assert_eq!(CipherSuite::from_name(s.name()), Some(s));
        }
        assert_eq!(
            CipherSuite::from_name("TLS13_AES_128_GCM_SHA256").map(CipherSuite::version),
            Some(TlsVersion::Tls13)
        );
        assert!(!CipherSuite::EcdheRsaAes128GcmSha256.usable_with_ecdsa());
        assert_eq!(CipherSuite::from_name("tls13_aes_128_gcm_sha256"), None);
        assert!(!KeyExchangeGroup::X25519MlKem768.supports_tls12());
    }
}
