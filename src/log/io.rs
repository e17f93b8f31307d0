//! The only place the log touches the runtime's file API (`rt::fs`).
//!
//! Everything here is O_DIRECT through io_uring: segment and hard-state files are opened as
//! `DmaFile`s, written from 4 KiB-aligned `DmaBuffer`s, and synced with `fdatasync` or opened
//! `O_DSYNC`; a flush is one write linked to its fdatasync (`FlushRing`). Keeping the file API
//! behind these few functions keeps the group-commit logic in `mod.rs` free of the runtime.
//!
//! Directory listing at open uses `std::fs::read_dir` (blocking, once, before the log serves
//! anything); every other file-system operation is asynchronous.

use std::path::{Path, PathBuf};
use std::rc::Rc;

use crate::rt::WriteSync;
use crate::rt::fs::{DmaBuffer, DmaFile, OpenOptions};
pub(crate) use crate::rt::to_io;

use super::config::{BLOCK, SyncMethod};
use super::error::{LogError, LogResult};

/// Prepares the device under `dir` for the runtime's first file on it (see
/// `rt::fs::prime_device`).
pub(crate) async fn prime_device(dir: &Path) -> LogResult<()> {
    crate::rt::fs::prime_device(dir)
        .await
        .map_err(|(what, path, e)| LogError::io(what, &path, 0, e))
}

/// Opens an existing file for O_DIRECT reads and writes, optionally O_DSYNC.
pub(crate) async fn open_rw(path: &Path, sync: SyncMethod) -> LogResult<DmaFile> {
    let mut opts = OpenOptions::new();
    opts.read(true).write(true);
    if sync == SyncMethod::Dsync {
        opts.custom_flags(libc::O_DSYNC);
    }
    opts.dma_open(path).await.map_err(|e| LogError::io("opening", path, 0, to_io(e)))
}

/// Creates (or truncates) a file for O_DIRECT writes.
pub(crate) async fn create_rw(path: &Path) -> LogResult<DmaFile> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .dma_open(path)
        .await
        .map_err(|e| LogError::io("creating", path, 0, to_io(e)))
}

/// Fault injection for tests of the failure paths (EIO on a write, a failed fdatasync), which
/// a real device cannot be made to produce on demand here (no device-mapper in CI). Per
/// executor thread, so concurrent tests do not disturb each other; off unless a test arms it.
pub mod faults {
    use std::cell::Cell;

    thread_local! {
        static WRITE_FAILS_AFTER: Cell<Option<u64>> = const { Cell::new(None) };
        static SYNC_FAILS_AFTER: Cell<Option<u64>> = const { Cell::new(None) };
    }

    /// The next `n` writes on this thread succeed; the one after fails with EIO.
    pub fn fail_write_after(n: u64) {
        WRITE_FAILS_AFTER.with(|c| c.set(Some(n)));
    }

    /// The next `n` syncs on this thread (fdatasyncs, and writes flagged `RWF_DSYNC`, whose
    /// write then goes out unflagged) succeed; the one after fails with EIO.
    pub fn fail_fdatasync_after(n: u64) {
        SYNC_FAILS_AFTER.with(|c| c.set(Some(n)));
    }

    /// Disarms both.
    pub fn clear() {
        WRITE_FAILS_AFTER.with(|c| c.set(None));
        SYNC_FAILS_AFTER.with(|c| c.set(None));
    }

    fn take(cell: &'static std::thread::LocalKey<Cell<Option<u64>>>) -> bool {
        cell.with(|c| match c.get() {
            None => false,
            Some(0) => {
                c.set(None);
                true
            }
            Some(n) => {
                c.set(Some(n - 1));
                false
            }
        })
    }

    pub(crate) fn write_should_fail() -> bool {
        take(&WRITE_FAILS_AFTER)
    }

    pub(crate) fn sync_should_fail() -> bool {
        take(&SYNC_FAILS_AFTER)
    }
}

/// The error a test's fault injection produces: EIO.
fn injected_eio(what: &'static str, path: &Path, pos: u64) -> LogError {
    LogError::io(what, path, pos, std::io::Error::from_raw_os_error(libc::EIO))
}

