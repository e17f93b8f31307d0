//! A small key-value store that uses corelog as its write-ahead log, as a database would.
//!
//! - A write (`put`) goes to corelog first; it is applied to the in-memory map only once it is
//!   committed, in log order, by reading the log back (so every replica of this store, fed by
//!   the same log, reaches the same state).
//! - A checkpoint writes the map and the index it covers to a file (temporary file, fsync,
//!   rename, fsync of the directory), then trims corelog's log up to that index.
//! - On start, the state is the last checkpoint plus the log's entries after it.
//!
//! ```sh
//! corelog cluster --dir /var/tmp/kv-demo &
//! cargo run --release --example kv -- --state /var/tmp/kv-state put colour blue
//! cargo run --release --example kv -- --state /var/tmp/kv-state get colour
//! cargo run --release --example kv -- --state /var/tmp/kv-state load --writes 1000 --keys 20
//! cargo run --release --example kv -- --state /var/tmp/kv-state dump
//! ```
//!
//! `load` prints `ACK key value index` for every acknowledged write (tests/kv_example.rs kills
//! a corelog node under it and checks that `dump` then holds every acknowledged write).

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};
use corelog::client::{Client, ClientConfig, ClientError};
use corelog::frame::EntryKind;

#[derive(Debug, Parser)]
struct Args {
    /// Client addresses of the corelog nodes, comma separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "127.0.0.1:7110,127.0.0.1:7130,127.0.0.1:7150"
    )]
    nodes: Vec<SocketAddr>,
    /// The corelog group used as this store's log.
    #[arg(long, default_value_t = 0)]
    group: u64,
    /// Where the store keeps its checkpoint.
    #[arg(long)]
    state: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Set a key.
    Put { key: String, value: String },
    /// Print a key's value.
    Get { key: String },
    /// Write a checkpoint and trim the log.
    Checkpoint,
    /// Many writes (`key-(i % keys)` = `v-i`), a checkpoint every `checkpoint_every`.
    Load {
        #[arg(long, default_value_t = 1000)]
        writes: u64,
        #[arg(long, default_value_t = 20)]
        keys: u64,
        #[arg(long, default_value_t = 200)]
        checkpoint_every: u64,
        /// Number of the first write (values are `v-<number>`).
        #[arg(long, default_value_t = 0)]
        first: u64,
    },
    /// Print every key and value, and the index the state covers.
    Dump,
}

/// The store: the map, the log index it has applied, and the corelog client.
struct Kv {
    client: Client,
    group: u64,
    dir: PathBuf,
    map: BTreeMap<String, String>,
    applied: u64,
}

const CHECKPOINT: &str = "checkpoint.json";

impl Kv {
    /// Opens the store: the last checkpoint, then the log's committed entries after it.
    fn open(nodes: Vec<SocketAddr>, group: u64, dir: &Path) -> Result<Kv, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let (map, applied) = match std::fs::read(dir.join(CHECKPOINT)) {
            Ok(bytes) => {
                let v: serde_json::Value =
                    serde_json::from_slice(&bytes).map_err(|e| format!("checkpoint: {e}"))?;
                let map = serde_json::from_value(v["map"].clone()).map_err(|e| e.to_string())?;
                (map, v["applied"].as_u64().ok_or("checkpoint without `applied`")?)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (BTreeMap::new(), 0),
            Err(e) => return Err(format!("checkpoint: {e}")),
        };
        let client = Client::new(ClientConfig::new(nodes)).map_err(|e| e.to_string())?;
        let mut kv = Kv { client, group, dir: dir.to_path_buf(), map, applied };
        // A barrier (a record that is not a write): once it is committed and applied, the
        // state holds every write acknowledged before this store opened. (A commit index
        // asked of one node could be stale: a node that just restarted knows less.)
        let barrier = kv.client.append(group, b"barrier").map_err(|e| e.to_string())?;
        kv.catch_up(barrier.index).map_err(|e| e.to_string())?;
        Ok(kv)
    }

