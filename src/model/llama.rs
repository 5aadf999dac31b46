//! The LLaMA-family decoder as a burn [`Module`]: embeddings, RMSNorm, grouped-query attention
//! with RoPE, SwiGLU MLP, final norm, tied or untied head.
//!
//! Parameters are the trainable state; the config (and so the RoPE) is carried beside them, not
//! in them, so [`Llama::with_rope`] changes only the rotary frequencies of a trained model.
//! Linear weights are stored `[in, out]` (burn's layout); the checkpoint module transposes to
//! and from Hugging Face's `[out, in]`.
//!
//! Forwards (shapes in their docs): [`Llama::forward`] (logits; training and evaluation),
//! [`Llama::nll`] (per-token NLL in chunks of positions, for long evaluation),
//! [`Llama::forward_entropy`] (logits plus per-query attention entropy of every layer and head),
//! [`Llama::attention_distance`] (mean attention probability by relative distance),
//! [`Llama::attention_probs`] (the full probabilities, for short inputs), and
//! [`Llama::forward_cached`] (KV cache, for greedy decoding).

use burn::module::{Module, Param};
use burn::tensor::activation::log_softmax;
use burn::tensor::module::embedding;
use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};
use rayon::prelude::*;

use super::attention::{
    AttentionBlocks, attend_blockwise, attend_fused, attend_materialized, attend_profile,
    distance_bucket,
};
use super::config::LlamaConfig;
use super::error::{ModelError, Result};
use super::flash::{self, FlashShape};
use super::flash_grad;
use super::fused;
use super::fused::rope::{Rotary, rotate_heads};
pub use super::kv_cache::KvCache;
use super::kv_cache::LayerKv;
use super::rope::{RopeConfig, cos_sin};

/// A linear layer `y = x W + b` with `W` stored `[in, out]`.
#[derive(Module, Debug)]
pub struct Linear {
    /// `[in, out]`.
    pub weight: Param<Tensor<2>>,
    /// `[out]`.
    pub bias: Option<Param<Tensor<1>>>,
}

impl Linear {
    /// Normal(0, std) weights, zero bias.
    pub fn init(d_in: usize, d_out: usize, bias: bool, std: f64, device: &Device) -> Self {
        Linear {
            weight: Param::from_tensor(Tensor::random(
                [d_in, d_out],
                Distribution::Normal(0.0, std),
                device,
            )),
            bias: bias.then(|| Param::from_tensor(Tensor::zeros([d_out], device))),
        }
    }

    /// `[.., in]` -> `[.., out]`.
    ///
    /// The leading dimensions are flattened so that the product (and its gradients) is one
    /// large GEMM rather than a batch of small ones.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let dims = x.dims();
        let w = self.weight.val();
        let [d_in, d_out] = w.dims();
        let rows = dims[..D - 1].iter().product::<usize>();
        // [rows, in] x [in, out]
        let y = fused::linear::linear(x.reshape([rows, d_in]), w);
        let y = match &self.bias {
            Some(b) => y + b.val().unsqueeze::<2>(),
            None => y,
        };
        let mut out = dims;
        out[D - 1] = d_out;
        y.reshape(out)
    }
}

/// RMSNorm as in transformers: `w * x / sqrt(mean(x^2) + eps)`.
#[derive(Module, Debug)]
pub struct RmsNorm {
    /// `[hidden]`.
    pub weight: Param<Tensor<1>>,
    /// Epsilon.
    pub eps: f64,
}

impl RmsNorm {
    /// Weight ones.
    pub fn init(dim: usize, eps: f64, device: &Device) -> Self {
        RmsNorm {
            weight: Param::from_tensor(Tensor::ones([dim], device)),
            eps,
        }
    }

    /// `[.., hidden]` -> `[.., hidden]`.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        fused::norm::rms_norm(x, self.weight.val(), self.eps)
    }
}

