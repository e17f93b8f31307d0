use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// corelog: a replicated write-ahead log.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the deterministic consensus simulator over many seeds.
    Sim(corelog::sim::cli::SimArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Sim(args) => corelog::sim::cli::run(&args),
    }
}
