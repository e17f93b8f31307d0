//! The deterministic simulator (issue 3). Filled in on its own branch.
pub mod cli;
