//! The checker has teeth: each classic bug, switched on, is found within a bounded number of
//! seeds (and the same seeds pass with the bug off, see `tests/sim.rs`). Counting an old
//! term's replicas (Figure 8) is too rare for random search; `tests/scenarios/figure8.txt`
//! builds the history that exposes it.

use corelog::consensus::ProtocolBugs;
use corelog::sim::{ViolationKind, run_seed};

/// Runs seeds until one violates; returns (seeds tried, kind).
fn hunt(bugs: ProtocolBugs, max_seeds: u64) -> Option<(u64, ViolationKind)> {
    for seed in 1..=max_seeds {
        let replicas = if seed % 2 == 0 { 3 } else { 5 };
        let r = run_seed(seed, replicas, 3_000, bugs);
        if let Some(v) = r.violations.first() {
            eprintln!("found after {seed} seeds: step {}: {}: {}", v.step, v.kind, v.detail);
            return Some((seed, v.kind));
        }
    }
    None
}

#[test]
fn vote_without_log_check_is_caught() {
    let bugs = ProtocolBugs { vote_without_log_check: true, ..ProtocolBugs::default() };
    let (_, kind) = hunt(bugs, 200).expect("bug not found");
    assert!(matches!(
        kind,
        ViolationKind::LeaderCompleteness
            | ViolationKind::StateMachineSafety
            | ViolationKind::Durability
            | ViolationKind::LogMatching
    ));
}

#[test]
fn ack_before_durable_is_caught() {
    let bugs = ProtocolBugs { ack_before_durable: true, ..ProtocolBugs::default() };
    hunt(bugs, 10_000).expect("bug not found");
}

#[test]
fn forget_vote_on_restart_is_caught() {
    let bugs = ProtocolBugs { forget_vote_on_restart: true, ..ProtocolBugs::default() };
    let (_, kind) = hunt(bugs, 10_000).expect("bug not found");
    assert!(matches!(
        kind,
        ViolationKind::ElectionSafety
            | ViolationKind::LogMatching
            | ViolationKind::StateMachineSafety
    ));
}

#[test]
fn skipping_the_session_lookup_is_caught() {
    let bugs = ProtocolBugs { skip_session_dedupe: true, ..ProtocolBugs::default() };
    let (_, kind) = hunt(bugs, 500).expect("bug not found");
    assert_eq!(kind, ViolationKind::ExactlyOnce);
}

#[test]
fn an_overlong_lease_is_caught() {
    let bugs = ProtocolBugs { overlong_lease: true, ..ProtocolBugs::default() };
    let (_, kind) = hunt(bugs, 10_000).expect("bug not found");
    assert!(matches!(kind, ViolationKind::LeaseOverlap | ViolationKind::StaleRead));
}
