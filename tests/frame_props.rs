//! Property tests of the frame format: round trips, and that any single flipped bit, any
//! truncation and any random byte string is rejected with an error, never a panic.

use corelog::frame::{
    EntryKind, EntryRef, Frame, FrameError, FrameLimits, encode_frame, frame_len_for,
};
use proptest::prelude::*;

#[derive(Debug, Clone)]
struct OwnedEntry {
    kind: EntryKind,
    session: u64,
    seq: u64,
    data: Vec<u8>,
}

fn entry() -> impl Strategy<Value = OwnedEntry> {
    (0u8..3, any::<u64>(), any::<u64>(), proptest::collection::vec(any::<u8>(), 0..300)).prop_map(
        |(k, session, seq, data)| OwnedEntry {
            kind: EntryKind::from_code(k).unwrap(),
            session,
            seq,
            data,
        },
    )
}

fn frame_parts() -> impl Strategy<Value = (u64, u64, u64, Vec<OwnedEntry>)> {
    (any::<u64>(), any::<u64>(), 1u64..u64::MAX / 2, proptest::collection::vec(entry(), 1..20))
}

fn encode(group: u64, term: u64, first: u64, entries: &[OwnedEntry]) -> Vec<u8> {
    let refs: Vec<EntryRef<'_>> = entries
        .iter()
        .map(|e| EntryRef { kind: e.kind, session: e.session, seq: e.seq, data: &e.data })
        .collect();
    let mut out = Vec::new();
    encode_frame(&mut out, group, term, first, &refs, FrameLimits::default()).unwrap();
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn round_trip((group, term, first, entries) in frame_parts(), trailing in proptest::collection::vec(any::<u8>(), 0..64)) {
        let mut bytes = encode(group, term, first, &entries);
        let len = bytes.len();
        prop_assert_eq!(len, frame_len_for(entries.iter().map(|e| e.data.len())));
        // Bytes after a frame (the next frame in a segment) do not disturb it.
        bytes.extend_from_slice(&trailing);
        let frame = Frame::decode(&bytes, &FrameLimits::default()).unwrap();
        prop_assert_eq!(frame.len(), len);
        prop_assert_eq!(frame.group(), group);
        prop_assert_eq!(frame.term(), term);
        prop_assert_eq!(frame.first_index(), first);
        prop_assert_eq!(frame.entry_count() as usize, entries.len());
        let decoded: Vec<_> = frame.entries().collect();
        prop_assert_eq!(decoded.len(), entries.len());
        for (i, (d, e)) in decoded.iter().zip(&entries).enumerate() {
            prop_assert_eq!(d.index, first + i as u64);
            prop_assert_eq!(d.kind, e.kind);
            prop_assert_eq!(d.session, e.session);
            prop_assert_eq!(d.seq, e.seq);
            prop_assert_eq!(d.data, &e.data[..]);
        }
    }

    #[test]
    fn any_single_bit_flip_is_rejected((group, term, first, entries) in frame_parts(), pick in any::<usize>(), bit in 0u8..8) {
        let mut bytes = encode(group, term, first, &entries);
        let at = pick % bytes.len();
        bytes[at] ^= 1 << bit;
        prop_assert!(Frame::decode(&bytes, &FrameLimits::default()).is_err());
    }

    #[test]
    fn any_truncation_is_rejected((group, term, first, entries) in frame_parts(), cut in any::<usize>()) {
        let bytes = encode(group, term, first, &entries);
        let keep = cut % bytes.len();
        let err = Frame::decode(&bytes[..keep], &FrameLimits::default()).unwrap_err();
        prop_assert!(matches!(err, FrameError::Truncated { .. }), "{:?}", err);
    }

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        // Random bytes essentially never carry a valid magic and checksum; the point is that
        // decoding returns an error rather than panicking or reading out of bounds.
        prop_assert!(Frame::decode(&bytes, &FrameLimits::default()).is_err());
    }

    #[test]
    fn random_bytes_behind_a_valid_header_never_panic(
        (group, term, first, entries) in frame_parts(),
        noise in proptest::collection::vec(any::<u8>(), 0..600),
    ) {
        // Keep a valid header but replace the payload with noise: checksum must catch it.
        let mut bytes = encode(group, term, first, &entries);
        let keep = 48;
        bytes.truncate(keep);
        bytes.extend_from_slice(&noise);
        prop_assert!(Frame::decode(&bytes, &FrameLimits::default()).is_err());
    }
}
