//! Consensus messages on the wire: a [`RaftMeta`] in the envelope's meta, and for appends the
//! entries as batch frames (one per run of entries of one term) after it.
//!
//! An `AppendResponse` may carry an 8-byte payload: how long the follower took, in
//! nanoseconds, from receiving the append it answers to sending the ack (its queue, write and
//! fdatasync). The leader splits its round trip with it to time the follower's stages without
//! comparing clocks across hosts (see [`super::stages`]). A response without it is still
//! valid; the payload is ignored by a decoder that does not look for it.
//!
//! Copies: an append whose entries are whole frames of the leader's log goes out as those
//! frames ([`encode_append_frames`]: one plain copy into the send queue, no framing, no
//! checksum; or, for large frames, none: [`encode_append_around`] encodes only what goes
//! around them for a vectored send); any other append is framed here ([`encode`]: one copy,
//! checksummed). The receiver verifies each frame's checksum once ([`decode_with_frames`])
//! and gets the core's entries as slices of the receive buffer plus the frames themselves,
//! which its log then takes as they are.

use bytes::Bytes;
use zerocopy::byteorder::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::consensus::{
    Body, Entry, EntryKind as CoreKind, Membership, Message, SessionRecord, Snapshot,
};
use crate::frame::{self, EntryKind, EntryRef, FrameLimits, VerifiedFrame};
use crate::wire::{self, Kind};

/// The fixed part of every consensus message.
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct RaftMeta {
    from: U64,
    to: U64,
    term: U64,
    body: u8,
    flags: u8,
    priority: u8,
    reserved: [u8; 5],
    a: U64,
    b: U64,
    c: U64,
    d: U64,
}
const _: () = assert!(size_of::<RaftMeta>() == 64);

const PRE_VOTE: u8 = 1;
const TRANSFER: u8 = 2;
const YES: u8 = 4;

/// Why a peer message could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The envelope or meta is malformed.
    #[error("bad consensus message: {0}")]
    Bad(String),
    /// A frame failed its checks.
    #[error("bad frame in an append: {0}")]
    Frame(#[from] frame::FrameError),
}

/// Encodes `m` for `group` at the end of `out`.
pub fn encode(out: &mut Vec<u8>, group: u64, m: &Message) {
    encode_timed(out, group, m, None)
}

/// Encodes `m` for `group` at the end of `out`; an `AppendResponse` carries `ack_local_ns`
/// (the follower's time from receiving the append to this ack) when given.
pub fn encode_timed(out: &mut Vec<u8>, group: u64, m: &Message, ack_local_ns: Option<u64>) {
    // The envelope first, then the payload straight into `out` (no intermediate buffer: each
    // entry's bytes are copied once, into the frame), then the envelope learns its length.
    let start = out.len();
    wire::encode(out, Kind::Raft, group, m.from, meta_of(m).as_bytes(), 0);
    let payload_start = out.len();
    match &m.body {
        Body::Append { entries, .. } => encode_entries(out, group, entries),
        Body::InstallSnapshot { snapshot } => {
            let members = snapshot.membership.encode();
            out.extend_from_slice(&(members.len() as u32).to_le_bytes());
            out.extend_from_slice(&members);
            out.extend_from_slice(&(snapshot.sessions.len() as u32).to_le_bytes());
            for s in &snapshot.sessions {
                for v in [s.session, s.sequence, s.index, s.term] {
                    out.extend_from_slice(&v.to_le_bytes());
                }
            }
            out.extend_from_slice(&snapshot.blob);
        }
        Body::AppendResponse { .. } => {
            if let Some(ns) = ack_local_ns {
                out.extend_from_slice(&ns.to_le_bytes());
            }
        }
        _ => {}
    }
    let frames_len = out.len() - payload_start;
    wire::set_frames_len(&mut out[start..], frames_len);
}

/// Encodes the `Append` `m` whose entries are `head`, then exactly the log frames `frames`,
/// then `tail`: the leader's own frames go as they are (no framing, no checksum; one copy
/// each, into `out`), and only the entries around them are framed here. The caller guarantees
/// that this is `m`'s entries in order (see [`crate::log::Log::with_frames`]).
pub fn encode_append_frames(
    out: &mut Vec<u8>,
    group: u64,
    m: &Message,
    head: &[Entry],
    frames: &[&[u8]],
    tail: &[Entry],
) {
    let mut post = Vec::new();
    encode_append_around(out, &mut post, group, m, head, frames, tail);
    for f in frames {
        out.extend_from_slice(f);
    }
    out.extend_from_slice(&post);
}

