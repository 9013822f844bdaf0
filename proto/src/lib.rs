//! The `mesh.v1` API: the generated Rust of `proto/mesh/v1/*.proto`, and a few helpers.
//!
//! The `.proto` files are the specification. The discovery protocol's rules are at the top of
//! `mesh/v1/discovery.proto`, the identity flow at the top of `mesh/v1/identity.proto`, and the
//! meaning of every resource field is in `mesh/v1/resources.proto`.
//!
//! - [`v1`]: messages, plus clients and servers for both services
//!   ([`v1::identity_client::IdentityClient`], [`v1::identity_server::IdentityServer`],
//!   [`v1::discovery_client::DiscoveryClient`], [`v1::discovery_server::DiscoveryServer`]).
//! - Type URLs, as constants ([`LISTENER_TYPE_URL`], ..., [`ALL_TYPE_URLS`]) and as the
//!   [`ResourceType`] enum, which is the better key for per-type state.
//!
//! Every map in the generated code is a `BTreeMap`. That makes encoding deterministic, so a hash
//! of a resource's encoding is a stable content version (discovery.proto, section 4).

use std::fmt;

/// Generated code for the protobuf package `mesh.v1`.
#[cfg(feature = "grpc")]
pub mod codec;
pub mod names;

pub mod v1 {
    // Generated code: tonic-prost-build already puts `#[allow(clippy::all)]` on every type and
    // the needed allows on the client and server modules.
    include!(concat!(env!("OUT_DIR"), "/mesh.v1.rs"));
}

use v1::resource::Body;

/// The prefix that every `mesh.v1` type URL starts with.
pub const TYPE_URL_PREFIX: &str = "type.mesh.v1/";

/// Type URL of [`v1::Listener`].
pub const LISTENER_TYPE_URL: &str = "type.mesh.v1/Listener";
/// Type URL of [`v1::RouteTable`].
pub const ROUTE_TABLE_TYPE_URL: &str = "type.mesh.v1/RouteTable";
/// Type URL of [`v1::Cluster`].
pub const CLUSTER_TYPE_URL: &str = "type.mesh.v1/Cluster";
/// Type URL of [`v1::AuthorizationPolicy`].
pub const AUTHORIZATION_POLICY_TYPE_URL: &str = "type.mesh.v1/AuthorizationPolicy";
/// Type URL of [`v1::RateLimitPolicy`].
pub const RATE_LIMIT_POLICY_TYPE_URL: &str = "type.mesh.v1/RateLimitPolicy";
/// Type URL of [`v1::TlsPolicy`].
pub const TLS_POLICY_TYPE_URL: &str = "type.mesh.v1/TlsPolicy";
/// Type URL of [`v1::TrustBundle`].
pub const TRUST_BUNDLE_TYPE_URL: &str = "type.mesh.v1/TrustBundle";
/// Type URL of [`v1::IdentityDirective`].
pub const IDENTITY_DIRECTIVE_TYPE_URL: &str = "type.mesh.v1/IdentityDirective";

/// Every type URL, in the order the server sends types when one change touches several
/// (discovery.proto, section 9). A sidecar subscribes to all of them.
pub const ALL_TYPE_URLS: &[&str] = &[
    TRUST_BUNDLE_TYPE_URL,
    TLS_POLICY_TYPE_URL,
    AUTHORIZATION_POLICY_TYPE_URL,
    RATE_LIMIT_POLICY_TYPE_URL,
    CLUSTER_TYPE_URL,
    ROUTE_TABLE_TYPE_URL,
    LISTENER_TYPE_URL,
    IDENTITY_DIRECTIVE_TYPE_URL,
];

/// The resource types of `mesh.v1`: one per variant of [`v1::resource::Body`].
///
/// The derived `Ord` is the send order of discovery.proto, section 9, so a `BTreeMap` keyed by
/// `ResourceType` iterates in that order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceType {
    /// [`v1::TrustBundle`]
    TrustBundle,
    /// [`v1::TlsPolicy`]
    TlsPolicy,
    /// [`v1::AuthorizationPolicy`]
    AuthorizationPolicy,
    /// [`v1::RateLimitPolicy`]
    RateLimitPolicy,
    /// [`v1::Cluster`]
    Cluster,
    /// [`v1::RouteTable`]
    RouteTable,
    /// [`v1::Listener`]
    Listener,
    /// [`v1::IdentityDirective`]
    IdentityDirective,
}

// === impl ResourceType ===

