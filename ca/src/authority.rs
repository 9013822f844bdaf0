//! The signing authority: a CA key and certificate (a root, or an intermediate under a root),
//! generated, imported from PEM, or restored from its sealed form, and leaf signing.

use crate::bundle::TrustBundle;
use crate::cert::{CertError, CertInfo, certs_from_pem, der_to_pem};
use crate::csr::{CheckedCsr, KeyType};
use crate::kek::{KekError, KeyEncryptionKey};
use crate::spiffe::{SpiffeId, TrustDomain};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use std::time::Duration;
use time::OffsetDateTime;

/// The purpose string that binds a sealed CA key (see [`KeyEncryptionKey::seal`]).
const SEALED_KEY_PURPOSE: &str = "meshd/ca-signing-key/v1";

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("could not generate or use a key: {0}")]
    Crypto(String),
    #[error("CA certificate: {0}")]
    Cert(#[from] CertError),
    #[error("CA key: {0}")]
    Key(String),
    #[error("the private key does not belong to the CA certificate {subject:?}")]
    KeyMismatch { subject: String },
    #[error("certificate {subject:?} is not a CA certificate (basicConstraints cA is not TRUE)")]
    NotCa { subject: String },
    #[error("CA certificate {subject:?} is not valid now (valid {not_before} .. {not_after})")]
    Expired {
        subject: String,
        not_before: i64,
        not_after: i64,
    },
    #[error("CA chain is broken: {child:?} is not signed by {parent:?}")]
    BrokenChain { child: String, parent: String },
    #[error("CA chain must end in a self-signed root; {0:?} is not self-signed")]
    NoRoot(String),
    #[error("sealed CA key: {0}")]
    Sealed(#[from] KekError),
    #[error("signing failed: {0}")]
    Signing(String),
}

/// Options for a new root or intermediate.
#[derive(Debug, Clone)]
pub struct CaOptions {
    pub trust_domain: TrustDomain,
    /// How long the CA certificate is valid.
    pub validity: Duration,
    /// Subject organisation; the common name names the trust domain and the creation time, so
    /// old and new roots are told apart during a rotation.
    pub organization: String,
}

impl CaOptions {
    pub fn new(trust_domain: TrustDomain) -> Self {
        Self {
            trust_domain,
            validity: Duration::from_secs(10 * 365 * 24 * 3600),
            organization: "meshd".to_string(),
        }
    }
}

/// Limits on the leaf certificates a CA signs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SigningPolicy {
    /// The TTL used when a request asks for none (0).
    pub default_ttl: Duration,
    /// Requested TTLs are clamped to this.
    pub max_ttl: Duration,
    /// not_before is set this far in the past so peers with slightly slow clocks accept it.
    pub backdate: Duration,
}

impl Default for SigningPolicy {
    fn default() -> Self {
        Self {
            default_ttl: Duration::from_secs(3600),
            max_ttl: Duration::from_secs(24 * 3600),
            backdate: Duration::from_secs(60),
        }
    }
}

/// A certificate the CA issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCert {
    pub identity: SpiffeId,
    /// Leaf first, then the intermediates up to (not including) the root.
    pub chain_pem: String,
    pub leaf: CertInfo,
    /// Fingerprint of the certificate that signed the leaf.
    pub issuer_fingerprint: String,
}

/// A CA that can sign leaves. The key never leaves this value except sealed with a KEK.
pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    /// The signing certificate (the root itself, or an intermediate).
    signing: CertInfo,
    /// Certificates between the signing one and the root, signing one first; empty for a root.
    intermediates: Vec<CertInfo>,
    root: CertInfo,
    trust_domain: TrustDomain,
    policy: SigningPolicy,
}

// === impl CertificateAuthority ===

