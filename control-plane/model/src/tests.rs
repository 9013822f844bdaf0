//! What an operator notices: valid examples load and round-trip, every mistake is reported at
//! its document and field, and the mesh answers lookups the way Kubernetes DNS would.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::*;

/// Services the other examples refer to.
const SERVICES: &str = r#"
apiVersion: mesh.meshd.dev/v1alpha1
kind: Service
metadata:
  name: reviews
  namespace: shop
  labels: {app: reviews}
spec:
  ports:
    - {name: http, port: 9080, protocol: http}
    - {name: admin, port: 9090, targetPort: 19090, protocol: tcp, inboundTls: DISABLED}
  selector: {app: reviews}
  endpoints:
    - address: 10.0.0.5:15006
      identity: spiffe://cluster.local/ns/shop/sa/reviews
      labels: {version: v1}
      weight: 2
    - address: "[fd00::7]:15006"
  identities: ["spiffe://cluster.local/ns/shop/*"]
  lbPolicy: LeastRequest
  connectTimeout: 2s
  circuitBreaker: {maxConnections: 100, maxPendingRequests: 10, maxRequests: 200}
  outlierDetection: {consecutive5xx: 7, interval: 5s, baseEjectionTime: 1m, maxEjectionPercent: 50}
---
apiVersion: mesh.meshd.dev/v1alpha1
kind: Service
metadata: {name: ratings, namespace: shop}
spec:
  ports: [{name: grpc, port: 8080, protocol: http, appProtocol: grpc}]
  selector: {app: ratings}
---
# An external database: plaintext, static endpoint, default namespace.
apiVersion: mesh.meshd.dev/v1alpha1
kind: Service
metadata: {name: db}
spec:
  ports: [{name: pg, port: 5432, protocol: tcp}]
  endpoints: [{address: "192.0.2.10:5432"}]
  upstreamTls: DISABLED
"#;

/// One or more documents of every other kind.
const POLICIES: &str = r#"
apiVersion: mesh.meshd.dev/v1alpha1
kind: HTTPRoute
metadata: {name: reviews, namespace: shop}
spec:
  parentRefs: [{name: reviews, port: 9080}]
  hostnames: [reviews.example.com]
  rules:
    - name: canary
      matches:
        - path: {prefix: /api/}
          headers: [{name: X-Canary, exact: "true"}]
          method: GET
      backends:
        - {service: reviews, port: 9080, weight: 90}
        - {service: ratings, port: 8080, weight: 10}
      retries: {attempts: 3, perTryTimeout: 500ms, retryOn: [5xx, reset]}
      timeout: 2s
    - matches:
        - path: {regex: "/v[0-9]+/.*"}
        - headers: [{name: x-debug, present: true}]
      backends: [{service: reviews, port: 9080}]
      retries: {attempts: 1}
---
apiVersion: mesh.meshd.dev/v1alpha1
kind: HTTPRoute
metadata: {name: storefront, namespace: shop}
spec:
  hostnames: ["*.example.org"]
  rules:
    - backends: [{service: ratings, namespace: shop, port: 8080}]
---
apiVersion: mesh.meshd.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: allow-frontend, namespace: shop}
spec:
  selector: {service: reviews}
  action: ALLOW
  rules:
    - from:
        - principals: ["spiffe://cluster.local/ns/shop/sa/frontend", "*/sa/gateway"]
        - namespaces: [monitoring]
      to:
        - paths: ["/api/*", "/healthz"]
          methods: [GET, POST]
          ports: [9080]
---
apiVersion: mesh.meshd.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: deny-debug, namespace: mesh-system}
spec:
  action: DENY
  rules: [{to: [{paths: ["/debug/*"]}]}]
---
apiVersion: mesh.meshd.dev/v1alpha1
kind: RateLimitPolicy
metadata: {name: reviews-canary, namespace: shop}
spec:
  selector: {matchLabels: {app: reviews}}
  requestsPerSecond: 100
  burst: 200
  scope: route
  route: reviews
  rule: canary
---
apiVersion: mesh.meshd.dev/v1alpha1
kind: RateLimitPolicy
metadata: {name: per-workload, namespace: shop}
spec:
  requestsPerSecond: 50
---
apiVersion: mesh.meshd.dev/v1alpha1
kind: TlsPolicy
metadata: {name: mesh-default, namespace: mesh-system}
spec:
  minVersion: "1.2"
  maxVersion: "1.3"
  cipherSuites:
    - TLS13_AES_128_GCM_SHA256
    - TLS13_CHACHA20_POLY1305_SHA256
    - TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
  keyExchangeGroups: [X25519MLKEM768, X25519, secp256r1]
  inboundMode: STRICT
  drainGracePeriod: 30s
---
apiVersion: mesh.meshd.dev/v1alpha1
kind: TlsPolicy
metadata: {name: tls13-canary, namespace: mesh-system}
spec:
  selector: {matchLabels: {tier: canary}}
  minVersion: 1.3   # unquoted on purpose: YAML reads a number
  cipherSuites: [TLS13_AES_256_GCM_SHA384]
  drainGracePeriod: 1m
---
apiVersion: mesh.meshd.dev/v1alpha1
kind: Sidecar
metadata: {name: frontend, namespace: shop}
spec:
  selector: {matchLabels: {app: frontend}}
  egress: ["./*", "mesh-system/*"]
"#;

fn examples() -> String {
    format!("{SERVICES}---\n{POLICIES}")
}

fn example_mesh() -> Mesh {
    Mesh::build(Document::parse_yaml(&examples()).unwrap()).unwrap()
}

/// A document of `kind` named `ns/name` with `spec` (YAML, indented from column 0).
fn doc(kind: &str, at: &str, spec: &str) -> String {
    let (ns, name) = at.split_once('/').unwrap();
    let spec: String = spec.lines().map(|l| format!("  {l}\n")).collect();
    format!(
        "apiVersion: mesh.meshd.dev/v1alpha1\nkind: {kind}\nmetadata:\n  name: {name}\n  \
         namespace: {ns}\nspec:\n{spec}"
    )
}

/// A route in `shop` with one rule whose backends (and anything else) are given.
fn route_rule(rule: &str) -> String {
    let rule: String = rule
        .lines()
        .enumerate()
        .map(|(i, l)| {
            if i == 0 {
                format!("  - {l}\n")
            } else {
                format!("    {l}\n")
            }
        })
        .collect();
    doc(
        "HTTPRoute",
        "shop/reviews",
        &format!("hostnames: [reviews.example.com]\nrules:\n{rule}"),
    )
}

