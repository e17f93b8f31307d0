//! The one frame format: the same bytes on disk and on the wire.
//!
//! A leader builds a batch frame once: a fixed 48-byte little-endian [`FrameHeader`] and a
//! payload of entries, each an [`EntryHeader`] (24 bytes) followed by its bytes. One CRC32C
//! covers the header (every field before `crc`) and the whole payload. A follower verifies the
//! checksum and writes the very same bytes to its log; nothing is re-encoded between client,
//! network and disk.
//!
//! ```text
//! frame   = header(48) entry*
//! header  = magic u32 | version u16 | kind u8 | flags u8 | group u64 | term u64
//!         | first_index u64 | entry_count u32 | payload_len u32 | reserved u32 | crc u32
//! entry   = len u32 | kind u8 | flags u8 | reserved u16 | session u64 | seq u64 | bytes[len]
//! ```
//!
//! Choices, and why:
//! - The header is `zerocopy` types of alignment 1 ([`zerocopy::byteorder`]), so a header can be
//!   read in place at any offset of a receive buffer or a segment, with no hand parsing.
//! - One checksum, not a header CRC plus a payload CRC (Redpanda keeps two): the frame is always
//!   read whole (the log reads whole frames, the transport receives whole frames), so a separate
//!   header checksum would only save work on a path that then reads the payload anyway.
//!   Decoding first checks the header's own fields against the configured maxima, so a corrupt
//!   length can never make the reader trust or allocate a huge payload.
//! - Entries are not padded: the log packs frames back to back and rewrites the partial last
//!   block on the next flush, so padding would only cost bandwidth.
//! - Decoding validates every entry once, up front ([`Frame::decode`]); iterating the entries of
//!   a decoded frame then cannot fail and borrows from the buffer (no copy, no allocation).
//! - `crc` is the last field so the checksum is `crc32c(header[..44]) ++ payload`, computed in one
//!   pass with `crc32c_append`, without zeroing a field first.

use thiserror::Error;
use zerocopy::byteorder::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// "CLOG" read as a little-endian u32.
pub const FRAME_MAGIC: u32 = u32::from_le_bytes(*b"CLOG");
/// The version of the frame format this build writes and reads.
pub const FRAME_VERSION: u16 = 1;
/// Size of [`FrameHeader`] in bytes.
pub const FRAME_HEADER_LEN: usize = 48;
/// Size of [`EntryHeader`] in bytes.
pub const ENTRY_HEADER_LEN: usize = 24;
/// Offset of the `crc` field: everything before it is covered by the checksum.
const CRC_OFFSET: usize = FRAME_HEADER_LEN - 4;

/// The fixed header of every frame. All integers little-endian, alignment 1.
#[repr(C)]
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
pub struct FrameHeader {
    /// [`FRAME_MAGIC`].
    pub magic: U32,
    /// [`FRAME_VERSION`].
    pub version: U16,
    /// [`FrameKind`] code.
    pub kind: u8,
    /// Reserved for future use; written as zero, ignored on read.
    pub flags: u8,
    /// The consensus group (log) this frame belongs to.
    pub group: U64,
    /// The term of the leader that built this batch (every entry of a frame has this term).
    pub term: U64,
    /// Log index of the first entry; entry `k` has index `first_index + k`.
    pub first_index: U64,
    /// Number of entries in the payload; at least one.
    pub entry_count: U32,
    /// Bytes of payload that follow the header.
    pub payload_len: U32,
    /// Reserved; written as zero.
    pub reserved: U32,
    /// CRC32C of the header bytes before this field and of the whole payload.
    pub crc: U32,
}

/// The header of one entry inside a frame's payload.
#[repr(C)]
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
pub struct EntryHeader {
    /// Bytes of entry data that follow this header.
    pub len: U32,
    /// [`EntryKind`] code.
    pub kind: u8,
    /// Reserved; written as zero.
    pub flags: u8,
    /// Reserved; written as zero.
    pub reserved: U16,
    /// Client session id (0: no session).
    pub session: U64,
    /// Client sequence number within the session.
    pub seq: U64,
}