impl ResourceType {
    /// Every resource type, in send order (the same order as [`ALL_TYPE_URLS`]).
    pub const ALL: [ResourceType; 8] = [
        Self::TrustBundle,
        Self::TlsPolicy,
        Self::AuthorizationPolicy,
        Self::RateLimitPolicy,
        Self::Cluster,
        Self::RouteTable,
        Self::Listener,
        Self::IdentityDirective,
    ];

    /// The type URL, for example `"type.mesh.v1/Cluster"`.
    pub const fn type_url(self) -> &'static str {
        match self {
            Self::TrustBundle => TRUST_BUNDLE_TYPE_URL,
            Self::TlsPolicy => TLS_POLICY_TYPE_URL,
            Self::AuthorizationPolicy => AUTHORIZATION_POLICY_TYPE_URL,
            Self::RateLimitPolicy => RATE_LIMIT_POLICY_TYPE_URL,
            Self::Cluster => CLUSTER_TYPE_URL,
            Self::RouteTable => ROUTE_TABLE_TYPE_URL,
            Self::Listener => LISTENER_TYPE_URL,
            Self::IdentityDirective => IDENTITY_DIRECTIVE_TYPE_URL,
        }
    }

    /// The message name, for example `"Cluster"`: the type URL without [`TYPE_URL_PREFIX`].
    pub fn name(self) -> &'static str {
        let url = self.type_url();
        url.strip_prefix(TYPE_URL_PREFIX).unwrap_or(url)
    }

    /// The resource type of a type URL, or `None` for a URL that `mesh.v1` does not define. A
    /// server answers a subscription to an unknown type with an empty response
    /// (discovery.proto, section 3).
    pub fn from_type_url(type_url: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.type_url() == type_url)
    }
}

impl fmt::Display for ResourceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

// === impl resource::Body ===

impl Body {
    /// The resource type of this body.
    pub const fn resource_type(&self) -> ResourceType {
        match self {
            Self::Listener(_) => ResourceType::Listener,
            Self::RouteTable(_) => ResourceType::RouteTable,
            Self::Cluster(_) => ResourceType::Cluster,
            Self::AuthorizationPolicy(_) => ResourceType::AuthorizationPolicy,
            Self::RateLimitPolicy(_) => ResourceType::RateLimitPolicy,
            Self::TlsPolicy(_) => ResourceType::TlsPolicy,
            Self::TrustBundle(_) => ResourceType::TrustBundle,
            Self::IdentityDirective(_) => ResourceType::IdentityDirective,
        }
    }

    /// The type URL of this body: a response that carries it must have this `type_url`.
    pub const fn type_url(&self) -> &'static str {
        self.resource_type().type_url()
    }

    /// The `name` field of the message inside. It must equal the enclosing
    /// [`v1::Resource::name`].
    pub fn name(&self) -> &str {
        match self {
            Self::Listener(r) => &r.name,
            Self::RouteTable(r) => &r.name,
            Self::Cluster(r) => &r.name,
            Self::AuthorizationPolicy(r) => &r.name,
            Self::RateLimitPolicy(r) => &r.name,
            Self::TlsPolicy(r) => &r.name,
            Self::TrustBundle(r) => &r.name,
            Self::IdentityDirective(r) => &r.name,
        }
    }
}

/// The type URL of a resource body. The same as [`Body::type_url`].
pub const fn type_url_of(body: &Body) -> &'static str {
    body.type_url()
}

// === impl DiscoveryRequest ===

impl v1::DiscoveryRequest {
    /// The `google.rpc.Code` that a sidecar puts in a NACK: INVALID_ARGUMENT.
    pub const NACK_CODE: i32 = 3;

    /// An ACK of the response with `nonce`: every resource in it was applied.
    pub fn ack(type_url: impl Into<String>, nonce: impl Into<String>) -> Self {
        Self {
            type_url: type_url.into(),
            response_nonce: nonce.into(),
            ..Self::default()
        }
    }

