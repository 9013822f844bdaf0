//! The workload's certificate: a key made here (it never leaves the process, except into
//! `--state-dir` with mode 0600), a CSR, `Identity.Sign` with the join token the first time,
//! then renewal over mTLS with the current certificate at about half of its life (with jitter),
//! or earlier when an IdentityDirective asks. Every new certificate is checked against our own
//! SPIFFE ID and the trust bundle before it is swapped into the [`CertSlot`] that every TLS
//! config reads per handshake.

pub mod tokens;

use crate::backoff::Backoff;
use crate::resources::IdentityDirective;
use anyhow::{Context, anyhow, bail};
use mesh_ca::tls::{CertSlot, ExpectedServer, MeshServerVerifier, TrustAnchors};
use mesh_ca::{CertInfo, SpiffeId};
use mesh_proto::v1::{Credential, credential};
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{Notify, watch};
use zeroize::Zeroizing;

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

const CERT_FILE: &str = "cert.pem";
const KEY_FILE: &str = "key.der";
const BUNDLE_FILE: &str = "bundle.pem";

/// The identity in a `--state-dir`'s certificate, if it holds one.
pub fn stored_identity(dir: &Path) -> anyhow::Result<SpiffeId> {
    let pem = std::fs::read_to_string(dir.join(CERT_FILE))?;
    let ders = mesh_ca::cert::certs_from_pem(&pem)?;
    let leaf = CertInfo::from_der(ders.first().ok_or_else(|| anyhow!("empty chain"))?)?;
    leaf.spiffe_id()
        .ok_or_else(|| anyhow!("the stored certificate carries no SPIFFE ID"))
}

/// The certificate in use, as `/certs` shows it.
#[derive(Debug)]
pub struct CertState {
    /// Leaf first, then intermediates.
    pub chain: Vec<CertInfo>,
    pub not_before: i64,
    pub not_after: i64,
    /// When we got it (Unix seconds): the CA backdates notBefore, so the life that renewal is
    /// scheduled over starts at the later of the two.
    pub installed_unix: i64,
}

/// How a sidecar proves its identity for a first certificate.
#[derive(Debug, Clone)]
pub enum Bootstrap {
    /// A join token from `meshctl token create` (it names the identity).
    JoinToken(PathBuf),
    /// A projected Kubernetes ServiceAccount token, re-read at every use.
    Kubernetes {
        token_file: PathBuf,
        trust_domain: mesh_ca::TrustDomain,
    },
}

impl Bootstrap {
    /// The token and the identity it is for.
    pub fn read(&self) -> anyhow::Result<(Credential, SpiffeId)> {
        match self {
            Self::JoinToken(path) => {
                let (token, id) = tokens::token_identity(path)?;
                Ok((
                    Credential {
                        kind: Some(credential::Kind::JoinToken(token)),
                    },
                    id,
                ))
            }
            Self::Kubernetes {
                token_file,
                trust_domain,
            } => {
                let (token, id) = tokens::k8s_token_identity(token_file, trust_domain)?;
                Ok((
                    Credential {
                        kind: Some(credential::Kind::KubernetesServiceAccountToken(token)),
                    },
                    id,
                ))
            }
        }
    }
}

/// Where and how to ask for certificates.
#[derive(Debug, Clone)]
pub struct IdentityOptions {
    pub control_planes: Vec<String>,
    pub bootstrap: Option<Bootstrap>,
    pub ttl: Duration,
    pub state_dir: Option<PathBuf>,
    /// This sidecar's `Node.id`, recorded by the CA beside each certificate.
    pub sidecar_id: String,
}

#[derive(Debug, Default)]
struct Reissue {
    handled_generation: u64,
    at: Option<Instant>,
    /// The directive being acted on wants a certificate with notBefore at or after this (unix
    /// seconds; 0: none). Certificate times have one-second resolution, so a renewal within the
    /// same second as the directive may not satisfy it yet: then we renew again a second later.
    min_not_before: i64,
}

