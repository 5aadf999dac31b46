//! Needle-in-a-haystack trials: greedy decoding with the KV cache, the three scores, the
//! paper's Algorithm 1 (attention entropy while generating the answer), a resumable log of
//! finished cells, and the entropy-vs-error join (`needle`, `needle_entropy`,
//! `entropy_vs_error` tables).
//!
//! A trial is one (task, length, depth, trial) cell of the grid. Its prompt comes from the
//! caller (the data stage's haystack builder), so this module needs only token ids, the answer
//! text and a detokenizer.
//!
//! **Algorithm 1.** For each generated token, the entropy (nats) of the attention distribution
//! of the query that chose it, per layer and head ([`greedy_decode`] with `record_entropy`).
//! The *answer tokens* are the generated tokens other than a final stop token (EOS or a
//! newline), and, with [`EntropySpan::Answer`] (the default), at most as many as the expected
//! answer has: text generated after the key is not the answer. When the very first token is a
//! stop token, that one step is used, so that every trial has an entropy. Per layer and head
//! the entropy is averaged over the answer tokens (`needle_entropy`), and `entropy_mean`
//! averages those over layers and heads. [`EntropySpan::Generated`] keeps the older form,
//! every generated token before a stop.
//!
//! **Resuming.** [`TrialLog`] appends each finished trial as one JSON line (flushed and
//! synced) to a file in the build directory. A killed run leaves at most one partial last line,
//! which [`TrialLog::open`] drops; [`run_grid`] skips the cells already in the log.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::analysis::auroc::{BootstrapConfig, score_vs_outcome};
use crate::analysis::scoring::score_reply;
use crate::model::{GreedyOptions, Llama, greedy_decode};
use crate::progress::Progress;
use crate::tables::{EntropyVsErrorRow, NeedleEntropyRow, NeedleRow};

use super::{EvalError, Result};

/// One cell of the grid.
#[derive(Debug, Clone, PartialEq)]
pub struct NeedleCell {
    /// Task name (`passkey`, `niah`, `multikey`).
    pub task: String,
    /// Haystack length in tokens.
    pub length: usize,
    /// Needle depth in `[0, 1]`.
    pub depth: f64,
    /// Trial index from 0.
    pub trial: usize,
}

impl NeedleCell {
    /// The cell's identity in the trial log: `task/length/depth/trial`, the depth written as
    /// Rust's shortest round-trip decimal so that equal grids give equal ids.
    pub fn id(&self) -> String {
        format!(
            "{}/{}/{}/{}",
            self.task, self.length, self.depth, self.trial
        )
    }
}

/// The grid `tasks x lengths x depths x trials`.
#[derive(Debug, Clone, PartialEq)]
pub struct NeedleGrid {
    /// Task names.
    pub tasks: Vec<String>,
    /// Haystack lengths.
    pub lengths: Vec<usize>,
    /// Needle depths in `[0, 1]`.
    pub depths: Vec<f64>,
    /// Trials per cell.
    pub trials: usize,
}

impl NeedleGrid {
    /// Every cell, in task, length, depth, trial order.
    ///
    /// Errors: an empty list, zero trials, a depth outside `[0, 1]`, or a duplicate value.
    pub fn cells(&self) -> Result<Vec<NeedleCell>> {
        if self.tasks.is_empty() || self.lengths.is_empty() || self.depths.is_empty() {
            return Err(EvalError::Input(
                "the needle grid needs at least one task, length and depth".into(),
            ));
        }
        if self.trials == 0 {
            return Err(EvalError::Input("needle trials must be at least 1".into()));
        }
        if let Some(d) = self.depths.iter().find(|d| !(0.0..=1.0).contains(*d)) {
            return Err(EvalError::Input(format!(
                "needle depth {d} is outside [0, 1]"
            )));
        }
        let ids: Vec<String> = self.depths.iter().map(|d| d.to_string()).collect();
        for (name, list) in [
            ("task", self.tasks.clone()),
            (
                "length",
                self.lengths.iter().map(|l| l.to_string()).collect(),
            ),
            ("depth", ids),
        ] {
            let mut sorted = list.clone();
            sorted.sort();
            if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
                return Err(EvalError::Input(format!(
                    "needle {name} {} is listed twice",
                    w[0]
                )));
            }
        }
        let mut cells = Vec::new();
        for task in &self.tasks {
            for &length in &self.lengths {
                for &depth in &self.depths {
                    for trial in 0..self.trials {
                        cells.push(NeedleCell {
                            task: task.clone(),
                            length,
                            depth,
                            trial,
                        });
                    }
                }
            }
        }
        Ok(cells)
    }
}