/// Self-attention projections.
#[derive(Module, Debug)]
pub struct Attention {
    /// hidden -> heads * head_dim.
    pub q_proj: Linear,
    /// hidden -> kv_heads * head_dim.
    pub k_proj: Linear,
    /// hidden -> kv_heads * head_dim.
    pub v_proj: Linear,
    /// heads * head_dim -> hidden.
    pub o_proj: Linear,
}

impl Attention {
    /// Queries, keys and values of normed hidden states `h` `[b, t, hidden]`, RoPE applied to
    /// queries and keys: `[b, heads, t, hd]`, `[b, kv_heads, t, hd]`, `[b, kv_heads, t, hd]`.
    fn qkv(
        &self,
        h: Tensor<3>,
        (heads, kv_heads, hd): (usize, usize, usize),
        rot: &Rotary,
    ) -> (Tensor<4>, Tensor<4>, Tensor<4>) {
        let [b, t, _] = h.dims();
        let q = rotate_heads(self.q_proj.forward(h.clone()), heads, rot);
        let k = rotate_heads(self.k_proj.forward(h.clone()), kv_heads, rot);
        let v = self
            .v_proj
            .forward(h)
            .reshape([b, t, kv_heads, hd])
            .swap_dims(1, 2);
        (q, k, v)
    }
}

/// SwiGLU MLP: `down(silu(gate(x)) * up(x))`.
#[derive(Module, Debug)]
pub struct Mlp {
    /// hidden -> intermediate.
    pub gate_proj: Linear,
    /// hidden -> intermediate.
    pub up_proj: Linear,
    /// intermediate -> hidden.
    pub down_proj: Linear,
}

impl Mlp {
    /// `[b, t, hidden]` -> `[b, t, hidden]`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let gate = self.gate_proj.forward(x.clone());
        self.down_proj
            .forward(fused::swiglu::swiglu(gate, self.up_proj.forward(x)))
    }
}

/// One pre-norm decoder layer.
#[derive(Module, Debug)]
pub struct DecoderLayer {
    /// Norm before attention.
    pub input_layernorm: RmsNorm,
    /// Attention.
    pub self_attn: Attention,
    /// Norm before the MLP.
    pub post_attention_layernorm: RmsNorm,
    /// MLP.
    pub mlp: Mlp,
}

/// The model.
#[derive(Module, Debug)]
pub struct Llama {
    /// Token embeddings `[vocab, hidden]`.
    pub embed_tokens: Param<Tensor<2>>,
    /// Decoder layers.
    pub layers: Vec<DecoderLayer>,
    /// Final norm.
    pub norm: RmsNorm,
    /// Output head `[hidden, vocab]`; `None` when tied to the embeddings.
    pub lm_head: Option<Linear>,
    /// Architecture and RoPE (not a parameter).
    #[module(skip)]
    pub config: LlamaConfig,
}

/// How the attention of one forward runs and what it reports.
#[derive(Debug, Clone, Copy)]
enum Mode {
    /// Full score matrix (autodiff-friendly).
    Materialized,
    /// The CPU training op: fused forward, FlashAttention-2 backward ([`flash_grad`]).
    Train,
    /// burn's fused attention.
    Fused,
    /// Our blocks, with entropy.
    Entropy(AttentionBlocks),
    /// Full matrix, probabilities kept.
    Probs,
}

/// What one layer's attention handed back besides its output.
enum Stat {
    None,
    /// `[b, h, q]`.
    Entropy(Tensor<3>),
    /// `[b, h, q, k]`.
    Probs(Tensor<4>),
}

/// Mean attention probability by relative distance, per layer and head.
#[derive(Debug, Clone, PartialEq)]
pub struct DistanceProfile {
    /// Bucket edges: bucket `i` holds distances `edges[i] <= d < edges[i + 1]`.
    pub edges: Vec<usize>,
    /// `[layer][head][bucket]`: summed probability over the batch and the causal (query, key)
    /// pairs in the bucket.
    pub prob_sum: Vec<Vec<Vec<f64>>>,
    /// `[bucket]`: number of causal (query, key) pairs in the bucket over the batch.
    pub pair_count: Vec<u64>,
    /// `[layer]`: every query's attention entropy (nats), `[batch, heads, seq]` row-major,
    /// from the same attention pass.
    pub entropy: Vec<Vec<f32>>,
}

