//! Group membership: voters (each with an election priority) and learners.
//!
//! Changes are log entries of kind `Config` whose payload is the *whole* new membership, so a
//! node that joins late learns the membership from the first config entry it receives, and a
//! snapshot carries the membership at its index.
//!
//! We change one member at a time (Ongaro's single-server change) rather than through joint
//! consensus: any two majorities of configurations that differ by one voter intersect, the
//! change is one entry, and there is no intermediate state to reason about. The known hole
//! in that scheme (a new leader replaying an uncommitted change from an old term while
//! proposing a new one, raft-dev 2015) is closed by the rule the leader enforces in
//! `Node::change_membership`: a leader changes the configuration only after it has committed
//! an entry of its own term, and only when no earlier change is still uncommitted. A
//! configuration takes effect on every node as soon as the entry is in its log (not when it
//! commits), and is rolled back if that entry is truncated.
//!
//! Priority (X-Paxos election weight, PALF priority): among candidates with equally
//! up-to-date logs the one with the higher priority wins, and a leader hands leadership to a
//! caught-up voter of higher priority. Priority 0 is the "logger" of X-Paxos and openGauss
//! DCF: it stores the log and votes, and campaigns only as a last resort (no leader heard for
//! `LOGGER_LAST_RESORT_TIMEOUTS` election timeouts: its log may be the only up-to-date one,
//! for instance when the other up-to-date voter was just removed), handing leadership to a
//! caught-up voter of higher priority as soon as there is one. The simulator found the
//! deadlock that a strict "never campaigns" rule causes.

use bytes::{BufMut, Bytes, BytesMut};

use super::types::NodeId;

/// A voting member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Voter {
    /// The member.
    pub id: NodeId,
    /// Election priority: 0 is a logger (campaigns only as a last resort); higher wins ties
    /// between equally up-to-date logs.
    pub priority: u8,
}

/// The members of a group. Invariant: ids are non-zero and appear at most once overall.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Membership {
    /// Members whose durable logs count towards commit and whose votes elect leaders.
    pub voters: Vec<Voter>,
    /// Members that receive the log but never vote and never campaign.
    pub learners: Vec<NodeId>,
}

/// One change to the membership.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfChange {
    /// Add a new voter.
    AddVoter { id: NodeId, priority: u8 },
    /// Add a new learner.
    AddLearner { id: NodeId },
    /// Turn a learner into a voter.
    Promote { id: NodeId, priority: u8 },
    /// Remove a voter or a learner.
    Remove { id: NodeId },
    /// Change a voter's election priority.
    SetPriority { id: NodeId, priority: u8 },
}

/// Why a membership change is not valid against the current membership.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MembershipError {
    /// The node is already a member.
    #[error("node {0} is already a member")]
    AlreadyMember(NodeId),
    /// The node is not a member (or not of the required kind).
    #[error("node {0} is not a member of the required kind")]
    NotAMember(NodeId),
    /// The change would leave no voter that can campaign.
    #[error("the change would leave the group without a voter of non-zero priority")]
    NoElectableVoter,
    /// Node id 0 is reserved.
    #[error("node id 0 is reserved")]
    ReservedId,
}

impl Membership {
    /// A membership of voters given as `(id, priority)`.
    pub fn with_voters(voters: &[(NodeId, u8)]) -> Self {
        let m = Self {
            voters: voters.iter().map(|&(id, priority)| Voter { id, priority }).collect(),
            learners: Vec::new(),
        };
        assert!(m.is_well_formed(), "malformed membership {m:?}");
        m
    }

    fn is_well_formed(&self) -> bool {
        let mut ids: Vec<NodeId> = self.members().collect();
        let n = ids.len();
        ids.sort_unstable();
        ids.dedup();
        ids.len() == n && !ids.contains(&0)
    }

    /// Every member, voters first.
    pub fn members(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.voters.iter().map(|v| v.id).chain(self.learners.iter().copied())
    }

    /// True if `id` is a voter.
    pub fn is_voter(&self, id: NodeId) -> bool {
        self.voters.iter().any(|v| v.id == id)
    }

    /// True if `id` is a learner.
    pub fn is_learner(&self, id: NodeId) -> bool {
        self.learners.contains(&id)
    }

    /// The priority of voter `id`.
    pub fn priority(&self, id: NodeId) -> Option<u8> {
        self.voters.iter().find(|v| v.id == id).map(|v| v.priority)
    }

    /// Number of votes (or durable copies) that make a majority of the voters.
    pub fn quorum(&self) -> usize {
        self.voters.len() / 2 + 1
    }

