//! Scenario scripts for the known edge cases: `tests/scenarios/*.txt`.
//!
//! A script is a list of steps run against the simulator (no random faults, no random
//! clients; elections only when a script says `campaign`, unless it sets a short
//! `election_tick`). Words:
//!
//! ```text
//! variants correct commit-old-term     run once per variant; "correct" has no bug switched on
//! replicas 5 | spares 1 | seed 7       cluster shape (before the first step)
//! set election_tick=1000 pre_vote=false ...   protocol settings (before the first step)
//! campaign 1                           node 1 starts an election now
//! propose 1 data                       node 1 proposes `data` (must accept)
//! propose-rejected 2                   node 2 must refuse a proposal
//! wait leader 1 [within 500]           run until node 1 leads (default within 1000 ms)
//! wait leader in 2 3                   run until one of them leads the highest term
//! wait commit 1 >= 3                   run until node 1's commit index is >= 3
//! wait commit all >= 3                 ... on every live node
//! run 50                               run 50 ms of simulated time
//! isolate 1 2 | cut 1 2 | heal         cut {1,2} off both ways | cut 1 -> 2 | heal all
//! crash 1 | restart 1
//! add-learner 1 4 | promote 1 4 | remove 1 3 | priority 1 3 5 | transfer 1 2
//!                                      membership and leadership changes at leader 1
//! expect role 1 Follower | expect not-leading 1 | expect leader 2 | expect commit 2 >= 3 | expect term 1 >= 3
//! expect entry 2 3 term 1              node 2 has an entry at index 3 of term 1
//! expect lease 1 ok|none               node 1 may (not) serve a lease read now
//! expect voter 4 | expect learner 4 | expect not-member 3    (at the current leader)
//! expect violation state-machine-safety   this variant must end in that violation
//! [commit-old-term] <step>             a step only for one variant
//! L                                    in place of a node id: the current leader
//! ```

use std::path::Path;

use corelog::consensus::{ConfChange, Config, Role};
use corelog::sim::cli::parse_bugs;
use corelog::sim::{Sim, SimOptions};

const MS: u64 = 1_000;

struct Script {
    name: String,
    lines: Vec<(usize, String)>,
}

fn parse_config(cfg: &mut Config, words: &[&str]) {
    for w in words {
        let (k, v) = w.split_once('=').unwrap_or_else(|| panic!("bad setting {w}"));
        let b = || v.parse::<bool>().unwrap_or_else(|_| panic!("bad bool {w}"));
        let n = || v.parse::<u64>().unwrap_or_else(|_| panic!("bad number {w}"));
        match k {
            "election_tick" => cfg.election_tick = n() as u32,
            "heartbeat_tick" => cfg.heartbeat_tick = n() as u32,
            "pre_vote" => cfg.pre_vote = b(),
            "check_quorum" => cfg.check_quorum = b(),
            "lease_read" => cfg.lease_read = b(),
            "max_batch_bytes" => cfg.max_batch_bytes = n(),
            "max_inflight_msgs" => cfg.max_inflight_msgs = n() as usize,
            "transfer_to_higher_priority" => cfg.transfer_to_higher_priority = b(),
            other => panic!("unknown setting {other}"),
        }
    }
}

fn id(w: &str) -> u64 {
    w.parse().unwrap_or_else(|_| panic!("bad node id {w}"))
}

fn within(words: &[&str]) -> u64 {
    match words.iter().position(|w| *w == "within") {
        Some(p) => words[p + 1].parse::<u64>().expect("within N") * MS,
        None => 1_000 * MS,
    }
}

