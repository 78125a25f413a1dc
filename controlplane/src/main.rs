//! `agw`: the Agent Gateway daemon. On its defaults it runs a single-node gateway with an
//! embedded certificate authority, needing nothing prepared and no external service.

use std::process::ExitCode;

use agw_controlplane::daemon::{DaemonArgs, run};
use clap::Parser;

fn main() -> ExitCode {
    // The routing table on huge pages (re-executes once with glibc's tunable; AGW_HUGEPAGES=0
    // turns it off).
    agw_dataplane::hugepages::ensure();
    let args = DaemonArgs::parse();
    // Structured logs on stderr; RUST_LOG picks the levels (default: info).
    agw_rpc::init_logs("info");
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("agw: {e}");
            ExitCode::FAILURE
        }
    }
}
