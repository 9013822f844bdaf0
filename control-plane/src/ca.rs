//! meshd's certificate authority at run time: bootstrapped from the store (or created, or
//! imported on first start), its key sealed at rest with the key-encryption key, and the current
//! signer and trust bundle held for the identity service.

use crate::config::{Config, KekSource};
use crate::store::{CaStateRecord, Store};
use anyhow::{Context, bail};
use mesh_ca::{
    CaOptions, CertificateAuthority, CsrPolicy, IssuedCert, KeyEncryptionKey, SigningPolicy,
    SpiffeId, TrustBundle,
};
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// The file in the data directory holding the public trust bundle.
pub const BUNDLE_FILE: &str = "ca-bundle.pem";

/// The CA as the rest of meshd uses it. Cheap to clone.
///
/// Outside a rotation it holds one CA. During a rotation it holds two: `current` (the CA in
/// place when the rotation began) and `next` (the one it moves to); the rotation's phase says
/// which of them signs and which roots the bundle holds ([`crate::rotation`]).
#[derive(Clone)]
pub struct Authority {
    inner: Arc<RwLock<State>>,
    policy: CsrPolicy,
    signing_policy: SigningPolicy,
    kek: Arc<KeyEncryptionKey>,
    trust_domain: mesh_ca::TrustDomain,
    bundle_file: std::path::PathBuf,
}

/// Which CAs exist, which one signs and which roots are trusted: replaced as a whole.
#[derive(Clone)]
pub struct State {
    pub current: Arc<CertificateAuthority>,
    pub next: Option<Arc<CertificateAuthority>>,
    pub signer: Arc<CertificateAuthority>,
    pub bundle: TrustBundle,
}

/// What the store held when meshd started.
pub struct Restored {
    pub authority: Authority,
    /// The stored record (its `rotation_data` is the rotation driver's to read).
    pub record: CaStateRecord,
}

// === impl Authority ===

impl Authority {
    /// Loads the CA from the store, or creates (or imports) it on first start and saves it
    /// sealed. Writes the trust bundle to `<data-dir>/ca-bundle.pem`. A rotation under way is
    /// not applied here: [`crate::rotation::Rotations::restore`] does that.
    pub async fn bootstrap(config: &Config, store: &Store) -> anyhow::Result<Restored> {
        let kek = load_kek(&config.kek)?;
        let signing_policy = SigningPolicy {
            default_ttl: config.cert_ttl,
            max_ttl: config.cert_ttl,
            ..SigningPolicy::default()
        };
        let mut imported = match &config.import_ca {
            Some((cert, key)) => Some(import(cert, key, config)?),
            None => None,
        };
        let imported_root = imported.as_ref().map(|ca| ca.root().fingerprint.clone());
        if store
            .load_ca_state()
            .await
            .context("reading the CA state")?
            .is_none()
        {
            let ca = match imported.take() {
                Some(ca) => ca,
                None => CertificateAuthority::generate_root(&CaOptions::new(
                    config.trust_domain.clone(),
                ))
                .context("generating the root CA")?,
            };
            let bundle = ca.bundle();
            let record = CaStateRecord {
                signing_key: ca.sealed_key(&kek).context("sealing the CA key")?,
                cert_chain_pem: ca.chain_pem(),
                roots_pem: bundle.roots().iter().map(|r| r.to_pem()).collect(),
                rotation_phase: IDLE.into(),
                rotation_data: "{}".into(),
                pending_key: None,
                previous_key: None,
                updated_at: time::OffsetDateTime::now_utc().unix_timestamp(),
                version: 0,
            };
            // Another replica on the same database may have created its CA first: then that
            // one is used (read back below), and this one is dropped.
            if store
                .create_ca_state(&record)
                .await
                .context("saving the new CA")?
            {
                tracing::info!(root = %ca.root().fingerprint, "CA created");
            }
        } else {
            tracing::info!("CA restored from the store");
        }
        let record = store
            .load_ca_state()
            .await
            .context("reading the CA state")?
            .context("the CA state vanished from the store while meshd started")?;
        let (ca, next) = unseal(&record, &kek, &config.trust_domain)
            .context("restoring the CA from the store (is this the right key-encryption key?)")?;
        if let Some(new_root) = &imported_root
            && *new_root != ca.root().fingerprint
        {
            bail!(
                "the store already holds a CA with root {}, and --ca-cert names another \
                 root ({new_root}); to change the CA use `meshctl ca rotate --import-cert`",
                ca.root().fingerprint,
            );
        }
        let bundle = TrustBundle::from_pem(&record.roots_pem.concat())
            .context("reading the stored trust bundle")?;
        let bundle_file = config.data_dir.join(BUNDLE_FILE);
        write_private_or_public(&bundle_file, bundle.to_pem().as_bytes(), 0o644)?;
        let current = Arc::new(ca.with_policy(signing_policy));
        let next = next.map(|n| Arc::new(n.with_policy(signing_policy)));
        // Until the rotation driver says otherwise: the stored CA signs, the stored bundle.
        let authority = Self {
            inner: Arc::new(RwLock::new(State {
                signer: current.clone(),
                current,
                next,
                bundle,
            })),
            policy: CsrPolicy::default(),
            signing_policy,
            kek: Arc::new(kek),
            trust_domain: config.trust_domain.clone(),
            bundle_file,
        };
        Ok(Restored { authority, record })
    }

