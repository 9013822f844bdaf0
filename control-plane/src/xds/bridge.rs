//! TLS policy changes that cannot be pushed in one step. A change that shares no TLS version,
//! no cipher suite or no key-exchange group with what the sidecars run now would fail the
//! handshakes between a sidecar that has it and one that does not yet. The discovery server
//! therefore pushes an interim policy that accepts both (the new setting preferred), waits until
//! every sidecar of the changed scopes ACKed it, and only then pushes the change
//! ([`super::Xds`]'s push loop). Whatever the source of the change (`meshctl tls set`,
//! `meshctl apply`, a config directory), it goes the same way.

use super::snapshot::Snapshot;
use super::view::ScopeKey;
use mesh_proto::ResourceType;
use mesh_proto::v1::resource::Body;
use mesh_proto::v1::{self as pb};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How often a bridged TLS policy change looks for its last ACKs.
pub const CHECK_EVERY: Duration = Duration::from_millis(200);

/// How long the interim policy waits for the last sidecar's ACK before the change goes ahead
/// anyway (a sidecar that NACKs or hangs must not hold the fleet's policy forever).
pub const MAX_WAIT: Duration = Duration::from_secs(300);

/// The interim policy between `from` and `to`, or `None` when one step is safe. An empty list
/// means the provider's defaults, which overlap any explicit choice.
pub fn interim(from: &pb::TlsPolicy, to: &pb::TlsPolicy) -> Option<pb::TlsPolicy> {
    let mut interim = to.clone();
    let mut needed = false;
    if let Some(union) = union_if_disjoint(&from.cipher_suites, &to.cipher_suites) {
        interim.cipher_suites = union;
        needed = true;
    }
    if let Some(union) = union_if_disjoint(&from.key_exchange_groups, &to.key_exchange_groups) {
        interim.key_exchange_groups = union;
        needed = true;
    }
    let (from_min, from_max) = versions(from);
    let (to_min, to_max) = versions(to);
    if from_max < to_min || to_max < from_min {
        interim.min_version = from_min.min(to_min) as i32;
        interim.max_version = from_max.max(to_max) as i32;
        needed = true;
    }
    needed.then_some(interim)
}

/// `to` followed by what only `from` has, when both are explicit and share nothing.
fn union_if_disjoint(from: &[String], to: &[String]) -> Option<Vec<String>> {
    if from.is_empty() || to.is_empty() || from.iter().any(|x| to.contains(x)) {
        return None;
    }
    Some(to.iter().chain(from).cloned().collect())
}

/// (min, max) with the defaults (TLS 1.2 to TLS 1.3) filled in.
fn versions(p: &pb::TlsPolicy) -> (pb::TlsVersion, pb::TlsVersion) {
    let or = |v: i32, default| match pb::TlsVersion::try_from(v) {
        Ok(pb::TlsVersion::Unspecified) | Err(_) => default,
        Ok(v) => v,
    };
    (
        or(p.min_version, pb::TlsVersion::Tls12),
        or(p.max_version, pb::TlsVersion::Tls13),
    )
}

/// A TLS policy change in flight through an interim policy.
#[derive(Default)]
pub struct Bridge {
    /// The scopes whose change is bridged: the policy their sidecars ran before, and the change.
    scopes: HashMap<ScopeKey, Bridged>,
    since: Option<Instant>,
    /// Every sidecar of those scopes ACKed the interim: the next push makes the changes.
    release: bool,
}

struct Bridged {
    from: pb::TlsPolicy,
    to: pb::TlsPolicy,
    interim: pb::TlsPolicy,
}

/// The TlsPolicy of a snapshot (a sidecar holds at most one).
fn tls_of(snapshot: &Snapshot) -> Option<pb::TlsPolicy> {
    match snapshot
        .resources(ResourceType::TlsPolicy)
        .next()?
        .body
        .as_ref()?
    {
        Body::TlsPolicy(p) => Some(p.clone()),
        _ => None,
    }
}

// === impl Bridge ===