    /// Applies the committed entries up to `index`, in log order.
    fn catch_up(&mut self, index: u64) -> Result<(), ClientError> {
        while self.applied < index {
            let (_, entries) = self.client.read(self.group, self.applied + 1, index, 1 << 20)?;
            if entries.is_empty() {
                std::thread::sleep(std::time::Duration::from_millis(5));
                continue;
            }
            for e in entries {
                if e.index != self.applied + 1 {
                    continue;
                }
                if e.kind == EntryKind::Normal
                    && let Some((k, v)) = decode(&e.data)
                {
                    self.map.insert(k, v);
                }
                self.applied = e.index;
            }
        }
        Ok(())
    }

    /// Writes `key = value` through the log; returns its index once applied.
    fn put(&mut self, key: &str, value: &str) -> Result<u64, ClientError> {
        let mut rec = Vec::with_capacity(key.len() + value.len() + 1);
        rec.extend_from_slice(key.as_bytes());
        rec.push(0);
        rec.extend_from_slice(value.as_bytes());
        let p = self.client.append(self.group, &rec)?;
        self.catch_up(p.index)?;
        Ok(p.index)
    }

    /// Saves the state durably, then lets corelog drop the log it covers.
    fn checkpoint(&mut self) -> Result<(), String> {
        let body = serde_json::json!({"applied": self.applied, "map": self.map}).to_string();
        let tmp = self.dir.join(format!("{CHECKPOINT}.tmp"));
        let mut f = std::fs::File::create(&tmp).map_err(|e| e.to_string())?;
        f.write_all(body.as_bytes()).and_then(|()| f.sync_all()).map_err(|e| e.to_string())?;
        std::fs::rename(&tmp, self.dir.join(CHECKPOINT)).map_err(|e| e.to_string())?;
        std::fs::File::open(&self.dir).and_then(|d| d.sync_all()).map_err(|e| e.to_string())?;
        self.client.trim(self.group, self.applied).map_err(|e| e.to_string())
    }
}

fn decode(rec: &[u8]) -> Option<(String, String)> {
    let z = rec.iter().position(|&b| b == 0)?;
    Some((
        String::from_utf8(rec[..z].to_vec()).ok()?,
        String::from_utf8(rec[z + 1..].to_vec()).ok()?,
    ))
}

fn main() -> Result<(), String> {
    let args = Args::parse();
    let mut kv = Kv::open(args.nodes, args.group, &args.state)?;
    let mut out = std::io::stdout().lock();
    match args.cmd {
        Cmd::Put { key, value } => {
            let i = kv.put(&key, &value).map_err(|e| e.to_string())?;
            writeln!(out, "ok at index {i}").map_err(|e| e.to_string())?;
        }
        Cmd::Get { key } => match kv.map.get(&key) {
            Some(v) => writeln!(out, "{v}").map_err(|e| e.to_string())?,
            None => return Err(format!("no key {key}")),
        },
        Cmd::Checkpoint => kv.checkpoint()?,
        Cmd::Load { writes, keys, checkpoint_every, first } => {
            for i in first..first + writes {
                let (k, v) = (format!("key-{}", i % keys.max(1)), format!("v-{i}"));
                let index = kv.put(&k, &v).map_err(|e| e.to_string())?;
                writeln!(out, "ACK {k} {v} {index}")
                    .and_then(|()| out.flush())
                    .map_err(|e| e.to_string())?;
                if checkpoint_every > 0 && (i + 1 - first) % checkpoint_every == 0 {
                    kv.checkpoint()?;
                }
            }
        }
        Cmd::Dump => {
            writeln!(out, "applied {}", kv.applied).map_err(|e| e.to_string())?;
            for (k, v) in &kv.map {
                writeln!(out, "{k} {v}").map_err(|e| e.to_string())?;
            }
        }
    }
    Ok(())
}
