//! Checking a certificate signing request against the identity its sender proved.
//!
//! The CA signs only what it checked: [`check_csr`] is the one way to get a [`CheckedCsr`], and
//! signing takes a `CheckedCsr`. The issued certificate is built from scratch by the CA from the
//! proven identity and the CSR's public key; nothing else in the CSR is copied.

use crate::spiffe::SpiffeId;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::cri_attributes::ParsedCriAttribute;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_NIST_EC_P521,
    OID_PKCS1_RSAENCRYPTION, OID_SIG_ED448, OID_SIG_ED25519,
};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;

/// The largest CSR accepted, in bytes of PEM text. A P-384 CSR is under 1 KiB.
pub const MAX_CSR_PEM_LEN: usize = 16 * 1024;

/// Every way a CSR is refused. Each refusal has its own variant so callers (and audit logs) can
/// tell them apart; the message names the offending value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrError {
    #[error("CSR is empty")]
    Empty,
    #[error("CSR is {size} bytes, more than the {max} allowed")]
    TooLarge { size: usize, max: usize },
    #[error("CSR is not PEM: {0}")]
    NotPem(String),
    #[error("expected one PEM block of type CERTIFICATE REQUEST, found {0:?}")]
    WrongPemType(String),
    #[error("CSR holds {0} PEM blocks, expected exactly one")]
    MultiplePemBlocks(usize),
    #[error("CSR is not a valid PKCS#10 request: {0}")]
    Malformed(String),
    #[error("CSR key type {0} is not allowed (allowed: {1})")]
    UnsupportedKey(String, &'static str),
    #[error("CSR signature does not verify with its own public key")]
    BadSignature,
    #[error("CSR asks to be a CA (basicConstraints cA=TRUE)")]
    CaRequested,
    #[error("CSR asks for CA key usages (keyCertSign or cRLSign)")]
    CaKeyUsageRequested,
    #[error("CSR holds a DNS SAN {0:?}; mesh certificates carry only a SPIFFE URI SAN")]
    DnsSan(String),
    #[error("CSR holds an IP address SAN; mesh certificates carry only a SPIFFE URI SAN")]
    IpSan,
    #[error("CSR holds an email SAN {0:?}; mesh certificates carry only a SPIFFE URI SAN")]
    EmailSan(String),
    #[error("CSR holds a SAN of type {0}; mesh certificates carry only a SPIFFE URI SAN")]
    OtherSan(&'static str),
    #[error("CSR has no URI SAN; it must hold exactly one, the workload's SPIFFE ID")]
    MissingUriSan,
    #[error("CSR has {0} URI SANs; it must hold exactly one")]
    MultipleUriSans(usize),
    #[error("CSR URI SAN {0:?} is not a mesh SPIFFE ID: {1}")]
    InvalidSpiffeId(String, String),
    #[error("CSR asks for trust domain {requested:?}, this CA serves {expected:?}")]
    TrustDomainMismatch { requested: String, expected: String },
    #[error("CSR asks for identity {requested}, but the caller proved {proven}")]
    IdentityMismatch { requested: String, proven: String },
    #[error("CSR requests extension {0}, which the mesh CA does not issue")]
    UnsupportedExtension(String),
}

impl CsrError {
    /// Whether the CSR asks for more than the caller proved: another identity or trust domain,
    /// a SAN beside the SPIFFE ID, the CA bit or CA key usages, an extension the CA does not
    /// issue. That is a refusal (`PERMISSION_DENIED`, identity.proto); every other error is a
    /// request that is not a usable CSR at all (`INVALID_ARGUMENT`).
    pub fn asks_for_more(&self) -> bool {
        matches!(
            self,
            CsrError::CaRequested
                | CsrError::CaKeyUsageRequested
                | CsrError::DnsSan(_)
                | CsrError::IpSan
                | CsrError::EmailSan(_)
                | CsrError::OtherSan(_)
                | CsrError::MultipleUriSans(_)
                | CsrError::InvalidSpiffeId(..)
                | CsrError::TrustDomainMismatch { .. }
                | CsrError::IdentityMismatch { .. }
                | CsrError::UnsupportedExtension(_)
        )
    }
}

/// Which key types the CA accepts in CSRs. The default is the mesh's: P-256, P-384, Ed25519.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CsrPolicy {
    /// Accept RSA keys of at least 2048 bits (off by default; some legacy workloads need it).
    pub allow_rsa: bool,
}