/// A write of `n` bytes where `len` were asked for: anything short is an error.
fn check_whole(path: &Path, pos: u64, n: usize, len: usize) -> LogResult<()> {
    if n == len {
        return Ok(());
    }
    Err(LogError::io(
        "writing",
        path,
        pos,
        std::io::Error::new(
            std::io::ErrorKind::WriteZero,
            format!("short write: {n} of {len} bytes"),
        ),
    ))
}

/// Writes a whole aligned buffer at `pos`; a short write is an error.
pub(crate) async fn write_all_at(
    file: &DmaFile,
    path: &Path,
    buf: Rc<DmaBuffer>,
    pos: u64,
) -> LogResult<()> {
    if faults::write_should_fail() {
        return Err(injected_eio("writing", path, pos));
    }
    debug_assert_eq!(pos % BLOCK as u64, 0);
    debug_assert_eq!(buf.len() % BLOCK, 0);
    let len = buf.len();
    let n = file
        .write_rc_at(buf, pos)
        .await
        .map_err(|e| LogError::io("writing", path, pos, to_io(e)))?;
    check_whole(path, pos, n, len)?;
    Ok(())
}

/// Writes a whole aligned buffer at `pos`, made durable as `sync` says (an fdatasync in the same
/// chain, or the write flagged `RWF_DSYNC`), on the runtime's flush path (`rt::fs::FlushRing`).
/// Errors are reported as by [`write_all_at`] and [`fdatasync`]; the fault injection of tests
/// applies the same way (an `RWF_DSYNC` write counts as a write and a sync).
pub(crate) async fn write_then_sync(
    ring: &crate::rt::fs::FlushRing,
    file: &DmaFile,
    path: &Path,
    buf: Rc<DmaBuffer>,
    pos: u64,
    sync: WriteSync,
) -> LogResult<()> {
    if faults::write_should_fail() {
        return Err(injected_eio("writing", path, pos));
    }
    let fail_sync = sync != WriteSync::None && faults::sync_should_fail();
    debug_assert_eq!(pos % BLOCK as u64, 0);
    debug_assert_eq!(buf.len() % BLOCK, 0);
    let len = buf.len();
    let r = ring
        .write_then_sync(file, buf, pos, if fail_sync { WriteSync::None } else { sync })
        .await
        .map_err(|e| LogError::io("writing", path, pos, e))?;
    let what = if sync == WriteSync::Dsync { "writing (RWF_DSYNC)" } else { "writing" };
    let n = r.write.map_err(|e| LogError::io(what, path, pos, e))?;
    check_whole(path, pos, n, len)?;
    if fail_sync {
        return Err(match sync {
            WriteSync::Dsync => injected_eio(what, path, pos),
            _ => injected_eio("fdatasync", path, 0),
        });
    }
    if let Some(s) = r.sync {
        s.map_err(|e| LogError::io("fdatasync", path, 0, e))?;
    }
    Ok(())
}

/// `fdatasync` of a file.
pub(crate) async fn fdatasync(file: &DmaFile, path: &Path) -> LogResult<()> {
    if faults::sync_should_fail() {
        return Err(injected_eio("fdatasync", path, 0));
    }
    file.fdatasync().await.map_err(|e| LogError::io("fdatasync", path, 0, to_io(e)))
}

/// Reads `len` bytes at `pos` (any alignment; the runtime widens the read to blocks).
pub(crate) async fn read_at(
    file: &DmaFile,
    path: &Path,
    pos: u64,
    len: usize,
) -> LogResult<crate::rt::fs::ReadResult> {
    let r =
        file.read_at(pos, len).await.map_err(|e| LogError::io("reading", path, pos, to_io(e)))?;
    Ok(r)
}

/// Makes directory entries (creations, renames, removals) durable.
pub(crate) async fn sync_dir(dir: &Path) -> LogResult<()> {
    let d = crate::rt::fs::Directory::open(dir)
        .await
        .map_err(|e| LogError::io("opening directory", dir, 0, to_io(e)))?;
    d.sync().await.map_err(|e| LogError::io("syncing directory", dir, 0, to_io(e)))?;
    d.close().await.map_err(|e| LogError::io("closing directory", dir, 0, to_io(e)))?;
    Ok(())
}

/// Renames a file (not yet durable: follow with [`sync_dir`]).
pub(crate) async fn rename(from: &Path, to: &Path) -> LogResult<()> {
    crate::rt::fs::rename(from, to).await.map_err(|e| LogError::io("renaming", from, 0, to_io(e)))
}

