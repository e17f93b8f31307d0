//! Programs that work the engine from outside: the log inspector, the crash writer, the host
//! checks (`doctor`) and the disk probe (`disk-check`).
pub mod cli;
pub mod crash_writer;
pub mod disk_check;
pub mod doctor;
pub mod inspect;