impl DistanceProfile {
    /// `[layer][head][bucket]` mean probability per (query, key) pair (0 for empty buckets).
    pub fn mean(&self) -> Vec<Vec<Vec<f64>>> {
        self.prob_sum
            .iter()
            .map(|layer| {
                layer
                    .iter()
                    .map(|head| {
                        head.iter()
                            .zip(&self.pair_count)
                            .map(|(s, &n)| if n == 0 { 0.0 } else { s / n as f64 })
                            .collect()
                    })
                    .collect()
            })
            .collect()
    }
}

/// Final hidden states and the attention entropy of every query.
///
/// Logits are left to the caller ([`Llama::head`], or [`Llama::nll_from_hidden`] in chunks) so
/// that a long input never has to hold `[batch, seq, vocab]`.
#[derive(Debug, Clone)]
pub struct EntropyOutput {
    /// Final-norm hidden states `[batch, seq, hidden]`.
    pub hidden: Tensor<3>,
    /// `[layers, batch, heads, seq]`, nats.
    pub entropy: Tensor<4>,
}

impl Llama {
    /// A randomly initialised model (Normal(0, 0.02) weights as transformers, norms at 1).
    /// Seed the device (`device.seed(s)`) first for a reproducible model.
    pub fn init(config: &LlamaConfig, device: &Device) -> Result<Self> {
        config.validate("model config")?;
        config.check_fits_in_memory("the new model")?;
        let c = config;
        let std = 0.02;
        let (h, hd) = (c.hidden_size, c.head_dim);
        let layers = (0..c.num_hidden_layers)
            .map(|_| DecoderLayer {
                input_layernorm: RmsNorm::init(h, c.rms_norm_eps, device),
                self_attn: Attention {
                    q_proj: Linear::init(
                        h,
                        c.num_attention_heads * hd,
                        c.attention_bias,
                        std,
                        device,
                    ),
                    k_proj: Linear::init(
                        h,
                        c.num_key_value_heads * hd,
                        c.attention_bias,
                        std,
                        device,
                    ),
                    v_proj: Linear::init(
                        h,
                        c.num_key_value_heads * hd,
                        c.attention_bias,
                        std,
                        device,
                    ),
                    o_proj: Linear::init(c.num_attention_heads * hd, h, c.o_proj_bias, std, device),
                },
                post_attention_layernorm: RmsNorm::init(h, c.rms_norm_eps, device),
                mlp: Mlp {
                    gate_proj: Linear::init(h, c.intermediate_size, c.mlp_bias, std, device),
                    up_proj: Linear::init(h, c.intermediate_size, c.mlp_bias, std, device),
                    down_proj: Linear::init(c.intermediate_size, h, c.mlp_bias, std, device),
                },
            })
            .collect();
        Ok(Llama {
            embed_tokens: Param::from_tensor(Tensor::random(
                [c.vocab_size, h],
                Distribution::Normal(0.0, std),
                device,
            )),
            layers,
            norm: RmsNorm::init(h, c.rms_norm_eps, device),
            lm_head: (!c.tie_word_embeddings)
                .then(|| Linear::init(h, c.vocab_size, false, std, device)),
            config: config.clone(),
        })
    }

    /// The same weights with another RoPE (continual pretraining with a RoPE extension).
    pub fn with_rope(mut self, rope: RopeConfig) -> Result<Self> {
        rope.validate(self.config.head_dim, "rope")?;
        self.config.rope = rope;
        Ok(self)
    }

    /// The config.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// The device of the parameters.
    pub fn device(&self) -> Device {
        self.embed_tokens.val().device()
    }

