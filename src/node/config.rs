//! Settings of a node.
//!
//! Every setting comes from, in order of precedence: a command-line flag (`--tick-ms 5`), an
//! environment variable (`CORELOG_TICK_MS=5`), the TOML file (`tick_ms = 5`), the default.
//! [`SETTINGS`] lists them all with their flag and variable names; [`NodeConfig::resolve`]
//! applies the layers; `corelog config default` prints them with their defaults.
//!
//! On a flag or in the environment, a list is written with commas: `voters` as `1,2,3`,
//! `members` as `ID@PEER_ADDR@CLIENT_ADDR,...` (for example
//! `1@127.0.0.1:7100@127.0.0.1:7200,2@127.0.0.1:7120@127.0.0.1:7220`).

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
/// `members`, in the same order: `members` is the address book of every node that is or may
/// become a member; `voters` (default: all of `members`) are the voters a group starts with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Identifies the cluster; a peer with another id is refused at the handshake.
    pub cluster_id: u64,
    /// This node's id (one of `members`).
    pub node_id: u64,
    /// Where the logs live: `{data_dir}/group-{g}/`.
    pub data_dir: PathBuf,
    /// All members of every group, this node included: the address book of every node that
    /// is, or may later be added as, a member.
    pub members: Vec<PeerConfig>,
    /// The voters of every group when it starts with an empty log (ids among `members`);
    /// empty means every member. A node that is to join later is listed in `members` but
    /// not here, and is added with `corelog member add-learner` and `promote`.
    pub voters: Vec<u64>,
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
    /// Trimmed segments each log keeps for reuse (see `LogConfig::spare_segments_max`).
    pub spare_segments_max: usize,
    /// Segments each log keeps prepared ahead of need (see `LogConfig::spare_segments`).
    pub spare_segments: usize,
    /// Most bytes per log flush. Default 1 MiB (one log on its disk does best with it; the
    /// local cluster of `corelog bench`, whose replicas share one disk, uses 2 MiB).
    pub flush_bytes_max: usize,
    /// Log flushes in flight at once (see `LogConfig::flushes_in_flight_max`).
    pub flushes_in_flight_max: usize,
    /// Bytes gathered before a log flush is cut so that the next may start while it is in
    /// flight (see `LogConfig::pipeline_bytes`). A node's default is 256 KiB, not the log's
    /// 64 KiB: with 3 replicas on this project's 2-core test VM, 256 KiB gave lower CPU per
    /// append and about half the open-loop median at 1 KiB, and +18% at 16 KiB. At most half
    /// of `flush_bytes_max` takes effect.
    pub flush_pipeline_bytes: usize,
    /// How a log flush is made durable: "fdatasync", "dsync" or "adaptive" (see
    /// `log::SyncMethod`).
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
    /// Peer connections per core that may be in their handshake at once (connected, no valid
    /// hello yet); more are closed at once. A bound on what strangers can hold.
    pub peer_handshakes_max: usize,
    /// Committed entries a leader keeps in memory per group for followers that lag, bytes.
    /// A follower further behind is served from the log on disk (read back and framed
    /// anew), which costs the leader a read and a copy of every entry. Sizes both the
    /// consensus core's entry cache and the log's recent frames (the bytes a leader sends as
    /// they are), so a group may hold about twice this in memory; at most 16 GiB.
    pub entry_cache_bytes_max: u64,
    /// Bytes of client appends a group's leader takes in before they commit (each entry
    /// counts its data plus its overhead, and at least 512 bytes). An append beyond it is not
    /// refused: its connection is not read until commits make room (TCP backpressure on the
    /// client), for up to `admission_wait_ms`; only then is it answered `Busy`. The consensus
    /// core's own bounds sit a quarter above, as a backstop.
    pub uncommitted_bytes_max: u64,
    /// How long an append may wait for room under `uncommitted_bytes_max`, its connection
    /// unread meanwhile, before it is answered `Busy`, milliseconds.
    pub admission_wait_ms: u64,
}

/// Default of `uncommitted_bytes_max`.
pub const UNCOMMITTED_BYTES_MAX: u64 = 32 << 20;

/// The least an entry counts against `uncommitted_bytes_max`, bytes: with it, the bound on
/// bytes is also a bound on entries (the consensus core bounds both), but for one request
/// of more entries than the whole bound holds, which is let in alone and may be refused by
/// the consensus core.
pub const ADMISSION_ENTRY_MIN_BYTES: u64 = 512;

/// Default of `entry_cache_bytes_max`.
pub const ENTRY_CACHE_BYTES_MAX: u64 = 32 << 20;

