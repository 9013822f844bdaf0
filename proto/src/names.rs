//! What meshd and every sidecar must spell the same way: the wire names with a meaning
//! (wildcards, the well-known resource names) and the grammar of name patterns in policies.
//! Both sides use these, so that a pattern meshd accepts is one the sidecar reads the same way.

use std::fmt;

/// Every name (a subscription to every resource of a type, a listener's route table meaning
/// every route table of the scope, a virtual host's domain meaning any host).
pub const ANY: &str = "*";
/// The one TrustBundle a sidecar holds.
pub const TRUST_BUNDLE: &str = "trust-bundle";
/// The sidecar's own listener, and the route table of its inbound side.
pub const INBOUND: &str = "inbound";
/// The sidecar's outbound listener.
pub const OUTBOUND: &str = "outbound";
/// The cluster of the local application, behind the inbound listener.
pub const INBOUND_APP_CLUSTER: &str = "inbound|app";
/// The one IdentityDirective a sidecar holds.
pub const DIRECTIVE: &str = "reissue";

/// A name pattern: `*` (anything), `x*` (starts with x), `*x` (ends with x), or `x` exactly.
/// A `*` anywhere else, or more than one, is not a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    Any,
    Exact(String),
    Prefix(String),
    Suffix(String),
}

/// Why a text is not a [`Pattern`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatternError(pub String);

impl fmt::Display for PatternError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?}: '*' is allowed only alone, at the start (suffix match) or at the end (prefix \
             match)",
            self.0
        )
    }
}

impl std::error::Error for PatternError {}

// === impl Pattern ===

impl Pattern {
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        if text == ANY {
            return Ok(Self::Any);
        }
        let stars = text.matches('*').count();
        if stars > 1 || (stars == 1 && !text.starts_with('*') && !text.ends_with('*')) {
            return Err(PatternError(text.to_string()));
        }
        Ok(if let Some(prefix) = text.strip_suffix('*') {
            Self::Prefix(prefix.to_string())
        } else if let Some(suffix) = text.strip_prefix('*') {
            Self::Suffix(suffix.to_string())
        } else {
            Self::Exact(text.to_string())
        })
    }

    pub fn matches(&self, value: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Exact(x) => value == x,
            Self::Prefix(p) => value.starts_with(p.as_str()),
            Self::Suffix(s) => value.ends_with(s.as_str()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_parse_and_match_as_both_sides_read_them() {
        let p = |t: &str| Pattern::parse(t).map_err(|e| e.to_string());
        assert_eq!(p("*"), Ok(Pattern::Any));
        assert_eq!(p("/api/*"), Ok(Pattern::Prefix("/api/".into())));
        assert_eq!(p("*/sa/web"), Ok(Pattern::Suffix("/sa/web".into())));
        assert_eq!(p("/x"), Ok(Pattern::Exact("/x".into())));
        for bad in ["/a*b", "**", "*a*", "a**"] {
            let err = p(bad).unwrap_err();
            assert!(err.contains("allowed only alone"), "{bad}: {err}");
        }
        assert!(Pattern::Prefix("/api/".into()).matches("/api/v1"));
        assert!(!Pattern::Prefix("/api/".into()).matches("/apix"));
        assert!(Pattern::Suffix("/sa/web".into()).matches("spiffe://td/ns/a/sa/web"));
        assert!(Pattern::Any.matches(""));
        assert!(!Pattern::Exact("/x".into()).matches("/x/"));
    }
}