    /// cos and sin of positions `start..start + n`, frequencies chosen for a sequence of
    /// `rope_len` tokens (dynamic NTK and LongRoPE depend on it).
    fn rope_tables(&self, start: usize, n: usize, rope_len: usize, device: &Device) -> Rotary {
        let c = &self.config;
        let freqs = c
            .rope
            .frequencies(c.head_dim, c.max_position_embeddings, rope_len);
        let (cos, sin) = cos_sin(&freqs, start..start + n);
        Rotary::new(cos, sin, n, c.head_dim, device)
    }

    fn check_ids(&self, ids: &Tensor<2, Int>) -> Result<[usize; 2]> {
        let [b, t] = ids.dims();
        if b == 0 || t == 0 {
            return Err(ModelError::Input(format!(
                "token ids must be a non-empty [batch, seq] tensor, got [{b}, {t}]"
            )));
        }
        Ok([b, t])
    }

    /// The decoder without the head: final-norm hidden states `[b, t, hidden]` plus one stat
    /// per layer. `cache` (if any) supplies and receives keys/values; positions start at its
    /// length.
    fn run(
        &self,
        ids: Tensor<2, Int>,
        mode: Mode,
        mut cache: Option<&mut KvCache>,
        rope_len: Option<usize>,
    ) -> (Tensor<3>, Vec<Stat>) {
        let c = &self.config;
        let [b, t] = ids.dims();
        let device = ids.device();
        let start = cache.as_ref().map_or(0, |kv| kv.len);
        let rot = self.rope_tables(start, t, rope_len.unwrap_or(start + t), &device);
        let (heads, kv_heads, hd) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        // [b, t, hidden]
        let mut x = embedding(self.embed_tokens.val(), ids);
        let mut stats = Vec::with_capacity(self.layers.len());
        let flash = flash::available(&device);
        for (li, layer) in self.layers.iter().enumerate() {
            let h = layer.input_layernorm.forward(x.clone());
            let a = &layer.self_attn;
            // q: [b, heads, t, hd]; k, v: [b, kv_heads, t, hd]
            let (q, mut k, mut v) = a.qkv(h, (heads, kv_heads, hd), &rot);
            let host_blocks = match mode {
                Mode::Fused => Some((AttentionBlocks::flash(), false)),
                Mode::Entropy(blocks) => Some((blocks, true)),
                Mode::Materialized | Mode::Train | Mode::Probs => None,
            };
            if let (Some(kv), Some((blocks, want_entropy)), true) =
                (cache.as_deref_mut(), host_blocks, flash)
                && kv.host
            {
                // The kernel reads the cache in place: only this step's keys are copied.
                let shape = FlashShape {
                    k_len: start + t,
                    ..FlashShape::of(&q, &k, start)
                };
                let sizes = (b * kv_heads, t, hd);
                let host = kv.append_host(li, &to_f32_vec(k), &to_f32_vec(v), sizes);
                let (o, _, e) = flash::flash_attention_strided(
                    &to_f32_vec(q),
                    &host.k,
                    &host.v,
                    shape,
                    host.capacity,
                    blocks,
                    want_entropy,
                )
                .into_tensors(shape, &device);
                let stat = e.map_or(Stat::None, Stat::Entropy);
                stats.push(stat);
                x = self.finish_layer(layer, x, o, [b, t, heads * hd]);
                continue;
            }
            if let Some(kv) = cache.as_deref_mut() {
                match kv.layers[li].take() {
                    Some(LayerKv::Tensors(pk, pv)) => {
                        k = Tensor::cat(vec![pk, k], 2);
                        v = Tensor::cat(vec![pv, v], 2);
                    }
                    Some(LayerKv::Host(_)) => {
                        panic!("KV cache layer {li} holds host buffers off the CPU kernel")
                    }
                    None => {}
                }
                kv.layers[li] = Some(LayerKv::Tensors(k.clone(), v.clone()));
            }
            let (o, stat) = match mode {
                Mode::Materialized => (attend_materialized(q, k, v, start, false).0, Stat::None),
                Mode::Train if start == 0 => (flash_grad::attend(q, k, v), Stat::None),
                Mode::Train => (attend_materialized(q, k, v, start, false).0, Stat::None),
                Mode::Fused if flash => (
                    attend_blockwise(q, k, v, start, AttentionBlocks::flash(), false).0,
                    Stat::None,
                ),
                Mode::Fused if start == 0 || t == 1 => (attend_fused(q, k, v, start), Stat::None),
                Mode::Fused => (
                    attend_blockwise(q, k, v, start, AttentionBlocks::default(), false).0,
                    Stat::None,
                ),
                Mode::Entropy(blocks) => {
                    let (o, _, e) = attend_blockwise(q, k, v, start, blocks, true);
                    (o, Stat::Entropy(e.expect("entropy requested")))
                }
                Mode::Probs => {
                    let (o, p) = attend_materialized(q, k, v, start, true);
                    (o, Stat::Probs(p.expect("probabilities requested")))
                }
            };
            stats.push(stat);
            x = self.finish_layer(layer, x, o, [b, t, heads * hd]);
        }
        if let Some(kv) = cache {
            kv.len += t;
        }
        (self.norm.forward(x), stats)
    }

