//! Segment files: their names, and the pure scanning that recovery runs over their bytes.
//!
//! A group's directory holds:
//! - `{seq:016x}-{first:016x}.seg`: a segment in use. `seq` orders segments by creation; `first`
//!   is the index of the first entry written into it. A segment with a higher `seq` and a
//!   `first` at or below the end of older segments supersedes their entries from `first` on:
//!   that is how a suffix truncation is made durable (a new segment, not an edit of old bytes).
//! - `spare-{max:016x}-{n:016x}.seg`: a prepared segment (zero-filled, or recycled after a
//!   trim). `max` is the highest entry index any frame in the file may carry; a spare is only
//!   put in use for entries above `max`, so its stale frames can never continue the log.
//! - `hardstate`: see `hardstate.rs`. Anything ending in `.tmp` is an unfinished preparation
//!   and is removed at open.
//!
//! Recovery scans each segment from offset 0 and accepts frames while each is valid (checksum,
//! group, limits) and continues the previous one (index `expected`, term not lower). The scan
//! stops at zeros (unused space), at a stale frame (a lower index: bytes of an earlier use of a
//! recycled file), or at a bad frame (torn or damaged).

use std::path::Path;

use crate::frame::{FRAME_HEADER_LEN, FRAME_MAGIC, Frame, FrameError, FrameLimits};

/// Where a frame lives and what it holds. One per frame, not per entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameLoc {
    /// Index of the first entry.
    pub first_index: u64,
    /// Entries of the frame still part of the log (fewer than in the frame's header when a
    /// truncation cut the frame).
    pub count: u32,
    /// Term of the entries.
    pub term: u64,
    /// The segment's `seq`.
    pub segment: u64,
    /// Byte offset of the frame in the segment.
    pub offset: u64,
    /// Length of the whole frame in bytes.
    pub len: u32,
}

impl FrameLoc {
    /// Index of the last entry still part of the log.
    pub fn last_index(&self) -> u64 {
        self.first_index + u64::from(self.count) - 1
    }
}

/// Name of a segment in use.
pub fn segment_name(seq: u64, first_index: u64) -> String {
    format!("{seq:016x}-{first_index:016x}.seg")
}

/// Name of a spare.
pub fn spare_name(max_index: u64, n: u64) -> String {
    format!("spare-{max_index:016x}-{n:016x}.seg")
}

/// What a file name in a group's directory is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// A segment in use: (seq, first index).
    Segment { seq: u64, first_index: u64 },
    /// A spare: (max index it may hold, unique number).
    Spare { max_index: u64, n: u64 },
    /// An unfinished preparation.
    Temporary,
    /// The hard-state file.
    HardState,
    /// Something else.
    Unknown,
}

/// Classifies a file by name.
pub fn classify(path: &Path) -> FileKind {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return FileKind::Unknown;
    };
    if name == super::hardstate::HARD_STATE_FILE {
        return FileKind::HardState;
    }
    if name.ends_with(".tmp") {
        return FileKind::Temporary;
    }
    let Some(stem) = name.strip_suffix(".seg") else {
        return FileKind::Unknown;
    };
    let hex2 = |s: &str| -> Option<(u64, u64)> {
        let (a, b) = s.split_once('-')?;
        if a.len() != 16 || b.len() != 16 {
            return None;
        }
        Some((u64::from_str_radix(a, 16).ok()?, u64::from_str_radix(b, 16).ok()?))
    };
    if let Some(rest) = stem.strip_prefix("spare-") {
        return match hex2(rest) {
            Some((max_index, n)) => FileKind::Spare { max_index, n },
            None => FileKind::Unknown,
        };
    }
    match hex2(stem) {
        Some((seq, first_index)) if first_index > 0 => FileKind::Segment { seq, first_index },
        _ => FileKind::Unknown,
    }
}

/// Why a scan stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// The window was consumed; the scan continues at the returned offset.
    Window,
    /// All-zero header: unused space.
    Zeros,
    /// A valid frame of this group with a lower index: left from an earlier use of the file.
    Stale { first_index: u64 },
    /// A torn or damaged frame.
    Bad(String),
}

