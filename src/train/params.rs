//! The parameters of a `train` stage, as the user writes them in the pipeline file.
//!
//! Three tables: `model` (a new model's architecture in Hugging Face config.json keys, tiny
//! LLaMA defaults), `train` (the optimisation: length, batch, budget, AdamW, schedule,
//! checkpoints, logging) and `rope` (the RoPE to train with: the extension of continual
//! pretraining, or the base of a new model). Every struct rejects unknown keys, fills defaults,
//! and derives a JSON schema from these doc comments for the pipeline schema.
//!
//! The conversions to the model's own types live here too ([`ModelParams::config`],
//! [`RopeParams::apply`]), so that what a key means is decided in one place.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::error::{Result, TrainError};
use crate::model::{LlamaConfig, RopeConfig, RopeScaling};

/// Parameters of a `train` stage: every key of `[stages.X]` besides `kind`, `needs`, `matrix`
/// and `seed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct TrainStageParams {
    /// Architecture of a new model (Hugging Face config.json keys). Only without `needs.init`:
    /// a model started from `init` keeps its architecture.
    #[serde(default)]
    pub model: Option<ModelParams>,
    /// The optimisation.
    #[serde(default)]
    pub train: TrainParams,
    /// The RoPE to train with (a `matrix.rope` sweeps it): a RoPE extension for continual
    /// pretraining from `init`, or the RoPE of a new model. Absent: the model's own RoPE.
    #[serde(default)]
    pub rope: Option<RopeParams>,
}

/// A new model's architecture, in config.json keys. Defaults: the 0.9M-parameter LLaMA of
/// SCALE.md (hidden 128, 4 layers, 4 heads, SwiGLU width 352, theta 1e4, untied head).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelParams {
    /// Vocabulary size; default: the data stage's tokenizer's. Must be at least that.
    #[serde(default)]
    pub vocab_size: Option<usize>,
    /// Width of the residual stream.
    #[serde(default = "d_hidden")]
    pub hidden_size: usize,
    /// SwiGLU width; default 8/3 of `hidden_size` rounded up to a multiple of 32.
    #[serde(default)]
    pub intermediate_size: Option<usize>,
    /// Decoder layers.
    #[serde(default = "d_layers")]
    pub num_hidden_layers: usize,
    /// Query heads.
    #[serde(default = "d_heads")]
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention); default `num_attention_heads`.
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Per-head width; default `hidden_size / num_attention_heads`.
    #[serde(default)]
    pub head_dim: Option<usize>,
    /// The length the model is trained for (RoPE's reference length); default `train.seq_len`.
    #[serde(default)]
    pub max_position_embeddings: Option<usize>,
    /// RMSNorm epsilon.
    #[serde(default = "d_eps_norm")]
    pub rms_norm_eps: f64,
    /// RoPE base.
    #[serde(default = "d_theta")]
    pub rope_theta: f64,
    /// Share the output head with the token embeddings.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Biases on the attention projections.
    #[serde(default)]
    pub attention_bias: bool,
    /// Biases in the MLP.
    #[serde(default)]
    pub mlp_bias: bool,
}

fn d_hidden() -> usize {
    128
}
fn d_layers() -> usize {
    4
}
fn d_heads() -> usize {
    4
}
fn d_eps_norm() -> f64 {
    1e-6
}
fn d_theta() -> f64 {
    1e4
}

impl Default for ModelParams {
    fn default() -> Self {
        ModelParams {
            vocab_size: None,
            hidden_size: d_hidden(),
            intermediate_size: None,
            num_hidden_layers: d_layers(),
            num_attention_heads: d_heads(),
            num_key_value_heads: None,
            head_dim: None,
            max_position_embeddings: None,
            rms_norm_eps: d_eps_norm(),
            rope_theta: d_theta(),
            tie_word_embeddings: false,
            attention_bias: false,
            mlp_bias: false,
        }
    }
}

/// The largest width, depth or head count a `model` table may give: far above any LLaMA (8192
/// wide, 126 layers), and small enough that sizes multiply without overflow.
pub const MAX_MODEL_DIM: usize = 1 << 20;

/// The most parameters a new model may have (1e12, 4 TB of f32 weights): a larger one is a typo,
/// and would fail allocating its first tensor.
pub const MAX_MODEL_PARAMS: u64 = 1_000_000_000_000;

