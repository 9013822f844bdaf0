//! The sidecar's validated resources: every `mesh.v1` resource is converted into one of these
//! types, on its own, before anything is applied (discovery.proto, section 5). A conversion
//! error is the reason in the NACK line `<name>: <reason>`. Nothing past this module sees an
//! unvalidated resource.
//!
//! The types also carry the small run-time state that belongs to one version of a resource
//! (a rate limit's bucket, an endpoint's in-flight count and outlier state), so that it lives
//! exactly as long as that version is held.

use http::{HeaderMap, HeaderName, Method};
use mesh_ca::SpiffeId;
use mesh_proto::v1::{self as pb, resource::Body};
use regex::Regex;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Why a resource was rejected: the reason part of a NACK line.
pub type Reason = String;

/// The largest regular expression a route may compile to, so that a resource cannot make the
/// sidecar spend unbounded memory.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

fn regex(what: &str, re: &str) -> Result<Regex, Reason> {
    regex::RegexBuilder::new(&format!("^(?:{re})$"))
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| {
            let first = e.to_string();
            let first = first.lines().last().unwrap_or("").trim().to_string();
            format!("{what}: regex {re:?} does not compile: {first}")
        })
}

fn enum_value<T: TryFrom<i32>>(what: &str, v: i32) -> Result<T, Reason> {
    T::try_from(v).map_err(|_| format!("{what}: unknown value {v}"))
}

fn socket_addr(what: &str, s: &str) -> Result<SocketAddr, Reason> {
    s.parse()
        .map_err(|_| format!("{what} {s:?} is not an ip:port address"))
}

// ---------------------------------------------------------------------------------------------
// Listener
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Inbound,
    Outbound,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http,
    Tcp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    Strict,
    Permissive,
    Disabled,
}

#[derive(Debug)]
pub struct Listener {
    pub name: String,
    /// `None`: the sidecar's own address for the direction.
    pub address: Option<SocketAddr>,
    pub direction: Direction,
    pub protocol: Protocol,
    pub route_table: String,
    pub default_cluster: String,
    /// `None`: the TlsPolicy's inbound mode (STRICT without one).
    pub tls_mode: Option<TlsMode>,
}

fn protocol(what: &str, v: i32) -> Result<Protocol, Reason> {
    match enum_value::<pb::Protocol>(what, v)? {
        pb::Protocol::Http => Ok(Protocol::Http),
        pb::Protocol::Tcp => Ok(Protocol::Tcp),
        pb::Protocol::Unspecified => Err(format!("{what} is unspecified")),
    }
}

