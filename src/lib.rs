//! corelog: a replicated write-ahead log.
//!
//! The folder tree follows the path of an append (see `DESIGN.md` in the shared notes):
//!
//! - [`frame`]: the one frame format, the same bytes on disk and on the wire.
//! - [`log`]: the durable log of one group on one core: O_DIRECT segments written through
//!   io_uring, adaptive group commit, recovery, hard state.
//! - [`consensus`]: the pure consensus core (no clock, no I/O, no threads).
//! - [`sim`]: the deterministic simulator that drives the consensus core with a fake network
//!   and a fake disk and checks the safety invariants after every step.
//! - [`wire`]: the envelope of every message on a TCP connection (peers and clients).
//! - [`client`]: the blocking client library; [`embed`]: a node inside the application's
//!   process, reached without sockets.
//! - [`bench`]: the benchmarks behind `corelog bench`.
//! - [`rt`]: the runtime (executors, tasks, timers, sockets, O_DIRECT files), the only module
//!   that names the executor library.
//! - [`faultproxy`]: the fault-injecting TCP proxy that the tests of real processes put
//!   between the nodes (`corelog proxy`).

pub mod bench;
pub mod client;
pub mod client_pipelined;
pub mod consensus;
pub mod embed;
pub mod faultproxy;
pub mod frame;
pub mod log;
pub mod node;
pub mod rt;
pub mod sim;
pub mod tools;
pub mod wire;