impl ModelParams {
    /// Check the architecture without the data stage's vocabulary (`vocab_size`, when not given,
    /// counts as 1 in the size bound) for training at `seq_len`; errors name the key as
    /// `model.<key>`, or `train.seq_len` when it is longer than `max_position_embeddings`.
    pub fn check(&self, seq_len: usize) -> Result<()> {
        let err = |k: &str, m: String| Err(TrainError::param(&format!("model.{k}"), m));
        for (key, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", Some(self.hidden_size)),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", Some(self.num_hidden_layers)),
            ("num_attention_heads", Some(self.num_attention_heads)),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            match v {
                Some(0) => return err(key, "must be at least 1".into()),
                Some(v) if v > MAX_MODEL_DIM => {
                    return err(key, format!("{v} is more than {MAX_MODEL_DIM}"));
                }
                _ => {}
            }
        }
        if self.head_dim.is_none() && !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return err(
                "num_attention_heads",
                format!(
                    "{} does not divide hidden_size {} (or give head_dim)",
                    self.num_attention_heads, self.hidden_size
                ),
            );
        }
        if let Some(max) = self.max_position_embeddings
            && seq_len > max
        {
            return Err(TrainError::param(
                "train.seq_len",
                format!(
                    "{seq_len} is longer than the new model's model.max_position_embeddings = {max}: train at most at its length, or raise max_position_embeddings (leave it out and it is seq_len)"
                ),
            ));
        }
        let config = self
            .config(self.vocab_size.unwrap_or(1), seq_len, None, None)
            .map_err(|e| match e {
                TrainError::Model(crate::model::ModelError::Config { key, message, .. }) => {
                    TrainError::param(&format!("model.{key}"), message)
                }
                other => other,
            })?;
        match config.checked_num_params() {
            Some(n) if n as u64 <= MAX_MODEL_PARAMS => {}
            n => {
                return Err(TrainError::param(
                    "model",
                    format!(
                        "the model would have {}, more than the {MAX_MODEL_PARAMS} parameters a model may have",
                        n.map_or("more than 2^64 parameters".into(), |n| format!(
                            "{n} parameters ({} of f32 weights)",
                            crate::cli::human_bytes((n as u64).saturating_mul(4))
                        ))
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The model config: `data_vocab` is the tokenizer's vocabulary (the default and the minimum
    /// `vocab_size`), `seq_len` the training length (the default `max_position_embeddings`),
    /// `bos`/`eos` the tokenizer's special tokens.
    pub fn config(
        &self,
        data_vocab: usize,
        seq_len: usize,
        bos: Option<u32>,
        eos: Option<u32>,
    ) -> Result<LlamaConfig> {
        let vocab = self.vocab_size.unwrap_or(data_vocab);
        if vocab < data_vocab {
            return Err(TrainError::param(
                "model.vocab_size",
                format!("{vocab} is smaller than the tokenizer's vocabulary ({data_vocab})"),
            ));
        }
        let ffn = self
            .intermediate_size
            .unwrap_or_else(|| (8 * self.hidden_size).div_ceil(3).div_ceil(32) * 32);
        let mut m = Map::new();
        m.insert("model_type".into(), json!("llama"));
        m.insert("vocab_size".into(), json!(vocab));
        m.insert("hidden_size".into(), json!(self.hidden_size));
        m.insert("intermediate_size".into(), json!(ffn));
        m.insert("num_hidden_layers".into(), json!(self.num_hidden_layers));
        m.insert(
            "num_attention_heads".into(),
            json!(self.num_attention_heads),
        );
        if let Some(kv) = self.num_key_value_heads {
            m.insert("num_key_value_heads".into(), json!(kv));
        }
        if let Some(hd) = self.head_dim {
            m.insert("head_dim".into(), json!(hd));
        }
        m.insert(
            "max_position_embeddings".into(),
            json!(self.max_position_embeddings.unwrap_or(seq_len)),
        );
        m.insert("rms_norm_eps".into(), json!(self.rms_norm_eps));
        m.insert("rope_theta".into(), json!(self.rope_theta));
        m.insert(
            "tie_word_embeddings".into(),
            json!(self.tie_word_embeddings),
        );
        m.insert("attention_bias".into(), json!(self.attention_bias));
        m.insert("mlp_bias".into(), json!(self.mlp_bias));
        m.insert("bos_token_id".into(), json!(bos));
        m.insert("eos_token_id".into(), json!(eos));
        let cfg = LlamaConfig::from_hf_value(&Value::Object(m), "model")?;
        Ok(cfg)
    }
}

/// How the learning rate moves after warmup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    /// Stay at `lr`.
    Constant,
    /// Straight down to `lr * min_lr_ratio` at the last step.
    Linear,
    /// Half a cosine down to `lr * min_lr_ratio` at the last step.
    #[default]
    Cosine,
}

/// Where training windows start in the token stream of the data stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum Sampling {
    /// Anywhere in the concatenated stream (windows may span documents).
    #[default]
    Stream,
    /// At the start of a random document.
    DocumentStart,
    /// In stream order without sampling: window `i` covers tokens `[i * seq_len, (i + 1) *
    /// seq_len + 1)` of the split, batches are filled in order, and after the last whole window
    /// the windows start over at window 0 (the YaRN recipe's pre-chunked dataset).
    Sequential,
}

/// Which value of the learning-rate schedule optimiser step `k` (from 1) runs at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleOrigin {
    /// The schedule's value at `k - 1`, as transformers' schedulers stepped after each
    /// optimiser step give: the first warmup step has learning rate 0, and the last step runs
    /// one step short of `lr * min_lr_ratio`.
    #[default]
    Zero,
    /// The schedule's value at `k`: the first warmup step has `lr / warmup_steps`, and the last
    /// step runs at `lr * min_lr_ratio` (ropelens before 2026-11-30).
    One,
}

/// A group of parameters, for `train.trainable`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Hash)]
#[serde(rename_all = "snake_case")]
pub enum ParamGroup {
    /// Token embeddings (`embed_tokens`).
    Embeddings,
    /// Attention projections (q, k, v, o; weights and biases).
    Attention,
    /// MLP projections (gate, up, down).
    Mlp,
    /// RMSNorm weights (every layer's and the final one).
    Norms,
    /// The untied output head (`lm_head`).
    Head,
}

impl ParamGroup {
    /// The group of a parameter, from its module path (`layers.0.self_attn.q_proj.weight`).
    pub fn of_path(path: &str) -> ParamGroup {
        if path.starts_with("embed_tokens") {
            ParamGroup::Embeddings
        } else if path.starts_with("lm_head") {
            ParamGroup::Head
        } else if path.contains("self_attn") {
            ParamGroup::Attention
        } else if path.contains(".mlp.") {
            ParamGroup::Mlp
        } else {
            ParamGroup::Norms
        }
    }
}

/// The optimisation of a `train` stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TrainParams {
    /// Training length: tokens the model sees per row (each row is a window of `seq_len + 1`
    /// tokens, predicting `seq_len`).
    #[serde(default = "d_seq_len")]
    pub seq_len: usize,
    /// Rows per micro-batch.
    #[serde(default = "d_batch")]
    pub batch_size: usize,
    /// Micro-batches whose gradients are summed per optimiser step (gradient accumulation).
    #[serde(default = "d_one")]
    pub grad_accum: usize,
    /// Optimiser steps. Give `steps` or `tokens`, not both; neither: 1000 steps.
    #[serde(default)]
    pub steps: Option<u64>,
    /// Token budget instead of `steps`: steps = ceil(tokens / (batch_size * grad_accum *
    /// seq_len)), so runs at different lengths see equal numbers of tokens.
    #[serde(default)]
    pub tokens: Option<u64>,
    /// Peak learning rate.
    #[serde(default = "d_lr")]
    pub lr: f64,
    /// Learning-rate shape after warmup.
    #[serde(default)]
    pub schedule: Schedule,
    /// Linear warmup from 0 to `lr` over this many steps; default 5% of the steps.
    #[serde(default)]
    pub warmup_steps: Option<u64>,
    /// Which schedule value optimiser step k runs at: `"zero"` (at k - 1, as transformers'
    /// schedulers) or `"one"` (at k).
    #[serde(default)]
    pub schedule_origin: ScheduleOrigin,
    /// Final learning rate of `linear` and `cosine` as a fraction of `lr`.
    #[serde(default = "d_min_lr_ratio")]
    pub min_lr_ratio: f64,
    /// AdamW (beta1, beta2).
    #[serde(default = "d_betas", deserialize_with = "two_betas")]
    pub betas: [f64; 2],
    /// AdamW epsilon.
    #[serde(default = "d_eps")]
    pub eps: f64,
    /// Decoupled weight decay (AdamW), applied to weight matrices; never to norms or biases.
    #[serde(default = "d_weight_decay")]
    pub weight_decay: f64,
    /// Also decay the token embeddings (and a tied head).
    #[serde(default)]
    pub decay_embeddings: bool,
    /// Clip the global gradient L2 norm to this value; 0 disables clipping.
    #[serde(default = "d_one_f")]
    pub grad_clip: f64,
    /// Train only these parameter groups and freeze the rest (`["attention"]`); default all.
    #[serde(default)]
    pub trainable: Option<Vec<ParamGroup>>,
    /// Where training windows start.
    #[serde(default)]
    pub sample: Sampling,
    /// Data-parallel shards each micro-batch is split into (at most one per row). A property of
    /// the run, not of the machine: the same shards give the same numbers bit for bit with any
    /// number of threads, which only change the speed (up to `shards` cores are used).
    #[serde(default = "d_shards")]
    pub shards: usize,
    /// Checkpoint (model, optimizer, schedule and data position) every this many steps, and at
    /// the end; 0: only at the end.
    #[serde(default = "d_every")]
    pub checkpoint_every: u64,
    /// Keep the last checkpoint (with optimizer state) in the output; otherwise it is removed
    /// once the final model is written.
    #[serde(default)]
    pub keep_checkpoint: bool,
    /// Validation loss every this many steps, and at the end; 0: only at the end.
    #[serde(default = "d_every")]
    pub val_every: u64,
    /// Micro-batches of the validation split per validation pass (fixed windows).
    #[serde(default = "d_val_batches")]
    pub val_batches: usize,
    /// A `train_log` row every this many steps (and at the first and the last).
    #[serde(default = "d_log_every")]
    pub log_every: u64,
}