    /// The rest of a decoder layer after attention: the output projection of `o`
    /// `[b, heads, t, head_dim]` (reshaped to `merged` = `[b, t, heads * head_dim]`), the
    /// residual, and the MLP block.
    fn finish_layer(
        &self,
        layer: &DecoderLayer,
        x: Tensor<3>,
        o: Tensor<4>,
        merged: [usize; 3],
    ) -> Tensor<3> {
        let o = o.swap_dims(1, 2).reshape(merged);
        let x = x + layer.self_attn.o_proj.forward(o);
        x.clone() + layer.mlp.forward(layer.post_attention_layernorm.forward(x))
    }

    /// Logits of final-norm hidden states: `[b, t, hidden]` -> `[b, t, vocab]`.
    pub fn head(&self, hidden: Tensor<3>) -> Tensor<3> {
        match &self.lm_head {
            Some(head) => head.forward(hidden),
            None => {
                let [b, t, h] = hidden.dims();
                let embed = self.embed_tokens.val();
                let vocab = embed.dims()[0];
                fused::linear::linear_transposed(hidden.reshape([b * t, h]), embed)
                    .reshape([b, t, vocab])
            }
        }
    }

    fn attention_mode(&self, ids: &Tensor<2, Int>) -> Mode {
        let device = ids.device();
        if flash_grad::available(&device) {
            Mode::Train
        } else if device.is_autodiff() {
            Mode::Materialized
        } else {
            Mode::Fused
        }
    }

    /// Final-norm hidden states `[batch, seq, hidden]` of token ids `[batch, seq]`.
    pub fn forward_hidden(&self, ids: Tensor<2, Int>) -> Result<Tensor<3>> {
        self.check_ids(&ids)?;
        let mode = self.attention_mode(&ids);
        Ok(self.run(ids, mode, None, None).0)
    }

    /// Logits `[batch, seq, vocab]` of token ids `[batch, seq]`. On the CPU autodiff device the
    /// attention is the training op of [`flash_grad`], on another autodiff device it is built
    /// from differentiable ops; otherwise it is the fused forward kernel.
    pub fn forward(&self, ids: Tensor<2, Int>) -> Result<Tensor<3>> {
        Ok(self.head(self.forward_hidden(ids)?))
    }

    /// Mean next-token cross-entropy (nats) of `ids` `[batch, seq]`: the logits of
    /// `ids[:, :-1]` against `ids[:, 1:]`; shape `[1]`. The training loss.
    pub fn lm_loss(&self, ids: Tensor<2, Int>) -> Result<Tensor<1>> {
        let [_, t] = self.check_ids(&ids)?;
        if t < 2 {
            return Err(ModelError::Input(format!(
                "the loss needs at least 2 tokens per row, got {t}"
            )));
        }
        let logits = self.forward(ids.clone().narrow(1, 0, t - 1))?;
        fused::loss::cross_entropy(logits, ids.narrow(1, 1, t - 1))
    }

