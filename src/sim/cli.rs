//! `corelog sim` command line.
use std::process::ExitCode;

/// Arguments of `corelog sim`.
#[derive(Debug, clap::Args)]
pub struct SimArgs {}

/// Runs the simulator from the command line.
pub fn run(_args: &SimArgs) -> ExitCode {
    eprintln!("corelog sim: the simulator is not built yet");
    ExitCode::FAILURE
}