fn d_seq_len() -> usize {
    128
}
fn d_batch() -> usize {
    32
}
fn d_one() -> usize {
    1
}
fn d_one_f() -> f64 {
    1.0
}
/// Shards per micro-batch by default (docs/train.md "Threads" has the measurements).
pub const DEFAULT_SHARDS: usize = 2;

fn d_shards() -> usize {
    DEFAULT_SHARDS
}
fn d_lr() -> f64 {
    1e-3
}
fn d_min_lr_ratio() -> f64 {
    0.1
}
fn d_betas() -> [f64; 2] {
    [0.9, 0.95]
}
/// `[beta1, beta2]`, refusing a list of another length: serde reads a fixed-size array by taking
/// its first items, and would drop a third beta without a word.
fn two_betas<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<[f64; 2], D::Error> {
    let v = Vec::<f64>::deserialize(d)?;
    <[f64; 2]>::try_from(v.as_slice())
        .map_err(|_| serde::de::Error::invalid_length(v.len(), &"two betas, [beta1, beta2]"))
}
fn d_eps() -> f64 {
    1e-8
}
fn d_weight_decay() -> f64 {
    0.1
}
fn d_every() -> u64 {
    100
}
fn d_val_batches() -> usize {
    4
}
fn d_log_every() -> u64 {
    10
}

