//! Errors of the log: operational ones the caller handles, and corruption that stops the open.

use std::path::PathBuf;
use std::sync::Arc;

use thiserror::Error;

/// An error of the log.
#[derive(Debug, Clone, Error)]
pub enum LogError {
    /// An I/O operation failed. Carries what was done, on which file, at which offset.
    #[error("{op} {path} at offset {offset}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        offset: u64,
        #[source]
        source: Arc<std::io::Error>,
    },
    /// The file system is full: no new segment can be prepared. Nothing was written; appends
    /// work again once space is freed (for example by a trim).
    #[error("no space left for a new segment in {dir}: {source}")]
    NoSpace {
        dir: PathBuf,
        #[source]
        source: Arc<std::io::Error>,
    },
    /// An earlier write or fdatasync failed. After a failed fdatasync Linux may have dropped the
    /// dirty data and cleared the error, so retrying proves nothing: the log refuses all further
    /// work and must be reopened (recovery then reads what really is on disk).
    #[error("the log failed earlier and must be reopened: {0}")]
    Poisoned(Box<LogError>),
    /// A bad frame lies before valid frames: entries that may have been acknowledged are
    /// damaged. The node must not silently forget them; repair from peers or restore.
    #[error(
        "corruption in {path} at offset {offset}: entries {first_index}..={last_index} are damaged or cannot be verified ({detail})"
    )]
    Corruption { path: PathBuf, offset: u64, first_index: u64, last_index: u64, detail: String },
    /// The directory holds files this version cannot read (a gap between segments, a foreign
    /// group, an unknown name).
    #[error("log directory {dir} is inconsistent: {detail}")]
    Inconsistent { dir: PathBuf, detail: String },
    /// A frame that does not continue the log (wrong group, index or term).
    #[error("frame rejected: {0}")]
    Rejected(String),
    /// The entries waited for were removed by a suffix truncation before becoming durable.
    #[error("entries from index {from} were truncated before they became durable")]
    Truncated { from: u64 },
    /// A read of entries that were trimmed or never written.
    #[error("index {index} is outside the log ({first}..={last})")]
    OutOfRange { index: u64, first: u64, last: u64 },
    /// Invalid settings.
    #[error("invalid log configuration: {0}")]
    Config(String),
    /// The log was closed.
    #[error("the log is closed")]
    Closed,
}

impl LogError {
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
        offset: u64,
        e: std::io::Error,
    ) -> Self {
        LogError::Io { op, path: path.into(), offset, source: Arc::new(e) }
    }

    /// Whether this is the file system being full.
    pub fn is_no_space(&self) -> bool {
        match self {
            LogError::NoSpace { .. } => true,
            LogError::Io { source, .. } => source.raw_os_error() == Some(libc::ENOSPC),
            LogError::Poisoned(inner) => inner.is_no_space(),
            _ => false,
        }
    }
}

/// Result of log operations.
pub type LogResult<T> = Result<T, LogError>;
