//! `mesh-proxy`: parse and check the configuration (exit 64 with one line when it is wrong,
//! before any port is bound), then run until SIGTERM or Ctrl-C and drain.

use clap::Parser;
use mesh_proxy::config::{Cli, Command, Config};
use std::process::ExitCode;

/// `EX_USAGE`: the configuration is wrong (as linkerd does).
const EXIT_USAGE: u8 = 64;

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// One worker: a current-thread runtime, so a request never wakes another thread (the
/// profile of the data-plane benchmark showed most of the proxy's CPU in the kernel, parking
/// and waking tokio's workers). More: the multi-thread scheduler.
fn runtime(workers: usize) -> Result<tokio::runtime::Runtime, ExitCode> {
    let mut builder = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    builder.enable_all().build().map_err(|e| {
        eprintln!("mesh-proxy: cannot start the async runtime: {e}");
        ExitCode::FAILURE
    })
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            let text = e.to_string();
            let line = text.lines().next().unwrap_or("invalid arguments");
            let line = line.strip_prefix("error: ").unwrap_or(line);
            eprintln!("mesh-proxy: invalid configuration: {line}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    init_logging();
    if let Some(Command::WaitReady {
        admin_addr,
        timeout,
    }) = cli.command
    {
        let Ok(timeout) = humantime::parse_duration(&timeout) else {
            eprintln!("mesh-proxy: invalid configuration: --timeout {timeout:?} is not a duration");
            return ExitCode::from(EXIT_USAGE);
        };
        let rt = match runtime(1) {
            Ok(rt) => rt,
            Err(code) => return code,
        };
        return match rt.block_on(mesh_proxy::wait_ready(&admin_addr, timeout)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("mesh-proxy: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let config = match Config::from_args(cli.run) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("mesh-proxy: invalid configuration: {e:#}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let rt = match runtime(config.worker_threads) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match rt.block_on(mesh_proxy::run(config, mesh_proxy::shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mesh-proxy: {e:#}");
            ExitCode::FAILURE
        }
    }
}
