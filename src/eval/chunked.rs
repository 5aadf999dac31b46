//! A long window run through the model a chunk of positions at a time with the KV cache, so
//! that nothing of size `[seq, vocab]` or `[seq, seq]` is ever held: only one chunk's logits
//! `[batch, chunk, vocab]` and the cache (linear in length).
//!
//! Every chunk's RoPE uses the frequencies of the whole window (`rope_len`), so the result
//! equals one forward over the window, also for dynamic NTK and LongRoPE. After the first
//! chunk the model attends with its blockwise kernel over the cache, which on the CPU backend
//! is about twice as fast at 8K-16K tokens as burn's fused attention that a plain forward uses.

use burn::tensor::Tensor;
use burn::tensor::activation::log_softmax;

use crate::model::llama::to_f32_vec;
use crate::model::{AttentionBlocks, KvCache, Llama, ids_tensor};

use super::{EvalError, Result};

/// What one chunk produced.
pub struct ChunkOutput {
    /// First position of the chunk in the window.
    pub start: usize,
    /// Positions in the chunk.
    pub len: usize,
    /// `[batch, len, vocab]` logits.
    pub logits: Tensor<3>,
    /// `[layers, batch, heads, len]` attention entropy (nats) of the chunk's queries, if asked.
    pub entropy: Option<Tensor<4>>,
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
    let mut cache = KvCache::new(model.config().num_hidden_layers);
    for start in (0..t).step_by(chunk) {
        let len = chunk.min(t - start);
        let part: Vec<Vec<u32>> = rows
            .iter()
            .map(|r| r[start..start + len].to_vec())
            .collect();
        let ids = ids_tensor(&part, &device)?;
        let (logits, ent) =
            model.forward_cached_with_rope_len(ids, &mut cache, entropy, Some(t))?;
        visit(ChunkOutput {
            start,
            len,
            logits,
            entropy: ent,
        })?;
    }
    Ok(())
}

/// Per-token NLL `[batch][t - 1]` (nats) of the windows: entry `i` is the NLL of token `i + 1`
/// given tokens `0..=i`.
pub fn window_nll(model: &Llama, rows: &[Vec<u32>], chunk: usize) -> Result<Vec<Vec<f64>>> {
    let t = rows.first().map_or(0, Vec::len);
    if t < 2 {
        return Err(EvalError::Input(format!(
            "NLL needs windows of at least 2 tokens, got {t}"
        )));
    }
    let device = model.device();
    let mut out = vec![Vec::with_capacity(t - 1); rows.len()];
    forward_chunks(model, rows, chunk, None, &mut |c| {
        // Positions start..start + n predict tokens start + 1..start + n + 1 (the window's
        // last position predicts nothing).
        let n = c.len.min(t - 1 - c.start);
        if n == 0 {
            return Ok(());
        }
        let logp = log_softmax(c.logits.narrow(1, 0, n), 2);
        let targets: Vec<Vec<u32>> = rows
            .iter()
            .map(|r| r[c.start + 1..c.start + 1 + n].to_vec())
            .collect();
        // [batch, n, 1]
        let targets = ids_tensor(&targets, &device)?.unsqueeze_dim::<3>(2);
        let nll = to_f32_vec(logp.gather(2, targets).neg());
        for (b, o) in out.iter_mut().enumerate() {
            o.extend(nll[b * n..(b + 1) * n].iter().map(|&v| v as f64));
        }
        Ok(())
    })?;
    Ok(out)
}
