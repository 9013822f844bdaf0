//! rustls pieces shared by every TLS endpoint of the mesh (meshd's gRPC server, the sidecar's
//! inbound and outbound, meshctl): swappable trust anchors and certificates, and verifiers that
//! check the chain with webpki and then the peer's SPIFFE ID rather than a DNS name.
//!
//! Rotation never touches open connections: a new bundle or certificate is published by
//! swapping an `Arc`, and each new handshake reads the current one.

use crate::bundle::TrustBundle;
use crate::cert::certs_from_pem;
use crate::spiffe::{SpiffeId, TrustDomain};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{
    ResolvesClientCert, verify_server_cert_signed_by_trust_anchor, verify_server_name,
};
use rustls::crypto::{
    CryptoProvider, WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ParsedCertificate, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, Error, RootCertStore, SignatureScheme};
use std::sync::{Arc, RwLock};

/// The workspace's one crypto provider: aws-lc-rs.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("certificate chain: {0}")]
    Chain(#[from] crate::cert::CertError),
    #[error("private key: {0}")]
    Key(String),
    #[error("trust bundle holds no usable root: {0}")]
    Roots(String),
}

/// Builds a rustls certified key from a PEM chain (leaf first) and a PKCS#8 private key.
pub fn certified_key(chain_pem: &str, pkcs8_der: &[u8]) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain: Vec<CertificateDer<'static>> = certs_from_pem(chain_pem)?
        .into_iter()
        .map(CertificateDer::from)
        .collect();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8_der.to_vec()));
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| TlsError::Key(e.to_string()))?;
    Ok(Arc::new(CertifiedKey::new(chain, signing)))
}

/// The current trust anchors, swappable at run time (CA rotation).
#[derive(Debug)]
pub struct TrustAnchors {
    current: RwLock<Arc<Anchors>>,
}

#[derive(Debug)]
struct Anchors {
    /// The roots' subjects, in bundle order, joined by `" | "`: what is trusted, for metrics.
    subjects: Arc<str>,
    roots: Arc<RootCertStore>,
    /// webpki's client verifier over `roots`, client certificate optional.
    client: Arc<dyn ClientCertVerifier>,
}

// === impl TrustAnchors ===

impl TrustAnchors {
    pub fn new(bundle: &TrustBundle) -> Result<Arc<Self>, TlsError> {
        Ok(Arc::new(Self {
            current: RwLock::new(Arc::new(anchors(bundle)?)),
        }))
    }

    /// Replaces the anchors; handshakes that start afterwards use the new ones.
    pub fn replace(&self, bundle: &TrustBundle) -> Result<(), TlsError> {
        let next = Arc::new(anchors(bundle)?);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = next;
        Ok(())
    }

    /// The subjects of the roots trusted now, in bundle order, joined by `" | "`.
    pub fn subjects(&self) -> Arc<str> {
        self.get().subjects.clone()
    }

    fn get(&self) -> Arc<Anchors> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

fn anchors(bundle: &TrustBundle) -> Result<Anchors, TlsError> {
    let mut store = RootCertStore::empty();
    for root in bundle.roots() {
        store
            .add(CertificateDer::from(root.der.clone()))
            .map_err(|e| TlsError::Roots(e.to_string()))?;
    }
    if store.is_empty() {
        return Err(TlsError::Roots("the bundle is empty".into()));
    }
    let roots = Arc::new(store);
    let client = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
        .allow_unauthenticated()
        .build()
        .map_err(|e| TlsError::Roots(e.to_string()))?;
    let subjects = bundle
        .roots()
        .iter()
        .map(|r| r.subject.as_str())
        .collect::<Vec<_>>()
        .join(" | ")
        .into();
    Ok(Anchors {
        subjects,
        roots,
        client,
    })
}

/// The certificate this endpoint presents, swappable at run time (renewal).
#[derive(Debug, Default)]
pub struct CertSlot {
    current: RwLock<Option<Arc<CertifiedKey>>>,
}

impl CertSlot {
    pub fn new(key: Option<Arc<CertifiedKey>>) -> Arc<Self> {
        Arc::new(Self {
            current: RwLock::new(key),
        })
    }

    pub fn replace(&self, key: Arc<CertifiedKey>) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(key);
    }

    pub fn get(&self) -> Option<Arc<CertifiedKey>> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl ResolvesServerCert for CertSlot {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.get()
    }
}

impl ResolvesClientCert for CertSlot {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.get()
    }

    fn has_certs(&self) -> bool {
        self.get().is_some()
    }
}

/// Verifies client certificates against the current anchors. With `required == false` a client
/// may present none (meshd's identity service accepts join tokens); a presented certificate must
/// always verify.
#[derive(Debug)]
pub struct MeshClientVerifier {
    anchors: Arc<TrustAnchors>,
    required: bool,
    algs: WebPkiSupportedAlgorithms,
}

impl MeshClientVerifier {
    pub fn new(anchors: Arc<TrustAnchors>, required: bool) -> Arc<Self> {
        Arc::new(Self {
            anchors,
            required,
            algs: provider().signature_verification_algorithms,
        })
    }
}

impl ClientCertVerifier for MeshClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.required
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // The anchors change at run time, so no borrowed list can be handed out; clients send
        // their one mesh certificate anyway.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        self.anchors
            .get()
            .client
            .verify_client_cert(end_entity, intermediates, now)?;
        // A mesh peer must carry a SPIFFE ID: a certificate from the right CA without one is
        // not a workload.
        spiffe_id_of(end_entity)
            .ok_or_else(|| Error::General("client certificate carries no mesh SPIFFE ID".into()))?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// What a client expects of the server it dials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExpectedServer {
    /// The ordinary check: the DNS name or IP address dialled is in the certificate.
    ServerName,
    /// One of these SPIFFE IDs (sidecar to sidecar: the endpoint's expected identities).
    OneOf(Vec<SpiffeId>),
    /// Any workload of this trust domain.
    TrustDomain(TrustDomain),
}

/// Verifies server certificates against the current anchors, then the expected identity.
#[derive(Debug)]
pub struct MeshServerVerifier {
    anchors: Arc<TrustAnchors>,
    expected: ExpectedServer,
    algs: WebPkiSupportedAlgorithms,
}

impl MeshServerVerifier {
    pub fn new(anchors: Arc<TrustAnchors>, expected: ExpectedServer) -> Arc<Self> {
        Arc::new(Self {
            anchors,
            expected,
            algs: provider().signature_verification_algorithms,
        })
    }
}

impl ServerCertVerifier for MeshServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        let anchors = self.anchors.get();
        verify_server_cert_signed_by_trust_anchor(
            &cert,
            &anchors.roots,
            intermediates,
            now,
            self.algs.all,
        )?;
        let ok = match &self.expected {
            ExpectedServer::ServerName => {
                verify_server_name(&cert, server_name)?;
                true
            }
            ExpectedServer::OneOf(ids) => {
                spiffe_id_of(end_entity).is_some_and(|id| ids.contains(&id))
            }
            ExpectedServer::TrustDomain(td) => {
                spiffe_id_of(end_entity).is_some_and(|id| id.trust_domain() == td)
            }
        };
        if !ok {
            let got = spiffe_id_of(end_entity).map(|id| id.to_string());
            return Err(Error::General(format!(
                "server identity {} is not the expected one",
                got.as_deref().unwrap_or("<none>")
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// The SPIFFE ID of a verified peer certificate: its one URI SAN.
pub fn spiffe_id_of(cert: &CertificateDer<'_>) -> Option<SpiffeId> {
    crate::cert::CertInfo::from_der(cert.as_ref())
        .ok()?
        .spiffe_id()
}
