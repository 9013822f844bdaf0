//! `meshctl cert issue`: a key made here, a CSR for the join token's identity, `Identity.Sign`
//! over TLS (meshd checked against the given bundle), and the files written (key mode 0600).

use crate::{EXIT_FAILURE, EXIT_UNREACHABLE, EXIT_USAGE, Failure};
use mesh_ca::tls::{CertSlot, TrustAnchors};
use mesh_proto::v1::{Credential, credential};
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
    let (response, key) = mesh_client::request_certificate(channel, identity, ttl, credential, "")
        .await
        .map_err(|e| {
            let code = match &e {
                mesh_client::ClientError::Refused(s) if s.code() == tonic::Code::Unavailable => {
                    EXIT_UNREACHABLE
                }
                _ => EXIT_FAILURE,
            };
            Failure::new(code, e.to_string())
        })?;

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
    note!(
        "issued a certificate for {identity}, valid until {}; wrote key.pem, cert.pem, bundle.pem to {}",
        crate::output::utc(&serde_json::json!(response.expires_at_unix)),
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

/// A gRPC channel to meshd over TLS (see [`mesh_client::channel`]), errors as exit codes.
async fn mesh_grpc_channel(
    url: &str,
    anchors: Arc<TrustAnchors>,
    client_cert: Arc<CertSlot>,
) -> Result<tonic::transport::Channel, Failure> {
    mesh_client::channel(url, anchors, client_cert)
        .await
        .map_err(|e| {
            let code = match e {
                mesh_client::ClientError::Url(..) => EXIT_USAGE,
                _ => EXIT_UNREACHABLE,
            };
            Failure::new(code, e.to_string())
        })
}