/// The largest `seq_len`, `batch_size` or `grad_accum` (4M, the evaluations' longest context): a
/// larger one is a typo that would fail allocating its first batch.
pub const MAX_TRAIN_DIM: usize = 1 << 22;

/// Steps when neither `steps` nor `tokens` is given.
pub const DEFAULT_STEPS: u64 = 1000;

impl Default for TrainParams {
    fn default() -> Self {
        TrainParams {
            seq_len: d_seq_len(),
            batch_size: d_batch(),
            grad_accum: d_one(),
            steps: None,
            tokens: None,
            lr: d_lr(),
            schedule: Schedule::default(),
            warmup_steps: None,
            schedule_origin: ScheduleOrigin::default(),
            min_lr_ratio: d_min_lr_ratio(),
            betas: d_betas(),
            eps: d_eps(),
            weight_decay: d_weight_decay(),
            decay_embeddings: false,
            grad_clip: d_one_f(),
            trainable: None,
            sample: Sampling::default(),
            shards: d_shards(),
            checkpoint_every: d_every(),
            keep_checkpoint: false,
            val_every: d_every(),
            val_batches: d_val_batches(),
            log_every: d_log_every(),
        }
    }
}

impl TrainParams {
    /// Tokens predicted per optimiser step.
    pub fn tokens_per_step(&self) -> u64 {
        (self.batch_size * self.grad_accum * self.seq_len) as u64
    }

