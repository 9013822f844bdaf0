//! The trust bundle: the set of roots a workload trusts. It holds several roots at once during a
//! CA rotation (old and new), so every operation works on a list, never on "the" root.

use crate::cert::{CertError, CertInfo, certs_from_pem};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    #[error(transparent)]
    Cert(#[from] CertError),
    #[error("certificate {subject:?} is not a CA certificate and cannot be a trust root")]
    NotCa { subject: String },
    #[error("certificate {subject:?} is not self-signed and cannot be a trust root")]
    NotSelfSigned { subject: String },
    #[error("a trust bundle must hold at least one root")]
    Empty,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TrustBundle {
    roots: Vec<CertInfo>,
}

// === impl TrustBundle ===

impl TrustBundle {
    pub fn new(root: CertInfo) -> Result<Self, BundleError> {
        let mut bundle = Self::default();
        bundle.add(root)?;
        Ok(bundle)
    }

    /// Parses PEM holding one or more self-signed CA certificates.
    pub fn from_pem(pem_text: &str) -> Result<Self, BundleError> {
        let mut bundle = Self::default();
        for der in certs_from_pem(pem_text)? {
            bundle.add(CertInfo::from_der(&der)?)?;
        }
        if bundle.roots.is_empty() {
            return Err(BundleError::Empty);
        }
        Ok(bundle)
    }

    /// Adds a root (a no-op when it is already present). Returns whether it was added.
    pub fn add(&mut self, root: CertInfo) -> Result<bool, BundleError> {
        if !root.is_ca {
            return Err(BundleError::NotCa {
                subject: root.subject,
            });
        }
        if !root.self_signed {
            return Err(BundleError::NotSelfSigned {
                subject: root.subject,
            });
        }
        if self.contains(&root.fingerprint) {
            return Ok(false);
        }
        self.roots.push(root);
        Ok(true)
    }

    /// Removes the root with this SHA-256 fingerprint. Returns whether one was removed.
    pub fn remove(&mut self, fingerprint: &str) -> bool {
        let before = self.roots.len();
        self.roots.retain(|r| r.fingerprint != fingerprint);
        before != self.roots.len()
    }

    pub fn contains(&self, fingerprint: &str) -> bool {
        self.roots.iter().any(|r| r.fingerprint == fingerprint)
    }

    pub fn roots(&self) -> &[CertInfo] {
        &self.roots
    }

    pub fn fingerprints(&self) -> Vec<String> {
        self.roots.iter().map(|r| r.fingerprint.clone()).collect()
    }

    /// All roots as concatenated PEM, in the order they were added.
    pub fn to_pem(&self) -> String {
        self.roots.iter().map(CertInfo::to_pem).collect()
    }

    /// The root in this bundle that `chain` (leaf first) leads to, if any: each certificate must
    /// be signed by the next, and the last by a root of the bundle.
    pub fn anchor_of(&self, chain: &[CertInfo]) -> Option<&CertInfo> {
        let linked = chain.windows(2).all(|w| w[0].is_signed_by(&w[1]));
        let last = chain.last()?;
        if !linked {
            return None;
        }
        self.roots
            .iter()
            .find(|root| root.fingerprint == last.fingerprint || last.is_signed_by(root))
    }
}