const _: () = assert!(size_of::<FrameHeader>() == FRAME_HEADER_LEN);
const _: () = assert!(size_of::<EntryHeader>() == ENTRY_HEADER_LEN);
const _: () = assert!(align_of::<FrameHeader>() == 1 && align_of::<EntryHeader>() == 1);

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// A batch of log entries.
    Entries = 1,
}

impl FrameKind {
    fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(FrameKind::Entries),
            _ => None,
        }
    }
}

/// What an entry is, to the consensus layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum EntryKind {
    /// Client data.
    Normal = 0,
    /// An empty entry a new leader appends to commit its term.
    Noop = 1,
    /// A membership change.
    Config = 2,
}

impl EntryKind {
    /// The kind for a wire code, if known.
    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(EntryKind::Normal),
            1 => Some(EntryKind::Noop),
            2 => Some(EntryKind::Config),
            _ => None,
        }
    }
}

/// Maxima that a decoder enforces before it trusts any length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameLimits {
    /// Largest payload accepted, in bytes.
    pub payload_bytes_max: u32,
    /// Most entries accepted in one frame.
    pub entries_max: u32,
    /// Largest single entry accepted, in bytes of data.
    pub entry_bytes_max: u32,
}

impl Default for FrameLimits {
    /// 1 MiB payload, 65,536 entries, 1 MiB per entry.
    fn default() -> Self {
        FrameLimits { payload_bytes_max: 1 << 20, entries_max: 1 << 16, entry_bytes_max: 1 << 20 }
    }
}

/// Why a byte string is not a valid frame. Every variant is a clear, typed reason.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrameError {
    /// Fewer bytes than the header or the declared payload need.
    #[error("truncated frame: need {needed} bytes, have {available}")]
    Truncated { needed: usize, available: usize },
    /// The first four bytes are not [`FRAME_MAGIC`].
    #[error("bad frame magic {found:#010x}")]
    BadMagic { found: u32 },
    /// A format version this build does not read.
    #[error("unsupported frame version {found} (this build reads {FRAME_VERSION})")]
    UnsupportedVersion { found: u16 },
    /// An unknown frame kind code.
    #[error("unknown frame kind {found}")]
    UnknownKind { found: u8 },
    /// The header declares a payload above the configured maximum.
    #[error("frame payload of {len} bytes exceeds the maximum of {max}")]
    PayloadTooLarge { len: u32, max: u32 },
    /// The header declares zero entries, or more than the configured maximum.
    #[error("frame declares {count} entries (allowed 1..={max})")]
    BadEntryCount { count: u32, max: u32 },
    /// `first_index + entry_count` does not fit in a u64, or `first_index` is 0.
    #[error("frame index range starting at {first_index} with {count} entries is invalid")]
    BadIndexRange { first_index: u64, count: u32 },
    /// The checksum does not match the bytes.
    #[error("frame checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    ChecksumMismatch { stored: u32, computed: u32 },
    /// An entry's header or data runs past the end of the payload.
    #[error("entry {entry} overruns the payload ({needed} bytes needed, {available} left)")]
    EntryOverrun { entry: u32, needed: usize, available: usize },
    /// An entry larger than the configured maximum.
    #[error("entry {entry} of {len} bytes exceeds the maximum of {max}")]
    EntryTooLarge { entry: u32, len: u32, max: u32 },
    /// An entry with an unknown kind code.
    #[error("entry {entry} has unknown kind {found}")]
    UnknownEntryKind { entry: u32, found: u8 },
    /// Payload bytes left over after the declared entries.
    #[error("{extra} payload bytes follow the last declared entry")]
    TrailingBytes { extra: usize },
}

/// Why an entry could not be added to a frame being built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum EncodeError {
    /// The output buffer has no room for this entry.
    #[error("no room in the frame buffer for an entry of {len} bytes")]
    Full { len: usize },
    /// The entry or the frame would exceed the limits.
    #[error("entry of {len} bytes would exceed the frame limits")]
    TooLarge { len: usize },
}

/// One entry to encode.
#[derive(Debug, Clone, Copy)]
pub struct EntryRef<'a> {
    /// What the entry is.
    pub kind: EntryKind,
    /// Client session id.
    pub session: u64,
    /// Client sequence number.
    pub seq: u64,
    /// The entry's bytes.
    pub data: &'a [u8],
}