    /// Per-token negative log-likelihood `[batch, seq - 1]` (nats) of `ids[:, 1:]` given the
    /// prefix, with the head and log-softmax applied `chunk` positions at a time so that long
    /// inputs never hold `[batch, seq, vocab]` logits.
    pub fn nll(&self, ids: Tensor<2, Int>, chunk: usize) -> Result<Tensor<2>> {
        let [_, t] = self.check_ids(&ids)?;
        if t < 2 {
            return Err(ModelError::Input(format!(
                "NLL needs at least 2 tokens per row, got {t}"
            )));
        }
        let hidden = self.forward_hidden(ids.clone())?;
        self.nll_from_hidden(hidden, ids, chunk)
    }

    /// [`Llama::nll`] from final hidden states `[batch, seq, hidden]` already computed (e.g. by
    /// [`Llama::forward_entropy`]) for the same `ids` `[batch, seq]`; returns `[batch, seq - 1]`.
    pub fn nll_from_hidden(
        &self,
        hidden: Tensor<3>,
        ids: Tensor<2, Int>,
        chunk: usize,
    ) -> Result<Tensor<2>> {
        let [b, t] = self.check_ids(&ids)?;
        let [hb, ht, _] = hidden.dims();
        if (hb, ht) != (b, t) || t < 2 {
            return Err(ModelError::Input(format!(
                "hidden states [{hb}, {ht}, _] do not fit ids [{b}, {t}] (need seq >= 2)"
            )));
        }
        let chunk = chunk.max(1);
        if flash::available(&hidden.device()) {
            return self.nll_on_host(hidden, ids, chunk);
        }
        let mut parts = Vec::new();
        for s in (0..t - 1).step_by(chunk) {
            let n = chunk.min(t - 1 - s);
            let logits = self.head(hidden.clone().narrow(1, s, n));
            let logp = log_softmax(logits, 2);
            // [b, n, 1]
            let target = ids.clone().narrow(1, s + 1, n).unsqueeze_dim::<3>(2);
            parts.push(logp.gather(2, target).reshape([b, n]).neg());
        }
        Ok(Tensor::cat(parts, 1))
    }

    /// [`Llama::nll_from_hidden`] on the CPU: each chunk's logits `[b, n, vocab]` are read once
    /// on the host, where one vectorised pass per row gives `logsumexp - logit[target]`
    /// (instead of a log-softmax over the whole chunk and a gather).
    fn nll_on_host(
        &self,
        hidden: Tensor<3>,
        ids: Tensor<2, Int>,
        chunk: usize,
    ) -> Result<Tensor<2>> {
        let [b, t] = ids.dims();
        let vocab = self.config.vocab_size;
        let targets: Vec<i64> = ids
            .clone()
            .into_data()
            .try_into_vec_as::<i64>()
            .expect("int tensor data converts to i64");
        if let Some(bad) = targets.iter().find(|&&x| x < 0 || x as usize >= vocab) {
            return Err(ModelError::Input(format!(
                "token {bad} is not below vocab_size {vocab}"
            )));
        }
        let mut nll = vec![0f32; b * (t - 1)];
        for s in (0..t - 1).step_by(chunk) {
            let n = chunk.min(t - 1 - s);
            let mut logits = to_f32_vec(self.head(hidden.clone().narrow(1, s, n)));
            // One row per task: at 49K-word vocabularies the pass over the logits is as long
            // as a layer's MLP.
            let row_nll: Vec<f32> = logits
                .par_chunks_mut(vocab)
                .enumerate()
                .map(|(r, row)| {
                    let (bi, i) = (r / n, r % n);
                    let target = targets[bi * t + s + i + 1] as usize;
                    let picked = row[target];
                    flash::simd::logsumexp(row) - picked
                })
                .collect();
            for (r, v) in row_nll.into_iter().enumerate() {
                let (bi, i) = (r / n, r % n);
                nll[bi * (t - 1) + s + i] = v;
            }
        }
        Ok(Tensor::from_data(
            TensorData::new(nll, [b, t - 1]),
            &hidden.device(),
        ))
    }

