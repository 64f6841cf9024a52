//! The last lines this process logged, kept in memory for the sysdump
//! (`POST /api/v1/support/sysdump/node`).
//!
//! [`Tee`] wraps the logger that writes to stderr (env_logger, installed by
//! `main.rs`): every record that logger lets through is also formatted into one line
//! and pushed into [`RECENT`], a ring of at most [`LINES`] lines of at most
//! [`MAX_LINE`] bytes each, so the ring never holds more than about 1 MiB. Lines
//! logged before the logger was installed, and anything written to stderr other than
//! through the `log` crate (a panic message, say), are not in it.
//!
//! A push takes a short lock and formats one string: logging is for the control side
//! and rare events, never per packet.

use parking_lot::Mutex;
use std::collections::VecDeque;
use std::time::{SystemTime, UNIX_EPOCH};

/// How many lines the ring keeps.
pub const LINES: usize = 500;
/// The longest line kept, in bytes; longer ones are cut (at a character boundary)
/// and end with `…`.
pub const MAX_LINE: usize = 2048;

/// A ring of recent log lines. `Sync`: any thread may push or read.
pub struct Recent {
    lines: Mutex<VecDeque<String>>,
}

impl Recent {
    pub const fn new() -> Recent {
        Recent {
            lines: Mutex::new(VecDeque::new()),
        }
    }

    /// Adds a line, dropping the oldest when the ring is full.
    pub fn push(&self, mut line: String) {
        if line.len() > MAX_LINE {
            let mut cut = MAX_LINE;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            line.truncate(cut);
            line.push('…');
        }
        let mut lines = self.lines.lock();
        if lines.len() == LINES {
            lines.pop_front();
        }
        lines.push_back(line);
    }

    /// The lines kept, oldest first.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().iter().cloned().collect()
    }
}

impl Default for Recent {
    fn default() -> Recent {
        Recent::new()
    }
}

/// The process's ring, which the logger `main.rs` installs fills.
pub static RECENT: Recent = Recent::new();

/// A logger that passes every record to `inner` and keeps the ones `inner` lets
/// through in a ring as well.
pub struct Tee<L> {
    inner: L,
    ring: &'static Recent,
}

impl<L: log::Log> Tee<L> {
    pub fn new(inner: L, ring: &'static Recent) -> Tee<L> {
        Tee { inner, ring }
    }
}

/// One record as the ring keeps it: `<unix seconds>.<millis> <LEVEL> <target>: <message>`.
pub fn format(record: &log::Record) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    format!(
        "{}.{:03} {} {}: {}",
        now.as_secs(),
        now.subsec_millis(),
        record.level(),
        record.target(),
        record.args()
    )
}

impl<L: log::Log> log::Log for Tee<L> {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        self.inner.enabled(metadata)
    }

    fn log(&self, record: &log::Record) {
        if self.inner.enabled(record.metadata()) {
            self.ring.push(format(record));
        }
        self.inner.log(record);
    }

    fn flush(&self) {
        self.inner.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use log::Log;

    struct OnlyWarn;
    impl log::Log for OnlyWarn {
        fn enabled(&self, m: &log::Metadata) -> bool {
            m.level() <= log::Level::Warn
        }
        fn log(&self, _: &log::Record) {}
        fn flush(&self) {}
    }

    #[test]
    fn the_ring_keeps_the_last_lines_bounded_and_only_what_the_logger_lets_through() {
        static RING: Recent = Recent::new();
        let tee = Tee::new(OnlyWarn, &RING);
        let rec = |level, msg: &str| {
            tee.log(
                &log::Record::builder()
                    .level(level)
                    .target("t")
                    .args(format_args!("{msg}"))
                    .build(),
            )
        };
        rec(log::Level::Info, "not kept");
        for i in 0..LINES + 3 {
            rec(log::Level::Warn, &format!("line {i}"));
        }
        let lines = RING.lines();
        assert_eq!(lines.len(), LINES);
        assert!(lines[0].ends_with("WARN t: line 3"), "{}", lines[0]);
        assert!(lines[LINES - 1].ends_with(&format!("line {}", LINES + 2)));
        assert!(!lines.iter().any(|l| l.contains("not kept")));
        rec(log::Level::Error, &"é".repeat(MAX_LINE));
        let last = RING.lines().pop().unwrap();
        assert!(last.len() <= MAX_LINE + '…'.len_utf8() && last.ends_with('…'));
    }
}