/// Largest accepted `entry_cache_bytes_max`.
const ENTRY_CACHE_BYTES_LIMIT: u64 = 16 << 30;

impl Default for NodeConfig {
    fn default() -> Self {
        let local = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
        NodeConfig {
            cluster_id: 1,
            node_id: 1,
            data_dir: PathBuf::from("corelog-data"),
            members: vec![PeerConfig { id: 1, peer_addr: local(7100), client_addr: local(7200) }],
            voters: Vec::new(),
            cores: 1,
            groups: 1,
            pin: false,
            tick_ms: 10,
            election_ticks: 30,
            heartbeat_ticks: 3,
            segment_bytes: 64 << 20,
            spare_segments_max: LogConfig::new(0).spare_segments_max,
            spare_segments: LogConfig::new(0).spare_segments,
            flush_bytes_max: 1 << 20,
            flushes_in_flight_max: LogConfig::new(0).flushes_in_flight_max,
            flush_pipeline_bytes: 256 << 10,
            sync: SyncMethod::Adaptive,
            disk_profile: None,
            message_bytes_max: 4 << 20,
            client_connections_max: 1024,
            client_queue_bytes_max: 8 << 20,
            read_timeout_secs: 10,
            metrics_addr: None,
            stage_timing: true,
            trace_sample_every: 1024,
            trace_samples_max: 1024,
            peer_handshakes_max: 64,
            entry_cache_bytes_max: ENTRY_CACHE_BYTES_MAX,
            uncommitted_bytes_max: UNCOMMITTED_BYTES_MAX,
            admission_wait_ms: 2000,
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
        if self.entry_cache_bytes_max > ENTRY_CACHE_BYTES_LIMIT {
            return Err(format!(
                "entry_cache_bytes_max {} is above {ENTRY_CACHE_BYTES_LIMIT} (16 GiB)",
                self.entry_cache_bytes_max
            ));
        }
        if self.uncommitted_bytes_max < u64::from(self.message_bytes_max)
            || self.uncommitted_bytes_max > ENTRY_CACHE_BYTES_LIMIT
        {
            return Err(format!(
                "uncommitted_bytes_max {} must hold the largest message (message_bytes_max {}) \
                 and be at most 16 GiB",
                self.uncommitted_bytes_max, self.message_bytes_max
            ));
        }
        if !(1..=60_000).contains(&self.admission_wait_ms) {
            return Err("admission_wait_ms must be within 1..=60000".into());
        }
        for v in &self.voters {
            if !self.members.iter().any(|m| m.id == *v) {
                return Err(format!("voter {v} is not among the members"));
            }
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
            spare_segments_max: self.spare_segments_max,
            spare_segments: self.spare_segments,
            flush_bytes_max: self.flush_bytes_max,
            flushes_in_flight_max: self.flushes_in_flight_max,
            sync: self.sync,
            recent_cache_bytes: usize::try_from(self.entry_cache_bytes_max).unwrap_or(usize::MAX),
            // At most half a flush, so that a full buffer can always be cut for a second flush.
            pipeline_bytes: self.flush_pipeline_bytes.min(self.flush_bytes_max / 2),
            ..LogConfig::new(group)
        }
    }

    /// This node's own entry.
    pub fn me(&self) -> &PeerConfig {
        self.members.iter().find(|m| m.id == self.node_id).expect("validated")
    }

    /// The voters a group starts with: `voters`, or every member when it is empty.
    pub fn initial_voters(&self) -> Vec<u64> {
        if self.voters.is_empty() {
            self.members.iter().map(|m| m.id).collect()
        } else {
            self.voters.clone()
        }
    }

    /// The commented default configuration: every setting with its default, its flag and its
    /// environment variable.
    pub fn default_toml() -> String {
        let table = toml::Table::try_from(NodeConfig::default()).expect("serializable");
        let mut out = String::from(
            "# corelog node configuration. Every setting has the default shown.\n\
             # Precedence: command-line flag > environment variable > this file > default.\n\
             # Core i of a node listens on peer_addr.port + i and client_addr.port + i;\n\
             # group g lives on core g % cores of every node.\n",
        );
        let mut tables = String::new();
        for s in SETTINGS {
            let mut doc = String::new();
            for line in s.doc.lines() {
                doc.push_str(&format!("# {line}\n"));
            }
            doc.push_str(&format!("# flag --{}, environment {}\n", s.flag, s.env_var()));
            let mut one = toml::Table::new();
            if let Some(v) = table.get(s.key) {
                one.insert(s.key.to_string(), v.clone());
            }
            let text = toml::to_string_pretty(&one).expect("serializable");
            if s.key == "members" {
                tables.push_str(&format!("\n{doc}{text}"));
            } else {
                out.push_str(&format!("\n{doc}{text}"));
            }
        }
        out.push_str(&tables);
        out
    }

    /// Applies the layers: `file` (TOML text, if any), then the environment (`env` looks a
    /// variable up), then `flags` (setting key, value as typed), over the defaults.
    pub fn resolve(
        file: Option<&str>,
        env: &dyn Fn(&str) -> Option<String>,
        flags: &[(&str, String)],
    ) -> Result<NodeConfig, String> {
        let mut table: toml::Table = match file {
            Some(text) => toml::from_str(text).map_err(|e| e.to_string())?,
            None => toml::Table::new(),
        };
        for s in SETTINGS {
            if let Some(v) = env(&s.env_var()) {
                let value = s.parse(&v).map_err(|e| format!("{}: {e}", s.env_var()))?;
                table.insert(s.key.to_string(), value);
            }
        }
        for (key, v) in flags {
            let s = SETTINGS
                .iter()
                .find(|s| s.key == *key)
                .ok_or_else(|| format!("no setting {key}"))?;
            let value = s.parse(v).map_err(|e| format!("--{}: {e}", s.flag))?;
            table.insert(s.key.to_string(), value);
        }
        NodeConfig::deserialize(table).map_err(|e| e.to_string())
    }
}

/// One setting: its key in the file, its flag, and what it means.
#[derive(Debug, Clone, Copy)]
pub struct Setting {
    /// Key in the TOML file.
    pub key: &'static str,
    /// Command-line flag, without the dashes.
    pub flag: &'static str,
    /// What it means.
    pub doc: &'static str,
}

impl Setting {
    /// The environment variable: `CORELOG_` and the key in capitals.
    pub fn env_var(&self) -> String {
        format!("CORELOG_{}", self.key.to_ascii_uppercase())
    }