    /// Final hidden states and per-layer, per-head attention entropy of every query, the
    /// attention computed block by block (memory linear in length). Shapes in
    /// [`EntropyOutput`]; logits are `self.head(out.hidden)`.
    pub fn forward_entropy(
        &self,
        ids: Tensor<2, Int>,
        blocks: AttentionBlocks,
    ) -> Result<EntropyOutput> {
        self.check_ids(&ids)?;
        let (hidden, stats) = self.run(ids, Mode::Entropy(blocks), None, None);
        let entropy = stats
            .into_iter()
            .map(|s| match s {
                Stat::Entropy(e) => e,
                _ => unreachable!("entropy mode returns entropy"),
            })
            .collect();
        Ok(EntropyOutput {
            hidden,
            entropy: Tensor::stack(entropy, 0),
        })
    }

    /// Attention probabilities of every layer, `[layers, batch, heads, seq, seq]` (quadratic
    /// memory: for short inputs and tests).
    pub fn attention_probs(&self, ids: Tensor<2, Int>) -> Result<Tensor<5>> {
        self.check_ids(&ids)?;
        let (_, stats) = self.run(ids, Mode::Probs, None, None);
        let probs = stats
            .into_iter()
            .map(|s| match s {
                Stat::Probs(p) => p,
                _ => unreachable!("probs mode returns probabilities"),
            })
            .collect();
        Ok(Tensor::stack(probs, 0))
    }

    /// Mean attention probability by relative distance `d = query - key`, bucketed by `edges`
    /// (strictly increasing; bucket `i` = `[edges[i], edges[i + 1])`), per layer and head, over
    /// the batch and all causal pairs, and every query's attention entropy: per layer one
    /// blockwise attention pass ([`attend_profile`]); memory linear in length.
    pub fn attention_distance(
        &self,
        ids: Tensor<2, Int>,
        edges: &[usize],
        blocks: AttentionBlocks,
    ) -> Result<DistanceProfile> {
        let [b, t] = self.check_ids(&ids)?;
        if edges.len() < 2 || edges.windows(2).any(|w| w[0] >= w[1]) {
            return Err(ModelError::Input(format!(
                "distance bucket edges must be at least 2 strictly increasing values, got {edges:?}"
            )));
        }
        let max_d = (*edges.last().expect("2 edges")).min(t);
        let c = &self.config;
        let (heads, kv_heads, hd) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        let device = ids.device();
        let rot = self.rope_tables(0, t, t, &device);
        let mut x = embedding(self.embed_tokens.val(), ids);
        let nb = edges.len() - 1;
        let mut prob_sum = Vec::new();
        let mut entropy = Vec::new();
        for layer in &self.layers {
            let h = layer.input_layernorm.forward(x.clone());
            let a = &layer.self_attn;
            let (q, k, v) = a.qkv(h, (heads, kv_heads, hd), &rot);
            let (o, e, sums) = attend_profile(q, k, v, blocks, edges);
            entropy.push(to_f32_vec(e));
            prob_sum.push(sums.chunks(nb).map(<[f64]>::to_vec).collect());
            x = self.finish_layer(layer, x, o, [b, t, heads * hd]);
        }
        let mut pair_count = vec![0u64; nb];
        for d in 0..max_d {
            if let Some(bi) = distance_bucket(edges, d) {
                pair_count[bi] += (b * (t - d)) as u64;
            }
        }
        Ok(DistanceProfile {
            edges: edges.to_vec(),
            prob_sum,
            pair_count,
            entropy,
        })
    }

