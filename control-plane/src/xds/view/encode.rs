//! How each model object becomes its `mesh.v1` resource: a service port's Cluster (with its
//! live endpoints) and RouteTable, routes, policies. [`super::build`] decides which a scope
//! holds; this module only encodes.

use super::{Inputs, LiveEndpoint, ServiceView, serves, service_port_name};
use crate::model;
use mesh_proto::v1::{self as pb};
use std::collections::{BTreeMap, HashMap};

pub(super) fn cluster(
    svc: &ServiceView<'_>,
    by_namespace: &HashMap<&str, Vec<&LiveEndpoint>>,
    port: u16,
    proto: pb::Protocol,
    name: &str,
) -> pb::Cluster {
    let mut endpoints: Vec<pb::Endpoint> = by_namespace
        .get(svc.namespace)
        .into_iter()
        .flatten()
        .filter(|e| serves(svc, e) && !e.address.is_empty())
        .map(|e| pb::Endpoint {
            address: e.address.clone(),
            identity: e.identity.clone(),
            labels: e.labels.clone(),
            weight: 1,
            health: pb::EndpointHealth::Healthy as i32,
        })
        .collect();
    let mut c = pb::Cluster {
        name: name.to_string(),
        service: svc.name.to_string(),
        namespace: svc.namespace.to_string(),
        port: u32::from(port),
        protocol: proto as i32,
        lb_policy: pb::cluster::LbPolicy::RoundRobin as i32,
        upstream_tls: pb::cluster::UpstreamTls::Mutual as i32,
        app_protocol: svc
            .ports
            .iter()
            .position(|p| p.0 == port)
            .and_then(|i| svc.app_protocols.get(i))
            .copied()
            .unwrap_or(pb::AppProtocol::Unspecified) as i32,
        connect_timeout_ms: 5000,
        ..Default::default()
    };
    if let Some(doc) = svc.doc {
        endpoints.extend(doc.endpoints.iter().map(|e| {
            pb::Endpoint {
                address: e.address.to_string(),
                identity: e
                    .identity
                    .as_ref()
                    .map(|i| i.to_string())
                    .unwrap_or_default(),
                labels: e.labels.clone(),
                weight: e.weight,
                health: pb::EndpointHealth::Healthy as i32,
            }
        }));
        c.lb_policy = match doc.lb_policy {
            model::LbPolicy::RoundRobin => pb::cluster::LbPolicy::RoundRobin,
            model::LbPolicy::LeastRequest => pb::cluster::LbPolicy::LeastRequestP2c,
        } as i32;
        c.upstream_tls = match doc.upstream_tls {
            model::UpstreamTls::Mutual => pb::cluster::UpstreamTls::Mutual,
            model::UpstreamTls::Disabled => pb::cluster::UpstreamTls::Disabled,
        } as i32;
        c.connect_timeout_ms = doc.connect_timeout.as_millis() as u64;
        c.circuit_breaker = doc.circuit_breaker.as_ref().map(|b| pb::CircuitBreaker {
            max_connections: b.max_connections.unwrap_or(0),
            max_pending_requests: b.max_pending_requests.unwrap_or(0),
            max_requests: b.max_requests.unwrap_or(0),
        });
        c.outlier_detection = doc
            .outlier_detection
            .as_ref()
            .map(|o| pb::OutlierDetection {
                consecutive_5xx: o.consecutive_5xx,
                interval_ms: o.interval.as_millis() as u64,
                base_ejection_ms: o.base_ejection_time.as_millis() as u64,
                max_ejection_percent: o.max_ejection_percent,
            });
        c.expected_identities = doc.identities.iter().map(|i| i.to_string()).collect();
    }
    endpoints.sort_by(|a, b| a.address.cmp(&b.address));
    c.endpoints = endpoints;
    c
}

