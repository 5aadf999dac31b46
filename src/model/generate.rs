//! Greedy decoding with the KV cache, recording what the needle evaluation needs: the tokens,
//! each step's logits, and the attention entropy of each generated token's query per layer and
//! head (the paper's Algorithm 1).
//!
//! The prompt's last token is fed as the first decoding step, so that the query producing the
//! first answer token is measured like every later one; its RoPE frequencies still use the
//! whole prompt's length, as a single forward over the prompt would (this matters for dynamic
//! NTK and LongRoPE only).

use burn::tensor::{Int, Tensor, TensorData};

use super::attention::AttentionBlocks;
use super::error::{ModelError, Result};
use super::llama::{KvCache, Llama, to_f32_vec};

/// What [`greedy_decode`] produced.
#[derive(Debug, Clone, PartialEq)]
pub struct GreedyOutput {
    /// Generated tokens (the stop token included when it ended the run).
    pub tokens: Vec<u32>,
    /// `[step][vocab]` logits that chose each token (if asked for).
    pub logits: Vec<Vec<f32>>,
    /// `[step][layer][head]` attention entropy (nats) of the query that chose each token (if
    /// asked for).
    pub entropy: Vec<Vec<Vec<f32>>>,
}

/// Options of [`greedy_decode`].
#[derive(Debug, Clone, Default)]
pub struct GreedyOptions {
    /// Most tokens to generate.
    pub max_new_tokens: usize,
    /// Stop after generating any of these.
    pub stop_tokens: Vec<u32>,
    /// Keep each step's logits.
    pub record_logits: bool,
    /// Compute each step's attention entropy (blockwise over the cache).
    pub record_entropy: bool,
}

fn row(tokens: &[u32], device: &burn::tensor::Device) -> Tensor<2, Int> {
    let v: Vec<i64> = tokens.iter().map(|&t| t as i64).collect();
    Tensor::from_data(TensorData::new(v, [1, tokens.len()]), device)
}

fn argmax(v: &[f32]) -> u32 {
    // First maximum, as torch.argmax.
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best as u32
}

/// Greedy decoding of one prompt with the KV cache.
pub fn greedy_decode(model: &Llama, prompt: &[u32], opts: &GreedyOptions) -> Result<GreedyOutput> {
    if prompt.is_empty() {
        return Err(ModelError::Input(
            "greedy decoding needs a non-empty prompt".into(),
        ));
    }
    let vocab = model.config().vocab_size;
    if let Some(bad) = prompt.iter().find(|&&t| t as usize >= vocab) {
        return Err(ModelError::Input(format!(
            "prompt token {bad} is not below vocab_size {vocab}"
        )));
    }
    let device = model.device();
    let mut cache = KvCache::new(model.config().num_hidden_layers)
        .reserving(prompt.len() + opts.max_new_tokens);
    let n = prompt.len();
    if n > 1 {
        model.forward_cached_hidden(row(&prompt[..n - 1], &device), &mut cache, None, Some(n))?;
    }
    let blocks = opts.record_entropy.then(AttentionBlocks::default);
    let mut out = GreedyOutput {
        tokens: Vec::new(),
        logits: Vec::new(),
        entropy: Vec::new(),
    };
    let mut next = prompt[n - 1];
    for _ in 0..opts.max_new_tokens {
        let (logits, ent) = model.forward_cached(row(&[next], &device), &mut cache, blocks)?;
        // [1, 1, vocab]
        let logits = to_f32_vec(logits);
        next = argmax(&logits);
        out.tokens.push(next);
        if opts.record_logits {
            out.logits.push(logits);
        }
        if let Some(e) = ent {
            // [layers, 1, heads, 1]
            let [layers, _, heads, _] = e.dims();
            let v = to_f32_vec(e);
            out.entropy.push(
                (0..layers)
                    .map(|l| v[l * heads..(l + 1) * heads].to_vec())
                    .collect(),
            );
        }
        if opts.stop_tokens.contains(&next) {
            break;
        }
    }
    Ok(out)
}
