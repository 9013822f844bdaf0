//! SPIFFE IDs of mesh workloads: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
//!
//! The mesh only issues identities of this one shape (as Istio does), so the type holds the three
//! parts rather than an arbitrary path: a certificate can never carry an identity that a
//! Kubernetes namespace / ServiceAccount pair could not name.

use std::fmt;
use std::str::FromStr;

/// Why a string is not a mesh SPIFFE ID. Each message names the offending value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    #[error("SPIFFE ID {0:?} must start with \"spiffe://\"")]
    Scheme(String),
    #[error("SPIFFE ID {0:?} is longer than 2048 bytes")]
    TooLong(String),
    #[error("trust domain {0:?} is invalid: {1}")]
    TrustDomain(String, &'static str),
    #[error("SPIFFE ID {0:?} must have the path /ns/<namespace>/sa/<service-account>")]
    Path(String),
    #[error("{what} {value:?} is invalid: {why}")]
    Segment {
        what: &'static str,
        value: String,
        why: &'static str,
    },
}

/// A SPIFFE trust domain (`cluster.local`): lowercase letters, digits, `.`, `-`, `_`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(String);

impl TrustDomain {
    pub fn new(s: &str) -> Result<Self, SpiffeIdError> {
        let bad = |why| Err(SpiffeIdError::TrustDomain(s.to_string(), why));
        if s.is_empty() {
            return bad("it is empty");
        }
        if s.len() > 255 {
            return bad("it is longer than 255 characters");
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b))
        {
            return bad("only lowercase letters, digits, '.', '-' and '_' are allowed");
        }
        if s.starts_with('.') || s.ends_with('.') || s.contains("..") {
            return bad("dots may not start, end or repeat");
        }
        Ok(Self(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for TrustDomain {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// The identity of a mesh workload.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    trust_domain: TrustDomain,
    namespace: String,
    service_account: String,
}

/// The (namespace, service account) of a Kubernetes ServiceAccount user name,
/// `system:serviceaccount:<namespace>:<name>`, as TokenReviews and token `sub` claims give it;
/// `None` for any other user name.
pub fn service_account_of(username: &str) -> Option<(&str, &str)> {
    let mut parts = username.strip_prefix("system:serviceaccount:")?.split(':');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(ns), Some(sa), None) if !ns.is_empty() && !sa.is_empty() => Some((ns, sa)),
        _ => None,
    }
}

// === impl SpiffeId ===

impl SpiffeId {
    pub fn new(
        trust_domain: TrustDomain,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, SpiffeIdError> {
        // Namespaces are DNS-1123 labels; ServiceAccount names are DNS-1123 subdomains.
        check_name("namespace", namespace, 63, false)?;
        check_name("service account", service_account, 253, true)?;
        Ok(Self {
            trust_domain,
            namespace: namespace.to_string(),
            service_account: service_account.to_string(),
        })
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn service_account(&self) -> &str {
        &self.service_account
    }

    /// The URI form, as it appears in a certificate's SAN.
    pub fn to_uri(&self) -> String {
        self.to_string()
    }
}

fn check_name(
    what: &'static str,
    value: &str,
    max: usize,
    dots: bool,
) -> Result<(), SpiffeIdError> {
    let bad = |why| {
        Err(SpiffeIdError::Segment {
            what,
            value: value.to_string(),
            why,
        })
    };
    if value.is_empty() {
        return bad("it is empty");
    }
    if value.len() > max {
        return bad("it is too long");
    }
    let allowed =
        |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || (dots && b == b'.');
    if !value.bytes().all(allowed) {
        return bad(
            "only lowercase letters, digits and '-' are allowed (and '.' in a service account)",
        );
    }
    let edge_ok = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_alphanumeric());
    if !edge_ok(value.bytes().next()) || !edge_ok(value.bytes().last()) {
        return bad("it must start and end with a letter or digit");
    }
    Ok(())
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() > 2048 {
            return Err(SpiffeIdError::TooLong(s.chars().take(64).collect()));
        }
        let rest = s
            .strip_prefix("spiffe://")
            .ok_or_else(|| SpiffeIdError::Scheme(s.to_string()))?;
        let (td, path) = rest
            .split_once('/')
            .ok_or_else(|| SpiffeIdError::Path(s.to_string()))?;
        let trust_domain = TrustDomain::new(td)?;
        // No query, fragment, empty segment or trailing slash: exactly four segments.
        let segments: Vec<&str> = path.split('/').collect();
        match segments.as_slice() {
            ["ns", ns, "sa", sa] => SpiffeId::new(trust_domain, ns, sa),
            _ => Err(SpiffeIdError::Path(s.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn service_account_user_names_and_nothing_else() {
        assert_eq!(
            service_account_of("system:serviceaccount:shop:reviews"),
            Some(("shop", "reviews"))
        );
        for other in [
            "system:node:worker-1",
            "system:serviceaccount:shop",
            "system:serviceaccount::reviews",
            "system:serviceaccount:shop:reviews:extra",
            "alice",
        ] {
            assert_eq!(service_account_of(other), None, "{other}");
        }
    }

    use super::*;

    #[test]
    fn parses_and_prints_the_canonical_form() {
        let id: SpiffeId = "spiffe://cluster.local/ns/default/sa/reviews-v1"
            .parse()
            .unwrap();
        assert_eq!(id.trust_domain().as_str(), "cluster.local");
        assert_eq!(id.namespace(), "default");
        assert_eq!(id.service_account(), "reviews-v1");
        assert_eq!(
            id.to_string(),
            "spiffe://cluster.local/ns/default/sa/reviews-v1"
        );
    }

    #[test]
    fn refuses_malformed_ids_with_a_reason() {
        let cases = [
            ("https://cluster.local/ns/a/sa/b", "must start with"),
            ("spiffe://", "must have the path"),
            ("spiffe://cluster.local", "must have the path"),
            ("spiffe://Cluster.local/ns/a/sa/b", "trust domain"),
            ("spiffe://cluster..local/ns/a/sa/b", "trust domain"),
            ("spiffe:///ns/a/sa/b", "trust domain"),
            ("spiffe://cluster.local/ns/a", "must have the path"),
            ("spiffe://cluster.local/ns/a/sa/b/", "must have the path"),
            ("spiffe://cluster.local/ns/a/sa/b/c", "must have the path"),
            (
                "spiffe://cluster.local/namespace/a/sa/b",
                "must have the path",
            ),
            ("spiffe://cluster.local/ns//sa/b", "namespace"),
            ("spiffe://cluster.local/ns/A/sa/b", "namespace"),
            ("spiffe://cluster.local/ns/a.b/sa/c", "namespace"),
            ("spiffe://cluster.local/ns/a/sa/-b", "service account"),
            ("spiffe://cluster.local/ns/a/sa/b?x=1", "service account"),
            ("spiffe://cluster.local/ns/a/sa/..", "service account"),
        ];
        for (input, needle) in cases {
            let err = input.parse::<SpiffeId>().expect_err(input).to_string();
            assert!(err.contains(needle), "{input}: {err}");
        }
        let long = format!("spiffe://td/ns/a/sa/{}", "x".repeat(3000));
        assert!(matches!(
            long.parse::<SpiffeId>(),
            Err(SpiffeIdError::TooLong(_))
        ));
    }

    #[test]
    fn service_accounts_may_hold_dots_namespaces_may_not() {
        assert!(
            "spiffe://td/ns/prod/sa/build.bot"
                .parse::<SpiffeId>()
                .is_ok()
        );
        assert!("spiffe://td/ns/prod.x/sa/bot".parse::<SpiffeId>().is_err());
    }
}
