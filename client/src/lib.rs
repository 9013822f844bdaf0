//! `mesh-client`: how a workload (the sidecar, `meshctl cert`, a test) talks to meshd's gRPC
//! API: a TLS channel that checks meshd against the trust bundle and presents the workload's
//! current certificate when it has one, and the certificate request built from a fresh key.

use mesh_ca::SpiffeId;
use mesh_ca::tls::{CertSlot, ExpectedServer, MeshServerVerifier, TrustAnchors};
use mesh_proto::v1::identity_client::IdentityClient;
use mesh_proto::v1::{Credential, SignRequest, SignResponse};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("control plane URL {0:?}: {1}")]
    Url(String, &'static str),
    #[error("TLS configuration: {0}")]
    Tls(String),
    #[error("cannot connect to meshd at {url}: {reason}{}", connect_hint(reason))]
    Connect { url: String, reason: String },
    #[error("generating a key: {0}")]
    Key(String),
    #[error("meshd refused the certificate request: {} ({:?})", .0.message(), .0.code())]
    Refused(tonic::Status),
}

/// A gRPC channel to meshd over TLS. meshd's certificate must chain to `anchors` and name the
/// host dialled; `client_cert` is presented when it holds a certificate.
pub async fn channel(
    url: &str,
    anchors: Arc<TrustAnchors>,
    client_cert: Arc<CertSlot>,
) -> Result<tonic::transport::Channel, ClientError> {
    let uri: tonic::transport::Uri = url
        .parse()
        .map_err(|_| ClientError::Url(url.into(), "not a URL like https://127.0.0.1:15012"))?;
    let host = uri.host().ok_or(ClientError::Url(url.into(), "no host"))?;
    let host = host.trim_matches(|c| c == '[' || c == ']').to_string();
    let port = uri.port_u16().unwrap_or(15012);
    let server_name = rustls::pki_types::ServerName::try_from(host.clone())
        .map_err(|_| ClientError::Url(url.into(), "bad host name"))?;
    let mut config = rustls::ClientConfig::builder_with_provider(mesh_ca::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(MeshServerVerifier::new(
            anchors,
            ExpectedServer::ServerName,
        ))
        .with_client_cert_resolver(client_cert);
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{host}:{port}"))
        .map_err(|_| ClientError::Url(url.into(), "not a valid endpoint"))?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true);
    let addr = format!("{host}:{port}");
    endpoint
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let connector = connector.clone();
            let server_name = server_name.clone();
            let addr = addr.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(&addr).await?;
                let _ = tcp.set_nodelay(true);
                let tls = connector.connect(server_name, tcp).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        }))
        .await
        .map_err(|e| ClientError::Connect {
            url: url.into(),
            reason: root_cause(&e),
        })
}

/// A certificate for `identity` from a key made here: returns meshd's answer and the key
/// (PKCS#8). `credential` is a join token or a Kubernetes token; `None` renews over a channel
/// that presents the current certificate. `sidecar_id` labels the certificate in meshd's
/// records (empty when the caller is not a sidecar).
pub async fn request_certificate(
    channel: tonic::transport::Channel,
    identity: &SpiffeId,
    ttl: Duration,
    credential: Option<Credential>,
    sidecar_id: &str,
) -> Result<(SignResponse, zeroize::Zeroizing<Vec<u8>>), ClientError> {
    let (csr_pem, key) = mesh_ca::csr::generate_key_and_csr(identity).map_err(ClientError::Key)?;
    let response = IdentityClient::new(channel)
        .sign(SignRequest {
            csr_pem,
            requested_ttl_seconds: ttl.as_secs(),
            credential,
            sidecar_id: sidecar_id.to_string(),
        })
        .await
        .map_err(ClientError::Refused)?
        .into_inner();
    Ok((response, key))
}

/// What to change when a connection fails in a way that says the flags are wrong: the port
/// is not meshd's gRPC port, or the bundle does not hold meshd's root.
fn connect_hint(reason: &str) -> &'static str {
    let reason = reason.to_ascii_lowercase();
    if reason.contains("unknownissuer")
        || reason.contains("unknown issuer")
        || reason.contains("badsignature")
    {
        "; hint: meshd's certificate does not chain to the trust bundle given (--ca-bundle): \
         use the ca-bundle.pem in meshd's data directory"
    } else if reason.contains("invalidcontenttype")
        || reason.contains("corrupt message")
        || reason.contains("wrong version number")
    {
        "; hint: that port does not speak TLS: --control-plane must be meshd's gRPC address \
         (its --grpc-addr, default port 15012), not the admin port"
    } else if reason.contains("connection refused") {
        "; hint: nothing listens there: is meshd running, and is this its --grpc-addr?"
    } else {
        ""
    }
}

/// The innermost error message (transport errors wrap the useful one).
pub fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}