/// The same message as [`encode_append_frames`], without the frames: appends to `pre` what
/// goes before them (envelope, meta, `head`) and to `post` what follows them (`tail`), so that
/// `pre`, the frames and `post` sent one after the other are that message (a vectored send
/// needs no copy of the frames).
pub fn encode_append_around(
    pre: &mut Vec<u8>,
    post: &mut Vec<u8>,
    group: u64,
    m: &Message,
    head: &[Entry],
    frames: &[&[u8]],
    tail: &[Entry],
) {
    debug_assert!(matches!(m.body, Body::Append { .. }), "frames only travel in appends");
    let start = pre.len();
    wire::encode(pre, Kind::Raft, group, m.from, meta_of(m).as_bytes(), 0);
    let payload_start = pre.len();
    encode_entries(pre, group, head);
    let post_start = post.len();
    encode_entries(post, group, tail);
    let frames_len = (pre.len() - payload_start)
        + frames.iter().map(|f| f.len()).sum::<usize>()
        + (post.len() - post_start);
    wire::set_frames_len(&mut pre[start..], frames_len);
}

/// The fixed part of `m`.
fn meta_of(m: &Message) -> RaftMeta {
    let mut meta = RaftMeta {
        from: U64::new(m.from),
        to: U64::new(m.to),
        term: U64::new(m.term),
        body: 0,
        flags: 0,
        priority: 0,
        reserved: [0; 5],
        a: U64::ZERO,
        b: U64::ZERO,
        c: U64::ZERO,
        d: U64::ZERO,
    };
    let set = |v: u64| U64::new(v);
    match &m.body {
        Body::RequestVote { pre_vote, last_index, last_term, priority, transfer } => {
            meta.body = 1;
            meta.flags =
                if *pre_vote { PRE_VOTE } else { 0 } | if *transfer { TRANSFER } else { 0 };
            meta.priority = *priority;
            meta.a = set(*last_index);
            meta.b = set(*last_term);
        }
        Body::VoteResponse { pre_vote, granted } => {
            meta.body = 2;
            meta.flags = if *pre_vote { PRE_VOTE } else { 0 } | if *granted { YES } else { 0 };
        }
        Body::Append { prev_index, prev_term, commit, .. } => {
            meta.body = 3;
            meta.a = set(*prev_index);
            meta.b = set(*prev_term);
            meta.c = set(*commit);
        }
        Body::AppendResponse { success, match_index, reject_index, hint_index, hint_term } => {
            meta.body = 4;
            meta.flags = if *success { YES } else { 0 };
            meta.a = set(*match_index);
            meta.b = set(*reject_index);
            meta.c = set(*hint_index);
            meta.d = set(*hint_term);
        }
        Body::Heartbeat { commit, round, sent_tick, trimmed } => {
            meta.body = 5;
            meta.a = set(*commit);
            meta.b = set(*round);
            meta.c = set(*sent_tick);
            meta.d = set(*trimmed);
        }
        Body::HeartbeatResponse { round, sent_tick } => {
            meta.body = 6;
            meta.a = set(*round);
            meta.b = set(*sent_tick);
        }
        Body::InstallSnapshot { snapshot } => {
            meta.body = 7;
            meta.a = set(snapshot.index);
            meta.b = set(snapshot.term);
            meta.c = set(snapshot.sessions_applied);
        }
        Body::TimeoutNow => meta.body = 8,
    }
    meta
}

/// The frame-encoder view of a core entry (same kind codes, data borrowed).
pub(crate) fn frame_entry(e: &Entry) -> EntryRef<'_> {
    EntryRef {
        kind: EntryKind::from_code(e.kind.as_u8()).expect("same codes"),
        session: e.session,
        seq: e.sequence,
        data: &e.data,
    }
}

/// Frames `entries` (runs of one term each) at the end of `out`.
fn encode_entries(out: &mut Vec<u8>, group: u64, entries: &[Entry]) {
    let mut start = 0;
    while start < entries.len() {
        let term = entries[start].term;
        let mut end = start + 1;
        let mut bytes = entries[start].data.len();
        while end < entries.len()
            && entries[end].term == term
            && end - start < 65_536
            && bytes + entries[end].data.len() < (1 << 20) - 64 * 1024
        {
            bytes += entries[end].data.len();
            end += 1;
        }
        let refs: Vec<EntryRef<'_>> = entries[start..end].iter().map(frame_entry).collect();
        frame::encode_frame(out, group, term, entries[start].index, &refs, FrameLimits::default())
            .expect("a run within the frame limits");
        start = end;
    }
}

