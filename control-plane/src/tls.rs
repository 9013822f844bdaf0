//! meshd's TLS serving: its own certificate (issued by its CA, renewed at half-life), client
//! certificates verified against the current trust bundle, and the verified peer identity handed
//! to the gRPC services as a request extension ([`PeerInfo`]).

use crate::ca::Authority;
use mesh_ca::tls::{CertSlot, MeshClientVerifier, TrustAnchors, certified_key, spiffe_id_of};
use mesh_ca::{SpiffeId, TrustDomain};
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// How long a client may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Lifetime of meshd's own serving certificate (renewed at half of it).
const SERVING_CERT_TTL: Duration = Duration::from_secs(24 * 3600);

/// The SPIFFE ID meshd presents: `spiffe://<td>/ns/mesh-system/sa/meshd`.
pub fn control_plane_identity(td: &TrustDomain) -> SpiffeId {
    SpiffeId::new(td.clone(), "mesh-system", "meshd")
        .unwrap_or_else(|_| unreachable!("constant names are valid"))
}

/// meshd's serving TLS state: the config every new handshake uses.
#[derive(Clone)]
pub struct ServingTls {
    pub anchors: Arc<TrustAnchors>,
    pub cert: Arc<CertSlot>,
    config: Arc<rustls::ServerConfig>,
}

impl ServingTls {
    /// Issues meshd's serving certificate for `addr` (plus `localhost` and 127.0.0.1) and builds
    /// the server config: client certificates optional, verified when presented. Also returns
    /// how long the certificate is valid.
    pub fn new(authority: &Authority, addr: SocketAddr) -> anyhow::Result<(Self, Duration)> {
        let anchors = TrustAnchors::new(&authority.bundle())?;
        let cert = CertSlot::new(None);
        let mut config = rustls::ServerConfig::builder_with_provider(mesh_ca::tls::provider())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(MeshClientVerifier::new(anchors.clone(), false))
            .with_cert_resolver(cert.clone());
        // gRPC is HTTP/2: grpc-core, grpc-go and Envoy refuse a TLS server that selects no ALPN
        // protocol ("missing selected ALPN property").
        config.alpn_protocols = vec![b"h2".to_vec()];
        let tls = Self {
            config: Arc::new(config),
            anchors,
            cert,
        };
        let valid_for = tls.renew(authority, addr)?;
        Ok((tls, valid_for))
    }

    /// Issues a new serving certificate from the CA that signs now; returns how long it is
    /// valid (the CA clamps the lifetime to its leaf policy, so it may be much less than
    /// [`SERVING_CERT_TTL`]).
    pub fn renew(&self, authority: &Authority, addr: SocketAddr) -> anyhow::Result<Duration> {
        let mut ips: Vec<IpAddr> = vec![IpAddr::from([127, 0, 0, 1])];
        if !addr.ip().is_unspecified() && !ips.contains(&addr.ip()) {
            ips.push(addr.ip());
        }
        let names = vec!["localhost".to_string(), "meshd".to_string()];
        let identity = control_plane_identity(authority.signer().trust_domain());
        let (issued, key) =
            authority
                .signer()
                .issue_server_cert(&identity, &names, &ips, SERVING_CERT_TTL)?;
        self.cert.replace(certified_key(&issued.chain_pem, &key)?);
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        Ok(Duration::from_secs(
            u64::try_from(issued.leaf.not_after - now).unwrap_or(0),
        ))
    }

    /// Renews the serving certificate at half of its remaining life (`valid_for`, from the
    /// first issue), until the task is dropped; after a failure, again in 5 s.
    pub async fn renew_forever(self, authority: Authority, addr: SocketAddr, valid_for: Duration) {
        let mut wait = valid_for / 2;
        loop {
            tokio::time::sleep(wait.max(Duration::from_secs(1))).await;
            wait = match self.renew(&authority, addr) {
                Ok(valid_for) => valid_for / 2,
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "renewing meshd's serving certificate");
                    Duration::from_secs(5)
                }
            };
        }
    }

    /// Accepts TLS connections on `listener` and sends each finished handshake to the returned
    /// stream (failed handshakes are logged and dropped; they never stop the loop).
    pub fn incoming(
        &self,
        listener: TcpListener,
    ) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<TlsIo>> {
        let (tx, rx) = tokio::sync::mpsc::channel(128);
        let acceptor = TlsAcceptor::from(self.config.clone());
        tokio::spawn(async move {
            loop {
                let (tcp, remote) = match listener.accept().await {
                    Ok(conn) => conn,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let acceptor = acceptor.clone();
                let conn_tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = conn_tx.send(Ok(TlsIo::new(stream, remote))).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%remote, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%remote, "TLS handshake timed out"),
                    }
                });
                if tx.is_closed() {
                    return;
                }
            }
        });
        tokio_stream::wrappers::ReceiverStream::new(rx)
    }
}

/// What a gRPC handler knows about its caller: the address and the SPIFFE ID from a verified
/// client certificate (never from anything the request says).
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub remote: SocketAddr,
    pub identity: Option<SpiffeId>,
    /// SHA-256 fingerprint of the client's leaf certificate, when it sent one.
    pub cert_fingerprint: Option<String>,
    /// Serial number (hex) of the client's leaf certificate, when it sent one.
    pub cert_serial: Option<String>,
}

/// A server-side TLS connection carrying its [`PeerInfo`].
pub struct TlsIo {
    inner: TlsStream<TcpStream>,
    info: PeerInfo,
}

impl TlsIo {
    fn new(inner: TlsStream<TcpStream>, remote: SocketAddr) -> Self {
        let leaf = inner
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first());
        let info = PeerInfo {
            remote,
            identity: leaf.and_then(spiffe_id_of),
            cert_fingerprint: leaf.map(|c| mesh_ca::hex(&mesh_ca::sha256(c.as_ref()))),
            cert_serial: leaf
                .and_then(|c| mesh_ca::CertInfo::from_der(c.as_ref()).ok())
                .map(|c| c.serial_hex),
        };
        Self { inner, info }
    }
}

impl tonic::transport::server::Connected for TlsIo {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
