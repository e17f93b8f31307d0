//! The node runtime: consensus groups on pinned executors, wired to their logs and peers.
pub mod codec;
