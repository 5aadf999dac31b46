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
            Ui::bars(total, ProgressDrawTarget::stderr())
        } else {
            Mode::Log
        };
        Ui {
            mode,
            total: total as u64,
            done: Mutex::new(0),
        }
    }

    /// Bars drawn to `target`: an overall bar under the instances' bars.
    fn bars(total: usize, target: ProgressDrawTarget) -> Mode {
        let multi = MultiProgress::with_draw_target(target);
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
                    message: String::new(),
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
    message: String,
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
                    let message = if s.message.is_empty() {
                        String::new()
                    } else {
                        format!(" · {}", s.message)
                    };
                    eprintln!(
                        "  {}: {} {}/{} ({pct}%){message}",
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
                state.lock().unwrap_or_else(|e| e.into_inner()).message = text.to_string();
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Enough of a terminal for indicatif's drawing: rows of text and a cursor; a line written
    /// to the full width leaves the cursor past its end until the next write or move.
    #[derive(Debug, Clone, Default)]
    struct Screen(Arc<Mutex<Cells>>);

    #[derive(Debug, Default)]
    struct Cells {
        rows: Vec<Vec<char>>,
        row: usize,
        col: usize,
    }

    const WIDTH: usize = 100;

    impl Screen {
        fn put(&self, text: &str) {
            let mut s = self.0.lock().unwrap_or_else(|e| e.into_inner());
            let Cells { rows, row, col } = &mut *s;
            for c in text.chars() {
                if c == '\r' {
                    *col = 0;
                    continue;
                }
                if *col >= WIDTH {
                    *row += 1;
                    *col = 0;
                }
                if rows.len() <= *row {
                    rows.resize(*row + 1, Vec::new());
                }
                let line = &mut rows[*row];
                if line.len() <= *col {
                    line.resize(*col + 1, ' ');
                }
                line[*col] = c;
                *col += 1;
            }
        }

        fn moved(&self, down: isize, right: isize) {
            let mut s = self.0.lock().unwrap_or_else(|e| e.into_inner());
            s.row = s.row.saturating_add_signed(down);
            s.col = s.col.saturating_add_signed(right).min(WIDTH);
        }

        /// The screen's rows, trailing blanks removed.
        fn rows(&self) -> Vec<String> {
            let s = self.0.lock().unwrap_or_else(|e| e.into_inner());
            s.rows
                .iter()
                .map(|r| r.iter().collect::<String>().trim_end().to_string())
                .collect()
        }
    }

    impl indicatif::TermLike for Screen {
        fn width(&self) -> u16 {
            WIDTH as u16
        }
        fn move_cursor_up(&self, n: usize) -> std::io::Result<()> {
            self.moved(-(n as isize), 0);
            Ok(())
        }
        fn move_cursor_down(&self, n: usize) -> std::io::Result<()> {
            self.moved(n as isize, 0);
            Ok(())
        }
        fn move_cursor_right(&self, n: usize) -> std::io::Result<()> {
            self.moved(0, n as isize);
            Ok(())
        }
        fn move_cursor_left(&self, n: usize) -> std::io::Result<()> {
            self.moved(0, -(n as isize));
            Ok(())
        }
        fn write_line(&self, s: &str) -> std::io::Result<()> {
            self.put(s);
            self.moved(1, 0);
            self.put("\r");
            Ok(())
        }
        fn write_str(&self, s: &str) -> std::io::Result<()> {
            self.put(s);
            Ok(())
        }
        fn clear_line(&self) -> std::io::Result<()> {
            let mut s = self.0.lock().unwrap_or_else(|e| e.into_inner());
            let row = s.row;
            if let Some(line) = s.rows.get_mut(row) {
                line.clear();
            }
            s.col = 0;
            Ok(())
        }
        fn flush(&self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_warning_stays_on_the_screen_above_the_bars_while_the_status_changes() {
        let screen = Screen::default();
        let target = ProgressDrawTarget::term_like_with_hz(Box::new(screen.clone()), 100);
        let ui = Ui {
            mode: Ui::bars(1, target),
            total: 1,
            done: Mutex::new(0),
        };
        let p = ui.start("base");
        let pause = || std::thread::sleep(Duration::from_millis(30));
        p.start("train", 10);
        pause();
        p.warn("job 7 ended NODE_FAIL; resubmitted as job 8 (attempt 2 of 3)");
        pause();
        // Statuses that follow replace one another in the bar, not the warning.
        for loss in ["loss 3.0", "loss 2.0", "loss 1.0"] {
            p.message(loss);
            p.advance(1);
            pause();
        }
        let rows = screen.rows();
        let warned = rows.iter().position(|r| {
            r == "  base: job 7 ended NODE_FAIL; resubmitted as job 8 (attempt 2 of 3)"
        });
        let bar = rows
            .iter()
            .position(|r| r.contains("base") && r.contains("loss 1.0"));
        assert!(
            warned.is_some() && bar.is_some() && warned < bar,
            "the warning is not a line above the bar:\n{}",
            rows.join("\n")
        );
        assert!(!rows.iter().any(|r| r.contains("loss 2.0")), "{rows:?}");
        ui.close();
    }
}
