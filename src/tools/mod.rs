//! Programs that work the engine from outside: the log inspector and the crash writer.
pub mod crash_writer;
pub mod inspect;