    /// Parses a flag's or a variable's text into the setting's TOML value (its type is the
    /// default's).
    pub fn parse(&self, text: &str) -> Result<toml::Value, String> {
        let text = text.trim();
        let default = toml::Table::try_from(NodeConfig::default()).expect("serializable");
        match (self.key, default.get(self.key)) {
            ("members", _) => {
                let mut v = Vec::new();
                for m in text.split(',').filter(|m| !m.trim().is_empty()) {
                    let parts: Vec<&str> = m.trim().split('@').collect();
                    let [id, peer, client] = parts[..] else {
                        return Err(format!("member {m:?} is not ID@PEER_ADDR@CLIENT_ADDR"));
                    };
                    let id: u64 = id.parse().map_err(|e| format!("member id {id:?}: {e}"))?;
                    let parse = |a: &str| {
                        a.parse::<SocketAddr>().map_err(|e| format!("address {a:?}: {e}"))
                    };
                    let p = PeerConfig { id, peer_addr: parse(peer)?, client_addr: parse(client)? };
                    v.push(toml::Value::try_from(p).map_err(|e| e.to_string())?);
                }
                Ok(toml::Value::Array(v))
            }
            (_, Some(toml::Value::Array(_))) => text
                .split(',')
                .filter(|x| !x.trim().is_empty())
                .map(|x| {
                    x.trim()
                        .parse::<i64>()
                        .map(toml::Value::Integer)
                        .map_err(|e| format!("{x:?}: {e}"))
                })
                .collect::<Result<Vec<_>, _>>()
                .map(toml::Value::Array),
            (_, Some(toml::Value::Integer(_))) => text
                .parse::<i64>()
                .map(toml::Value::Integer)
                .map_err(|e| format!("{text:?} is not an integer: {e}")),
            (_, Some(toml::Value::Boolean(_))) => text
                .parse::<bool>()
                .map(toml::Value::Boolean)
                .map_err(|_| format!("{text:?} is not true or false")),
            _ => Ok(toml::Value::String(text.to_string())),
        }
    }
}

/// Every setting of a node, in the order `corelog config default` prints them.
pub const SETTINGS: &[Setting] = &[
    Setting {
        key: "cluster_id",
        flag: "cluster-id",
        doc: "Identifies the cluster; a peer with another id is refused at the handshake.",
    },
    Setting { key: "node_id", flag: "node-id", doc: "This node's id (one of `members`)." },
    Setting {
        key: "data_dir",
        flag: "data-dir",
        doc: "Where the logs live: {data_dir}/group-{g}/.",
    },
    Setting {
        key: "voters",
        flag: "voters",
        doc: "The voters a group starts with (ids among members; empty: every member).\n\
              A node that joins later is in members but not here.",
    },
    Setting {
        key: "cores",
        flag: "cores",
        doc: "Executors (cores) per node; group g lives on core g % cores.",
    },
    Setting { key: "groups", flag: "groups", doc: "Consensus groups (logs)." },
    Setting {
        key: "pin",
        flag: "pin",
        doc: "Pin executors to cores 0..cores (off so that test clusters can share a machine).",
    },
    Setting { key: "tick_ms", flag: "tick-ms", doc: "Milliseconds per consensus tick." },
    Setting {
        key: "election_ticks",
        flag: "election-ticks",
        doc: "Election timeout in ticks (randomised up to twice this).",
    },
    Setting {
        key: "heartbeat_ticks",
        flag: "heartbeat-ticks",
        doc: "Heartbeat interval in ticks.",
    },
    Setting {
        key: "segment_bytes",
        flag: "segment-bytes",
        doc: "Segment size of each log, bytes.",
    },
    Setting {
        key: "spare_segments_max",
        flag: "spare-segments-max",
        doc: "Trimmed segments each log keeps for reuse instead of deleting them, at most (a \
              reused segment needs no zero-fill before use); a log keeps as many as it filled \
              between its recent trims.",
    },
    Setting {
        key: "spare_segments",
        flag: "spare-segments",
        doc: "Segments each log keeps prepared (zero-filled or recycled) ahead of need, so that \
              a segment roll does not wait for one to be written with zeros (default 1; 0 \
              prepares each when a roll needs it).",
    },
    Setting { key: "flush_bytes_max", flag: "flush-bytes-max", doc: "Most bytes per log flush." },
    Setting {
        key: "flushes_in_flight_max",
        flag: "flushes-in-flight-max",
        doc: "Log flushes in flight at once (pipelined under load).",
    },
    Setting {
        key: "flush_pipeline_bytes",
        flag: "flush-pipeline-bytes",
        doc: "Bytes gathered before a log flush is cut so that the next may start while it\n\
              is in flight (below this, a flush takes everything and the next waits).",
    },
    Setting {
        key: "sync",
        flag: "sync",
        doc: "How a log flush is made durable: \"fdatasync\" (write, then fdatasync), \"dsync\"\n\
              (O_DSYNC segments) or \"adaptive\" (a flush that goes out alone under light load\n\
              is one RWF_DSYNC write, the others write + fdatasync).",
    },
    Setting {
        key: "disk_profile",
        flag: "disk-profile",
        doc: "A profile from `corelog disk-check --profile FILE`; its flush_bytes_max,\n\
              flushes_in_flight_max and sync replace the settings above (unset: none).",
    },
    Setting {
        key: "metrics_addr",
        flag: "metrics-addr",
        doc: "Address of the metrics endpoint (Prometheus text at GET /metrics, stage\n\
              histograms at /stages, sampled appends at /trace); unset: off. 9100 is customary.",
    },
    Setting {
        key: "stage_timing",
        flag: "stage-timing",
        doc: "Time every stage of each client append (a few clock reads per batch).",
    },
    Setting {
        key: "trace_sample_every",
        flag: "trace-sample-every",
        doc: "Trace one append in this many, on every node (0: off; needs stage_timing).",
    },
    Setting {
        key: "trace_samples_max",
        flag: "trace-samples-max",
        doc: "Sampled appends kept per core for /trace.",
    },
    Setting {
        key: "message_bytes_max",
        flag: "message-bytes-max",
        doc: "Largest message a connection accepts (envelope body), bytes.",
    },
    Setting {
        key: "client_connections_max",
        flag: "client-connections-max",
        doc: "Most client connections per core.",
    },
    Setting {
        key: "client_queue_bytes_max",
        flag: "client-queue-bytes-max",
        doc: "Bytes of responses queued per client connection before it is closed.",
    },
    Setting {
        key: "read_timeout_secs",
        flag: "read-timeout-secs",
        doc: "Seconds a client connection may stay silent (nothing in flight) or stall\n\
              mid-message before it is closed.",
    },
    Setting {
        key: "peer_handshakes_max",
        flag: "peer-handshakes-max",
        doc: "Peer connections per core in their handshake at once; more are closed.",
    },
    Setting {
        key: "entry_cache_bytes_max",
        flag: "entry-cache-bytes-max",
        doc: "Committed entries a leader keeps in memory per group for lagging followers,\n\
              bytes (a group holds up to about twice this: entries and log frames); a\n\
              follower further behind is served from the log on disk. At most 16 GiB.",
    },
    Setting {
        key: "uncommitted_bytes_max",
        flag: "uncommitted-bytes-max",
        doc: "Bytes of client appends a group's leader takes in before they commit (an entry\n\
              counts at least 512). Beyond it a connection is not read until commits make\n\
              room (TCP backpressure), for up to admission_wait_ms; then it is answered Busy.",
    },
    Setting {
        key: "admission_wait_ms",
        flag: "admission-wait-ms",
        doc: "How long an append may wait for room under uncommitted_bytes_max (its\n\
              connection unread meanwhile) before it is answered Busy, milliseconds.",
    },
    Setting {
        key: "members",
        flag: "members",
        doc: "The address book: every node that is or may become a member, this one included.\n\
              As a flag or variable: ID@PEER_ADDR@CLIENT_ADDR,...",
    },
];

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn every_setting_is_listed_once() {
        // Optional settings are absent from a table of the defaults: set them.
        let all = NodeConfig {
            disk_profile: Some(PathBuf::from("disk.toml")),
            metrics_addr: Some(SocketAddr::from(([127, 0, 0, 1], 9100))),
            ..NodeConfig::default()
        };
        let table = toml::Table::try_from(all).unwrap();
        for key in table.keys() {
            assert_eq!(
                SETTINGS.iter().filter(|s| s.key == key).count(),
                1,
                "setting {key} must be listed once in SETTINGS"
            );
        }
        assert_eq!(SETTINGS.len(), table.len(), "every setting listed is a setting");
        // The printed defaults read back as the defaults.
        let text = NodeConfig::default_toml();
        let back: NodeConfig = toml::from_str(&text).unwrap();
        assert_eq!(back, NodeConfig::default());
        for s in SETTINGS {
            assert!(text.contains(&format!("--{}", s.flag)), "{} documented", s.key);
            assert!(text.contains(&s.env_var()), "{} documented", s.key);
        }
    }