/// A built prompt of one cell.
#[derive(Debug, Clone, PartialEq)]
pub struct NeedlePrompt {
    /// The prompt's token ids.
    pub input_ids: Vec<u32>,
    /// Position of the needle's first token in the prompt.
    pub needle_pos: usize,
    /// The expected answer text.
    pub expected: String,
    /// How many tokens the expected answer has (its ids as a continuation of the prompt):
    /// Algorithm 1's entropy stops there ([`EntropySpan::Answer`]).
    pub answer_tokens: usize,
}

/// Which generated steps Algorithm 1 averages the attention entropy over.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum EntropySpan {
    /// The steps that generate the answer: at most the expected answer's token count, fewer
    /// when the reply stops earlier. Text the model adds after the key is left out.
    #[default]
    Answer,
    /// Every generated step before a stop token, up to `max_new_tokens` (the form before
    /// version 2 of `eval_needle`).
    Generated,
}

/// Decoding settings of a trial.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeSettings {
    /// Most tokens generated.
    pub max_new_tokens: usize,
    /// Tokens that end the reply (EOS and every token whose text holds a newline).
    pub stop_tokens: Vec<u32>,
    /// Record Algorithm 1's entropy.
    pub record_entropy: bool,
    /// Which steps the entropy averages.
    pub entropy_span: EntropySpan,
}

/// One finished trial: the `needle` row's fields, the generated tokens and the per-layer,
/// per-head mean entropy. Serialised as one line of the [`TrialLog`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrialRecord {
    /// [`NeedleCell::id`].
    pub cell: String,
    pub task: String,
    pub length: usize,
    pub depth: f64,
    pub trial: usize,
    pub needle_token_position: usize,
    pub expected: String,
    pub reply: String,
    pub exact: Option<bool>,
    pub substring: bool,
    pub overlap: f64,
    pub entropy_mean: Option<f64>,
    pub seconds: f64,
    /// Every generated token (a final stop token included).
    pub generated: Vec<u32>,
    /// `[layer][head]` entropy (nats) averaged over the answer tokens; empty when not recorded.
    pub entropy: Vec<Vec<f64>>,
}

impl TrialRecord {
    /// The `needle` row.
    pub fn row(&self) -> NeedleRow {
        NeedleRow {
            task: self.task.clone(),
            length: self.length as i64,
            depth: self.depth,
            trial: self.trial as i64,
            needle_token_position: self.needle_token_position as i64,
            expected: self.expected.clone(),
            reply: self.reply.clone(),
            exact: self.exact,
            substring: self.substring,
            overlap: self.overlap,
            entropy_mean: self.entropy_mean,
            seconds: self.seconds,
        }
    }

    /// The `needle_entropy` rows (one per layer and head).
    pub fn entropy_rows(&self) -> Vec<NeedleEntropyRow> {
        let mut rows = Vec::new();
        for (layer, heads) in self.entropy.iter().enumerate() {
            for (head, &entropy) in heads.iter().enumerate() {
                rows.push(NeedleEntropyRow {
                    task: self.task.clone(),
                    length: self.length as i64,
                    depth: self.depth,
                    trial: self.trial as i64,
                    layer: layer as i64,
                    head: head as i64,
                    entropy,
                });
            }
        }
        rows
    }
}

/// The reply text: the generated tokens before a final stop token, detokenized, cut at the
/// first newline and trimmed.
fn reply_text(text: &str) -> String {
    text.split('\n').next().unwrap_or("").trim().to_string()
}

/// Algorithm 1: `[step][layer][head]` entropies -> `[layer][head]` mean over the answer steps.
///
/// `answer_steps` is how many leading steps produced answer tokens (at least 1 is used).
pub fn mean_answer_entropy(steps: &[Vec<Vec<f32>>], answer_steps: usize) -> Vec<Vec<f64>> {
    let n = answer_steps.clamp(1, steps.len().max(1)).min(steps.len());
    let Some(first) = steps.first() else {
        return Vec::new();
    };
    let mut mean: Vec<Vec<f64>> = first.iter().map(|h| vec![0.0; h.len()]).collect();
    for step in &steps[..n] {
        for (m, s) in mean.iter_mut().zip(step) {
            for (a, &e) in m.iter_mut().zip(s) {
                *a += e as f64;
            }
        }
    }
    for m in mean.iter_mut().flatten() {
        *m /= n as f64;
    }
    mean
}

