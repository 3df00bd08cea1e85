//! Progress of a long scan or replay, on stderr.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// Progress on stderr: a bar redrawn in place on a terminal, a line every 5 s otherwise.
pub(super) struct Progress {
    total: u64,
    started: Instant,
    last: Instant,
    tty: bool,
    shown: bool,
}

impl Progress {
    pub(super) fn new(total: u64) -> Self {
        let now = Instant::now();
        Progress {
            total,
            started: now,
            last: now,
            tty: std::io::stderr().is_terminal(),
            shown: false,
        }
    }

    pub(super) fn tick(&mut self, scanned: u64, sent: u64, force: bool) {
        let every = if self.tty {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(5)
        };
        if !force && self.last.elapsed() < every {
            return;
        }
        // Short runs print nothing.
        if !force && self.started.elapsed() < Duration::from_secs(1) {
            return;
        }
        self.last = Instant::now();
        let total = self.total.max(1);
        let pct = (scanned * 100 / total).min(100);
        let filled = (pct / 5) as usize;
        let rate = sent as f64 / self.started.elapsed().as_secs_f64().max(0.001);
        let line = format!(
            "[{}{}] {pct:>3}% scanned {scanned}/{} replayed {sent} ({rate:.0}/s)",
            "#".repeat(filled),
            ".".repeat(20 - filled),
            self.total
        );
        let mut err = std::io::stderr();
        if self.tty {
            let _ = write!(err, "\r{line}");
        } else {
            let _ = writeln!(err, "{line}");
        }
        self.shown = true;
    }

    pub(super) fn finish(&mut self, scanned: u64, sent: u64) {
        if self.shown {
            self.tick(scanned, sent, true);
            if self.tty {
                let _ = writeln!(std::io::stderr());
            }
        }
    }
}
