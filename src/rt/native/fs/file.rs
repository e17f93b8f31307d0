//! O_DIRECT files on the executor's ring, and the aligned buffers they are written from.
//!
//! Every operation is one submission (open, fallocate, write, read, fdatasync, close, rename,
//! unlink), or for a flush one chain of two (a write linked to its fdatasync,
//! [`DmaFile::write_then_sync`]); the buffer or path an operation uses is held by its slot
//! until the kernel's completion, so a dropped future never leaves the kernel writing into
//! freed memory.
//!
//! Buffers are 4 KiB-aligned heap memory, recycled through a per-thread pool by capacity, so
//! a log that takes a fresh buffer per flush does not page-fault a new mapping each time. A
//! buffer written from is registered with the executor's ring the first time (a fixed buffer,
//! kept registered while pooled): the kernel then pins its pages once instead of at every
//! write, which cost ~12% of an executor's time at 2.6 GiB/s of flushes.

use std::cell::{Cell, RefCell};
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::ptr::NonNull;
use std::rc::Rc;

use io_uring::{opcode, types};

use super::super::exec::{Op, Runtime, check, current, try_current, write_then_fdatasync};
use crate::rt::WriteSync;

/// Alignment of every buffer: a page, which covers any logical block size.
const ALIGN: usize = 4096;

/// A buffer's registration with a ring: (the runtime's id, the index in its table).
type Fixed = Option<(u64, u16)>;

/// A free buffer: its memory and its registration.
type Free = (NonNull<u8>, Fixed);

/// Free buffers by capacity; freed for good when the thread ends.
struct Pool(Vec<(usize, Vec<Free>)>);

impl Pool {
    fn of(&mut self, cap: usize) -> &mut Vec<Free> {
        let i = match self.0.iter().position(|(c, _)| *c == cap) {
            Some(i) => i,
            None => {
                self.0.push((cap, Vec::new()));
                self.0.len() - 1
            }
        };
        &mut self.0[i].1
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        for (cap, bufs) in &self.0 {
            for &(p, fixed) in bufs {
                release(p, *cap, fixed);
            }
        }
    }
}

thread_local! {
    static POOL: RefCell<Pool> = const { RefCell::new(Pool(Vec::new())) };
    static POOL_BYTES: Cell<usize> = const { Cell::new(0) };
    static POOL_MAX: Cell<usize> = const { Cell::new(64 << 20) };
}

/// Most bytes of free buffers the current thread keeps for reuse.
pub(crate) fn set_pool_bytes(max: usize) {
    POOL_MAX.with(|m| m.set(max));
}

/// The capacity a buffer of `len` bytes gets: whole pages. (A user of many buffers asks for
/// the same few sizes again and again, so exact sizes are reused as well as classes would be,
/// without doubling a 1 MiB + 4 KiB flush buffer to 2 MiB.)
fn capacity_of(len: usize) -> usize {
    len.max(ALIGN).div_ceil(ALIGN) * ALIGN
}

fn layout(cap: usize) -> std::alloc::Layout {
    std::alloc::Layout::from_size_align(cap, ALIGN).expect("buffer layout")
}

/// Frees a buffer's memory, first taking it out of its ring's table if it is registered and
/// that ring is this thread's (a ring that is gone took its table with it).
fn release(ptr: NonNull<u8>, cap: usize, fixed: Fixed) {
    if let (Some((id, idx)), Some(rt)) = (fixed, try_current())
        && rt.id == id
    {
        rt.unregister_buffer(idx);
    }
    // SAFETY: allocated by `DmaBuffer::new` with this layout, owned by the caller.
    unsafe { std::alloc::dealloc(ptr.as_ptr(), layout(cap)) };
}

/// A 4 KiB-aligned buffer for O_DIRECT I/O.
pub struct DmaBuffer {
    ptr: NonNull<u8>,
    len: usize,
    cap: usize,
    /// Registered with a ring (see [`DmaBuffer::fixed_index`]).
    fixed: Cell<Fixed>,
}

