//! meshd's one typed configuration, built once at start from flags and environment and checked
//! before any port is bound or any file is written.

use anyhow::{Context, bail};
use clap::Parser;
use mesh_ca::TrustDomain;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub const ENV_DATA_DIR: &str = "MESHD_DATA_DIR";
pub const ENV_DATABASE_URL: &str = "MESHD_DATABASE_URL";
pub const ENV_TRUST_DOMAIN: &str = "MESHD_TRUST_DOMAIN";
pub const ENV_CERT_TTL: &str = "MESHD_CERT_TTL";
pub const ENV_CA_CERT: &str = "MESHD_CA_CERT";
pub const ENV_CA_KEY: &str = "MESHD_CA_KEY";
pub const ENV_KEK_FILE: &str = "MESHD_KEK_FILE";
pub const ENV_CONFIG_DIR: &str = "MESHD_CONFIG_DIR";
/// The key-encryption key itself, as 64 hex characters (e.g. from a Kubernetes Secret).
pub const ENV_KEK: &str = "MESHD_KEK";

/// The flags, as the operator types them.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "meshd",
    version,
    about = "The meshd control plane: certificate authority and configuration server.",
    after_help = "Examples:\n  meshd                                   # SQLite in ./meshd-data\n  meshd --data-dir /var/lib/meshd --cert-ttl 30m\n  meshd --database-url postgres://meshd@db/meshd --kek-file /etc/meshd/kek"
)]
pub struct Args {
    /// Directory for the embedded database, the trust bundle and the admin token.
    #[arg(long, env = ENV_DATA_DIR, default_value = "./meshd-data")]
    pub data_dir: PathBuf,
    /// Database URL: sqlite://PATH or postgres://... (default: SQLite in the data directory).
    #[arg(long, env = ENV_DATABASE_URL)]
    pub database_url: Option<String>,
    /// The SPIFFE trust domain of the mesh.
    #[arg(long, env = ENV_TRUST_DOMAIN, default_value = "cluster.local")]
    pub trust_domain: String,
    /// Lifetime of workload certificates (e.g. 1h, 30m).
    #[arg(long, env = ENV_CERT_TTL, default_value = "1h")]
    pub cert_ttl: String,
    /// PEM chain of an existing CA to use on first start (signing certificate first, root last).
    #[arg(long, env = ENV_CA_CERT, requires = "ca_key")]
    pub ca_cert: Option<PathBuf>,
    /// PEM private key of --ca-cert.
    #[arg(long, env = ENV_CA_KEY, requires = "ca_cert")]
    pub ca_key: Option<PathBuf>,
    /// File holding the key-encryption key (64 hex characters) that seals the CA key at rest.
    /// Without it (and without MESHD_KEK), one is generated in <data-dir>/kek.
    #[arg(long, env = ENV_KEK_FILE)]
    pub kek_file: Option<PathBuf>,
    /// The gRPC address (identity and discovery), served over TLS.
    #[arg(long, default_value = "127.0.0.1:15012")]
    pub grpc_addr: String,
    /// The admin HTTP address (API, metrics, dashboard).
    #[arg(long, default_value = "127.0.0.1:15000")]
    pub admin_addr: String,
    /// Directory of mesh documents (*.yaml, *.yml, *.json; not recursive), applied as one set
    /// at start and whenever a file changes (checked every second); a set that does not
    /// validate is logged and skipped. Files add and update; delete with meshctl delete
    /// (removing a file deletes nothing).
    #[arg(long, env = ENV_CONFIG_DIR, value_name = "DIR")]
    pub config_dir: Option<PathBuf>,
    /// The Kubernetes API server that checks sidecars' ServiceAccount tokens (TokenReview),
    /// e.g. https://kubernetes.default.svc. In a pod it is found from the environment; without
    /// either, Kubernetes tokens are refused (join tokens still work).
    #[arg(long, env = "MESHD_K8S_API_SERVER", value_name = "URL")]
    pub k8s_api_server: Option<String>,
    /// meshd's own bearer token for that API server (in a pod: its ServiceAccount token).
    #[arg(long, env = "MESHD_K8S_TOKEN_FILE", value_name = "FILE")]
    pub k8s_token_file: Option<PathBuf>,
    /// PEM roots of that API server's certificate (in a pod: the ServiceAccount's ca.crt).
    #[arg(long, env = "MESHD_K8S_CA_FILE", value_name = "FILE")]
    pub k8s_ca_file: Option<PathBuf>,
    /// The audience sidecars' tokens must be projected for.
    #[arg(long, env = "MESHD_K8S_AUDIENCE", default_value = "meshd")]
    pub k8s_audience: String,
}