    /// The membership after `change`, or why the change is invalid.
    pub fn apply(&self, change: ConfChange) -> Result<Membership, MembershipError> {
        let mut next = self.clone();
        match change {
            ConfChange::AddVoter { id, priority } => {
                if id == 0 {
                    return Err(MembershipError::ReservedId);
                }
                if self.members().any(|m| m == id) {
                    return Err(MembershipError::AlreadyMember(id));
                }
                next.voters.push(Voter { id, priority });
            }
            ConfChange::AddLearner { id } => {
                if id == 0 {
                    return Err(MembershipError::ReservedId);
                }
                if self.members().any(|m| m == id) {
                    return Err(MembershipError::AlreadyMember(id));
                }
                next.learners.push(id);
            }
            ConfChange::Promote { id, priority } => {
                if !self.is_learner(id) {
                    return Err(MembershipError::NotAMember(id));
                }
                next.learners.retain(|&l| l != id);
                next.voters.push(Voter { id, priority });
            }
            ConfChange::Remove { id } => {
                if !self.members().any(|m| m == id) {
                    return Err(MembershipError::NotAMember(id));
                }
                next.voters.retain(|v| v.id != id);
                next.learners.retain(|&l| l != id);
            }
            ConfChange::SetPriority { id, priority } => {
                let v = next
                    .voters
                    .iter_mut()
                    .find(|v| v.id == id)
                    .ok_or(MembershipError::NotAMember(id))?;
                v.priority = priority;
            }
        }
        if !next.voters.iter().any(|v| v.priority > 0) {
            return Err(MembershipError::NoElectableVoter);
        }
        debug_assert!(next.is_well_formed());
        Ok(next)
    }

    /// The payload of a `Config` entry: `u16` voter count, then `(u64 id, u8 priority)` each,
    /// `u16` learner count, then `u64` ids; little-endian.
    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(4 + self.voters.len() * 9 + self.learners.len() * 8);
        b.put_u16_le(self.voters.len() as u16);
        for v in &self.voters {
            b.put_u64_le(v.id);
            b.put_u8(v.priority);
        }
        b.put_u16_le(self.learners.len() as u16);
        for l in &self.learners {
            b.put_u64_le(*l);
        }
        b.freeze()
    }

    /// Decodes [`Membership::encode`]; `None` if the bytes are not a well-formed membership.
    pub fn decode(mut buf: &[u8]) -> Option<Membership> {
        fn take<const N: usize>(buf: &mut &[u8]) -> Option<[u8; N]> {
            let (head, rest) = buf.split_first_chunk::<N>()?;
            *buf = rest;
            Some(*head)
        }
        let nv = u16::from_le_bytes(take::<2>(&mut buf)?);
        let mut m = Membership::default();
        for _ in 0..nv {
            let id = u64::from_le_bytes(take::<8>(&mut buf)?);
            let priority = take::<1>(&mut buf)?[0];
            m.voters.push(Voter { id, priority });
        }
        let nl = u16::from_le_bytes(take::<2>(&mut buf)?);
        for _ in 0..nl {
            m.learners.push(u64::from_le_bytes(take::<8>(&mut buf)?));
        }
        (buf.is_empty() && m.is_well_formed()).then_some(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode_round_trip() {
        let m = Membership::with_voters(&[(1, 1), (2, 0), (3, 7)])
            .apply(ConfChange::AddLearner { id: 9 })
            .unwrap();
        assert_eq!(Membership::decode(&m.encode()), Some(m.clone()));
        assert_eq!(Membership::decode(&m.encode()[1..]), None);
    }

    #[test]
    fn changes_are_checked() {
        let m = Membership::with_voters(&[(1, 1), (2, 1), (3, 1)]);
        assert_eq!(
            m.apply(ConfChange::AddVoter { id: 2, priority: 1 }),
            Err(MembershipError::AlreadyMember(2))
        );
        assert_eq!(
            m.apply(ConfChange::Promote { id: 2, priority: 1 }),
            Err(MembershipError::NotAMember(2))
        );
        let m2 = m.apply(ConfChange::AddLearner { id: 4 }).unwrap();
        let m3 = m2.apply(ConfChange::Promote { id: 4, priority: 0 }).unwrap();
        assert!(m3.is_voter(4) && !m3.is_learner(4));
        assert_eq!(m3.quorum(), 3);
        let one = Membership::with_voters(&[(1, 1), (2, 0)]);
        assert_eq!(one.apply(ConfChange::Remove { id: 1 }), Err(MembershipError::NoElectableVoter));
    }
}
