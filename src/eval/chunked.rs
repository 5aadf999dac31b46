//! Long windows without `[seq, vocab]` or `[seq, seq]` ever held.
//!
//! - [`window_nll`]: one forward over the window (the attention is flash-style, linear in
//!   length), then the head and the loss `chunk` positions at a time, so at most
//!   `[batch, chunk, vocab]` logits are alive.
//! - [`forward_chunks`]: the window `chunk` positions at a time through the KV cache, handing
//!   back each chunk's attention entropy (no head: the entropy pass needs no logits). Every
//!   chunk's RoPE uses the frequencies of the whole window (`rope_len`), so the result equals
//!   one forward over the window, also for dynamic NTK and LongRoPE.

use crate::model::llama::to_f32_vec;
use crate::model::{AttentionBlocks, KvCache, Llama, ids_tensor};

use super::{EvalError, Result};

/// What one chunk produced.
pub struct ChunkOutput {
    /// First position of the chunk in the window.
    pub start: usize,
    /// Positions in the chunk.
    pub len: usize,
    /// `[layers, batch, heads, len]` attention entropy (nats) of the chunk's queries, if asked.
    pub entropy: Option<burn::tensor::Tensor<4>>,
}

/// Runs the windows `rows` (equal lengths) `chunk` positions at a time, handing each chunk's
/// output to `visit` in order.
pub fn forward_chunks(
    model: &Llama,
    rows: &[Vec<u32>],
    chunk: usize,
    entropy: Option<AttentionBlocks>,
    visit: &mut dyn FnMut(ChunkOutput) -> Result<()>,
) -> Result<()> {
    let t = rows.first().map_or(0, Vec::len);
    if t == 0 || rows.iter().any(|r| r.len() != t) {
        return Err(EvalError::Input(
            "windows must be non-empty and of equal length".into(),
        ));
    }
    let device = model.device();
    let chunk = chunk.max(1);
    let mut cache = KvCache::new(model.config().num_hidden_layers).reserving(t);
    for start in (0..t).step_by(chunk) {
        let len = chunk.min(t - start);
        let part: Vec<Vec<u32>> = rows
            .iter()
            .map(|r| r[start..start + len].to_vec())
            .collect();
        let ids = ids_tensor(&part, &device)?;
        let (_, ent) = model.forward_cached_hidden(ids, &mut cache, entropy, Some(t))?;
        visit(ChunkOutput {
            start,
            len,
            entropy: ent,
        })?;
    }
    Ok(())
}

/// Per-token NLL `[batch][t - 1]` (nats) of the windows: entry `i` is the NLL of token `i + 1`
/// given tokens `0..=i`. One forward, the head applied `chunk` positions at a time.
pub fn window_nll(model: &Llama, rows: &[Vec<u32>], chunk: usize) -> Result<Vec<Vec<f64>>> {
    let t = rows.first().map_or(0, Vec::len);
    if t < 2 || rows.iter().any(|r| r.len() != t) {
        return Err(EvalError::Input(format!(
            "NLL needs windows of equal length, at least 2 tokens, got {t}"
        )));
    }
    let ids = ids_tensor(rows, &model.device())?;
    let nll = to_f32_vec(model.nll(ids, chunk)?);
    Ok(nll
        .chunks(t - 1)
        .map(|r| r.iter().map(|&v| v as f64).collect())
        .collect())
}
