//! Mesh documents for end-to-end tests: a valid [`BASELINE`] and a corpus of invalid
//! changes to it, each with the text its error must contain (the field path, or for input that
//! is not even YAML, the problem). Every case is meant to be applied on top of the baseline
//! (some refer to its services or collide with its route) and must be refused as a whole.

/// The `apiVersion` line and a document header; `$spec` is indented by two spaces.
macro_rules! doc {
    ($kind:literal, $ns:literal, $name:literal, $spec:literal) => {
        concat!(
            "apiVersion: mesh.meshd.dev/v1alpha1\nkind: ",
            $kind,
            "\nmetadata:\n  name: ",
            $name,
            "\n  namespace: ",
            $ns,
            "\nspec:\n",
            $spec
        )
    };
}

/// Two services and a route between them, in namespace `shop`.
pub const BASELINE: &str = concat!(
    doc!(
        "Service",
        "shop",
        "reviews",
        "  ports:\n    - {name: http, port: 9080, protocol: http}\n    - {name: admin, port: 9090, protocol: tcp}\n  selector: {app: reviews}\n"
    ),
    "---\n",
    doc!(
        "Service",
        "shop",
        "ratings",
        "  ports: [{name: http, port: 8080, protocol: http}]\n  selector: {app: ratings}\n"
    ),
    "---\n",
    doc!(
        "HTTPRoute",
        "shop",
        "reviews",
        "  hostnames: [reviews.example.com]\n  rules:\n    - backends:\n        - {service: reviews, port: 9080, weight: 90}\n        - {service: ratings, port: 8080, weight: 10}\n"
    ),
);

/// The documents of [`BASELINE`] as (kind, namespace, name).
pub const BASELINE_KEYS: [(&str, &str, &str); 3] = [
    ("HTTPRoute", "shop", "reviews"),
    ("Service", "shop", "ratings"),
    ("Service", "shop", "reviews"),
];

/// One invalid input.
#[derive(Debug, Clone, Copy)]
pub struct Invalid {
    pub what: &'static str,
    /// The YAML posted (one or more documents).
    pub yaml: &'static str,
    /// What the error must contain: `Document ns/name: field.path` where there is a field.
    pub expect: &'static str,
}

const fn case(what: &'static str, yaml: &'static str, expect: &'static str) -> Invalid {
    Invalid { what, yaml, expect }
}

