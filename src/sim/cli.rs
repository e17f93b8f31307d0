//! `corelog sim`: run the simulator over many seeds from the command line.
use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Instant;

use crate::consensus::ProtocolBugs;

use super::{Sim, SimOptions, SimReport};

/// Arguments of `corelog sim`.
#[derive(Debug, Clone, clap::Args)]
pub struct SimArgs {
    /// Number of seeds to run (default 100, or 1 when `--seed` is given).
    #[arg(long)]
    pub seeds: Option<u64>,
    /// First seed (seeds run are `seed .. seed + seeds`). With `--seeds` omitted, runs just
    /// this one.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Steps of the fault phase per seed (a liveness phase follows).
    #[arg(long, default_value_t = 3_000)]
    pub steps: u64,
    /// Replicas: 3 or 5. Default: 3 for even seeds, 5 for odd seeds.
    #[arg(long)]
    pub replicas: Option<usize>,
    /// Switch on a deliberate protocol bug (to see the checker catch it): one of
    /// commit-old-term, vote-without-log-check, ack-before-durable, forget-vote,
    /// skip-session-dedupe, overlong-lease.
    #[arg(long = "bug")]
    pub bugs: Vec<String>,
    /// Print the trace of the last steps even when nothing fails.
    #[arg(long)]
    pub trace: bool,
    /// Keep going after a violation (count all failing seeds).
    #[arg(long)]
    pub keep_going: bool,
}

/// Parses bug names into switches.
pub fn parse_bugs(names: &[String]) -> Result<ProtocolBugs, String> {
    let mut b = ProtocolBugs::default();
    for n in names {
        match n.as_str() {
            "commit-old-term" => b.commit_old_term_by_counting = true,
            "vote-without-log-check" => b.vote_without_log_check = true,
            "ack-before-durable" => b.ack_before_durable = true,
            "forget-vote" => b.forget_vote_on_restart = true,
            "skip-session-dedupe" => b.skip_session_dedupe = true,
            "overlong-lease" => b.overlong_lease = true,
            other => return Err(format!("unknown bug {other:?}")),
        }
    }
    Ok(b)
}

/// Replica count used for `seed` when none is given.
pub fn default_replicas(seed: u64) -> usize {
    if seed.is_multiple_of(2) { 3 } else { 5 }
}

/// The one-line command that replays a seed.
pub fn replay_command(seed: u64, replicas: usize, steps: u64, bugs: &[String]) -> String {
    let mut s =
        format!("corelog sim --seed {seed} --seeds 1 --replicas {replicas} --steps {steps}");
    for b in bugs {
        s.push_str(&format!(" --bug {b}"));
    }
    s
}

/// Runs the simulator from the command line.
pub fn run(args: &SimArgs) -> ExitCode {
    let bugs = match parse_bugs(&args.bugs) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("corelog sim: {e}");
            return ExitCode::from(2);
        }
    };
    let first = args.seed.unwrap_or(1);
    let count = args.seeds.unwrap_or(if args.seed.is_some() { 1 } else { 100 });
    let started = Instant::now();
    let mut steps = 0u64;
    let mut faults: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut violations: BTreeMap<String, u64> = BTreeMap::new();
    let mut failed = Vec::new();
    let mut stats = (0u64, 0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
    let mut seeds_run = 0;
    let mut liveness_ms: Vec<u64> = Vec::new();
    for seed in first..first + count {
        let replicas = args.replicas.unwrap_or_else(|| default_replicas(seed));
        let mut o = SimOptions::new(seed, replicas, args.steps);
        o.bugs = bugs;
        o.trace = args.trace;
        let r = Sim::new(o.clone()).run();
        seeds_run += 1;
        steps += r.steps;
        for (k, v) in &r.faults {
            *faults.entry(k).or_insert(0) += v;
        }
        stats.0 += r.stats.elections;
        stats.1 += r.stats.acks;
        stats.2 += r.stats.reads;
        stats.3 += r.stats.lease_reads;
        stats.4 += r.snapshots_installed;
        stats.5 += r.fetches;
        stats.6 += r.followed_trims;
        if r.violations.is_empty() {
            liveness_ms.push(r.liveness_us / 1000);
        }
        if args.trace && r.violations.is_empty() {
            for l in &r.trace {
                println!("{l}");
            }
        }
        if !r.violations.is_empty() {
            for v in &r.violations {
                *violations.entry(v.kind.to_string()).or_insert(0) += 1;
            }
            report_failure(&r, replicas, args);
            failed.push(seed);
            if !args.keep_going {
                break;
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "seeds run: {seeds_run} (from {first}); steps: {steps}; {:.0} steps/s; {:.1} s",
        steps as f64 / secs.max(1e-9),
        secs
    );
    println!(
        "leaders elected: {}; proposals acknowledged: {}; reads: {} ({} lease); snapshots installed: {}; disk fetches: {}; trims followed: {}",
        stats.0, stats.1, stats.2, stats.3, stats.4, stats.5, stats.6
    );
    liveness_ms.sort_unstable();
    if let Some(&max) = liveness_ms.last() {
        let pct = |p: usize| liveness_ms[(liveness_ms.len() - 1) * p / 100];
        println!(
            "after faults stop, leader and client progress within (simulated ms): p50 {} p99 {} max {}",
            pct(50),
            pct(99),
            max
        );
    }
    let f: Vec<String> = faults.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!("faults injected: {}", f.join(" "));
    if violations.is_empty() {
        println!("violations: none");
        ExitCode::SUCCESS
    } else {
        let v: Vec<String> = violations.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!("violations: {} (failing seeds: {failed:?})", v.join(" "));
        ExitCode::FAILURE
    }
}

fn report_failure(r: &SimReport, replicas: usize, args: &SimArgs) {
    println!("=== VIOLATION at seed {} ({} replicas) ===", r.seed, replicas);
    for v in &r.violations {
        println!("step {}: {}: {}", v.step, v.kind, v.detail);
    }
    println!("replay: {}", replay_command(r.seed, replicas, args.steps, &args.bugs));
    // Replay with tracing on (same seed, same execution) to show how it got there.
    let mut o = SimOptions::new(r.seed, replicas, args.steps);
    o.bugs = parse_bugs(&args.bugs).unwrap_or_default();
    o.trace = true;
    let t = Sim::new(o).run();
    println!("--- last {} steps before the violation ---", t.trace.len());
    for l in &t.trace {
        println!("{l}");
    }
    println!("--- end of trace ---");
}
