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
    /// Benchmarks that print throughput and latency percentiles. With no mode: a local
    /// 3-replica cluster (`bench cluster`).
    Bench(Box<BenchCmd>),
    /// Run a node of a cluster.
    Serve(corelog::tools::cli::ServeArgs),
    /// Configuration helpers.
    Config {
        #[command(subcommand)]
        what: ConfigCommand,
    },
    /// Start a local cluster on loopback (one process per node) until Ctrl-C.
    Cluster(corelog::tools::cli::ClusterArgs),
    #[command(flatten)]
    Client(corelog::tools::cli::ClientCommand),
    /// A fault-injecting TCP proxy between the nodes of a test cluster (delay, jitter,
    /// blackhole, stall, reset, bandwidth cap per directed link), or one command to it.
    Proxy(corelog::faultproxy::ProxyArgs),
    /// Run the deterministic consensus simulator over many seeds.
    Sim(corelog::sim::cli::SimArgs),
    /// Check a log directory: recover it read-only style and print what it holds.
    Inspect(corelog::tools::inspect::InspectArgs),
    /// Check that the host and the data directory are fit for corelog (exits 1 on a FAIL).
    Doctor(corelog::tools::doctor::DoctorArgs),
    /// Measure the disk as the log uses it and write a profile for `serve`.
    DiskCheck(corelog::tools::disk_check::DiskCheckArgs),
    /// Append known entries to a log and print each durable index (used by the crash tests).
    #[command(hide = true)]
    CrashWriter(corelog::tools::crash_writer::CrashWriterArgs),
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Print a node configuration with every setting at its default.
    Default,
}

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
struct BenchCmd {
    #[command(subcommand)]
    mode: Option<BenchMode>,
    #[command(flatten)]
    cluster: corelog::bench::cluster::ClusterArgs,
}

#[derive(Debug, Subcommand)]
enum BenchMode {
    /// The local log alone: appends, group commit and fdatasync on one disk, no network.
    Wal(corelog::bench::wal::WalArgs),
    /// A replicated cluster: a local one by default, or `--addresses` of a running one.
    ///
    /// The local cluster's nodes take the `CORELOG_*` environment variables that `corelog
    /// serve` reads (e.g. `CORELOG_FLUSHES_IN_FLIGHT_MAX=8`); the header lists those in effect.
    Cluster(corelog::bench::cluster::ClusterArgs),
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
        Command::Bench(b) => {
            let b = *b;
            let r = match b.mode {
                Some(BenchMode::Wal(args)) => corelog::bench::wal::run(&args).map(|_| ()),
                Some(BenchMode::Cluster(args)) => corelog::bench::cluster::run(&args).map(|_| ()),
                None => corelog::bench::cluster::run(&b.cluster).map(|_| ()),
            };
            match r {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("corelog bench: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Serve(args) => corelog::tools::cli::serve(&args),
        Command::Config { what: ConfigCommand::Default } => {
            print!("{}", corelog::node::NodeConfig::default_toml());
            ExitCode::SUCCESS
        }
        Command::Cluster(args) => corelog::tools::cli::cluster(&args),
        Command::Client(cmd) => corelog::tools::cli::client(&cmd),
        Command::Proxy(args) => corelog::faultproxy::run(&args),
        Command::Sim(args) => corelog::sim::cli::run(&args),
        Command::Inspect(args) => corelog::tools::inspect::run(&args),
        Command::Doctor(args) => corelog::tools::doctor::run(&args),
        Command::DiskCheck(args) => corelog::tools::disk_check::run(&args),
        Command::CrashWriter(args) => corelog::tools::crash_writer::run(&args),
    }
}
