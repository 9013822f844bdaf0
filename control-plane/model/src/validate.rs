//! Per-document checks, and the conversion of a checked spec into the internal types.
//!
//! Checking and converting are one pass: each function walks the spec, reports every problem
//! at its field path and returns the internal value only if it found none. `Document`
//! construction runs them to decide validity; `Mesh::build` runs them again to keep the values
//! (they are pure, so the second run cannot disagree).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use mesh_ca::{SpiffeId, SpiffeIdError, TrustDomain};

use super::document::{Document, Metadata, Spec};
use super::error::Report;
use super::names;
use super::resources::{
    Action, AppProtocol, AuthorizationPolicy, AuthzRule, Backend, CipherSuite, CircuitBreaker,
    Endpoint, HeaderCondition, HeaderMatch, HttpRoute, IdentityMatch, KeyExchangeGroup, ObjectRef,
    Operation, OutlierDetection, ParentRef, PathMatch, PathPattern, Pattern, Principal, Protocol,
    RateLimitPolicy, RateLimitScope, RateLimitTarget, RetryOn, RetryPolicy, RouteMatch, RouteRule,
    Selector, Service, ServicePort, Sidecar, SidecarEgress, Source, TlsMode, TlsPolicy, TlsVersion,
    UpstreamTls,
};
use super::spec::{
    AuthorizationPolicySpec, BackendSpec, EndpointSpec, HttpRouteRuleSpec, HttpRouteSpec,
    MatchSpec, RateLimitPolicySpec, SelectorSpec, ServiceSpec, SidecarSpec, TlsPolicySpec,
};