/// Builds one frame in place at the end of a caller's byte slice: the header is reserved
/// first, entries are appended after it, and [`FrameEncoder::finish`] writes the header and the
/// checksum. Nothing is allocated.
#[derive(Debug)]
pub struct FrameEncoder<'b> {
    buf: &'b mut [u8],
    group: u64,
    term: u64,
    first_index: u64,
    limits: FrameLimits,
    /// Bytes of payload written so far (after the header).
    payload_len: usize,
    entry_count: u32,
}

impl<'b> FrameEncoder<'b> {
    /// Starts a frame at the beginning of `buf`. Returns `None` when `buf` cannot hold even the
    /// header.
    pub fn new(
        buf: &'b mut [u8],
        group: u64,
        term: u64,
        first_index: u64,
        limits: FrameLimits,
    ) -> Option<Self> {
        if buf.len() < FRAME_HEADER_LEN {
            return None;
        }
        assert!(first_index > 0, "log indexes start at 1");
        Some(FrameEncoder { buf, group, term, first_index, limits, payload_len: 0, entry_count: 0 })
    }

    /// Bytes the frame would occupy if finished now.
    pub fn len(&self) -> usize {
        FRAME_HEADER_LEN + self.payload_len
    }

    /// Whether no entry has been added yet.
    pub fn is_empty(&self) -> bool {
        self.entry_count == 0
    }

    /// Entries added so far.
    pub fn entry_count(&self) -> u32 {
        self.entry_count
    }

    /// Appends one entry.
    pub fn push(&mut self, entry: EntryRef<'_>) -> Result<(), EncodeError> {
        let len = entry.data.len();
        let need = ENTRY_HEADER_LEN + len;
        if len > self.limits.entry_bytes_max as usize
            || self.payload_len + need > self.limits.payload_bytes_max as usize
            || self.entry_count >= self.limits.entries_max
        {
            return Err(EncodeError::TooLarge { len });
        }
        let at = FRAME_HEADER_LEN + self.payload_len;
        let Some(dst) = self.buf.get_mut(at..at + need) else {
            return Err(EncodeError::Full { len });
        };
        let header = EntryHeader {
            len: U32::new(len as u32),
            kind: entry.kind as u8,
            flags: 0,
            reserved: U16::ZERO,
            session: U64::new(entry.session),
            seq: U64::new(entry.seq),
        };
        dst[..ENTRY_HEADER_LEN].copy_from_slice(header.as_bytes());
        dst[ENTRY_HEADER_LEN..].copy_from_slice(entry.data);
        self.payload_len += need;
        self.entry_count += 1;
        Ok(())
    }