impl Listener {
    pub fn convert(l: &pb::Listener) -> Result<Self, Reason> {
        let direction = match enum_value::<pb::listener::Direction>("direction", l.direction)? {
            pb::listener::Direction::Inbound => Direction::Inbound,
            pb::listener::Direction::Outbound => Direction::Outbound,
            pb::listener::Direction::Unspecified => return Err("direction is unspecified".into()),
        };
        let protocol = protocol("protocol", l.protocol)?;
        let address = if l.address.is_empty() {
            None
        } else {
            Some(socket_addr("address", &l.address)?)
        };
        match protocol {
            Protocol::Http if l.route_table.is_empty() => {
                return Err("an HTTP listener needs a route_table".into());
            }
            Protocol::Tcp if l.default_cluster.is_empty() => {
                return Err("a TCP listener needs a default_cluster".into());
            }
            _ => {}
        }
        let tls_mode = match enum_value::<pb::TlsMode>("tls_mode", l.tls_mode)? {
            pb::TlsMode::Unspecified => None,
            pb::TlsMode::Strict => Some(TlsMode::Strict),
            pb::TlsMode::Permissive => Some(TlsMode::Permissive),
            pb::TlsMode::Disabled => Some(TlsMode::Disabled),
        };
        Ok(Self {
            name: l.name.clone(),
            address,
            direction,
            protocol,
            route_table: l.route_table.clone(),
            default_cluster: l.default_cluster.clone(),
            tls_mode,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// RouteTable
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
pub struct RouteTable {
    pub name: String,
    pub virtual_hosts: Vec<VirtualHost>,
}

#[derive(Debug)]
pub struct VirtualHost {
    pub name: String,
    /// Lower case.
    pub domains: Vec<String>,
    pub routes: Vec<Route>,
}

#[derive(Debug)]
pub struct Route {
    pub name: String,
    pub matcher: RouteMatch,
    pub backends: Vec<(String, u32)>,
    total_weight: u64,
    pub retry: Option<RetryPolicy>,
    pub timeout: Option<Duration>,
}

#[derive(Debug, Default)]
pub struct RouteMatch {
    pub path: PathMatch,
    pub headers: Vec<HeaderMatch>,
    pub method: Option<Method>,
}

#[derive(Debug, Default)]
pub enum PathMatch {
    #[default]
    Any,
    Exact(String),
    Prefix(String),
    Regex(Regex),
}

#[derive(Debug)]
pub struct HeaderMatch {
    pub name: HeaderName,
    pub condition: HeaderCondition,
}

#[derive(Debug)]
pub enum HeaderCondition {
    Exact(String),
    Regex(Regex),
    Present(bool),
}

#[derive(Debug, Clone, Default)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub per_try_timeout: Option<Duration>,
    pub on_5xx: bool,
    pub on_gateway_error: bool,
    pub on_connect_failure: bool,
    pub on_reset: bool,
}

fn millis(ms: u64) -> Option<Duration> {
    (ms > 0).then(|| Duration::from_millis(ms))
}

impl RouteTable {
    pub fn convert(t: &pb::RouteTable) -> Result<Self, Reason> {
        let mut seen_domains = std::collections::HashSet::new();
        let mut seen_routes = std::collections::HashSet::new();
        let mut virtual_hosts = Vec::with_capacity(t.virtual_hosts.len());
        for vh in &t.virtual_hosts {
            let mut domains = Vec::with_capacity(vh.domains.len());
            for d in &vh.domains {
                let d = d.to_ascii_lowercase();
                if d.is_empty() {
                    return Err(format!("virtual host {:?}: empty domain", vh.name));
                }
                if !seen_domains.insert(d.clone()) {
                    return Err(format!(
                        "virtual host {:?}: domain {d:?} appears in two virtual hosts",
                        vh.name
                    ));
                }
                domains.push(d);
            }
            let mut routes = Vec::with_capacity(vh.routes.len());
            for r in &vh.routes {
                if !seen_routes.insert(r.name.clone()) {
                    return Err(format!("route {:?} is not unique in the table", r.name));
                }
                routes.push(Route::convert(r).map_err(|e| format!("route {:?}: {e}", r.name))?);
            }
            virtual_hosts.push(VirtualHost {
                name: vh.name.clone(),
                domains,
                routes,
            });
        }
        Ok(Self {
            name: t.name.clone(),
            virtual_hosts,
        })
    }

    /// The virtual host for `host` (lower case, with the port if the request had one): an
    /// exact domain first, then a "*" domain.
    pub fn virtual_host(&self, host: &str) -> Option<&VirtualHost> {
        self.virtual_hosts
            .iter()
            .find(|vh| vh.domains.iter().any(|d| d == host))
            .or_else(|| {
                self.virtual_hosts
                    .iter()
                    .find(|vh| vh.domains.iter().any(|d| d == mesh_proto::names::ANY))
            })
    }
}

impl VirtualHost {
    /// The first route whose match accepts the request.
    pub fn route(&self, req: &RequestView<'_>) -> Option<&Route> {
        self.routes.iter().find(|r| r.matcher.matches(req))
    }
}

impl Route {
    fn convert(r: &pb::Route) -> Result<Self, Reason> {
        let matcher = match &r.r#match {
            None => RouteMatch::default(),
            Some(m) => RouteMatch::convert(m)?,
        };
        if r.backends.is_empty() {
            return Err("no backends".into());
        }
        let total_weight: u64 = r.backends.iter().map(|b| u64::from(b.weight)).sum();
        if total_weight == 0 {
            return Err("every backend has weight 0".into());
        }
        if let Some(b) = r.backends.iter().find(|b| b.cluster.is_empty()) {
            return Err(format!(
                "a backend with weight {} names no cluster",
                b.weight
            ));
        }
        let retry = match &r.retry {
            None => None,
            Some(p) => Some(RetryPolicy::convert(p)?),
        };
        Ok(Self {
            name: r.name.clone(),
            matcher,
            backends: r
                .backends
                .iter()
                .map(|b| (b.cluster.clone(), b.weight))
                .collect(),
            total_weight,
            retry,
            timeout: millis(r.timeout_ms),
        })
    }

    /// A backend cluster, at random in proportion to the weights.
    pub fn pick_backend(&self) -> &str {
        let mut n = fastrand::u64(..self.total_weight);
        for (cluster, weight) in &self.backends {
            let w = u64::from(*weight);
            if n < w {
                return cluster;
            }
            n -= w;
        }
        // Unreachable with total_weight > 0; the first backend is a safe answer.
        self.backends.first().map(|b| b.0.as_str()).unwrap_or("")
    }
}

impl RouteMatch {
    fn convert(m: &pb::RouteMatch) -> Result<Self, Reason> {
        use pb::route_match::Path;
        let path = match &m.path {
            None => PathMatch::Any,
            Some(Path::Exact(p)) => PathMatch::Exact(p.clone()),
            Some(Path::Prefix(p)) => PathMatch::Prefix(p.clone()),
            Some(Path::Regex(re)) => PathMatch::Regex(regex("path", re)?),
        };
        let mut headers = Vec::with_capacity(m.headers.len());
        for h in &m.headers {
            if h.name.is_empty() {
                return Err("a header match has no name".into());
            }
            if h.name.starts_with(':') {
                return Err(format!(
                    "header {:?}: pseudo-headers cannot be matched",
                    h.name
                ));
            }
            let name = HeaderName::from_bytes(h.name.as_bytes())
                .map_err(|_| format!("header {:?} is not a valid header name", h.name))?;
            if name.as_str() != h.name {
                return Err(format!("header {:?} must be lower case", h.name));
            }
            use pb::header_match::Match;
            let condition = match &h.r#match {
                None => return Err(format!("header {:?}: no condition", h.name)),
                Some(Match::Exact(v)) => HeaderCondition::Exact(v.clone()),
                Some(Match::Regex(re)) => {
                    HeaderCondition::Regex(regex(&format!("header {:?}", h.name), re)?)
                }
                Some(Match::Present(p)) => HeaderCondition::Present(*p),
            };
            headers.push(HeaderMatch { name, condition });
        }
        let method = if m.method.is_empty() {
            None
        } else {
            Some(
                Method::from_bytes(m.method.as_bytes())
                    .map_err(|_| format!("method {:?} is not an HTTP method", m.method))?,
            )
        };
        Ok(Self {
            path,
            headers,
            method,
        })
    }

    pub fn matches(&self, req: &RequestView<'_>) -> bool {
        let path_ok = match &self.path {
            PathMatch::Any => true,
            PathMatch::Exact(p) => req.path == p,
            PathMatch::Prefix(p) => req.path.starts_with(p.as_str()),
            PathMatch::Regex(re) => re.is_match(req.path),
        };
        path_ok
            && self.method.as_ref().is_none_or(|m| m == req.method)
            && self.headers.iter().all(|h| h.matches(req.headers))
    }
}

impl HeaderMatch {
    fn matches(&self, headers: &HeaderMap) -> bool {
        let mut values = headers.get_all(&self.name).iter().peekable();
        let present = values.peek().is_some();
        let joined = || {
            values
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .collect::<Vec<_>>()
                .join(",")
        };
        match &self.condition {
            HeaderCondition::Present(want) => present == *want,
            HeaderCondition::Exact(v) => present && joined() == *v,
            HeaderCondition::Regex(re) => present && re.is_match(&joined()),
        }
    }
}

impl RetryPolicy {
    fn convert(p: &pb::RetryPolicy) -> Result<Self, Reason> {
        let mut out = Self {
            attempts: p.attempts,
            per_try_timeout: millis(p.per_try_timeout_ms),
            ..Self::default()
        };
        for on in &p.retry_on {
            match on.as_str() {
                "5xx" => out.on_5xx = true,
                "gateway-error" => out.on_gateway_error = true,
                "connect-failure" => out.on_connect_failure = true,
                "reset" => out.on_reset = true,
                other => return Err(format!("unknown retry_on {other:?}")),
            }
        }
        Ok(out)
    }

