//! Benchmarks behind `corelog bench`.
