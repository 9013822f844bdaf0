//! The sidecar's one typed configuration, built once at start from flags and environment and
//! checked before any port is bound: a wrong value exits with one line (`EX_USAGE`, 64).

use anyhow::{Context, bail};
use clap::{Args as ClapArgs, Parser, Subcommand};
use mesh_ca::SpiffeId;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub const ENV_CONTROL_PLANE: &str = "MESH_PROXY_CONTROL_PLANE";
pub const ENV_CA_BUNDLE: &str = "MESH_PROXY_CA_BUNDLE";
pub const ENV_JOIN_TOKEN_FILE: &str = "MESH_PROXY_JOIN_TOKEN_FILE";
pub const ENV_K8S_TOKEN_FILE: &str = "MESH_PROXY_K8S_TOKEN_FILE";
pub const ENV_TRUST_DOMAIN: &str = "MESH_PROXY_TRUST_DOMAIN";
pub const ENV_SERVICE: &str = "MESH_PROXY_SERVICE";
pub const ENV_NAMESPACE: &str = "MESH_PROXY_NAMESPACE";
pub const ENV_WORKLOAD: &str = "MESH_PROXY_WORKLOAD";
pub const ENV_ID: &str = "MESH_PROXY_ID";
pub const ENV_LABELS: &str = "MESH_PROXY_LABELS";
pub const ENV_APP_ADDR: &str = "MESH_PROXY_APP_ADDR";
pub const ENV_INBOUND_ADDR: &str = "MESH_PROXY_INBOUND_ADDR";
pub const ENV_OUTBOUND_ADDR: &str = "MESH_PROXY_OUTBOUND_ADDR";
pub const ENV_ADMIN_ADDR: &str = "MESH_PROXY_ADMIN_ADDR";
pub const ENV_STATE_DIR: &str = "MESH_PROXY_STATE_DIR";
pub const ENV_WORKER_THREADS: &str = "MESH_PROXY_WORKER_THREADS";
pub const ENV_CERT_TTL: &str = "MESH_PROXY_CERT_TTL";
pub const ENV_DRAIN_GRACE: &str = "MESH_PROXY_DRAIN_GRACE";
pub const ENV_HEADER_READ_TIMEOUT: &str = "MESH_PROXY_HEADER_READ_TIMEOUT";
pub const ENV_IDLE_TIMEOUT: &str = "MESH_PROXY_IDLE_TIMEOUT";
pub const ENV_MAX_CONNECTIONS: &str = "MESH_PROXY_MAX_CONNECTIONS";
pub const ENV_MAX_APP_CONNECTIONS: &str = "MESH_PROXY_MAX_APP_CONNECTIONS";
pub const ENV_APP_QUEUE_TIMEOUT: &str = "MESH_PROXY_APP_QUEUE_TIMEOUT";
pub const ENV_MAX_REQUESTS_PER_CONNECTION: &str = "MESH_PROXY_MAX_REQUESTS_PER_CONNECTION";

/// The command line.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "mesh-proxy",
    version,
    about = "The mesh sidecar: mTLS, routing, retries, authorization and metrics for one workload.",
    args_conflicts_with_subcommands = true,
    // Each description on the lines under its flag, for every flag alike (clap otherwise
    // decides flag by flag, by the length of each line).
    next_line_help = true,
    after_help = "Examples:\n  mesh-proxy --control-plane https://meshd:15012 --ca-bundle ca-bundle.pem \\\n      --join-token-file token --service web --app-addr 127.0.0.1:8080\n  mesh-proxy wait-ready --admin-addr 127.0.0.1:15020"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: Args,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Block until the sidecar at --admin-addr answers /ready with 200 (for container start
    /// ordering). Exits 0 when ready, 1 when the timeout passes first.
    WaitReady {
        /// The sidecar's admin address.
        #[arg(long, env = ENV_ADMIN_ADDR, default_value = "127.0.0.1:15020")]
        admin_addr: String,
        /// How long to wait (e.g. 60s, 2m).
        #[arg(long, default_value = "60s")]
        timeout: String,
    },
}

