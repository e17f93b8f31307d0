//! Hard state: the term, the vote and whatever else the consensus must not forget, in its own
//! small file of two 4 KiB slots.
//!
//! Each save writes the slot the previous save did not use, with a generation one higher and a
//! CRC32C over the slot, then fdatasyncs. A write torn by a crash damages only the slot being
//! written; the other still holds the previous state, and loading picks the valid slot with the
//! highest generation. Both slots damaged is corruption and is reported, never papered over:
//! forgetting a vote can elect two leaders in one term.

use std::path::{Path, PathBuf};
use std::rc::Rc;

use crate::rt::fs::DmaFile;
use zerocopy::byteorder::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::config::{BLOCK, SyncMethod};
use super::error::{LogError, LogResult};
use super::io;

const SLOT_MAGIC: u32 = u32::from_le_bytes(*b"CLHS");
const SLOT_VERSION: u16 = 1;
const SLOT_HEADER_LEN: usize = 56;
/// Largest opaque blob a hard state may carry.
pub const HARD_STATE_BLOB_MAX: usize = BLOCK - SLOT_HEADER_LEN;
/// File name of the hard state in a group's directory.
pub const HARD_STATE_FILE: &str = "hardstate";

#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
struct SlotHeader {
    magic: U32,
    version: U16,
    reserved: U16,
    group: U64,
    generation: U64,
    term: U64,
    vote: U64,
    commit: U64,
    blob_len: U32,
    crc: U32,
}
const _: () = assert!(size_of::<SlotHeader>() == SLOT_HEADER_LEN);

/// What the consensus persists besides the log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HardState {
    /// Current term.
    pub term: u64,
    /// Node voted for in `term` (0: none).
    pub vote: u64,
    /// Highest index known committed (a hint; safe to be behind).
    pub commit: u64,
    /// Anything else the consensus must keep (membership, snapshot metadata), at most
    /// [`HARD_STATE_BLOB_MAX`] bytes.
    pub blob: Vec<u8>,
}

/// Why a slot is not usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotState {
    Empty,
    Bad,
    Valid,
}

fn decode_slot(bytes: &[u8], group: u64) -> (SlotState, u64, HardState) {
    if bytes.iter().all(|&b| b == 0) {
        return (SlotState::Empty, 0, HardState::default());
    }
    let Ok((h, rest)) = SlotHeader::ref_from_prefix(bytes) else {
        return (SlotState::Bad, 0, HardState::default());
    };
    let blob_len = h.blob_len.get() as usize;
    if h.magic.get() != SLOT_MAGIC
        || h.version.get() != SLOT_VERSION
        || h.group.get() != group
        || blob_len > HARD_STATE_BLOB_MAX
        || rest.len() < blob_len
    {
        return (SlotState::Bad, 0, HardState::default());
    }
    let crc =
        crc32c::crc32c_append(crc32c::crc32c(&bytes[..SLOT_HEADER_LEN - 4]), &rest[..blob_len]);
    if crc != h.crc.get() {
        return (SlotState::Bad, 0, HardState::default());
    }
    let hs = HardState {
        term: h.term.get(),
        vote: h.vote.get(),
        commit: h.commit.get(),
        blob: rest[..blob_len].to_vec(),
    };
    (SlotState::Valid, h.generation.get(), hs)
}

