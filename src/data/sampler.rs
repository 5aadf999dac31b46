//! Windows for training and evaluation. Training draws fixed-length windows at seeded random
//! positions; window k depends only on (seed, k), so a run that restores its position after a
//! restart sees exactly the batches it would have seen. Evaluation takes document-aligned
//! windows: the first L tokens of every document with at least L tokens (as the YaRN eval does).

use serde::{Deserialize, Serialize};

use super::error::DataError;
use super::shards::TokenSplit;

/// Where training windows start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SampleMode {
    /// Anywhere in the concatenated token stream (windows may span documents).
    #[default]
    Stream,
    /// At the start of a random document (continuing into the next ones if it is short).
    DocumentStart,
    /// In stream order, without sampling: see [`sequential_start`].
    Sequential,
}

/// What a checkpoint stores to resume sampling exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SamplerState {
    pub seed: u64,
    pub window: usize,
    pub mode: SampleMode,
    /// Number of windows drawn so far.
    pub position: u64,
}

/// Seeded random fixed-length windows over one split.
#[derive(Debug, Clone)]
pub struct WindowSampler {
    split: TokenSplit,
    state: SamplerState,
    starts: Vec<u64>,
}

fn hash(seed: u64, k: u64) -> u64 {
    let mut z = seed
        .wrapping_add(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(k.wrapping_mul(0xD1B5_4A32_D192_ED03));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Uniform in 0..n from a 64-bit hash (Lemire's multiply-shift).
fn below(h: u64, n: u64) -> u64 {
    ((h as u128 * n as u128) >> 64) as u64
}

/// Draw number `k` of the seeded stream, uniform in `0..n`: where window `k` starts. Every
/// window sampler (this one and `train::TokenWindows`) draws this way, so that window `k`
/// depends only on `(seed, k)` and a restored position replays the same windows.
pub(crate) fn seeded_below(seed: u64, k: u64, n: u64) -> u64 {
    below(hash(seed, k), n)
}

/// Where window `k` of `window` tokens starts when windows are taken in stream order from a
/// split of `len` tokens: window `i` covers tokens `[i * (window - 1), (i + 1) * (window - 1)
/// + 1)` (consecutive windows share one token: the last target of one is the first input of
/// the next), and after the last whole window (`i = (len - 1) / (window - 1) - 1`) the windows
/// start over at 0, so window `k` is window `i = k mod ((len - 1) / (window - 1))`. Needs
/// `2 <= window <= len`.
pub fn sequential_start(k: u64, window: usize, len: usize) -> usize {
    let stride = (window - 1) as u64;
    let whole = (len as u64 - 1) / stride;
    ((k % whole) * stride) as usize
}

impl WindowSampler {
    /// A sampler of `window`-token windows (for next-token training at length L, ask for L + 1).
    pub fn new(
        split: &TokenSplit,
        window: usize,
        seed: u64,
        mode: SampleMode,
    ) -> Result<WindowSampler, DataError> {
        Self::restore(
            split,
            SamplerState {
                seed,
                window,
                mode,
                position: 0,
            },
        )
    }

    /// A sampler that continues from a saved state.
    pub fn restore(split: &TokenSplit, state: SamplerState) -> Result<WindowSampler, DataError> {
        if state.window == 0 || state.window > split.len() {
            return Err(DataError::param(
                "window",
                format!(
                    "a window of {} tokens does not fit the {} split ({} tokens)",
                    state.window,
                    split.name(),
                    split.len()
                ),
            ));
        }
        if state.mode == SampleMode::Sequential && state.window < 2 {
            return Err(DataError::param(
                "window",
                "sequential windows need at least 2 tokens (seq_len + 1)",
            ));
        }
        let last = (split.len() - state.window) as u64;
        let starts = match state.mode {
            SampleMode::Stream | SampleMode::Sequential => vec![],
            SampleMode::DocumentStart => {
                let mut s: Vec<u64> = split.offsets()[..split.num_docs()]
                    .iter()
                    .map(|&o| o.min(last))
                    .collect();
                s.dedup();
                s
            }
        };
        Ok(WindowSampler {
            split: split.clone(),
            state,
            starts,
        })
    }

    /// The state to save (restore it with [`WindowSampler::restore`]).
    pub fn state(&self) -> SamplerState {
        self.state
    }

    /// Jumps to window number `position`.
    pub fn set_position(&mut self, position: u64) {
        self.state.position = position;
    }

    /// Start token of window number `k`.
    pub fn start_of(&self, k: u64) -> usize {
        let h = hash(self.state.seed, k);
        match self.state.mode {
            SampleMode::Stream => {
                below(h, (self.split.len() - self.state.window + 1) as u64) as usize
            }
            SampleMode::DocumentStart => {
                self.starts[below(h, self.starts.len() as u64) as usize] as usize
            }
            SampleMode::Sequential => sequential_start(k, self.state.window, self.split.len()),
        }
    }

    /// Window number `k` (does not move the position).
    pub fn window_at(&self, k: u64) -> Vec<u32> {
        let s = self.start_of(k);
        self.split.tokens(s..s + self.state.window)
    }

    /// The next window.
    pub fn next_window(&mut self) -> Vec<u32> {
        let w = self.window_at(self.state.position);
        self.state.position += 1;
        w
    }

    /// The next `batch` windows, row-major: `[batch, window]` flattened.
    pub fn next_batch(&mut self, batch: usize) -> Vec<u32> {
        let mut out = Vec::with_capacity(batch * self.state.window);
        for _ in 0..batch {
            let s = self.start_of(self.state.position);
            self.split.extend_tokens(s..s + self.state.window, &mut out);
            self.state.position += 1;
        }
        out
    }
}

/// One evaluation window: the first `len` tokens of a document.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalWindow {
    /// Document index in the split.
    pub doc: usize,
    /// `len` tokens (starting with BOS when documents have one).
    pub tokens: Vec<u32>,
    /// Per-token marks (see `synthetic::marks`) when the corpus has them.
    pub marks: Option<Vec<u8>>,
}

impl TokenSplit {
    /// Indices of the documents with at least `len` tokens.
    pub fn docs_at_least(&self, len: usize) -> Vec<usize> {
        (0..self.num_docs())
            .filter(|&i| self.doc_range(i).len() >= len)
            .collect()
    }

    /// The first `len` tokens of each document that has at least `len`, at most `max_docs`
    /// of them (in document order).
    pub fn eval_windows(&self, len: usize, max_docs: Option<usize>) -> Vec<EvalWindow> {
        self.docs_at_least(len)
            .into_iter()
            .take(max_docs.unwrap_or(usize::MAX))
            .map(|doc| {
                let start = self.doc_range(doc).start;
                EvalWindow {
                    doc,
                    tokens: self.tokens(start..start + len),
                    marks: self.marks(start..start + len).map(<[u8]>::to_vec),
                }
            })
            .collect()
    }
}
