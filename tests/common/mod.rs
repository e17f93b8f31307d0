//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::future::Future;
use std::path::Path;

use corelog::frame::{EntryKind, EntryRef};
use corelog::log::{Log, LogConfig};

/// Runs `f` on a fresh glommio executor and returns its output.
pub fn run<F, Fut, T>(f: F) -> T
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T> + 'static,
    T: Send + 'static,
{
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .spawn(f)
        .expect("spawn executor")
        .join()
        .expect("executor thread")
}

/// A small configuration that exercises segment rolls and full buffers quickly.
pub fn small_config() -> LogConfig {
    LogConfig {
        segment_bytes: 1 << 20,
        flush_bytes_max: 64 << 10,
        recent_cache_bytes: 128 << 10,
        ..LogConfig::new(1)
    }
}

/// The payload of entry `index`: deterministic, so a reader can check it (the crash writer's).
pub use corelog::tools::crash_writer::payload;

/// Appends `n` frames of `per_frame` entries of `len` bytes with `term`, the contents given by
/// [`payload`]. Returns the last index.
pub async fn append_n(log: &Log, term: u64, n: usize, per_frame: usize, len: usize) -> u64 {
    let mut last = log.last_index();
    for _ in 0..n {
        let datas: Vec<Vec<u8>> =
            (0..per_frame as u64).map(|k| payload(last + 1 + k, len)).collect();
        let entries: Vec<EntryRef<'_>> = datas
            .iter()
            .enumerate()
            .map(|(k, d)| EntryRef {
                kind: EntryKind::Normal,
                session: 1,
                seq: last + 1 + k as u64,
                data: d,
            })
            .collect();
        let r = log.append_entries(term, &entries).await.expect("append");
        last = r.last;
    }
    last
}

/// Reads `lo..=hi` and checks every entry against [`payload`] and its index.
pub async fn check_range(log: &Log, lo: u64, hi: u64, len: usize) {
    let mut next = lo;
    while next <= hi {
        let frames = log.read(next, hi, 1 << 20).await.expect("read");
        assert!(!frames.is_empty());
        for f in &frames {
            for e in f.entries() {
                assert_eq!(e.index, next, "entries in order");
                assert_eq!(e.seq, next, "entry {next} seq");
                assert_eq!(e.data, &payload(next, len)[..], "entry {next} contents");
                next += 1;
            }
        }
    }
    assert_eq!(next, hi + 1);
}

/// Lists the segment files of a log directory, sorted.
pub fn segment_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_str().unwrap();
            n.ends_with(".seg") && !n.starts_with("spare-")
        })
        .collect();
    v.sort();
    v
}