/// State carried through the scan of one segment.
#[derive(Debug, Clone, Copy)]
pub struct ScanCursor {
    /// The index the next frame must start at.
    pub expected: u64,
    /// The term of the last accepted frame (frames' terms never decrease).
    pub last_term: u64,
}

/// Scans frames in `window` (the bytes of a segment starting at `window_offset`), accepting
/// those that start before `consume_limit` bytes into the window. Returns the number of bytes
/// consumed (the window offset where the scan stopped) and why it stopped. Never panics.
#[allow(clippy::too_many_arguments)]
pub fn scan_window(
    window: &[u8],
    window_offset: u64,
    consume_limit: usize,
    segment: u64,
    group: u64,
    limits: &FrameLimits,
    cursor: &mut ScanCursor,
    frames: &mut Vec<FrameLoc>,
) -> (usize, Stop) {
    let mut off = 0usize;
    while off < consume_limit.min(window.len()) {
        let rest = &window[off..];
        let head = &rest[..FRAME_HEADER_LEN.min(rest.len())];
        if head.len() == FRAME_HEADER_LEN && head.iter().all(|&b| b == 0) {
            return (off, Stop::Zeros);
        }
        let frame = match Frame::decode(rest, limits) {
            Ok(f) => f,
            Err(FrameError::Truncated { needed, available })
                if head.len() < FRAME_HEADER_LEN && head.iter().all(|&b| b == 0) =>
            {
                let _ = (needed, available);
                return (off, Stop::Zeros);
            }
            Err(e) => return (off, Stop::Bad(e.to_string())),
        };
        if frame.group() != group {
            return (
                off,
                Stop::Bad(format!("frame of group {} in the log of group {group}", frame.group())),
            );
        }
        if frame.first_index() < cursor.expected {
            return (off, Stop::Stale { first_index: frame.first_index() });
        }
        if frame.first_index() > cursor.expected {
            return (
                off,
                Stop::Bad(format!(
                    "frame starts at index {} where {} was expected",
                    frame.first_index(),
                    cursor.expected
                )),
            );
        }
        if frame.term() < cursor.last_term {
            return (
                off,
                Stop::Bad(format!(
                    "frame term {} below the previous term {}",
                    frame.term(),
                    cursor.last_term
                )),
            );
        }
        frames.push(FrameLoc {
            first_index: frame.first_index(),
            count: frame.entry_count(),
            term: frame.term(),
            segment,
            offset: window_offset + off as u64,
            len: frame.len() as u32,
        });
        cursor.expected = frame.last_index() + 1;
        cursor.last_term = frame.term();
        off += frame.len();
    }
    (off, Stop::Window)
}