    #[test]
    fn flag_beats_environment_beats_file_beats_default() {
        let file = "tick_ms = 7\nelection_ticks = 40\nheartbeat_ticks = 4\ncores = 2\n";
        let env: HashMap<String, String> = [
            ("CORELOG_ELECTION_TICKS", "50"),
            ("CORELOG_HEARTBEAT_TICKS", "5"),
            ("CORELOG_PIN", "true"),
            ("CORELOG_VOTERS", "1,2"),
            ("CORELOG_MEMBERS", "1@127.0.0.1:1000@127.0.0.1:2000,2@127.0.0.1:1001@127.0.0.1:2001"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let lookup = |k: &str| env.get(k).cloned();
        let flags = [("heartbeat_ticks", "6".to_string()), ("node_id", "2".to_string())];
        let c = NodeConfig::resolve(Some(file), &lookup, &flags).unwrap();
        assert_eq!(c.tick_ms, 7, "file over default");
        assert_eq!(c.cores, 2, "file over default");
        assert_eq!(c.election_ticks, 50, "environment over file");
        assert_eq!(c.heartbeat_ticks, 6, "flag over environment and file");
        assert!(c.pin, "environment over default");
        assert_eq!(c.node_id, 2, "flag over default");
        assert_eq!(c.voters, vec![1, 2]);
        assert_eq!(c.members.len(), 2);
        assert_eq!(c.members[1].client_addr, "127.0.0.1:2001".parse().unwrap());
        assert_eq!(c.segment_bytes, NodeConfig::default().segment_bytes, "default");
        c.validate().unwrap();
        // No file, no environment: the defaults.
        assert_eq!(NodeConfig::resolve(None, &|_| None, &[]).unwrap(), NodeConfig::default());
        // Bad values are named.
        let e = NodeConfig::resolve(None, &|k| (k == "CORELOG_TICK_MS").then(|| "x".into()), &[])
            .unwrap_err();
        assert!(e.contains("CORELOG_TICK_MS"), "{e}");
        let e = NodeConfig::resolve(None, &|_| None, &[("pin", "yes".into())]).unwrap_err();
        assert!(e.contains("--pin"), "{e}");
        let e = NodeConfig::resolve(None, &|_| None, &[("members", "1@x".into())]).unwrap_err();
        assert!(e.contains("--members"), "{e}");
        let c = NodeConfig { entry_cache_bytes_max: 1 << 40, ..NodeConfig::default() };
        let e = c.validate().unwrap_err();
        assert!(e.contains("entry_cache_bytes_max"), "{e}");
        let e = NodeConfig::resolve(Some("tick_mss = 1"), &|_| None, &[]).unwrap_err();
        assert!(e.contains("tick_mss"), "{e}");
    }
}