/// At least 30 invalid changes to [`BASELINE`], each refused with a message naming the field.
pub fn invalid_corpus() -> Vec<Invalid> {
    vec![
        // --- the envelope ---
        case(
            "wrong kind",
            doc!("Gadget", "shop", "x", "  a: 1\n"),
            "Gadget shop/x: kind: unknown kind \"Gadget\"; known kinds: Service, HTTPRoute",
        ),
        case(
            "kind in the wrong case",
            doc!("HttpRoute", "shop", "x", "  a: 1\n"),
            "HttpRoute shop/x: kind: unknown kind \"HttpRoute\" (kinds are case-sensitive",
        ),
        case(
            "wrong apiVersion",
            concat!(
                "apiVersion: mesh.meshd.dev/v1\nkind: Service\nmetadata: {name: web, namespace: shop}\n",
                "spec: {ports: [{name: http, port: 80, protocol: http}]}\n"
            ),
            "Service shop/web: apiVersion: must be \"mesh.meshd.dev/v1alpha1\"",
        ),
        case(
            "missing metadata.name",
            "apiVersion: mesh.meshd.dev/v1alpha1\nkind: Service\nmetadata: {namespace: shop}\nspec: {ports: [{name: http, port: 80, protocol: http}]}\n",
            "Service (document #1): metadata.name: is required",
        ),
        case(
            "upper-case name",
            doc!(
                "Service",
                "shop",
                "Web",
                "  ports: [{name: http, port: 80, protocol: http}]\n"
            ),
            "Service shop/Web: metadata.name:",
        ),
        case(
            "unknown top-level field",
            concat!(
                doc!(
                    "Service",
                    "shop",
                    "web",
                    "  ports: [{name: http, port: 80, protocol: http}]\n"
                ),
                "labels: {app: web}\n"
            ),
            "Service shop/web: labels: unknown field",
        ),
        // --- Service ---
        case(
            "unknown spec field (typo)",
            doc!(
                "Service",
                "shop",
                "web",
                "  ports: [{name: http, port: 80, protocol: http}]\n  lbpolicy: RoundRobin\n"
            ),
            "Service shop/web: spec.lbpolicy: unknown field `lbpolicy`",
        ),
        case(
            "port 0",
            doc!(
                "Service",
                "shop",
                "web",
                "  ports: [{name: http, port: 0, protocol: http}]\n"
            ),
            "Service shop/web: spec.ports[0].port: must be 1..=65535",
        ),
        case(
            "protocol neither http nor tcp",
            doc!(
                "Service",
                "shop",
                "web",
                "  ports: [{name: dns, port: 53, protocol: udp}]\n"
            ),
            "Service shop/web: spec.ports[0].protocol: unknown variant `udp`",
        ),
        case(
            "no ports",
            doc!("Service", "shop", "web", "  selector: {app: web}\n"),
            "Service shop/web: spec.ports:",
        ),
        case(
            "endpoint address not ip:port",
            doc!(
                "Service",
                "shop",
                "web",
                "  ports: [{name: http, port: 80, protocol: http}]\n  endpoints: [{address: web.example.com:80, identity: spiffe://cluster.local/ns/shop/sa/web}]\n"
            ),
            "Service shop/web: spec.endpoints[0].address:",
        ),
        case(
            "bad duration",
            doc!(
                "Service",
                "shop",
                "web",
                "  ports: [{name: http, port: 80, protocol: http}]\n  connectTimeout: 5 parsecs\n"
            ),
            "Service shop/web: spec.connectTimeout: invalid duration",
        ),
        case(
            "a service change that breaks the baseline route",
            doc!(
                "Service",
                "shop",
                "ratings",
                "  ports: [{name: http, port: 8081, protocol: http}]\n  selector: {app: ratings}\n"
            ),
            "HTTPRoute shop/reviews: spec.rules[0].backends[1].port: Service shop/ratings has no port 8080",
        ),
        // --- HTTPRoute ---
        case(
            "weight out of range",
            doc!(
                "HTTPRoute",
                "shop",
                "reviews",
                "  hostnames: [reviews.example.com]\n  rules:\n    - backends:\n        - {service: reviews, port: 9080, weight: 50}\n        - {service: ratings, port: 8080, weight: 150}\n"
            ),
            "HTTPRoute shop/reviews: spec.rules[0].backends[1].weight: must be 0..=100",
        ),
        case(
            "route to an unknown service",
            doc!(
                "HTTPRoute",
                "shop",
                "details",
                "  hostnames: [details.example.com]\n  rules: [{backends: [{service: details, port: 9080}]}]\n"
            ),
            "HTTPRoute shop/details: spec.rules[0].backends[0].service: Service shop/details does not exist",
        ),
        case(
            "route to a port the service lacks",
            doc!(
                "HTTPRoute",
                "shop",
                "other",
                "  hostnames: [other.example.com]\n  rules: [{backends: [{service: reviews, port: 8080}]}]\n"
            ),
            "HTTPRoute shop/other: spec.rules[0].backends[0].port: Service shop/reviews has no port 8080",
        ),
        case(
            "route to a tcp port",
            doc!(
                "HTTPRoute",
                "shop",
                "other",
                "  hostnames: [other.example.com]\n  rules: [{backends: [{service: reviews, port: 9090}]}]\n"
            ),
            "HTTPRoute shop/other: spec.rules[0].backends[0].port: port 9090 of Service shop/reviews is tcp",
        ),
        case(
            "parentRef to an unknown service",
            doc!(
                "HTTPRoute",
                "shop",
                "other",
                "  parentRefs: [{name: details}]\n  rules: [{backends: [{service: reviews, port: 9080}]}]\n"
            ),
            "HTTPRoute shop/other: spec.parentRefs[0].name: Service shop/details does not exist",
        ),
        case(
            "a hostname the baseline route already serves",
            doc!(
                "HTTPRoute",
                "shop",
                "zzz",
                "  hostnames: [reviews.example.com]\n  rules: [{backends: [{service: ratings, port: 8080}]}]\n"
            ),
            "HTTPRoute shop/zzz: spec.hostnames[0]: \"reviews.example.com\" is already served by HTTPRoute shop/reviews",
        ),
        case(
            "duplicate names within one request",
            concat!(
                doc!(
                    "Service",
                    "shop",
                    "web",
                    "  ports: [{name: http, port: 80, protocol: http}]\n"
                ),
                "---\n",
                doc!(
                    "Service",
                    "shop",
                    "web",
                    "  ports: [{name: http, port: 81, protocol: http}]\n"
                ),
            ),
            "Service shop/web: metadata.name: Service shop/web is defined more than once",
        ),
        case(
            "bad timeout in a route",
            doc!(
                "HTTPRoute",
                "shop",
                "other",
                "  hostnames: [other.example.com]\n  rules: [{backends: [{service: reviews, port: 9080}], timeout: soon}]\n"
            ),
            "HTTPRoute shop/other: spec.rules[0].timeout: invalid duration",
        ),
        case(
            "too many retries",
            doc!(
                "HTTPRoute",
                "shop",
                "other",
                "  hostnames: [other.example.com]\n  rules: [{backends: [{service: reviews, port: 9080}], retries: {attempts: 11}}]\n"
            ),
            "HTTPRoute shop/other: spec.rules[0].retries.attempts: must be 1..=10",
        ),
        case(
            "invalid header regex",
            doc!(
                "HTTPRoute",
                "shop",
                "other",
                "  hostnames: [other.example.com]\n  rules:\n    - matches: [{headers: [{name: x-user, regex: \"(abc\"}]}]\n      backends: [{service: reviews, port: 9080}]\n"
            ),
            "HTTPRoute shop/other: spec.rules[0].matches[0].headers[0].regex: invalid regular expression",
        ),
        case(
            "path not starting with /",
            doc!(
                "HTTPRoute",
                "shop",
                "other",
                "  hostnames: [other.example.com]\n  rules:\n    - matches: [{path: {prefix: api}}]\n      backends: [{service: reviews, port: 9080}]\n"
            ),
            "HTTPRoute shop/other: spec.rules[0].matches[0].path.prefix: \"api\" must start with \"/\"",
        ),
        case(
            "lower-case method",
            doc!(
                "HTTPRoute",
                "shop",
                "other",
                "  hostnames: [other.example.com]\n  rules:\n    - matches: [{method: get}]\n      backends: [{service: reviews, port: 9080}]\n"
            ),
            "HTTPRoute shop/other: spec.rules[0].matches[0].method: \"get\" must be upper case",
        ),
        case(
            "a valid service and an invalid route in one request",
            concat!(
                doc!(
                    "Service",
                    "shop",
                    "details",
                    "  ports: [{name: http, port: 80, protocol: http}]\n"
                ),
                "---\n",
                doc!(
                    "HTTPRoute",
                    "shop",
                    "details",
                    "  hostnames: [details.example.com]\n  rules: [{backends: [{service: details, port: 80, weight: 101}]}]\n"
                ),
            ),
            "HTTPRoute shop/details: spec.rules[0].backends[0].weight: must be 0..=100",
        ),
        // --- AuthorizationPolicy ---
        case(
            "bad SPIFFE ID",
            doc!(
                "AuthorizationPolicy",
                "shop",
                "authz",
                "  action: ALLOW\n  rules: [{from: [{principals: [\"spiffe://cluster.local/ns/Shop/sa/web\"]}]}]\n"
            ),
            "AuthorizationPolicy shop/authz: spec.rules[0].from[0].principals[0]:",
        ),
        case(
            "principal without the spiffe:// scheme",
            doc!(
                "AuthorizationPolicy",
                "shop",
                "authz",
                "  action: ALLOW\n  rules: [{from: [{principals: [cluster.local/ns/shop/sa/web]}]}]\n"
            ),
            "AuthorizationPolicy shop/authz: spec.rules[0].from[0].principals[0]:",
        ),
        case(
            "unknown action",
            doc!(
                "AuthorizationPolicy",
                "shop",
                "authz",
                "  action: AUDIT\n  rules: [{}]\n"
            ),
            "AuthorizationPolicy shop/authz: spec.action: unknown variant `AUDIT`",
        ),
        case(
            "DENY without rules",
            doc!("AuthorizationPolicy", "shop", "authz", "  action: DENY\n"),
            "AuthorizationPolicy shop/authz: spec.rules: a DENY policy needs at least one rule",
        ),
        case(
            "selector naming an unknown service",
            doc!(
                "AuthorizationPolicy",
                "shop",
                "authz",
                "  selector: {service: details}\n  action: ALLOW\n"
            ),
            "AuthorizationPolicy shop/authz: spec.selector.service: Service shop/details does not exist",
        ),
        // --- RateLimitPolicy ---
        case(
            "requestsPerSecond 0",
            doc!("RateLimitPolicy", "shop", "rl", "  requestsPerSecond: 0\n"),
            "RateLimitPolicy shop/rl: spec.requestsPerSecond: must be 1..=1000000",
        ),
        case(
            "rate limit on an unknown route",
            doc!(
                "RateLimitPolicy",
                "shop",
                "rl",
                "  requestsPerSecond: 10\n  scope: route\n  route: details\n"
            ),
            "RateLimitPolicy shop/rl: spec.route: HTTPRoute shop/details does not exist",
        ),
        case(
            "rate limit on an unknown rule of the baseline route",
            doc!(
                "RateLimitPolicy",
                "shop",
                "rl",
                "  requestsPerSecond: 10\n  scope: route\n  route: reviews\n  rule: canary\n"
            ),
            "RateLimitPolicy shop/rl: spec.rule: HTTPRoute shop/reviews has no rule named \"canary\"",
        ),
        // --- TlsPolicy ---
        case(
            "TLS max below min",
            doc!(
                "TlsPolicy",
                "shop",
                "tls",
                "  minVersion: \"1.3\"\n  maxVersion: \"1.2\"\n"
            ),
            "TlsPolicy shop/tls: spec.maxVersion: \"1.2\" is lower than minVersion \"1.3\"",
        ),
        case(
            "unknown cipher suite",
            doc!(
                "TlsPolicy",
                "shop",
                "tls",
                "  cipherSuites: [TLS_RSA_WITH_RC4_128_SHA]\n"
            ),
            "TlsPolicy shop/tls: spec.cipherSuites[0]: unknown cipher suite",
        ),
        case(
            "unknown key-exchange group",
            doc!(
                "TlsPolicy",
                "shop",
                "tls",
                "  keyExchangeGroups: [X25519, ffdhe2048]\n"
            ),
            "TlsPolicy shop/tls: spec.keyExchangeGroups[1]: unknown key-exchange group",
        ),
        case(
            "TLS 1.1",
            doc!("TlsPolicy", "shop", "tls", "  minVersion: \"1.1\"\n"),
            "TlsPolicy shop/tls: spec.minVersion: TLS 1.1 is not supported",
        ),
        // --- the input itself ---
        case(
            "YAML syntax error",
            "apiVersion: mesh.meshd.dev/v1alpha1\nkind: Service\nmetadata: {name: web\nspec: {}\n",
            "document #1: invalid YAML:",
        ),
        case(
            "duplicate YAML key",
            concat!(
                doc!(
                    "Service",
                    "shop",
                    "web",
                    "  ports: [{name: http, port: 80, protocol: http}]\n"
                ),
                "spec: {}\n"
            ),
            "document #1: invalid YAML: duplicate entry with key \"spec\"",
        ),
        case(
            "no document at all",
            "  \n# nothing here\n",
            "input: contains no document",
        ),
    ]
}
