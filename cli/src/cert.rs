//! `meshctl cert issue`: a key made here, a CSR for the join token's identity, `Identity.Sign`
//! over TLS (meshd checked against the given bundle), and the files written (key mode 0600).

use crate::{EXIT_FAILURE, EXIT_UNREACHABLE, EXIT_USAGE, Failure};
use mesh_ca::tls::{CertSlot, ExpectedServer, MeshServerVerifier, TrustAnchors};
use mesh_proto::v1::identity_client::IdentityClient;
use mesh_proto::v1::{Credential, SignRequest, credential};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, clap::Args)]
pub struct IssueArgs {
    /// The join token (from `meshctl token create`).
    #[arg(long)]
    token: String,
    /// meshd's gRPC address.
    #[arg(long, default_value = "https://127.0.0.1:15012")]
    control_plane: String,
    /// The trust bundle that meshd's certificate must chain to.
    #[arg(long)]
    ca_bundle: PathBuf,
    /// Where to write key.pem, cert.pem and bundle.pem.
    #[arg(long)]
    out: PathBuf,
    /// Requested lifetime (the CA may shorten it).
    #[arg(long)]
    ttl: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct RenewArgs {
    /// Directory holding key.pem, cert.pem and bundle.pem (from `meshctl cert issue`); the new
    /// files replace them.
    #[arg(long)]
    dir: PathBuf,
    /// meshd's gRPC address.
    #[arg(long, default_value = "https://127.0.0.1:15012")]
    control_plane: String,
    /// Ask for this identity instead of the current certificate's (meshd refuses another one).
    #[arg(long)]
    identity: Option<String>,
    /// Requested lifetime (the CA may shorten it).
    #[arg(long)]
    ttl: Option<String>,
}

fn usage(message: String) -> Failure {
    Failure::new(EXIT_USAGE, message)
}

fn parse_ttl(ttl: &Option<String>) -> Result<std::time::Duration, Failure> {
    match ttl {
        Some(t) => humantime::parse_duration(t).map_err(|e| usage(format!("--ttl {t:?}: {e}"))),
        None => Ok(std::time::Duration::ZERO),
    }
}

fn anchors_from(flag: &str, path: &std::path::Path) -> Result<Arc<TrustAnchors>, Failure> {
    let pem = std::fs::read_to_string(path)
        .map_err(|e| usage(format!("{flag} {}: {e}", path.display())))?;
    let bundle = mesh_ca::TrustBundle::from_pem(&pem)
        .map_err(|e| usage(format!("{flag} {}: {e}", path.display())))?;
    TrustAnchors::new(&bundle).map_err(|e| usage(format!("{flag} {}: {e}", path.display())))
}

pub async fn issue(args: &IssueArgs) -> Result<(), Failure> {
    let (_, identity) =
        mesh_ca::join_token::parse(&args.token).map_err(|e| usage(format!("--token: {e}")))?;
    let ttl = parse_ttl(&args.ttl)?;
    let anchors = anchors_from("--ca-bundle", &args.ca_bundle)?;
    let credential = Credential {
        kind: Some(credential::Kind::JoinToken(args.token.trim().to_string())),
    };
    let channel = mesh_grpc_channel(&args.control_plane, anchors, CertSlot::new(None)).await?;
    sign_and_write(channel, &identity, ttl, Some(credential), &args.out).await
}

/// Renews the certificate in `--dir`, authenticated by that certificate (mTLS).
pub async fn renew(args: &RenewArgs) -> Result<(), Failure> {
    let read = |name: &str| {
        std::fs::read_to_string(args.dir.join(name))
            .map_err(|e| usage(format!("--dir {}: {name}: {e}", args.dir.display())))
    };
    let cert_pem = read("cert.pem")?;
    let key_pem = zeroize::Zeroizing::new(read("key.pem")?);
    let anchors = anchors_from("--dir bundle.pem", &args.dir.join("bundle.pem"))?;
    let current = mesh_ca::CertInfo::from_pem(
        &mesh_ca::cert::certs_from_pem(&cert_pem)
            .map_err(|e| usage(format!("cert.pem: {e}")))?
            .first()
            .map(|d| mesh_ca::cert::der_to_pem(d))
            .unwrap_or_default(),
    )
    .map_err(|e| usage(format!("cert.pem: {e}")))?;
    let identity = match &args.identity {
        Some(id) => id.parse().map_err(|e| usage(format!("--identity: {e}")))?,
        None => current
            .spiffe_id()
            .ok_or_else(|| usage("cert.pem carries no mesh SPIFFE ID".into()))?,
    };
    let key_der = pem::parse(key_pem.as_str()).map_err(|e| usage(format!("key.pem: {e}")))?;
    let certified = mesh_ca::tls::certified_key(&cert_pem, key_der.contents())
        .map_err(|e| usage(format!("cert.pem/key.pem: {e}")))?;
    let channel =
        mesh_grpc_channel(&args.control_plane, anchors, CertSlot::new(Some(certified))).await?;
    sign_and_write(channel, &identity, parse_ttl(&args.ttl)?, None, &args.dir).await
}

async fn sign_and_write(
    channel: tonic::transport::Channel,
    identity: &mesh_ca::SpiffeId,
    ttl: std::time::Duration,
    credential: Option<Credential>,
    out: &std::path::Path,
) -> Result<(), Failure> {
    let (csr_pem, key) = mesh_ca::csr::generate_key_and_csr(identity)
        .map_err(|e| Failure::new(EXIT_FAILURE, format!("generating a key: {e}")))?;
    let response = IdentityClient::new(channel)
        .sign(SignRequest {
            csr_pem,
            requested_ttl_seconds: ttl.as_secs(),
            credential,
        })
        .await
        .map_err(|s| {
            let code = if s.code() == tonic::Code::Unavailable {
                EXIT_UNREACHABLE
            } else {
                EXIT_FAILURE
            };
            Failure::new(
                code,
                format!(
                    "meshd refused the certificate request: {} ({:?})",
                    s.message(),
                    s.code()
                ),
            )
        })?
        .into_inner();

    let io =
        |what: &str, e: std::io::Error| Failure::new(EXIT_FAILURE, format!("writing {what}: {e}"));
    std::fs::create_dir_all(out).map_err(|e| io(&out.display().to_string(), e))?;
    let key_pem = zeroize::Zeroizing::new(pem::encode(&pem::Pem::new("PRIVATE KEY", key.to_vec())));
    write(&out.join("key.pem"), key_pem.as_bytes(), 0o600).map_err(|e| io("key.pem", e))?;
    write(
        &out.join("cert.pem"),
        response.cert_chain_pem.as_bytes(),
        0o644,
    )
    .map_err(|e| io("cert.pem", e))?;
    write(
        &out.join("bundle.pem"),
        response.trust_bundle_pem.as_bytes(),
        0o644,
    )
    .map_err(|e| io("bundle.pem", e))?;
    eprintln!(
        "issued a certificate for {identity}, valid until unix {}; wrote key.pem, cert.pem, bundle.pem to {}",
        response.expires_at_unix,
        out.display()
    );
    Ok(())
}

fn write(path: &std::path::Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)?;
    f.set_permissions(std::fs::Permissions::from_mode(mode))?;
    f.write_all(bytes)
}