/// The key type of a checked CSR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    EcdsaP256,
    EcdsaP384,
    Ed25519,
    Rsa { bits: usize },
}

/// A CSR that passed every check, for the proven identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedCsr {
    pub(crate) identity: SpiffeId,
    pub(crate) spki_der: Vec<u8>,
    pub(crate) key_type: KeyType,
}

impl CheckedCsr {
    pub fn identity(&self) -> &SpiffeId {
        &self.identity
    }

    pub fn key_type(&self) -> KeyType {
        self.key_type
    }
}

/// Checks `csr_pem` against the identity the caller proved. Returns the first refusal found.
pub fn check_csr(
    csr_pem: &str,
    proven: &SpiffeId,
    policy: &CsrPolicy,
) -> Result<CheckedCsr, CsrError> {
    if csr_pem.trim().is_empty() {
        return Err(CsrError::Empty);
    }
    if csr_pem.len() > MAX_CSR_PEM_LEN {
        return Err(CsrError::TooLarge {
            size: csr_pem.len(),
            max: MAX_CSR_PEM_LEN,
        });
    }
    let blocks = pem::parse_many(csr_pem).map_err(|e| CsrError::NotPem(e.to_string()))?;
    let block = match blocks.as_slice() {
        [] => return Err(CsrError::NotPem("no PEM block found".into())),
        [one] => one,
        many => return Err(CsrError::MultiplePemBlocks(many.len())),
    };
    if block.tag() != "CERTIFICATE REQUEST" && block.tag() != "NEW CERTIFICATE REQUEST" {
        return Err(CsrError::WrongPemType(block.tag().to_string()));
    }
    let der = block.contents();
    let (rest, csr) =
        X509CertificationRequest::from_der(der).map_err(|e| CsrError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CsrError::Malformed(format!(
            "{} bytes after the request",
            rest.len()
        )));
    }
    let info = &csr.certification_request_info;
    if info.version.0 != 0 {
        return Err(CsrError::Malformed(format!(
            "version {} (only version 1 exists)",
            info.version.0 + 1
        )));
    }

    // Key type first: a key we do not accept is refused whatever else the CSR says.
    let key_type = key_type_of(&csr, policy)?;
    csr.verify_signature().map_err(|_| CsrError::BadSignature)?;

    let uri = check_extensions(&csr)?;
    let requested: SpiffeId = uri
        .parse()
        .map_err(|e: crate::SpiffeIdError| CsrError::InvalidSpiffeId(uri.clone(), e.to_string()))?;
    if requested.trust_domain() != proven.trust_domain() {
        return Err(CsrError::TrustDomainMismatch {
            requested: requested.trust_domain().to_string(),
            expected: proven.trust_domain().to_string(),
        });
    }
    if &requested != proven {
        return Err(CsrError::IdentityMismatch {
            requested: requested.to_string(),
            proven: proven.to_string(),
        });
    }
    // The subject is ignored (as SPIRE and Istio do): the issued certificate's subject is the
    // CA's choice, and peers authorize on the URI SAN alone.
    Ok(CheckedCsr {
        identity: requested,
        spki_der: info.subject_pki.raw.to_vec(),
        key_type,
    })
}

fn key_type_of(
    csr: &X509CertificationRequest<'_>,
    policy: &CsrPolicy,
) -> Result<KeyType, CsrError> {
    const ALLOWED: &str = "ECDSA P-256, ECDSA P-384, Ed25519";
    let spki = &csr.certification_request_info.subject_pki;
    let alg = &spki.algorithm.algorithm;
    let unsupported = |name: String| Err(CsrError::UnsupportedKey(name, ALLOWED));
    if *alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        return match curve {
            Some(c) if c == OID_EC_P256 => Ok(KeyType::EcdsaP256),
            Some(c) if c == OID_NIST_EC_P384 => Ok(KeyType::EcdsaP384),
            Some(c) if c == OID_NIST_EC_P521 => unsupported("ECDSA P-521".into()),
            Some(c) => unsupported(format!("EC curve {c}")),
            None => unsupported("EC key without a named curve".into()),
        };
    }
    if *alg == OID_SIG_ED25519 {
        return Ok(KeyType::Ed25519);
    }
    if *alg == OID_SIG_ED448 {
        return unsupported("Ed448".into());
    }
    if *alg == OID_PKCS1_RSAENCRYPTION {
        let bits = match spki.parsed() {
            Ok(PublicKey::RSA(rsa)) => rsa.key_size(),
            _ => 0,
        };
        if policy.allow_rsa && bits >= 2048 {
            return Ok(KeyType::Rsa { bits });
        }
        return unsupported(format!("RSA-{bits}"));
    }
    unsupported(format!("algorithm {alg}"))
}