    /// Writes the header and checksum; returns the frame's length in bytes. The frame occupies
    /// `buf[..len]`. Panics if no entry was pushed (a frame holds at least one entry).
    pub fn finish(self) -> usize {
        assert!(self.entry_count > 0, "a frame holds at least one entry");
        let header = FrameHeader {
            magic: U32::new(FRAME_MAGIC),
            version: U16::new(FRAME_VERSION),
            kind: FrameKind::Entries as u8,
            flags: 0,
            group: U64::new(self.group),
            term: U64::new(self.term),
            first_index: U64::new(self.first_index),
            entry_count: U32::new(self.entry_count),
            payload_len: U32::new(self.payload_len as u32),
            reserved: U32::ZERO,
            crc: U32::ZERO,
        };
        let len = self.len();
        self.buf[..FRAME_HEADER_LEN].copy_from_slice(header.as_bytes());
        let crc = frame_crc(&self.buf[..len]);
        self.buf[CRC_OFFSET..FRAME_HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
        len
    }
}

/// The checksum of a whole frame's bytes (header fields before `crc`, then the payload).
fn frame_crc(frame: &[u8]) -> u32 {
    let crc = crc32c::crc32c(&frame[..CRC_OFFSET]);
    crc32c::crc32c_append(crc, &frame[FRAME_HEADER_LEN..])
}

/// Encodes a whole frame at the end of `out` (a convenience over [`FrameEncoder`] for callers
/// that own a `Vec`). Returns the frame's length.
pub fn encode_frame(
    out: &mut Vec<u8>,
    group: u64,
    term: u64,
    first_index: u64,
    entries: &[EntryRef<'_>],
    limits: FrameLimits,
) -> Result<usize, EncodeError> {
    let need: usize =
        FRAME_HEADER_LEN + entries.iter().map(|e| ENTRY_HEADER_LEN + e.data.len()).sum::<usize>();
    let start = out.len();
    out.resize(start + need, 0);
    let mut enc = FrameEncoder::new(&mut out[start..], group, term, first_index, limits)
        .expect("buffer sized for the header");
    for e in entries {
        if let Err(err) = enc.push(*e) {
            out.truncate(start);
            return Err(err);
        }
    }
    let len = enc.finish();
    debug_assert_eq!(len, need);
    Ok(len)
}

/// A verified frame borrowed from a buffer.
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    header: &'a FrameHeader,
    payload: &'a [u8],
    bytes: &'a [u8],
}

impl<'a> Frame<'a> {
    /// Reads the header at the start of `bytes` and checks its own fields against `limits`,
    /// without touching the payload. Returns the header and the whole frame's length. Used to
    /// learn how many bytes to receive or read before [`Frame::decode`].
    pub fn peek_header(
        bytes: &'a [u8],
        limits: &FrameLimits,
    ) -> Result<(&'a FrameHeader, usize), FrameError> {
        let Ok((header, _)) = FrameHeader::ref_from_prefix(bytes) else {
            return Err(FrameError::Truncated { needed: FRAME_HEADER_LEN, available: bytes.len() });
        };
        if header.magic.get() != FRAME_MAGIC {
            return Err(FrameError::BadMagic { found: header.magic.get() });
        }
        if header.version.get() != FRAME_VERSION {
            return Err(FrameError::UnsupportedVersion { found: header.version.get() });
        }
        if FrameKind::from_code(header.kind).is_none() {
            return Err(FrameError::UnknownKind { found: header.kind });
        }
        let payload_len = header.payload_len.get();
        if payload_len > limits.payload_bytes_max {
            return Err(FrameError::PayloadTooLarge {
                len: payload_len,
                max: limits.payload_bytes_max,
            });
        }
        let count = header.entry_count.get();
        if count == 0 || count > limits.entries_max {
            return Err(FrameError::BadEntryCount { count, max: limits.entries_max });
        }
        let first_index = header.first_index.get();
        if first_index == 0 || first_index.checked_add(u64::from(count)).is_none() {
            return Err(FrameError::BadIndexRange { first_index, count });
        }
        Ok((header, FRAME_HEADER_LEN + payload_len as usize))
    }

    /// Decodes and verifies the frame at the start of `bytes`: header fields, checksum, and
    /// every entry's bounds and kind. Bytes after the frame are ignored; the frame's length is
    /// [`Frame::len`]. Never panics, whatever the input.
    pub fn decode(bytes: &'a [u8], limits: &FrameLimits) -> Result<Self, FrameError> {
        let (header, len) = Self::peek_header(bytes, limits)?;
        if bytes.len() < len {
            return Err(FrameError::Truncated { needed: len, available: bytes.len() });
        }
        let stored = header.crc.get();
        let computed = frame_crc(&bytes[..len]);
        if stored != computed {
            return Err(FrameError::ChecksumMismatch { stored, computed });
        }
        let payload = &bytes[FRAME_HEADER_LEN..len];
        validate_entries(payload, header.entry_count.get(), limits)?;
        Ok(Frame { header, payload, bytes: &bytes[..len] })
    }

    /// The frame of `bytes` (exactly one whole frame) that [`Frame::decode`] verified before:
    /// the header is read in place and nothing is checked again (no checksum pass). For bytes
    /// held since their verification (a received frame, a frame read from a segment).
    pub(crate) fn already_verified(bytes: &'a [u8]) -> Frame<'a> {
        let (header, _) = FrameHeader::ref_from_prefix(bytes).expect("a verified frame");
        debug_assert_eq!(bytes.len(), FRAME_HEADER_LEN + header.payload_len.get() as usize);
        Frame { header, payload: &bytes[FRAME_HEADER_LEN..], bytes }
    }

    /// The whole frame's bytes, exactly as encoded (header and payload).
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The frame's header.
    pub fn header(&self) -> &'a FrameHeader {
        self.header
    }