/// The follower's local time carried by an `AppendResponse` (see the module docs), if any.
pub fn ack_local_ns(msg: &wire::Message<'_>) -> Option<u64> {
    let meta = RaftMeta::read_from_bytes(msg.meta).ok()?;
    if meta.body != 4 {
        return None;
    }
    Some(u64::from_le_bytes(msg.frames.try_into().ok()?))
}

/// Decodes a consensus message for `group` whose whole bytes are `buf` (a verified wire
/// message: `meta` and `frames` are sub-slices of `buf`). Entry data are slices of `buf`.
pub fn decode(
    buf: &Bytes,
    msg: &wire::Message<'_>,
    limits: &FrameLimits,
) -> Result<Message, CodecError> {
    decode_with_frames(buf, msg, limits).map(|(m, _)| m)
}

/// [`decode`], and for an append also its frames, verified and sharing `buf` (a follower
/// writes these very bytes to its log).
pub fn decode_with_frames(
    buf: &Bytes,
    msg: &wire::Message<'_>,
    limits: &FrameLimits,
) -> Result<(Message, Vec<VerifiedFrame>), CodecError> {
    let mut frames = Vec::new();
    let group = msg.envelope.group.get();
    let Ok(meta) = RaftMeta::read_from_bytes(msg.meta) else {
        return Err(CodecError::Bad(format!("meta of {} bytes, expected 64", msg.meta.len())));
    };
    let payload = msg.frames;
    let flag = |f: u8| meta.flags & f != 0;
    let body = match meta.body {
        1 => Body::RequestVote {
            pre_vote: flag(PRE_VOTE),
            last_index: meta.a.get(),
            last_term: meta.b.get(),
            priority: meta.priority,
            transfer: flag(TRANSFER),
        },
        2 => Body::VoteResponse { pre_vote: flag(PRE_VOTE), granted: flag(YES) },
        3 => {
            let base = payload.as_ptr() as usize - buf.as_ptr() as usize;
            let mut entries = Vec::new();
            let mut off = 0;
            while off < payload.len() {
                let vf =
                    VerifiedFrame::decode(&buf.slice(base + off..base + payload.len()), limits)?;
                let f = vf.frame();
                if f.group() != group {
                    return Err(CodecError::Bad(format!(
                        "frame of group {} in a message of group {group}",
                        f.group()
                    )));
                }
                let expected = meta.a.get() + 1 + entries.len() as u64;
                if f.first_index() != expected {
                    return Err(CodecError::Bad(format!(
                        "frame starts at {} where {expected} was expected",
                        f.first_index()
                    )));
                }
                for e in f.entries() {
                    let start = e.data.as_ptr() as usize - buf.as_ptr() as usize;
                    debug_assert!(start >= base);
                    entries.push(Entry {
                        index: e.index,
                        term: f.term(),
                        kind: CoreKind::from_u8(e.kind as u8).expect("validated by the frame"),
                        session: e.session,
                        sequence: e.seq,
                        data: buf.slice(start..start + e.data.len()),
                    });
                }
                off += f.len();
                frames.push(vf);
            }
            Body::Append {
                prev_index: meta.a.get(),
                prev_term: meta.b.get(),
                entries,
                commit: meta.c.get(),
            }
        }
        4 => Body::AppendResponse {
            success: flag(YES),
            match_index: meta.a.get(),
            reject_index: meta.b.get(),
            hint_index: meta.c.get(),
            hint_term: meta.d.get(),
        },
        5 => Body::Heartbeat {
            commit: meta.a.get(),
            round: meta.b.get(),
            sent_tick: meta.c.get(),
            trimmed: meta.d.get(),
        },
        6 => Body::HeartbeatResponse { round: meta.a.get(), sent_tick: meta.b.get() },
        7 => {
            let bad = || CodecError::Bad("truncated snapshot".into());
            let mut p = payload;
            let mut take = |n: usize| -> Result<&[u8], CodecError> {
                if p.len() < n {
                    return Err(bad());
                }
                let (h, t) = p.split_at(n);
                p = t;
                Ok(h)
            };
            let mlen = U32::read_from_bytes(take(4)?).map_err(|_| bad())?.get() as usize;
            let membership = Membership::decode(take(mlen)?)
                .ok_or_else(|| CodecError::Bad("bad membership".into()))?;
            let n = U32::read_from_bytes(take(4)?).map_err(|_| bad())?.get() as usize;
            if n > payload.len() / 32 {
                return Err(bad());
            }
            let mut sessions = Vec::with_capacity(n);
            for _ in 0..n {
                let r = take(32)?;
                let v =
                    |i: usize| u64::from_le_bytes(r[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
                sessions.push(SessionRecord {
                    session: v(0),
                    sequence: v(1),
                    index: v(2),
                    term: v(3),
                });
            }
            let blob_start = p.as_ptr() as usize - buf.as_ptr() as usize;
            let blob = buf.slice(blob_start..blob_start + p.len());
            Body::InstallSnapshot {
                snapshot: Snapshot {
                    index: meta.a.get(),
                    term: meta.b.get(),
                    membership,
                    sessions,
                    sessions_applied: meta.c.get(),
                    blob,
                },
            }
        }
        8 => Body::TimeoutNow,
        other => return Err(CodecError::Bad(format!("unknown consensus message body {other}"))),
    };
    Ok((Message { from: meta.from.get(), to: meta.to.get(), term: meta.term.get(), body }, frames))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(m: Message) {
        let mut out = Vec::new();
        encode(&mut out, 5, &m);
        let buf = Bytes::from(out);
        let msg = wire::verify(&buf, 1 << 24).unwrap();
        assert_eq!(msg.kind, Kind::Raft);
        let back = decode(&buf, &msg, &FrameLimits::default()).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn every_body_round_trips() {
        let e = |index, term, data: &'static [u8]| Entry {
            index,
            term,
            kind: CoreKind::Normal,
            session: 3,
            sequence: index,
            data: Bytes::from_static(data),
        };
        let bodies = vec![
            Body::RequestVote {
                pre_vote: true,
                last_index: 9,
                last_term: 2,
                priority: 3,
                transfer: true,
            },
            Body::VoteResponse { pre_vote: false, granted: true },
            Body::Append {
                prev_index: 4,
                prev_term: 1,
                entries: vec![e(5, 1, b"a"), e(6, 2, b"bb"), e(7, 2, b"")],
                commit: 3,
            },
            Body::Append { prev_index: 4, prev_term: 1, entries: vec![], commit: 3 },
            Body::AppendResponse {
                success: false,
                match_index: 1,
                reject_index: 2,
                hint_index: 3,
                hint_term: 4,
            },
            Body::Heartbeat { commit: 8, round: 9, sent_tick: 10, trimmed: 7 },
            Body::HeartbeatResponse { round: 9, sent_tick: 10 },
            Body::InstallSnapshot {
                snapshot: Snapshot {
                    index: 100,
                    term: 4,
                    membership: Membership::with_voters(&[(1, 1), (2, 1), (3, 0)]),
                    sessions: vec![SessionRecord { session: 1, sequence: 2, index: 3, term: 4 }],
                    sessions_applied: 100,
                    blob: Bytes::from_static(b"app state"),
                },
            },
            Body::TimeoutNow,
        ];
        for body in bodies {
            round_trip(Message { from: 1, to: 2, term: 7, body });
        }
    }

    #[test]
    fn an_ack_carries_the_followers_local_time() {
        let m = Message {
            from: 2,
            to: 1,
            term: 3,
            body: Body::AppendResponse {
                success: true,
                match_index: 9,
                reject_index: 0,
                hint_index: 0,
                hint_term: 0,
            },
        };
        for timing in [Some(1_234_567u64), None] {
            let mut out = Vec::new();
            encode_timed(&mut out, 5, &m, timing);
            let buf = Bytes::from(out);
            let msg = wire::verify(&buf, 1 << 24).unwrap();
            assert_eq!(ack_local_ns(&msg), timing);
            assert_eq!(decode(&buf, &msg, &FrameLimits::default()).unwrap(), m);
        }
        // Only acks carry it.
        let hb = Message {
            body: Body::Heartbeat { commit: 1, round: 2, sent_tick: 3, trimmed: 0 },
            ..m
        };
        let mut out = Vec::new();
        encode_timed(&mut out, 5, &hb, Some(7));
        let buf = Bytes::from(out);
        assert_eq!(ack_local_ns(&wire::verify(&buf, 1 << 24).unwrap()), None);
    }

    #[test]
    fn a_damaged_frame_in_an_append_is_rejected() {
        let m = Message {
            from: 1,
            to: 2,
            term: 1,
            body: Body::Append {
                prev_index: 0,
                prev_term: 0,
                entries: vec![Entry {
                    index: 1,
                    term: 1,
                    kind: CoreKind::Normal,
                    session: 0,
                    sequence: 0,
                    data: Bytes::from_static(b"xyz"),
                }],
                commit: 0,
            },
        };
        let mut out = Vec::new();
        encode(&mut out, 5, &m);
        let n = out.len();
        out[n - 1] ^= 1;
        let buf = Bytes::from(out);
        let msg = wire::verify(&buf, 1 << 24).unwrap();
        assert!(matches!(decode(&buf, &msg, &FrameLimits::default()), Err(CodecError::Frame(_))));
    }
}
