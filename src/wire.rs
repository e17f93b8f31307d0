//! The envelope of every message on a corelog TCP connection, between peers and from clients.
//!
//! ```text
//! message = envelope(40) meta[meta_len] frames[body_len - meta_len]
//! envelope = magic u32 | version u16 | kind u8 | flags u8 | meta_len u32 | body_len u32
//!          | group u64 | id u64 | reserved u32 | crc u32
//! ```
//!
//! - `meta` is the small, kind-specific part (a vote request's fields, an append's
//!   `prev_index`/`prev_term`/`commit`, a client request's session). The envelope's CRC32C
//!   covers the envelope fields before `crc` and the meta.
//! - `frames` are whole batch frames ([`crate::frame`]), each with its own checksum, laid end to
//!   end. They are the bytes the leader wrote to its log, sent as they are; a follower verifies
//!   each frame's checksum and writes the same bytes to its log. So the payload is checksummed
//!   once, where it is built, and never re-encoded.
//! - `id` tags a client request and its response (many requests may be in flight on one
//!   connection); between peers it carries the sender's node id.
//! - A receiver checks `magic`, `version`, `kind`, the lengths against its configured maximum
//!   and the CRC before it trusts anything, and reads `body_len` bytes only after the envelope
//!   passed those checks, so a 4 GiB length prefix is refused before anything is buffered.

use thiserror::Error;
use zerocopy::byteorder::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// "CLWR" as a little-endian u32.
pub const WIRE_MAGIC: u32 = u32::from_le_bytes(*b"CLWR");
/// The wire format version this build speaks.
pub const WIRE_VERSION: u16 = 1;
/// Size of [`Envelope`].
pub const ENVELOPE_LEN: usize = 40;
const CRC_OFFSET: usize = ENVELOPE_LEN - 4;

/// The fixed head of every message.
#[repr(C)]
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
pub struct Envelope {
    /// [`WIRE_MAGIC`].
    pub magic: U32,
    /// [`WIRE_VERSION`].
    pub version: U16,
    /// [`Kind`] code.
    pub kind: u8,
    /// Reserved, zero.
    pub flags: u8,
    /// Bytes of meta after the envelope.
    pub meta_len: U32,
    /// Bytes of meta and frames after the envelope.
    pub body_len: U32,
    /// The consensus group (0 for connection-level messages).
    pub group: U64,
    /// Request id (client connections) or sender node id (peer connections).
    pub id: U64,
    /// Reserved, zero.
    pub reserved: U32,
    /// CRC32C of the envelope before this field and of the meta.
    pub crc: U32,
}
const _: () = assert!(size_of::<Envelope>() == ENVELOPE_LEN);

/// Message kinds. Peer kinds are below 64, client kinds from 64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    /// First message on a peer connection: who is calling.
    Hello = 1,
    /// Answer to `Hello`.
    HelloOk = 2,
    /// A connection-level error, after which the sender closes.
    Error = 3,
    /// A consensus message between replicas.
    Raft = 4,
    /// A client request.
    Request = 64,
    /// A response to a client request.
    Response = 65,
}

impl Kind {
    /// The kind for a code.
    pub fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            1 => Kind::Hello,
            2 => Kind::HelloOk,
            3 => Kind::Error,
            4 => Kind::Raft,
            64 => Kind::Request,
            65 => Kind::Response,
            _ => return None,
        })
    }
}

/// Why bytes are not an acceptable message.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WireError {
    /// Fewer bytes than the envelope needs.
    #[error("truncated message: need {needed} bytes, have {available}")]
    Truncated { needed: usize, available: usize },
    /// Not a corelog message.
    #[error("bad magic {found:#010x}: not a corelog peer or client")]
    BadMagic { found: u32 },
    /// A version this build does not speak.
    #[error("unsupported wire version {found} (this build speaks {WIRE_VERSION})")]
    UnsupportedVersion { found: u16 },
    /// An unknown kind.
    #[error("unknown message kind {found}")]
    UnknownKind { found: u8 },
    /// A body larger than allowed.
    #[error("message body of {len} bytes exceeds the maximum of {max}")]
    TooLarge { len: u32, max: u32 },
    /// Meta longer than the body.
    #[error("meta length {meta} exceeds body length {body}")]
    BadLengths { meta: u32, body: u32 },
    /// The checksum does not match.
    #[error("message checksum mismatch")]
    ChecksumMismatch,
}

fn crc_of(envelope: &[u8], meta: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&envelope[..CRC_OFFSET]), meta)
}

/// Writes an envelope and `meta` at the end of `out`, for a message whose frames (of
/// `frames_len` bytes in all) the caller sends right after. Returns the bytes written.
pub fn encode(
    out: &mut Vec<u8>,
    kind: Kind,
    group: u64,
    id: u64,
    meta: &[u8],
    frames_len: usize,
) -> usize {
    let body_len = meta.len() + frames_len;
    let env = Envelope {
        magic: U32::new(WIRE_MAGIC),
        version: U16::new(WIRE_VERSION),
        kind: kind as u8,
        flags: 0,
        meta_len: U32::new(meta.len() as u32),
        body_len: U32::new(body_len as u32),
        group: U64::new(group),
        id: U64::new(id),
        reserved: U32::ZERO,
        crc: U32::ZERO,
    };
    let start = out.len();
    out.extend_from_slice(env.as_bytes());
    out.extend_from_slice(meta);
    let crc = crc_of(&out[start..start + ENVELOPE_LEN], meta);
    out[start + CRC_OFFSET..start + ENVELOPE_LEN].copy_from_slice(&crc.to_le_bytes());
    ENVELOPE_LEN + meta.len()
}