pub(super) fn service_route_table(
    inputs: &Inputs<'_>,
    svc: &ServiceView<'_>,
    port: u16,
    name: &str,
) -> pb::RouteTable {
    let mut domains = Vec::new();
    let hostnames = match svc.doc {
        Some(doc) => inputs.mesh.service_hostnames(doc),
        None => vec![
            format!(
                "{}.{}.svc.{}",
                svc.name,
                svc.namespace,
                inputs.mesh.options().cluster_domain
            ),
            format!("{}.{}.svc", svc.name, svc.namespace),
            format!("{}.{}", svc.name, svc.namespace),
            svc.name.to_string(),
        ],
    };
    let default_port = svc.ports.len() == 1 || port == 80;
    for h in hostnames {
        domains.push(format!("{h}:{port}"));
        if default_port {
            domains.push(h);
        }
    }
    let routes = svc
        .doc
        .and_then(|d| inputs.mesh.route_for_service(&d.key(), Some(port)))
        .map(routes_of)
        .unwrap_or_else(|| {
            vec![pb::Route {
                name: "default".into(),
                r#match: Some(pb::RouteMatch {
                    path: Some(pb::route_match::Path::Prefix("/".into())),
                    ..Default::default()
                }),
                backends: vec![pb::WeightedCluster {
                    cluster: name.to_string(),
                    weight: 100,
                }],
                ..Default::default()
            }]
        });
    pb::RouteTable {
        name: name.to_string(),
        virtual_hosts: vec![pb::VirtualHost {
            name: name.to_string(),
            domains,
            routes,
        }],
    }
}

pub(super) fn routes_of(route: &model::HttpRoute) -> Vec<pb::Route> {
    let mut out = Vec::new();
    for (i, rule) in route.rules.iter().enumerate() {
        // `<ns>/<route>#<rule>`: a RateLimitPolicy names `<ns>/<route>` (every rule) or the
        // whole name (one rule); a rule with several matches becomes `…#<rule>~<j>`.
        let rule_name = format!(
            "{}/{}#{}",
            route.namespace,
            route.name,
            rule.name.clone().unwrap_or_else(|| i.to_string())
        );
        let backends: Vec<pb::WeightedCluster> = rule
            .backends
            .iter()
            .map(|b| pb::WeightedCluster {
                cluster: service_port_name(&b.service.name, &b.service.namespace, b.port),
                weight: b.weight,
            })
            .collect();
        let retry = rule.retry.as_ref().map(|r| pb::RetryPolicy {
            attempts: r.attempts,
            per_try_timeout_ms: r.per_try_timeout.map(|d| d.as_millis() as u64).unwrap_or(0),
            retry_on: r.retry_on.iter().map(|o| o.as_str().to_string()).collect(),
        });
        let timeout_ms = rule.timeout.map(|d| d.as_millis() as u64).unwrap_or(0);
        let matches: Vec<Option<pb::RouteMatch>> = if rule.matches.is_empty() {
            vec![None]
        } else {
            rule.matches.iter().map(|m| Some(route_match(m))).collect()
        };
        for (j, m) in matches.into_iter().enumerate() {
            out.push(pb::Route {
                name: if j == 0 {
                    rule_name.clone()
                } else {
                    format!("{rule_name}~{j}")
                },
                r#match: Some(m.unwrap_or_else(|| pb::RouteMatch {
                    path: Some(pb::route_match::Path::Prefix("/".into())),
                    ..Default::default()
                })),
                backends: backends.clone(),
                retry: retry.clone(),
                timeout_ms,
            });
        }
    }
    out
}

pub(super) fn route_match(m: &model::RouteMatch) -> pb::RouteMatch {
    pb::RouteMatch {
        path: m.path.as_ref().map(|p| match p {
            model::PathMatch::Exact(s) => pb::route_match::Path::Exact(s.clone()),
            model::PathMatch::Prefix(s) => pb::route_match::Path::Prefix(s.clone()),
            model::PathMatch::Regex(r) => pb::route_match::Path::Regex(r.as_str().to_string()),
        }),
        headers: m
            .headers
            .iter()
            .map(|h| pb::HeaderMatch {
                name: h.name.clone(),
                r#match: Some(match &h.condition {
                    model::HeaderCondition::Exact(v) => pb::header_match::Match::Exact(v.clone()),
                    model::HeaderCondition::Regex(r) => {
                        pb::header_match::Match::Regex(r.as_str().to_string())
                    }
                    model::HeaderCondition::Present(p) => pb::header_match::Match::Present(*p),
                }),
            })
            .collect(),
        method: m.method.clone().unwrap_or_default(),
    }
}