/// The flags of the sidecar itself, as the operator types them.
#[derive(Debug, Clone, ClapArgs)]
pub struct Args {
    /// meshd's gRPC address, e.g. https://meshd:15012. Repeat (or comma-separate in the
    /// environment) for failover: the sidecar tries each in turn.
    #[arg(long = "control-plane", env = ENV_CONTROL_PLANE, value_delimiter = ',', value_name = "URL")]
    pub control_plane: Vec<String>,
    /// PEM bundle that meshd's serving certificate must chain to (trust on first contact).
    #[arg(long, env = ENV_CA_BUNDLE, value_name = "FILE")]
    pub ca_bundle: Option<PathBuf>,
    /// File holding the join token (from `meshctl token create`) that proves this workload's
    /// identity for its first certificate. It names the identity.
    #[arg(long, env = ENV_JOIN_TOKEN_FILE, value_name = "FILE", conflicts_with = "k8s_token_file")]
    pub join_token_file: Option<PathBuf>,
    /// File holding a Kubernetes ServiceAccount token projected for the audience `meshd`
    /// (re-read at every use, as the kubelet rotates it); meshd checks it with a TokenReview.
    /// The identity is spiffe://<trust-domain>/ns/<namespace>/sa/<service account> of the
    /// token.
    #[arg(long, env = ENV_K8S_TOKEN_FILE, value_name = "FILE")]
    pub k8s_token_file: Option<PathBuf>,
    /// The mesh's trust domain, for the identity of a Kubernetes token (a join token names
    /// its own).
    #[arg(long, env = ENV_TRUST_DOMAIN, default_value = "cluster.local")]
    pub trust_domain: String,
    /// The service this workload serves (default: the identity's service account).
    #[arg(long, env = ENV_SERVICE)]
    pub service: Option<String>,
    /// The workload's namespace; must be the namespace of the join token's identity.
    #[arg(long, env = ENV_NAMESPACE, default_value = "default")]
    pub namespace: String,
    /// The workload name, e.g. the Deployment (default: the service).
    #[arg(long, env = ENV_WORKLOAD)]
    pub workload: Option<String>,
    /// This sidecar's id, unique in the mesh (default: <service>-<random>.<namespace>).
    #[arg(long, env = ENV_ID)]
    pub id: Option<String>,
    /// A workload label, KEY=VALUE (repeatable; comma-separated in the environment).
    #[arg(long = "label", env = ENV_LABELS, value_delimiter = ',', value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Where the local application listens.
    #[arg(long, env = ENV_APP_ADDR, default_value = "127.0.0.1:8080")]
    pub app_addr: String,
    /// Inbound listener: mTLS from other sidecars to the application. Port 0 picks a free port.
    #[arg(long, env = ENV_INBOUND_ADDR, default_value = "0.0.0.0:15006")]
    pub inbound_addr: String,
    /// Outbound listener: plain HTTP from the application to the mesh.
    #[arg(long, env = ENV_OUTBOUND_ADDR, default_value = "127.0.0.1:15001")]
    pub outbound_addr: String,
    /// Admin listener: /ready, /live, /metrics, /config_dump, /certs.
    #[arg(long, env = ENV_ADMIN_ADDR, default_value = "127.0.0.1:15020")]
    pub admin_addr: String,
    /// Directory where the last good configuration and the credentials (mode 0600) are kept,
    /// so that a restart while meshd is down comes back serving.
    #[arg(long, env = ENV_STATE_DIR, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Worker threads of the async runtime. 1 (the default) runs everything on one thread,
    /// with no cross-thread wake-ups: the cheapest per request (see BENCHMARKS.md); more
    /// threads raise throughput at saturation on a busy pod.
    #[arg(long, env = ENV_WORKER_THREADS, default_value_t = 1)]
    pub worker_threads: usize,
    /// Certificate lifetime to ask for (e.g. 1h); meshd clamps it. Default: meshd's.
    #[arg(long, env = ENV_CERT_TTL)]
    pub cert_ttl: Option<String>,
    /// How long in-flight requests get to finish after SIGTERM.
    /// How often the sidecar reports to meshd what its TLS connections negotiated (for
    /// `meshctl tls status`).
    #[arg(long, default_value = "10s")]
    pub report_interval: String,
    #[arg(long, env = ENV_DRAIN_GRACE, default_value = "5s")]
    pub drain_grace: String,
    /// How long a client of the inbound or outbound listener may take from connecting (TLS
    /// handshake included) to a complete request head, and on HTTP/1.1 from the first byte of
    /// each later request to its complete head. Slow or silent clients are closed.
    #[arg(long, env = ENV_HEADER_READ_TIMEOUT, default_value = "10s")]
    pub header_read_timeout: String,
    /// How long a connection of the inbound or outbound listener may stay open with no request
    /// in flight (HTTP/2: closed with GOAWAY).
    #[arg(long, env = ENV_IDLE_TIMEOUT, default_value = "5m")]
    pub idle_timeout: String,
    /// The most connections open at once on each of the inbound and outbound listeners; more
    /// are closed at accept.
    #[arg(long, env = ENV_MAX_CONNECTIONS, default_value_t = 10_000)]
    pub max_connections: usize,
    /// The most HTTP/1.1 connections to the local application at once, however many inbound
    /// requests (HTTP/2 streams) arrive; the others wait for a free one.
    #[arg(long, env = ENV_MAX_APP_CONNECTIONS, default_value_t = 100)]
    pub max_app_connections: usize,
    /// How long an inbound request waits for a free application connection before a 503.
    #[arg(long, env = ENV_APP_QUEUE_TIMEOUT, default_value = "5s")]
    pub app_queue_timeout: String,
    /// A pooled mesh connection to another sidecar carries at most this many requests, then a
    /// new one is made (as Envoy's max_requests_per_connection); 0: no limit. A small value
    /// spreads load over new endpoints sooner, and makes every certificate and trust change
    /// meet new handshakes.
    #[arg(long, env = ENV_MAX_REQUESTS_PER_CONNECTION, default_value_t = 0)]
    pub max_requests_per_connection: u64,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub control_planes: Vec<String>,
    pub ca_bundle: mesh_ca::TrustBundle,
    /// How the first certificate is obtained.
    pub bootstrap: Option<crate::identity::Bootstrap>,
    pub identity: SpiffeId,
    pub service: String,
    pub namespace: String,
    pub workload: String,
    pub id: String,
    pub labels: BTreeMap<String, String>,
    pub app_addr: SocketAddr,
    pub inbound_addr: SocketAddr,
    pub outbound_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub state_dir: Option<PathBuf>,
    pub worker_threads: usize,
    pub cert_ttl: Duration,
    pub drain_grace: Duration,
    pub report_interval: Duration,
    /// The limits of each of the inbound and outbound listeners.
    pub limits: crate::conn::Limits,
    pub max_app_connections: usize,
    pub app_queue_timeout: Duration,
    /// 0: no limit.
    pub max_requests_per_connection: u64,
}

