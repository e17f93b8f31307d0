//! The cluster commands of the `corelog` binary: `serve`, `config default`, `cluster`, and the
//! client commands `append`, `read`, `tail`, `status`, `trim`, `member`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::client::{Client, ClientConfig};
use crate::node::{self, NodeConfig, PeerConfig};

static SIGNALS: AtomicUsize = AtomicUsize::new(0);

extern "C" fn on_signal(_: libc::c_int) {
    // The second signal exits at once; the first asks for a graceful stop.
    if SIGNALS.fetch_add(1, Ordering::SeqCst) >= 1 {
        unsafe { libc::_exit(130) };
    }
}

fn install_signal_handlers() {
    // SAFETY: the handler only touches an atomic and calls the async-signal-safe `_exit`.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

/// Arguments of `corelog serve`: the configuration file, and one flag per setting (see
/// [`node::config::SETTINGS`]). Precedence: flag > environment (`CORELOG_<SETTING>`) > file >
/// default.
#[derive(Debug, Default)]
pub struct ServeArgs {
    /// The node's TOML configuration (`--config`, or `CORELOG_CONFIG`); none: flags,
    /// environment and defaults only.
    pub config: Option<PathBuf>,
    /// Settings given as flags: (setting key, value as typed).
    pub settings: Vec<(&'static str, String)>,
}

impl clap::FromArgMatches for ServeArgs {
    fn from_arg_matches(m: &clap::ArgMatches) -> Result<Self, clap::Error> {
        let mut a = ServeArgs::default();
        a.update_from_arg_matches(m)?;
        Ok(a)
    }

    fn update_from_arg_matches(&mut self, m: &clap::ArgMatches) -> Result<(), clap::Error> {
        if let Some(c) = m.get_one::<PathBuf>("config") {
            self.config = Some(c.clone());
        }
        for s in node::config::SETTINGS {
            if let Some(v) = m.get_one::<String>(s.key) {
                self.settings.retain(|(k, _)| *k != s.key);
                self.settings.push((s.key, v.clone()));
            }
        }
        Ok(())
    }
}

impl clap::Args for ServeArgs {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        let mut cmd = cmd.arg(
            clap::Arg::new("config")
                .long("config")
                .value_name("FILE")
                .value_parser(clap::value_parser!(PathBuf))
                .help("The node's TOML configuration (see `corelog config default`); also CORELOG_CONFIG"),
        );
        for s in node::config::SETTINGS {
            let doc = s.doc.replace('\n', " ");
            cmd = cmd.arg(
                clap::Arg::new(s.key)
                    .long(s.flag)
                    .value_name("VALUE")
                    .help(format!("{doc} [env: {}]", s.env_var())),
            );
        }
        cmd
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

/// The configuration of `corelog serve`: flags over the environment over the file (named by
/// `--config` or `CORELOG_CONFIG`) over the defaults.
pub fn resolve_config(
    args: &ServeArgs,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<NodeConfig, String> {
    let path = args.config.clone().or_else(|| env("CORELOG_CONFIG").map(PathBuf::from));
    let text = match &path {
        Some(p) => {
            Some(std::fs::read_to_string(p).map_err(|e| format!("reading {}: {e}", p.display()))?)
        }
        None => None,
    };
    let flags: Vec<(&str, String)> = args.settings.iter().map(|(k, v)| (*k, v.clone())).collect();
    let cfg = NodeConfig::resolve(text.as_deref(), env, &flags).map_err(|e| match &path {
        Some(p) => format!("{}: {e}", p.display()),
        None => e,
    })?;
    cfg.validate()?;
    Ok(cfg)
}

/// Loads a node configuration file.
pub fn load_config(path: &std::path::Path) -> Result<NodeConfig, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Runs a node until SIGTERM or SIGINT (a second signal exits at once).
pub fn serve(args: &ServeArgs) -> ExitCode {
    let cfg = match resolve_config(args, &|k| std::env::var(k).ok()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("corelog serve: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut cfg = cfg;
    if let Err(e) = cfg.apply_disk_profile() {
        eprintln!("corelog serve: {e}");
        return ExitCode::FAILURE;
    }
    install_signal_handlers();
    let handle = match node::start(cfg.clone()) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("corelog serve: {e}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!(
        "corelog node {} serving: peers on {}, clients on {}, {} core(s), {} group(s), data in {}",
        cfg.node_id,
        cfg.me().peer_addr,
        cfg.me().client_addr,
        cfg.cores,
        cfg.groups,
        cfg.data_dir.display()
    );
    let log = cfg.log_config(0);
    eprintln!(
        "corelog node {} log: sync {}, flush_bytes_max {}, flushes_in_flight_max {}{}",
        cfg.node_id,
        log.sync,
        log.flush_bytes_max,
        log.flushes_in_flight_max,
        cfg.disk_profile
            .as_ref()
            .map_or(String::new(), |p| format!(" (disk profile {})", p.display()))
    );
    let stop = handle.stop_flag();
    while SIGNALS.load(Ordering::SeqCst) == 0 {
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("corelog node {}: stopping (finishing in-flight flushes)", cfg.node_id);
    stop.store(true, Ordering::SeqCst);
    match handle.wait() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("corelog serve: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Arguments of `corelog cluster`.
#[derive(Debug, clap::Args)]
pub struct ClusterArgs {
    /// Directory for the nodes' configurations and data.
    #[arg(long, default_value = "corelog-cluster")]
    pub dir: PathBuf,
    /// Number of nodes.
    #[arg(long, default_value_t = 3)]
    pub nodes: u64,
    /// First port: node n's peer port is base + 20(n-1), its client port base + 20(n-1) + 10.
    #[arg(long, default_value_t = 7100)]
    pub base_port: u16,
}

/// Starts a local cluster on loopback, one process per node, until Ctrl-C.
pub fn cluster(args: &ClusterArgs) -> ExitCode {
    let members: Vec<PeerConfig> = (1..=args.nodes)
        .map(|id| {
            let p = args.base_port + 20 * (id as u16 - 1);
            PeerConfig {
                id,
                peer_addr: SocketAddr::from(([127, 0, 0, 1], p)),
                client_addr: SocketAddr::from(([127, 0, 0, 1], p + 10)),
            }
        })
        .collect();
    if let Err(e) = std::fs::create_dir_all(&args.dir) {
        eprintln!("corelog cluster: creating {}: {e}", args.dir.display());
        return ExitCode::FAILURE;
    }
    install_signal_handlers();
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("corelog cluster: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut children = Vec::new();
    for m in &members {
        let cfg = NodeConfig {
            node_id: m.id,
            data_dir: args.dir.join(format!("node{}", m.id)),
            members: members.clone(),
            ..NodeConfig::default()
        };
        let path = args.dir.join(format!("node{}.toml", m.id));
        let text = toml::to_string_pretty(&cfg).expect("serializable");
        if let Err(e) = std::fs::write(&path, text) {
            eprintln!("corelog cluster: writing {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
        match std::process::Command::new(&exe).arg("serve").arg("--config").arg(&path).spawn() {
            Ok(c) => children.push(c),
            Err(e) => {
                eprintln!("corelog cluster: starting node {}: {e}", m.id);
                return ExitCode::FAILURE;
            }
        }
    }
    let addrs: Vec<String> = members.iter().map(|m| m.client_addr.to_string()).collect();
    eprintln!(
        "corelog cluster: {} nodes, data under {}; clients: {}",
        args.nodes,
        args.dir.display(),
        addrs.join(",")
    );
    eprintln!(
        "try: corelog append --nodes {} hello   |   corelog status --nodes {}   |   Ctrl-C stops",
        addrs.join(","),
        addrs.join(",")
    );
    while SIGNALS.load(Ordering::SeqCst) == 0 {
        std::thread::sleep(Duration::from_millis(100));
        for c in &mut children {
            if let Ok(Some(status)) = c.try_wait() {
                eprintln!("corelog cluster: a node exited ({status}); stopping the others");
                SIGNALS.store(1, Ordering::SeqCst);
            }
        }
    }
    for c in &children {
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
    }
    for mut c in children {
        let _ = c.wait();
    }
    ExitCode::SUCCESS
}

/// Arguments shared by the client commands.
#[derive(Debug, clap::Args)]
pub struct ClientArgs {
    /// Client addresses of the nodes, comma separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "127.0.0.1:7110,127.0.0.1:7130,127.0.0.1:7150"
    )]
    pub nodes: Vec<SocketAddr>,
    /// The group.
    #[arg(long, default_value_t = 0)]
    pub group: u64,
}

/// Client commands.
#[derive(Debug, clap::Subcommand)]
pub enum ClientCommand {
    /// Append entries (each argument one entry); prints each position.
    Append {
        #[command(flatten)]
        client: ClientArgs,
        /// The entries.
        #[arg(required = true)]
        entries: Vec<String>,
    },
    /// Read committed entries.
    Read {
        #[command(flatten)]
        client: ClientArgs,
        /// First index.
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// Last index (default: the commit index).
        #[arg(long, default_value_t = u64::MAX)]
        to: u64,
    },
    /// The group's status (leader, term, commit index, members, follower progress).
    Status {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Follow the committed log from an index until interrupted (any replica serves it; the
    /// tail moves to another node if the one it reads from stops).
    Tail {
        #[command(flatten)]
        client: ClientArgs,
        /// First index.
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// Also print the protocol's own entries (a leader's no-op, membership changes).
        #[arg(long)]
        all: bool,
    },
    /// Change the membership of the group (one change at a time; each returns once committed).
    Member {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        change: MemberCommand,
    },
    /// Trim the prefix up to an index (the application checkpointed it).
    Trim {
        #[command(flatten)]
        client: ClientArgs,
        /// Entries up to this index may go.
        index: u64,
    },
}

/// Membership changes. The node must be listed (with its addresses) in the `members` of every
/// node's configuration.
#[derive(Debug, clap::Subcommand)]
pub enum MemberCommand {
    /// Add a node as a learner: it receives the log, does not vote.
    AddLearner {
        /// Node id.
        id: u64,
    },
    /// Turn a learner into a voter.
    Promote {
        /// Node id.
        id: u64,
        /// Election priority (0: a logger that campaigns only as a last resort).
        #[arg(long, default_value_t = 1)]
        priority: u8,
    },
    /// Remove a voter or a learner.
    Remove {
        /// Node id.
        id: u64,
    },
}

/// Runs a client command.
pub fn client(cmd: &ClientCommand) -> ExitCode {
    let args = match cmd {
        ClientCommand::Append { client, .. }
        | ClientCommand::Read { client, .. }
        | ClientCommand::Status { client }
        | ClientCommand::Tail { client, .. }
        | ClientCommand::Member { client, .. }
        | ClientCommand::Trim { client, .. } => client,
    };
    let mut c = match Client::new(ClientConfig::new(args.nodes.clone())) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("corelog: {e}");
            return ExitCode::FAILURE;
        }
    };
    let r: Result<(), String> = (|| {
        match cmd {
            ClientCommand::Append { entries, .. } => {
                let refs: Vec<&[u8]> = entries.iter().map(|e| e.as_bytes()).collect();
                for (p, e) in
                    c.append_many(args.group, &refs).map_err(|e| e.to_string())?.iter().zip(entries)
                {
                    println!("{}\t{}\t{}", p.index, p.term, e);
                }
            }
            ClientCommand::Read { from, to, .. } => {
                let mut next = *from;
                loop {
                    let (commit, entries) =
                        c.read(args.group, next, *to, 1 << 20).map_err(|e| e.to_string())?;
                    if entries.is_empty() {
                        break;
                    }
                    for e in &entries {
                        next = e.index + 1;
                        if e.kind != crate::frame::EntryKind::Normal {
                            continue;
                        }
                        println!(
                            "{}\t{}\t{}\t{}",
                            e.index,
                            e.session,
                            e.seq,
                            String::from_utf8_lossy(&e.data)
                        );
                    }
                    if next > commit || next > *to {
                        break;
                    }
                }
            }
            ClientCommand::Tail { from, all, .. } => {
                install_signal_handlers();
                let mut tail = c.tail(args.group, *from);
                let mut out = std::io::stdout().lock();
                while SIGNALS.load(Ordering::SeqCst) == 0 {
                    let Some(e) =
                        tail.next_within(Duration::from_millis(200)).map_err(|e| e.to_string())?
                    else {
                        continue;
                    };
                    if e.kind != crate::frame::EntryKind::Normal && !*all {
                        continue;
                    }
                    use std::io::Write;
                    writeln!(
                        out,
                        "{}\t{}\t{}\t{}",
                        e.index,
                        e.session,
                        e.seq,
                        String::from_utf8_lossy(&e.data)
                    )
                    .and_then(|()| out.flush())
                    .map_err(|e| e.to_string())?;
                }
            }
            ClientCommand::Member { change, .. } => {
                let p = match change {
                    MemberCommand::AddLearner { id } => c.add_learner(args.group, *id),
                    MemberCommand::Promote { id, priority } => {
                        c.promote(args.group, *id, *priority)
                    }
                    MemberCommand::Remove { id } => c.remove_member(args.group, *id),
                }
                .map_err(|e| e.to_string())?;
                println!("committed at index {} (term {})", p.index, p.term);
            }
            ClientCommand::Status { .. } => {
                println!("{}", c.status(args.group).map_err(|e| e.to_string())?)
            }
            ClientCommand::Trim { index, .. } => {
                c.trim(args.group, *index).map_err(|e| e.to_string())?
            }
        }
        Ok(())
    })();
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("corelog: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Args, FromArgMatches};

    fn parse(argv: &[&str]) -> ServeArgs {
        let cmd = ServeArgs::augment_args(clap::Command::new("serve"));
        ServeArgs::from_arg_matches(&cmd.try_get_matches_from(argv).unwrap()).unwrap()
    }

    #[test]
    fn serve_flags_beat_environment_beat_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("n.toml");
        std::fs::write(&file, "tick_ms = 7\nsegment_bytes = 8388608\ncores = 2\n").unwrap();
        let args = parse(&["serve", "--config", file.to_str().unwrap(), "--tick-ms", "3"]);
        let env = |k: &str| match k {
            "CORELOG_TICK_MS" => Some("5".to_string()),
            "CORELOG_SEGMENT_BYTES" => Some("16777216".to_string()),
            _ => None,
        };
        let c = resolve_config(&args, &env).unwrap();
        assert_eq!(c.tick_ms, 3, "flag");
        assert_eq!(c.segment_bytes, 16 << 20, "environment");
        assert_eq!(c.cores, 2, "file");
        assert_eq!(c.groups, 1, "default");
        // The file may come from the environment too.
        let env2 = |k: &str| (k == "CORELOG_CONFIG").then(|| file.to_str().unwrap().to_string());
        assert_eq!(resolve_config(&parse(&["serve"]), &env2).unwrap().tick_ms, 7);
        // An invalid result is refused.
        let e = resolve_config(&parse(&["serve", "--node-id", "9"]), &|_| None).unwrap_err();
        assert!(e.contains("node_id 9"), "{e}");
    }
}