/// Everything wrong with `input` (YAML, or JSON when `json`), from parsing and, if the
/// documents parse, from `Mesh::build` together with the example services.
fn errors_of(input: &str, json: bool) -> ModelErrors {
    let docs = if json {
        Document::parse_json(input).map(|d| vec![d])
    } else {
        Document::parse_yaml(input)
    };
    match docs {
        Err(e) => e,
        Ok(mut docs) => {
            let own: Vec<DocumentKey> = docs.iter().map(Document::key).collect();
            // The example services, unless the input brings its own of the same name.
            for s in Document::parse_yaml(SERVICES).unwrap() {
                if !own.contains(&s.key()) {
                    docs.push(s);
                }
            }
            match Mesh::build(docs) {
                Err(e) => e,
                Ok(_) => ModelErrors::default(),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Valid documents
// ---------------------------------------------------------------------------------------------

#[test]
fn examples_of_every_kind_parse_and_round_trip() {
    let docs = Document::parse_yaml(&examples()).unwrap();
    assert_eq!(docs.len(), 12);
    for kind in Kind::ALL {
        assert!(
            docs.iter().any(|d| d.kind() == kind),
            "no example of {kind}"
        );
    }
    for d in &docs {
        let yaml = d.to_yaml();
        let again = Document::parse_yaml(&yaml).unwrap();
        assert_eq!(
            again,
            vec![d.clone()],
            "YAML round trip of {}:\n{yaml}",
            d.key()
        );
        assert_eq!(
            again[0].to_yaml(),
            yaml,
            "to_yaml is stable for {}",
            d.key()
        );

        let json = d.to_json_value().to_string();
        let from_json = Document::parse_json(&json).unwrap();
        assert_eq!(&from_json, d, "JSON round trip of {}", d.key());
        assert_eq!(from_json.canonical_json(), d.canonical_json());
    }
    // The defaulted namespace is explicit in the stored form.
    let db = docs.iter().find(|d| d.name() == "db").unwrap();
    assert_eq!(db.namespace(), "default");
    assert!(
        db.to_yaml().contains("namespace: default"),
        "{}",
        db.to_yaml()
    );
}

#[test]
fn canonical_json_ignores_formatting_key_order_and_comments() {
    let a = r#"
apiVersion: mesh.meshd.dev/v1alpha1
kind: RateLimitPolicy
metadata: {name: rl, namespace: default, labels: {b: "2", a: "1"}}
spec: {requestsPerSecond: 10, burst: 20}
"#;
    let b = r#"
# the same, written differently
spec:
  burst: 20
  requestsPerSecond: 10
metadata:
  labels:
    a: "1"
    b: "2"
  name: rl        # namespace defaults to "default"
kind: RateLimitPolicy
apiVersion: "mesh.meshd.dev/v1alpha1"
"#;
    let c = r#"{"kind":"RateLimitPolicy","apiVersion":"mesh.meshd.dev/v1alpha1",
        "spec":{"burst":20,"requestsPerSecond":10},
        "metadata":{"name":"rl","labels":{"b":"2","a":"1"}}}"#;
    let a = Document::parse_yaml(a).unwrap().remove(0);
    let b = Document::parse_yaml(b).unwrap().remove(0);
    let c = Document::parse_json(c).unwrap();
    assert_eq!(a.canonical_json(), b.canonical_json());
    assert_eq!(a.canonical_json(), c.canonical_json());
    assert_eq!(a.canonical_json(), a.clone().canonical_json());
    assert_eq!(
        a.canonical_json(),
        r#"{"apiVersion":"mesh.meshd.dev/v1alpha1","kind":"RateLimitPolicy","metadata":{"name":"rl","namespace":"default","labels":{"a":"1","b":"2"}},"spec":{"requestsPerSecond":10,"burst":20}}"#
    );
    // A real change shows.
    let d = Document::parse_yaml(&doc(
        "RateLimitPolicy",
        "default/rl",
        "requestsPerSecond: 11",
    ))
    .unwrap()
    .remove(0);
    assert_ne!(a.canonical_json(), d.canonical_json());
}

#[test]
fn empty_documents_in_a_stream_are_skipped() {
    let text = format!("---\n---\n# only a comment\n---\n{SERVICES}\n---\n");
    assert_eq!(Document::parse_yaml(&text).unwrap().len(), 3);
}

#[test]
fn kinds_parse_case_sensitively_with_a_hint() {
    for k in Kind::ALL {
        assert_eq!(k.as_str().parse::<Kind>(), Ok(k));
    }
    let e = "Gadget".parse::<Kind>().unwrap_err();
    assert!(
        e.contains(
            "known kinds: Service, HTTPRoute, AuthorizationPolicy, RateLimitPolicy, TlsPolicy"
        ),
        "{e}"
    );
    assert!(
        "httproute"
            .parse::<Kind>()
            .unwrap_err()
            .contains("\"HTTPRoute\"")
    );
}

#[test]
fn document_new_validates_too() {
    let spec = Spec::RateLimitPolicy(spec::RateLimitPolicySpec {
        selector: None,
        requests_per_second: 0,
        burst: None,
        scope: None,
        route: None,
        rule: None,
    });
    let e = Document::new(Metadata::new("shop", "rl"), spec).unwrap_err();
    assert_eq!(
        e.to_string(),
        "RateLimitPolicy shop/rl: spec.requestsPerSecond: must be 1..=1000000 (got 0)"
    );
    let e = Document::new(
        Metadata::new("shop", "Bad_Name"),
        Spec::TlsPolicy(spec::TlsPolicySpec::default()),
    )
    .unwrap_err();
    assert!(e.to_string().contains("metadata.name"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Invalid documents
// ---------------------------------------------------------------------------------------------

struct Case {
    what: &'static str,
    input: String,
    json: bool,
    document: &'static str,
    field: &'static str,
    message: &'static str,
}

fn yaml(
    what: &'static str,
    input: String,
    document: &'static str,
    field: &'static str,
    message: &'static str,
) -> Case {
    Case {
        what,
        input,
        json: false,
        document,
        field,
        message,
    }
}

fn corpus() -> Vec<Case> {
    let svc = |spec: &str| doc("Service", "shop/web", spec);
    let http_port = "ports: [{name: http, port: 80, protocol: http}]";
    let authz = |spec: &str| doc("AuthorizationPolicy", "shop/authz", spec);
    let rl = |spec: &str| doc("RateLimitPolicy", "shop/rl", spec);
    let tls = |spec: &str| doc("TlsPolicy", "shop/tls", spec);
    let one_backend = "backends: [{service: reviews, port: 9080}]";
    vec![
        // --- the envelope ---
        yaml(
            "wrong kind",
            doc("Gadget", "shop/x", "a: 1").to_string(),
            "Gadget shop/x",
            "kind",
            "known kinds: Service, HTTPRoute",
        ),
        yaml(
            "kind in the wrong case",
            doc("HttpRoute", "shop/x", "a: 1"),
            "HttpRoute shop/x",
            "kind",
            "did you mean \"HTTPRoute\"",
        ),
        yaml(
            "wrong apiVersion",
            doc("Service", "shop/web", http_port).replace("v1alpha1", "v1"),
            "Service shop/web",
            "apiVersion",
            "must be \"mesh.meshd.dev/v1alpha1\"",
        ),
        yaml(
            "missing apiVersion",
            doc("Service", "shop/web", http_port)
                .replace("apiVersion: mesh.meshd.dev/v1alpha1\n", ""),
            "Service shop/web",
            "apiVersion",
            "is required",
        ),
        yaml(
            "missing metadata.name",
            doc("Service", "shop/web", http_port).replace("  name: web\n", ""),
            "Service (document #1)",
            "metadata.name",
            "is required",
        ),
        yaml(
            "upper-case name",
            doc("Service", "shop/Web", http_port),
            "Service shop/Web",
            "metadata.name",
            "not a DNS-1123 label",
        ),
        yaml(
            "name too long",
            doc("Service", &format!("shop/{}", "a".repeat(64)), http_port),
            // The label is built from the document as written.
            "Service shop/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "metadata.name",
            "at most 63",
        ),
        yaml(
            "bad namespace",
            doc("Service", "Shop/web", http_port),
            "Service Shop/web",
            "metadata.namespace",
            "DNS-1123",
        ),
        yaml(
            "unknown top-level field",
            format!("{}labels: {{app: web}}\n", svc(http_port)),
            "Service shop/web",
            "labels",
            "unknown field",
        ),
        yaml(
            "unknown metadata field",
            svc(http_port).replace("  namespace: shop", "  namespace: shop\n  nmespace: x"),
            "Service shop/web",
            "metadata.nmespace",
            "unknown field `nmespace`",
        ),
        yaml(
            "missing spec",
            "apiVersion: mesh.meshd.dev/v1alpha1\nkind: Service\nmetadata: {name: web}\n".into(),
            "Service default/web",
            "spec",
            "is required",
        ),
        // --- Service ---
        yaml(
            "unknown spec field (typo)",
            svc(&format!("{http_port}\nlbpolicy: RoundRobin")),
            "Service shop/web",
            "spec.lbpolicy",
            "unknown field `lbpolicy`, expected one of",
        ),
        yaml(
            "negative port",
            svc("ports: [{name: http, port: -1, protocol: http}]"),
            "Service shop/web",
            "spec.ports[0].port",
            "must be 1..=65535",
        ),
        yaml(
            "port 0",
            svc("ports: [{name: http, port: 0, protocol: http}]"),
            "Service shop/web",
            "spec.ports[0].port",
            "must be 1..=65535 (got 0)",
        ),
        yaml(
            "port above 65535",
            svc("ports: [{name: http, port: 70000, protocol: http}]"),
            "Service shop/web",
            "spec.ports[0].port",
            "must be 1..=65535 (got 70000)",
        ),
        yaml(
            "protocol not http/tcp",
            svc("ports: [{name: dns, port: 53, protocol: udp}]"),
            "Service shop/web",
            "spec.ports[0].protocol",
            "unknown variant `udp`, expected `http` or `tcp`",
        ),
        yaml(
            "appProtocol not http/http2/h2c/grpc",
            svc("ports: [{name: web, port: 80, protocol: http, appProtocol: h3}]"),
            "Service shop/web",
            "spec.ports[0].appProtocol",
            "unknown variant `h3`, expected one of `http`, `h2c`, `http2`, `grpc`",
        ),
        yaml(
            "appProtocol on a tcp port",
            svc("ports: [{name: db, port: 5432, protocol: tcp, appProtocol: http2}]"),
            "Service shop/web",
            "spec.ports[0].appProtocol",
            "only an http port has an appProtocol",
        ),
        yaml(
            "missing protocol",
            svc("ports: [{name: http, port: 80}]"),
            "Service shop/web",
            "spec.ports[0].protocol",
            "is required",
        ),
        yaml(
            "no ports",
            svc("selector: {app: web}"),
            "Service shop/web",
            "spec.ports",
            "at least one port",
        ),
        yaml(
            "duplicate port number",
            svc(
                "ports:\n- {name: a, port: 80, protocol: http}\n- {name: b, port: 80, protocol: tcp}",
            ),
            "Service shop/web",
            "spec.ports[1].port",
            "80 is already spec.ports[0]",
        ),
        yaml(
            "endpoint address not ip:port",
            svc(&format!(
                "{http_port}\nendpoints: [{{address: web.example.com:80, identity: spiffe://cluster.local/ns/shop/sa/web}}]"
            )),
            "Service shop/web",
            "spec.endpoints[0].address",
            "not an ip:port address",
        ),
        yaml(
            "endpoint without an expected identity under MUTUAL",
            svc(&format!(
                "{http_port}\nendpoints: [{{address: 10.0.0.1:80}}]"
            )),
            "Service shop/web",
            "spec.endpoints[0].identity",
            "is required",
        ),
        yaml(
            "lone * as expected identity",
            svc(&format!("{http_port}\nidentities: [\"*\"]")),
            "Service shop/web",
            "spec.identities[0]",
            "must be bounded",
        ),
        yaml(
            "circuit breaker limit 0",
            svc(&format!("{http_port}\ncircuitBreaker: {{maxRequests: 0}}")),
            "Service shop/web",
            "spec.circuitBreaker.maxRequests",
            "must be at least 1",
        ),
        yaml(
            "outlier ejection percent above 100",
            svc(&format!(
                "{http_port}\noutlierDetection: {{maxEjectionPercent: 101}}"
            )),
            "Service shop/web",
            "spec.outlierDetection.maxEjectionPercent",
            "must be 1..=100",
        ),
        yaml(
            "bad duration",
            svc(&format!("{http_port}\nconnectTimeout: 5 parsecs")),
            "Service shop/web",
            "spec.connectTimeout",
            "invalid duration \"5 parsecs\"",
        ),
        // --- HTTPRoute ---
        yaml(
            "weight out of range",
            route_rule(
                "backends:\n- {service: reviews, port: 9080, weight: 50}\n- {service: ratings, port: 8080, weight: 150}",
            ),
            "HTTPRoute shop/reviews",
            "spec.rules[0].backends[1].weight",
            "must be 0..=100",
        ),
        yaml(
            "all weights zero",
            route_rule(
                "backends:\n- {service: reviews, port: 9080, weight: 0}\n- {service: ratings, port: 8080, weight: 0}",
            ),
            "HTTPRoute shop/reviews",
            "spec.rules[0].backends",
            "must not all be 0",
        ),
        yaml(
            "unknown backend field (typo)",
            route_rule("backends: [{service: reviews, port: 9080, weigth: 10}]"),
            "HTTPRoute shop/reviews",
            "spec.rules[0].backends[0].weigth",
            "unknown field `weigth`",
        ),
        yaml(
            "route to an unknown service",
            route_rule("backends: [{service: details, port: 9080}]"),
            "HTTPRoute shop/reviews",
            "spec.rules[0].backends[0].service",
            "Service shop/details does not exist",
        ),
        yaml(
            "route to a port the service lacks",
            route_rule("backends: [{service: reviews, port: 8080}]"),
            "HTTPRoute shop/reviews",
            "spec.rules[0].backends[0].port",
            "Service shop/reviews has no port 8080 (it has 9080, 9090)",
        ),
        yaml(
            "route to a tcp port",
            route_rule("backends: [{service: reviews, port: 9090}]"),
            "HTTPRoute shop/reviews",
            "spec.rules[0].backends[0].port",
            "is tcp",
        ),
        yaml(
            "parentRef to an unknown service",
            doc(
                "HTTPRoute",
                "shop/reviews",
                &format!("parentRefs: [{{name: details}}]\nrules: [{{{one_backend}}}]"),
            ),
            "HTTPRoute shop/reviews",
            "spec.parentRefs[0].name",
            "Service shop/details does not exist",
        ),
        yaml(
            "no hostnames and no parentRefs",
            doc(
                "HTTPRoute",
                "shop/reviews",
                &format!("rules: [{{{one_backend}}}]"),
            ),
            "HTTPRoute shop/reviews",
            "spec",
            "set hostnames, parentRefs or both",
        ),
        yaml(
            "bad duration in a route",
            route_rule(&format!("{one_backend}\ntimeout: 5 parsecs")),
            "HTTPRoute shop/reviews",
            "spec.rules[0].timeout",
            "invalid duration \"5 parsecs\"",
        ),
        yaml(
            "negative timeout",
            route_rule(&format!("{one_backend}\ntimeout: -1s")),
            "HTTPRoute shop/reviews",
            "spec.rules[0].timeout",
            "must not be negative",
        ),
        yaml(
            "zero timeout",
            route_rule(&format!("{one_backend}\ntimeout: 0s")),
            "HTTPRoute shop/reviews",
            "spec.rules[0].timeout",
            "must be greater than 0",
        ),
        yaml(
            "retries attempts 0",
            route_rule(&format!("{one_backend}\nretries: {{attempts: 0}}")),
            "HTTPRoute shop/reviews",
            "spec.rules[0].retries.attempts",
            "must be 1..=10",
        ),
        yaml(
            "retries attempts above 10",
            route_rule(&format!("{one_backend}\nretries: {{attempts: 11}}")),
            "HTTPRoute shop/reviews",
            "spec.rules[0].retries.attempts",
            "must be 1..=10 (got 11)",
        ),
        yaml(
            "unknown retryOn value",
            route_rule(&format!(
                "{one_backend}\nretries: {{attempts: 2, retryOn: [reset, 5xxx]}}"
            )),
            "HTTPRoute shop/reviews",
            "spec.rules[0].retries.retryOn[1]",
            "unknown variant `5xxx`",
        ),
        yaml(
            "bad perTryTimeout",
            route_rule(&format!(
                "{one_backend}\nretries: {{attempts: 2, perTryTimeout: 100}}"
            )),
            "HTTPRoute shop/reviews",
            "spec.rules[0].retries.perTryTimeout",
            "invalid duration",
        ),
        yaml(
            "invalid header regex",
            route_rule(&format!(
                "matches: [{{headers: [{{name: x-user, regex: \"(abc\"}}]}}]\n{one_backend}"
            )),
            "HTTPRoute shop/reviews",
            "spec.rules[0].matches[0].headers[0].regex",
            "invalid regular expression \"(abc\"",
        ),
        yaml(
            "invalid path regex",
            route_rule(&format!(
                "matches: [{{path: {{regex: \"/v[0-9\"}}}}]\n{one_backend}"
            )),
            "HTTPRoute shop/reviews",
            "spec.rules[0].matches[0].path.regex",
            "invalid regular expression",
        ),
        yaml(
            "path not starting with /",
            route_rule(&format!(
                "matches: [{{path: {{prefix: api}}}}]\n{one_backend}"
            )),
            "HTTPRoute shop/reviews",
            "spec.rules[0].matches[0].path.prefix",
            "must start with \"/\"",
        ),
        yaml(
            "two path conditions",
            route_rule(&format!(
                "matches: [{{path: {{prefix: /a, exact: /b}}}}]\n{one_backend}"
            )),
            "HTTPRoute shop/reviews",
            "spec.rules[0].matches[0].path",
            "exactly one of exact, prefix or regex",
        ),
        yaml(
            "header with two conditions",
            route_rule(&format!(
                "matches: [{{headers: [{{name: x-a, exact: b, present: true}}]}}]\n{one_backend}"
            )),
            "HTTPRoute shop/reviews",
            "spec.rules[0].matches[0].headers[0]",
            "exactly one of exact, regex or present",
        ),
        yaml(
            "lower-case method",
            route_rule(&format!("matches: [{{method: get}}]\n{one_backend}")),
            "HTTPRoute shop/reviews",
            "spec.rules[0].matches[0].method",
            "must be upper case (\"GET\")",
        ),
        yaml(
            "hostname with a port",
            doc(
                "HTTPRoute",
                "shop/reviews",
                &format!("hostnames: [\"reviews.example.com:80\"]\nrules: [{{{one_backend}}}]"),
            ),
            "HTTPRoute shop/reviews",
            "spec.hostnames[0]",
            "must not carry a port",
        ),
        yaml(
            "two routes claim one hostname",
            format!(
                "{}---\n{}",
                doc(
                    "HTTPRoute",
                    "shop/a",
                    &format!("hostnames: [x.example.com]\nrules: [{{{one_backend}}}]")
                ),
                doc(
                    "HTTPRoute",
                    "shop/b",
                    &format!("hostnames: [x.example.com]\nrules: [{{{one_backend}}}]")
                ),
            ),
            "HTTPRoute shop/b",
            "spec.hostnames[0]",
            "\"x.example.com\" is already served by HTTPRoute shop/a",
        ),
        // --- duplicates ---
        yaml(
            "duplicate (kind, namespace, name)",
            format!(
                "{}---\n{}",
                svc(http_port),
                svc("ports: [{name: http, port: 81, protocol: http}]")
            ),
            "Service shop/web",
            "metadata.name",
            "defined more than once",
        ),
        // --- AuthorizationPolicy ---
        yaml(
            "bad SPIFFE ID in principals",
            authz(
                "action: ALLOW\nrules: [{from: [{principals: [\"spiffe://cluster.local/ns/Shop/sa/web\"]}]}]",
            ),
            "AuthorizationPolicy shop/authz",
            "spec.rules[0].from[0].principals[0]",
            "namespace \"Shop\" is invalid",
        ),
        yaml(
            "principal from another scheme",
            authz(
                "action: ALLOW\nrules: [{from: [{principals: [\"https://cluster.local/ns/shop/sa/web\"]}]}]",
            ),
            "AuthorizationPolicy shop/authz",
            "spec.rules[0].from[0].principals[0]",
            "must start with \"spiffe://\"",
        ),
        yaml(
            "Istio-style principal without scheme",
            authz("action: ALLOW\nrules: [{from: [{principals: [cluster.local/ns/shop/sa/web]}]}]"),
            "AuthorizationPolicy shop/authz",
            "spec.rules[0].from[0].principals[0]",
            "write \"spiffe://cluster.local/ns/shop/sa/web\"",
        ),
        yaml(
            "wildcard in the middle of a principal",
            authz(
                "action: ALLOW\nrules: [{from: [{principals: [\"spiffe://cluster.local/ns/*/sa/web\"]}]}]",
            ),
            "AuthorizationPolicy shop/authz",
            "spec.rules[0].from[0].principals[0]",
            "'*' is allowed only alone, at the start",
        ),
        yaml(
            "unknown action",
            authz("action: AUDIT\nrules: [{}]"),
            "AuthorizationPolicy shop/authz",
            "spec.action",
            "unknown variant `AUDIT`, expected `ALLOW` or `DENY`",
        ),
        yaml(
            "empty rules on DENY",
            authz("action: DENY"),
            "AuthorizationPolicy shop/authz",
            "spec.rules",
            "a DENY policy needs at least one rule",
        ),
        yaml(
            "empty from entry",
            authz("action: ALLOW\nrules: [{from: [{}]}]"),
            "AuthorizationPolicy shop/authz",
            "spec.rules[0].from[0]",
            "set principals or namespaces",
        ),
        yaml(
            "authz path without /",
            authz("action: ALLOW\nrules: [{to: [{paths: [api]}]}]"),
            "AuthorizationPolicy shop/authz",
            "spec.rules[0].to[0].paths[0]",
            "must start with \"/\"",
        ),
        yaml(
            "selector with matchLabels and service",
            authz("selector: {matchLabels: {app: x}, service: reviews}\naction: ALLOW"),
            "AuthorizationPolicy shop/authz",
            "spec.selector",
            "not both",
        ),
        yaml(
            "selector naming an unknown service",
            authz("selector: {service: details}\naction: ALLOW"),
            "AuthorizationPolicy shop/authz",
            "spec.selector.service",
            "Service shop/details does not exist",
        ),
        // --- RateLimitPolicy ---
        yaml(
            "requestsPerSecond 0",
            rl("requestsPerSecond: 0"),
            "RateLimitPolicy shop/rl",
            "spec.requestsPerSecond",
            "must be 1..=1000000 (got 0)",
        ),
        yaml(
            "burst 0",
            rl("requestsPerSecond: 10\nburst: 0"),
            "RateLimitPolicy shop/rl",
            "spec.burst",
            "must be 1..=",
        ),
        yaml(
            "route-scoped without a route name",
            rl("requestsPerSecond: 10\nscope: route"),
            "RateLimitPolicy shop/rl",
            "spec.route",
            "is required with scope route",
        ),
        yaml(
            "route name with workload scope",
            rl("requestsPerSecond: 10\nroute: reviews"),
            "RateLimitPolicy shop/rl",
            "spec.route",
            "must not be set with scope workload",
        ),
        yaml(
            "rate limit naming an unknown route",
            rl("requestsPerSecond: 10\nscope: route\nroute: details"),
            "RateLimitPolicy shop/rl",
            "spec.route",
            "HTTPRoute shop/details does not exist",
        ),
        yaml(
            "unknown scope",
            rl("requestsPerSecond: 10\nscope: mesh"),
            "RateLimitPolicy shop/rl",
            "spec.scope",
            "unknown variant `mesh`, expected `workload` or `route`",
        ),
        // --- TlsPolicy ---
        yaml(
            "TLS max below min",
            tls("minVersion: \"1.3\"\nmaxVersion: \"1.2\""),
            "TlsPolicy shop/tls",
            "spec.maxVersion",
            "\"1.2\" is lower than minVersion \"1.3\"",
        ),
        yaml(
            "TLS 1.1",
            tls("minVersion: \"1.1\""),
            "TlsPolicy shop/tls",
            "spec.minVersion",
            "TLS 1.1 is not supported",
        ),
        yaml(
            "unknown cipher suite",
            tls("cipherSuites: [TLS_RSA_WITH_RC4_128_SHA]"),
            "TlsPolicy shop/tls",
            "spec.cipherSuites[0]",
            "unknown cipher suite \"TLS_RSA_WITH_RC4_128_SHA\"; known: TLS13_AES_128_GCM_SHA256",
        ),
        yaml(
            "unknown key-exchange group",
            tls("keyExchangeGroups: [X25519, ffdhe2048]"),
            "TlsPolicy shop/tls",
            "spec.keyExchangeGroups[1]",
            "unknown key-exchange group \"ffdhe2048\"",
        ),
        yaml(
            "TLS 1.3-only with only TLS 1.2 suites",
            tls("minVersion: \"1.3\"\ncipherSuites: [TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256]"),
            "TlsPolicy shop/tls",
            "spec.cipherSuites",
            "a TLS 1.3-only policy needs at least one TLS13_* suite",
        ),
        yaml(
            "TLS 1.2-only with only RSA suites",
            tls("maxVersion: \"1.2\"\ncipherSuites: [TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256]"),
            "TlsPolicy shop/tls",
            "spec.cipherSuites",
            "ECDSA certificates cannot use",
        ),
        yaml(
            "inboundMode DISABLED on a TlsPolicy",
            tls("inboundMode: DISABLED"),
            "TlsPolicy shop/tls",
            "spec.inboundMode",
            "DISABLED is not allowed here",
        ),
        yaml(
            "zero drain grace period",
            tls("drainGracePeriod: 0s"),
            "TlsPolicy shop/tls",
            "spec.drainGracePeriod",
            "must be greater than 0",
        ),
        // --- the input itself ---
        yaml(
            "YAML syntax error",
            "apiVersion: mesh.meshd.dev/v1alpha1\nkind: Service\nmetadata: {name: web\nspec: {}\n"
                .into(),
            "document #1",
            "",
            "line 4 column",
        ),
        yaml(
            "duplicate YAML key",
            format!("{}spec: {{}}\n", svc(http_port)),
            "document #1",
            "",
            "duplicate entry with key \"spec\" in the mapping that starts at line 1 column 1",
        ),
        yaml(
            "empty input",
            "  \n# nothing here\n".into(),
            "input",
            "",
            "contains no document",
        ),
        Case {
            what: "a JSON array instead of an object",
            input: r#"[{"apiVersion": "mesh.meshd.dev/v1alpha1", "kind": "Service"}]"#.into(),
            json: true,
            document: "document #1",
            field: "",
            message: "must be an object with apiVersion, kind, metadata and spec, not an array",
        },
        Case {
            what: "JSON syntax error",
            input: r#"{"apiVersion": "mesh.meshd.dev/v1alpha1", "kind": }"#.into(),
            json: true,
            document: "document #1",
            field: "",
            message: "line 1 column",
        },
        Case {
            what: "empty JSON input",
            input: String::new(),
            json: true,
            document: "input",
            field: "",
            message: "contains no document",
        },
        Case {
            what: "JSON typo in a spec key",
            input: r#"{"apiVersion": "mesh.meshd.dev/v1alpha1", "kind": "RateLimitPolicy",
                "metadata": {"name": "rl", "namespace": "shop"},
                "spec": {"requestPerSecond": 5}}"#
                .into(),
            json: true,
            document: "RateLimitPolicy shop/rl",
            field: "spec.requestPerSecond",
            message: "unknown field `requestPerSecond`",
        },
    ]
}

#[test]
fn every_invalid_document_is_rejected_at_its_document_and_field() {
    let cases = corpus();
    assert!(cases.len() >= 35, "only {} cases", cases.len());
    let mut failures = Vec::new();
    for c in &cases {
        let errors = errors_of(&c.input, c.json);
        let hit = errors.iter().any(|e| {
            e.document == c.document
                && (if c.field.is_empty() {
                    e.field.is_empty()
                } else {
                    e.field == c.field
                })
                && e.message.contains(c.message)
        });
        if !hit {
            failures.push(format!(
                "{}: expected `{}: {}: ..{}..`, got:\n{errors}\n",
                c.what, c.document, c.field, c.message
            ));
        }
        // Every line names its document; a field, when there is one, follows it.
        for e in &errors {
            let line = e.to_string();
            assert!(line.starts_with(&e.document), "{line}");
            assert!(
                !line.contains('\n'),
                "{}: one error spans lines: {line}",
                c.what
            );
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_error_format_is_the_documented_one() {
    let input = route_rule(
        "backends:\n- {service: reviews, port: 9080}\n- {service: ratings, port: 8080, weight: 101}",
    );
    let e = Document::parse_yaml(&input).unwrap_err();
    assert_eq!(
        e.to_string(),
        "HTTPRoute shop/reviews: spec.rules[0].backends[1].weight: must be 0..=100 (got 101)"
    );
}

#[test]
fn one_document_reports_all_of_its_problems() {
    let input = doc(
        "HTTPRoute",
        "shop/reviews",
        "hostnames: [\"Bad Host\"]
rules:
  - backends: [{service: reviews, port: 0, weight: 101}]
    timeout: 5 parsecs
    retries: {attempts: 11}
    matches: [{path: {prefix: api}, method: get}]",
    );
    let e = Document::parse_yaml(&input).unwrap_err();
    let fields: Vec<&str> = e.iter().map(|e| e.field.as_str()).collect();
    for f in [
        "spec.hostnames[0]",
        "spec.rules[0].backends[0].port",
        "spec.rules[0].backends[0].weight",
        "spec.rules[0].timeout",
        "spec.rules[0].retries.attempts",
        "spec.rules[0].matches[0].path.prefix",
        "spec.rules[0].matches[0].method",
    ] {
        assert!(fields.contains(&f), "{f} missing from:\n{e}");
    }
    assert_eq!(e.to_string().lines().count(), e.len());
}

#[test]
fn a_stream_reports_every_bad_document() {
    let input = format!(
        "{}---\n{}---\n{}",
        doc("RateLimitPolicy", "shop/a", "requestsPerSecond: 0"),
        doc("RateLimitPolicy", "shop/b", "requestsPerSecond: 5"),
        doc(
            "RateLimitPolicy",
            "shop/c",
            "requestsPerSecond: 5\nburst: -1"
        ),
    );
    let e = Document::parse_yaml(&input).unwrap_err();
    let docs: Vec<&str> = e.iter().map(|e| e.document.as_str()).collect();
    assert_eq!(docs, ["RateLimitPolicy shop/a", "RateLimitPolicy shop/c"]);
}

#[test]
fn mesh_build_reports_several_errors_at_once() {
    let input = format!(
        "{SERVICES}---\n{}---\n{}---\n{}---\n{}",
        route_rule("backends: [{service: details, port: 9080}]"),
        doc(
            "RateLimitPolicy",
            "shop/rl",
            "requestsPerSecond: 5\nscope: route\nroute: nope"
        ),
        doc(
            "Service",
            "shop/ratings",
            "ports: [{name: http, port: 8080, protocol: http}]"
        ),
        doc(
            "TlsPolicy",
            "shop/tls",
            "selector: {service: details}\nminVersion: \"1.3\""
        ),
    );
    let e = Mesh::build(Document::parse_yaml(&input).unwrap()).unwrap_err();
    let text = e.to_string();
    for line in [
        "Service shop/ratings: metadata.name: Service shop/ratings is defined more than once",
        "HTTPRoute shop/reviews: spec.rules[0].backends[0].service: Service shop/details does not exist",
        "RateLimitPolicy shop/rl: spec.route: HTTPRoute shop/nope does not exist",
        "TlsPolicy shop/tls: spec.selector.service: Service shop/details does not exist",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(line)),
            "{line:?} missing from:\n{text}"
        );
    }
    assert_eq!(e.len(), 4, "{text}");
}

// ---------------------------------------------------------------------------------------------
// The model
// ---------------------------------------------------------------------------------------------

#[test]
fn services_carry_what_clusters_need_with_defaults_filled_in() {
    let mesh = example_mesh();
    let reviews = mesh.service("shop", "reviews").unwrap();
    assert_eq!(reviews.ports.len(), 2);
    let admin = reviews.port(9090).unwrap();
    assert_eq!(
        (
            admin.name.as_str(),
            admin.target_port,
            admin.protocol,
            admin.inbound_tls
        ),
        ("admin", 19090, Protocol::Tcp, Some(TlsMode::Disabled))
    );
    assert_eq!(reviews.port(9080).unwrap().target_port, 9080);
    // What the app speaks: HTTP/1.1 unless the port says otherwise.
    assert_eq!(reviews.port(9080).unwrap().app_protocol, AppProtocol::Http);
    let ratings = mesh.service("shop", "ratings").unwrap();
    assert_eq!(ratings.port(8080).unwrap().app_protocol, AppProtocol::Grpc);
    assert!(ratings.port(8080).unwrap().app_protocol.is_http2());
    // Without one, Istio's port names say it.
    for (name, want) in [
        ("grpc", AppProtocol::Grpc),
        ("grpc-api", AppProtocol::Grpc),
        ("grpc-web", AppProtocol::Http),
        ("http2-x", AppProtocol::Http2),
        ("h2c", AppProtocol::Http2),
        ("http", AppProtocol::Http),
        ("web", AppProtocol::Http),
    ] {
        assert_eq!(AppProtocol::from_port_name(name), want, "{name}");
    }
    assert_eq!(reviews.endpoints.len(), 2);
    assert_eq!(
        reviews.endpoints[0].address,
        "10.0.0.5:15006".parse().unwrap()
    );
    assert_eq!(
        reviews.endpoints[0].identity.as_ref().map(|i| i.to_uri()),
        Some("spiffe://cluster.local/ns/shop/sa/reviews".into())
    );
    assert_eq!(reviews.endpoints[0].weight, 2);
    assert_eq!(
        reviews.endpoints[1].address,
        "[fd00::7]:15006".parse().unwrap()
    );
    assert_eq!(reviews.endpoints[1].weight, 1);
    assert_eq!(
        reviews.identities,
        vec![IdentityMatch::Prefix(
            "spiffe://cluster.local/ns/shop/".into()
        )]
    );
    assert_eq!(reviews.lb_policy, LbPolicy::LeastRequest);
    assert_eq!(reviews.upstream_tls, UpstreamTls::Mutual);
    assert_eq!(reviews.connect_timeout, Duration::from_secs(2));
    assert_eq!(
        reviews.circuit_breaker,
        Some(CircuitBreaker {
            max_connections: Some(100),
            max_pending_requests: Some(10),
            max_requests: Some(200),
        })
    );
    assert_eq!(
        reviews.outlier_detection,
        Some(OutlierDetection {
            consecutive_5xx: 7,
            interval: Duration::from_secs(5),
            base_ejection_time: Duration::from_secs(60),
            max_ejection_percent: 50,
        })
    );

    let ratings = mesh.service("shop", "ratings").unwrap();
    assert_eq!(ratings.lb_policy, LbPolicy::RoundRobin);
    assert_eq!(ratings.connect_timeout, Service::DEFAULT_CONNECT_TIMEOUT);
    assert_eq!(ratings.circuit_breaker, None);

    let db = mesh.service("default", "db").unwrap();
    assert_eq!(db.upstream_tls, UpstreamTls::Disabled);
    assert_eq!(db.endpoints[0].identity, None);
}

#[test]
fn routes_carry_matches_backends_retries_and_timeouts() {
    let mesh = example_mesh();
    let route = mesh.route("shop", "reviews").unwrap();
    let canary = route.rule_named("canary").unwrap();
    let m = &canary.matches[0];
    assert_eq!(m.path, Some(PathMatch::Prefix("/api/".into())));
    assert_eq!(m.method.as_deref(), Some("GET"));
    assert_eq!(
        m.headers[0].name, "x-canary",
        "header names are lower-cased"
    );
    assert_eq!(
        m.headers[0].condition,
        HeaderCondition::Exact("true".into())
    );
    assert_eq!(
        canary.backends,
        vec![
            Backend {
                service: ObjectRef::new("shop", "reviews"),
                port: 9080,
                weight: 90
            },
            Backend {
                service: ObjectRef::new("shop", "ratings"),
                port: 8080,
                weight: 10
            },
        ]
    );
    assert_eq!(
        canary.retry,
        Some(RetryPolicy {
            attempts: 3,
            per_try_timeout: Some(Duration::from_millis(500)),
            retry_on: vec![RetryOn::FiveXx, RetryOn::Reset],
        })
    );
    assert_eq!(canary.timeout, Some(Duration::from_secs(2)));

    let second = &route.rules[1];
    let Some(PathMatch::Regex(re)) = &second.matches[0].path else {
        panic!("expected a regex path: {:?}", second.matches[0].path);
    };
    assert!(re.is_match("/v2/items"));
    assert!(!re.is_match("/x/v2/items"), "regexes are anchored");
    assert_eq!(
        second.matches[1].headers[0].condition,
        HeaderCondition::Present(true)
    );
    assert_eq!(second.backends[0].weight, 1, "default weight");
    assert_eq!(
        second.retry.as_ref().map(|r| r.retry_on.clone()),
        Some(vec![
            RetryOn::ConnectFailure,
            RetryOn::Reset,
            RetryOn::GatewayError
        ])
    );
    assert_eq!(second.timeout, None);
}

#[test]
fn resolve_host_understands_every_kubernetes_name_form() {
    let mesh = example_mesh();
    let resolved = |host: &str, ns: &str| {
        mesh.resolve_host(host, ns)
            .map(|(s, p)| (s.key().to_string(), p.map(|p| p.port)))
    };
    let reviews = |port| Some(("shop/reviews".to_string(), port));
    for host in [
        "reviews.shop",
        "reviews.shop.svc",
        "reviews.shop.svc.cluster.local",
        "reviews.shop.svc.cluster.local.",
        "Reviews.Shop.SVC.Cluster.Local",
    ] {
        // Two ports and no port in the host: the caller's listener decides.
        assert_eq!(resolved(host, "default"), reviews(None), "{host}");
        assert_eq!(
            resolved(&format!("{host}:9080"), "default"),
            reviews(Some(9080)),
            "{host}:9080"
        );
        assert_eq!(
            resolved(&format!("{host}:1234"), "default"),
            None,
            "{host}:1234"
        );
    }
    // The short name works from the same namespace only.
    assert_eq!(resolved("reviews", "shop"), reviews(None));
    assert_eq!(resolved("reviews:9090", "shop"), reviews(Some(9090)));
    assert_eq!(resolved("reviews", "default"), None);
    // A single-port service resolves its port without one in the host.
    assert_eq!(
        resolved("ratings.shop", "default"),
        Some(("shop/ratings".to_string(), Some(8080)))
    );
    assert_eq!(
        resolved("db", "default"),
        Some(("default/db".to_string(), Some(5432)))
    );
    // Not service names.
    for host in [
        "reviews.shop.svc.other.domain",
        "reviews.nowhere",
        "reviews.shop.pod",
        "10.0.0.5:9080",
        "[::1]:9080",
        "",
    ] {
        assert_eq!(resolved(host, "shop"), None, "{host:?}");
    }
    assert_eq!(
        mesh.service_hostnames(mesh.service("shop", "reviews").unwrap()),
        [
            "reviews.shop.svc.cluster.local",
            "reviews.shop.svc",
            "reviews.shop",
            "reviews"
        ]
    );
}

#[test]
fn the_cluster_domain_is_configurable() {
    let options = MeshOptions {
        cluster_domain: "corp.internal".into(),
        ..MeshOptions::default()
    };
    let mesh = Mesh::build_with(options, Document::parse_yaml(SERVICES).unwrap()).unwrap();
    assert!(
        mesh.resolve_host("ratings.shop.svc.corp.internal", "x")
            .is_some()
    );
    assert!(
        mesh.resolve_host("ratings.shop.svc.cluster.local", "x")
            .is_none()
    );
}

#[test]
fn routes_are_found_by_hostname_wildcard_and_service() {
    let mesh = example_mesh();
    let name = |r: Option<&HttpRoute>| r.map(|r| r.key().to_string());
    assert_eq!(
        name(mesh.route_for_host("reviews.example.com", "x")),
        Some("shop/reviews".into())
    );
    assert_eq!(
        name(mesh.route_for_host("REVIEWS.example.com:8443", "x")),
        Some("shop/reviews".into())
    );
    assert_eq!(
        name(mesh.route_for_host("a.b.example.org", "x")),
        Some("shop/storefront".into())
    );
    assert_eq!(name(mesh.route_for_host("example.org", "x")), None);
    // Through the service: the route is attached to port 9080 only.
    assert_eq!(
        name(mesh.route_for_host("reviews.shop:9080", "x")),
        Some("shop/reviews".into())
    );
    assert_eq!(
        name(mesh.route_for_host("reviews:9080", "shop")),
        Some("shop/reviews".into())
    );
    assert_eq!(name(mesh.route_for_host("reviews.shop:9090", "x")), None);
    assert_eq!(name(mesh.route_for_host("ratings.shop", "x")), None);
}

#[test]
fn policies_select_workloads_and_the_most_specific_tls_policy_wins() {
    let mesh = example_mesh();
    let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let reviews_pod = labels(&[("app", "reviews")]);
    let canary_pod = labels(&[("app", "reviews"), ("tier", "canary")]);
    let other = labels(&[("app", "other")]);
    let none = BTreeSet::new();
    let w = |namespace, labels| WorkloadRef {
        namespace,
        labels,
        rollouts: &none,
    };

    let authz = |w| -> Vec<String> {
        mesh.authorization_policies_for(w)
            .iter()
            .map(|p| format!("{}/{}", p.namespace, p.name))
            .collect()
    };
    // The root-namespace DENY applies everywhere; the ALLOW only behind Service reviews.
    assert_eq!(
        authz(w("shop", &reviews_pod)),
        ["mesh-system/deny-debug", "shop/allow-frontend"]
    );
    assert_eq!(authz(w("shop", &other)), ["mesh-system/deny-debug"]);
    assert_eq!(
        authz(w("default", &reviews_pod)),
        ["mesh-system/deny-debug"]
    );

    let rl: Vec<String> = mesh
        .rate_limit_policies_for(w("shop", &reviews_pod))
        .iter()
        .map(|p| p.name.clone())
        .collect();
    assert_eq!(rl, ["per-workload", "reviews-canary"]);
    assert!(
        mesh.rate_limit_policies_for(w("default", &reviews_pod))
            .is_empty()
    );
    let canary = mesh
        .rate_limit_policies()
        .find(|p| p.name == "reviews-canary")
        .unwrap();
    assert_eq!(
        canary.target,
        RateLimitTarget::Route {
            route: ObjectRef::new("shop", "reviews"),
            rule: Some("canary".into())
        }
    );
    assert_eq!(canary.burst, 200);
    let per_workload = mesh
        .rate_limit_policies()
        .find(|p| p.name == "per-workload")
        .unwrap();
    assert_eq!(per_workload.burst, 50, "burst defaults to the rate");

    let tls = |w| mesh.tls_policy_for(w).map(|p| p.name.clone());
    assert_eq!(tls(w("shop", &reviews_pod)), Some("mesh-default".into()));
    assert_eq!(tls(w("shop", &canary_pod)), Some("tls13-canary".into()));
    let canary_policy = mesh.tls_policy_for(w("shop", &canary_pod)).unwrap();
    assert_eq!(canary_policy.min_version, TlsVersion::Tls13);
    assert_eq!(canary_policy.max_version, TlsVersion::Tls13);
    assert_eq!(canary_policy.drain_grace_period, Duration::from_secs(60));
    assert_eq!(canary_policy.inbound_mode, TlsMode::Strict);
    let default_policy = mesh.tls_policy_for(w("shop", &reviews_pod)).unwrap();
    assert_eq!(
        default_policy.key_exchange_groups,
        [
            KeyExchangeGroup::X25519MlKem768,
            KeyExchangeGroup::X25519,
            KeyExchangeGroup::Secp256r1
        ]
    );

    // A namespace policy with no selector beats the mesh default, but not a staged rollout;
    // equal specificity falls back to name order.
    let extra = format!(
        "{}---\n{}---\n{}",
        doc("TlsPolicy", "shop/shop-default", "inboundMode: PERMISSIVE"),
        doc(
            "TlsPolicy",
            "shop/b-labels",
            "selector: {matchLabels: {app: reviews}}"
        ),
        doc(
            "TlsPolicy",
            "shop/a-labels",
            "selector: {matchLabels: {app: reviews}}"
        ),
    );
    let mut mesh2 = mesh.clone();
    for d in Document::parse_yaml(&extra).unwrap() {
        mesh2 = mesh2.with_document(d).unwrap();
    }
    let tls2 = |w| mesh2.tls_policy_for(w).map(|p| p.name.clone());
    assert_eq!(tls2(w("shop", &other)), Some("shop-default".into()));
    assert_eq!(tls2(w("shop", &reviews_pod)), Some("a-labels".into()));
    assert_eq!(tls2(w("shop", &canary_pod)), Some("a-labels".into()));
    assert_eq!(tls2(w("default", &other)), Some("mesh-default".into()));
}

#[test]
fn a_percentage_rollout_applies_to_its_share_of_sidecars_only() {
    let yaml = format!(
        "{}---\n{}",
        doc("TlsPolicy", "mesh-system/mesh-tls", "minVersion: \"1.2\""),
        doc(
            "TlsPolicy",
            "mesh-system/mesh-tls-stage",
            "rolloutPercent: 10\nminVersion: \"1.3\""
        ),
    );
    let mesh = Mesh::build(Document::parse_yaml(&yaml).unwrap()).unwrap();
    let labels = BTreeMap::from([("app".to_string(), "web".to_string())]);

    // About a tenth of a fleet falls in, by a stable hash of the sidecar id.
    let ids: Vec<String> = (0..2000).map(|i| format!("web-{i}.default")).collect();
    let staged: Vec<&String> = ids
        .iter()
        .filter(|id| {
            !mesh
                .rollouts_for("default", &labels, rollout_bucket(id))
                .is_empty()
        })
        .collect();
    assert!(
        (150..=250).contains(&staged.len()),
        "{} of 2000 sidecars in a 10 % rollout",
        staged.len()
    );
    assert_eq!(
        rollout_bucket("web-0.default"),
        rollout_bucket("web-0.default")
    );

    // A sidecar in the share gets the staged policy, one outside it the mesh-wide one.
    let policy = |id: &str| {
        let rollouts = mesh.rollouts_for("default", &labels, rollout_bucket(id));
        let w = WorkloadRef {
            namespace: "default",
            labels: &labels,
            rollouts: &rollouts,
        };
        mesh.tls_policy_for(w).map(|p| p.name.clone()).unwrap()
    };
    let inside = staged[0];
    let outside = ids.iter().find(|id| !staged.contains(id)).unwrap();
    assert_eq!(policy(inside), "mesh-tls-stage");
    assert_eq!(policy(outside), "mesh-tls");

    // Raising the share only adds sidecars.
    let raised = mesh
        .with_document(
            Document::parse_yaml(&doc(
                "TlsPolicy",
                "mesh-system/mesh-tls-stage",
                "rolloutPercent: 50\nminVersion: \"1.3\"",
            ))
            .unwrap()
            .remove(0),
        )
        .unwrap();
    for id in &staged {
        assert!(
            !raised
                .rollouts_for("default", &labels, rollout_bucket(id))
                .is_empty()
        );
    }

    // 100 % is everyone; 0 or more than 100 is refused with the field named.
    for (pct, err) in [("0", true), ("101", true), ("100", false)] {
        let r = Document::parse_yaml(&doc(
            "TlsPolicy",
            "mesh-system/s",
            &format!("rolloutPercent: {pct}"),
        ))
        .map_err(|e| e.to_string())
        .and_then(|docs| Mesh::build(docs).map_err(|e| e.to_string()));
        match r {
            Err(e) if err => assert!(
                e.to_string()
                    .contains("spec.rolloutPercent: must be 1..=100"),
                "{e}"
            ),
            Ok(m) => assert!(!err && m.tls_policies().all(|p| p.rollout_percent.is_none())),
            Err(e) => panic!("{pct}: {e}"),
        }
    }
}

#[test]
fn applying_and_deleting_keeps_the_set_valid() {
    let mesh = example_mesh();
    let count = mesh.len();

    // A route to a service that does not exist cannot be applied ...
    let bad = Document::parse_yaml(&doc(
        "HTTPRoute",
        "shop/details",
        "hostnames: [details.example.com]\nrules: [{backends: [{service: details, port: 80}]}]",
    ))
    .unwrap()
    .remove(0);
    let e = mesh.with_document(bad.clone()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "HTTPRoute shop/details: spec.rules[0].backends[0].service: \
         Service shop/details does not exist"
    );
    // ... but can together with the service.
    let details = Document::parse_yaml(&doc(
        "Service",
        "shop/details",
        "ports: [{name: http, port: 80, protocol: http}]",
    ))
    .unwrap()
    .remove(0);
    let grown = mesh.with_documents(vec![details, bad]).unwrap();
    assert_eq!(grown.len(), count + 2);
    assert!(grown.route_for_host("details.example.com", "x").is_some());
    // Replacing the route that a rate limit names, without the rule it names, is refused.
    let replacement =
        Document::parse_yaml(&route_rule("backends: [{service: ratings, port: 8080}]"))
            .unwrap()
            .remove(0);
    let e = mesh.with_document(replacement).unwrap_err();
    assert!(
        e.to_string().contains(
            "RateLimitPolicy shop/reviews-canary: spec.rule: HTTPRoute shop/reviews has no rule \
             named \"canary\""
        ),
        "{e}"
    );

    // Re-applying an unchanged document is a no-op.
    let same = mesh.documents().next().unwrap().clone();
    let again = mesh.with_document(same.clone()).unwrap();
    assert_eq!(again.len(), count);
    assert_eq!(
        again.document(&same.key()).map(Document::canonical_json),
        Some(same.canonical_json())
    );

    // A service that a route still sends to cannot be deleted; the route can.
    let e = mesh.without(Kind::Service, "shop", "ratings").unwrap_err();
    assert!(
        e.to_string()
            .contains("Service shop/ratings does not exist"),
        "{e}"
    );
    let e = mesh
        .without(Kind::HttpRoute, "shop", "reviews")
        .unwrap_err();
    assert!(
        e.to_string().contains(
            "RateLimitPolicy shop/reviews-canary: spec.route: HTTPRoute shop/reviews does not exist"
        ),
        "{e}"
    );
    let smaller = mesh
        .without(Kind::RateLimitPolicy, "shop", "reviews-canary")
        .unwrap();
    assert_eq!(smaller.len(), count - 1);
    let smaller = smaller.without(Kind::HttpRoute, "shop", "reviews").unwrap();
    assert_eq!(smaller.len(), count - 2);
    assert!(smaller.route_for_host("reviews.example.com", "x").is_none());
    // Deleting what is not there changes nothing.
    assert_eq!(
        mesh.without(Kind::TlsPolicy, "shop", "nope").unwrap().len(),
        count
    );
}

#[test]
fn an_empty_mesh_is_valid() {
    let mesh = Mesh::build(Vec::new()).unwrap();
    assert!(mesh.is_empty());
    assert!(mesh.resolve_host("reviews.shop", "x").is_none());
    let labels = BTreeMap::new();
    let w = WorkloadRef {
        namespace: "shop",
        labels: &labels,
        rollouts: &BTreeSet::new(),
    };
    assert!(mesh.tls_policy_for(w).is_none());
}

#[test]
fn a_sidecar_names_what_its_workloads_reach_and_the_most_specific_applies() {
    let yaml = format!(
        "{}---\n{}---\n{}",
        doc(
            "Sidecar",
            "mesh-system/default",
            "egress: [\"./*\", \"shared/auth\"]"
        ),
        doc(
            "Sidecar",
            "shop/frontend",
            "selector: {matchLabels: {app: frontend}}\negress: [\"*/*\"]"
        ),
        doc("Sidecar", "shop/shop-default", "egress: [\"shop/reviews\"]"),
    );
    let mesh = Mesh::build(Document::parse_yaml(&yaml).unwrap()).unwrap();
    let none = BTreeSet::new();
    let reaches = |ns: &str, app: &str, target: (&str, &str)| {
        let labels = BTreeMap::from([("app".to_string(), app.to_string())]);
        let w = WorkloadRef {
            namespace: ns,
            labels: &labels,
            rollouts: &none,
        };
        let s = mesh.sidecar_for(w).unwrap();
        (s.name.clone(), s.reaches(ns, target.0, target.1))
    };
    // The root namespace's default: `.` is the workload's own namespace.
    assert_eq!(
        reaches("pay", "x", ("pay", "ledger")),
        ("default".into(), true)
    );
    assert_eq!(
        reaches("pay", "x", ("shared", "auth")),
        ("default".into(), true)
    );
    assert_eq!(
        reaches("pay", "x", ("shared", "other")),
        ("default".into(), false)
    );
    assert_eq!(
        reaches("pay", "x", ("shop", "reviews")),
        ("default".into(), false)
    );
    // The namespace's own beats the root's; a selector beats both.
    assert_eq!(
        reaches("shop", "x", ("shop", "reviews")),
        ("shop-default".into(), true)
    );
    assert_eq!(
        reaches("shop", "x", ("shop", "cart")),
        ("shop-default".into(), false)
    );
    assert_eq!(
        reaches("shop", "frontend", ("pay", "ledger")),
        ("frontend".into(), true)
    );

    // Bad egress entries are refused, each with its index and what was expected.
    for (egress, want) in [
        ("[]", "spec.egress: list at least one NAMESPACE/SERVICE"),
        (
            "[\"shop\"]",
            "spec.egress[0]: \"shop\": expected NAMESPACE/SERVICE",
        ),
        (
            "[\"./*\", \"Shop/x\"]",
            "spec.egress[1]: namespace \"Shop\"",
        ),
        ("[\"shop/x_y\"]", "spec.egress[0]: service \"x_y\""),
    ] {
        let e = Document::parse_yaml(&doc("Sidecar", "shop/bad", &format!("egress: {egress}")))
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "{egress}: {e}");
    }
}
