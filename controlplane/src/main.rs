//! `agw`: the Agent Gateway daemon. On its defaults it runs a single-node gateway with an
//! embedded certificate authority, needing nothing prepared and no external service.

use std::process::ExitCode;

use agw_controlplane::daemon::{DaemonArgs, run};
use clap::Parser;

fn main() -> ExitCode {
    let args = DaemonArgs::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("agw: {e}");
            ExitCode::FAILURE
        }
    }
}