    /// The group.
    pub fn group(&self) -> u64 {
        self.header.group.get()
    }

    /// The term of every entry.
    pub fn term(&self) -> u64 {
        self.header.term.get()
    }

    /// Index of the first entry.
    pub fn first_index(&self) -> u64 {
        self.header.first_index.get()
    }

    /// Index of the last entry.
    pub fn last_index(&self) -> u64 {
        self.first_index() + u64::from(self.entry_count()) - 1
    }

    /// Number of entries.
    pub fn entry_count(&self) -> u32 {
        self.header.entry_count.get()
    }

    /// Length of the whole frame in bytes.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        FRAME_HEADER_LEN + self.payload.len()
    }

    /// The entries, borrowed from the buffer, with their indexes.
    pub fn entries(&self) -> Entries<'a> {
        Entries { rest: self.payload, next_index: self.first_index() }
    }
}

/// A frame that passed [`Frame::decode`], owning its bytes (typically a slice of a receive
/// buffer). A follower keeps the frames of an append in this form so that it can write the very
/// bytes it verified to its log, without encoding or checksumming them again.
#[derive(Debug, Clone)]
pub struct VerifiedFrame {
    bytes: bytes::Bytes,
}

impl VerifiedFrame {
    /// Decodes and verifies the frame at the start of `bytes` (see [`Frame::decode`]); the
    /// result holds exactly the frame's bytes.
    pub fn decode(bytes: &bytes::Bytes, limits: &FrameLimits) -> Result<Self, FrameError> {
        let len = Frame::decode(bytes, limits)?.len();
        Ok(VerifiedFrame { bytes: bytes.slice(..len) })
    }

    /// The frame, without verifying it again: its checksum and entries were checked when it
    /// was decoded, and `Bytes` are immutable.
    pub fn frame(&self) -> Frame<'_> {
        Frame::already_verified(&self.bytes)
    }

    /// The frame's bytes.
    pub fn bytes(&self) -> &bytes::Bytes {
        &self.bytes
    }
}

fn validate_entries(payload: &[u8], count: u32, limits: &FrameLimits) -> Result<(), FrameError> {
    let mut rest = payload;
    for entry in 0..count {
        let Ok((h, after)) = EntryHeader::ref_from_prefix(rest) else {
            return Err(FrameError::EntryOverrun {
                entry,
                needed: ENTRY_HEADER_LEN,
                available: rest.len(),
            });
        };
        let len = h.len.get();
        if len > limits.entry_bytes_max {
            return Err(FrameError::EntryTooLarge { entry, len, max: limits.entry_bytes_max });
        }
        if EntryKind::from_code(h.kind).is_none() {
            return Err(FrameError::UnknownEntryKind { entry, found: h.kind });
        }
        let Some(after_data) = after.get(len as usize..) else {
            return Err(FrameError::EntryOverrun {
                entry,
                needed: len as usize,
                available: after.len(),
            });
        };
        rest = after_data;
    }
    if !rest.is_empty() {
        return Err(FrameError::TrailingBytes { extra: rest.len() });
    }
    Ok(())
}

/// One decoded entry, borrowed from its frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodedEntry<'a> {
    /// Its log index.
    pub index: u64,
    /// What it is.
    pub kind: EntryKind,
    /// Client session id.
    pub session: u64,
    /// Client sequence number.
    pub seq: u64,
    /// Its bytes.
    pub data: &'a [u8],
}

/// Iterator over the entries of a verified frame.
#[derive(Debug, Clone)]
pub struct Entries<'a> {
    rest: &'a [u8],
    next_index: u64,
}

impl<'a> Iterator for Entries<'a> {
    type Item = DecodedEntry<'a>;

