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
    /// Benchmarks that print throughput and latency percentiles.
    Bench {
        #[command(subcommand)]
        mode: BenchMode,
    },
    /// Run the deterministic consensus simulator over many seeds.
    Sim(corelog::sim::cli::SimArgs),
    /// Check a log directory: recover it read-only style and print what it holds.
    Inspect(corelog::tools::inspect::InspectArgs),
    /// Append known entries to a log and print each durable index (used by the crash tests).
    #[command(hide = true)]
    CrashWriter(corelog::tools::crash_writer::CrashWriterArgs),
}

#[derive(Debug, Subcommand)]
enum BenchMode {
    /// The local log alone: appends, group commit and fdatasync on one disk, no network.
    Wal(corelog::bench::wal::WalArgs),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CORELOG_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Bench { mode: BenchMode::Wal(args) } => match corelog::bench::wal::run(&args) {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("corelog bench wal: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Sim(args) => corelog::sim::cli::run(&args),
        Command::Inspect(args) => corelog::tools::inspect::run(&args),
        Command::CrashWriter(args) => corelog::tools::crash_writer::run(&args),
    }
}
