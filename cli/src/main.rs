//! `meshctl`, the operator's CLI for meshd: it talks to meshd's admin API (and, for
//! `cert issue|renew`, to its gRPC identity service).
//!
//! Exit codes: 0 ok, 1 failure, 2 usage, 3 not found or unreachable (see [`EXIT_CODES`]).

// First: its printing macros (`say!`, `note!`, ...) are used by every module below.
#[macro_use]
mod output;
mod admin;
mod apply;
mod ca;
mod cert;
mod check;
mod demo;
mod documents;
mod rotate;
mod status;
mod tls;
mod tokens;

use clap::{CommandFactory, Parser, Subcommand};
use documents::{Target, parse_target};
use output::Format;
use std::path::PathBuf;
use std::process::ExitCode;

pub const ENV_SERVER: &str = "MESHCTL_SERVER";
pub const ENV_TOKEN_FILE: &str = "MESHCTL_TOKEN_FILE";

/// The exit codes, as `meshctl --help` lists them.
const EXIT_CODES: &str = "Exit codes:
  0  ok
  1  failure: meshd refused the request (invalid document, unknown kind, wrong token,
     a conflict) or `check` found a problem
  2  usage: bad flags or arguments, a file that cannot be read
  3  not found (no such document, revision, sidecar or token) or meshd unreachable";