    fn next(&mut self) -> Option<Self::Item> {
        // The frame was validated by `Frame::decode`, so these cannot fail; stay total anyway.
        let (h, after) = EntryHeader::ref_from_prefix(self.rest).ok()?;
        let len = h.len.get() as usize;
        let data = after.get(..len)?;
        self.rest = &after[len..];
        let entry = DecodedEntry {
            index: self.next_index,
            kind: EntryKind::from_code(h.kind)?,
            session: h.session.get(),
            seq: h.seq.get(),
            data,
        };
        self.next_index += 1;
        Some(entry)
    }
}

/// Bytes a frame of these entry sizes occupies.
pub fn frame_len_for(entry_data_lens: impl IntoIterator<Item = usize>) -> usize {
    FRAME_HEADER_LEN + entry_data_lens.into_iter().map(|l| ENTRY_HEADER_LEN + l).sum::<usize>()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(out: &mut Vec<u8>) -> usize {
        let entries = [
            EntryRef { kind: EntryKind::Normal, session: 7, seq: 1, data: b"hello" },
            EntryRef { kind: EntryKind::Noop, session: 0, seq: 0, data: b"" },
            EntryRef { kind: EntryKind::Config, session: 9, seq: 3, data: &[0xAB; 100] },
        ];
        encode_frame(out, 4, 2, 10, &entries, FrameLimits::default()).unwrap()
    }

    #[test]
    fn round_trip_borrows_entries() {
        let mut buf = Vec::new();
        let len = sample(&mut buf);
        assert_eq!(len, buf.len());
        assert_eq!(len, frame_len_for([5, 0, 100]));
        let frame = Frame::decode(&buf, &FrameLimits::default()).unwrap();
        assert_eq!(
            (frame.group(), frame.term(), frame.first_index(), frame.last_index()),
            (4, 2, 10, 12)
        );
        let entries: Vec<_> = frame.entries().collect();
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[0].data, b"hello");
        assert_eq!(entries[0].index, 10);
        assert_eq!(entries[1].kind, EntryKind::Noop);
        assert_eq!(entries[2].data.len(), 100);
        assert_eq!(entries[2].index, 12);
        // Borrowed: the data points into the buffer.
        let range = buf.as_ptr_range();
        assert!(range.contains(&entries[0].data.as_ptr()));
    }

    #[test]
    fn limits_are_enforced_before_the_payload_is_trusted() {
        let mut buf = Vec::new();
        sample(&mut buf);
        let tight = FrameLimits { payload_bytes_max: 64, ..FrameLimits::default() };
        assert!(matches!(Frame::decode(&buf, &tight), Err(FrameError::PayloadTooLarge { .. })));
        let few = FrameLimits { entries_max: 2, ..FrameLimits::default() };
        assert!(matches!(
            Frame::decode(&buf, &few),
            Err(FrameError::BadEntryCount { count: 3, max: 2 })
        ));
        let small = FrameLimits { entry_bytes_max: 50, ..FrameLimits::default() };
        assert!(matches!(
            Frame::decode(&buf, &small),
            Err(FrameError::EntryTooLarge { entry: 2, .. })
        ));
    }

    #[test]
    fn encoder_reports_full_and_too_large() {
        let mut small = [0u8; 80];
        let mut enc = FrameEncoder::new(&mut small, 1, 1, 1, FrameLimits::default()).unwrap();
        let e = EntryRef { kind: EntryKind::Normal, session: 1, seq: 1, data: &[1; 8] };
        enc.push(e).unwrap();
        assert_eq!(enc.push(e), Err(EncodeError::Full { len: 8 }));
        let limits = FrameLimits { entry_bytes_max: 4, ..FrameLimits::default() };
        let mut buf = [0u8; 200];
        let mut enc = FrameEncoder::new(&mut buf, 1, 1, 1, limits).unwrap();
        assert_eq!(enc.push(e), Err(EncodeError::TooLarge { len: 8 }));
    }

    #[test]
    fn a_frame_with_a_huge_declared_length_is_rejected_without_reading_it() {
        let mut buf = Vec::new();
        sample(&mut buf);
        let (h, _) = FrameHeader::mut_from_prefix(&mut buf).unwrap();
        h.payload_len = U32::new(u32::MAX);
        assert!(matches!(
            Frame::decode(&buf, &FrameLimits::default()),
            Err(FrameError::PayloadTooLarge { len: u32::MAX, .. })
        ));
    }
}
