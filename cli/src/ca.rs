//! `meshctl ca status|bundle` (the CA: trust bundle, roots, signing certificate, expiry) and
//! `meshctl certs` (the certificates it issued).

use crate::admin::{Client, segment};
use crate::output::{self, Format, Table, expires, text, utc};
use crate::{EXIT_USAGE, Failure};
use mesh_admin_api::{
    Bundle, CaStatus, CertState, CertificateList, ReissueList, ReissueProgress, ReissueRequest,
};

/// `meshctl ca status`.
pub async fn status(format: Format, api: Client) -> Result<(), Failure> {
    let ca: CaStatus = api.fetch("/api/v1/ca").await?;
    output::emit(format, &ca, |ca| {
        let signing = &ca.signing;
        let ttl = |secs: u64| output::short_duration(i64::try_from(secs).unwrap_or(i64::MAX));
        say_part!(
            "{}",
            output::fields(&[
                ("Trust domain", text(&ca.trust_domain)),
                ("Rotation", crate::rotate::summary(&ca.rotation)),
                ("Signing cert", text(&signing.subject)),
                ("  fingerprint", text(&signing.fingerprint)),
                (
                    "  expires",
                    format!(
                        "{} ({})",
                        utc(&signing.not_after),
                        expires(&signing.not_after)
                    )
                ),
                (
                    "Leaf TTL",
                    format!(
                        "{} (max {})",
                        ttl(ca.leaf_ttl_seconds),
                        ttl(ca.max_leaf_ttl_seconds)
                    )
                ),
            ])
        );
        say!();
        let mut roots = Table::new(&["ROOT", "FINGERPRINT", "NOT AFTER", "EXPIRES", "ACTIVE"]);
        for r in &ca.roots {
            roots.row(vec![
                text(&r.cert.subject),
                text(&r.cert.fingerprint),
                utc(&r.cert.not_after),
                expires(&r.cert.not_after),
                if r.active { "yes" } else { "no" }.into(),
            ]);
        }
        roots.print();
    })
}

/// `meshctl ca bundle`: the PEM, for files and pipes (`-o json` gives the roots too).
pub async fn bundle(format: Format, api: Client) -> Result<(), Failure> {
    let bundle: Bundle = api.fetch("/api/v1/ca/bundle").await?;
    output::emit(format, &bundle, |b| {
        say_part!("{}", b.pem);
    })
}

/// `in use`, `superseded`, `untrusted`, `expired`.
fn cert_state(state: CertState) -> &'static str {
    state.as_str()
}

/// The window of `meshctl certs --expiring` given without a value.
pub const DEFAULT_EXPIRING: &str = "10m";

#[derive(Debug, clap::Args)]
pub struct CertsArgs {
    /// Only certificates that expire within this long (e.g. 10m, 1h); `--expiring` alone
    /// means 10m.
    #[arg(
        long,
        value_name = "DURATION",
        num_args = 0..=1,
        default_missing_value = DEFAULT_EXPIRING
    )]
    expiring: Option<String>,
    /// Only certificates of this SPIFFE ID.
    #[arg(long)]
    identity: Option<String>,
    /// Every recorded certificate, not only those in use: superseded by a renewal, expired
    /// (meshd keeps them for a while), or of a root that left the bundle (STATE says which).
    #[arg(long, conflicts_with = "expiring")]
    all: bool,
    #[command(subcommand)]
    pub action: Option<CertsAction>,
}

#[derive(Debug, clap::Subcommand)]
pub enum CertsAction {
    /// Make workloads re-issue their certificates now (e.g. after a key compromise), staggered
    /// over a window so the CA sees a smooth rate.
    #[command(
        after_help = "Examples:\n  meshctl certs reissue --all --window 5m\n  meshctl certs reissue --namespace shop --wait\n  meshctl certs reissue --workload shop/reviews --window 30s --wait"
    )]
    Reissue(ReissueArgs),
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("which").required(true).multiple(false)))]
pub struct ReissueArgs {
    /// Every workload of the mesh.
    #[arg(long, group = "which")]
    all: bool,
    /// The workloads of one namespace.
    #[arg(long, group = "which")]
    namespace: Option<String>,
    /// One service's workloads, as NAMESPACE/SERVICE.
    #[arg(long, group = "which")]
    workload: Option<String>,
    /// Each workload re-issues at a random moment within this window.
    #[arg(long, default_value = "1m")]
    window: String,
    /// Why (recorded in the audit log and shown to the sidecars).
    #[arg(long, default_value = "operator request")]
    reason: String,
    /// Wait until every workload concerned holds a new certificate, showing progress.
    #[arg(long)]
    wait: bool,
}

