//! Perplexity of evaluation documents at one context length (the `ppl` table).
//!
//! Two ways to cut a document into windows of `length` tokens:
//!
//! - **truncate**: the document's first `length` tokens, one window, every token after the
//!   first scored (the YaRN repo's `--truncate` Proof-pile setting);
//! - **sliding**: windows of `length` tokens advancing by `stride`; each window scores only the
//!   tokens no earlier window scored, so every token after the first is scored exactly once,
//!   each with at least `length - stride` tokens of context (the first window's tokens with
//!   whatever precedes them). The last window is aligned to the document's end, so that it has
//!   full context too.
//!
//! Only documents with at least `length` tokens count, so that every length is measured on
//! windows of exactly that length (the caller reports how many were skipped). A document's NLL
//! is the token-weighted mean over its scored tokens, and a summary over documents must weight
//! by `tokens` again, never average the per-document means.
//!
//! Windows of different documents are batched; each batch runs `chunk` positions at a time
//! through the KV cache ([`window_nll`]), so memory grows linearly with `length` (measured in
//! docs/eval.md).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::model::Llama;
use crate::progress::Progress;
use crate::tables::PplRow;

use super::chunked::window_nll;
use super::{EvalError, Result};

/// The name of a way to cut documents into windows: the `mode` key of `eval_ppl`, the report's
/// `ppl_mode` and the `ppl` table's `mode` column.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum PplModeKind {
    /// Each document cut to its first `length` tokens: one window (YaRN's `--truncate`).
    #[default]
    Truncate,
    /// Windows of `length` tokens advancing by `stride`; only new tokens are scored.
    Sliding,
}

impl PplModeKind {
    /// The name as written in TOML and in the `mode` column.
    pub fn as_str(&self) -> &'static str {
        match self {
            PplModeKind::Truncate => "truncate",
            PplModeKind::Sliding => "sliding",
        }
    }
}

impl PplModeKind {
    /// Every mode, in the order reports list them.
    pub const ALL: [PplModeKind; 2] = [PplModeKind::Truncate, PplModeKind::Sliding];

    /// The mode named `name` (a `mode` column value), if any.
    pub fn from_name(name: &str) -> Option<PplModeKind> {
        Self::ALL.into_iter().find(|m| m.as_str() == name)
    }

    /// What a length's perplexity averages over, for a reader of the report.
    pub fn what_is_scored(&self) -> &'static str {
        match self {
            PplModeKind::Truncate => {
                "each document's first `length` tokens in one window, every token after the \
                 first scored: a length's perplexity averages over contexts of 1 to `length - 1` \
                 tokens"
            }
            PplModeKind::Sliding => {
                "windows of `length` tokens advancing by the stage's stride (default half a \
                 window), each token scored once: all but the first window's tokens with at \
                 least `length - stride` tokens of context"
            }
        }
    }
}

impl std::fmt::Display for PplModeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a document is cut into windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PplMode {
    /// The first `length` tokens, one window.
    Truncate,
    /// Windows of `length` tokens advancing by `stride`, scoring only new tokens.
    Sliding {
        /// Tokens between window starts, `1..length` (windows overlap by at least one token,
        /// whose context is the previous window's).
        stride: usize,
    },
}

impl PplMode {
    /// Which kind of mode this is (its `mode` column).
    pub fn kind(&self) -> PplModeKind {
        match self {
            PplMode::Truncate => PplModeKind::Truncate,
            PplMode::Sliding { .. } => PplModeKind::Sliding,
        }
    }

    /// The `mode` column: `truncate` or `sliding`.
    pub fn name(&self) -> &'static str {
        self.kind().as_str()
    }
}

/// One window of a document: tokens `start..start + length`, of which positions
/// `score_from..start + length` are scored (each predicted from the tokens before it in the
/// window). `score_from > start` always: the first token of a window has no context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// First token of the window (absolute position in the document).
    pub start: usize,
    /// First scored token (absolute position).
    pub score_from: usize,
}