#[derive(Debug, Parser)]
#[command(
    name = "meshctl",
    version,
    about = "Operate a meshd service mesh.",
    after_help = format!(
        "Examples:
  meshctl status
  meshctl apply -f mesh/
  meshctl get httproutes -n shop
  meshctl check
  meshctl token create --identity spiffe://cluster.local/ns/default/sa/web --ttl 10m
  source <(meshctl completion bash)

{EXIT_CODES}"
    )
)]
struct Cli {
    /// The meshd admin API.
    #[arg(
        long,
        global = true,
        env = ENV_SERVER,
        default_value = "http://127.0.0.1:15000",
        value_parser = admin::parse_server
    )]
    server: String,
    /// File holding the admin API token (default: ./meshd-data/admin-token).
    #[arg(long, global = true, env = ENV_TOKEN_FILE)]
    token_file: Option<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Format::Table)]
    output: Format,
    /// Namespace: of the document (default `default`), or to list in (default: all).
    #[arg(short = 'n', long, global = true)]
    namespace: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Every connected sidecar: sync state per type, NACKs, certificate expiry, last seen.
    #[command(
        after_help = "Examples:\n  meshctl status\n  meshctl status -n shop\n  meshctl status web-1          # one sidecar, type by type\n  meshctl status -o json"
    )]
    Status {
        /// One sidecar's id: its state type by type, with versions.
        sidecar: Option<String>,
    },
    /// List mesh documents of a kind, or show one.
    #[command(
        after_help = "Examples:\n  meshctl get services\n  meshctl get httproutes -n shop\n  meshctl get service reviews -n shop -o yaml\n  meshctl get all"
    )]
    Get(documents::GetArgs),
    /// One document: its revision, when and by whom it changed, and its body.
    #[command(after_help = "Example:\n  meshctl describe httproute/reviews -n shop")]
    Describe {
        /// KIND/NAME, e.g. service/reviews.
        #[arg(value_parser = parse_target, value_name = "KIND/NAME")]
        target: Target,
    },
    /// Apply mesh documents (YAML or JSON) as one change: all of them, or none if any is invalid.
    #[command(
        after_help = "Prints one line per document, as kubectl does: `service/reviews created` (or configured, unchanged).\n\nExamples:\n  meshctl apply -f reviews.yaml\n  meshctl apply -f mesh/ -f extra.yaml\n  cat route.yaml | meshctl apply -f -"
    )]
    Apply(apply::ApplyArgs),
    /// Delete a document (refused while another document refers to it).
    #[command(after_help = "Example:\n  meshctl delete httproute/reviews -n shop")]
    Delete {
        /// KIND/NAME, e.g. httproute/reviews.
        #[arg(value_parser = parse_target, value_name = "KIND/NAME")]
        target: Target,
    },
    /// Show what `apply -f` would change, as a unified diff; nothing is stored.
    #[command(
        after_help = "Exits 0 whether or not there are changes (1 if a document is invalid).\n\nExamples:\n  meshctl diff -f reviews.yaml\n  meshctl diff -f mesh/"
    )]
    Diff(documents::DiffArgs),
    /// Every revision of a document, oldest first.
    #[command(after_help = "Example:\n  meshctl history service/reviews -n shop")]
    History {
        /// KIND/NAME, e.g. service/reviews.
        #[arg(value_parser = parse_target, value_name = "KIND/NAME")]
        target: Target,
    },
    /// Put a document back as it was at a revision (a new revision; history is kept).
    #[command(
        after_help = "Example:\n  meshctl history service/reviews -n shop\n  meshctl rollback service/reviews -n shop --to-revision 3"
    )]
    Rollback {
        /// KIND/NAME, e.g. service/reviews.
        #[arg(value_parser = parse_target, value_name = "KIND/NAME")]
        target: Target,
        /// The revision to go back to (see `meshctl history`).
        #[arg(long, value_name = "N")]
        to_revision: i64,
    },
    /// What a sidecar's scope holds: every resource with its version (`-o yaml` for bodies).
    #[command(
        name = "config-dump",
        after_help = "Examples:\n  meshctl config-dump web-1\n  meshctl config-dump web-1 -o yaml"
    )]
    ConfigDump {
        /// The sidecar's id (see `meshctl status`).
        sidecar: String,
    },
    /// Certificates the CA issued and that are still valid, soonest expiry first.
    #[command(
        after_help = "Examples:\n  meshctl certs\n  meshctl certs --expiring 10m\n  meshctl certs --identity spiffe://cluster.local/ns/shop/sa/reviews\n  meshctl certs reissue --namespace shop --window 2m --wait",
        args_conflicts_with_subcommands = true
    )]
    Certs(ca::CertsArgs),
    /// Join tokens: how workloads outside Kubernetes get their first certificate.
    #[command(
        subcommand,
        after_help = "Examples:\n  meshctl token create --identity spiffe://cluster.local/ns/default/sa/web\n  meshctl token list\n  meshctl token revoke 3f9c0a1b"
    )]
    Token(TokenCommand),
    /// Workload certificates (key made here, signed by meshd).
    #[command(
        subcommand,
        after_help = "Examples:\n  meshctl cert issue --token \"$TOKEN\" --ca-bundle meshd-data/ca-bundle.pem --out ./certs\n  meshctl cert renew --dir ./certs"
    )]
    Cert(CertCommand),
    /// The mesh's certificate authority.
    #[command(
        subcommand,
        after_help = "Examples:\n  meshctl ca status\n  meshctl ca bundle > bundle.pem\n  meshctl ca rotate --wait"
    )]
    Ca(CaCommand),
    /// Mesh TLS: roll out a TlsPolicy (mesh-wide, or staged on a selector first) and see what
    /// the fleet actually negotiates.
    #[command(
        subcommand,
        after_help = "Examples:\n  meshctl tls set --min-version 1.3 --ciphers TLS13_AES_256_GCM_SHA384 --selector tier=canary\n  meshctl tls set --min-version 1.3 --ciphers TLS13_AES_256_GCM_SHA384\n  meshctl tls set --groups X25519MLKEM768\n  meshctl tls status"
    )]
    Tls(TlsCommand),
    /// Check the mesh's health: control plane, store, CA, sidecar sync, certificate renewal.
    ///
    /// One line per finding with what to do; exit 1 if something is wrong, 3 if meshd cannot
    /// be reached. A STALE sidecar counts only if it is still STALE 2 s later.
    #[command(after_help = "Examples:\n  meshctl check\n  meshctl check -o json")]
    Check,
    /// Print the dashboard's URL (and open it, on a desktop).
    #[command(after_help = "Example:\n  meshctl dashboard")]
    Dashboard,
    /// Bring up a whole mesh on this machine: meshd, three demo apps with their sidecars, example
    /// routes and policies, and a gentle traffic loop with live counts. Ctrl-C stops it all.
    ///
    /// meshd and mesh-proxy must be next to meshctl (`cargo build --release --bins`); everything
    /// lives in a temporary directory that is removed on exit. Ports are ephemeral: the
    /// dashboard URL and the meshctl commands to try are printed once it is up.
    #[command(
        after_help = "Example:\n  cargo build --release --bins && target/release/meshctl demo"
    )]
    Demo,
    /// Print a shell completion script.
    #[command(
        after_help = "Examples:\n  source <(meshctl completion bash)\n  meshctl completion zsh > \"${fpath[1]}/_meshctl\"\n  meshctl completion fish > ~/.config/fish/completions/meshctl.fish"
    )]
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
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
    /// Every join token: identity, state (active, expired, used up, revoked), uses left.
    #[command(after_help = "Example:\n  meshctl token list")]
    List,
    /// Revoke a join token: it is refused from now on.
    #[command(after_help = "Example:\n  meshctl token revoke 3f9c0a1b")]
    Revoke {
        /// The token's id (see `meshctl token list`).
        id: String,
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
enum TlsCommand {
    /// Apply a TlsPolicy in the root namespace (mesh-wide unless --stage or --selector stages
    /// it). Set mesh-wide what a stage tried, and the stage is deleted.
    #[command(
        after_help = "Examples:\n  meshctl tls set --min-version 1.3 --stage 10%               # a tenth of the sidecars first\n  meshctl tls set --stage 50%                                   # then half\n  meshctl tls set --min-version 1.3                             # then all (the stage is deleted)\n  meshctl tls set --groups X25519MLKEM768,X25519 --selector tier=canary\n  meshctl delete tlspolicy/mesh-tls-stage -n mesh-system        # undo a stage\n  meshctl rollback tlspolicy/mesh-tls -n mesh-system --to-revision 3   # undo"
    )]
    Set(tls::SetArgs),
    /// The TLS policies in force and the negotiated version × cipher suite × group inventory.
    #[command(after_help = "Examples:\n  meshctl tls status\n  meshctl tls status -o json")]
    Status,
}