/// Runs one trial: greedy decoding, scores, entropy.
///
/// `decode` turns token ids into text (the tokenizer's decode); its error is reported with the
/// cell's id.
pub fn run_trial(
    model: &Llama,
    cell: &NeedleCell,
    prompt: &NeedlePrompt,
    settings: &DecodeSettings,
    decode: &dyn Fn(&[u32]) -> std::result::Result<String, String>,
) -> Result<TrialRecord> {
    if prompt.needle_pos >= prompt.input_ids.len() {
        return Err(EvalError::Input(format!(
            "needle cell {}: needle position {} is not inside the {}-token prompt",
            cell.id(),
            prompt.needle_pos,
            prompt.input_ids.len()
        )));
    }
    let started = Instant::now();
    let out = greedy_decode(
        model,
        &prompt.input_ids,
        &GreedyOptions {
            max_new_tokens: settings.max_new_tokens,
            stop_tokens: settings.stop_tokens.clone(),
            record_logits: false,
            record_entropy: settings.record_entropy,
        },
    )?;
    let answer_len = match out.tokens.last() {
        Some(t) if settings.stop_tokens.contains(t) => out.tokens.len() - 1,
        _ => out.tokens.len(),
    };
    let text = decode(&out.tokens[..answer_len]).map_err(|message| EvalError::Decode {
        cell: cell.id(),
        message,
    })?;
    let reply = reply_text(&text);
    let scores = score_reply(&reply, &prompt.expected);
    let entropy_steps = match settings.entropy_span {
        EntropySpan::Answer => answer_len.min(prompt.answer_tokens.max(1)),
        EntropySpan::Generated => answer_len,
    };
    let entropy = mean_answer_entropy(&out.entropy, entropy_steps);
    let values: Vec<f64> = entropy.iter().flatten().copied().collect();
    let entropy_mean =
        (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64);
    Ok(TrialRecord {
        cell: cell.id(),
        task: cell.task.clone(),
        length: cell.length,
        depth: cell.depth,
        trial: cell.trial,
        needle_token_position: prompt.needle_pos,
        expected: prompt.expected.clone(),
        reply,
        exact: scores.exact,
        substring: scores.substring,
        overlap: scores.overlap,
        entropy_mean,
        seconds: started.elapsed().as_secs_f64(),
        generated: out.tokens,
        entropy,
    })
}

/// Finished trials, kept in an append-only JSON-lines file so that a killed run resumes.
#[derive(Debug)]
pub struct TrialLog {
    path: PathBuf,
    file: File,
    records: HashMap<String, TrialRecord>,
}