    /// Forward of new tokens `[batch, n]` after the positions in `cache`, appending their keys
    /// and values. Returns logits `[batch, n, vocab]` and, if `entropy`, the attention entropy
    /// of the new queries `[layers, batch, heads, n]`.
    ///
    /// RoPE frequencies are those of a sequence of `cache.len() + n` tokens (for dynamic NTK
    /// and LongRoPE this is what transformers' generate does: each step's new keys use the
    /// frequencies of the length so far, cached keys keep theirs).
    pub fn forward_cached(
        &self,
        ids: Tensor<2, Int>,
        cache: &mut KvCache,
        entropy: Option<AttentionBlocks>,
    ) -> Result<(Tensor<3>, Option<Tensor<4>>)> {
        self.forward_cached_with_rope_len(ids, cache, entropy, None)
    }

    /// [`Llama::forward_cached`] with the RoPE length given explicitly (a prompt fed in two
    /// pieces must use the length of the whole prompt for both, as one forward would).
    pub fn forward_cached_with_rope_len(
        &self,
        ids: Tensor<2, Int>,
        cache: &mut KvCache,
        entropy: Option<AttentionBlocks>,
        rope_len: Option<usize>,
    ) -> Result<(Tensor<3>, Option<Tensor<4>>)> {
        let (hidden, ent) = self.forward_cached_hidden(ids, cache, entropy, rope_len)?;
        Ok((self.head(hidden), ent))
    }

    /// [`Llama::forward_cached_with_rope_len`] without the head: final-norm hidden states
    /// `[batch, n, hidden]` (a prompt's prefill, or an entropy pass, needs no logits; at 16K
    /// tokens the head alone is about a teraflop and `[n, vocab]` floats).
    pub fn forward_cached_hidden(
        &self,
        ids: Tensor<2, Int>,
        cache: &mut KvCache,
        entropy: Option<AttentionBlocks>,
        rope_len: Option<usize>,
    ) -> Result<(Tensor<3>, Option<Tensor<4>>)> {
        self.check_ids(&ids)?;
        if cache.layers.len() != self.layers.len() {
            return Err(ModelError::Input(format!(
                "KV cache has {} layers, the model {}",
                cache.layers.len(),
                self.layers.len()
            )));
        }
        let mode = match entropy {
            Some(blocks) => Mode::Entropy(blocks),
            None => Mode::Fused,
        };
        let (hidden, stats) = self.run(ids, mode, Some(cache), rope_len);
        let ent = entropy.map(|_| {
            Tensor::stack(
                stats
                    .into_iter()
                    .map(|s| match s {
                        Stat::Entropy(e) => e,
                        _ => unreachable!("entropy mode returns entropy"),
                    })
                    .collect(),
                0,
            )
        });
        Ok((hidden, ent))
    }
}

/// RoPE in the half-split layout: `x * cos + rotate_half(x) * sin`,
/// `rotate_half(x) = cat(-x[.., d/2..], x[.., ..d/2])`.
///
/// # Shapes
/// - x: `[b, h, t, d]`, cos, sin: `[1, 1, t, d]`
pub fn apply_rope(x: Tensor<4>, cos: Tensor<4>, sin: Tensor<4>) -> Tensor<4> {
    let d = x.dims()[3];
    let half = d / 2;
    let x1 = x.clone().narrow(3, 0, half);
    let x2 = x.clone().narrow(3, half, half);
    let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
    x * cos + rotated * sin
}

/// The values of a float tensor as f32 (any float dtype), row-major.
pub fn to_f32_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .try_into_vec_as::<f32>()
        .expect("float tensor data converts to f32")
}

/// Token ids `[batch, seq]` on `device` from rows of equal length.
pub fn ids_tensor(rows: &[Vec<u32>], device: &Device) -> Result<Tensor<2, Int>> {
    let t = rows.first().map_or(0, Vec::len);
    if rows.iter().any(|r| r.len() != t) {
        return Err(ModelError::Input("token rows differ in length".into()));
    }
    let flat: Vec<i64> = rows.iter().flatten().map(|&x| x as i64).collect();
    Ok(Tensor::from_data(
        TensorData::new(flat, [rows.len(), t]),
        device,
    ))
}