/// `meshctl certs reissue`: a re-issue directive, and its progress with `--wait`.
pub async fn reissue(args: &ReissueArgs, format: Format, api: Client) -> Result<(), Failure> {
    let window = humantime::parse_duration(&args.window).map_err(|e| {
        Failure::new(
            EXIT_USAGE,
            format!("--window {:?}: {e}; e.g. --window 2m", args.window),
        )
    })?;
    let body = ReissueRequest {
        all: args.all,
        namespace: args.namespace.clone(),
        workload: args.workload.clone(),
        window: Some(args.window.clone()),
        reason: Some(args.reason.clone()),
    };
    let created: ReissueProgress = api.submit("/api/v1/reissue", &body).await?;
    let generation = created.directive.generation;
    let line = |p: &ReissueProgress| {
        format!(
            "re-issue {generation}: {}/{} workloads hold a new certificate{}",
            p.done,
            p.total,
            if p.stragglers.is_empty() {
                String::new()
            } else {
                format!(" (waiting for {})", p.stragglers.join(", "))
            }
        )
    };
    if !args.wait {
        return output::emit(format, &created, |p| say!("{}", line(p)));
    }
    // Progress: one line whenever it changes, until every workload is done. The deadline is
    // the window plus time for the slowest to connect and be signed.
    let deadline = std::time::Instant::now() + window + std::time::Duration::from_secs(120);
    let mut last = String::new();
    loop {
        let all: ReissueList = api.fetch("/api/v1/reissue").await?;
        let current = all
            .directives
            .into_iter()
            .find(|d| d.directive.generation == generation)
            .unwrap_or_else(|| created.clone());
        let text = line(&current);
        if text != last {
            note!("{text}");
            last = text;
        }
        if current.done == current.total {
            return output::emit(format, &current, |_| {});
        }
        if std::time::Instant::now() > deadline {
            return Err(Failure::new(
                crate::EXIT_FAILURE,
                format!(
                    "{last}; gave up after the window and 2 minutes: check `meshctl status` for those sidecars"
                ),
            ));
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// `meshctl certs`: issued certificates, soonest expiry first.
pub async fn certs(args: &CertsArgs, format: Format, api: Client) -> Result<(), Failure> {
    let mut query = Vec::new();
    if let Some(within) = &args.expiring {
        humantime::parse_duration(within).map_err(|e| {
            Failure::new(
                EXIT_USAGE,
                format!("--expiring {within:?}: {e}; e.g. --expiring 10m"),
            )
        })?;
        query.push(format!("expiring_within={}", segment(within)));
    }
    if !args.all {
        // In use: not expired, not superseded by a renewal, of an issuer peers still trust.
        query.push("live=true".to_string());
    }
    if let Some(identity) = &args.identity {
        query.push(format!("identity={}", segment(identity)));
    }
    let certs: CertificateList = api
        .fetch(&format!("/api/v1/certificates?{}", query.join("&")))
        .await?;
    output::emit(format, &certs, |c| {
        let list = &c.certificates;
        if list.is_empty() {
            match &args.expiring {
                Some(within) => note!("no certificate expires within {within}"),
                None => note!("no certificates"),
            }
            return;
        }
        let mut table = Table::new(&[
            "SERIAL",
            "IDENTITY",
            "SIDECAR",
            "STATE",
            "NOT AFTER",
            "EXPIRES",
            "ISSUER",
        ]);
        for cert in list {
            let issuer = text(&cert.issuer_fingerprint);
            let sidecar = match &cert.sidecar {
                Some(s) => s.to_string(),
                None => "-".to_string(),
            };
            table.row(vec![
                text(&cert.serial_hex),
                text(&cert.identity),
                sidecar,
                cert_state(cert.state).into(),
                utc(&cert.not_after),
                expires(&cert.not_after),
                issuer.chars().take(16).collect(),
            ]);
        }
        table.print();
    })
}