pub struct Identity {
    pub id: SpiffeId,
    pub cert: Arc<CertSlot>,
    pub anchors: Arc<TrustAnchors>,
    current: RwLock<Option<Arc<CertState>>>,
    has_cert: watch::Sender<bool>,
    reissue: Mutex<Reissue>,
    wake: Notify,
    /// Set once a TrustBundle resource has been applied: from then on the discovery stream,
    /// not a Sign response, owns the anchors.
    bundle_from_discovery: std::sync::atomic::AtomicBool,
    opts: IdentityOptions,
}

// === impl Identity ===

impl Identity {
    pub fn new(
        id: SpiffeId,
        initial_bundle: &mesh_ca::TrustBundle,
        opts: IdentityOptions,
    ) -> anyhow::Result<Arc<Self>> {
        let anchors = TrustAnchors::new(initial_bundle).context("--ca-bundle")?;
        Ok(Arc::new(Self {
            id,
            cert: CertSlot::new(None),
            anchors,
            current: RwLock::new(None),
            has_cert: watch::channel(false).0,
            reissue: Mutex::new(Reissue::default()),
            wake: Notify::new(),
            bundle_from_discovery: false.into(),
            opts,
        }))
    }

    pub fn current(&self) -> Option<Arc<CertState>> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn has_cert(&self) -> bool {
        *self.has_cert.borrow()
    }

    /// Resolves once a certificate is held.
    pub async fn wait_for_cert(&self) {
        let mut rx = self.has_cert.subscribe();
        let _ = rx.wait_for(|has| *has).await;
    }