impl CertificateAuthority {
    /// A new self-signed root (ECDSA P-256) that signs leaves itself.
    pub fn generate_root(options: &CaOptions) -> Result<Self, CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| CaError::Crypto(e.to_string()))?;
        let params = ca_params(options, "root CA", BasicConstraints::Unconstrained)?;
        let cert = params
            .self_signed(&key)
            .map_err(|e| CaError::Signing(e.to_string()))?;
        let info = CertInfo::from_der(cert.der())?;
        Ok(Self {
            issuer: Issuer::new(params, key),
            signing: info.clone(),
            intermediates: Vec::new(),
            root: info,
            trust_domain: options.trust_domain.clone(),
            policy: SigningPolicy::default(),
        })
    }

    /// A new intermediate (ECDSA P-256) signed by `self`, which must be a root. The
    /// intermediate signs leaves; the root can then be kept offline.
    pub fn generate_intermediate(&self, options: &CaOptions) -> Result<Self, CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| CaError::Crypto(e.to_string()))?;
        let params = ca_params(options, "intermediate CA", BasicConstraints::Constrained(0))?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| CaError::Signing(e.to_string()))?;
        let info = CertInfo::from_der(cert.der())?;
        let mut intermediates = vec![info.clone()];
        intermediates.extend(self.intermediates.iter().cloned());
        Ok(Self {
            issuer: Issuer::new(params, key),
            signing: info,
            intermediates,
            root: self.root.clone(),
            trust_domain: options.trust_domain.clone(),
            policy: self.policy,
        })
    }

    /// Imports an existing CA: `chain_pem` holds the signing certificate first, then any
    /// intermediates, then the self-signed root; `key_pem` is the signing certificate's key.
    /// The chain links, every certificate is a CA valid now, and the key matches.
    pub fn from_pem(
        chain_pem: &str,
        key_pem: &str,
        trust_domain: TrustDomain,
    ) -> Result<Self, CaError> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| CaError::Key(e.to_string()))?;
        Self::from_parts(chain_pem, key, trust_domain)
    }

    /// Restores a CA saved with [`sealed_key`](Self::sealed_key) and [`chain_pem`](Self::chain_pem).
    pub fn from_sealed(
        chain_pem: &str,
        sealed_key: &[u8],
        kek: &KeyEncryptionKey,
        trust_domain: TrustDomain,
    ) -> Result<Self, CaError> {
        let pkcs8 = kek.open(SEALED_KEY_PURPOSE, sealed_key)?;
        let key = KeyPair::try_from(pkcs8.as_slice()).map_err(|e| CaError::Key(e.to_string()))?;
        Self::from_parts(chain_pem, key, trust_domain)
    }

    fn from_parts(
        chain_pem: &str,
        key: KeyPair,
        trust_domain: TrustDomain,
    ) -> Result<Self, CaError> {
        let chain = certs_from_pem(chain_pem)?
            .iter()
            .map(|der| CertInfo::from_der(der))
            .collect::<Result<Vec<_>, _>>()?;
        let now = OffsetDateTime::now_utc().unix_timestamp();
        for cert in &chain {
            if !cert.is_ca {
                return Err(CaError::NotCa {
                    subject: cert.subject.clone(),
                });
            }
            if now < cert.not_before || now > cert.not_after {
                return Err(CaError::Expired {
                    subject: cert.subject.clone(),
                    not_before: cert.not_before,
                    not_after: cert.not_after,
                });
            }
        }
        for pair in chain.windows(2) {
            if !pair[0].is_signed_by(&pair[1]) {
                return Err(CaError::BrokenChain {
                    child: pair[0].subject.clone(),
                    parent: pair[1].subject.clone(),
                });
            }
        }
        let (Some(signing), Some(root)) = (chain.first(), chain.last()) else {
            return Err(CaError::Cert(CertError::NoPem(
                "no certificate in the CA chain".into(),
            )));
        };
        if !root.self_signed {
            return Err(CaError::NoRoot(root.subject.clone()));
        }
        let signing_spki = spki_of(&signing.der)?;
        if rcgen::PublicKeyData::subject_public_key_info(&key) != signing_spki {
            return Err(CaError::KeyMismatch {
                subject: signing.subject.clone(),
            });
        }
        let issuer = Issuer::from_ca_cert_der(&signing.der.clone().into(), key)
            .map_err(|e| CaError::Cert(CertError::Malformed(e.to_string())))?;
        Ok(Self {
            issuer,
            signing: signing.clone(),
            intermediates: if chain.len() > 1 {
                chain[..chain.len() - 1].to_vec()
            } else {
                Vec::new()
            },
            root: root.clone(),
            trust_domain,
            policy: SigningPolicy::default(),
        })
    }

    pub fn with_policy(mut self, policy: SigningPolicy) -> Self {
        self.policy = policy;
        self
    }

    pub fn policy(&self) -> &SigningPolicy {
        &self.policy
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The root this CA chains to.
    pub fn root(&self) -> &CertInfo {
        &self.root
    }

    /// The certificate that signs leaves (the root itself, or the intermediate).
    pub fn signing_cert(&self) -> &CertInfo {
        &self.signing
    }

    /// A trust bundle holding only this CA's root.
    pub fn bundle(&self) -> TrustBundle {
        // A root made or imported by this type is always a self-signed CA.
        TrustBundle::new(self.root.clone()).unwrap_or_default()
    }

    /// The CA's chain as PEM: signing certificate first, root last. With the sealed key, this
    /// is everything needed to restore the CA.
    pub fn chain_pem(&self) -> String {
        let mut out: String = self.intermediates.iter().map(CertInfo::to_pem).collect();
        out.push_str(&self.root.to_pem());
        out
    }

    /// The signing key encrypted with `kek`, for storage.
    pub fn sealed_key(&self, kek: &KeyEncryptionKey) -> Result<Vec<u8>, CaError> {
        let pkcs8 = zeroize::Zeroizing::new(self.issuer.key().serialize_der());
        Ok(kek.seal(SEALED_KEY_PURPOSE, &pkcs8)?)
    }

    /// Signs a leaf for a checked CSR. `requested_ttl` of zero means the default; the TTL is
    /// clamped to the policy's maximum and to the signing certificate's own expiry.
    pub fn sign(&self, csr: &CheckedCsr, requested_ttl: Duration) -> Result<IssuedCert, CaError> {
        let public_key = rcgen::SubjectPublicKeyInfo::from_der(&csr.spki_der)
            .map_err(|e| CaError::Signing(e.to_string()))?;
        let rsa = matches!(csr.key_type, KeyType::Rsa { .. });
        self.sign_leaf(&public_key, &csr.identity, Vec::new(), rsa, requested_ttl)
    }

    /// Issues the control plane's own serving certificate: its SPIFFE ID plus DNS names and IP
    /// addresses, so ordinary TLS clients can check the host they dialled. The key is made here,
    /// in the calling process, and returned as PKCS#8 (it never leaves that process).
    pub fn issue_server_cert(
        &self,
        identity: &SpiffeId,
        dns_names: &[String],
        ips: &[std::net::IpAddr],
        ttl: Duration,
    ) -> Result<(IssuedCert, zeroize::Zeroizing<Vec<u8>>), CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| CaError::Crypto(e.to_string()))?;
        let mut extra = Vec::new();
        for name in dns_names {
            let name = name
                .clone()
                .try_into()
                .map_err(|e: rcgen::Error| CaError::Signing(format!("DNS name {name:?}: {e}")))?;
            extra.push(SanType::DnsName(name));
        }
        extra.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        let issued = self.sign_leaf(&key, identity, extra, false, ttl)?;
        Ok((issued, zeroize::Zeroizing::new(key.serialize_der())))
    }

    fn sign_leaf(
        &self,
        public_key: &impl rcgen::PublicKeyData,
        identity: &SpiffeId,
        extra_sans: Vec<SanType>,
        rsa: bool,
        requested_ttl: Duration,
    ) -> Result<IssuedCert, CaError> {
        let now = OffsetDateTime::now_utc();
        let ttl = match requested_ttl {
            d if d.is_zero() => self.policy.default_ttl,
            d => d.min(self.policy.max_ttl),
        };
        let ca_end = OffsetDateTime::from_unix_timestamp(self.signing.not_after)
            .map_err(|e| CaError::Signing(e.to_string()))?;

        let serial = random_serial()?;

        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names =
            vec![SanType::URI(identity.to_uri().try_into().map_err(
                |e: rcgen::Error| CaError::Signing(e.to_string()),
            )?)];
        params.subject_alt_names.extend(extra_sans);
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        params.not_before = now - self.policy.backdate;
        params.not_after = (now + ttl).min(ca_end);
        params.is_ca = IsCa::ExplicitNoCa; // writes basicConstraints cA=FALSE and the SKI
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if rsa {
            params.key_usages.push(KeyUsagePurpose::KeyEncipherment);
        }
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;

        let cert = params
            .signed_by(public_key, &self.issuer)
            .map_err(|e| CaError::Signing(e.to_string()))?;
        let leaf = CertInfo::from_der(cert.der())?;
        let mut chain_pem = der_to_pem(cert.der());
        for ca in &self.intermediates {
            chain_pem.push_str(&ca.to_pem());
        }
        Ok(IssuedCert {
            identity: identity.clone(),
            chain_pem,
            leaf,
            issuer_fingerprint: self.signing.fingerprint.clone(),
        })
    }
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("trust_domain", &self.trust_domain)
            .field("signing", &self.signing.subject)
            .field("root_fingerprint", &self.root.fingerprint)
            .field("key", &"[secret key elided]")
            .finish()
    }
}