impl TrialLog {
    /// Opens (or creates) the log at `path`, reading the trials already in it. A last line
    /// without its newline (a write cut off by a kill) is dropped and truncated away; any other
    /// unreadable line is an error naming the file and line.
    pub fn open(path: &Path) -> Result<TrialLog> {
        let io = |source| EvalError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut records = HashMap::new();
        let mut good_len = 0u64;
        if path.exists() {
            let mut reader = BufReader::new(File::open(path).map_err(io)?);
            let mut line = String::new();
            let mut number = 0;
            loop {
                line.clear();
                let n = reader.read_line(&mut line).map_err(io)?;
                if n == 0 {
                    break;
                }
                number += 1;
                if !line.ends_with('\n') {
                    break; // cut off by a kill: dropped below
                }
                let record: TrialRecord =
                    serde_json::from_str(&line).map_err(|e| EvalError::Log {
                        path: path.to_path_buf(),
                        line: number,
                        message: e.to_string(),
                    })?;
                good_len += n as u64;
                records.insert(record.cell.clone(), record);
            }
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io)?;
        if file.metadata().map_err(io)?.len() != good_len {
            file.set_len(good_len).map_err(io)?;
        }
        Ok(TrialLog {
            path: path.to_path_buf(),
            file,
            records,
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of finished trials.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether no trial is finished.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The finished trial of a cell, if any.
    pub fn get(&self, cell: &NeedleCell) -> Option<&TrialRecord> {
        self.records.get(&cell.id())
    }

    /// Appends a finished trial (written, flushed and synced before returning).
    pub fn append(&mut self, record: TrialRecord) -> Result<()> {
        let io = |source| EvalError::Io {
            path: self.path.clone(),
            source,
        };
        let mut line = serde_json::to_string(&record).map_err(|e| EvalError::Log {
            path: self.path.clone(),
            line: self.records.len() + 1,
            message: format!("cannot serialise trial {}: {e}", record.cell),
        })?;
        line.push('\n');
        self.file.write_all(line.as_bytes()).map_err(io)?;
        self.file.sync_data().map_err(io)?;
        self.records.insert(record.cell.clone(), record);
        crate::failpoint::hit("needle-trial");
        Ok(())
    }
}

/// Runs every cell of `grid` not yet in `log`, appending each as it finishes, and returns all
/// cells' records in grid order.
///
/// `prompt_for` builds a cell's prompt (only for cells that run). Progress: phase `needle`, one
/// step per cell (cells found in the log count as done at once).
pub fn run_grid(
    model: &Llama,
    grid: &NeedleGrid,
    prompt_for: &mut dyn FnMut(&NeedleCell) -> Result<NeedlePrompt>,
    settings: &DecodeSettings,
    decode: &dyn Fn(&[u32]) -> std::result::Result<String, String>,
    log: &mut TrialLog,
    progress: &dyn Progress,
) -> Result<Vec<TrialRecord>> {
    let cells = grid.cells()?;
    progress.start("needle", cells.len() as u64);
    let done = cells.iter().filter(|c| log.get(c).is_some()).count();
    if done > 0 {
        progress.message(&format!(
            "resuming: {done} of {} cells already done",
            cells.len()
        ));
        progress.advance(done as u64);
    }
    let mut out = Vec::with_capacity(cells.len());
    for cell in &cells {
        if let Some(r) = log.get(cell) {
            out.push(r.clone());
            continue;
        }
        let prompt = prompt_for(cell)?;
        let record = run_trial(model, cell, &prompt, settings, decode)?;
        log.append(record.clone())?;
        out.push(record);
        progress.advance(1);
    }
    Ok(out)
}

/// Whether a trial failed: `exact` false, or `substring` false where `exact` is null.
pub fn failed(row: &NeedleRow) -> bool {
    match row.exact {
        Some(e) => !e,
        None => !row.substring,
    }
}

/// The `entropy_vs_error` rows: one per task (in first-seen order) and `all` pooled, over the
/// trials with an entropy. Statistics that are undefined (no failures, no passes, all
/// entropies equal) are nulls with the reason in `note`.
pub fn entropy_vs_error(
    rows: &[NeedleRow],
    bootstrap: &BootstrapConfig,
) -> Result<Vec<EntropyVsErrorRow>> {
    let mut tasks: Vec<&str> = Vec::new();
    for r in rows {
        if !tasks.contains(&r.task.as_str()) {
            tasks.push(&r.task);
        }
    }
    let mut groups: Vec<(String, Vec<&NeedleRow>)> = tasks
        .iter()
        .map(|t| {
            (
                t.to_string(),
                rows.iter().filter(|r| r.task == *t).collect(),
            )
        })
        .collect();
    if tasks.len() > 1 {
        groups.push(("all".into(), rows.iter().collect()));
    }
    let mut out = Vec::new();
    for (task, group) in groups {
        let (scores, outcomes): (Vec<f64>, Vec<bool>) = group
            .iter()
            .filter_map(|r| r.entropy_mean.map(|e| (e, failed(r))))
            .unzip();
        if scores.is_empty() {
            continue;
        }
        let s = score_vs_outcome(&scores, &outcomes, bootstrap)?;
        let mut notes = Vec::new();
        let (auroc, auroc_lo, auroc_hi) = match &s.auroc {
            Ok(e) => (Some(e.value), Some(e.lo), Some(e.hi)),
            Err(e) => {
                notes.push(e.to_string());
                (None, None, None)
            }
        };
        let (pb, pb_lo, pb_hi) = match &s.point_biserial {
            Ok(e) => (Some(e.value), Some(e.lo), Some(e.hi)),
            Err(e) => {
                notes.push(e.to_string());
                (None, None, None)
            }
        };
        out.push(EntropyVsErrorRow {
            task,
            n: s.n as i64,
            failures: s.positives as i64,
            mean_entropy_pass: s.mean_negative,
            mean_entropy_fail: s.mean_positive,
            auroc,
            auroc_lo,
            auroc_hi,
            point_biserial: pb,
            point_biserial_lo: pb_lo,
            point_biserial_hi: pb_hi,
            note: (!notes.is_empty()).then(|| notes.join("; ")),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_is_cut_at_the_first_newline() {
        assert_eq!(reply_text(" 7 3 1 .\nwhat"), "7 3 1 .");
        assert_eq!(reply_text("\nx"), "");
    }

    #[test]
    fn answer_entropy_averages_answer_steps_only() {
        // 3 steps, 1 layer, 2 heads; the third step chose the stop token.
        let steps = vec![
            vec![vec![1.0f32, 2.0]],
            vec![vec![3.0, 4.0]],
            vec![vec![100.0, 100.0]],
        ];
        assert_eq!(mean_answer_entropy(&steps, 2), vec![vec![2.0, 3.0]]);
        // Stop token first: that step is used.
        assert_eq!(mean_answer_entropy(&steps[..1], 0), vec![vec![1.0, 2.0]]);
        assert!(mean_answer_entropy(&[], 0).is_empty());
    }

    #[test]
    fn grid_order_and_validation() {
        let grid = NeedleGrid {
            tasks: vec!["passkey".into()],
            lengths: vec![64, 128],
            depths: vec![0.0, 0.5],
            trials: 2,
        };
        let cells = grid.cells().unwrap();
        assert_eq!(cells.len(), 8);
        assert_eq!(cells[0].id(), "passkey/64/0/0");
        assert_eq!(cells[3].id(), "passkey/64/0.5/1");
        let mut bad = grid.clone();
        bad.depths = vec![1.5];
        assert!(bad.cells().unwrap_err().to_string().contains("1.5"));
        let mut bad = grid;
        bad.lengths = vec![64, 64];
        assert!(bad.cells().unwrap_err().to_string().contains("length 64"));
    }

    fn row(task: &str, exact: Option<bool>, substring: bool, e: Option<f64>) -> NeedleRow {
        NeedleRow {
            task: task.into(),
            length: 64,
            depth: 0.0,
            trial: 0,
            needle_token_position: 3,
            expected: "1".into(),
            reply: String::new(),
            exact,
            substring,
            overlap: 0.0,
            entropy_mean: e,
            seconds: 0.0,
        }
    }

    #[test]
    fn entropy_vs_error_on_a_constructed_case() {
        // Failures have entropies 3 and 4, passes 1, 2 and 3.5: AUROC = (2 + 3) / 6.
        let mut rows = vec![
            row("passkey", Some(false), false, Some(3.0)),
            row("passkey", Some(false), true, Some(4.0)),
            row("passkey", Some(true), true, Some(1.0)),
            row("passkey", Some(true), false, Some(2.0)),
            row("passkey", Some(true), true, Some(3.5)),
            row("passkey", Some(true), true, None),
        ];
        rows.push(row("niah", None, true, Some(1.0)));
        rows.push(row("niah", None, true, Some(2.0)));
        let config = BootstrapConfig {
            resamples: 200,
            level: 0.95,
            seed: 7,
        };
        let out = entropy_vs_error(&rows, &config).unwrap();
        assert_eq!(out.len(), 3);
        let p = &out[0];
        assert_eq!((p.task.as_str(), p.n, p.failures), ("passkey", 5, 2));
        assert!((p.auroc.unwrap() - 5.0 / 6.0).abs() < 1e-12);
        assert!((p.mean_entropy_fail.unwrap() - 3.5).abs() < 1e-12);
        assert!((p.mean_entropy_pass.unwrap() - 6.5 / 3.0).abs() < 1e-12);
        assert!(p.auroc_lo.unwrap() <= p.auroc.unwrap() && p.auroc.unwrap() <= p.auroc_hi.unwrap());
        assert!(p.point_biserial.unwrap() > 0.0);
        assert_eq!(p.note, None);
        // niah never fails: undefined statistics with the reason.
        let n = &out[1];
        assert_eq!((n.task.as_str(), n.n, n.failures), ("niah", 2, 0));
        assert_eq!(n.auroc, None);
        assert!(
            n.note.as_deref().unwrap().contains("AUROC is undefined"),
            "{:?}",
            n.note
        );
        let all = &out[2];
        assert_eq!((all.task.as_str(), all.n, all.failures), ("all", 7, 2));
    }
}