/// The windows of a document of `doc_len` tokens; empty when `doc_len < length`.
///
/// Errors: `length < 2`, or a sliding `stride` outside `1..=length`.
pub fn plan_windows(doc_len: usize, length: usize, mode: PplMode) -> Result<Vec<Window>> {
    if length < 2 {
        return Err(EvalError::Input(format!(
            "ppl length {length} is too short: a window needs at least 2 tokens"
        )));
    }
    if doc_len < length {
        return Ok(Vec::new());
    }
    match mode {
        PplMode::Truncate => Ok(vec![Window {
            start: 0,
            score_from: 1,
        }]),
        PplMode::Sliding { stride } => {
            if stride == 0 || stride >= length {
                return Err(EvalError::Input(format!(
                    "ppl stride {stride} must be between 1 and the length minus 1 ({}): a window's \
                     first token has no context, so windows must overlap by at least one token",
                    length - 1
                )));
            }
            let mut windows = vec![Window {
                start: 0,
                score_from: 1,
            }];
            let mut end = length;
            while end < doc_len {
                let next_end = (end + stride).min(doc_len);
                windows.push(Window {
                    start: next_end - length,
                    score_from: end,
                });
                end = next_end;
            }
            Ok(windows)
        }
    }
}

/// One document to evaluate.
#[derive(Debug, Clone, Copy)]
pub struct PplDoc<'a> {
    /// Its identifier (the `document` column).
    pub id: &'a str,
    /// Its tokens.
    pub tokens: &'a [u32],
    /// Per-token marks of the synthetic corpus (non-zero = a long-range recall token), the same
    /// length as `tokens`; `None` when the corpus has none.
    pub marks: Option<&'a [u8]>,
}

/// Settings of [`evaluate_ppl`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PplOptions {
    /// Context length (tokens per window).
    pub length: usize,
    /// Truncate or sliding.
    pub mode: PplMode,
    /// Windows per forward.
    pub batch_size: usize,
    /// Positions per forward step through the KV cache (bounds the `[batch, chunk, vocab]`
    /// logits and the attention tiles).
    pub chunk: usize,
}

/// What [`evaluate_ppl`] measured.
#[derive(Debug, Clone, PartialEq)]
pub struct PplOutcome {
    /// One row per document with at least `length` tokens, in input order.
    pub rows: Vec<PplRow>,
    /// Documents shorter than `length` (not evaluated).
    pub skipped: usize,
}

