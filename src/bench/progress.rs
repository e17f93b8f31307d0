//! One progress line per second on stderr: a line rewritten in place on a terminal, plain
//! lines otherwise (a log file or a CI console keeps every second).

use std::io::{IsTerminal, Write};
use std::time::Duration;

use super::load::SecondRow;

/// See the module docs.
pub struct Progress {
    tty: bool,
    phase: String,
    total_s: u64,
    quiet: bool,
}

impl Progress {
    /// Progress on stderr; `quiet` prints nothing.
    pub fn new(quiet: bool) -> Progress {
        Progress { tty: std::io::stderr().is_terminal(), phase: String::new(), total_s: 0, quiet }
    }

    /// A phase starts.
    pub fn phase(&mut self, name: &str, warmup: Duration, duration: Duration) {
        self.phase = name.to_string();
        self.total_s = duration.as_secs_f64().round() as u64;
        if self.quiet {
            return;
        }
        if warmup.is_zero() {
            eprintln!("{name}: {:.0}s", duration.as_secs_f64());
        } else {
            eprintln!(
                "{name}: {:.0}s warm-up (excluded), then {:.0}s",
                warmup.as_secs_f64(),
                duration.as_secs_f64()
            );
        }
    }

    /// A phase of at most `cap` starts (it may end sooner).
    pub fn phase_up_to(&mut self, name: &str, cap: Duration) {
        self.phase = name.to_string();
        self.total_s = cap.as_secs_f64().round() as u64;
        if !self.quiet {
            eprintln!("{name}: up to {:.0}s", cap.as_secs_f64());
        }
    }

    /// One second of a phase.
    pub fn second(&mut self, row: &SecondRow) {
        if self.quiet {
            return;
        }
        let line = format!(
            "  {:<11} {:>3}/{:<3}s {:>9} appends/s {:>8.1} MiB/s  p99 {:>9}  errors {}",
            self.phase,
            row.second,
            self.total_s,
            row.appends,
            row.mib,
            human_us(row.p99_us),
            row.errors
        );
        let mut err = std::io::stderr().lock();
        if self.tty {
            let done = (row.second as usize * 20 / self.total_s.max(1) as usize).min(20);
            let _ = write!(err, "\r\x1b[2K[{}{}]{line}", "#".repeat(done), " ".repeat(20 - done));
        } else {
            let _ = writeln!(err, "{line}");
        }
        let _ = err.flush();
    }

    /// The phase ended (ends the live line on a terminal).
    pub fn end_phase(&mut self) {
        if self.tty && !self.quiet {
            eprintln!();
        }
    }
}

/// A latency in µs, in the unit that reads best.
pub fn human_us(us: u64) -> String {
    if us >= 10_000_000 {
        format!("{:.1} s", us as f64 / 1e6)
    } else if us >= 10_000 {
        format!("{:.1} ms", us as f64 / 1e3)
    } else if us >= 1_000 {
        format!("{:.2} ms", us as f64 / 1e3)
    } else {
        format!("{us} µs")
    }
}