    /// Whether a response status allows another try.
    pub fn retry_status(&self, status: http::StatusCode) -> bool {
        (self.on_5xx && status.is_server_error())
            || (self.on_gateway_error && matches!(status.as_u16(), 502..=504))
    }
}

/// What route and policy matching looks at.
pub struct RequestView<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    pub headers: &'a HeaderMap,
}

// ---------------------------------------------------------------------------------------------
// Cluster
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LbPolicy {
    RoundRobin,
    LeastRequest,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamTls {
    Mutual,
    Disabled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Healthy,
    Unhealthy,
    Draining,
}

/// A SPIFFE ID an upstream may present: exactly, or by prefix (`.../sa/*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentityPattern {
    Exact(SpiffeId),
    Prefix(String),
}

impl IdentityPattern {
    pub fn parse(s: &str) -> Result<Self, Reason> {
        if s == "*" {
            return Err(
                "a lone \"*\" identity is not allowed: upstream identity must be bounded".into(),
            );
        }
        if let Some(prefix) = s.strip_suffix('*') {
            if !prefix.starts_with("spiffe://") || prefix.len() <= "spiffe://".len() {
                return Err(format!(
                    "identity pattern {s:?} must start with spiffe://<trust-domain>"
                ));
            }
            return Ok(Self::Prefix(prefix.to_string()));
        }
        s.parse()
            .map(Self::Exact)
            .map_err(|e: mesh_ca::SpiffeIdError| e.to_string())
    }

    pub fn matches(&self, id: &SpiffeId) -> bool {
        match self {
            Self::Exact(x) => x == id,
            Self::Prefix(p) => id.to_string().starts_with(p.as_str()),
        }
    }
}

impl std::fmt::Display for IdentityPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Exact(id) => write!(f, "{id}"),
            Self::Prefix(p) => write!(f, "{p}*"),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct CircuitBreaker {
    pub max_connections: u32,
    pub max_pending_requests: u32,
    pub max_requests: u32,
}

#[derive(Debug, Clone, Copy)]
pub struct OutlierDetection {
    pub consecutive_5xx: u32,
    pub interval: Duration,
    pub base_ejection: Duration,
    pub max_ejection_percent: u32,
}

#[derive(Debug)]
pub struct Endpoint {
    pub address: SocketAddr,
    /// What this endpoint must present (its own identity, or the cluster's).
    pub expected: Vec<IdentityPattern>,
    /// `expected`, joined: part of the upstream pool key.
    pub expected_key: String,
    pub weight: u32,
    pub health: Health,
    pub in_flight: AtomicUsize,
    outlier: Mutex<OutlierState>,
}

#[derive(Debug, Default)]
struct OutlierState {
    consecutive_failures: u32,
    ejections: u32,
    ejected_until: Option<Instant>,
}

#[derive(Debug)]
pub struct Cluster {
    pub name: String,
    pub service: String,
    pub namespace: String,
    pub port: u32,
    pub protocol: Protocol,
    pub endpoints: Vec<Endpoint>,
    pub lb_policy: LbPolicy,
    pub circuit_breaker: Option<CircuitBreaker>,
    pub outlier_detection: Option<OutlierDetection>,
    pub connect_timeout: Duration,
    pub expected_identities: Vec<IdentityPattern>,
    pub upstream_tls: UpstreamTls,
    /// With upstream TLS disabled: the endpoints speak HTTP/2 with prior knowledge (the
    /// Service port's `appProtocol` http2/h2c/grpc), else HTTP/1.1. Never chosen by a caller.
    pub app_http2: bool,
    /// Requests in flight to the whole cluster (circuit breaking).
    pub in_flight: AtomicUsize,
    /// Requests waiting for a connection to be set up (circuit breaking).
    pub pending: AtomicUsize,
    /// Open mesh connections to the cluster's endpoints, shared with the connection tasks
    /// that decrement it when they end (circuit breaking).
    pub connections: std::sync::Arc<AtomicUsize>,
    rr: AtomicU64,
}