impl std::fmt::Debug for DmaBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DmaBuffer").field("len", &self.len).finish()
    }
}

impl DmaBuffer {
    /// A buffer of `len` bytes (contents unspecified).
    pub fn new(len: usize) -> DmaBuffer {
        let cap = capacity_of(len);
        let reused = POOL.try_with(|p| p.borrow_mut().of(cap).pop()).ok().flatten();
        let (ptr, fixed) = match reused {
            Some(reused) => {
                POOL_BYTES.with(|b| b.set(b.get() - cap));
                reused
            }
            None => {
                // SAFETY: the layout has a non-zero size. Zeroed, so every byte of a buffer is
                // initialised from the start (large zeroed allocations are fresh mappings).
                let p = unsafe { std::alloc::alloc_zeroed(layout(cap)) };
                let p =
                    NonNull::new(p).unwrap_or_else(|| std::alloc::handle_alloc_error(layout(cap)));
                (p, None)
            }
        };
        DmaBuffer { ptr, len, cap, fixed: Cell::new(fixed) }
    }

    /// Its index in `rt`'s table of fixed buffers, registering it there first if needed;
    /// `None` if it cannot be registered (then it is written from as plain memory).
    fn fixed_index(&self, rt: &Runtime) -> Option<u16> {
        match self.fixed.get() {
            Some((id, idx)) if id == rt.id => Some(idx),
            _ => {
                // SAFETY: the whole allocation, which lives until `release` (which takes it
                // out of the table first) or past the ring (buffers stay on their thread).
                let idx = unsafe { rt.register_buffer(self.ptr.as_ptr(), self.cap) }?;
                self.fixed.set(Some((rt.id, idx)));
                Some(idx)
            }
        }
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Its bytes.
    pub fn as_bytes(&self) -> &[u8] {
        // SAFETY: `ptr` is valid for `cap >= len` bytes, owned by this buffer, and every byte
        // was initialised (zeroed at allocation, written since).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// Its bytes, for writing.
    pub fn as_bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, and `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    /// Its first byte.
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    /// Its first byte, for writing.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Shortens it to `len` bytes (no more than it holds).
    pub fn trim_to_size(&mut self, len: usize) {
        assert!(len <= self.len, "trim_to_size beyond the buffer");
        self.len = len;
    }
}

impl Drop for DmaBuffer {
    fn drop(&mut self) {
        let cap = self.cap;
        let kept = POOL.try_with(|p| {
            let room = POOL_BYTES.with(|b| b.get()) + cap <= POOL_MAX.with(|m| m.get());
            if !room {
                return false;
            }
            p.borrow_mut().of(cap).push((self.ptr, self.fixed.get()));
            POOL_BYTES.with(|b| b.set(b.get() + cap));
            true
        });
        if kept != Ok(true) {
            release(self.ptr, cap, self.fixed.get());
        }
    }
}

/// A write of `buf` at `pos` with `rw_flags` (`RWF_*`): from the ring's fixed buffer when it
/// is (or can be) registered.
fn write_entry(fd: types::Fd, buf: &DmaBuffer, pos: u64, rw_flags: i32) -> io_uring::squeue::Entry {
    let len = buf.len() as u32;
    match buf.fixed_index(&current()) {
        Some(idx) => opcode::WriteFixed::new(fd, buf.as_ptr(), len, idx)
            .offset(pos)
            .rw_flags(rw_flags)
            .build(),
        None => opcode::Write::new(fd, buf.as_ptr(), len).offset(pos).rw_flags(rw_flags).build(),
    }
}

/// Bytes read from a file: a window into the aligned buffer the read went to. Clones share it.
#[derive(Clone)]
pub struct ReadResult {
    buf: Rc<DmaBuffer>,
    start: usize,
    len: usize,
}

impl std::fmt::Debug for ReadResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadResult").field("len", &self.len).finish()
    }
}

impl ReadResult {
    /// `len` bytes from `start` of `r`, sharing its buffer; `None` if out of range.
    pub fn slice(r: &ReadResult, start: usize, len: usize) -> Option<ReadResult> {
        (start.checked_add(len)? <= r.len).then(|| ReadResult {
            buf: r.buf.clone(),
            start: r.start + start,
            len,
        })
    }
}

impl std::ops::Deref for ReadResult {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.buf.as_bytes()[self.start..self.start + self.len]
    }
}

fn cpath(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a path with a NUL byte"))
}

async fn open_at(path: &Path, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    let c = cpath(path)?;
    let ptr = c.as_ptr();
    let e = opcode::OpenAt::new(types::Fd(libc::AT_FDCWD), ptr)
        .flags(flags | libc::O_CLOEXEC)
        .mode(mode)
        .build();
    let fd = check(Op::submit_open(e, Some(Box::new(c))).await)?;
    // SAFETY: a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Options for opening a [`DmaFile`] (always O_DIRECT).
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    read: bool,
    write: bool,
    create: bool,
    truncate: bool,
    custom: i32,
}

impl OpenOptions {
    /// Nothing set.
    pub fn new() -> OpenOptions {
        OpenOptions::default()
    }

    /// Open for reading.
    pub fn read(&mut self, on: bool) -> &mut OpenOptions {
        self.read = on;
        self
    }

    /// Open for writing.
    pub fn write(&mut self, on: bool) -> &mut OpenOptions {
        self.write = on;
        self
    }

    /// Create it if missing.
    pub fn create(&mut self, on: bool) -> &mut OpenOptions {
        self.create = on;
        self
    }

    /// Cut it to nothing.
    pub fn truncate(&mut self, on: bool) -> &mut OpenOptions {
        self.truncate = on;
        self
    }

    /// Extra `open(2)` flags (O_DSYNC).
    pub fn custom_flags(&mut self, flags: i32) -> &mut OpenOptions {
        self.custom = flags;
        self
    }

    /// Opens `path` with O_DIRECT.
    pub async fn dma_open(&self, path: &Path) -> io::Result<DmaFile> {
        let mut flags = match (self.read, self.write) {
            (true, true) => libc::O_RDWR,
            (false, true) => libc::O_WRONLY,
            _ => libc::O_RDONLY,
        };
        if self.create {
            flags |= libc::O_CREAT;
        }
        if self.truncate {
            flags |= libc::O_TRUNC;
        }
        flags |= libc::O_DIRECT | self.custom;
        let fd = open_at(path, flags, 0o644).await?;
        Ok(DmaFile { fd: Some(Rc::new(fd)) })
    }
}

/// A file opened with O_DIRECT.
///
/// Every operation in the ring holds the descriptor too (an `Rc`), so it is closed only when
/// the file is dropped and nothing the kernel has yet to run names it: a write can never land
/// in another file that reused the number.
#[derive(Debug)]
pub struct DmaFile {
    /// `None` once closed.
    fd: Option<Rc<OwnedFd>>,
}

/// Results of a write linked to its fdatasync.
#[derive(Debug)]
pub struct ChainResult {
    /// Bytes written, or the write's error.
    pub write: io::Result<usize>,
    /// The fdatasync's result, if there was one.
    pub sync: Option<io::Result<()>>,
}

impl DmaFile {
    fn fd(&self) -> RawFd {
        self.fd.as_ref().expect("file used after close").as_raw_fd()
    }

    /// The descriptor, for an op to hold until its completion.
    fn hold(&self) -> Rc<OwnedFd> {
        self.fd.as_ref().expect("file used after close").clone()
    }

    /// Opens `path` for O_DIRECT reads.
    pub async fn open(path: &Path) -> io::Result<DmaFile> {
        OpenOptions::new().read(true).dma_open(path).await
    }

    /// An aligned buffer for this file.
    pub fn alloc_dma_buffer(&self, len: usize) -> DmaBuffer {
        DmaBuffer::new(len)
    }

    /// Allocates `size` bytes of blocks (`keep_size`: without changing the file's length).
    pub async fn pre_allocate(&self, size: u64, keep_size: bool) -> io::Result<()> {
        let mode = if keep_size { libc::FALLOC_FL_KEEP_SIZE } else { 0 };
        let e = opcode::Fallocate::new(types::Fd(self.fd()), size).mode(mode).build();
        check(Op::submit(e, Some(Box::new(self.hold())), false).await).map(|_| ())
    }

    /// Writes the whole of `buf` at `pos`; returns the bytes written (short only on error).
    pub async fn write_rc_at(&self, buf: Rc<DmaBuffer>, pos: u64) -> io::Result<usize> {
        let e = write_entry(types::Fd(self.fd()), &buf, pos, 0);
        check(Op::submit(e, Some(Box::new((buf, self.hold()))), false).await)
    }

    /// Writes `buf` at `pos`, made durable as `sync` says: with `WriteSync::Fdatasync` as one
    /// chain of two linked submissions (see `exec::write_then_fdatasync`: a failed or short
    /// write reports its error and the fdatasync does not run, or runs and reports its own
    /// result); with `WriteSync::Dsync` as one write flagged `RWF_DSYNC`, whose result
    /// includes the sync's.
    pub async fn write_then_sync(
        &self,
        buf: Rc<DmaBuffer>,
        pos: u64,
        sync: WriteSync,
    ) -> io::Result<ChainResult> {
        let fd = types::Fd(self.fd());
        if sync != WriteSync::Fdatasync {
            let w = write_entry(fd, &buf, pos, sync.rw_flags());
            let r = Op::submit(w, Some(Box::new((buf, self.hold()))), false).await;
            return Ok(ChainResult { write: check(r), sync: None });
        }
        let w = write_entry(fd, &buf, pos, 0);
        let len = buf.len();
        let s = opcode::Fsync::new(fd).flags(types::FsyncFlags::DATASYNC).build();
        // The head's slot holds the buffer and the descriptor until the tail has run.
        let (w, s) = write_then_fdatasync(w, s, Box::new((buf, self.hold()))).wait(len).await;
        Ok(ChainResult { write: check(w), sync: s.map(|s| check(s).map(|_| ())) })
    }

    /// Reads `len` bytes at `pos` (any alignment: the read is widened to blocks). Fewer bytes
    /// come back at the end of the file.
    pub async fn read_at(&self, pos: u64, len: usize) -> io::Result<ReadResult> {
        let start = pos - pos % ALIGN as u64;
        let end = (pos + len as u64).div_ceil(ALIGN as u64) * ALIGN as u64;
        let want = (end - start) as usize;
        let buf = Rc::new(DmaBuffer::new(want));
        let mut got = 0usize;
        while got < want {
            // SAFETY: the kernel writes into `buf`, which the op's slot keeps alive; nothing
            // reads those bytes before the completion.
            let ptr = unsafe { (buf.as_ptr() as *mut u8).add(got) };
            let e = opcode::Read::new(types::Fd(self.fd()), ptr, (want - got) as u32)
                .offset(start + got as u64)
                .build();
            let n = check(Op::submit(e, Some(Box::new((buf.clone(), self.hold()))), false).await)?;
            if n == 0 {
                break;
            }
            got += n;
            if !got.is_multiple_of(ALIGN) {
                break;
            }
        }
        let skip = (pos - start) as usize;
        let have = got.saturating_sub(skip).min(len);
        Ok(ReadResult { buf, start: skip, len: have })
    }

    /// fdatasync.
    pub async fn fdatasync(&self) -> io::Result<()> {
        let e = opcode::Fsync::new(types::Fd(self.fd())).flags(types::FsyncFlags::DATASYNC).build();
        check(Op::submit(e, Some(Box::new(self.hold())), false).await).map(|_| ())
    }

    /// Closes it, reporting the error `close(2)` returns. If operations the kernel has yet to
    /// finish still hold the descriptor (the file's users drain theirs first, so this is a
    /// cancelled one), it is closed when the last of them completes, and this reports success.
    pub async fn close(mut self) -> io::Result<()> {
        let rc = self.fd.take().expect("file closed twice");
        let Ok(fd) = Rc::try_unwrap(rc) else { return Ok(()) };
        let e = opcode::Close::new(types::Fd(fd.into_raw_fd())).build();
        check(Op::submit(e, None, false).await).map(|_| ())
    }
}

impl AsRawFd for DmaFile {
    fn as_raw_fd(&self) -> RawFd {
        self.fd()
    }
}

/// A directory, opened to make its entries durable.
#[derive(Debug)]
pub struct Directory {
    fd: Option<OwnedFd>,
}

impl Directory {
    /// Opens `path`.
    pub async fn open(path: &Path) -> io::Result<Directory> {
        let fd = open_at(path, libc::O_RDONLY | libc::O_DIRECTORY, 0).await?;
        Ok(Directory { fd: Some(fd) })
    }

    /// fsync of the directory: creations, renames and removals in it become durable.
    pub async fn sync(&self) -> io::Result<()> {
        let fd = self.fd.as_ref().expect("directory used after close").as_raw_fd();
        let e = opcode::Fsync::new(types::Fd(fd)).build();
        check(Op::submit(e, None, false).await).map(|_| ())
    }

    /// Closes it.
    pub async fn close(mut self) -> io::Result<()> {
        let fd = self.fd.take().expect("directory closed twice").into_raw_fd();
        let e = opcode::Close::new(types::Fd(fd)).build();
        check(Op::submit(e, None, false).await).map(|_| ())
    }
}

/// Renames `from` to `to`.
pub async fn rename(from: impl AsRef<Path>, to: impl AsRef<Path>) -> io::Result<()> {
    let (f, t) = (cpath(from.as_ref())?, cpath(to.as_ref())?);
    let e = opcode::RenameAt::new(
        types::Fd(libc::AT_FDCWD),
        f.as_ptr(),
        types::Fd(libc::AT_FDCWD),
        t.as_ptr(),
    )
    .build();
    check(Op::submit(e, Some(Box::new((f, t))), false).await).map(|_| ())
}

/// Removes the file `path`.
pub async fn remove(path: impl AsRef<Path>) -> io::Result<()> {
    let c = cpath(path.as_ref())?;
    let e = opcode::UnlinkAt::new(types::Fd(libc::AT_FDCWD), c.as_ptr()).build();
    check(Op::submit(e, Some(Box::new(c)), false).await).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::super::super::exec::block_on;
    use super::*;

    /// A flush written with `WriteSync::Dsync` reaches the kernel flagged `RWF_DSYNC` (and no
    /// other write is): nothing else would show its absence, since a flush acknowledged
    /// without its sync looks the same until the power fails. The flags are read from the
    /// submission entry itself (kernel ABI: opcode at byte 0, `rw_flags` at bytes 28..32).
    #[test]
    fn a_dsync_flush_write_is_flagged_rwf_dsync() {
        block_on(
            || async {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("f");
                let f = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .dma_open(&path)
                    .await
                    .unwrap();
                let buf = Rc::new(DmaBuffer::new(4096));
                // Registered by its first write.
                f.write_rc_at(buf.clone(), 0).await.unwrap();
                for (sync, want) in [
                    (WriteSync::Dsync, libc::RWF_DSYNC),
                    (WriteSync::Fdatasync, 0),
                    (WriteSync::None, 0),
                ] {
                    let e = write_entry(types::Fd(f.fd()), &buf, 0, sync.rw_flags());
                    // SAFETY: `Entry` is `repr(C)` around the kernel's 64-byte SQE.
                    let raw: [u8; 64] = unsafe { std::mem::transmute(e) };
                    let op = raw[0];
                    assert!(
                        op == opcode::Write::CODE || op == opcode::WriteFixed::CODE,
                        "opcode {op}"
                    );
                    let flags = i32::from_le_bytes(raw[28..32].try_into().unwrap());
                    assert_eq!(flags, want, "{sync:?}");
                }
                // And the write so flagged succeeds on an O_DIRECT file.
                let r = f.write_then_sync(buf, 0, WriteSync::Dsync).await.unwrap();
                assert_eq!(r.write.unwrap(), 4096);
                f.close().await.unwrap();
            },
            None,
            None,
        )
        .unwrap();
    }

    /// Writes `fill` from a 64 KiB pooled buffer into `path` and reads it back; returns the
    /// runtime the write ran on and the buffer's registration after it.
    async fn write_and_check(path: &Path, fill: u8) -> (u64, Fixed) {
        let f =
            OpenOptions::new().read(true).write(true).create(true).dma_open(path).await.unwrap();
        let mut buf = DmaBuffer::new(64 << 10);
        buf.as_bytes_mut().fill(fill);
        let buf = Rc::new(buf);
        assert_eq!(f.write_rc_at(buf.clone(), 0).await.unwrap(), 64 << 10);
        let fixed = buf.fixed.get();
        drop(buf);
        let back = f.read_at(0, 64 << 10).await.unwrap();
        assert!(back.iter().all(|&b| b == fill), "read back other bytes than {fill}");
        f.close().await.unwrap();
        (current().id, fixed)
    }

    /// A written buffer is registered with its ring and stays so while pooled; on a later
    /// ring of the same thread (a new executor) the pooled buffer is registered anew, never
    /// used by a stale index, and the bytes written are still the buffer's.
    #[test]
    fn a_pooled_buffer_is_registered_with_the_ring_it_is_written_on() {
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let path = dir.path().join("f");
        std::thread::spawn(move || {
            let on_a_new_ring = |fill| {
                let p = path.clone();
                block_on(|| async move { write_and_check(&p, fill).await }, None, None).unwrap()
            };
            let (id1, fixed1) = on_a_new_ring(1);
            let (id2, fixed2) = on_a_new_ring(2);
            assert_ne!(id1, id2);
            match (fixed1, fixed2) {
                (Some((r1, _)), Some((r2, _))) => assert_eq!((r1, r2), (id1, id2)),
                (None, None) => eprintln!("fixed buffers unavailable here: plain writes tested"),
                other => panic!("registered on one ring only: {other:?}"),
            }
        })
        .join()
        .unwrap();
    }

    /// A registered buffer freed when the completion of its cancelled write is reaped (the
    /// executor ends with the write in flight, and the pool keeps nothing) leaves the ring's
    /// table at the next turn instead of borrowing the ring inside the reap.
    #[test]
    fn a_registered_buffer_freed_while_its_completion_is_reaped() {
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let path = dir.path().join("f");
        std::thread::spawn(move || {
            let r = block_on(
                || async move {
                    set_pool_bytes(0);
                    let f = Rc::new(
                        OpenOptions::new()
                            .read(true)
                            .write(true)
                            .create(true)
                            .dma_open(&path)
                            .await
                            .unwrap(),
                    );
                    for round in 0..3u8 {
                        let mut buf = DmaBuffer::new(1 << 20);
                        buf.as_bytes_mut().fill(round);
                        let (f, buf) = (f.clone(), Rc::new(buf));
                        // Awaited: registers the buffer; then a second write of it, left in
                        // flight (the last round's ends with the executor).
                        f.write_rc_at(buf.clone(), 0).await.unwrap();
                        crate::rt::spawn(async move { f.write_rc_at(buf, 1 << 20).await }).detach();
                        futures_lite::future::yield_now().await;
                    }
                },
                None,
                None,
            );
            assert!(r.is_ok());
        })
        .join()
        .expect("the executor ended without a panic");
    }
}
