//! Reading certificates: the facts the mesh needs about one (fingerprint, validity, SPIFFE ID,
//! whether it is a CA), and PEM splitting. Used by the CA, the bundle, meshd and the sidecar.

use crate::spiffe::SpiffeId;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::{FromDer, X509Certificate};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    #[error("no PEM block found: {0}")]
    NoPem(String),
    #[error("expected a PEM block of type CERTIFICATE, found {0:?}")]
    WrongPemType(String),
    #[error("certificate is not valid DER X.509: {0}")]
    Malformed(String),
}

/// What the mesh needs to know about one certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub der: Vec<u8>,
    /// SHA-256 of the DER, lowercase hex.
    pub fingerprint: String,
    pub serial_hex: String,
    pub subject: String,
    pub issuer: String,
    pub not_before: i64,
    pub not_after: i64,
    pub is_ca: bool,
    pub self_signed: bool,
    /// The URI SANs, in order (a mesh leaf has exactly one, a SPIFFE ID).
    pub uri_sans: Vec<String>,
    /// Subject key identifier / authority key identifier, hex, when present.
    pub ski: Option<String>,
    pub aki: Option<String>,
}

// === impl CertInfo ===

impl CertInfo {
    pub fn from_der(der: &[u8]) -> Result<Self, CertError> {
        let (rest, cert) =
            X509Certificate::from_der(der).map_err(|e| CertError::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(CertError::Malformed(format!(
                "{} bytes after the certificate",
                rest.len()
            )));
        }
        let mut uri_sans = Vec::new();
        let mut ski = None;
        let mut aki = None;
        for ext in cert.extensions() {
            match ext.parsed_extension() {
                ParsedExtension::SubjectAlternativeName(san) => {
                    for name in &san.general_names {
                        if let GeneralName::URI(uri) = name {
                            uri_sans.push(uri.to_string());
                        }
                    }
                }
                ParsedExtension::SubjectKeyIdentifier(id) => ski = Some(crate::hex(id.0)),
                ParsedExtension::AuthorityKeyIdentifier(a) => {
                    aki = a.key_identifier.as_ref().map(|id| crate::hex(id.0));
                }
                _ => {}
            }
        }
        let is_ca = cert.is_ca();
        let self_signed = cert.subject() == cert.issuer() && cert.verify_signature(None).is_ok();
        Ok(Self {
            fingerprint: crate::hex(&crate::sha256(der)),
            serial_hex: crate::hex(cert.raw_serial()),
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
            is_ca,
            self_signed,
            uri_sans,
            ski,
            aki,
            der: der.to_vec(),
        })
    }

    pub fn from_pem(pem_text: &str) -> Result<Self, CertError> {
        let ders = certs_from_pem(pem_text)?;
        match ders.as_slice() {
            [one] => Self::from_der(one),
            _ => Err(CertError::Malformed(format!(
                "expected one certificate, found {}",
                ders.len()
            ))),
        }
    }

    /// The SPIFFE ID of a mesh leaf: its one URI SAN, parsed.
    pub fn spiffe_id(&self) -> Option<SpiffeId> {
        match self.uri_sans.as_slice() {
            [one] => one.parse().ok(),
            _ => None,
        }
    }

    pub fn to_pem(&self) -> String {
        der_to_pem(&self.der)
    }

    /// Whether `issuer` signed this certificate (signature check with the issuer's key).
    pub fn is_signed_by(&self, issuer: &CertInfo) -> bool {
        let (Ok((_, me)), Ok((_, parent))) = (
            X509Certificate::from_der(&self.der),
            X509Certificate::from_der(&issuer.der),
        ) else {
            return false;
        };
        me.verify_signature(Some(parent.public_key())).is_ok()
    }
}

/// Splits PEM text into the DER of each CERTIFICATE block, in order. Any other block type is an
/// error (a private key pasted into a bundle must never be accepted silently).
pub fn certs_from_pem(pem_text: &str) -> Result<Vec<Vec<u8>>, CertError> {
    let blocks = pem::parse_many(pem_text).map_err(|e| CertError::NoPem(e.to_string()))?;
    if blocks.is_empty() {
        return Err(CertError::NoPem("the input holds no PEM block".into()));
    }
    blocks
        .into_iter()
        .map(|b| {
            if b.tag() == "CERTIFICATE" {
                Ok(b.into_contents())
            } else {
                Err(CertError::WrongPemType(b.tag().to_string()))
            }
        })
        .collect()
}

pub fn der_to_pem(der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new("CERTIFICATE", der.to_vec()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}
