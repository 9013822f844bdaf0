//! `meshd`: parse and check the configuration (exit 64 with one line when it is wrong, before
//! any port is bound), then run until SIGTERM or Ctrl-C.

use clap::Parser;
use meshd::config::{Args, Config};
use std::process::ExitCode;

/// `EX_USAGE`: the configuration is wrong (as linkerd does).
const EXIT_USAGE: u8 = 64;

fn main() -> ExitCode {
    let args = Args::parse();
    meshd::telemetry::init_logging();
    let config = match Config::from_args(args) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("meshd: invalid configuration: {e:#}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("meshd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(meshd::server::run(config, meshd::server::shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meshd: {e:#}");
            ExitCode::FAILURE
        }
    }
}
