//! `mesh-ca`: the mesh's certificate authority as a library. No network, no database.
//!
//! - [`spiffe`]: SPIFFE IDs of workloads.
//! - [`csr`]: checking a CSR against the identity its sender proved.
//! - [`authority`]: roots, intermediates, import, leaf signing.
//! - [`bundle`]: trust bundles of one or more roots.
//! - [`kek`]: private keys sealed at rest with a key-encryption key.
//! - [`cert`]: reading certificates.

pub mod authority;
pub mod bundle;
pub mod cert;
pub mod csr;
pub mod join_token;
pub mod kek;
pub mod spiffe;
pub mod tls;

pub use authority::{CaError, CaOptions, CertificateAuthority, IssuedCert, SigningPolicy};
pub use bundle::{BundleError, TrustBundle};
pub use cert::{CertError, CertInfo};
pub use csr::{CheckedCsr, CsrError, CsrPolicy, KeyType, check_csr};
pub use kek::{KekError, KeyEncryptionKey};
pub use spiffe::{SpiffeId, SpiffeIdError, TrustDomain};

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 15) as usize] as char);
    }
    out
}
