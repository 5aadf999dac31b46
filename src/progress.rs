//! How a long-running piece of work reports how far it has got.
//!
//! Stages, training loops and evaluations take a `&dyn Progress` so that they never know whether
//! they are drawn as an indicatif bar, logged as plain lines (CI, no terminal) or not shown at all
//! (tests). The runner hands each running instance its own implementation.

/// A sink for step progress of one unit of work.
pub trait Progress: Send + Sync {
    /// Start a phase (e.g. "tokenize", "train", "eval 2048") of `total` steps; resets the position.
    fn start(&self, phase: &str, total: u64);
    /// Advance the position of the current phase by `steps`.
    fn advance(&self, steps: u64);
    /// A short status shown next to the bar, e.g. "loss 3.21 · 12.4k tok/s".
    fn message(&self, text: &str);
    /// A line that must not be missed (a `WARNING:`, a Slurm job resubmitted): printed on its
    /// own, also with `--quiet`, where a [`message`](Progress::message) would be replaced by the
    /// next status. By default, a status.
    fn warn(&self, text: &str) {
        self.message(text);
    }
}

/// Progress that goes nowhere: for tests and library callers that do not want output.
#[derive(Debug, Default, Clone, Copy)]
pub struct Silent;

impl Progress for Silent {
    fn start(&self, _phase: &str, _total: u64) {}
    fn advance(&self, _steps: u64) {}
    fn message(&self, _text: &str) {}
}
