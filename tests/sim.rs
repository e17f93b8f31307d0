//! The simulator over many seeds: the CI gate for the consensus core.
//!
//! Default: 10,000 seeds (5,000 with 3 replicas, 5,000 with 5), 3,000 fault steps each plus
//! the liveness phase: about 32 million steps, a few seconds in release. Soak: `CORELOG_SIM_SEEDS=100000` (seeds per
//! replica count), `CORELOG_SIM_STEPS`, `CORELOG_SIM_FIRST_SEED`.

use std::time::Instant;

use corelog::consensus::ProtocolBugs;
use corelog::sim::cli::replay_command;
use corelog::sim::run_seed;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn run_many(replicas: usize) {
    let seeds = env_u64("CORELOG_SIM_SEEDS", 5_000);
    let steps = env_u64("CORELOG_SIM_STEPS", 3_000);
    let first = env_u64("CORELOG_SIM_FIRST_SEED", 1);
    let started = Instant::now();
    let mut total_steps = 0;
    let mut acks = 0;
    let mut elections = 0;
    let mut followed_trims = 0;
    for seed in first..first + seeds {
        let r = run_seed(seed, replicas, steps, ProtocolBugs::default());
        total_steps += r.steps;
        acks += r.stats.acks;
        elections += r.stats.elections;
        followed_trims += r.followed_trims;
        if let Some(v) = r.violations.first() {
            panic!(
                "seed {seed} ({replicas} replicas): step {}: {}: {}\nreplay: {}",
                v.step,
                v.kind,
                v.detail,
                replay_command(seed, replicas, steps, &[])
            );
        }
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "{replicas} replicas: {seeds} seeds, {total_steps} steps, {:.0} steps/s, {elections} \
         elections, {acks} acknowledged proposals, {followed_trims} trims followed, {secs:.1} s",
        total_steps as f64 / secs
    );
    assert!(total_steps >= seeds * steps, "runs stopped early");
    assert!(acks > seeds * 10, "clients made too little progress: {acks}");
    // Followers must have followed their leaders' trims (and the checker watched them do it).
    assert!(followed_trims > seeds / 2, "too few trims followed: {followed_trims}");
}

#[test]
fn three_replicas_many_seeds() {
    run_many(3);
}

#[test]
fn five_replicas_many_seeds() {
    run_many(5);
}
