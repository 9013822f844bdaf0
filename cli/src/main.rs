//! `meshctl`, the operator's CLI for meshd.
//!
//! Exit codes: 0 ok, 1 failure, 2 usage, 3 not found or unreachable.

mod admin;
mod apply;
mod cert;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

pub const ENV_SERVER: &str = "MESHCTL_SERVER";
pub const ENV_TOKEN_FILE: &str = "MESHCTL_TOKEN_FILE";

#[derive(Debug, Parser)]
#[command(
    name = "meshctl",
    version,
    about = "Operate a meshd service mesh.",
    after_help = "Examples:\n  meshctl apply -f mesh/\n  meshctl token create --identity spiffe://cluster.local/ns/default/sa/web --ttl 10m\n  meshctl cert issue --token \"$TOKEN\" --ca-bundle meshd-data/ca-bundle.pem --out ./certs\n  meshctl ca bundle > bundle.pem"
)]
struct Cli {
    /// The meshd admin API.
    #[arg(long, global = true, env = ENV_SERVER, default_value = "http://127.0.0.1:15000")]
    server: String,
    /// File holding the admin API token (default: ./meshd-data/admin-token).
    #[arg(long, global = true, env = ENV_TOKEN_FILE)]
    token_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Apply mesh documents (YAML or JSON) as one change: all of them, or none if any is invalid.
    #[command(
        after_help = "Prints one line per document: created, configured or unchanged.\n\nExamples:\n  meshctl apply -f reviews.yaml\n  meshctl apply -f mesh/ -f extra.yaml\n  cat route.yaml | meshctl apply -f -"
    )]
    Apply(apply::ApplyArgs),
    /// Join tokens: how workloads outside Kubernetes get their first certificate.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Workload certificates.
    #[command(subcommand)]
    Cert(CertCommand),
    /// The mesh's certificate authority.
    #[command(subcommand)]
    Ca(CaCommand),
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create a join token for one identity and print it (shown only this once).
    #[command(
        after_help = "Example:\n  meshctl token create --identity spiffe://cluster.local/ns/default/sa/web --ttl 10m --uses 1"
    )]
    Create {
        /// The SPIFFE ID the token lets its bearer obtain.
        #[arg(long)]
        identity: String,
        /// How long the token is valid.
        #[arg(long, default_value = "10m")]
        ttl: String,
        /// How many certificates it may obtain.
        #[arg(long, default_value_t = 1)]
        uses: u32,
    },
}

#[derive(Debug, Subcommand)]
enum CertCommand {
    /// Get a certificate with a join token: the key is made here and never leaves this machine.
    #[command(
        after_help = "Example:\n  meshctl cert issue --token \"$TOKEN\" --control-plane https://127.0.0.1:15012 \\\n      --ca-bundle meshd-data/ca-bundle.pem --out ./certs"
    )]
    Issue(cert::IssueArgs),
    /// Renew the certificate in a directory, authenticated by that certificate itself.
    #[command(
        after_help = "Example:\n  meshctl cert renew --dir ./certs --control-plane https://127.0.0.1:15012"
    )]
    Renew(cert::RenewArgs),
}

#[derive(Debug, Subcommand)]
enum CaCommand {
    /// Print the current trust bundle (PEM).
    #[command(after_help = "Example:\n  meshctl ca bundle > bundle.pem")]
    Bundle,
}

/// A failure with its exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    pub fn new(code: u8, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

pub const EXIT_FAILURE: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_UNREACHABLE: u8 = 3;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("meshctl: cannot start: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            // One line per problem (meshd reports every invalid field at once).
            for line in f.message.lines() {
                eprintln!("meshctl: {line}");
            }
            ExitCode::from(f.code)
        }
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let api = || admin::Client::new(&cli.server, cli.token_file.as_deref());
    match &cli.command {
        Command::Apply(args) => apply::run(args, api()).await,
        Command::Token(TokenCommand::Create {
            identity,
            ttl,
            uses,
        }) => {
            let body = serde_json::json!({ "identity": identity, "ttl": ttl, "uses": uses });
            let created = api()?.post("/api/v1/tokens", &body).await?;
            println!("{}", created["token"].as_str().unwrap_or_default());
            eprintln!(
                "token {} for {} ({} use(s)); it is shown only once",
                created["id"].as_str().unwrap_or_default(),
                identity,
                uses
            );
            Ok(())
        }
        Command::Cert(CertCommand::Issue(args)) => cert::issue(args).await,
        Command::Cert(CertCommand::Renew(args)) => cert::renew(args).await,
        Command::Ca(CaCommand::Bundle) => {
            let bundle = api()?.get("/api/v1/ca/bundle").await?;
            print!("{}", bundle["pem"].as_str().unwrap_or_default());
            Ok(())
        }
    }
}