impl Cluster {
    pub fn convert(c: &pb::Cluster) -> Result<Self, Reason> {
        let protocol = protocol("protocol", c.protocol)?;
        let lb_policy = match enum_value::<pb::cluster::LbPolicy>("lb_policy", c.lb_policy)? {
            pb::cluster::LbPolicy::Unspecified | pb::cluster::LbPolicy::RoundRobin => {
                LbPolicy::RoundRobin
            }
            pb::cluster::LbPolicy::LeastRequestP2c => LbPolicy::LeastRequest,
        };
        let upstream_tls =
            match enum_value::<pb::cluster::UpstreamTls>("upstream_tls", c.upstream_tls)? {
                pb::cluster::UpstreamTls::Unspecified | pb::cluster::UpstreamTls::Mutual => {
                    UpstreamTls::Mutual
                }
                pb::cluster::UpstreamTls::Disabled => UpstreamTls::Disabled,
            };
        let app_http2 = match enum_value::<pb::AppProtocol>("app_protocol", c.app_protocol)? {
            pb::AppProtocol::Unspecified | pb::AppProtocol::Http1 => false,
            pb::AppProtocol::Http2 => true,
        };
        let expected_identities = c
            .expected_identities
            .iter()
            .map(|s| IdentityPattern::parse(s).map_err(|e| format!("expected_identities: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        let mut endpoints = Vec::with_capacity(c.endpoints.len());
        for e in &c.endpoints {
            let address = socket_addr("endpoint address", &e.address)?;
            let expected = if e.identity.is_empty() {
                expected_identities.clone()
            } else {
                vec![IdentityPattern::Exact(e.identity.parse().map_err(
                    |err: mesh_ca::SpiffeIdError| format!("endpoint {address}: {err}"),
                )?)]
            };
            if upstream_tls == UpstreamTls::Mutual && expected.is_empty() {
                return Err(format!(
                    "endpoint {address} has no identity and the cluster no expected_identities \
                     (required with mutual TLS)"
                ));
            }
            let health = match enum_value::<pb::EndpointHealth>("endpoint health", e.health)? {
                pb::EndpointHealth::Unknown | pb::EndpointHealth::Healthy => Health::Healthy,
                pb::EndpointHealth::Unhealthy => Health::Unhealthy,
                pb::EndpointHealth::Draining => Health::Draining,
            };
            endpoints.push(Endpoint {
                address,
                expected_key: expected
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
                expected,
                weight: e.weight.max(1),
                health,
                in_flight: AtomicUsize::new(0),
                outlier: Mutex::new(OutlierState::default()),
            });
        }
        let outlier_detection = c.outlier_detection.as_ref().map(|o| OutlierDetection {
            consecutive_5xx: if o.consecutive_5xx == 0 {
                5
            } else {
                o.consecutive_5xx
            },
            interval: millis(o.interval_ms).unwrap_or(Duration::from_secs(10)),
            base_ejection: millis(o.base_ejection_ms).unwrap_or(Duration::from_secs(30)),
            max_ejection_percent: match o.max_ejection_percent {
                0 => 10,
                p => p.min(100),
            },
        });
        Ok(Self {
            name: c.name.clone(),
            service: c.service.clone(),
            namespace: c.namespace.clone(),
            port: c.port,
            protocol,
            endpoints,
            lb_policy,
            circuit_breaker: c.circuit_breaker.as_ref().map(|b| CircuitBreaker {
                max_connections: b.max_connections,
                max_pending_requests: b.max_pending_requests,
                max_requests: b.max_requests,
            }),
            outlier_detection,
            connect_timeout: millis(c.connect_timeout_ms).unwrap_or(Duration::from_secs(5)),
            expected_identities,
            upstream_tls,
            app_http2,
            in_flight: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
            connections: Default::default(),
            rr: AtomicU64::new(0),
        })
    }

    /// Picks an endpoint for the next try, avoiding `tried` when another one is available.
    /// Draining and ejected endpoints are never picked; unhealthy ones only when no healthy
    /// one is left.
    pub fn pick(&self, tried: &[usize], now: Instant) -> Option<usize> {
        let usable = |i: &usize| {
            let e = &self.endpoints[*i];
            e.health != Health::Draining && !e.is_ejected(now)
        };
        let all: Vec<usize> = (0..self.endpoints.len()).filter(usable).collect();
        let healthy: Vec<usize> = all
            .iter()
            .copied()
            .filter(|i| self.endpoints[*i].health == Health::Healthy)
            .collect();
        let pool = if healthy.is_empty() { all } else { healthy };
        let fresh: Vec<usize> = pool
            .iter()
            .copied()
            .filter(|i| !tried.contains(i))
            .collect();
        let candidates = if fresh.is_empty() { pool } else { fresh };
        if candidates.is_empty() {
            return None;
        }
        let total: u64 = candidates
            .iter()
            .map(|i| u64::from(self.endpoints[*i].weight))
            .sum();
        let by_weight = |mut n: u64| {
            for i in &candidates {
                let w = u64::from(self.endpoints[*i].weight);
                if n < w {
                    return *i;
                }
                n -= w;
            }
            candidates[0]
        };
        match self.lb_policy {
            LbPolicy::RoundRobin => {
                Some(by_weight(self.rr.fetch_add(1, Ordering::Relaxed) % total))
            }
            LbPolicy::LeastRequest => {
                let a = by_weight(fastrand::u64(..total));
                let b = by_weight(fastrand::u64(..total));
                let load = |i: usize| self.endpoints[i].in_flight.load(Ordering::Relaxed);
                Some(if load(b) < load(a) { b } else { a })
            }
        }
    }

    /// Records the outcome of a try on endpoint `i` for outlier detection; true when it
    /// ejected the endpoint.
    pub fn record(&self, i: usize, failed: bool, now: Instant) -> bool {
        let Some(od) = &self.outlier_detection else {
            return false;
        };
        let Some(e) = self.endpoints.get(i) else {
            return false;
        };
        let eject = {
            let mut s = e.outlier.lock().unwrap_or_else(|p| p.into_inner());
            if !failed {
                s.consecutive_failures = 0;
                return false;
            }
            s.consecutive_failures += 1;
            s.consecutive_failures >= od.consecutive_5xx && s.ejected_until.is_none_or(|t| t <= now)
        };
        if !eject {
            return false;
        }
        let ejected = self.endpoints.iter().filter(|e| e.is_ejected(now)).count();
        let allowed = (self.endpoints.len() * od.max_ejection_percent as usize) / 100;
        if ejected > 0 && ejected + 1 > allowed {
            return false;
        }
        let mut s = e.outlier.lock().unwrap_or_else(|p| p.into_inner());
        s.ejections += 1;
        s.consecutive_failures = 0;
        s.ejected_until = Some(now + od.base_ejection * s.ejections);
        tracing::warn!(cluster = %self.name, endpoint = %e.address, ejections = s.ejections,
            "endpoint ejected after consecutive failures");
        true
    }
}

impl Endpoint {
    pub fn is_ejected(&self, now: Instant) -> bool {
        self.outlier
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .ejected_until
            .is_some_and(|t| t > now)
    }
}

// ---------------------------------------------------------------------------------------------
// AuthorizationPolicy
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Allow,
    Deny,
}

#[derive(Debug)]
pub struct AuthorizationPolicy {
    pub name: String,
    pub action: Action,
    pub rules: Vec<Rule>,
}

#[derive(Debug)]
pub struct Rule {
    pub from: Vec<SourceMatch>,
    pub to: Vec<OperationMatch>,
}

#[derive(Debug)]
pub struct SourceMatch {
    pub principals: Vec<StrPattern>,
    pub namespaces: Vec<String>,
}

#[derive(Debug)]
pub struct OperationMatch {
    pub paths: Vec<StrPattern>,
    pub methods: Vec<String>,
    pub ports: Vec<u16>,
}

/// The pattern grammar meshd validated with (`*`, `x*`, `*x`, exact): one definition.
pub use mesh_proto::names::Pattern as StrPattern;

/// Each of `texts` as a pattern; a malformed one rejects the resource (NACK) with its text.
fn patterns(what: &str, texts: &[String]) -> Result<Vec<StrPattern>, Reason> {
    texts
        .iter()
        .map(|t| StrPattern::parse(t).map_err(|e| format!("{what}: {e}")))
        .collect()
}

/// Who is calling and what: what authorization looks at. `path` and `method` are `None` for a
/// TCP connection.
pub struct AuthzRequest<'a> {
    pub peer: Option<&'a SpiffeId>,
    pub port: u16,
    pub path: Option<&'a str>,
    pub method: Option<&'a str>,
}

impl AuthorizationPolicy {
    pub fn convert(p: &pb::AuthorizationPolicy) -> Result<Self, Reason> {
        let action = match enum_value::<pb::authorization_policy::Action>("action", p.action)? {
            pb::authorization_policy::Action::Allow => Action::Allow,
            pb::authorization_policy::Action::Deny => Action::Deny,
            pb::authorization_policy::Action::Unspecified => {
                return Err("action is unspecified".into());
            }
        };
        let mut rules = Vec::with_capacity(p.rules.len());
        for r in &p.rules {
            let from = r
                .from
                .iter()
                .map(|s| {
                    Ok(SourceMatch {
                        principals: patterns("principal", &s.principals)?,
                        namespaces: s.namespaces.clone(),
                    })
                })
                .collect::<Result<Vec<_>, Reason>>()?;
            let mut to = Vec::with_capacity(r.to.len());
            for o in &r.to {
                let ports = o
                    .ports
                    .iter()
                    .map(|p| {
                        u16::try_from(*p)
                            .ok()
                            .filter(|p| *p > 0)
                            .ok_or_else(|| format!("port {p} is not a port"))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                to.push(OperationMatch {
                    paths: patterns("path", &o.paths)?,
                    methods: o.methods.clone(),
                    ports,
                });
            }
            rules.push(Rule { from, to });
        }
        Ok(Self {
            name: p.name.clone(),
            action,
            rules,
        })
    }

    pub fn matches(&self, req: &AuthzRequest<'_>) -> bool {
        self.rules.iter().any(|r| r.matches(req))
    }
}

impl Rule {
    fn matches(&self, req: &AuthzRequest<'_>) -> bool {
        (self.from.is_empty() || self.from.iter().any(|s| s.matches(req)))
            && (self.to.is_empty() || self.to.iter().any(|o| o.matches(req)))
    }
}

impl SourceMatch {
    fn matches(&self, req: &AuthzRequest<'_>) -> bool {
        if self.principals.is_empty() && self.namespaces.is_empty() {
            return true;
        }
        // A plaintext caller has no identity: it never matches principals or namespaces.
        let Some(peer) = req.peer else {
            return false;
        };
        let id = peer.to_string();
        (self.principals.is_empty() || self.principals.iter().any(|p| p.matches(&id)))
            && (self.namespaces.is_empty() || self.namespaces.iter().any(|n| n == peer.namespace()))
    }
}

impl OperationMatch {
    fn matches(&self, req: &AuthzRequest<'_>) -> bool {
        let paths = self.paths.is_empty()
            || req
                .path
                .is_some_and(|path| self.paths.iter().any(|p| p.matches(path)));
        let methods = self.methods.is_empty()
            || req
                .method
                .is_some_and(|m| self.methods.iter().any(|x| x == m));
        let ports = self.ports.is_empty() || self.ports.contains(&req.port);
        paths && methods && ports
    }
}

/// The Istio combination: any DENY match denies; otherwise, with ALLOW policies, one must
/// match; with none, allow. Returns the deciding policy's name when denied.
pub fn authorize<'a>(
    policies: impl Iterator<Item = &'a AuthorizationPolicy> + Clone,
    req: &AuthzRequest<'_>,
) -> Result<(), String> {
    if let Some(p) = policies
        .clone()
        .find(|p| p.action == Action::Deny && p.matches(req))
    {
        return Err(format!("denied by {}", p.name));
    }
    let mut allows = policies.filter(|p| p.action == Action::Allow).peekable();
    if allows.peek().is_none() {
        return Ok(());
    }
    if allows.any(|p| p.matches(req)) {
        Ok(())
    } else {
        Err("no ALLOW policy matches".into())
    }
}

// ---------------------------------------------------------------------------------------------
// RateLimitPolicy
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateLimitScope {
    Workload,
    /// A route name; a name without `#` (`<ns>/<route>`) covers every rule of that route
    /// (`<ns>/<route>#<rule>`).
    Route(String),
}

#[derive(Debug)]
pub struct RateLimit {
    pub name: String,
    pub requests_per_second: u32,
    pub burst: u32,
    pub scope: RateLimitScope,
    bucket: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl RateLimit {
    pub fn convert(p: &pb::RateLimitPolicy) -> Result<Self, Reason> {
        if p.requests_per_second == 0 {
            return Err("requests_per_second must be greater than 0".into());
        }
        let scope = match enum_value::<pb::rate_limit_policy::Scope>("scope", p.scope)? {
            pb::rate_limit_policy::Scope::Unspecified => {
                return Err("scope is unspecified".into());
            }
            pb::rate_limit_policy::Scope::PerWorkload if !p.route.is_empty() => {
                return Err("route must be empty with scope PER_WORKLOAD".into());
            }
            pb::rate_limit_policy::Scope::PerWorkload => RateLimitScope::Workload,
            pb::rate_limit_policy::Scope::PerRoute if p.route.is_empty() => {
                return Err("route is required with scope PER_ROUTE".into());
            }
            pb::rate_limit_policy::Scope::PerRoute => RateLimitScope::Route(p.route.clone()),
        };
        let burst = if p.burst == 0 {
            p.requests_per_second
        } else {
            p.burst
        };
        Ok(Self {
            name: p.name.clone(),
            requests_per_second: p.requests_per_second,
            burst,
            scope,
            bucket: Mutex::new(Bucket {
                tokens: f64::from(burst),
                last: Instant::now(),
            }),
        })
    }

    /// Whether this limit covers a request handled by `route`.
    pub fn applies_to(&self, route: Option<&str>) -> bool {
        match &self.scope {
            RateLimitScope::Workload => true,
            RateLimitScope::Route(r) => route.is_some_and(|name| {
                name == r
                    || name
                        .strip_prefix(r.as_str())
                        .is_some_and(|rest| rest.starts_with('#'))
            }),
        }
    }

    /// Takes one token; when the bucket is empty, how long until one is back.
    pub fn try_acquire(&self, now: Instant) -> Result<(), Duration> {
        let mut b = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
        let rate = f64::from(self.requests_per_second);
        let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + elapsed * rate).min(f64::from(self.burst));
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / rate))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// TlsPolicy
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct TlsSettings {
    pub name: String,
    pub versions: Vec<&'static rustls::SupportedProtocolVersion>,
    pub cipher_suites: Vec<rustls::SupportedCipherSuite>,
    pub kx_groups: Vec<&'static dyn rustls::crypto::SupportedKxGroup>,
    pub inbound_mode: TlsMode,
    pub drain_grace: Option<Duration>,
}

impl Default for TlsSettings {
    fn default() -> Self {
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        Self {
            name: String::new(),
            versions: vec![&rustls::version::TLS12, &rustls::version::TLS13],
            cipher_suites: provider.cipher_suites,
            kx_groups: provider.kx_groups,
            inbound_mode: TlsMode::Strict,
            drain_grace: None,
        }
    }
}

impl TlsSettings {
    pub fn convert(p: &pb::TlsPolicy) -> Result<Self, Reason> {
        let version = |what: &str, v: i32, default: u8| -> Result<u8, Reason> {
            Ok(match enum_value::<pb::TlsVersion>(what, v)? {
                pb::TlsVersion::Unspecified => default,
                pb::TlsVersion::Tls12 => 2,
                pb::TlsVersion::Tls13 => 3,
            })
        };
        let min = version("min_version", p.min_version, 2)?;
        let max = version("max_version", p.max_version, 3)?;
        if max < min {
            return Err("max_version is lower than min_version".into());
        }
        let mut versions: Vec<&'static rustls::SupportedProtocolVersion> = Vec::new();
        if min <= 2 {
            versions.push(&rustls::version::TLS12);
        }
        if max >= 3 {
            versions.push(&rustls::version::TLS13);
        }
        let all = rustls::crypto::aws_lc_rs::ALL_CIPHER_SUITES;
        let cipher_suites = if p.cipher_suites.is_empty() {
            rustls::crypto::aws_lc_rs::default_provider().cipher_suites
        } else {
            let mut out = Vec::new();
            for name in &p.cipher_suites {
                let suite = all
                    .iter()
                    .find(|s| s.suite().as_str() == Some(name.as_str()))
                    .ok_or_else(|| format!("unknown cipher suite {name:?}"))?;
                out.push(*suite);
            }
            out
        };
        let usable = cipher_suites.iter().any(|s| {
            let v = match s {
                rustls::SupportedCipherSuite::Tls12(_) => 2,
                rustls::SupportedCipherSuite::Tls13(_) => 3,
            };
            (min..=max).contains(&v)
        });
        if !usable {
            return Err("no cipher suite is usable with the allowed TLS versions".into());
        }
        let kx_groups = if p.key_exchange_groups.is_empty() {
            rustls::crypto::aws_lc_rs::default_provider().kx_groups
        } else {
            let mut out = Vec::new();
            for name in &p.key_exchange_groups {
                let group = rustls::crypto::aws_lc_rs::ALL_KX_GROUPS
                    .iter()
                    .find(|g| g.name().as_str() == Some(name.as_str()))
                    .ok_or_else(|| format!("unknown key exchange group {name:?}"))?;
                out.push(*group);
            }
            out
        };
        let inbound_mode = match enum_value::<pb::TlsMode>("inbound_mode", p.inbound_mode)? {
            pb::TlsMode::Strict => TlsMode::Strict,
            pb::TlsMode::Permissive => TlsMode::Permissive,
            other => {
                return Err(format!(
                    "inbound_mode {} is not allowed (STRICT or PERMISSIVE)",
                    other.as_str_name()
                ));
            }
        };
        let settings = Self {
            name: p.name.clone(),
            versions,
            cipher_suites,
            kx_groups,
            inbound_mode,
            drain_grace: millis(p.drain_grace_period_ms),
        };
        // What rustls itself refuses (for example no key-exchange group for TLS 1.3).
        rustls::ServerConfig::builder_with_provider(settings.provider())
            .with_protocol_versions(&settings.versions)
            .map_err(|e| format!("rustls refuses this policy: {e}"))?;
        Ok(settings)
    }