#[derive(Debug, Subcommand)]
enum CaCommand {
    /// The CA: trust domain, signing certificate, the roots of the trust bundle and their
    /// expiry, leaf TTL, rotation phase.
    #[command(after_help = "Example:\n  meshctl ca status")]
    Status,
    /// Print the current trust bundle (PEM).
    #[command(after_help = "Example:\n  meshctl ca bundle > bundle.pem")]
    Bundle,
    /// Rotate the CA across the fleet with no restart and no failed request: the new root
    /// joins the bundle (prepare), signing moves to it and sidecars re-issue (switch), the old
    /// root leaves once nothing uses it (finalize).
    #[command(
        after_help = "Examples:\n  meshctl ca rotate --window 5m --wait\n  meshctl ca rotate --import-cert new-ca.pem --import-key new-ca.key --manual\n  meshctl ca rotate next\n  meshctl ca rotate pause\n  meshctl ca rotate rollback\n  meshctl ca rotate status --wait"
    )]
    Rotate(rotate::RotateArgs),
}

/// A failure with its exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
    /// meshd said that what was named does not exist (HTTP 404); callers add where to look.
    /// Distinct from the code: an unreachable meshd exits 3 as well.
    pub not_found: bool,
}

impl Failure {
    pub fn new(code: u8, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            not_found: false,
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self {
            code: EXIT_NOT_FOUND,
            message: message.into(),
            not_found: true,
        }
    }

    /// Adds what to try next to a not-found message.
    pub fn hint_if_not_found(mut self, hint: impl FnOnce() -> String) -> Self {
        if self.not_found {
            self.message = format!("{}; {}", self.message, hint());
        }
        self
    }
}