    /// Optimiser steps of the run (from `steps`, `tokens` or the default).
    pub fn total_steps(&self) -> u64 {
        match (self.steps, self.tokens) {
            (Some(s), _) => s,
            (None, Some(t)) => t.div_ceil(self.tokens_per_step().max(1)),
            (None, None) => DEFAULT_STEPS,
        }
    }

    /// Warmup steps (explicit, or 5% of the run).
    pub fn warmup(&self) -> u64 {
        self.warmup_steps
            .unwrap_or_else(|| (self.total_steps() as f64 * 0.05).round() as u64)
    }

    /// Check every value; errors name the key as `train.<key>`.
    pub fn validate(&self) -> Result<()> {
        let err = |k: &str, m: String| Err(TrainError::param(&format!("train.{k}"), m));
        for (k, v) in [
            ("seq_len", self.seq_len),
            ("batch_size", self.batch_size),
            ("grad_accum", self.grad_accum),
            ("val_batches", self.val_batches),
            ("shards", self.shards),
        ] {
            if v == 0 {
                return err(k, "must be at least 1".into());
            }
        }
        for (k, v) in [
            ("seq_len", self.seq_len),
            ("batch_size", self.batch_size),
            ("grad_accum", self.grad_accum),
        ] {
            if v > MAX_TRAIN_DIM {
                return err(k, format!("{v} is more than {MAX_TRAIN_DIM}"));
            }
        }
        if self.log_every == 0 {
            return err("log_every", "must be at least 1".into());
        }
        match (self.steps, self.tokens) {
            (Some(_), Some(_)) => {
                return err(
                    "tokens",
                    "give `steps` or `tokens`, not both (a token budget sets the steps)".into(),
                );
            }
            (Some(0), None) => return err("steps", "must be at least 1".into()),
            (None, Some(0)) => return err("tokens", "must be at least 1".into()),
            _ => {}
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return err("lr", format!("must be a number > 0, got {}", self.lr));
        }
        if !(0.0..=1.0).contains(&self.min_lr_ratio) {
            return err(
                "min_lr_ratio",
                format!("must be in [0, 1], got {}", self.min_lr_ratio),
            );
        }
        if let Some(w) = self.warmup_steps
            && w > self.total_steps()
        {
            return err(
                "warmup_steps",
                format!(
                    "{w} is more than the {} steps of the run",
                    self.total_steps()
                ),
            );
        }
        for (i, b) in self.betas.iter().enumerate() {
            if !(0.0..1.0).contains(b) {
                return err("betas", format!("beta{} must be in [0, 1), got {b}", i + 1));
            }
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return err("eps", format!("must be a number > 0, got {}", self.eps));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return err(
                "weight_decay",
                format!("must be a number >= 0, got {}", self.weight_decay),
            );
        }
        if !(self.grad_clip.is_finite() && self.grad_clip >= 0.0) {
            return err(
                "grad_clip",
                format!("must be a number >= 0 (0 disables), got {}", self.grad_clip),
            );
        }
        if let Some(groups) = &self.trainable
            && groups.is_empty()
        {
            return err(
                "trainable",
                "is empty: nothing would train (leave it out to train everything)".into(),
            );
        }
        Ok(())
    }

    /// Whether a parameter (by module path) is trained.
    pub fn is_trainable(&self, path: &str) -> bool {
        self.trainable
            .as_ref()
            .is_none_or(|g| g.contains(&ParamGroup::of_path(path)))
    }

    /// Whether a trained parameter (by module path) gets weight decay.
    pub fn decays(&self, path: &str) -> bool {
        match ParamGroup::of_path(path) {
            ParamGroup::Norms => false,
            ParamGroup::Embeddings => self.decay_embeddings,
            _ => !path.ends_with("bias"),
        }
    }
}

/// A RoPE to train with: a `rope_type` and that type's keys in transformers' `rope_parameters`
/// form ([`RopeScaling`]: a key of another type is an error at parse time), plus the base and
/// the model's new length.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RopeParams {
    /// RoPE base; default the model's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_theta: Option<f64>,
    /// The model's new `max_position_embeddings`; default the trained length times `factor`
    /// (linear, ntk, yarn, llama3, longrope), unchanged for dynamic and default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_position_embeddings: Option<usize>,
    /// The RoPE type and its keys.
    #[serde(flatten)]
    pub scaling: RopeScaling,
}

