//! Configuration of one consensus group member, with defaults and units in the names.
//!
//! Time is counted in ticks: the runtime calls `Node::tick` at a fixed period of its choosing
//! (the simulator uses 10 ms, the design expects 10-100 ms). Every timeout below is a number
//! of those ticks; nothing in the core knows how long a tick is.

use super::types::ENTRY_OVERHEAD_BYTES;

/// Settings of one member. `Config::default()` is a sound production setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Ticks without hearing from a leader before a follower campaigns. The actual timeout is
    /// drawn uniformly from `[election_tick, 2 * election_tick)`. Also the CheckQuorum period.
    /// Default 10.
    pub election_tick: u32,
    /// Ticks between heartbeats from the leader. Must be below `election_tick`. Default 1.
    pub heartbeat_tick: u32,
    /// Maximum AppendEntries messages in flight (sent, not yet acknowledged as durable) to one
    /// follower. Default 64.
    pub max_inflight_msgs: usize,
    /// Maximum entry bytes in flight to one follower. Default 8 MiB.
    pub max_inflight_bytes: u64,
    /// Maximum bytes of entries the leader holds appended but uncommitted; a proposal beyond
    /// it fails with `Busy`. Default 32 MiB.
    pub max_uncommitted_bytes: u64,
    /// Maximum proposals appended but not yet committed at the leader. Default 65,536.
    pub max_pending_proposals: usize,
    /// Maximum ReadIndex requests waiting for their quorum round. Default 4,096.
    pub max_pending_reads: usize,
    /// Maximum entry bytes in one AppendEntries message (at least one entry is always sent).
    /// Default 1 MiB.
    pub max_batch_bytes: u64,
    /// Maximum size of one proposal's payload. Default 4 MiB.
    pub max_entry_bytes: u64,
    /// Committed entries kept in memory beyond which the oldest are evicted (uncommitted
    /// entries are always kept; evicted ones are fetched from disk when a follower needs
    /// them). Default 16 MiB.
    pub max_cache_bytes: u64,
    /// PreVote: a node first asks whether it could win before it bumps its term, so a
    /// partitioned node cannot disrupt a healthy leader when it comes back. Default on.
    pub pre_vote: bool,
    /// CheckQuorum: a leader that has not heard from a majority of voters within
    /// `election_tick` steps down, and a follower that has heard from a leader within
    /// `election_tick` ignores vote requests. Default on. Required by `lease_read`.
    pub check_quorum: bool,
    /// Leader lease reads (no round trip). Valid only while CheckQuorum holds. Default on.
    pub lease_read: bool,
    /// How much shorter the leader's lease is than `election_tick`, to absorb tick-rate skew
    /// between nodes. With skew `s` (a fraction) the lease is safe when
    /// `(election_tick - margin) * (1 + s) <= (election_tick - 1) * (1 - s)`. Default 2
    /// (safe for 5 % skew at `election_tick` 10).
    pub lease_margin_ticks: u32,
    /// In Replicate state, ticks without progress from a follower with messages in flight
    /// before the leader assumes they were lost and probes again. Default 3.
    pub resend_after_ticks: u32,
    /// Messages held back while the hard state they depend on is not yet durable; beyond
    /// this the oldest are dropped (the protocol tolerates lost messages). Default 4,096.
    pub max_held_messages: usize,
    /// Sessions idle for this many log positions expire (see `session`). Default 1,048,576.
    pub session_expiry_entries: u64,
    /// Maximum live sessions; the least recently active is evicted beyond it. Default 65,536.
    pub max_sessions: usize,
    /// A leader hands leadership to a caught-up voter of higher priority. Default on.
    pub transfer_to_higher_priority: bool,
    /// Deliberate protocol bugs, for proving that the simulator catches them. All off by
    /// default; never turn one on outside a test.
    pub bugs: ProtocolBugs,
}

/// Classic Raft bugs that can be switched on to show that the simulator's checker has teeth.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProtocolBugs {
    /// Commit an entry of an older term by counting replicas (the Figure 8 bug).
    pub commit_old_term_by_counting: bool,
    /// Grant a vote without checking that the candidate's log is at least as up to date.
    pub vote_without_log_check: bool,
    /// Followers acknowledge entries when received, before they are durable.
    pub ack_before_durable: bool,
    /// Forget the vote cast in the current term on restart.
    pub forget_vote_on_restart: bool,
    /// The leader does not look up sessions before appending (retries append twice).
    pub skip_session_dedupe: bool,
    /// The lease lasts two election timeouts and a restarted node votes at once.
    pub overlong_lease: bool,
}

impl ProtocolBugs {
    /// True if any bug is switched on.
    pub fn any(&self) -> bool {
        self.commit_old_term_by_counting
            || self.vote_without_log_check
            || self.ack_before_durable
            || self.forget_vote_on_restart
            || self.skip_session_dedupe
            || self.overlong_lease
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            election_tick: 10,
            heartbeat_tick: 1,
            max_inflight_msgs: 64,
            max_inflight_bytes: 8 << 20,
            max_uncommitted_bytes: 32 << 20,
            max_pending_proposals: 65_536,
            max_pending_reads: 4_096,
            max_batch_bytes: 1 << 20,
            max_entry_bytes: 4 << 20,
            max_cache_bytes: 16 << 20,
            pre_vote: true,
            check_quorum: true,
            lease_read: true,
            lease_margin_ticks: 2,
            resend_after_ticks: 3,
            max_held_messages: 4_096,
            session_expiry_entries: 1 << 20,
            max_sessions: 65_536,
            transfer_to_higher_priority: true,
            bugs: ProtocolBugs::default(),
        }
    }
}

/// A configuration that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid consensus config: {0}")]
pub struct ConfigError(pub &'static str);

impl Config {
    /// Checks the relations between settings.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.heartbeat_tick == 0 || self.heartbeat_tick >= self.election_tick {
            return Err(ConfigError("need 0 < heartbeat_tick < election_tick"));
        }
        if self.lease_read && !self.check_quorum {
            return Err(ConfigError("lease_read requires check_quorum"));
        }
        if self.lease_margin_ticks >= self.election_tick {
            return Err(ConfigError("lease_margin_ticks must be below election_tick"));
        }
        if self.max_inflight_msgs == 0 || self.max_pending_proposals == 0 {
            return Err(ConfigError("window and queue bounds must be positive"));
        }
        if self.max_batch_bytes < ENTRY_OVERHEAD_BYTES || self.max_inflight_bytes == 0 {
            return Err(ConfigError("byte bounds too small"));
        }
        if self.max_uncommitted_bytes < self.max_entry_bytes + ENTRY_OVERHEAD_BYTES {
            return Err(ConfigError("max_uncommitted_bytes must hold one maximal entry"));
        }
        if self.max_sessions == 0 || self.resend_after_ticks == 0 {
            return Err(ConfigError("max_sessions and resend_after_ticks must be positive"));
        }
        Ok(())
    }

    /// Ticks a leader's lease lasts after a quorum acknowledged a heartbeat.
    pub fn lease_ticks(&self) -> u32 {
        if self.bugs.overlong_lease {
            return 2 * self.election_tick;
        }
        self.election_tick - self.lease_margin_ticks
    }
}