/// Checks the requested extensions; returns the one URI SAN.
fn check_extensions(csr: &X509CertificationRequest<'_>) -> Result<String, CsrError> {
    let mut uris = Vec::new();
    for attr in csr.certification_request_info.iter_attributes() {
        let ParsedCriAttribute::ExtensionRequest(req) = attr.parsed_attribute() else {
            continue;
        };
        for ext in &req.extensions {
            match ext.parsed_extension() {
                ParsedExtension::SubjectAlternativeName(san) => {
                    for name in &san.general_names {
                        match name {
                            GeneralName::URI(uri) => uris.push(uri.to_string()),
                            GeneralName::DNSName(dns) => {
                                return Err(CsrError::DnsSan(dns.to_string()));
                            }
                            GeneralName::IPAddress(_) => return Err(CsrError::IpSan),
                            GeneralName::RFC822Name(mail) => {
                                return Err(CsrError::EmailSan(mail.to_string()));
                            }
                            GeneralName::OtherName(..) => {
                                return Err(CsrError::OtherSan("otherName"));
                            }
                            GeneralName::DirectoryName(_) => {
                                return Err(CsrError::OtherSan("directoryName"));
                            }
                            GeneralName::RegisteredID(_) => {
                                return Err(CsrError::OtherSan("registeredID"));
                            }
                            GeneralName::X400Address(_) => {
                                return Err(CsrError::OtherSan("x400Address"));
                            }
                            GeneralName::EDIPartyName(_) => {
                                return Err(CsrError::OtherSan("ediPartyName"));
                            }
                            GeneralName::Invalid(..) => {
                                return Err(CsrError::Malformed("undecodable SAN entry".into()));
                            }
                        }
                    }
                }
                ParsedExtension::BasicConstraints(bc) => {
                    if bc.ca {
                        return Err(CsrError::CaRequested);
                    }
                }
                ParsedExtension::KeyUsage(ku) => {
                    if ku.key_cert_sign() || ku.crl_sign() {
                        return Err(CsrError::CaKeyUsageRequested);
                    }
                }
                // The CA sets EKUs itself (serverAuth + clientAuth); a request for them is harmless.
                ParsedExtension::ExtendedKeyUsage(_) => {}
                ParsedExtension::ParseError { error } => {
                    return Err(CsrError::Malformed(format!(
                        "extension {}: {error}",
                        ext.oid
                    )));
                }
                _ => return Err(CsrError::UnsupportedExtension(ext.oid.to_id_string())),
            }
        }
    }
    match uris.len() {
        0 => Err(CsrError::MissingUriSan),
        1 => Ok(uris.remove(0)),
        n => Err(CsrError::MultipleUriSans(n)),
    }
}

/// For workloads: a fresh ECDSA P-256 key (made here, in the caller's process) and a CSR for
/// `identity` that a mesh CA accepts. Returns the CSR PEM and the key as PKCS#8 DER.
pub fn generate_key_and_csr(
    identity: &SpiffeId,
) -> Result<(String, zeroize::Zeroizing<Vec<u8>>), String> {
    let key =
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| e.to_string())?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.subject_alt_names = vec![rcgen::SanType::URI(
        identity
            .to_uri()
            .try_into()
            .map_err(|e: rcgen::Error| e.to_string())?,
    )];
    let csr = params.serialize_request(&key).map_err(|e| e.to_string())?;
    let pem = csr.pem().map_err(|e| e.to_string())?;
    Ok((pem, zeroize::Zeroizing::new(key.serialize_der())))
}