fn encode_slot(out: &mut [u8], group: u64, generation: u64, hs: &HardState) {
    assert!(hs.blob.len() <= HARD_STATE_BLOB_MAX, "hard state blob too large");
    out.fill(0);
    let h = SlotHeader {
        magic: U32::new(SLOT_MAGIC),
        version: U16::new(SLOT_VERSION),
        reserved: U16::ZERO,
        group: U64::new(group),
        generation: U64::new(generation),
        term: U64::new(hs.term),
        vote: U64::new(hs.vote),
        commit: U64::new(hs.commit),
        blob_len: U32::new(hs.blob.len() as u32),
        crc: U32::ZERO,
    };
    out[..SLOT_HEADER_LEN].copy_from_slice(h.as_bytes());
    out[SLOT_HEADER_LEN..SLOT_HEADER_LEN + hs.blob.len()].copy_from_slice(&hs.blob);
    let crc = crc32c::crc32c_append(crc32c::crc32c(&out[..SLOT_HEADER_LEN - 4]), &hs.blob);
    out[SLOT_HEADER_LEN - 4..SLOT_HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
}

/// The hard-state file of one group.
#[derive(Debug)]
pub struct HardStateFile {
    file: DmaFile,
    path: PathBuf,
    group: u64,
    /// Generation of the newest valid slot (0: none written yet).
    generation: u64,
}

impl HardStateFile {
    /// Opens (creating if absent) the hard-state file in `dir`, returning the newest valid
    /// state, or `None` for a new log.
    pub async fn open(dir: &Path, group: u64) -> LogResult<(Self, Option<HardState>)> {
        let path = dir.join(HARD_STATE_FILE);
        io::prime_device(dir).await?;
        if !path.exists() {
            let tmp = dir.join(format!("{HARD_STATE_FILE}.tmp"));
            let file = io::create_rw(&tmp).await?;
            let mut zeros = io::alloc(&file, 2 * BLOCK);
            zeros.as_bytes_mut().fill(0);
            io::write_all_at(&file, &tmp, Rc::new(zeros), 0).await?;
            io::fdatasync(&file, &tmp).await?;
            io::close(file, &tmp).await?;
            io::rename(&tmp, &path).await?;
            io::sync_dir(dir).await?;
        }
        let file = io::open_rw(&path, SyncMethod::Fdatasync).await?;
        let bytes = io::read_at(&file, &path, 0, 2 * BLOCK).await?;
        if bytes.len() < 2 * BLOCK {
            return Err(LogError::Corruption {
                path,
                offset: bytes.len() as u64,
                first_index: 0,
                last_index: 0,
                detail: format!("hard-state file is {} bytes, expected {}", bytes.len(), 2 * BLOCK),
            });
        }
        let a = decode_slot(&bytes[..BLOCK], group);
        let b = decode_slot(&bytes[BLOCK..2 * BLOCK], group);
        let best = match (a.0, b.0) {
            (SlotState::Valid, SlotState::Valid) => Some(if a.1 >= b.1 { a } else { b }),
            (SlotState::Valid, _) => Some(a),
            (_, SlotState::Valid) => Some(b),
            (SlotState::Empty, SlotState::Empty) => None,
            _ => {
                return Err(LogError::Corruption {
                    path,
                    offset: 0,
                    first_index: 0,
                    last_index: 0,
                    detail: "both hard-state slots are damaged: the term and vote are lost".into(),
                });
            }
        };
        let generation = best.as_ref().map_or(0, |s| s.1);
        let state = best.map(|s| s.2);
        Ok((HardStateFile { file, path, group, generation }, state))
    }

    /// Durably replaces the hard state (written to the older slot, then fdatasync).
    pub async fn save(&mut self, hs: &HardState) -> LogResult<()> {
        if hs.blob.len() > HARD_STATE_BLOB_MAX {
            return Err(LogError::Config(format!(
                "hard-state blob of {} bytes exceeds {HARD_STATE_BLOB_MAX}",
                hs.blob.len()
            )));
        }
        let generation = self.generation + 1;
        let mut buf = io::alloc(&self.file, BLOCK);
        encode_slot(buf.as_bytes_mut(), self.group, generation, hs);
        let pos = (generation % 2) * BLOCK as u64;
        io::write_all_at(&self.file, &self.path, Rc::new(buf), pos).await?;
        io::fdatasync(&self.file, &self.path).await?;
        self.generation = generation;
        Ok(())
    }

    /// Closes the file.
    pub async fn close(self) -> LogResult<()> {
        io::close(self.file, &self.path).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_round_trip_and_damage() {
        let hs = HardState { term: 5, vote: 2, commit: 99, blob: b"members".to_vec() };
        let mut slot = vec![0u8; BLOCK];
        encode_slot(&mut slot, 7, 3, &hs);
        let (state, generation, back) = decode_slot(&slot, 7);
        assert_eq!((state, generation), (SlotState::Valid, 3));
        assert_eq!(back, hs);
        assert_eq!(decode_slot(&slot, 8).0, SlotState::Bad, "a foreign group is not ours");
        for at in [0, 20, SLOT_HEADER_LEN + 2] {
            let mut bad = slot.clone();
            bad[at] ^= 0x10;
            assert_eq!(decode_slot(&bad, 7).0, SlotState::Bad, "flip at {at}");
        }
        assert_eq!(decode_slot(&vec![0u8; BLOCK], 7).0, SlotState::Empty);
    }
}
