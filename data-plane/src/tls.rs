//! The sidecar's rustls configurations, built from the TlsPolicy in effect, the swappable
//! certificate ([`CertSlot`]) and trust anchors ([`TrustAnchors`]) of `mesh_ca::tls`. A config is
//! rebuilt only when the policy changes; certificate and bundle rotations reach it through the
//! shared slots, so a rotation never touches open connections.

use crate::resources::{IdentityPattern, TlsSettings};
use mesh_ca::tls::{
    CertSlot, ExpectedServer, MeshClientVerifier, MeshServerVerifier, TrustAnchors,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, Error, SignatureScheme};
use std::sync::Arc;

/// ALPN on the mesh hop: HTTP/2 between sidecars; HTTP/1.1 accepted from other mesh clients.
pub const SERVER_ALPN: &[&[u8]] = &[b"h2", b"http/1.1"];

/// The inbound listener's server config: a client certificate is required and must chain to
/// the trust bundle and carry a SPIFFE ID.
pub fn server_config(
    settings: &TlsSettings,
    cert: Arc<CertSlot>,
    anchors: Arc<TrustAnchors>,
) -> Result<Arc<rustls::ServerConfig>, Error> {
    let mut config = rustls::ServerConfig::builder_with_provider(settings.provider())
        .with_protocol_versions(&settings.versions)?
        .with_client_cert_verifier(MeshClientVerifier::new(anchors, true))
        .with_cert_resolver(cert);
    config.alpn_protocols = SERVER_ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// A client config for dialling one endpoint: presents our certificate, offers only `alpn`
/// (`h2`; `http/1.1` for an upgrade's own connection), and accepts only a server whose SPIFFE
/// ID matches one of `expected`.
pub fn client_config(
    settings: &TlsSettings,
    cert: Arc<CertSlot>,
    anchors: Arc<TrustAnchors>,
    expected: &[IdentityPattern],
    alpn: &[u8],
) -> Result<Arc<rustls::ClientConfig>, Error> {
    let mut config = rustls::ClientConfig::builder_with_provider(settings.provider())
        .with_protocol_versions(&settings.versions)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PeerIdentityVerifier {
            anchors,
            expected: expected.to_vec(),
            algs: mesh_ca::tls::provider().signature_verification_algorithms,
        }))
        .with_client_cert_resolver(cert);
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(Arc::new(config))
}

/// Checks the server's SPIFFE ID against identity patterns (exact, or a prefix ending in `*`),
/// then has `mesh_ca`'s [`MeshServerVerifier`] verify the chain for exactly that identity. The
/// ca crate's `ExpectedServer` has no prefix form, hence this wrapper.
#[derive(Debug)]
struct PeerIdentityVerifier {
    anchors: Arc<TrustAnchors>,
    expected: Vec<IdentityPattern>,
    algs: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PeerIdentityVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let id = mesh_ca::tls::spiffe_id_of(end_entity)
            .ok_or_else(|| Error::General("server certificate carries no SPIFFE ID".into()))?;
        if !self.expected.iter().any(|p| p.matches(&id)) {
            let expected: Vec<String> = self.expected.iter().map(|p| p.to_string()).collect();
            return Err(Error::General(format!(
                "server identity {id} is not the expected one ({})",
                expected.join(", ")
            )));
        }
        MeshServerVerifier::new(self.anchors.clone(), ExpectedServer::OneOf(vec![id]))
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}