fn run_variant(script: &Script, variant: &str) -> Result<(), String> {
    let mut replicas = 3;
    let mut spares = 0;
    let mut seed = 1;
    let mut cfg = Config { election_tick: 1_000, ..Config::default() };
    let mut expected_violation: Option<String> = None;
    let mut steps: Vec<(usize, Vec<String>)> = Vec::new();
    for (no, line) in &script.lines {
        let mut line = line.as_str();
        if let Some(rest) = line.strip_prefix('[') {
            let (v, rest) = rest.split_once(']').expect("[variant] line");
            if v != variant {
                continue;
            }
            line = rest.trim();
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["variants", ..] => {}
            ["replicas", n] => replicas = n.parse().expect("replicas"),
            ["spares", n] => spares = n.parse().expect("spares"),
            ["seed", n] => seed = n.parse().expect("seed"),
            ["set", rest @ ..] => parse_config(&mut cfg, rest),
            ["expect", "violation", kind] => expected_violation = Some(kind.to_string()),
            _ => steps.push((*no, words.iter().map(|s| s.to_string()).collect())),
        }
    }
    let mut o = SimOptions::new(seed, replicas, 0);
    o.random_faults = false;
    o.clients = 0;
    o.spares = spares;
    o.config = Some(cfg);
    if variant != "correct" {
        o.bugs = parse_bugs(&[variant.to_string()]).map_err(|e| e.to_string())?;
    }
    o.trace = true;
    let mut sim = Sim::new(o);
    let mut failure = None;
    for (no, words) in &steps {
        // `L` stands for the current leader.
        let leader = sim.leader().map_or("0".to_string(), |l| l.to_string());
        let w: Vec<&str> =
            words.iter().map(|x| if x == "L" { leader.as_str() } else { x.as_str() }).collect();
        if let Err(e) = run_step(&mut sim, &w) {
            failure = Some(format!("line {no} `{}`: {e}", words.join(" ")));
            break;
        }
        if !sim.checker.violations.is_empty() {
            break;
        }
    }
    let found = sim.checker.violations.first().cloned();
    let trace = || sim.trace()[sim.trace().len().saturating_sub(60)..].join("\n");
    match (&expected_violation, &found) {
        (None, None) => failure.map_or(Ok(()), |f| Err(format!("{f}\n{}", trace()))),
        (Some(k), Some(v)) if v.kind.to_string() == *k => Ok(()),
        (Some(k), None) => Err(format!(
            "expected a {k} violation, none found ({})\n{}",
            failure.unwrap_or_default(),
            trace()
        )),
        (_, Some(v)) => Err(format!(
            "unexpected violation at step {}: {}: {}\n{}",
            v.step,
            v.kind,
            v.detail,
            trace()
        )),
    }
}

fn cmp_ge(w: &[&str]) -> u64 {
    assert_eq!(w[0], ">=", "expected `>= N`");
    w[1].parse().expect("number")
}

