//! The key-value example (`examples/kv.rs`) on a real 3-node corelog cluster: while it writes,
//! the corelog leader is killed with SIGKILL; the store keeps writing (its client retries with
//! the same session and sequence), checkpoints trim the log, and a fresh store process,
//! rebuilt from its last checkpoint plus the log's tail, holds every acknowledged write. The
//! store process itself is also killed with SIGKILL half way and restarted from its state.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::ProcCluster;

fn kv_bin() -> PathBuf {
    // target/<profile>/deps/kv_example-<hash> -> target/<profile>/examples/kv
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("examples").join("kv");
    assert!(bin.exists(), "{} is not built (cargo test builds the examples)", bin.display());
    bin
}

fn kv(c: &ProcCluster, state: &std::path::Path) -> Command {
    let nodes: Vec<String> = c.addrs(&[1, 2, 3]).iter().map(|a| a.to_string()).collect();
    let mut cmd = Command::new(kv_bin());
    cmd.arg("--nodes").arg(nodes.join(",")).arg("--state").arg(state);
    cmd
}

/// Runs a load of `writes` writes; with `kill_at`, calls it after that many acknowledgements
/// (and keeps reading). Returns the acknowledged (key, value, index) and whether it exited well.
fn load(
    c: &mut ProcCluster,
    state: &std::path::Path,
    writes: u64,
    first: u64,
    mut at: impl FnMut(&mut ProcCluster, usize, &mut std::process::Child),
) -> (Vec<(String, String, u64)>, bool) {
    let mut child = kv(c, state)
        .args(["load", "--writes", &writes.to_string(), "--keys", "15", "--checkpoint-every", "70"])
        .args(["--first", &first.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    let mut acked = Vec::new();
    for line in out.lines() {
        let Ok(line) = line else { break };
        let parts: Vec<&str> = line.split(' ').collect();
        if let ["ACK", k, v, i] = parts[..] {
            acked.push((k.to_string(), v.to_string(), i.parse().unwrap()));
            at(c, acked.len(), &mut child);
        }
    }
    let ok = child.wait().unwrap().success();
    (acked, ok)
}

#[test]
fn the_kv_store_loses_no_acknowledged_write_when_a_node_is_killed() {
    let mut c = ProcCluster::new(3, 3, |_| {});
    for id in 1..=3 {
        c.spawn(id);
    }
    let state = c.dir.path().join("kv-state");
    let leader = c.leader(&[1, 2, 3], Duration::from_secs(10));
    // 1. Writes; the corelog leader is SIGKILLed after 100 acknowledgements.
    let (mut acked, ok) = load(&mut c, &state, 300, 0, |c, n, _| {
        if n == 100 {
            c.kill9(leader);
        }
    });
    assert!(ok, "the store failed while a corelog node was down");
    assert_eq!(acked.len(), 300);
    c.spawn(leader);
    // 2. The store itself is SIGKILLed half way through a second load, then restarted.
    let (more, _) = load(&mut c, &state, 200, 300, |_, n, child| {
        if n == 100 {
            let _ = child.kill();
        }
    });
    assert!(more.len() >= 100);
    acked.extend(more);
    // 3. A fresh store: last checkpoint + log tail.
    let out = kv(&c, &state).arg("dump").output().unwrap();
    assert!(out.status.success(), "dump: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let dumped: HashMap<&str, &str> = text
        .lines()
        .filter(|l| !l.starts_with("applied"))
        .filter_map(|l| l.split_once(' '))
        .collect();
    // Every acknowledged write is there, or was overwritten by a later write to its key (the
    // last write of each key may be unacknowledged when the store was killed: then the value
    // is that one or the last acknowledged one).
    let mut last_acked: HashMap<&str, (u64, &str)> = HashMap::new();
    for (k, v, i) in &acked {
        let e = last_acked.entry(k).or_insert((*i, v));
        if *i > e.0 {
            *e = (*i, v);
        }
    }
    for (k, (i, v)) in &last_acked {
        let got = dumped.get(k).unwrap_or_else(|| panic!("key {k} lost\n{text}"));
        let got_n: u64 = got.trim_start_matches("v-").parse().unwrap();
        let want_n: u64 = v.trim_start_matches("v-").parse().unwrap();
        assert!(got_n >= want_n, "key {k}: acknowledged {v} at {i}, the store has {got}");
    }
    // The state covers every acknowledged index, and starts from a checkpoint.
    let applied: u64 = text.lines().next().unwrap().trim_start_matches("applied ").parse().unwrap();
    assert!(applied >= acked.iter().map(|a| a.2).max().unwrap(), "{text}");
    let cp: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state.join("checkpoint.json")).unwrap()).unwrap();
    assert!(cp["applied"].as_u64().unwrap() > 0, "a checkpoint was written: {cp}");
}