/// Runs the checks of one document, reporting into `r`.
pub(crate) fn document(r: &mut Report, doc: &Document) {
    let m = doc.metadata();
    match doc.spec() {
        Spec::Service(s) => {
            service(r, m, s);
        }
        Spec::HttpRoute(s) => {
            http_route(r, m, s);
        }
        Spec::AuthorizationPolicy(s) => {
            authorization_policy(r, m, s);
        }
        Spec::RateLimitPolicy(s) => {
            rate_limit_policy(r, m, s);
        }
        Spec::TlsPolicy(s) => {
            tls_policy(r, m, s);
        }
        Spec::Sidecar(s) => {
            sidecar(r, m, s);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Sidecar
// ---------------------------------------------------------------------------------------------

pub(crate) fn sidecar(r: &mut Report, m: &Metadata, s: &SidecarSpec) -> Option<Sidecar> {
    let mark = r.mark();
    let selector = selector(r, s.selector.as_ref());
    if s.egress.is_empty() {
        r.error(
            "spec.egress",
            "list at least one NAMESPACE/SERVICE the workloads reach, e.g. [\"./*\"] for their \
             own namespace",
        );
    }
    let mut egress = Vec::new();
    for (i, text) in s.egress.iter().enumerate() {
        let f = format!("spec.egress[{i}]");
        let Some((ns, svc)) = text.split_once('/') else {
            r.error(
                f,
                format!("{text:?}: expected NAMESPACE/SERVICE, e.g. \"./*\" or \"shop/reviews\""),
            );
            continue;
        };
        let namespace = match ns {
            "." => None,
            "*" => Some(None),
            name => match names::dns_label(name) {
                Ok(()) => Some(Some(name.to_string())),
                Err(e) => {
                    r.error(&f, format!("namespace {name:?}: {e} (or \".\" or \"*\")"));
                    continue;
                }
            },
        };
        let service = match svc {
            "*" => None,
            name => match names::dns_label(name) {
                Ok(()) => Some(name.to_string()),
                Err(e) => {
                    r.error(&f, format!("service {name:?}: {e} (or \"*\")"));
                    continue;
                }
            },
        };
        egress.push(SidecarEgress { namespace, service });
    }
    r.ok_since(
        mark,
        Sidecar {
            namespace: m.namespace.clone(),
            name: m.name.clone(),
            selector,
            egress,
        },
    )
}

// ---------------------------------------------------------------------------------------------
// Service
// ---------------------------------------------------------------------------------------------

/// Bounds an endpoint weight so that sums stay far from overflow on the wire.
const MAX_ENDPOINT_WEIGHT: i64 = 1_000_000;

pub(crate) fn service(r: &mut Report, m: &Metadata, s: &ServiceSpec) -> Option<Service> {
    let mark = r.mark();
    if s.ports.is_empty() {
        r.error("spec.ports", "at least one port is required");
    }
    let mut ports = Vec::new();
    let mut names_seen = HashMap::new();
    let mut numbers_seen = HashMap::new();
    for (i, p) in s.ports.iter().enumerate() {
        let f = format!("spec.ports[{i}]");
        if let Err(e) = names::dns_label(&p.name) {
            r.error(format!("{f}.name"), e);
        } else if let Some(j) = names_seen.insert(p.name.as_str(), i) {
            r.error(
                format!("{f}.name"),
                format!("{:?} is already the name of spec.ports[{j}]", p.name),
            );
        }
        let port = port(r, &format!("{f}.port"), p.port);
        if port != 0
            && let Some(j) = numbers_seen.insert(port, i)
        {
            r.error(
                format!("{f}.port"),
                format!("{port} is already spec.ports[{j}]"),
            );
        }
        if p.protocol == Protocol::Tcp && p.app_protocol.is_some() {
            r.error(
                format!("{f}.appProtocol"),
                "only an http port has an appProtocol (tcp is passed through as bytes)",
            );
        }
        let target_port = match p.target_port {
            Some(t) => self::port(r, &format!("{f}.targetPort"), t),
            None => port,
        };
        ports.push(ServicePort {
            name: p.name.clone(),
            port,
            target_port,
            protocol: p.protocol,
            app_protocol: p
                .app_protocol
                .unwrap_or_else(|| AppProtocol::from_port_name(&p.name)),
            inbound_tls: p.inbound_tls,
        });
    }
    labels(r, "spec.selector", &s.selector);

    let mut identities = Vec::new();
    for (i, text) in s.identities.iter().enumerate() {
        let f = format!("spec.identities[{i}]");
        match principal(text) {
            Ok(Principal::Exact(id)) => identities.push(IdentityMatch::Exact(id)),
            Ok(Principal::Prefix(p)) => identities.push(IdentityMatch::Prefix(p)),
            Ok(Principal::Any) => r.error(
                f,
                "a lone \"*\" is not allowed: the identity of upstream endpoints must be \
                 bounded (write a prefix such as \"spiffe://cluster.local/ns/shop/*\")",
            ),
            Ok(Principal::Suffix(_)) => r.error(
                f,
                format!("{text:?}: only a trailing '*' (a prefix) is allowed here"),
            ),
            Err(e) => r.error(f, e),
        }
    }
    let upstream_tls = s.upstream_tls.unwrap_or_default();

    let mut endpoints = Vec::new();
    let mut addresses_seen = HashMap::new();
    for (i, e) in s.endpoints.iter().enumerate() {
        if let Some(ep) = endpoint(r, i, e, upstream_tls, !identities.is_empty()) {
            if let Some(j) = addresses_seen.insert(ep.address, i) {
                r.error(
                    format!("spec.endpoints[{i}].address"),
                    format!("{} is already spec.endpoints[{j}]", ep.address),
                );
            }
            endpoints.push(ep);
        }
    }

    let circuit_breaker = s.circuit_breaker.as_ref().map(|cb| {
        let limit = |r: &mut Report, key: &str, v: Option<i64>| {
            v.map(|v| {
                let f = format!("spec.circuitBreaker.{key}");
                if v < 1 {
                    r.error(
                        f,
                        format!("must be at least 1 (got {v}); omit it for no limit"),
                    );
                    0
                } else {
                    u32::try_from(v).unwrap_or_else(|_| {
                        r.error(f, format!("must be at most {} (got {v})", u32::MAX));
                        0
                    })
                }
            })
        };
        CircuitBreaker {
            max_connections: limit(r, "maxConnections", cb.max_connections),
            max_pending_requests: limit(r, "maxPendingRequests", cb.max_pending_requests),
            max_requests: limit(r, "maxRequests", cb.max_requests),
        }
    });
    let outlier_detection = s.outlier_detection.as_ref().map(|o| {
        let d = OutlierDetection::default();
        let f = "spec.outlierDetection";
        OutlierDetection {
            consecutive_5xx: o.consecutive_5xx.map_or(d.consecutive_5xx, |v| {
                range(r, &format!("{f}.consecutive5xx"), v, 1, 1000)
            }),
            interval: o
                .interval
                .as_deref()
                .map_or(d.interval, |t| duration(r, &format!("{f}.interval"), t)),
            base_ejection_time: o
                .base_ejection_time
                .as_deref()
                .map_or(d.base_ejection_time, |t| {
                    duration(r, &format!("{f}.baseEjectionTime"), t)
                }),
            max_ejection_percent: o.max_ejection_percent.map_or(d.max_ejection_percent, |v| {
                range(r, &format!("{f}.maxEjectionPercent"), v, 1, 100)
            }),
        }
    });
    let connect_timeout = s
        .connect_timeout
        .as_deref()
        .map_or(Service::DEFAULT_CONNECT_TIMEOUT, |t| {
            duration(r, "spec.connectTimeout", t)
        });

    r.ok_since(
        mark,
        Service {
            namespace: m.namespace.clone(),
            name: m.name.clone(),
            labels: m.labels.clone(),
            ports,
            selector: s.selector.clone(),
            endpoints,
            identities,
            upstream_tls,
            lb_policy: s.lb_policy.unwrap_or_default(),
            circuit_breaker,
            outlier_detection,
            connect_timeout,
        },
    )
}

fn endpoint(
    r: &mut Report,
    i: usize,
    e: &EndpointSpec,
    upstream_tls: UpstreamTls,
    has_identities: bool,
) -> Option<Endpoint> {
    let mark = r.mark();
    let f = format!("spec.endpoints[{i}]");
    let address = e.address.parse::<SocketAddr>().map_err(|_| {
        r.error(
            format!("{f}.address"),
            format!(
                "{:?} is not an ip:port address (IPv6 in brackets, e.g. \"[::1]:8080\"; \
                 host names are not resolved)",
                e.address
            ),
        );
    });
    if let Ok(a) = address
        && a.port() == 0
    {
        r.error(
            format!("{f}.address"),
            format!("{a}: port 0 is not allowed"),
        );
    }
    let identity = e.identity.as_deref().and_then(|text| {
        spiffe_id(text)
            .map_err(|msg| r.error(format!("{f}.identity"), msg))
            .ok()
    });
    if e.identity.is_none() && upstream_tls == UpstreamTls::Mutual && !has_identities {
        r.error(
            format!("{f}.identity"),
            "is required: with upstreamTls MUTUAL (the default) a client must know which \
             identity to expect; set it here or list spec.identities",
        );
    }
    labels(r, &format!("{f}.labels"), &e.labels);
    let weight = e.weight.map_or(1, |w| {
        range(r, &format!("{f}.weight"), w, 1, MAX_ENDPOINT_WEIGHT)
    });
    let address = address.ok()?;
    r.ok_since(
        mark,
        Endpoint {
            address,
            identity,
            labels: e.labels.clone(),
            weight,
        },
    )
}

// ---------------------------------------------------------------------------------------------
// HTTPRoute
// ---------------------------------------------------------------------------------------------

/// More retries than this multiply load on a failing service instead of helping.
const MAX_RETRY_ATTEMPTS: i64 = 10;

/// Without `retryOn`: close to Istio's default conditions, which are safe to retry.
const DEFAULT_RETRY_ON: [RetryOn; 3] = [
    RetryOn::ConnectFailure,
    RetryOn::Reset,
    RetryOn::GatewayError,
];

pub(crate) fn http_route(r: &mut Report, m: &Metadata, s: &HttpRouteSpec) -> Option<HttpRoute> {
    let mark = r.mark();
    if s.hostnames.is_empty() && s.parent_refs.is_empty() {
        r.error(
            "spec",
            "set hostnames, parentRefs or both: a route must say which traffic it takes",
        );
    }
    let mut hostnames = Vec::new();
    for (i, h) in s.hostnames.iter().enumerate() {
        let f = format!("spec.hostnames[{i}]");
        if let Err(e) = names::hostname(h) {
            r.error(f, e);
        } else if hostnames.contains(h) {
            r.error(f, format!("{h:?} is listed twice"));
        } else {
            hostnames.push(h.clone());
        }
    }
    let mut parents = Vec::new();
    for (i, p) in s.parent_refs.iter().enumerate() {
        let f = format!("spec.parentRefs[{i}]");
        let service = object_ref(r, &f, "name", m, &p.name, p.namespace.as_deref());
        let port = p.port.map(|v| port(r, &format!("{f}.port"), v));
        parents.push(ParentRef { service, port });
    }
    if s.rules.is_empty() {
        r.error("spec.rules", "at least one rule is required");
    }
    let mut rules = Vec::new();
    let mut rule_names = HashMap::new();
    for (i, rule) in s.rules.iter().enumerate() {
        if let Some(name) = &rule.name {
            let f = format!("spec.rules[{i}].name");
            if let Err(e) = names::dns_label(name) {
                r.error(f, e);
            } else if let Some(j) = rule_names.insert(name.as_str(), i) {
                r.error(
                    f,
                    format!("{name:?} is already the name of spec.rules[{j}]"),
                );
            }
        }
        rules.push(route_rule(r, m, i, rule));
    }
    r.ok_since(
        mark,
        HttpRoute {
            namespace: m.namespace.clone(),
            name: m.name.clone(),
            hostnames,
            parents,
            rules,
        },
    )
}

fn route_rule(r: &mut Report, m: &Metadata, i: usize, rule: &HttpRouteRuleSpec) -> RouteRule {
    let f = format!("spec.rules[{i}]");
    let matches = rule
        .matches
        .iter()
        .enumerate()
        .map(|(j, mt)| route_match(r, &format!("{f}.matches[{j}]"), mt))
        .collect();

    if rule.backends.is_empty() {
        r.error(format!("{f}.backends"), "at least one backend is required");
    }
    let backends: Vec<Backend> = rule
        .backends
        .iter()
        .enumerate()
        .map(|(j, b)| backend(r, m, &format!("{f}.backends[{j}]"), b))
        .collect();
    let all_zero = rule.backends.iter().all(|b| b.weight == Some(0));
    if !rule.backends.is_empty() && all_zero {
        r.error(
            format!("{f}.backends"),
            "weights must not all be 0: no request could be routed",
        );
    }

    let retry = rule.retries.as_ref().map(|rt| {
        let attempts = if rt.attempts == 0 {
            r.error(
                format!("{f}.retries.attempts"),
                "must be 1..=10 (got 0); omit retries for none",
            );
            0
        } else {
            range(
                r,
                &format!("{f}.retries.attempts"),
                rt.attempts,
                1,
                MAX_RETRY_ATTEMPTS,
            )
        };
        let per_try_timeout = rt
            .per_try_timeout
            .as_deref()
            .map(|t| duration(r, &format!("{f}.retries.perTryTimeout"), t));
        let mut retry_on: Vec<RetryOn> = Vec::new();
        for on in &rt.retry_on {
            if !retry_on.contains(on) {
                retry_on.push(*on);
            }
        }
        if retry_on.is_empty() {
            retry_on = DEFAULT_RETRY_ON.to_vec();
        }
        RetryPolicy {
            attempts,
            per_try_timeout,
            retry_on,
        }
    });
    let timeout = rule
        .timeout
        .as_deref()
        .map(|t| duration(r, &format!("{f}.timeout"), t));
    RouteRule {
        name: rule.name.clone(),
        matches,
        backends,
        retry,
        timeout,
    }
}

fn route_match(r: &mut Report, f: &str, mt: &MatchSpec) -> RouteMatch {
    let path = mt.path.as_ref().and_then(|p| {
        let pf = format!("{f}.path");
        match (&p.exact, &p.prefix, &p.regex) {
            (Some(e), None, None) => {
                request_path(r, &format!("{pf}.exact"), e).then(|| PathMatch::Exact(e.clone()))
            }
            (None, Some(p), None) => {
                request_path(r, &format!("{pf}.prefix"), p).then(|| PathMatch::Prefix(p.clone()))
            }
            (None, None, Some(re)) => Pattern::new(re)
                .map(PathMatch::Regex)
                .map_err(|e| r.error(format!("{pf}.regex"), e))
                .ok(),
            _ => {
                r.error(pf, "set exactly one of exact, prefix or regex");
                None
            }
        }
    });
    let mut headers = Vec::new();
    for (k, h) in mt.headers.iter().enumerate() {
        let hf = format!("{f}.headers[{k}]");
        if let Err(e) = names::header_name(&h.name) {
            r.error(format!("{hf}.name"), e);
        }
        let condition = match (&h.exact, &h.regex, h.present) {
            (Some(e), None, None) => Some(HeaderCondition::Exact(e.clone())),
            (None, Some(re), None) => Pattern::new(re)
                .map(HeaderCondition::Regex)
                .map_err(|e| r.error(format!("{hf}.regex"), e))
                .ok(),
            (None, None, Some(p)) => Some(HeaderCondition::Present(p)),
            _ => {
                r.error(hf, "set exactly one of exact, regex or present");
                None
            }
        };
        if let Some(condition) = condition {
            headers.push(HeaderMatch {
                // Header names are case-insensitive; the wire wants them lower case.
                name: h.name.to_ascii_lowercase(),
                condition,
            });
        }
    }
    if let Some(method) = &mt.method
        && let Err(e) = names::http_method(method)
    {
        r.error(format!("{f}.method"), e);
    }
    RouteMatch {
        path,
        headers,
        method: mt.method.clone(),
    }
}

/// Paths that requests carry start with `/`; anything else would never match.
fn request_path(r: &mut Report, f: &str, path: &str) -> bool {
    if !path.starts_with('/') {
        r.error(f, format!("{path:?} must start with \"/\""));
        return false;
    }
    if path.contains(['?', '#']) {
        r.error(
            f,
            format!("{path:?}: the path is compared without the query string or fragment"),
        );
        return false;
    }
    true
}

fn backend(r: &mut Report, m: &Metadata, f: &str, b: &BackendSpec) -> Backend {
    let service = object_ref(r, f, "service", m, &b.service, b.namespace.as_deref());
    let port = port(r, &format!("{f}.port"), b.port);
    let weight = b
        .weight
        .map_or(1, |w| range(r, &format!("{f}.weight"), w, 0, 100));
    Backend {
        service,
        port,
        weight,
    }
}

/// A reference `name` (+ optional `namespace`, default the document's) to another object.
fn object_ref(
    r: &mut Report,
    f: &str,
    name_key: &str,
    m: &Metadata,
    name: &str,
    namespace: Option<&str>,
) -> ObjectRef {
    if let Err(e) = names::dns_label(name) {
        r.error(format!("{f}.{name_key}"), e);
    }
    if let Some(ns) = namespace
        && let Err(e) = names::dns_label(ns)
    {
        r.error(format!("{f}.namespace"), e);
    }
    ObjectRef::new(namespace.unwrap_or(&m.namespace), name)
}

// ---------------------------------------------------------------------------------------------
// AuthorizationPolicy
// ---------------------------------------------------------------------------------------------

pub(crate) fn authorization_policy(
    r: &mut Report,
    m: &Metadata,
    s: &AuthorizationPolicySpec,
) -> Option<AuthorizationPolicy> {
    let mark = r.mark();
    let selector = selector(r, s.selector.as_ref());
    if s.action == Action::Deny && s.rules.is_empty() {
        r.error(
            "spec.rules",
            "a DENY policy needs at least one rule (with none it would deny nothing)",
        );
    }
    let mut rules = Vec::new();
    for (i, rule) in s.rules.iter().enumerate() {
        let f = format!("spec.rules[{i}]");
        let mut from = Vec::new();
        for (j, src) in rule.from.iter().enumerate() {
            let sf = format!("{f}.from[{j}]");
            if src.principals.is_empty() && src.namespaces.is_empty() {
                r.error(
                    &sf,
                    "set principals or namespaces (an empty entry is a mistake)",
                );
            }
            let mut principals = Vec::new();
            for (k, p) in src.principals.iter().enumerate() {
                match principal(p) {
                    Ok(p) => principals.push(p),
                    Err(e) => r.error(format!("{sf}.principals[{k}]"), e),
                }
            }
            for (k, ns) in src.namespaces.iter().enumerate() {
                if let Err(e) = names::dns_label(ns) {
                    r.error(format!("{sf}.namespaces[{k}]"), e);
                }
            }
            from.push(Source {
                principals,
                namespaces: src.namespaces.clone(),
            });
        }
        let mut to = Vec::new();
        for (j, op) in rule.to.iter().enumerate() {
            let of = format!("{f}.to[{j}]");
            if op.paths.is_empty() && op.methods.is_empty() && op.ports.is_empty() {
                r.error(
                    &of,
                    "set paths, methods or ports (an empty entry is a mistake)",
                );
            }
            let mut paths = Vec::new();
            for (k, p) in op.paths.iter().enumerate() {
                match path_pattern(p) {
                    Ok(p) => paths.push(p),
                    Err(e) => r.error(format!("{of}.paths[{k}]"), e),
                }
            }
            for (k, method) in op.methods.iter().enumerate() {
                if let Err(e) = names::http_method(method) {
                    r.error(format!("{of}.methods[{k}]"), e);
                }
            }
            let ports = op
                .ports
                .iter()
                .enumerate()
                .map(|(k, p)| port(r, &format!("{of}.ports[{k}]"), *p))
                .collect();
            to.push(Operation {
                paths,
                methods: op.methods.clone(),
                ports,
            });
        }
        rules.push(AuthzRule { from, to });
    }
    r.ok_since(
        mark,
        AuthorizationPolicy {
            namespace: m.namespace.clone(),
            name: m.name.clone(),
            selector,
            action: s.action,
            rules,
        },
    )
}

fn path_pattern(text: &str) -> Result<PathPattern, String> {
    if text == "*" {
        return Ok(PathPattern::Any);
    }
    wildcard_placement(text)?;
    if let Some(prefix) = text.strip_suffix('*') {
        if !prefix.starts_with('/') {
            return Err(format!("{text:?} must start with \"/\""));
        }
        return Ok(PathPattern::Prefix(prefix.to_string()));
    }
    if let Some(suffix) = text.strip_prefix('*') {
        return Ok(PathPattern::Suffix(suffix.to_string()));
    }
    if !text.starts_with('/') {
        return Err(format!(
            "{text:?} must start with \"/\" (or \"*\" for a suffix match)"
        ));
    }
    Ok(PathPattern::Exact(text.to_string()))
}

/// `*` alone, or once at the start or the end: the grammar the sidecars read
/// ([`mesh_proto::names::Pattern`]).
fn wildcard_placement(text: &str) -> Result<(), String> {
    mesh_proto::names::Pattern::parse(text)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// A principal: `*`, a SPIFFE ID, a SPIFFE ID prefix ending in `*`, or a suffix starting with
/// `*/`.
fn principal(text: &str) -> Result<Principal, String> {
    if text == "*" {
        return Ok(Principal::Any);
    }
    wildcard_placement(text)?;
    if let Some(prefix) = text.strip_suffix('*') {
        let Some(rest) = prefix.strip_prefix("spiffe://") else {
            return Err(format!(
                "{text:?}: a prefix match must start with \"spiffe://\" \
                 (e.g. \"spiffe://cluster.local/ns/shop/*\")"
            ));
        };
        if let Some((td, _)) = rest.split_once('/') {
            TrustDomain::new(td).map_err(|e| format!("{text:?}: {e}"))?;
        }
        if !rest
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"-._/".contains(&c))
        {
            return Err(format!(
                "{text:?} contains characters a SPIFFE ID cannot hold"
            ));
        }
        return Ok(Principal::Prefix(prefix.to_string()));
    }
    if let Some(suffix) = text.strip_prefix('*') {
        if !suffix.starts_with('/') {
            return Err(format!(
                "{text:?}: a suffix match must start with \"*/\" (e.g. \"*/sa/frontend\")"
            ));
        }
        return Ok(Principal::Suffix(suffix.to_string()));
    }
    spiffe_id(text).map(Principal::Exact)
}

fn spiffe_id(text: &str) -> Result<SpiffeId, String> {
    text.parse::<SpiffeId>().map_err(|e| match e {
        // Istio writes principals without the scheme; say what to write instead.
        SpiffeIdError::Scheme(_) if !text.contains("://") && text.contains("/ns/") => {
            format!("{e}; write \"spiffe://{text}\"")
        }
        SpiffeIdError::Scheme(_) => format!(
            "{e}: identities are SPIFFE IDs \
             (spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>)"
        ),
        other => other.to_string(),
    })
}

fn selector(r: &mut Report, s: Option<&SelectorSpec>) -> Selector {
    let Some(s) = s else {
        return Selector::All;
    };
    labels(r, "spec.selector.matchLabels", &s.match_labels);
    match (&s.service, s.match_labels.is_empty()) {
        (Some(_), false) => {
            r.error("spec.selector", "set matchLabels or service, not both");
            Selector::All
        }
        (Some(svc), true) => {
            if let Err(e) = names::dns_label(svc) {
                r.error("spec.selector.service", e);
            }
            Selector::Service(svc.clone())
        }
        (None, false) => Selector::MatchLabels(s.match_labels.clone()),
        (None, true) => Selector::All,
    }
}

// ---------------------------------------------------------------------------------------------
// RateLimitPolicy
// ---------------------------------------------------------------------------------------------

/// One sidecar does not usefully admit more; a larger number is a typo.
const MAX_REQUESTS_PER_SECOND: i64 = 1_000_000;

pub(crate) fn rate_limit_policy(
    r: &mut Report,
    m: &Metadata,
    s: &RateLimitPolicySpec,
) -> Option<RateLimitPolicy> {
    let mark = r.mark();
    let selector = selector(r, s.selector.as_ref());
    let requests_per_second = range(
        r,
        "spec.requestsPerSecond",
        s.requests_per_second,
        1,
        MAX_REQUESTS_PER_SECOND,
    );
    let burst = s.burst.map_or(requests_per_second, |b| {
        range(r, "spec.burst", b, 1, MAX_REQUESTS_PER_SECOND * 10)
    });
    let target = match (s.scope.unwrap_or_default(), &s.route) {
        (RateLimitScope::Workload, route) => {
            if route.is_some() {
                r.error(
                    "spec.route",
                    "must not be set with scope workload (set scope: route to limit one route)",
                );
            }
            if s.rule.is_some() {
                r.error("spec.rule", "is only allowed with scope route");
            }
            RateLimitTarget::Workload
        }
        (RateLimitScope::Route, None) => {
            r.error(
                "spec.route",
                "is required with scope route (the name of an HTTPRoute in this namespace)",
            );
            RateLimitTarget::Workload
        }
        (RateLimitScope::Route, Some(route)) => {
            if let Err(e) = names::dns_label(route) {
                r.error("spec.route", e);
            }
            if let Some(rule) = &s.rule
                && let Err(e) = names::dns_label(rule)
            {
                r.error("spec.rule", e);
            }
            RateLimitTarget::Route {
                route: ObjectRef::new(&m.namespace, route),
                rule: s.rule.clone(),
            }
        }
    };
    r.ok_since(
        mark,
        RateLimitPolicy {
            namespace: m.namespace.clone(),
            name: m.name.clone(),
            selector,
            requests_per_second,
            burst,
            target,
        },
    )
}

// ---------------------------------------------------------------------------------------------
// TlsPolicy
// ---------------------------------------------------------------------------------------------

pub(crate) fn tls_policy(r: &mut Report, m: &Metadata, s: &TlsPolicySpec) -> Option<TlsPolicy> {
    let mark = r.mark();
    let selector = selector(r, s.selector.as_ref());
    let mut version = |key: &str, text: Option<&str>, default| {
        text.map_or(Some(default), |t| {
            TlsVersion::parse(t)
                .map_err(|e| r.error(format!("spec.{key}"), e))
                .ok()
        })
    };
    let min = version("minVersion", s.min_version.as_deref(), TlsVersion::Tls12);
    let max = version("maxVersion", s.max_version.as_deref(), TlsVersion::Tls13);
    if let (Some(min), Some(max)) = (min, max)
        && max < min
    {
        r.error(
            "spec.maxVersion",
            format!(
                "{:?} is lower than minVersion {:?}",
                max.as_str(),
                min.as_str()
            ),
        );
    }

    let mut cipher_suites = Vec::new();
    for (i, name) in s.cipher_suites.iter().enumerate() {
        let f = format!("spec.cipherSuites[{i}]");
        match CipherSuite::from_name(name) {
            Some(c) if cipher_suites.contains(&c) => {
                r.error(f, format!("{name:?} is listed twice"));
            }
            Some(c) => cipher_suites.push(c),
            None => r.error(
                f,
                format!(
                    "unknown cipher suite {name:?}; known: {}",
                    CipherSuite::ALL.map(CipherSuite::name).join(", ")
                ),
            ),
        }
    }
    if let (Some(min), Some(max)) = (min, max)
        && min <= max
        && !cipher_suites.is_empty()
        && cipher_suites.len() == s.cipher_suites.len()
    {
        let enabled = |c: &CipherSuite| (min..=max).contains(&c.version());
        if !cipher_suites
            .iter()
            .any(|c| enabled(c) && c.usable_with_ecdsa())
        {
            let none_enabled = !cipher_suites.iter().any(enabled);
            let message = match (min, max) {
                (TlsVersion::Tls13, TlsVersion::Tls13) if none_enabled => {
                    "a TLS 1.3-only policy needs at least one TLS13_* suite; \
                     these are all TLS 1.2 suites"
                }
                (TlsVersion::Tls12, TlsVersion::Tls12) if none_enabled => {
                    "a TLS 1.2-only policy needs at least one TLS_ECDHE_ECDSA_* suite; \
                     these are all TLS 1.3 suites"
                }
                _ => {
                    "every suite these versions allow is an RSA suite, which the mesh's ECDSA \
                     certificates cannot use; add a TLS13_* or TLS_ECDHE_ECDSA_* suite"
                }
            };
            r.error("spec.cipherSuites", message);
        }
    }

    let mut key_exchange_groups = Vec::new();
    for (i, name) in s.key_exchange_groups.iter().enumerate() {
        let f = format!("spec.keyExchangeGroups[{i}]");
        match KeyExchangeGroup::from_name(name) {
            Some(g) if key_exchange_groups.contains(&g) => {
                r.error(f, format!("{name:?} is listed twice"));
            }
            Some(g) => key_exchange_groups.push(g),
            None => r.error(
                f,
                format!(
                    "unknown key-exchange group {name:?}; known: {}",
                    KeyExchangeGroup::ALL.map(KeyExchangeGroup::name).join(", ")
                ),
            ),
        }
    }
    if max == Some(TlsVersion::Tls12)
        && !key_exchange_groups.is_empty()
        && !key_exchange_groups.iter().any(|g| g.supports_tls12())
    {
        r.error(
            "spec.keyExchangeGroups",
            "X25519MLKEM768 needs TLS 1.3; a policy with maxVersion \"1.2\" needs another group",
        );
    }

    let inbound_mode = s.inbound_mode.unwrap_or_default();
    if inbound_mode == TlsMode::Disabled {
        r.error(
            "spec.inboundMode",
            "DISABLED is not allowed here (it would turn mTLS off for every port): use STRICT \
             or PERMISSIVE, or set inboundTls: DISABLED on one Service port",
        );
    }
    let drain_grace_period = s
        .drain_grace_period
        .as_deref()
        .map_or(TlsPolicy::DEFAULT_DRAIN_GRACE_PERIOD, |t| {
            duration(r, "spec.drainGracePeriod", t)
        });

    let rollout_percent = match s.rollout_percent {
        None | Some(100) => None,
        Some(p @ 1..=99) => Some(p),
        Some(p) => {
            r.error(
                "spec.rolloutPercent",
                format!("must be 1..=100 (got {p}); delete the policy to roll it back entirely"),
            );
            None
        }
    };

    let (min_version, max_version) = (min?, max?);
    r.ok_since(
        mark,
        TlsPolicy {
            namespace: m.namespace.clone(),
            name: m.name.clone(),
            selector,
            rollout_percent,
            min_version,
            max_version,
            cipher_suites,
            key_exchange_groups,
            inbound_mode,
            drain_grace_period,
        },
    )
}

// ---------------------------------------------------------------------------------------------
// Scalars
// ---------------------------------------------------------------------------------------------

fn port(r: &mut Report, f: &str, v: i64) -> u16 {
    match u16::try_from(v) {
        Ok(p) if p > 0 => p,
        _ => {
            r.error(f, format!("must be 1..=65535 (got {v})"));
            0
        }
    }
}

/// `v` in `lo..=hi` (both within `u32`), else an error and 0.
fn range(r: &mut Report, f: &str, v: i64, lo: i64, hi: i64) -> u32 {
    if (lo..=hi).contains(&v) {
        u32::try_from(v).unwrap_or(0)
    } else {
        r.error(f, format!("must be {lo}..={hi} (got {v})"));
        0
    }
}

/// Longer durations than this are typos (and would overflow milliseconds on some encoders).
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// A humantime duration (`"250ms"`, `"2s"`, `"1m 30s"`): positive, whole milliseconds (the
/// wire carries milliseconds, so `"500us"` would silently become "no timeout"), at most a year.
fn duration(r: &mut Report, f: &str, text: &str) -> Duration {
    let hint = "write it like \"250ms\", \"2s\" or \"1m 30s\"";
    match humantime::parse_duration(text) {
        _ if text.trim_start().starts_with('-') => {
            r.error(f, format!("{text:?} must not be negative"));
        }
        Ok(d) if d.is_zero() => r.error(f, format!("{text:?} must be greater than 0")),
        Ok(d) if d.subsec_nanos() % 1_000_000 != 0 => r.error(
            f,
            format!("{text:?} must be a whole number of milliseconds"),
        ),
        Ok(d) if d > MAX_DURATION => r.error(f, format!("{text:?} is longer than a year")),
        Ok(d) => return d,
        Err(e) => r.error(f, format!("invalid duration {text:?} ({e}); {hint}")),
    }
    Duration::ZERO
}

fn labels(r: &mut Report, f: &str, labels: &BTreeMap<String, String>) {
    for (k, v) in labels {
        if let Err(e) = names::label_key(k).and_then(|()| names::label_value(v)) {
            r.error(format!("{f}.{k}"), e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dur(text: &str) -> Result<Duration, String> {
        let mut r = Report::new("T x/y");
        let d = duration(&mut r, "f", text);
        let e = r.into_errors();
        if e.is_empty() {
            Ok(d)
        } else {
            Err(e.to_string())
        }
    }

    #[test]
    fn durations_are_humantime_positive_whole_milliseconds() {
        assert_eq!(dur("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(dur("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(dur("1m 30s"), Ok(Duration::from_secs(90)));
        assert_eq!(dur("1m30s"), Ok(Duration::from_secs(90)));
        assert!(dur("0s").unwrap_err().contains("greater than 0"));
        assert!(dur("-1s").unwrap_err().contains("negative"));
        assert!(
            dur("500us")
                .unwrap_err()
                .contains("whole number of milliseconds")
        );
        assert!(dur("5 parsecs").unwrap_err().contains("invalid duration"));
        assert!(dur("2").unwrap_err().contains("invalid duration"));
        assert!(dur("2y").unwrap_err().contains("longer than a year"));
    }

    #[test]
    fn principals_accept_ids_wildcards_and_refuse_other_schemes() {
        assert_eq!(principal("*"), Ok(Principal::Any));
        assert!(matches!(
            principal("spiffe://cluster.local/ns/shop/sa/frontend"),
            Ok(Principal::Exact(_))
        ));
        assert!(matches!(
            principal("spiffe://cluster.local/ns/shop/*"),
            Ok(Principal::Prefix(p)) if p == "spiffe://cluster.local/ns/shop/"
        ));
        assert!(matches!(
            principal("*/sa/frontend"),
            Ok(Principal::Suffix(_))
        ));
        assert!(
            principal("https://x/ns/a/sa/b")
                .unwrap_err()
                .contains("spiffe://")
        );
        let istio = principal("cluster.local/ns/shop/sa/frontend").unwrap_err();
        assert!(
            istio.contains("write \"spiffe://cluster.local/ns/shop/sa/frontend\""),
            "{istio}"
        );
        assert!(principal("spiffe://td/ns/*/sa/x").is_err());
        assert!(principal("spiffe://TD/*").is_err());
        assert!(principal("sa/frontend*").is_err());
    }

    #[test]
    fn authorization_paths() {
        assert_eq!(path_pattern("*"), Ok(PathPattern::Any));
        assert_eq!(
            path_pattern("/api/*"),
            Ok(PathPattern::Prefix("/api/".into()))
        );
        assert_eq!(
            path_pattern("*.json"),
            Ok(PathPattern::Suffix(".json".into()))
        );
        assert_eq!(path_pattern("/a"), Ok(PathPattern::Exact("/a".into())));
        assert!(path_pattern("api").is_err());
        assert!(path_pattern("/a/*/b").is_err());
    }
}