/// A gRPC channel to meshd over TLS: meshd's certificate must chain to `anchors` and name the
/// host dialled; `client_cert` is presented when it holds one.
pub async fn mesh_grpc_channel(
    url: &str,
    anchors: Arc<TrustAnchors>,
    client_cert: Arc<CertSlot>,
) -> Result<tonic::transport::Channel, Failure> {
    let uri: tonic::transport::Uri = url.parse().map_err(|_| {
        Failure::new(
            EXIT_USAGE,
            format!("--control-plane {url:?}: not a URL like https://127.0.0.1:15012"),
        )
    })?;
    let host = uri
        .host()
        .unwrap_or("localhost")
        .trim_matches(|c| c == '[' || c == ']')
        .to_string();
    let port = uri.port_u16().unwrap_or(15012);
    let server_name = rustls::pki_types::ServerName::try_from(host.clone()).map_err(|_| {
        Failure::new(
            EXIT_USAGE,
            format!("--control-plane {url:?}: bad host name"),
        )
    })?;
    let mut config = rustls::ClientConfig::builder_with_provider(mesh_ca::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Failure::new(EXIT_FAILURE, e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(MeshServerVerifier::new(
            anchors,
            ExpectedServer::ServerName,
        ))
        .with_client_cert_resolver(client_cert);
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{host}:{port}"))
        .map_err(|e| Failure::new(EXIT_USAGE, e.to_string()))?
        .connect_timeout(std::time::Duration::from_secs(5));
    let addr = format!("{host}:{port}");
    endpoint
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let connector = connector.clone();
            let server_name = server_name.clone();
            let addr = addr.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(&addr).await?;
                let tls = connector.connect(server_name, tcp).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        }))
        .await
        .map_err(|e| {
            Failure::new(
                EXIT_UNREACHABLE,
                format!(
                    "cannot connect to meshd at {url}: {}",
                    crate::admin::root_cause(&e)
                ),
            )
        })
}
