//! Settings of a node, read from a TOML file (see `corelog config default`).

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::log::{LogConfig, SyncMethod};

/// A member of the cluster, as every node knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerConfig {
    /// Node id (non-zero, unique).
    pub id: u64,
    /// Base address for replication: core `i` listens on port + i.
    pub peer_addr: SocketAddr,
    /// Base address for clients: core `i` listens on port + i.
    pub client_addr: SocketAddr,
}

/// Settings of one node. Every node of a cluster lists all members (itself included) in
/// `members`, in the same order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Identifies the cluster; a peer with another id is refused at the handshake.
    pub cluster_id: u64,
    /// This node's id (one of `members`).
    pub node_id: u64,
    /// Where the logs live: `{data_dir}/group-{g}/`.
    pub data_dir: PathBuf,
    /// All members of every group, this node included.
    pub members: Vec<PeerConfig>,
    /// Executors (cores) per node. Group `g` lives on core `g % cores`.
    pub cores: usize,
    /// Consensus groups (logs). Default 1.
    pub groups: u64,
    /// Pin executors to cores (0..cores). Off by default so that test clusters can share a
    /// machine; turn it on in production.
    pub pin: bool,
    /// Milliseconds per consensus tick.
    pub tick_ms: u64,
    /// Election timeout in ticks (randomised up to twice this).
    pub election_ticks: u32,
    /// Heartbeat interval in ticks.
    pub heartbeat_ticks: u32,
    /// Segment size of each log, bytes.
    pub segment_bytes: u64,
    /// Most bytes per log flush.
    pub flush_bytes_max: usize,
    /// Log flushes in flight at once (see `LogConfig::flushes_in_flight_max`).
    pub flushes_in_flight_max: usize,
    /// How a log flush is made durable: "fdatasync" or "dsync".
    pub sync: SyncMethod,
    /// A disk profile written by `corelog disk-check --profile FILE` (a path relative to the
    /// working directory). When set, its `flush_bytes_max`, `flushes_in_flight_max` and `sync`
    /// replace the three settings above when the node starts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_profile: Option<PathBuf>,
    /// Largest message a connection accepts (envelope body), bytes.
    pub message_bytes_max: u32,
    /// Most client connections per core.
    pub client_connections_max: usize,
    /// Bytes of responses queued per client connection before the connection is closed (a
    /// client that does not read its replies).
    pub client_queue_bytes_max: usize,
    /// Seconds a client connection may stay silent while nothing it asked for is in flight,
    /// or stall in the middle of a message, or leave a response unread, before it is closed.
    /// Peer links use at least twice the longest election timeout.
    pub read_timeout_secs: u64,
    /// Address of the node's metrics endpoint: Prometheus text at `GET /metrics`, the stage
    /// histograms at `/stages` and sampled appends at `/trace` (see `node::metrics`). Off
    /// when absent; 9100 is the customary port.
    pub metrics_addr: Option<SocketAddr>,
    /// Time every stage of each client append (see `node::stages`): a few clock reads per
    /// batch and two per request. On by default.
    pub stage_timing: bool,
    /// Trace one append in this many, on every node (0: off; needs `stage_timing`).
    pub trace_sample_every: u64,
    /// Sampled appends kept per core for `/trace` (the oldest go first).
    pub trace_samples_max: usize,
}

impl Default for NodeConfig {
    fn default() -> Self {
        let local = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
        NodeConfig {
            cluster_id: 1,
            node_id: 1,
            data_dir: PathBuf::from("corelog-data"),
            members: vec![PeerConfig { id: 1, peer_addr: local(7100), client_addr: local(7200) }],
            cores: 1,
            groups: 1,
            pin: false,
            tick_ms: 10,
            election_ticks: 30,
            heartbeat_ticks: 3,
            segment_bytes: 64 << 20,
            flush_bytes_max: 1 << 20,
            flushes_in_flight_max: LogConfig::new(0).flushes_in_flight_max,
            sync: SyncMethod::Fdatasync,
            disk_profile: None,
            message_bytes_max: 4 << 20,
            client_connections_max: 1024,
            client_queue_bytes_max: 8 << 20,
            read_timeout_secs: 10,
            metrics_addr: None,
            stage_timing: true,
            trace_sample_every: 1024,
            trace_samples_max: 1024,
        }
    }
}

impl NodeConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<(), String> {
        if self.node_id == 0 || !self.members.iter().any(|m| m.id == self.node_id) {
            return Err(format!("node_id {} is not among the members", self.node_id));
        }
        let mut ids: Vec<u64> = self.members.iter().map(|m| m.id).collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.len() != self.members.len() || ids.contains(&0) {
            return Err("member ids must be unique and non-zero".into());
        }
        if self.cores == 0 || self.cores > 256 {
            return Err("cores must be within 1..=256".into());
        }
        if self.groups == 0 {
            return Err("groups must be at least 1".into());
        }
        if self.tick_ms == 0 || self.election_ticks < 2 * self.heartbeat_ticks.max(1) {
            return Err(
                "tick_ms must be positive and election_ticks at least twice heartbeat_ticks".into(),
            );
        }
        self.log_config(0).validate()?;
        Ok(())
    }

    /// Reads `disk_profile`, if set, into `flush_bytes_max`, `flushes_in_flight_max` and
    /// `sync`. Reading it again gives the same result.
    pub fn apply_disk_profile(&mut self) -> Result<(), String> {
        let Some(path) = &self.disk_profile else { return Ok(()) };
        let p = crate::tools::disk_check::DiskProfile::load(path)?;
        self.flush_bytes_max = p.log.flush_bytes_max;
        self.flushes_in_flight_max = p.log.flushes_in_flight_max;
        self.sync = p.log.sync;
        Ok(())
    }

    /// The settings of group `group`'s log.
    pub fn log_config(&self, group: u64) -> LogConfig {
        LogConfig {
            segment_bytes: self.segment_bytes,
            flush_bytes_max: self.flush_bytes_max,
            flushes_in_flight_max: self.flushes_in_flight_max,
            sync: self.sync,
            ..LogConfig::new(group)
        }
    }

    /// This node's own entry.
    pub fn me(&self) -> &PeerConfig {
        self.members.iter().find(|m| m.id == self.node_id).expect("validated")
    }

    /// The commented default configuration.
    pub fn default_toml() -> String {
        let text = toml::to_string_pretty(&NodeConfig::default()).expect("serializable");
        format!(
            "# corelog node configuration. Every setting has the default shown.\n\
             # Core i of a node listens on peer_addr.port + i and client_addr.port + i;\n\
             # group g lives on core g % cores of every node.\n\
             # metrics_addr = \"127.0.0.1:9100\" serves Prometheus metrics (off by default).\n\n{text}"
        )
    }
}