    /// The current trust bundle.
    pub fn bundle(&self) -> TrustBundle {
        self.read().bundle.clone()
    }

    /// The CA that signs now.
    pub fn signer(&self) -> Arc<CertificateAuthority> {
        self.read().signer.clone()
    }

    /// Every CA held, which signs, which roots are trusted.
    pub fn state(&self) -> State {
        self.read().clone()
    }

    /// The fingerprints of the CAs whose certificates peers trust now: the roots of the
    /// bundle, and the signing certificates held (an intermediate chains to a root of the
    /// bundle). A certificate of any other issuer (a root that left the bundle) is no longer
    /// accepted by any sidecar.
    pub fn trusted_issuers(&self) -> std::collections::HashSet<String> {
        let state = self.read();
        let mut out: std::collections::HashSet<String> =
            state.bundle.fingerprints().into_iter().collect();
        for ca in [
            Some(&state.current),
            state.next.as_ref(),
            Some(&state.signer),
        ]
        .into_iter()
        .flatten()
        {
            out.insert(ca.signing_cert().fingerprint.to_ascii_lowercase());
        }
        out
    }

    pub fn trust_domain(&self) -> &mesh_ca::TrustDomain {
        &self.trust_domain
    }

    /// Replaces the whole state (the rotation driver, after it persisted it) and rewrites the
    /// public bundle file.
    pub fn install(&self, state: State) -> anyhow::Result<()> {
        write_private_or_public(&self.bundle_file, state.bundle.to_pem().as_bytes(), 0o644)?;
        *self.inner.write().unwrap_or_else(|p| p.into_inner()) = state;
        Ok(())
    }

    /// The CAs a stored record holds, with this meshd's signing policy: the established one
    /// and, during a rotation, the one it moves to.
    pub fn unseal(
        &self,
        record: &CaStateRecord,
    ) -> anyhow::Result<(Arc<CertificateAuthority>, Option<Arc<CertificateAuthority>>)> {
        let (current, next) = unseal(record, &self.kek, &self.trust_domain)?;
        Ok((self.adopt(current), next.map(|n| self.adopt(n))))
    }

    /// Gives a CA this meshd's signing policy.
    pub fn adopt(&self, ca: CertificateAuthority) -> Arc<CertificateAuthority> {
        Arc::new(ca.with_policy(self.signing_policy))
    }

    /// A CA's key sealed with the key-encryption key, for the store.
    pub fn seal(&self, ca: &CertificateAuthority) -> anyhow::Result<Vec<u8>> {
        ca.sealed_key(&self.kek).context("sealing a CA key")
    }

