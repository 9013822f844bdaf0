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
pub mod rotation;
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

/// The baseline the CA's throughput is compared with: raw ECDSA P-256 sign + verify operations
/// per second on this machine, measured for about `window` (one verify of the CSR and one sign
/// of the leaf is the floor of what signing a certificate costs).
pub fn raw_p256_sign_verify_rate(window: std::time::Duration) -> f64 {
    use aws_lc_rs::signature::{
        ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair as _,
        UnparsedPublicKey,
    };
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let Ok(pkcs8) = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng) else {
        return 0.0;
    };
    let Ok(key) = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref()) else {
        return 0.0;
    };
    let public =
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, key.public_key().as_ref().to_vec());
    let msg = b"a message the size of a small TBSCertificate, more or less";
    let start = std::time::Instant::now();
    let mut n = 0u64;
    while start.elapsed() < window {
        let Ok(sig) = key.sign(&rng, std::hint::black_box(msg)) else {
            return 0.0;
        };
        if public.verify(msg, sig.as_ref()).is_err() {
            return 0.0;
        }
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}