impl Bridge {
    /// Makes `next` (the new snapshot of `scope`, whose sidecars were sent `published`) safe to
    /// push: when its TlsPolicy shares nothing with what the sidecars run, the interim policy
    /// replaces it until the bridge is released. Returns whether a new bridge started.
    pub fn apply(
        &mut self,
        scope: &ScopeKey,
        published: Option<&Snapshot>,
        next: &mut Snapshot,
    ) -> bool {
        let from = match self.scopes.get(scope) {
            Some(b) => Some(b.from.clone()),
            None => published.and_then(tls_of),
        };
        let to = tls_of(next);
        let interim = match (&from, &to) {
            (Some(from), Some(to)) => interim(from, to),
            // A scope new to this meshd during a bridge: the interim of the same change.
            (None, Some(to)) => self
                .scopes
                .values()
                .find(|b| &b.to == to)
                .map(|b| b.interim.clone()),
            _ => None,
        };
        let (Some(interim), Some(to)) = (interim, to) else {
            self.scopes.remove(scope);
            return false;
        };
        next.insert(Body::TlsPolicy(interim.clone()));
        let from = from.unwrap_or_else(|| interim.clone());
        self.scopes
            .insert(scope.clone(), Bridged { from, to, interim });
        let started = self.since.is_none();
        self.since.get_or_insert_with(Instant::now);
        started
    }

    /// Before a rebuild: ends a released bridge, and forgets scopes that no longer exist.
    pub fn prepare(&mut self, exists: impl Fn(&ScopeKey) -> bool) {
        if std::mem::take(&mut self.release) {
            self.scopes.clear();
            self.since = None;
        }
        self.scopes.retain(|k, _| exists(k));
    }

    /// After a rebuild: a bridge of no scope is over.
    pub fn finish(&mut self) {
        if self.scopes.is_empty() {
            self.since = None;
        }
    }

    /// How many scopes are bridged.
    pub fn scope_count(&self) -> usize {
        self.scopes.len()
    }

    /// Whether a change waits for ACKs of its interim policy.
    pub fn waiting(&self) -> bool {
        !self.scopes.is_empty() && !self.release
    }

    /// Since when the bridge runs, and its scopes; `None` when no change is bridged.
    pub fn bridged(&self) -> Option<(Instant, impl Iterator<Item = &ScopeKey>)> {
        let since = self.since.filter(|_| !self.scopes.is_empty())?;
        Some((since, self.scopes.keys()))
    }

    /// Every sidecar ACKed the interim (or [`MAX_WAIT`] passed): the next push makes the change.
    pub fn release(&mut self) {
        self.release = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(
        min: pb::TlsVersion,
        max: pb::TlsVersion,
        suites: &[&str],
        groups: &[&str],
    ) -> pb::TlsPolicy {
        pb::TlsPolicy {
            name: "mesh-system/mesh-tls".into(),
            min_version: min as i32,
            max_version: max as i32,
            cipher_suites: suites.iter().map(|s| s.to_string()).collect(),
            key_exchange_groups: groups.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    use pb::TlsVersion::{Tls12, Tls13, Unspecified};

    #[test]
    fn a_disjoint_change_is_bridged_and_an_overlapping_one_is_not() {
        // Groups with nothing in common: accept both first, the new one preferred.
        let b = interim(
            &policy(Tls13, Tls13, &[], &["X25519MLKEM768"]),
            &policy(Tls13, Tls13, &[], &["X25519"]),
        )
        .expect("disjoint groups need a bridge");
        assert_eq!(b.key_exchange_groups, ["X25519", "X25519MLKEM768"]);
        // TLS 1.2 only → TLS 1.3 only: both versions meanwhile.
        let b = interim(
            &policy(Unspecified, Tls12, &[], &[]),
            &policy(Tls13, Tls13, &[], &[]),
        )
        .expect("disjoint versions need a bridge");
        assert_eq!((b.min_version, b.max_version), (Tls12 as i32, Tls13 as i32));
        // Overlaps, and the provider's defaults (an empty list), go in one step.
        for (from, to) in [
            (
                policy(Unspecified, Unspecified, &[], &["X25519", "secp256r1"]),
                policy(Unspecified, Unspecified, &[], &["X25519"]),
            ),
            (
                policy(Unspecified, Unspecified, &[], &[]),
                policy(Tls13, Unspecified, &["TLS13_CHACHA20_POLY1305_SHA256"], &[]),
            ),
            (
                policy(Unspecified, Unspecified, &["TLS13_AES_128_GCM_SHA256"], &[]),
                policy(Unspecified, Unspecified, &[], &[]),
            ),
        ] {
            assert_eq!(interim(&from, &to), None, "{from:?} → {to:?}");
        }
        // Once the interim runs, the change itself is one step from it.
        let (from, to) = (
            policy(
                Tls12,
                Tls12,
                &["TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"],
                &[],
            ),
            policy(Tls13, Tls13, &["TLS13_AES_256_GCM_SHA384"], &[]),
        );
        let b = interim(&from, &to).unwrap();
        assert_eq!(interim(&b, &to), None);
        assert_eq!(
            b.cipher_suites,
            [
                "TLS13_AES_256_GCM_SHA384",
                "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"
            ]
        );
    }
}