impl RopeParams {
    /// Check what can be checked without the model (its `head_dim` waits for [`Self::apply`]);
    /// errors name the key as `rope.<key>`.
    pub fn check(&self) -> Result<()> {
        let err = |k: &str, m: String| Err(TrainError::param(&format!("rope.{k}"), m));
        if let Some(t) = self.rope_theta
            && !(t.is_finite() && t > 0.0)
        {
            return err("rope_theta", format!("must be > 0, got {t}"));
        }
        if self.max_position_embeddings == Some(0) {
            return err("max_position_embeddings", "must be > 0".into());
        }
        self.scaling
            .kind()
            .check(None)
            .or_else(|(key, message)| err(key, message))
    }

    /// `config` with this RoPE. The model's trained length (its RoPE's
    /// `original_max_position_embeddings` if it has one, else `max_position_embeddings`) becomes
    /// the new RoPE's original length, and `max_position_embeddings` is set as transformers
    /// expects for the type ([`crate::model::rope::RopeKind::extended_length`]): original x
    /// factor for linear, ntk (by factor), yarn, llama3 and longrope; unchanged for default, ntk
    /// by base, and dynamic (whose threshold it is).
    pub fn apply(&self, config: &LlamaConfig) -> Result<LlamaConfig> {
        let trained_len = config
            .rope
            .scaling
            .kind()
            .original_length()
            .unwrap_or(config.max_position_embeddings);
        let mut scaling = self.scaling.clone();
        let orig = scaling.kind().original_length().unwrap_or(trained_len);
        scaling.kind_mut().set_original_length(orig);
        let max_pos = self
            .max_position_embeddings
            .or_else(|| scaling.kind().extended_length(orig))
            .unwrap_or(trained_len);
        let rope = RopeConfig {
            theta: self.rope_theta.unwrap_or(config.rope.theta),
            scaling,
        };
        let mut out = config.clone().with_rope(rope);
        out.max_position_embeddings = max_pos;
        out.validate("rope")?;
        Ok(out)
    }