fn ca_params(
    options: &CaOptions,
    role: &str,
    constraints: BasicConstraints,
) -> Result<CertificateParams, CaError> {
    let now = OffsetDateTime::now_utc();
    let serial = random_serial()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, options.organization.as_str());
    // The creation time and the serial's first bytes: two CAs made within one second (a
    // rotation started right after the first start) still have different names, so that logs,
    // metrics and operators can tell them apart.
    dn.push(
        DnType::CommonName,
        format!(
            "meshd {role} {} {} {}",
            options.trust_domain,
            now.unix_timestamp(),
            crate::hex(&serial[..4])
        ),
    );
    params.distinguished_name = dn;
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    params.not_before = now - Duration::from_secs(60);
    params.not_after = now + options.validity;
    params.is_ca = IsCa::Ca(constraints);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

fn spki_of(cert_der: &[u8]) -> Result<Vec<u8>, CaError> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, cert) = X509Certificate::from_der(cert_der)
        .map_err(|e| CaError::Cert(CertError::Malformed(e.to_string())))?;
    Ok(cert.public_key().raw.to_vec())
}

/// A certificate serial: 127 random bits in 16 bytes whose first byte is 0x01..=0x7F, so the
/// DER INTEGER is positive and always exactly 16 bytes (a random first byte of 0x00 would be
/// dropped, one of 0x80 or more would need a sign byte; the serial's length in every record
/// and API would vary).
fn random_serial() -> Result<[u8; 16], CaError> {
    let mut serial = [0u8; 16];
    aws_lc_rs::rand::fill(&mut serial).map_err(|_| CaError::Crypto("random".into()))?;
    serial[0] &= 0x7f;
    if serial[0] == 0 {
        serial[0] = 1;
    }
    Ok(serial)
}