pub(super) fn selector(s: &model::Selector) -> Option<pb::WorkloadSelector> {
    match s {
        model::Selector::All => None,
        model::Selector::MatchLabels(l) => Some(pb::WorkloadSelector {
            match_labels: l.clone(),
        }),
        model::Selector::Service(name) => Some(pb::WorkloadSelector {
            match_labels: BTreeMap::from([("service".to_string(), name.clone())]),
        }),
    }
}

pub(super) fn authorization_policy(p: &model::AuthorizationPolicy) -> pb::AuthorizationPolicy {
    pb::AuthorizationPolicy {
        name: format!("{}/{}", p.namespace, p.name),
        namespace: p.namespace.clone(),
        selector: selector(&p.selector),
        action: match p.action {
            model::Action::Allow => pb::authorization_policy::Action::Allow,
            model::Action::Deny => pb::authorization_policy::Action::Deny,
        } as i32,
        rules: p
            .rules
            .iter()
            .map(|r| pb::AuthorizationRule {
                from: r
                    .from
                    .iter()
                    .map(|s| pb::Source {
                        principals: s.principals.iter().map(|x| x.to_string()).collect(),
                        namespaces: s.namespaces.clone(),
                    })
                    .collect(),
                to: r
                    .to
                    .iter()
                    .map(|o| pb::Operation {
                        paths: o.paths.iter().map(|x| x.to_string()).collect(),
                        methods: o.methods.clone(),
                        ports: o.ports.iter().map(|x| u32::from(*x)).collect(),
                    })
                    .collect(),
            })
            .collect(),
    }
}

pub(super) fn rate_limit_policy(p: &model::RateLimitPolicy) -> pb::RateLimitPolicy {
    let (scope, route) = match &p.target {
        model::RateLimitTarget::Workload => {
            (pb::rate_limit_policy::Scope::PerWorkload, String::new())
        }
        model::RateLimitTarget::Route { route, rule } => (
            pb::rate_limit_policy::Scope::PerRoute,
            // The wire route name: the rule's route name as the view writes it.
            match rule {
                Some(rule) => format!("{}/{}#{rule}", route.namespace, route.name),
                None => format!("{}/{}", route.namespace, route.name),
            },
        ),
    };
    pb::RateLimitPolicy {
        name: format!("{}/{}", p.namespace, p.name),
        namespace: p.namespace.clone(),
        selector: selector(&p.selector),
        requests_per_second: p.requests_per_second,
        burst: p.burst,
        scope: scope as i32,
        route,
    }
}

pub(super) fn tls_policy(p: &model::TlsPolicy) -> pb::TlsPolicy {
    let version = |v: model::TlsVersion| match v {
        model::TlsVersion::Tls12 => pb::TlsVersion::Tls12,
        model::TlsVersion::Tls13 => pb::TlsVersion::Tls13,
    } as i32;
    pb::TlsPolicy {
        name: format!("{}/{}", p.namespace, p.name),
        min_version: version(p.min_version),
        max_version: version(p.max_version),
        cipher_suites: p
            .cipher_suites
            .iter()
            .map(|c| c.name().to_string())
            .collect(),
        key_exchange_groups: p
            .key_exchange_groups
            .iter()
            .map(|g| g.name().to_string())
            .collect(),
        inbound_mode: match p.inbound_mode {
            model::TlsMode::Strict => pb::TlsMode::Strict,
            model::TlsMode::Permissive => pb::TlsMode::Permissive,
            model::TlsMode::Disabled => pb::TlsMode::Disabled,
        } as i32,
        drain_grace_period_ms: p.drain_grace_period.as_millis() as u64,
    }
}