    /// `model` with this RoPE (see [`RopeParams::apply`]): every weight kept, only the rotary
    /// frequencies and the lengths in its config changed.
    pub fn apply_to(&self, model: crate::model::Llama) -> Result<crate::model::Llama> {
        let config = self.apply(model.config())?;
        let mut model = model.with_rope(config.rope.clone())?;
        model.config.max_position_embeddings = config.max_position_embeddings;
        Ok(model)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::rope::Yarn;

    fn parse(text: &str) -> std::result::Result<TrainStageParams, toml::de::Error> {
        toml::from_str(text)
    }

    #[test]
    fn defaults_and_unknown_keys() {
        let p = parse("train = { seq_len = 64, steps = 10 }").unwrap();
        assert_eq!(p.train.seq_len, 64);
        assert_eq!(p.train.batch_size, 32);
        assert_eq!(p.train.total_steps(), 10);
        assert_eq!(p.train.warmup(), 1);
        assert!(p.model.is_none() && p.rope.is_none());
        let e = parse("train = { seq_len = 64, stepz = 10 }").unwrap_err();
        assert!(e.to_string().contains("unknown field `stepz`"), "{e}");
        let e = parse("model = { hiden_size = 3 }").unwrap_err();
        assert!(e.to_string().contains("unknown field `hiden_size`"), "{e}");
    }

    #[test]
    fn token_budget_sets_steps_and_conflicts_with_steps() {
        let p = parse("train = { seq_len = 64, batch_size = 8, grad_accum = 2, tokens = 10000 }")
            .unwrap();
        // 8 * 2 * 64 = 1024 tokens per step.
        assert_eq!(p.train.total_steps(), 10);
        let p = parse("train = { tokens = 100, steps = 3 }").unwrap();
        assert_eq!(
            p.train.validate().unwrap_err().to_string(),
            "`train.tokens`: give `steps` or `tokens`, not both (a token budget sets the steps)"
        );
        let p = parse("train = { lr = -1.0 }").unwrap();
        assert_eq!(
            p.train.validate().unwrap_err().to_string(),
            "`train.lr`: must be a number > 0, got -1"
        );
    }

    #[test]
    fn groups_and_decay() {
        let p = TrainParams {
            trainable: Some(vec![ParamGroup::Attention]),
            ..TrainParams::default()
        };
        assert!(p.is_trainable("layers.1.self_attn.q_proj.weight"));
        assert!(!p.is_trainable("layers.1.mlp.up_proj.weight"));
        assert!(!p.is_trainable("embed_tokens"));
        assert!(!p.decays("norm.weight"));
        assert!(!p.decays("layers.0.input_layernorm.weight"));
        assert!(!p.decays("embed_tokens"));
        assert!(p.decays("lm_head.weight"));
        assert!(!p.decays("layers.0.self_attn.q_proj.bias"));
    }

    #[test]
    fn rope_extension_sets_lengths_as_transformers() {
        let base = LlamaConfig::new(100, 64, 2, 4, 64);
        let rope = |text: &str| -> RopeParams { toml::from_str(text).unwrap() };
        let yarn = rope("rope_type = \"yarn\"\nfactor = 4.0")
            .apply(&base)
            .unwrap();
        assert_eq!(yarn.max_position_embeddings, 256);
        assert!(matches!(
            yarn.rope.scaling,
            RopeScaling::Yarn(Yarn {
                original_max_position_embeddings: Some(64),
                factor: 4.0,
                ..
            })
        ));
        // Extending the extended model again keeps the original length as the reference.
        let again = rope("rope_type = \"yarn\"\nfactor = 8.0")
            .apply(&yarn)
            .unwrap();
        assert_eq!(again.max_position_embeddings, 512);
        let pi = rope("rope_type = \"linear\"\nfactor = 4.0")
            .apply(&base)
            .unwrap();
        assert_eq!(pi.max_position_embeddings, 256);
        let dynamic = rope("rope_type = \"dynamic\"\nfactor = 4.0")
            .apply(&base)
            .unwrap();
        assert_eq!(dynamic.max_position_embeddings, 64);
        let ntk = rope("rope_type = \"ntk\"\nbase = 1e6")
            .apply(&base)
            .unwrap();
        assert_eq!(ntk.rope.effective_theta(16), 1e6);
        assert_eq!(ntk.max_position_embeddings, 64);
        // A key of another type is refused when the table is read.
        let e =
            toml::from_str::<RopeParams>("rope_type = \"linear\"\nfactor = 4.0\nbeta_fast = 2.0")
                .unwrap_err();
        assert!(
            e.to_string()
                .contains("unknown field `beta_fast`, expected `factor`"),
            "{e}"
        );
        let e = rope("rope_type = \"linear\"\nfactor = 0.5")
            .apply(&base)
            .unwrap_err();
        assert!(
            e.to_string().contains("factor must be a number >= 1"),
            "{e}"
        );
        let e = toml::from_str::<RopeParams>("rope_type = \"yarn\"").unwrap_err();
        assert!(e.to_string().contains("missing field `factor`"), "{e}");
        // The base and the length sit beside the type's keys.
        let own = rope(
            "rope_type = \"linear\"\nfactor = 2.0\nrope_theta = 5e5\nmax_position_embeddings = 100",
        )
        .apply(&base)
        .unwrap();
        assert_eq!((own.rope.theta, own.max_position_embeddings), (5e5, 100));
        assert!(e.to_string().contains("factor"), "{e}");
    }

    #[test]
    fn model_config_from_hf_keys() {
        let m = ModelParams::default();
        let c = m.config(300, 64, Some(1), Some(2)).unwrap();
        assert_eq!(
            (c.vocab_size, c.hidden_size, c.intermediate_size, c.head_dim),
            (300, 128, 352, 32)
        );
        assert_eq!(c.max_position_embeddings, 64);
        assert_eq!(c.eos_token_id, vec![2]);
        let small = ModelParams {
            vocab_size: Some(10),
            ..ModelParams::default()
        };
        assert_eq!(
            small.config(300, 64, None, None).unwrap_err().to_string(),
            "`model.vocab_size`: 10 is smaller than the tokenizer's vocabulary (300)"
        );
        let bad = ModelParams {
            num_key_value_heads: Some(3),
            ..ModelParams::default()
        };
        assert!(bad.config(300, 64, None, None).is_err());
    }
}
