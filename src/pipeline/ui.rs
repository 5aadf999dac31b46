//! How a run is shown: an indicatif multi-progress on a terminal, plain log lines otherwise.
//!
//! Each running instance gets a [`Progress`] of its own; stages never know which form is drawn.

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::progress::Progress;

/// The display of one run.
pub struct Ui {
    mode: Mode,
    total: u64,
    done: Mutex<u64>,
}

enum Mode {
    Bars {
        multi: MultiProgress,
        overall: ProgressBar,
    },
    Log,
    Quiet,
}

impl Ui {
    /// Bars when stderr is a terminal and `quiet` is false, log lines when it is not.
    pub fn new(total: usize, quiet: bool) -> Ui {
        let mode = if quiet {
            Mode::Quiet
        } else if std::io::stderr().is_terminal() && std::io::stdout().is_terminal() {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
            let overall = multi.add(ProgressBar::new(total as u64));
            overall.set_style(
                ProgressStyle::with_template(
                    "{prefix:>12.bold} [{bar:30}] {pos}/{len} {elapsed_precise} {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            overall.set_prefix("pipeline");
            overall.enable_steady_tick(Duration::from_millis(200));
            Mode::Bars { multi, overall }
        } else {
            Mode::Log
        };
        Ui {
            mode,
            total: total as u64,
            done: Mutex::new(0),
        }
    }

    /// A line above the bars (or on stderr).
    pub fn println(&self, line: &str) {
        match &self.mode {
            Mode::Bars { multi, .. } => {
                let _ = multi.println(line);
            }
            Mode::Log => {
                let _ = writeln!(std::io::stderr().lock(), "{line}");
            }
            Mode::Quiet => {}
        }
    }

    /// The progress of an instance that starts now.
    pub fn start(&self, instance: &str) -> InstanceProgress {
        let inner = match &self.mode {
            Mode::Bars { multi, overall } => {
                let bar = multi.insert_before(overall, ProgressBar::new(0));
                bar.set_style(
                    ProgressStyle::with_template(
                        "{prefix:>12.cyan} {spinner} {wide_msg} {pos}/{len} {elapsed}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                bar.set_prefix(instance.to_string());
                bar.enable_steady_tick(Duration::from_millis(200));
                Inner::Bar(bar)
            }
            Mode::Log => {
                self.println(&format!("start {instance}"));
                Inner::Log(Mutex::new(LogState {
                    phase: String::new(),
                    total: 0,
                    pos: 0,
                    last: Instant::now(),
                    last_pct: 0,
                    note: String::new(),
                }))
            }
            Mode::Quiet => Inner::Quiet,
        };
        InstanceProgress {
            instance: instance.to_string(),
            inner: Arc::new(inner),
        }
    }

    /// An instance ended (built, cached, failed, skipped): one line, and the overall bar moves.
    pub fn finish(&self, progress: Option<InstanceProgress>, line: &str) {
        let done = {
            let mut d = self.done.lock().unwrap_or_else(|e| e.into_inner());
            *d += 1;
            *d
        };
        if let Some(p) = progress
            && let Inner::Bar(bar) = p.inner.as_ref()
        {
            bar.finish_and_clear();
        }
        match &self.mode {
            Mode::Bars { overall, .. } => {
                overall.set_position(done);
                self.println(line);
            }
            Mode::Log => self.println(&format!("[{done}/{}] {line}", self.total)),
            Mode::Quiet => {}
        }
    }

    /// Remove the bars.
    pub fn close(&self) {
        if let Mode::Bars { overall, .. } = &self.mode {
            overall.finish_and_clear();
        }
    }
}

struct LogState {
    phase: String,
    total: u64,
    pos: u64,
    last: Instant,
    last_pct: u64,
    /// The latest `message`, shown with the next progress line.
    note: String,
}

enum Inner {
    Bar(ProgressBar),
    Log(Mutex<LogState>),
    Quiet,
}

/// The [`Progress`] handed to one running instance.
#[derive(Clone)]
pub struct InstanceProgress {
    instance: String,
    inner: Arc<Inner>,
}

impl Progress for InstanceProgress {
    fn start(&self, phase: &str, total: u64) {
        match self.inner.as_ref() {
            Inner::Bar(bar) => {
                bar.set_length(total);
                bar.set_position(0);
                bar.set_message(phase.to_string());
            }
            Inner::Log(state) => {
                let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
                s.phase = phase.to_string();
                s.total = total;
                s.pos = 0;
                s.last = Instant::now();
                s.last_pct = 0;
                if total > 1 {
                    eprintln!("  {}: {phase} (0/{total})", self.instance);
                }
            }
            Inner::Quiet => {}
        }
    }

    fn advance(&self, steps: u64) {
        match self.inner.as_ref() {
            Inner::Bar(bar) => bar.inc(steps),
            Inner::Log(state) => {
                let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
                s.pos += steps;
                // A line every 10% but at most every 5 s, so CI logs stay short.
                let pct = (s.pos * 100).checked_div(s.total).unwrap_or(0);
                if s.total > 1
                    && pct >= s.last_pct + 10
                    && (s.last.elapsed() >= Duration::from_secs(5) || s.pos >= s.total)
                {
                    s.last_pct = pct - pct % 10;
                    s.last = Instant::now();
                    let note = if s.note.is_empty() {
                        String::new()
                    } else {
                        format!(" · {}", s.note)
                    };
                    eprintln!(
                        "  {}: {} {}/{} ({pct}%){note}",
                        self.instance, s.phase, s.pos, s.total
                    );
                }
            }
            Inner::Quiet => {}
        }
    }

    fn message(&self, text: &str) {
        match self.inner.as_ref() {
            Inner::Bar(bar) => bar.set_message(text.to_string()),
            Inner::Log(state) => {
                state.lock().unwrap_or_else(|e| e.into_inner()).note = text.to_string();
            }
            Inner::Quiet => {}
        }
    }

    fn warn(&self, text: &str) {
        let line = format!("  {}: {text}", self.instance);
        match self.inner.as_ref() {
            // Above the bars, where it stays.
            Inner::Bar(bar) => bar.println(line),
            Inner::Log(_) | Inner::Quiet => eprintln!("{line}"),
        }
    }
}

impl InstanceProgress {
    /// A message that must not be missed (e.g. waiting for a lock): a line in log mode.
    pub fn note(&self, text: &str) {
        match self.inner.as_ref() {
            Inner::Bar(bar) => bar.set_message(text.to_string()),
            Inner::Log(_) => eprintln!("  {}: {text}", self.instance),
            Inner::Quiet => {}
        }
    }
}