impl PplOutcome {
    /// Token-weighted mean NLL over all rows (`None` without rows): the length's summary.
    pub fn mean_nll(&self) -> Option<f64> {
        let tokens: i64 = self.rows.iter().map(|r| r.tokens).sum();
        (tokens > 0).then(|| {
            self.rows
                .iter()
                .map(|r| r.nll * r.tokens as f64)
                .sum::<f64>()
                / tokens as f64
        })
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Acc {
    tokens: u64,
    nll: f64,
    recall_tokens: u64,
    recall_nll: f64,
}

/// Perplexity of every document with at least `opts.length` tokens.
///
/// Progress: phase `ppl L=<length> <mode>`, one step per window.
pub fn evaluate_ppl(
    model: &Llama,
    docs: &[PplDoc<'_>],
    opts: &PplOptions,
    progress: &dyn Progress,
) -> Result<PplOutcome> {
    let vocab = model.config().vocab_size;
    let mut jobs = Vec::new();
    let mut skipped = 0;
    for (d, doc) in docs.iter().enumerate() {
        if let Some(marks) = doc.marks
            && marks.len() != doc.tokens.len()
        {
            return Err(EvalError::Input(format!(
                "document {}: {} marks for {} tokens",
                doc.id,
                marks.len(),
                doc.tokens.len()
            )));
        }
        if let Some(bad) = doc.tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(EvalError::Input(format!(
                "document {}: token {bad} is not below the model's vocab_size {vocab}",
                doc.id
            )));
        }
        let windows = plan_windows(doc.tokens.len(), opts.length, opts.mode)?;
        if windows.is_empty() {
            skipped += 1;
        }
        jobs.extend(windows.into_iter().map(|w| (d, w)));
    }
    progress.start(
        &format!("ppl L={} {}", opts.length, opts.mode.name()),
        jobs.len() as u64,
    );
    let mut acc = vec![Acc::default(); docs.len()];
    let len = opts.length;
    for batch in jobs.chunks(opts.batch_size.max(1)) {
        let rows: Vec<Vec<u32>> = batch
            .iter()
            .map(|&(d, w)| docs[d].tokens[w.start..w.start + len].to_vec())
            .collect();
        // [batch][len - 1]: entry i is the NLL of window token i + 1.
        let nll = window_nll(model, &rows, opts.chunk)?;
        for (b, &(d, w)) in batch.iter().enumerate() {
            let a = &mut acc[d];
            for pos in w.score_from..w.start + len {
                let v = nll[b][pos - w.start - 1];
                a.tokens += 1;
                a.nll += v;
                if docs[d].marks.is_some_and(|m| m[pos] != 0) {
                    a.recall_tokens += 1;
                    a.recall_nll += v;
                }
            }
        }
        progress.advance(batch.len() as u64);
    }
    let rows = docs
        .iter()
        .zip(&acc)
        .filter(|(_, a)| a.tokens > 0)
        .map(|(doc, a)| {
            let nll = a.nll / a.tokens as f64;
            PplRow {
                length: len as i64,
                mode: opts.mode.name().to_string(),
                document: doc.id.to_string(),
                tokens: a.tokens as i64,
                nll,
                ppl: nll.exp(),
                recall_tokens: a.recall_tokens as i64,
                recall_nll: (a.recall_tokens > 0).then(|| a.recall_nll / a.recall_tokens as f64),
            }
        })
        .collect();
    Ok(PplOutcome { rows, skipped })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every token after the first is scored exactly once, with enough context.
    fn check_cover(doc_len: usize, length: usize, stride: usize) {
        let w = plan_windows(doc_len, length, PplMode::Sliding { stride }).unwrap();
        let mut scored = vec![0; doc_len];
        for win in &w {
            assert!(win.start + length <= doc_len);
            assert!(win.score_from > win.start);
            for (p, s) in scored
                .iter_mut()
                .enumerate()
                .take(win.start + length)
                .skip(win.score_from)
            {
                *s += 1;
                if win.start > 0 {
                    assert!(p - win.start >= length - stride, "context of {p}");
                }
            }
        }
        assert_eq!(scored[0], 0);
        assert!(scored[1..].iter().all(|&s| s == 1), "{scored:?}");
    }

    #[test]
    fn sliding_windows_score_every_token_once() {
        for (n, l, s) in [
            (10, 4, 2),
            (10, 4, 3),
            (17, 16, 15),
            (11, 4, 3),
            (4, 4, 1),
            (100, 16, 5),
            (17, 16, 8),
        ] {
            check_cover(n, l, s);
        }
        let w = plan_windows(10, 4, PplMode::Sliding { stride: 3 }).unwrap();
        let got: Vec<(usize, usize)> = w.iter().map(|w| (w.start, w.score_from)).collect();
        assert_eq!(got, vec![(0, 1), (3, 4), (6, 7)]);
        // The last window is aligned to the end.
        let w = plan_windows(9, 4, PplMode::Sliding { stride: 3 }).unwrap();
        let got: Vec<(usize, usize)> = w.iter().map(|w| (w.start, w.score_from)).collect();
        assert_eq!(got, vec![(0, 1), (3, 4), (5, 7)]);
    }

    #[test]
    fn short_documents_and_bad_parameters() {
        assert!(plan_windows(3, 4, PplMode::Truncate).unwrap().is_empty());
        assert_eq!(
            plan_windows(50, 4, PplMode::Truncate).unwrap(),
            vec![Window {
                start: 0,
                score_from: 1
            }]
        );
        let e = plan_windows(10, 1, PplMode::Truncate).unwrap_err();
        assert!(e.to_string().contains("length 1"), "{e}");
        for stride in [0, 4, 5] {
            let e = plan_windows(10, 4, PplMode::Sliding { stride }).unwrap_err();
            assert!(e.to_string().contains(&format!("stride {stride} ")), "{e}");
        }
    }
}