/// Looks in `window` (starting at segment offset `window_offset`) for a valid frame of `group`
/// starting within the first `search_limit` bytes whose first index is at least `expected`:
/// evidence that the log continued past a bad frame. Returns (segment offset, first, last).
pub fn find_later_frame(
    window: &[u8],
    window_offset: u64,
    search_limit: usize,
    group: u64,
    expected: u64,
    limits: &FrameLimits,
) -> Option<(u64, u64, u64)> {
    let magic = FRAME_MAGIC.to_le_bytes();
    let end = search_limit.min(window.len());
    let mut i = 0;
    while i + 4 <= window.len() && i < end {
        if window[i..i + 4] == magic
            && let Ok(f) = Frame::decode(&window[i..], limits)
            && f.group() == group
            && f.first_index() >= expected
        {
            return Some((window_offset + i as u64, f.first_index(), f.last_index()));
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{EntryKind, EntryRef, encode_frame};

    fn frame(out: &mut Vec<u8>, group: u64, term: u64, first: u64, n: usize) {
        let data = [7u8; 10];
        let entries: Vec<_> = (0..n)
            .map(|i| EntryRef { kind: EntryKind::Normal, session: 1, seq: i as u64, data: &data })
            .collect();
        encode_frame(out, group, term, first, &entries, FrameLimits::default()).unwrap();
    }

    #[test]
    fn names_round_trip() {
        assert_eq!(
            classify(Path::new(&segment_name(3, 77))),
            FileKind::Segment { seq: 3, first_index: 77 }
        );
        assert_eq!(
            classify(Path::new(&spare_name(10, 2))),
            FileKind::Spare { max_index: 10, n: 2 }
        );
        assert_eq!(classify(Path::new("x.tmp")), FileKind::Temporary);
        assert_eq!(classify(Path::new("hardstate")), FileKind::HardState);
        assert_eq!(classify(Path::new("0000000000000001-zz.seg")), FileKind::Unknown);
        assert_eq!(classify(Path::new(&segment_name(1, 0))), FileKind::Unknown);
    }

    #[test]
    fn scan_stops_at_zeros_stale_and_bad() {
        let mut seg = Vec::new();
        frame(&mut seg, 1, 1, 1, 3);
        frame(&mut seg, 1, 2, 4, 2);
        let good_end = seg.len();
        let limits = FrameLimits::default();

        let mut with_zeros = seg.clone();
        with_zeros.resize(good_end + 4096, 0);
        let mut cur = ScanCursor { expected: 1, last_term: 0 };
        let mut frames = Vec::new();
        let (off, stop) =
            scan_window(&with_zeros, 0, usize::MAX, 9, 1, &limits, &mut cur, &mut frames);
        assert_eq!((off, stop), (good_end, Stop::Zeros));
        assert_eq!(frames.len(), 2);
        assert_eq!(cur.expected, 6);

        let mut stale = seg.clone();
        frame(&mut stale, 1, 1, 2, 1);
        let mut cur = ScanCursor { expected: 1, last_term: 0 };
        let (off, stop) =
            scan_window(&stale, 0, usize::MAX, 9, 1, &limits, &mut cur, &mut Vec::new());
        assert_eq!((off, stop), (good_end, Stop::Stale { first_index: 2 }));

        let mut lower_term = seg.clone();
        frame(&mut lower_term, 1, 1, 6, 1);
        let mut cur = ScanCursor { expected: 1, last_term: 0 };
        let (_, stop) =
            scan_window(&lower_term, 0, usize::MAX, 9, 1, &limits, &mut cur, &mut Vec::new());
        assert!(matches!(stop, Stop::Bad(_)), "{stop:?}");

        let mut torn = seg.clone();
        frame(&mut torn, 1, 2, 6, 4);
        torn.truncate(torn.len() - 5);
        let mut cur = ScanCursor { expected: 1, last_term: 0 };
        let (off, stop) =
            scan_window(&torn, 0, usize::MAX, 9, 1, &limits, &mut cur, &mut Vec::new());
        assert_eq!(off, good_end);
        assert!(matches!(stop, Stop::Bad(_)), "{stop:?}");

        let mut foreign = seg.clone();
        frame(&mut foreign, 2, 2, 6, 1);
        let mut cur = ScanCursor { expected: 1, last_term: 0 };
        let (_, stop) =
            scan_window(&foreign, 0, usize::MAX, 9, 1, &limits, &mut cur, &mut Vec::new());
        assert!(matches!(stop, Stop::Bad(_)), "{stop:?}");
    }

    #[test]
    fn later_frames_are_found_past_damage() {
        let mut seg = Vec::new();
        frame(&mut seg, 1, 1, 1, 3);
        let damaged_at = seg.len();
        frame(&mut seg, 1, 1, 4, 3);
        let later_at = seg.len();
        frame(&mut seg, 1, 1, 7, 2);
        seg[damaged_at + 60] ^= 1;
        let limits = FrameLimits::default();
        let found =
            find_later_frame(&seg[damaged_at..], damaged_at as u64, usize::MAX, 1, 4, &limits);
        assert_eq!(found, Some((later_at as u64, 7, 8)));
        assert_eq!(
            find_later_frame(&seg[damaged_at..], damaged_at as u64, usize::MAX, 1, 9, &limits),
            None
        );
        assert_eq!(
            find_later_frame(&seg[damaged_at..], damaged_at as u64, usize::MAX, 2, 4, &limits),
            None
        );
    }
}