    /// The discovery stream applied a TrustBundle: Sign responses no longer replace anchors.
    pub fn bundle_applied(&self) {
        self.bundle_from_discovery
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Checks a new chain and key against our identity and the trust anchors, then swaps it in.
    pub fn install(&self, chain_pem: &str, key_pkcs8: &[u8]) -> anyhow::Result<()> {
        let ders = mesh_ca::cert::certs_from_pem(chain_pem).context("certificate chain")?;
        let chain = ders
            .iter()
            .map(|d| CertInfo::from_der(d))
            .collect::<Result<Vec<_>, _>>()
            .context("certificate chain")?;
        let leaf = chain
            .first()
            .ok_or_else(|| anyhow!("empty certificate chain"))?;
        match leaf.spiffe_id() {
            Some(id) if id == self.id => {}
            Some(other) => bail!("the certificate is for {other}, not for {}", self.id),
            None => bail!("the certificate carries no SPIFFE ID"),
        }
        let now = unix_now();
        if leaf.not_after <= now {
            bail!("the certificate expired at unix {}", leaf.not_after);
        }
        let certified = mesh_ca::tls::certified_key(chain_pem, key_pkcs8)?;
        certified
            .keys_match()
            .map_err(|e| anyhow!("the certificate does not match our key: {e}"))?;
        // The chain must verify against the bundle, for our identity, as a peer would check it.
        let intermediates: Vec<CertificateDer<'_>> = ders[1..]
            .iter()
            .map(|d| CertificateDer::from(d.as_slice()))
            .collect();
        MeshServerVerifier::new(
            self.anchors.clone(),
            ExpectedServer::OneOf(vec![self.id.clone()]),
        )
        .verify_server_cert(
            &CertificateDer::from(ders[0].as_slice()),
            &intermediates,
            &ServerName::try_from("mesh.invalid").map_err(|e| anyhow!("{e}"))?,
            &[],
            UnixTime::now(),
        )
        .map_err(|e| anyhow!("the certificate does not verify against the bundle: {e}"))?;
        let state = Arc::new(CertState {
            not_before: leaf.not_before,
            not_after: leaf.not_after,
            chain,
            installed_unix: now,
        });
        self.cert.replace(certified);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(state.clone());
        self.has_cert.send_replace(true);
        if let Some(dir) = &self.opts.state_dir
            && let Err(e) = persist(dir, chain_pem, key_pkcs8)
        {
            tracing::warn!(dir = %dir.display(), "cannot save the certificate: {e:#}");
        }
        tracing::info!(identity = %self.id, serial = %state.chain[0].serial_hex,
            not_after = state.not_after, "certificate installed");
        Ok(())
    }

    /// Acts on an IdentityDirective (resources.proto, IdentityDirective): at most once per
    /// generation, and only when our certificate does not already satisfy it.
    pub fn apply_directive(&self, d: &IdentityDirective) {
        let mut r = self.reissue.lock().unwrap_or_else(|p| p.into_inner());
        if d.generation <= r.handled_generation {
            return;
        }
        r.handled_generation = d.generation;
        if d.reissue_before_unix == 0 {
            return;
        }
        if d.issued_before_unix != 0
            && self
                .current()
                .is_some_and(|c| c.not_before >= d.issued_before_unix)
        {
            tracing::info!(
                generation = d.generation,
                "certificate already satisfies the directive"
            );
            return;
        }
        let window = d.reissue_before_unix - unix_now();
        let delay = if window <= 0 {
            Duration::from_millis(fastrand::u64(0..2_000))
        } else {
            Duration::from_millis(fastrand::u64(0..=u64::try_from(window).unwrap_or(0) * 1000))
        };
        tracing::info!(generation = d.generation, reason = %d.reason, ?delay,
            "control plane asked for a new certificate");
        r.at = Some(Instant::now() + delay);
        r.min_not_before = d.issued_before_unix;
        drop(r);
        self.wake.notify_one();
    }

    /// When the next renewal is due: at 40–60 % of the certificate's life (never sooner than
    /// 1 s from now, never later than 10 % of the life before expiry), or earlier when a
    /// directive asks.
    fn next_renewal(&self) -> Instant {
        let now = Instant::now();
        let Some(c) = self.current() else {
            return now;
        };
        let start = c.not_before.max(c.installed_unix);
        let life = (c.not_after - start).max(1) as f64;
        let target = start as f64 + life * (0.4 + 0.2 * fastrand::f64());
        let latest = c.not_after as f64 - life * 0.1;
        let at_unix = target.min(latest);
        let secs_from_now = (at_unix - unix_now() as f64).max(1.0);
        let mut at = now + Duration::from_secs_f64(secs_from_now);
        if let Some(d) = self.reissue.lock().unwrap_or_else(|p| p.into_inner()).at {
            at = at.min(d);
        }
        at
    }

    /// Gets a first certificate (or restores one from `--state-dir`), then keeps it renewed.
    /// Runs until the task is aborted.
    pub async fn run(self: Arc<Self>) {
        if !self.restore() {
            self.bootstrap().await;
        }
        loop {
            let at = self.next_renewal();
            tokio::select! {
                _ = tokio::time::sleep_until(at.into()) => {}
                _ = self.wake.notified() => continue,
            }
            self.renew().await;
        }
    }

    /// A certificate from `--state-dir`, when one is there, ours and still valid.
    fn restore(&self) -> bool {
        let Some(dir) = &self.opts.state_dir else {
            return false;
        };
        let read = || -> anyhow::Result<()> {
            let chain = std::fs::read_to_string(dir.join(CERT_FILE))?;
            let key = Zeroizing::new(std::fs::read(dir.join(KEY_FILE))?);
            if let Ok(bundle) = std::fs::read_to_string(dir.join(BUNDLE_FILE))
                && let Ok(bundle) = mesh_ca::TrustBundle::from_pem(&bundle)
            {
                let _ = self.anchors.replace(&bundle);
            }
            self.install(&chain, &key)
        };
        match read() {
            Ok(()) => {
                tracing::info!(dir = %dir.display(), "restored the certificate from the state directory");
                true
            }
            Err(e) if dir.join(CERT_FILE).exists() => {
                tracing::warn!(dir = %dir.display(), "stored certificate not usable: {e:#}");
                false
            }
            Err(_) => false,
        }
    }

    /// The first certificate, with the join token; retried with backoff across the control
    /// planes until it works (the token file is re-read each time, so it can be replaced).
    async fn bootstrap(&self) {
        let mut backoff = Backoff::control_plane();
        let mut i = 0usize;
        loop {
            let url = &self.opts.control_planes[i % self.opts.control_planes.len()];
            i += 1;
            match self.sign(url, true).await {
                Ok(()) => return,
                Err(e) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(%url, retry_in = ?delay, "no certificate yet: {e:#}");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// A renewal over mTLS with the current certificate, retried with backoff; with an expired
    /// certificate (a long outage), back to the join token.
    async fn renew(&self) {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        let mut i = fastrand::usize(..self.opts.control_planes.len());
        loop {
            let url = &self.opts.control_planes[i % self.opts.control_planes.len()];
            i += 1;
            let expired = self.current().is_none_or(|c| c.not_after <= unix_now());
            match self.sign(url, expired).await {
                Ok(()) => {
                    let not_before = self.current().map_or(0, |c| c.not_before);
                    let mut r = self.reissue.lock().unwrap_or_else(|p| p.into_inner());
                    if not_before < r.min_not_before {
                        // Signed in the same second as the directive: not provably newer.
                        r.at = Some(Instant::now() + Duration::from_millis(1100));
                    } else {
                        r.at = None;
                        r.min_not_before = 0;
                    }
                    return;
                }
                Err(e) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(%url, retry_in = ?delay, "certificate renewal failed: {e:#}");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    async fn sign(&self, url: &str, with_token: bool) -> anyhow::Result<()> {
        let credential = if with_token {
            let bootstrap = self.opts.bootstrap.as_ref().ok_or_else(|| {
                anyhow!("no valid certificate and no --join-token-file or --k8s-token-file")
            })?;
            Some(bootstrap.read()?.0)
        } else {
            None
        };
        // The first time, present no certificate; afterwards, the current one authenticates.
        let client_cert = if with_token {
            CertSlot::new(None)
        } else {
            self.cert.clone()
        };
        let channel = mesh_client::channel(url, self.anchors.clone(), client_cert).await?;
        let (response, key) = mesh_client::request_certificate(
            channel,
            &self.id,
            self.opts.ttl,
            credential,
            &self.opts.sidecar_id,
        )
        .await?;
        if !self
            .bundle_from_discovery
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            let bundle = mesh_ca::TrustBundle::from_pem(&response.trust_bundle_pem)
                .context("the bundle in meshd's answer")?;
            self.anchors.replace(&bundle)?;
            if let Some(dir) = &self.opts.state_dir {
                let _ = write_file(
                    &dir.join(BUNDLE_FILE),
                    response.trust_bundle_pem.as_bytes(),
                    0o644,
                );
            }
        }
        self.install(&response.cert_chain_pem, &key)
    }

    /// Saves the bundle currently trusted (after a TrustBundle update).
    pub fn persist_bundle(&self, pem: &str) {
        if let Some(dir) = &self.opts.state_dir {
            let _ = write_file(&dir.join(BUNDLE_FILE), pem.as_bytes(), 0o644);
        }
    }
}

fn persist(dir: &Path, chain_pem: &str, key: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    write_file(&dir.join(KEY_FILE), key, 0o600)?;
    write_file(&dir.join(CERT_FILE), chain_pem.as_bytes(), 0o644)
}

/// Writes through a temporary file and a rename, so a crash never leaves half a file.
pub fn write_file(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ca() -> mesh_ca::CertificateAuthority {
        let td = mesh_ca::TrustDomain::new("cluster.local").unwrap();
        mesh_ca::CertificateAuthority::generate_root(&mesh_ca::CaOptions::new(td)).unwrap()
    }

    /// A chain and key for `id` signed by `ca`.
    fn issue(ca: &mesh_ca::CertificateAuthority, id: &SpiffeId) -> (String, Zeroizing<Vec<u8>>) {
        let (csr, key) = mesh_ca::csr::generate_key_and_csr(id).unwrap();
        let checked = mesh_ca::check_csr(&csr, id, &mesh_ca::CsrPolicy::default()).unwrap();
        let issued = ca.sign(&checked, Duration::from_secs(600)).unwrap();
        (issued.chain_pem, key)
    }

    fn identity(ca: &mesh_ca::CertificateAuthority, id: &SpiffeId) -> Arc<Identity> {
        Identity::new(
            id.clone(),
            &ca.bundle(),
            IdentityOptions {
                control_planes: vec!["https://127.0.0.1:1".into()],
                bootstrap: None,
                ttl: Duration::ZERO,
                state_dir: None,
                sidecar_id: "test".into(),
            },
        )
        .unwrap()
    }

    #[test]
    fn only_our_own_certificate_from_a_trusted_ca_is_installed() {
        let (ca, other_ca) = (ca(), ca());
        let me: SpiffeId = "spiffe://cluster.local/ns/a/sa/web".parse().unwrap();
        let someone: SpiffeId = "spiffe://cluster.local/ns/a/sa/db".parse().unwrap();
        let id = identity(&ca, &me);

        let (chain, key) = issue(&ca, &someone);
        let e = id.install(&chain, &key).unwrap_err().to_string();
        assert!(
            e.contains("is for spiffe://cluster.local/ns/a/sa/db"),
            "{e}"
        );
        let (chain, key) = issue(&other_ca, &me);
        let e = id.install(&chain, &key).unwrap_err().to_string();
        assert!(e.contains("does not verify against the bundle"), "{e}");
        let (chain, _) = issue(&ca, &me);
        let (_, wrong_key) = issue(&ca, &me);
        assert!(
            id.install(&chain, &wrong_key).is_err(),
            "key and certificate must match"
        );
        assert!(!id.has_cert());

        let (chain, key) = issue(&ca, &me);
        id.install(&chain, &key).unwrap();
        assert!(id.has_cert());
        assert!(id.cert.get().is_some());
        // Renewal is due around half of the remaining life, never right away.
        let due = id.next_renewal().saturating_duration_since(Instant::now());
        assert!(
            due > Duration::from_secs(200) && due < Duration::from_secs(400),
            "{due:?}"
        );
    }

    #[test]
    fn a_directive_is_acted_on_once_per_generation_and_only_when_needed() {
        let ca = ca();
        let me: SpiffeId = "spiffe://cluster.local/ns/a/sa/web".parse().unwrap();
        let id = identity(&ca, &me);
        let (chain, key) = issue(&ca, &me);
        id.install(&chain, &key).unwrap();
        let not_before = id.current().unwrap().not_before;
        let soon = |id: &Identity| {
            id.next_renewal().saturating_duration_since(Instant::now()) < Duration::from_secs(3)
        };

        // Our certificate is newer than what the directive asks to replace: nothing to do.
        id.apply_directive(&IdentityDirective {
            name: "reissue".into(),
            reissue_before_unix: unix_now() - 1,
            reason: "ca-rotation".into(),
            generation: 1,
            issued_before_unix: not_before,
        });
        assert!(!soon(&id));

        // An older generation (a resend after a reconnect) is ignored.
        id.apply_directive(&IdentityDirective {
            name: "reissue".into(),
            reissue_before_unix: unix_now() - 1,
            reason: "operator request".into(),
            generation: 1,
            issued_before_unix: 0,
        });
        assert!(!soon(&id));

        // A new generation whose deadline has passed: renew within a couple of seconds.
        id.apply_directive(&IdentityDirective {
            name: "reissue".into(),
            reissue_before_unix: unix_now() - 1,
            reason: "operator request".into(),
            generation: 2,
            issued_before_unix: 0,
        });
        assert!(soon(&id));
    }
}