/// Where ServiceAccount tokens are checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubernetesConfig {
    /// `None`: in-cluster (from the pod's environment and ServiceAccount files).
    pub api_server: Option<String>,
    pub token_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    pub audience: String,
}

/// Where the key-encryption key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KekSource {
    File(PathBuf),
    /// Hex text from the environment (never logged).
    Env,
    /// `<data-dir>/kek`, generated on first start.
    DataDir(PathBuf),
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub database_url: String,
    pub trust_domain: TrustDomain,
    pub cert_ttl: Duration,
    pub import_ca: Option<(PathBuf, PathBuf)>,
    pub kek: KekSource,
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// `--config-dir`: documents applied from files (see [`crate::source::config_dir`]).
    pub config_dir: Option<PathBuf>,
    /// Kubernetes ServiceAccount tokens are accepted (checked with a TokenReview).
    pub kubernetes: Option<KubernetesConfig>,
}

/// The longest certificate TTL meshd will configure (the CA's policy maximum).
pub const MAX_CERT_TTL: Duration = Duration::from_secs(24 * 3600);

impl Config {
    pub fn from_args(args: Args) -> anyhow::Result<Self> {
        let trust_domain = TrustDomain::new(&args.trust_domain)
            .with_context(|| format!("--trust-domain {:?}", args.trust_domain))?;
        let cert_ttl = parse_duration("--cert-ttl", &args.cert_ttl)?;
        if cert_ttl < Duration::from_secs(60) || cert_ttl > MAX_CERT_TTL {
            bail!("--cert-ttl {}: must be between 1m and 24h", args.cert_ttl);
        }
        let grpc_addr = parse_addr("--grpc-addr", &args.grpc_addr)?;
        let admin_addr = parse_addr("--admin-addr", &args.admin_addr)?;
        if grpc_addr == admin_addr && grpc_addr.port() != 0 {
            bail!("--grpc-addr and --admin-addr are both {grpc_addr}; give them different ports");
        }
        let database_url = match args.database_url {
            Some(url) if url.starts_with("sqlite:") || url.starts_with("postgres") => url,
            Some(url) => bail!(
                "--database-url {:?}: expected sqlite://PATH or postgres://USER@HOST/DB",
                crate::store::redact_url(&url)
            ),
            None => crate::store::Store::default_sqlite_url(&args.data_dir),
        };
        let import_ca = match (args.ca_cert, args.ca_key) {
            (Some(cert), Some(key)) => {
                for (flag, path) in [("--ca-cert", &cert), ("--ca-key", &key)] {
                    if !path.is_file() {
                        bail!("{flag} {}: no such file", path.display());
                    }
                }
                Some((cert, key))
            }
            _ => None,
        };
        let kek = match (args.kek_file, std::env::var_os(ENV_KEK)) {
            (Some(path), _) => {
                if !path.is_file() {
                    bail!("--kek-file {}: no such file", path.display());
                }
                KekSource::File(path)
            }
            (None, Some(_)) => KekSource::Env,
            (None, None) => KekSource::DataDir(args.data_dir.join("kek")),
        };
        if let Some(dir) = &args.config_dir
            && !dir.is_dir()
        {
            bail!("--config-dir {}: no such directory", dir.display());
        }
        for (flag, file) in [
            ("--k8s-token-file", &args.k8s_token_file),
            ("--k8s-ca-file", &args.k8s_ca_file),
        ] {
            if let Some(path) = file
                && !path.is_file()
            {
                bail!("{flag} {}: no such file", path.display());
            }
        }
        if let Some(url) = &args.k8s_api_server {
            let uri: http::Uri = url
                .parse()
                .with_context(|| format!("--k8s-api-server {url:?} is not a URL"))?;
            if !matches!(uri.scheme_str(), Some("https" | "http")) || uri.host().is_none() {
                bail!("--k8s-api-server {url:?} must look like https://host[:port]");
            }
        }
        if args.k8s_audience.trim().is_empty() {
            bail!("--k8s-audience must not be empty");
        }
        let in_cluster = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some();
        let kubernetes = (args.k8s_api_server.is_some() || in_cluster).then(|| KubernetesConfig {
            api_server: args.k8s_api_server.clone(),
            token_file: args.k8s_token_file.clone(),
            ca_file: args.k8s_ca_file.clone(),
            audience: args.k8s_audience.clone(),
        });
        Ok(Self {
            kubernetes,
            config_dir: args.config_dir,
            data_dir: args.data_dir,
            database_url,
            trust_domain,
            cert_ttl,
            import_ca,
            kek,
            grpc_addr,
            admin_addr,
        })
    }
}