fn run_step(sim: &mut Sim, w: &[&str]) -> Result<(), String> {
    match w {
        ["campaign", n] => {
            let n = id(n);
            sim.node_mut(n).ok_or("node is down")?.campaign();
            sim.flush_node(n);
        }
        ["propose", n, data] => {
            let n = id(n);
            let r = sim.node_mut(n).ok_or("node is down")?.propose(
                0,
                0,
                bytes::Bytes::copy_from_slice(data.as_bytes()),
            );
            sim.flush_node(n);
            r.map_err(|e| format!("proposal refused: {e}"))?;
        }
        ["propose-rejected", n] => {
            let n = id(n);
            let r = sim.node_mut(n).ok_or("node is down")?.propose(
                0,
                0,
                bytes::Bytes::from_static(b"x"),
            );
            sim.flush_node(n);
            if r.is_ok() {
                return Err("proposal accepted".into());
            }
        }
        ["wait", "leader", "in", rest @ ..] => {
            let ids: Vec<u64> =
                rest.iter().take_while(|w| **w != "within").map(|w| id(w)).collect();
            let ok = sim.run_until(within(w), |s| s.leader().is_some_and(|l| ids.contains(&l)));
            if !ok {
                return Err(format!("no leader among {ids:?} (leader: {:?})", sim.leader()));
            }
        }
        ["wait", "leader", n, ..] => {
            let n = id(n);
            let ok = sim.run_until(within(w), |s| s.leader() == Some(n));
            if !ok {
                return Err(format!("leader is {:?}", sim.leader()));
            }
        }
        ["wait", "commit", "all", rest @ ..] => {
            let c = cmp_ge(rest);
            let ok = sim.run_until(within(w), |s| {
                (1..=s.node_count() as u64)
                    .filter_map(|i| s.node(i))
                    .filter(|n| n.membership().members().any(|m| m == n.id()))
                    .all(|n| n.commit_index() >= c)
            });
            if !ok {
                return Err("not every member committed".into());
            }
        }
        ["wait", "commit", n, rest @ ..] => {
            let (n, c) = (id(n), cmp_ge(rest));
            let ok = sim.run_until(within(w), |s| s.node(n).is_some_and(|x| x.commit_index() >= c));
            if !ok {
                return Err(format!("commit is {:?}", sim.node(n).map(|x| x.commit_index())));
            }
        }
        ["run", ms] => sim.run_for(ms.parse::<u64>().map_err(|e| e.to_string())? * MS),
        ["isolate", rest @ ..] => {
            let ids: Vec<u64> = rest.iter().map(|w| id(w)).collect();
            sim.isolate(&ids);
        }
        ["cut", a, b] => sim.set_link(id(a), id(b), false),
        ["heal"] => sim.heal_all(),
        ["crash", n] => sim.crash_node(id(n)),
        ["restart", n] => sim.restart_node(id(n)),
        [op @ ("add-learner" | "promote" | "remove" | "priority"), l, t, rest @ ..] => {
            let (l, t) = (id(l), id(t));
            let change = match *op {
                "add-learner" => ConfChange::AddLearner { id: t },
                "promote" => ConfChange::Promote { id: t, priority: 1 },
                "remove" => ConfChange::Remove { id: t },
                _ => ConfChange::SetPriority {
                    id: t,
                    priority: rest[0].parse().map_err(|_| "priority")?,
                },
            };
            let r = sim.node_mut(l).ok_or("node is down")?.change_membership(change);
            sim.flush_node(l);
            r.map_err(|e| format!("change refused: {e}"))?;
        }
        ["transfer", l, t] => {
            let l = id(l);
            let r = sim.node_mut(l).ok_or("node is down")?.transfer_leader(id(t));
            sim.flush_node(l);
            r.map_err(|e| format!("transfer refused: {e}"))?;
        }
        ["expect", "role", n, role] => {
            let r = sim.node(id(n)).ok_or("node is down")?.role();
            let want = match *role {
                "Leader" => Role::Leader,
                "Follower" => Role::Follower,
                "Candidate" => Role::Candidate,
                "PreCandidate" => Role::PreCandidate,
                _ => return Err(format!("unknown role {role}")),
            };
            if r != want {
                return Err(format!("role is {r:?}"));
            }
        }
        ["expect", "not-leading", n] => {
            if sim.node(id(n)).is_some_and(|x| x.role() == Role::Leader) {
                return Err("still leading".into());
            }
        }
        ["expect", "leader", n] => {
            if sim.leader() != Some(id(n)) {
                return Err(format!("leader is {:?}", sim.leader()));
            }
        }
        ["expect", "commit", n, rest @ ..] => {
            let c = sim.node(id(n)).ok_or("node is down")?.commit_index();
            if c < cmp_ge(rest) {
                return Err(format!("commit is {c}"));
            }
        }
        ["expect", "term", n, rest @ ..] => {
            let t = sim.node(id(n)).ok_or("node is down")?.term();
            if t < cmp_ge(rest) {
                return Err(format!("term is {t}"));
            }
        }
        ["expect", "entry", n, i, "term", t] => {
            let got =
                sim.node(id(n)).ok_or("node is down")?.log_term(i.parse().map_err(|_| "index")?);
            if got != Some(t.parse().map_err(|_| "term")?) {
                return Err(format!("entry term is {got:?}"));
            }
        }
        ["expect", "lease", n, want] => {
            let ok = sim.lease_read(id(n)).is_ok();
            match (*want, ok) {
                ("ok", true) | ("none", false) => {}
                _ => return Err(format!("lease read ok = {ok}")),
            }
        }
        ["expect", what @ ("voter" | "learner" | "not-member"), n] => {
            let l = sim.leader().ok_or("no leader")?;
            let m = sim.node(l).expect("leader is up").membership().clone();
            let n = id(n);
            let ok = match *what {
                "voter" => m.is_voter(n),
                "learner" => m.is_learner(n),
                _ => !m.members().any(|x| x == n),
            };
            if !ok {
                return Err(format!("membership at leader {l} is {m:?}"));
            }
        }
        _ => return Err("unknown step".into()),
    }
    Ok(())
}

fn load(path: &Path) -> Script {
    let text = std::fs::read_to_string(path).expect("read scenario");
    Script {
        name: path.file_name().unwrap().to_string_lossy().into_owned(),
        lines: text
            .lines()
            .enumerate()
            .map(|(i, l)| (i + 1, l.split('#').next().unwrap().trim().to_string()))
            .filter(|(_, l)| !l.is_empty())
            .collect(),
    }
}

#[test]
fn scenarios() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scenarios");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .expect("scenario dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "no scenarios");
    let mut failures = Vec::new();
    for p in paths {
        let s = load(&p);
        let variants: Vec<String> = s
            .lines
            .iter()
            .find_map(|(_, l)| l.strip_prefix("variants "))
            .map_or(vec!["correct".to_string()], |v| {
                v.split_whitespace().map(str::to_string).collect()
            });
        for v in variants {
            match run_variant(&s, &v) {
                Ok(()) => eprintln!("scenario {} [{v}]: ok", s.name),
                Err(e) => failures.push(format!("scenario {} [{v}]: {e}", s.name)),
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