pub const EXIT_FAILURE: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
/// meshd cannot be reached.
pub const EXIT_UNREACHABLE: u8 = 3;
/// What was named does not exist (the same code: "what you asked for is not there").
pub const EXIT_NOT_FOUND: u8 = 3;

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
            note!("meshctl: cannot start: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            // One line per problem (meshd reports every invalid field at once); `note!` escapes
            // what meshd or a document put in the message.
            // A value quoted whole by a library's message is cut to 100 characters too.
            for line in f.message.lines() {
                note!("meshctl: {}", mesh_model::text::shorten_quoted(line));
            }
            ExitCode::from(f.code)
        }
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let api = || admin::Client::new(&cli.server, cli.token_file.as_deref());
    let format = cli.output;
    let ns = cli.namespace.as_deref();
    match &cli.command {
        Command::Status { sidecar } => status::status(sidecar.as_deref(), ns, format, api()?).await,
        Command::Get(args) => documents::get(args, ns, format, api()?).await,
        Command::Describe { target } => documents::describe(target, ns, format, api()?).await,
        Command::Apply(args) => apply::run(args, format, api()).await,
        Command::Delete { target } => documents::delete(target, ns, format, api()?).await,
        Command::Diff(args) => documents::diff(args, format, api()).await,
        Command::History { target } => documents::history(target, ns, format, api()?).await,
        Command::Rollback {
            target,
            to_revision,
        } => documents::rollback(target, *to_revision, ns, format, api()?).await,
        Command::ConfigDump { sidecar } => status::config_dump(sidecar, format, api()?).await,
        Command::Certs(args) => match &args.action {
            Some(ca::CertsAction::Reissue(r)) => ca::reissue(r, format, api()?).await,
            None => ca::certs(args, format, api()?).await,
        },
        Command::Token(TokenCommand::Create {
            identity,
            ttl,
            uses,
        }) => tokens::create(identity, ttl, *uses, format, api()?).await,
        Command::Token(TokenCommand::List) => tokens::list(format, api()?).await,
        Command::Token(TokenCommand::Revoke { id }) => tokens::revoke(id, format, api()?).await,
        Command::Cert(CertCommand::Issue(args)) => cert::issue(args).await,
        Command::Cert(CertCommand::Renew(args)) => cert::renew(args).await,
        Command::Ca(CaCommand::Status) => ca::status(format, api()?).await,
        Command::Ca(CaCommand::Bundle) => ca::bundle(format, api()?).await,
        Command::Ca(CaCommand::Rotate(args)) => rotate::run(args, format, api()?).await,
        Command::Tls(TlsCommand::Set(args)) => tls::set(args, format, api()?).await,
        Command::Tls(TlsCommand::Status) => tls::status(format, api()?).await,
        Command::Check => check::run(ns, format, api()?).await,
        Command::Dashboard => dashboard(&cli.server, format),
        Command::Demo => demo::run().await,
        Command::Completion { shell } => {
            clap_complete::generate(
                *shell,
                &mut Cli::command(),
                "meshctl",
                &mut std::io::stdout(),
            );
            Ok(())
        }
    }
}

/// Prints the dashboard's URL; opens it with `xdg-open` only for a person at a desktop (stdout
/// a terminal, and a display), never in a script or over SSH.
fn dashboard(server: &str, format: Format) -> Result<(), Failure> {
    use std::io::IsTerminal;
    let url = format!("{}/dashboard", server.trim_end_matches('/'));
    output::emit(format, &serde_json::json!({ "url": url }), |_| {
        say!("{url}")
    })?;
    let desktop = std::env::var_os("DISPLAY").is_some_and(|d| !d.is_empty())
        || std::env::var_os("WAYLAND_DISPLAY").is_some_and(|d| !d.is_empty());
    if format == Format::Table && std::io::stdout().is_terminal() && desktop {
        // Best effort: the URL is printed either way.
        let opened = std::process::Command::new("xdg-open")
            .arg(&url)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        if opened.is_err() {
            note!("could not start xdg-open; open the URL above in a browser");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every command's `--help` ends with an example.
    #[test]
    fn every_command_has_an_example() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for sub in cmd.get_subcommands() {
                let path = format!("{path} {}", sub.get_name());
                let help = sub
                    .get_after_help()
                    .map(|h| h.to_string())
                    .unwrap_or_default();
                if !help.contains("Example") {
                    missing.push(path.clone());
                }
                walk(sub, &path, missing);
            }
        }
        let mut missing = Vec::new();
        let cmd = Cli::command();
        cmd.clone().debug_assert();
        walk(&cmd, "meshctl", &mut missing);
        assert!(missing.is_empty(), "no example in --help of: {missing:?}");
    }

    #[test]
    fn the_exit_codes_in_help_are_the_documented_ones() {
        let help = Cli::command()
            .get_after_help()
            .map(|h| h.to_string())
            .unwrap_or_default();
        assert!(help.contains(EXIT_CODES), "{help}");
    }
}