/// Parses a human duration (`90s`, `10m`, `1h`), naming the flag when it is wrong.
pub fn parse_duration(flag: &str, text: &str) -> anyhow::Result<Duration> {
    humantime::parse_duration(text.trim())
        .map_err(|e| anyhow::anyhow!("{flag} {text:?}: {e} (examples: 90s, 10m, 1h)"))
}

fn parse_addr(flag: &str, text: &str) -> anyhow::Result<SocketAddr> {
    text.parse()
        .map_err(|_| anyhow::anyhow!("{flag} {text:?}: expected IP:PORT, e.g. 127.0.0.1:15012"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &[&str]) -> anyhow::Result<Config> {
        let mut argv = vec!["meshd", "--data-dir", "/tmp/meshd-config-test"];
        argv.extend_from_slice(extra);
        Config::from_args(Args::try_parse_from(argv)?)
    }

    #[test]
    fn defaults_are_the_embedded_mesh() {
        let c = config(&[]).unwrap();
        assert_eq!(c.trust_domain.as_str(), "cluster.local");
        assert_eq!(c.cert_ttl, Duration::from_secs(3600));
        assert_eq!(c.grpc_addr.to_string(), "127.0.0.1:15012");
        assert_eq!(c.admin_addr.to_string(), "127.0.0.1:15000");
        assert!(
            c.database_url.starts_with("sqlite://"),
            "{}",
            c.database_url
        );
        assert!(c.database_url.contains("/tmp/meshd-config-test/meshd.db"));
    }

    #[test]
    fn bad_values_name_the_flag() {
        let cases: [(&[&str], &str); 7] = [
            (&["--cert-ttl", "soon"], "--cert-ttl"),
            (&["--cert-ttl", "10s"], "between 1m and 24h"),
            (&["--trust-domain", "Bad Domain"], "--trust-domain"),
            (&["--grpc-addr", "localhost"], "--grpc-addr"),
            (&["--database-url", "mysql://x"], "--database-url"),
            (&["--kek-file", "/nonexistent/kek"], "--kek-file"),
            (&["--config-dir", "/nonexistent/mesh"], "--config-dir"),
        ];
        for (args, needle) in cases {
            let err = format!("{:#}", config(args).unwrap_err());
            assert!(err.contains(needle), "{args:?}: {err}");
            assert!(!err.contains('\n'), "one line: {err}");
        }
    }
}