    /// A NACK of the response with `nonce`. `message` names every rejected resource with the
    /// reason, one `"<name>: <reason>"` line each (discovery.proto, section 5).
    pub fn nack(
        type_url: impl Into<String>,
        nonce: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            type_url: type_url.into(),
            response_nonce: nonce.into(),
            error_detail: Some(v1::Status {
                code: Self::NACK_CODE,
                message: message.into(),
            }),
            ..Self::default()
        }
    }

    /// Whether this request ACKs a response: it has a nonce and no error.
    pub fn is_ack(&self) -> bool {
        !self.response_nonce.is_empty() && self.error_detail.is_none()
    }

    /// Whether this request NACKs a response: it has a nonce and an error.
    pub fn is_nack(&self) -> bool {
        !self.response_nonce.is_empty() && self.error_detail.is_some()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashSet};

    use prost::Message;

    use super::v1::*;
    use super::*;

    /// One non-trivial body of the given type, with nested messages, oneofs, enums and maps
    /// set, so that a round trip exercises more than default values.
    fn sample_body(t: ResourceType) -> Body {
        match t {
            ResourceType::Listener => Body::Listener(Listener {
                name: "outbound|reviews.shop:9080".into(),
                address: "127.0.0.1:9080".into(),
                direction: listener::Direction::Outbound.into(),
                protocol: Protocol::Http.into(),
                route_table: "reviews.shop:9080".into(),
                default_cluster: String::new(),
                tls_mode: TlsMode::Unspecified.into(),
            }),
            ResourceType::RouteTable => Body::RouteTable(RouteTable {
                name: "reviews.shop:9080".into(),
                virtual_hosts: vec![VirtualHost {
                    name: "reviews.shop".into(),
                    domains: vec!["reviews".into(), "reviews.shop:9080".into()],
                    routes: vec![Route {
                        name: "canary".into(),
                        r#match: Some(RouteMatch {
                            path: Some(route_match::Path::Prefix("/api/".into())),
                            headers: vec![
                                HeaderMatch {
                                    name: "x-canary".into(),
                                    r#match: Some(header_match::Match::Present(true)),
                                },
                                HeaderMatch {
                                    name: "x-user".into(),
                                    r#match: Some(header_match::Match::Regex("a.*".into())),
                                },
                            ],
                            method: "GET".into(),
                        }),
                        backends: vec![
                            WeightedCluster {
                                cluster: "outbound|reviews-v1.shop:9080".into(),
                                weight: 90,
                            },
                            WeightedCluster {
                                cluster: "outbound|reviews-v2.shop:9080".into(),
                                weight: 10,
                            },
                        ],
                        retry: Some(RetryPolicy {
                            attempts: 2,
                            per_try_timeout_ms: 250,
                            retry_on: vec!["5xx".into(), "connect-failure".into()],
                        }),
                        timeout_ms: 1_000,
                    }],
                }],
            }),
            ResourceType::Cluster => Body::Cluster(Cluster {
                name: "outbound|reviews-v1.shop:9080".into(),
                service: "reviews".into(),
                namespace: "shop".into(),
                port: 9080,
                protocol: Protocol::Http.into(),
                endpoints: vec![Endpoint {
                    address: "[fd00::1]:15006".into(),
                    identity: "spiffe://cluster.local/ns/shop/sa/reviews".into(),
                    labels: BTreeMap::from([("version".into(), "v1".into())]),
                    weight: 3,
                    health: EndpointHealth::Draining.into(),
                }],
                lb_policy: cluster::LbPolicy::LeastRequestP2c.into(),
                circuit_breaker: Some(CircuitBreaker {
                    max_connections: 100,
                    max_pending_requests: 10,
                    max_requests: 1_000,
                }),
                outlier_detection: Some(OutlierDetection {
                    consecutive_5xx: 5,
                    interval_ms: 10_000,
                    base_ejection_ms: 30_000,
                    max_ejection_percent: 50,
                }),
                connect_timeout_ms: 2_000,
                expected_identities: vec!["spiffe://cluster.local/ns/shop/sa/*".into()],
                upstream_tls: cluster::UpstreamTls::Mutual.into(),
                app_protocol: AppProtocol::Http2.into(),
            }),
            ResourceType::AuthorizationPolicy => Body::AuthorizationPolicy(AuthorizationPolicy {
                name: "shop/allow-frontend".into(),
                namespace: "shop".into(),
                selector: Some(WorkloadSelector {
                    match_labels: BTreeMap::from([("app".into(), "reviews".into())]),
                }),
                action: authorization_policy::Action::Allow.into(),
                rules: vec![AuthorizationRule {
                    from: vec![Source {
                        principals: vec!["spiffe://cluster.local/ns/shop/sa/frontend".into()],
                        namespaces: vec![],
                    }],
                    to: vec![Operation {
                        paths: vec!["/api/*".into()],
                        methods: vec!["GET".into()],
                        ports: vec![9080],
                    }],
                }],
            }),
            ResourceType::RateLimitPolicy => Body::RateLimitPolicy(RateLimitPolicy {
                name: "shop/reviews-limit".into(),
                namespace: "shop".into(),
                selector: None,
                requests_per_second: 100,
                burst: 200,
                scope: rate_limit_policy::Scope::PerRoute.into(),
                route: "canary".into(),
            }),
            ResourceType::TlsPolicy => Body::TlsPolicy(TlsPolicy {
                name: "mesh-default".into(),
                min_version: TlsVersion::Tls13.into(),
                max_version: TlsVersion::Tls13.into(),
                cipher_suites: vec!["TLS13_AES_128_GCM_SHA256".into()],
                key_exchange_groups: vec!["X25519MLKEM768".into(), "X25519".into()],
                inbound_mode: TlsMode::Strict.into(),
                drain_grace_period_ms: 30_000,
            }),
            ResourceType::TrustBundle => Body::TrustBundle(TrustBundle {
                name: "cluster.local".into(),
                trust_domain: "cluster.local".into(),
                roots: vec![
                    TrustRoot {
                        pem: "-----BEGIN CERTIFICATE-----\nold\n-----END CERTIFICATE-----\n".into(),
                        sha256_fingerprint: "aa".repeat(32),
                        not_after_unix: 1_900_000_000,
                    },
                    TrustRoot {
                        pem: "-----BEGIN CERTIFICATE-----\nnew\n-----END CERTIFICATE-----\n".into(),
                        sha256_fingerprint: "bb".repeat(32),
                        not_after_unix: 2_000_000_000,
                    },
                ],
            }),
            ResourceType::IdentityDirective => Body::IdentityDirective(IdentityDirective {
                name: "reissue".into(),
                reissue_before_unix: 1_800_000_000,
                reason: "ca-rotation".into(),
                generation: 7,
                issued_before_unix: 1_799_990_000,
            }),
        }
    }

    fn sample_resource(t: ResourceType) -> Resource {
        let body = sample_body(t);
        Resource {
            name: body.name().to_owned(),
            version: format!("v-{}", t.name()),
            body: Some(body),
        }
    }

    #[test]
    fn response_with_every_resource_type_round_trips_unchanged() {
        let response = DiscoveryResponse {
            type_url: CLUSTER_TYPE_URL.into(),
            resources: ResourceType::ALL.into_iter().map(sample_resource).collect(),
            removed_resources: vec!["outbound|gone.shop:80".into()],
            nonce: "42".into(),
            system_version_info: "rev-17".into(),
            control_plane: Some(ControlPlane {
                identity: "spiffe://cluster.local/ns/mesh-system/sa/meshd".into(),
                replica: "meshd-0".into(),
            }),
        };

        let bytes = response.encode_to_vec();
        let decoded = DiscoveryResponse::decode(bytes.as_slice()).unwrap();

        assert_eq!(decoded, response);
        assert_eq!(decoded.resources.len(), ResourceType::ALL.len());
    }

    #[test]
    fn every_body_maps_to_its_documented_type_url() {
        let documented = [
            (ResourceType::Listener, "type.mesh.v1/Listener"),
            (ResourceType::RouteTable, "type.mesh.v1/RouteTable"),
            (ResourceType::Cluster, "type.mesh.v1/Cluster"),
            (
                ResourceType::AuthorizationPolicy,
                "type.mesh.v1/AuthorizationPolicy",
            ),
            (
                ResourceType::RateLimitPolicy,
                "type.mesh.v1/RateLimitPolicy",
            ),
            (ResourceType::TlsPolicy, "type.mesh.v1/TlsPolicy"),
            (ResourceType::TrustBundle, "type.mesh.v1/TrustBundle"),
            (
                ResourceType::IdentityDirective,
                "type.mesh.v1/IdentityDirective",
            ),
        ];
        for (t, url) in documented {
            let body = sample_body(t);
            assert_eq!(body.resource_type(), t);
            assert_eq!(type_url_of(&body), url);
            assert_eq!(ResourceType::from_type_url(url), Some(t));
            assert_eq!(t.to_string(), url.trim_start_matches(TYPE_URL_PREFIX));
        }
        assert_eq!(ResourceType::from_type_url("type.mesh.v1/Secret"), None);
        assert_eq!(ResourceType::from_type_url(""), None);
    }

    #[test]
    fn all_type_urls_are_unique_and_cover_every_oneof_variant() {
        let unique: HashSet<&str> = ALL_TYPE_URLS.iter().copied().collect();
        assert_eq!(
            unique.len(),
            ALL_TYPE_URLS.len(),
            "duplicate in ALL_TYPE_URLS"
        );

        let in_order: Vec<&str> = ResourceType::ALL.iter().map(|t| t.type_url()).collect();
        assert_eq!(
            in_order, ALL_TYPE_URLS,
            "ResourceType::ALL and ALL_TYPE_URLS disagree"
        );
        assert!(ALL_TYPE_URLS.iter().all(|u| u.starts_with(TYPE_URL_PREFIX)));

        // Find the oneof variants from the wire rather than from a hand-written list: a field
        // with an empty message under each tag decodes to a body for exactly the oneof's tags.
        let mut found = HashSet::new();
        for tag in 1u32..=1_000 {
            let key = (tag << 3) | 2; // wire type 2: length-delimited
            let mut bytes = Vec::new();
            prost::encoding::encode_varint(u64::from(key), &mut bytes);
            bytes.push(0); // length 0: an empty message
            let resource = Resource::decode(bytes.as_slice()).unwrap();
            if let Some(body) = resource.body {
                assert!(
                    ALL_TYPE_URLS.contains(&body.type_url()),
                    "oneof tag {tag} maps to {} which is not in ALL_TYPE_URLS",
                    body.type_url()
                );
                assert!(
                    found.insert(body.type_url()),
                    "two tags map to {}",
                    body.type_url()
                );
            }
        }
        assert_eq!(found, unique, "ALL_TYPE_URLS and the oneof variants differ");
    }

    #[test]
    fn nack_decodes_with_its_error_message_intact() {
        let message = "routes-a: route \"r1\": regex \"(\" does not compile\n\
                       cluster-b: unknown retry_on \"5xxx\" (ünïcode kept)";
        let nack = DiscoveryRequest::nack(ROUTE_TABLE_TYPE_URL, "17", message);

        let decoded = DiscoveryRequest::decode(nack.encode_to_vec().as_slice()).unwrap();

        assert!(decoded.is_nack());
        assert!(!decoded.is_ack());
        assert_eq!(decoded.type_url, ROUTE_TABLE_TYPE_URL);
        assert_eq!(decoded.response_nonce, "17");
        let detail = decoded.error_detail.unwrap();
        assert_eq!(detail.message, message);
        assert_eq!(detail.code, DiscoveryRequest::NACK_CODE);
    }

    #[test]
    fn ack_and_subscription_requests_are_told_apart() {
        let ack = DiscoveryRequest::decode(
            DiscoveryRequest::ack(CLUSTER_TYPE_URL, "3")
                .encode_to_vec()
                .as_slice(),
        )
        .unwrap();
        assert!(ack.is_ack());
        assert!(!ack.is_nack());

        let subscribe = DiscoveryRequest {
            node: Some(Node {
                id: "reviews-v1-abc.shop".into(),
                namespace: "shop".into(),
                ..Node::default()
            }),
            type_url: CLUSTER_TYPE_URL.into(),
            initial_resource_versions: BTreeMap::from([("c".into(), "v1".into())]),
            ..DiscoveryRequest::default()
        };
        assert!(!subscribe.is_ack());
        assert!(!subscribe.is_nack());
    }

    #[test]
    fn encoding_does_not_depend_on_map_insertion_order() {
        // Versions are content hashes (discovery.proto, section 4), so equal content must
        // encode to equal bytes however its maps were filled.
        let forward: BTreeMap<String, String> = (0..50)
            .map(|i| (format!("key-{i}"), format!("value-{i}")))
            .collect();
        let backward: BTreeMap<String, String> = (0..50)
            .rev()
            .map(|i| (format!("key-{i}"), format!("value-{i}")))
            .collect();
        let selector = |match_labels| WorkloadSelector { match_labels };

        assert_eq!(
            selector(forward).encode_to_vec(),
            selector(backward).encode_to_vec()
        );
    }

    #[test]
    fn garbage_bytes_are_an_error_not_a_panic() {
        let valid = DiscoveryResponse {
            type_url: CLUSTER_TYPE_URL.into(),
            resources: vec![sample_resource(ResourceType::Cluster)],
            nonce: "1".into(),
            ..DiscoveryResponse::default()
        }
        .encode_to_vec();

        let garbage: Vec<Vec<u8>> = vec![
            vec![0xff; 16],                     // a varint key that never ends
            vec![0x0a, 0x05, b'a'],             // length 5, but only 1 byte follows
            vec![0x0b],                         // wire type 3 (start group): not allowed
            vec![0x0a, 0x02, 0xc3, 0x28],       // type_url that is not UTF-8
            vec![0x12, 0x03, 0x0a, 0x80, 0x80], // a resource whose nested varint is cut off
            valid[..valid.len() - 1].to_vec(),  // a valid message, truncated
        ];
        for bytes in &garbage {
            assert!(
                DiscoveryResponse::decode(bytes.as_slice()).is_err(),
                "{bytes:02x?} decoded"
            );
            assert!(
                DiscoveryRequest::decode(bytes.as_slice()).is_err(),
                "{bytes:02x?} decoded"
            );
        }
    }
}