    /// The crypto provider restricted to this policy's suites and groups.
    pub fn provider(&self) -> std::sync::Arc<rustls::crypto::CryptoProvider> {
        let mut p = rustls::crypto::aws_lc_rs::default_provider();
        p.cipher_suites = self.cipher_suites.clone();
        p.kx_groups = self.kx_groups.clone();
        std::sync::Arc::new(p)
    }
}

// ---------------------------------------------------------------------------------------------
// TrustBundle
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
pub struct TrustBundle {
    pub name: String,
    /// Empty when the control plane did not say (meshd sends one bundle for its one domain).
    pub trust_domain: String,
    pub bundle: mesh_ca::TrustBundle,
}

impl TrustBundle {
    pub fn convert(b: &pb::TrustBundle) -> Result<Self, Reason> {
        if !b.trust_domain.is_empty() {
            mesh_ca::TrustDomain::new(&b.trust_domain).map_err(|e| e.to_string())?;
        }
        if b.roots.is_empty() {
            return Err("the bundle holds no root".into());
        }
        let mut bundle = mesh_ca::TrustBundle::default();
        for (i, root) in b.roots.iter().enumerate() {
            let info =
                mesh_ca::CertInfo::from_pem(&root.pem).map_err(|e| format!("root {i}: {e}"))?;
            if !root.sha256_fingerprint.is_empty()
                && !root
                    .sha256_fingerprint
                    .eq_ignore_ascii_case(&info.fingerprint)
            {
                return Err(format!(
                    "root {i}: sha256_fingerprint {} does not match the certificate ({})",
                    root.sha256_fingerprint, info.fingerprint
                ));
            }
            bundle.add(info).map_err(|e| format!("root {i}: {e}"))?;
        }
        Ok(Self {
            name: b.name.clone(),
            trust_domain: b.trust_domain.clone(),
            bundle,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// IdentityDirective
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityDirective {
    pub name: String,
    pub reissue_before_unix: i64,
    pub reason: String,
    pub generation: u64,
    pub issued_before_unix: i64,
}

impl IdentityDirective {
    pub fn convert(d: &pb::IdentityDirective) -> Result<Self, Reason> {
        if d.reissue_before_unix < 0 || d.issued_before_unix < 0 {
            return Err("instants must not be negative".into());
        }
        Ok(Self {
            name: d.name.clone(),
            reissue_before_unix: d.reissue_before_unix,
            reason: d.reason.clone(),
            generation: d.generation,
            issued_before_unix: d.issued_before_unix,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Whole resources
// ---------------------------------------------------------------------------------------------

/// A resource's name and body checked against each other and against the response's type.
pub fn check_envelope(ty: mesh_proto::ResourceType, r: &pb::Resource) -> Result<&Body, Reason> {
    let body = r
        .body
        .as_ref()
        .ok_or_else(|| "the resource has no body".to_string())?;
    if body.resource_type() != ty {
        return Err(format!(
            "a {} in a response of type {}",
            body.resource_type(),
            ty
        ));
    }
    if body.name() != r.name {
        return Err(format!(
            "the body's name {:?} differs from the resource name",
            body.name()
        ));
    }
    if r.name.is_empty() {
        return Err("the resource has no name".into());
    }
    if r.version.is_empty() {
        return Err("the resource has no version".into());
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn view<'a>(method: &'a Method, path: &'a str, headers: &'a HeaderMap) -> RequestView<'a> {
        RequestView {
            method,
            path,
            headers,
        }
    }

    #[test]
    fn route_matches_path_headers_and_method() {
        let m = RouteMatch::convert(&pb::RouteMatch {
            path: Some(pb::route_match::Path::Regex("/items/[0-9]+".into())),
            headers: vec![pb::HeaderMatch {
                name: "x-canary".into(),
                r#match: Some(pb::header_match::Match::Present(true)),
            }],
            method: "GET".into(),
        })
        .unwrap();
        let mut h = HeaderMap::new();
        assert!(!m.matches(&view(&Method::GET, "/items/12", &h)));
        h.insert("x-canary", "1".parse().unwrap());
        assert!(m.matches(&view(&Method::GET, "/items/12", &h)));
        assert!(
            !m.matches(&view(&Method::GET, "/items/12/x", &h)),
            "anchored"
        );
        assert!(!m.matches(&view(&Method::POST, "/items/12", &h)));
    }

    #[test]
    fn a_bad_regex_or_retry_on_is_a_reason() {
        let bad = pb::RouteTable {
            name: "t".into(),
            virtual_hosts: vec![pb::VirtualHost {
                name: "v".into(),
                domains: vec!["a".into()],
                routes: vec![pb::Route {
                    name: "r1".into(),
                    r#match: Some(pb::RouteMatch {
                        path: Some(pb::route_match::Path::Regex("(".into())),
                        ..Default::default()
                    }),
                    backends: vec![pb::WeightedCluster {
                        cluster: "c".into(),
                        weight: 1,
                    }],
                    ..Default::default()
                }],
            }],
        };
        let e = RouteTable::convert(&bad).unwrap_err();
        assert!(
            e.starts_with("route \"r1\": path: regex \"(\" does not compile"),
            "{e}"
        );
        let retry = pb::RetryPolicy {
            retry_on: vec!["5xxx".into()],
            ..Default::default()
        };
        assert_eq!(
            RetryPolicy::convert(&retry).unwrap_err(),
            "unknown retry_on \"5xxx\""
        );
    }

    #[test]
    fn authorization_combines_like_istio() {
        let peer: SpiffeId = "spiffe://cluster.local/ns/a/sa/web".parse().unwrap();
        let allow_b = AuthorizationPolicy::convert(&pb::AuthorizationPolicy {
            name: "a/allow-b".into(),
            action: pb::authorization_policy::Action::Allow as i32,
            rules: vec![pb::AuthorizationRule {
                from: vec![pb::Source {
                    principals: vec!["*/sa/b".into()],
                    namespaces: vec![],
                }],
                to: vec![],
            }],
            ..Default::default()
        })
        .unwrap();
        let deny_admin = AuthorizationPolicy::convert(&pb::AuthorizationPolicy {
            name: "a/deny-admin".into(),
            action: pb::authorization_policy::Action::Deny as i32,
            rules: vec![pb::AuthorizationRule {
                from: vec![],
                to: vec![pb::Operation {
                    paths: vec!["/admin/*".into()],
                    ..Default::default()
                }],
            }],
            ..Default::default()
        })
        .unwrap();
        let req = |path| AuthzRequest {
            peer: Some(&peer),
            port: 15006,
            path: Some(path),
            method: Some("GET"),
        };
        assert!(authorize([&deny_admin].into_iter(), &req("/x")).is_ok());
        assert!(authorize([&deny_admin].into_iter(), &req("/admin/x")).is_err());
        assert!(authorize([&allow_b].into_iter(), &req("/x")).is_err());
        let other: SpiffeId = "spiffe://cluster.local/ns/a/sa/b".parse().unwrap();
        let ok = AuthzRequest {
            peer: Some(&other),
            ..req("/x")
        };
        assert!(authorize([&allow_b, &deny_admin].into_iter(), &ok).is_ok());
        let plaintext = AuthzRequest {
            peer: None,
            ..req("/x")
        };
        assert!(authorize([&allow_b].into_iter(), &plaintext).is_err());
    }

    #[test]
    fn token_bucket_refills_at_its_rate() {
        let rl = RateLimit::convert(&pb::RateLimitPolicy {
            name: "a/rl".into(),
            requests_per_second: 10,
            burst: 2,
            scope: pb::rate_limit_policy::Scope::PerWorkload as i32,
            ..Default::default()
        })
        .unwrap();
        let t0 = Instant::now();
        assert!(rl.try_acquire(t0).is_ok());
        assert!(rl.try_acquire(t0).is_ok());
        let wait = rl.try_acquire(t0).unwrap_err();
        assert!(wait <= Duration::from_millis(100), "{wait:?}");
        assert!(rl.try_acquire(t0 + Duration::from_millis(100)).is_ok());
        assert!(rl.applies_to(None));
    }

    #[test]
    fn per_route_limits_cover_every_rule_of_a_route() {
        let rl = RateLimit::convert(&pb::RateLimitPolicy {
            name: "a/rl".into(),
            requests_per_second: 1,
            scope: pb::rate_limit_policy::Scope::PerRoute as i32,
            route: "a/api".into(),
            ..Default::default()
        })
        .unwrap();
        assert!(rl.applies_to(Some("a/api#0")));
        assert!(rl.applies_to(Some("a/api")));
        assert!(!rl.applies_to(Some("a/api2#0")));
        assert!(!rl.applies_to(None));
    }

    #[test]
    fn round_robin_skips_draining_and_tried_endpoints() {
        let ep = |addr: &str, health: pb::EndpointHealth| pb::Endpoint {
            address: addr.into(),
            identity: "spiffe://cluster.local/ns/a/sa/b".into(),
            health: health as i32,
            ..Default::default()
        };
        let c = Cluster::convert(&pb::Cluster {
            name: "b.a:80".into(),
            protocol: pb::Protocol::Http as i32,
            endpoints: vec![
                ep("127.0.0.1:1", pb::EndpointHealth::Healthy),
                ep("127.0.0.1:2", pb::EndpointHealth::Draining),
                ep("127.0.0.1:3", pb::EndpointHealth::Healthy),
            ],
            ..Default::default()
        })
        .unwrap();
        let now = Instant::now();
        let picks: Vec<usize> = (0..4).map(|_| c.pick(&[], now).unwrap()).collect();
        assert_eq!(picks, vec![0, 2, 0, 2]);
        assert_eq!(c.pick(&[0], now), Some(2));
    }

    #[test]
    fn mutual_tls_needs_an_expected_identity_and_bounds_it() {
        let c = pb::Cluster {
            name: "c".into(),
            protocol: pb::Protocol::Http as i32,
            endpoints: vec![pb::Endpoint {
                address: "127.0.0.1:1".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(Cluster::convert(&c).unwrap_err().contains("no identity"));
        let star = pb::Cluster {
            expected_identities: vec!["*".into()],
            ..c.clone()
        };
        assert!(Cluster::convert(&star).unwrap_err().contains("lone"));
        let prefix = pb::Cluster {
            expected_identities: vec!["spiffe://cluster.local/ns/a/sa/*".into()],
            ..c
        };
        let ok = Cluster::convert(&prefix).unwrap();
        let id: SpiffeId = "spiffe://cluster.local/ns/a/sa/x".parse().unwrap();
        assert!(ok.endpoints[0].expected[0].matches(&id));
    }
}
