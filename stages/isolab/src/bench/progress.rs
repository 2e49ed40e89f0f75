//! A progress bar on stderr while the benchmark runs: it takes minutes, and a silent terminal
//! looks like a hang. Drawn only when stderr is a terminal, so that logs and tests see
//! nothing of it.

use std::io::{IsTerminal, Write};
use std::time::Instant;

/// The bar: steps done out of a total known up front.
#[derive(Debug)]
pub struct Progress {
    total: u64,
    done: u64,
    started: Instant,
    drawn: bool,
}

const WIDTH: u64 = 30;

impl Progress {
    /// A bar of `total` steps; drawn only if stderr is a terminal.
    pub fn new(total: u64) -> Progress {
        Progress {
            total: total.max(1),
            done: 0,
            started: Instant::now(),
            drawn: std::io::stderr().is_terminal(),
        }
    }

    /// One step begins: `what` is shown beside the bar.
    pub fn step(&mut self, what: &str) {
        if self.drawn {
            let filled = (self.done * WIDTH / self.total).min(WIDTH);
            let bar =
                format!("{}{}", "#".repeat(filled as usize), "-".repeat((WIDTH - filled) as usize));
            let seconds = self.started.elapsed().as_secs();
            // \r and "erase to the end of the line" (ECMA-48 EL, `CSI K`): one line, redrawn.
            eprint!("\r\x1b[K[{bar}] {}/{} {seconds:>3} s  {what}", self.done, self.total);
            let _ = std::io::stderr().flush();
        }
        self.done = (self.done + 1).min(self.total);
    }

    /// The run is over: the bar's line is erased.
    pub fn finish(&mut self) {
        if self.drawn {
            eprint!("\r\x1b[K");
            self.drawn = false;
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}