fn addr(flag: &str, value: &str) -> anyhow::Result<SocketAddr> {
    value
        .parse()
        .with_context(|| format!("--{flag} {value:?} is not an ip:port address"))
}

fn duration(flag: &str, value: &str) -> anyhow::Result<Duration> {
    humantime::parse_duration(value)
        .with_context(|| format!("--{flag} {value:?} is not a duration like 30s or 1h"))
}

// === impl Config ===

impl Config {
    pub fn from_args(args: Args) -> anyhow::Result<Self> {
        if args.control_plane.is_empty() {
            bail!("--control-plane is required (meshd's gRPC URL, e.g. https://meshd:15012)");
        }
        for url in &args.control_plane {
            let uri: http::Uri = url
                .parse()
                .with_context(|| format!("--control-plane {url:?} is not a URL"))?;
            if uri.scheme_str() != Some("https") || uri.host().is_none() {
                bail!("--control-plane {url:?} must look like https://host:port");
            }
        }
        let Some(bundle_path) = &args.ca_bundle else {
            bail!("--ca-bundle is required (the PEM roots that meshd's certificate chains to)");
        };
        let pem = std::fs::read_to_string(bundle_path)
            .with_context(|| format!("cannot read --ca-bundle {}", bundle_path.display()))?;
        let ca_bundle = mesh_ca::TrustBundle::from_pem(&pem)
            .with_context(|| format!("--ca-bundle {}", bundle_path.display()))?;

        let bootstrap = match (&args.join_token_file, &args.k8s_token_file) {
            (Some(path), _) => Some(crate::identity::Bootstrap::JoinToken(path.clone())),
            (None, Some(path)) => Some(crate::identity::Bootstrap::Kubernetes {
                token_file: path.clone(),
                trust_domain: args
                    .trust_domain
                    .parse()
                    .with_context(|| format!("--trust-domain {:?}", args.trust_domain))?,
            }),
            (None, None) => None,
        };
        let identity = match (&bootstrap, &args.state_dir) {
            (Some(b), _) => b.read()?.1,
            (None, Some(dir)) => crate::identity::stored_identity(dir).with_context(|| {
                format!(
                    "no --join-token-file or --k8s-token-file, and --state-dir {} holds no \
                     certificate",
                    dir.display()
                )
            })?,
            (None, None) => bail!(
                "--join-token-file (a token from `meshctl token create`) or --k8s-token-file (a \
                 projected ServiceAccount token) is required unless --state-dir holds a \
                 certificate"
            ),
        };
        if identity.namespace() != args.namespace {
            bail!(
                "the token is for namespace {:?} ({identity}), but --namespace is {:?}",
                identity.namespace(),
                args.namespace
            );
        }
        let service = args
            .service
            .clone()
            .unwrap_or_else(|| identity.service_account().to_string());
        if service.is_empty() || service.contains(char::is_whitespace) {
            bail!("--service {service:?} is not a service name");
        }
        let mut labels = BTreeMap::new();
        for l in &args.labels {
            let Some((k, v)) = l.split_once('=') else {
                bail!("--label {l:?} must be KEY=VALUE");
            };
            if k.is_empty() {
                bail!("--label {l:?} has an empty key");
            }
            labels.insert(k.to_string(), v.to_string());
        }
        if args.worker_threads == 0 || args.worker_threads > 256 {
            bail!(
                "--worker-threads {} must be between 1 and 256",
                args.worker_threads
            );
        }
        let cert_ttl = match &args.cert_ttl {
            Some(t) => duration("cert-ttl", t)?,
            None => Duration::ZERO,
        };
        let id = args
            .id
            .clone()
            .unwrap_or_else(|| format!("{service}-{:08x}.{}", fastrand::u32(..), args.namespace));
        let inbound_addr = addr("inbound-addr", &args.inbound_addr)?;
        let outbound_addr = addr("outbound-addr", &args.outbound_addr)?;
        let admin_addr = addr("admin-addr", &args.admin_addr)?;
        let fixed = [
            ("inbound-addr", inbound_addr),
            ("outbound-addr", outbound_addr),
            ("admin-addr", admin_addr),
        ];
        for (i, (a, x)) in fixed.iter().enumerate() {
            for (b, y) in &fixed[i + 1..] {
                if x.port() != 0 && x == y {
                    bail!("--{a} and --{b} are both {x}");
                }
            }
        }
        let positive = |flag: &str, value: &str| -> anyhow::Result<Duration> {
            let d = duration(flag, value)?;
            if d.is_zero() {
                bail!("--{flag} must be more than 0");
            }
            Ok(d)
        };
        let limits = crate::conn::Limits {
            header_read_timeout: positive("header-read-timeout", &args.header_read_timeout)?,
            idle_timeout: positive("idle-timeout", &args.idle_timeout)?,
            max_connections: args.max_connections,
        };
        if args.max_connections == 0 {
            bail!("--max-connections must be at least 1");
        }
        if args.max_app_connections == 0 {
            bail!("--max-app-connections must be at least 1");
        }
        Ok(Self {
            limits,
            max_app_connections: args.max_app_connections,
            app_queue_timeout: positive("app-queue-timeout", &args.app_queue_timeout)?,
            control_planes: args.control_plane,
            ca_bundle,
            bootstrap,
            workload: args.workload.unwrap_or_else(|| service.clone()),
            identity,
            service,
            namespace: args.namespace,
            id,
            labels,
            app_addr: addr("app-addr", &args.app_addr)?,
            inbound_addr,
            outbound_addr,
            admin_addr,
            state_dir: args.state_dir,
            worker_threads: args.worker_threads,
            cert_ttl,
            drain_grace: duration("drain-grace", &args.drain_grace)?,
            report_interval: duration("report-interval", &args.report_interval)?,
            max_requests_per_connection: args.max_requests_per_connection,
        })
    }
}

#[cfg(test)]
mod tests {
    /// `mesh-proxy --help` and `-h`: every flag (and subcommand) on a line of its own, its
    /// description on the lines under it.
    #[test]
    fn help_puts_each_description_under_its_flag() {
        use clap::CommandFactory;
        let mut cmd = super::Cli::command();
        for help in [cmd.render_long_help(), cmd.render_help()] {
            let help = help.to_string();
            let mut flags = 0;
            for line in help.lines() {
                let trimmed = line.trim_start();
                let indent = line.len() - trimmed.len();
                let flag_line = trimmed.starts_with('-') && indent < 10;
                let command_line = indent == 2 && help.contains("Commands:") && !flag_line;
                if flag_line {
                    flags += 1;
                }
                if (flag_line || command_line) && !line.starts_with("Usage") {
                    let rest = trimmed.split_once("  ").map(|(_, r)| r.trim());
                    assert!(
                        rest.is_none_or(str::is_empty),
                        "a description beside its flag: {line:?}\n{help}"
                    );
                }
            }
            assert!(flags > 10, "{help}");
        }
    }
}
