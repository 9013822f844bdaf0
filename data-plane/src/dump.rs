//! `mesh.v1` resources as JSON for `/config_dump` (prost types have no serde). Enum fields are
//! shown by their proto names.

use mesh_proto::v1::{self as pb, resource::Body};
use serde_json::{Value, json};

fn enum_name<T: TryFrom<i32>>(v: i32, name: impl Fn(T) -> &'static str) -> Value {
    match T::try_from(v) {
        Ok(t) => json!(name(t)),
        Err(_) => json!(v),
    }
}

fn selector(s: &Option<pb::WorkloadSelector>) -> Value {
    s.as_ref()
        .map(|s| json!({ "match_labels": s.match_labels }))
        .unwrap_or(Value::Null)
}

pub fn body(b: &Body) -> Value {
    match b {
        Body::Listener(l) => json!({
            "name": l.name,
            "address": l.address,
            "direction": enum_name(l.direction, |d: pb::listener::Direction| d.as_str_name()),
            "protocol": enum_name(l.protocol, |p: pb::Protocol| p.as_str_name()),
            "route_table": l.route_table,
            "default_cluster": l.default_cluster,
            "tls_mode": enum_name(l.tls_mode, |m: pb::TlsMode| m.as_str_name()),
        }),
        Body::RouteTable(t) => json!({
            "name": t.name,
            "virtual_hosts": t.virtual_hosts.iter().map(|vh| json!({
                "name": vh.name,
                "domains": vh.domains,
                "routes": vh.routes.iter().map(route).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        }),
        Body::Cluster(c) => json!({
            "name": c.name,
            "service": c.service,
            "namespace": c.namespace,
            "port": c.port,
            "protocol": enum_name(c.protocol, |p: pb::Protocol| p.as_str_name()),
            "endpoints": c.endpoints.iter().map(|e| json!({
                "address": e.address,
                "identity": e.identity,
                "labels": e.labels,
                "weight": e.weight,
                "health": enum_name(e.health, |h: pb::EndpointHealth| h.as_str_name()),
            })).collect::<Vec<_>>(),
            "lb_policy": enum_name(c.lb_policy, |p: pb::cluster::LbPolicy| p.as_str_name()),
            "circuit_breaker": c.circuit_breaker.as_ref().map(|b| json!({
                "max_connections": b.max_connections,
                "max_pending_requests": b.max_pending_requests,
                "max_requests": b.max_requests,
            })),
            "outlier_detection": c.outlier_detection.as_ref().map(|o| json!({
                "consecutive_5xx": o.consecutive_5xx,
                "interval_ms": o.interval_ms,
                "base_ejection_ms": o.base_ejection_ms,
                "max_ejection_percent": o.max_ejection_percent,
            })),
            "connect_timeout_ms": c.connect_timeout_ms,
            "expected_identities": c.expected_identities,
            "upstream_tls": enum_name(c.upstream_tls, |t: pb::cluster::UpstreamTls| t.as_str_name()),
            "app_protocol": enum_name(c.app_protocol, |t: pb::AppProtocol| t.as_str_name()),
        }),
        Body::AuthorizationPolicy(p) => json!({
            "name": p.name,
            "namespace": p.namespace,
            "selector": selector(&p.selector),
            "action": enum_name(p.action, |a: pb::authorization_policy::Action| a.as_str_name()),
            "rules": p.rules.iter().map(|r| json!({
                "from": r.from.iter().map(|s| json!({
                    "principals": s.principals, "namespaces": s.namespaces,
                })).collect::<Vec<_>>(),
                "to": r.to.iter().map(|o| json!({
                    "paths": o.paths, "methods": o.methods, "ports": o.ports,
                })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        }),
        Body::RateLimitPolicy(p) => json!({
            "name": p.name,
            "namespace": p.namespace,
            "selector": selector(&p.selector),
            "requests_per_second": p.requests_per_second,
            "burst": p.burst,
            "scope": enum_name(p.scope, |s: pb::rate_limit_policy::Scope| s.as_str_name()),
            "route": p.route,
        }),
        Body::TlsPolicy(p) => json!({
            "name": p.name,
            "min_version": enum_name(p.min_version, |v: pb::TlsVersion| v.as_str_name()),
            "max_version": enum_name(p.max_version, |v: pb::TlsVersion| v.as_str_name()),
            "cipher_suites": p.cipher_suites,
            "key_exchange_groups": p.key_exchange_groups,
            "inbound_mode": enum_name(p.inbound_mode, |m: pb::TlsMode| m.as_str_name()),
            "drain_grace_period_ms": p.drain_grace_period_ms,
        }),
        Body::TrustBundle(b) => json!({
            "name": b.name,
            "trust_domain": b.trust_domain,
            "roots": b.roots.iter().map(|r| json!({
                "sha256_fingerprint": r.sha256_fingerprint,
                "not_after_unix": r.not_after_unix,
                "pem": r.pem,
            })).collect::<Vec<_>>(),
        }),
        Body::IdentityDirective(d) => json!({
            "name": d.name,
            "reissue_before_unix": d.reissue_before_unix,
            "reason": d.reason,
            "generation": d.generation,
            "issued_before_unix": d.issued_before_unix,
        }),
    }
}

fn route(r: &pb::Route) -> Value {
    let m = r.r#match.as_ref().map(|m| {
        let path = match &m.path {
            None => Value::Null,
            Some(pb::route_match::Path::Exact(p)) => json!({ "exact": p }),
            Some(pb::route_match::Path::Prefix(p)) => json!({ "prefix": p }),
            Some(pb::route_match::Path::Regex(p)) => json!({ "regex": p }),
        };
        json!({
            "path": path,
            "headers": m.headers.iter().map(|h| {
                let cond = match &h.r#match {
                    None => Value::Null,
                    Some(pb::header_match::Match::Exact(v)) => json!({ "exact": v }),
                    Some(pb::header_match::Match::Regex(v)) => json!({ "regex": v }),
                    Some(pb::header_match::Match::Present(v)) => json!({ "present": v }),
                };
                json!({ "name": h.name, "match": cond })
            }).collect::<Vec<_>>(),
            "method": m.method,
        })
    });
    json!({
        "name": r.name,
        "match": m,
        "backends": r.backends.iter().map(|b| json!({ "cluster": b.cluster, "weight": b.weight })).collect::<Vec<_>>(),
        "retry": r.retry.as_ref().map(|p| json!({
            "attempts": p.attempts,
            "per_try_timeout_ms": p.per_try_timeout_ms,
            "retry_on": p.retry_on,
        })),
        "timeout_ms": r.timeout_ms,
    })
}
