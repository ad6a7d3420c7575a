//! How an import shows its progress: a progress bar on a terminal, a plain
//! line every so often otherwise (logs, CI, pipes), and one line per item
//! that was not loaded. It never sees a password: callers pass reasons
//! that quote none.

use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use tokio::time::Instant;

use super::Summary;

/// Without a terminal, a progress line every this many users...
const PLAIN_EVERY: u64 = 1000;
/// ...or this often, whichever comes first.
const PLAIN_INTERVAL: Duration = Duration::from_secs(5);

/// Progress and failure messages: a progress bar on a terminal, plain
/// lines otherwise (logs, CI, pipes).
pub struct Reporter {
    bar: Option<ProgressBar>,
    total: Option<u64>,
    last_plain: Mutex<(u64, Instant)>,
}

impl fmt::Debug for Reporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reporter")
            .field("interactive", &self.bar.is_some())
            .field("total", &self.total)
            .finish()
    }
}

impl Reporter {
    /// A reporter for `total` items (unknown: `None`); `interactive` draws a
    /// progress bar on standard error.
    pub fn new(total: Option<u64>, interactive: bool) -> Reporter {
        let bar = interactive.then(|| {
            let bar = match total {
                Some(n) => ProgressBar::new(n),
                None => ProgressBar::new_spinner(),
            };
            let template = if total.is_some() {
                "{bar:40} {pos}/{len} users, {per_sec}, eta {eta} {msg}"
            } else {
                "{spinner} {pos} keys {msg}"
            };
            if let Ok(style) = ProgressStyle::with_template(template) {
                bar.set_style(style);
            }
            bar
        });
        Reporter {
            bar,
            total,
            last_plain: Mutex::new((0, Instant::now())),
        }
    }

    /// Reports one item that was not loaded.
    pub fn failure(&self, location: &str, reason: &str) {
        let line = format!("{location}: {reason}");
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    /// Reports progress after one more item.
    pub fn advance(&self, summary: &Summary) {
        if let Some(bar) = &self.bar {
            bar.inc(1);
            if summary.failed > 0 {
                bar.set_message(format!("({} failed)", summary.failed));
            }
            return;
        }
        let done = summary.done();
        let mut last = self.last_plain.lock().unwrap_or_else(|e| e.into_inner());
        let finished = self.total == Some(done);
        if finished || done >= last.0 + PLAIN_EVERY || last.1.elapsed() >= PLAIN_INTERVAL {
            let of = self.total.map(|t| format!("/{t}")).unwrap_or_default();
            eprintln!("progress: {done}{of} ({summary})");
            *last = (done, Instant::now());
        }
    }

    /// Removes the bar (the summary is printed by the caller).
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