/// Sets the frames' length of the message whose envelope starts `msg` (written by [`encode`]
/// with `frames_len` 0, the frames appended after it), and its checksum accordingly. Lets a
/// sender build frames directly behind the envelope instead of in a buffer of their own.
pub fn set_frames_len(msg: &mut [u8], frames_len: usize) {
    let meta_len = {
        let (env, _) = Envelope::mut_from_prefix(msg).expect("an envelope was written here");
        let meta_len = env.meta_len.get();
        env.body_len = U32::new(meta_len + frames_len as u32);
        meta_len as usize
    };
    let (head, rest) = msg.split_at_mut(ENVELOPE_LEN);
    let crc = crc_of(head, &rest[..meta_len]);
    head[CRC_OFFSET..].copy_from_slice(&crc.to_le_bytes());
}

/// Checks an envelope read on its own (before the body is read): magic, version, kind and the
/// lengths against `body_max`. The checksum is verified by [`verify`] once the meta is in.
pub fn check_envelope(bytes: &[u8], body_max: u32) -> Result<&Envelope, WireError> {
    let Ok((env, _)) = Envelope::ref_from_prefix(bytes) else {
        return Err(WireError::Truncated { needed: ENVELOPE_LEN, available: bytes.len() });
    };
    if env.magic.get() != WIRE_MAGIC {
        return Err(WireError::BadMagic { found: env.magic.get() });
    }
    if env.version.get() != WIRE_VERSION {
        return Err(WireError::UnsupportedVersion { found: env.version.get() });
    }
    if Kind::from_code(env.kind).is_none() {
        return Err(WireError::UnknownKind { found: env.kind });
    }
    let (meta, body) = (env.meta_len.get(), env.body_len.get());
    if body > body_max {
        return Err(WireError::TooLarge { len: body, max: body_max });
    }
    if meta > body {
        return Err(WireError::BadLengths { meta, body });
    }
    Ok(env)
}

/// A whole message borrowed from a buffer: envelope checked, checksum verified.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    /// The envelope.
    pub envelope: &'a Envelope,
    /// The kind.
    pub kind: Kind,
    /// The meta bytes.
    pub meta: &'a [u8],
    /// The frames' bytes (each frame still to be verified by its own checksum).
    pub frames: &'a [u8],
}

/// Verifies a whole message at the start of `bytes` (envelope and body present).
pub fn verify(bytes: &[u8], body_max: u32) -> Result<Message<'_>, WireError> {
    let env = check_envelope(bytes, body_max)?;
    let total = ENVELOPE_LEN + env.body_len.get() as usize;
    if bytes.len() < total {
        return Err(WireError::Truncated { needed: total, available: bytes.len() });
    }
    let meta_end = ENVELOPE_LEN + env.meta_len.get() as usize;
    let meta = &bytes[ENVELOPE_LEN..meta_end];
    if crc_of(&bytes[..ENVELOPE_LEN], meta) != env.crc.get() {
        return Err(WireError::ChecksumMismatch);
    }
    Ok(Message {
        envelope: env,
        kind: Kind::from_code(env.kind).expect("checked"),
        meta,
        frames: &bytes[meta_end..total],
    })
}

/// Total length of the message whose envelope starts `bytes`, once the envelope is checked.
pub fn message_len(env: &Envelope) -> usize {
    ENVELOPE_LEN + env.body_len.get() as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejections() {
        let mut out = Vec::new();
        let n = encode(&mut out, Kind::Raft, 7, 3, b"meta!", 4);
        assert_eq!(n, ENVELOPE_LEN + 5);
        out.extend_from_slice(b"FRMS");
        let m = verify(&out, 1 << 20).unwrap();
        assert_eq!((m.kind, m.meta, m.frames), (Kind::Raft, &b"meta!"[..], &b"FRMS"[..]));
        assert_eq!(m.envelope.group.get(), 7);
        assert_eq!(message_len(m.envelope), out.len());
        // Every bit of the envelope and meta is covered.
        for i in 0..ENVELOPE_LEN + 5 {
            let mut bad = out.clone();
            bad[i] ^= 0x01;
            assert!(verify(&bad, 1 << 20).is_err(), "flip at {i}");
        }
        assert!(matches!(verify(&out, 8), Err(WireError::TooLarge { .. })));
        // Frames appended after the envelope, the length set afterwards.
        let mut late = Vec::new();
        encode(&mut late, Kind::Raft, 7, 3, b"meta!", 0);
        late.extend_from_slice(b"FRMS");
        set_frames_len(&mut late, 4);
        assert_eq!(late, out, "the same bytes as when the length is known up front");
        assert!(matches!(verify(&out[..20], 1 << 20), Err(WireError::Truncated { .. })));
        assert!(matches!(verify(&out[..out.len() - 1], 1 << 20), Err(WireError::Truncated { .. })));
        let mut huge = out.clone();
        huge[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(check_envelope(&huge, 1 << 20), Err(WireError::TooLarge { .. })));
        assert!(matches!(
            verify(b"GET / HTTP/1.1\r\nHost: example\r\nAccept: */*\r\n\r\n", 1 << 20),
            Err(WireError::BadMagic { .. })
        ));
    }
}