/// Removes a file (not yet durable: follow with [`sync_dir`]).
pub(crate) async fn remove(path: &Path) -> LogResult<()> {
    crate::rt::fs::remove(path).await.map_err(|e| LogError::io("removing", path, 0, to_io(e)))
}

/// Closes a file, reporting errors.
pub(crate) async fn close(file: DmaFile, path: &Path) -> LogResult<()> {
    file.close().await.map_err(|e| LogError::io("closing", path, 0, to_io(e)))
}

/// Allocates an aligned buffer of `len` bytes (a multiple of [`BLOCK`]).
pub(crate) fn alloc(file: &DmaFile, len: usize) -> DmaBuffer {
    debug_assert_eq!(len % BLOCK, 0);
    file.alloc_dma_buffer(len)
}

/// Creates a segment file of `size` bytes, allocated and written once with zeros, synced, so
/// that later writes are pure overwrites of written blocks: a flush then commits no file-system
/// metadata (an fdatasync after writing into fresh or unwritten extents must also journal the
/// extent conversion). The file is created under a temporary name and renamed into place, so a
/// crash never leaves a half-prepared spare under a spare's name.
pub(crate) async fn prepare_zeroed(
    dir: &Path,
    tmp: &Path,
    final_path: &Path,
    size: u64,
) -> LogResult<()> {
    let no_space = |e: LogError| match e {
        e if e.is_no_space() => LogError::NoSpace {
            dir: dir.to_path_buf(),
            source: match e {
                LogError::Io { source, .. } => source,
                _ => std::sync::Arc::new(std::io::Error::from(std::io::ErrorKind::StorageFull)),
            },
        },
        e => e,
    };
    let file = create_rw(tmp).await?;
    let result = async {
        file.pre_allocate(size, false)
            .await
            .map_err(|e| LogError::io("allocating", tmp, 0, to_io(e)))?;
        const CHUNK: usize = 1 << 20;
        let mut zeros = alloc(&file, CHUNK);
        zeros.as_bytes_mut().fill(0);
        let zeros = Rc::new(zeros);
        let mut pos = 0u64;
        while pos < size {
            let n = CHUNK.min((size - pos) as usize);
            if n == CHUNK {
                write_all_at(&file, tmp, zeros.clone(), pos).await?;
            } else {
                let mut tail = alloc(&file, n);
                tail.as_bytes_mut().fill(0);
                write_all_at(&file, tmp, Rc::new(tail), pos).await?;
            }
            pos += n as u64;
        }
        fdatasync(&file, tmp).await
    }
    .await;
    let closed = close(file, tmp).await;
    if let Err(e) = result.and(closed) {
        let _ = remove(tmp).await;
        return Err(no_space(e));
    }
    rename(tmp, final_path).await?;
    sync_dir(dir).await
}

/// Whether O_DIRECT is really in effect for files in `dir` (it is not on tmpfs, which accepts
/// O_DIRECT since Linux 6.6 but keeps every byte in memory).
pub fn direct_io_effective(dir: &Path) -> bool {
    filesystem_type(dir).map(|t| t != libc::TMPFS_MAGIC).unwrap_or(false)
}

/// `statfs` of the file system under `dir`.
fn statfs(dir: &Path) -> Option<libc::statfs> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a valid out-pointer.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    (rc == 0).then_some(st)
}

/// The file-system magic of `dir` (statfs `f_type`).
#[allow(clippy::unnecessary_cast)] // the field's type differs between targets
pub fn filesystem_type(dir: &Path) -> Option<i64> {
    statfs(dir).map(|st| st.f_type as i64)
}

/// Bytes an unprivileged writer may still use on the file system under `dir`.
#[allow(clippy::unnecessary_cast)] // the fields' types differ between targets
pub(crate) fn free_bytes(dir: &Path) -> Option<u64> {
    statfs(dir).map(|st| (st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

/// Names in a directory (blocking; used once at open).
pub(crate) fn list_dir(dir: &Path) -> LogResult<Vec<PathBuf>> {
    let rd = std::fs::read_dir(dir).map_err(|e| LogError::io("listing", dir, 0, e))?;
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| LogError::io("listing", dir, 0, e))?;
        out.push(entry.path());
    }
    out.sort();
    Ok(out)
}