    /// Checks `csr_pem` against the proven identity and signs it.
    pub fn sign(
        &self,
        csr_pem: &str,
        proven: &SpiffeId,
        ttl: Duration,
    ) -> Result<IssuedCert, SignError> {
        let checked = mesh_ca::check_csr(csr_pem, proven, &self.policy)?;
        Ok(self.signer().sign(&checked, ttl)?)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        // A panic while holding the lock cannot leave State half-written (it is replaced whole),
        // so a poisoned lock is still safe to read.
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }
}

/// `ca_state.rotation_phase` when no rotation ever ran.
pub const IDLE: &str = "idle";

/// The CAs of a stored record: the established one and, during a rotation, the one it moves to.
fn unseal(
    record: &CaStateRecord,
    kek: &KeyEncryptionKey,
    trust_domain: &mesh_ca::TrustDomain,
) -> anyhow::Result<(CertificateAuthority, Option<CertificateAuthority>)> {
    let current = CertificateAuthority::from_sealed(
        &record.cert_chain_pem,
        &record.signing_key,
        kek,
        trust_domain.clone(),
    )
    .context("restoring the CA from the store")?;
    let next = match &record.pending_key {
        Some(sealed) => Some(
            CertificateAuthority::from_sealed(
                &pending_chain(&record.rotation_data)?,
                sealed,
                kek,
                trust_domain.clone(),
            )
            .context("restoring the CA a rotation moves to")?,
        ),
        None => None,
    };
    Ok((current, next))
}

/// The chain of the CA a rotation moves to, from `rotation_data`.
fn pending_chain(rotation_data: &str) -> anyhow::Result<String> {
    let v: serde_json::Value =
        serde_json::from_str(rotation_data).context("reading the stored rotation")?;
    v.get("next_chain_pem")
        .and_then(|c| c.as_str())
        .map(str::to_string)
        .context("the stored rotation has a pending key but no next_chain_pem")
}

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error(transparent)]
    Csr(#[from] mesh_ca::CsrError),
    #[error(transparent)]
    Ca(#[from] mesh_ca::CaError),
}

fn import(cert: &Path, key: &Path, config: &Config) -> anyhow::Result<CertificateAuthority> {
    let cert_pem = std::fs::read_to_string(cert)
        .with_context(|| format!("reading --ca-cert {}", cert.display()))?;
    let key_pem = std::fs::read_to_string(key)
        .with_context(|| format!("reading --ca-key {}", key.display()))?;
    CertificateAuthority::from_pem(&cert_pem, &key_pem, config.trust_domain.clone())
        .with_context(|| format!("importing the CA from {}", cert.display()))
}

/// Reads the key-encryption key, generating `<data-dir>/kek` (mode 0600) on first start.
pub fn load_kek(source: &KekSource) -> anyhow::Result<KeyEncryptionKey> {
    match source {
        KekSource::File(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading --kek-file {}", path.display()))?;
            KeyEncryptionKey::from_hex(&text)
                .with_context(|| format!("--kek-file {}", path.display()))
        }
        KekSource::Env => {
            let text = std::env::var(crate::config::ENV_KEK)
                .with_context(|| format!("{} is not valid UTF-8", crate::config::ENV_KEK))?;
            KeyEncryptionKey::from_hex(&text).context(crate::config::ENV_KEK)
        }
        KekSource::DataDir(path) => {
            if path.exists() {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                return KeyEncryptionKey::from_hex(&text)
                    .with_context(|| path.display().to_string());
            }
            let kek = KeyEncryptionKey::generate()?;
            write_private_or_public(path, kek.to_hex().as_bytes(), 0o600)?;
            tracing::warn!(
                path = %path.display(),
                "generated a key-encryption key beside the data; in production give --kek-file \
                 or MESHD_KEK from a secret store"
            );
            Ok(kek)
        }
    }
}

/// Writes `bytes` to `path` atomically (temporary file + rename) with the given mode.
pub fn write_private_or_public(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    file.write_all(bytes)
        .and_then(|_| file.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
