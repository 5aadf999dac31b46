//! The model's configuration, read from and written to Hugging Face `config.json`.
//!
//! One struct, [`LlamaConfig`], covers `LlamaForCausalLM` and the Mistral/Qwen2 files of the same
//! architecture. RoPE comes from either layout transformers has used: 4.x (`rope_theta` plus
//! `rope_scaling` with `type` or `rope_type`) and 5.x (`rope_parameters`). Writing picks the
//! layout ([`HfLayout`]); `Both` writes the two consistently so that every transformers version
//! reads the same model. `ntk` is written as `default` with the enlarged `rope_theta` plus a
//! top-level `ropelens_rope` key that transformers keeps and ignores (docs/model.md).

use std::path::Path;

use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::error::{ModelError, Result};
use super::rope::{DEFAULT_THETA, RopeConfig, RopeScaling};

/// Name of the top-level key that records ropelens's own rope type (`ntk`) in config.json.
pub const ROPELENS_ROPE_KEY: &str = "ropelens_rope";

/// Architecture and RoPE of a LLaMA-family decoder.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    /// `model_type`: "llama", "mistral" or "qwen2".
    pub model_type: String,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the SwiGLU MLP.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (GQA); divides `num_attention_heads`.
    pub num_key_value_heads: usize,
    /// Per-head width.
    pub head_dim: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// The length the model was trained for (RoPE's reference length).
    pub max_position_embeddings: usize,
    /// Whether `lm_head` shares the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Biases on q/k/v/o (`attention_bias`; always q/k/v for Qwen2).
    pub attention_bias: bool,
    /// Bias on the o projection (false for Qwen2 even though q/k/v have one).
    pub o_proj_bias: bool,
    /// Biases in the MLP.
    pub mlp_bias: bool,
    /// Beginning-of-sequence token.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence token(s).
    pub eos_token_id: Vec<u32>,
    /// RoPE base and type.
    pub rope: RopeConfig,
}

/// Which config.json layout to write for RoPE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HfLayout {
    /// transformers 4.x: top-level `rope_theta` and `rope_scaling` (null for default RoPE).
    V4,
    /// transformers 5.x: `rope_parameters` with `rope_type` and `rope_theta`.
    V5,
    /// Both, consistently (what [`LlamaConfig::save`] writes by default).
    #[default]
    Both,
}

impl LlamaConfig {
    /// A small LLaMA config: `num_key_value_heads = heads`, `head_dim = hidden / heads`,
    /// `intermediate_size` the SwiGLU width 8/3 * hidden rounded up to a multiple of 32,
    /// eps 1e-6, untied head, theta 1e4.
    pub fn new(
        vocab_size: usize,
        hidden_size: usize,
        num_hidden_layers: usize,
        num_attention_heads: usize,
        max_position_embeddings: usize,
    ) -> Self {
        let ffn = (8 * hidden_size).div_ceil(3).div_ceil(32) * 32;
        LlamaConfig {
            model_type: "llama".into(),
            hidden_size,
            intermediate_size: ffn,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads: num_attention_heads,
            head_dim: hidden_size / num_attention_heads.max(1),
            rms_norm_eps: 1e-6,
            vocab_size,
            max_position_embeddings,
            tie_word_embeddings: false,
            attention_bias: false,
            o_proj_bias: false,
            mlp_bias: false,
            bos_token_id: None,
            eos_token_id: Vec::new(),
            rope: RopeConfig::default(),
        }
    }

    /// The same config with another RoPE.
    pub fn with_rope(mut self, rope: RopeConfig) -> Self {
        self.rope = rope;
        self
    }

    /// Query heads per key/value head.
    pub fn group_size(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads
    }

    /// Number of parameters of the model this config describes (`usize::MAX` when that
    /// overflows: see [`Self::checked_num_params`]).
    pub fn num_params(&self) -> usize {
        self.checked_num_params().unwrap_or(usize::MAX)
    }

    /// Number of parameters, or `None` when it does not fit a `usize` (a config with absurd
    /// sizes, refused before anything is allocated).
    pub fn checked_num_params(&self) -> Option<usize> {
        let n = |x: usize| x as u128;
        let (h, i, v) = (
            n(self.hidden_size),
            n(self.intermediate_size),
            n(self.vocab_size),
        );
        let q = n(self.num_attention_heads).checked_mul(n(self.head_dim))?;
        let kv = n(self.num_key_value_heads).checked_mul(n(self.head_dim))?;
        let mut attn = h.checked_mul(q.checked_mul(2)?.checked_add(kv.checked_mul(2)?)?)?;
        if self.attention_bias {
            attn = attn.checked_add(q.checked_add(kv.checked_mul(2)?)?)?;
        }
        if self.o_proj_bias {
            attn = attn.checked_add(h)?;
        }
        let mut mlp = h.checked_mul(i)?.checked_mul(3)?;
        if self.mlp_bias {
            mlp = mlp.checked_add(2 * i + h)?;
        }
        let layer = attn.checked_add(mlp)?.checked_add(2 * h)?;
        let embed = v.checked_mul(h)?;
        let head = if self.tie_word_embeddings { 0 } else { embed };
        let total = n(self.num_hidden_layers)
            .checked_mul(layer)?
            .checked_add(embed)?
            .checked_add(h)?
            .checked_add(head)?;
        usize::try_from(total).ok()
    }

    /// Refuses a model whose f32 weights alone would not fit in the memory available now (Linux:
    /// `MemAvailable`, or the cgroup's limit when lower), naming its size: allocating it would
    /// abort the process instead. `what` names the model in the message.
    pub fn check_fits_in_memory(&self, what: &str) -> Result<()> {
        let params = self.checked_num_params();
        let bytes = params.map_or(u64::MAX, |p| (p as u64).saturating_mul(4));
        match crate::model::memory::available_bytes() {
            Some(avail) if bytes > avail => Err(ModelError::TooLarge {
                what: what.to_string(),
                params: params.map_or("more than 2^64".into(), |p| p.to_string()),
                bytes,
                available: avail,
            }),
            _ => Ok(()),
        }
    }

    /// Check sizes and RoPE. `source` names the file in errors.
    pub fn validate(&self, source: &str) -> Result<()> {
        let err = |key: &str, msg: String| Err(ModelError::config(source, key, msg));
        for (key, v) in [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
            ("vocab_size", self.vocab_size),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if v == 0 {
                return err(key, "must be > 0".into());
            }
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return err(
                "num_key_value_heads",
                format!(
                    "must divide num_attention_heads ({}), got {}",
                    self.num_attention_heads, self.num_key_value_heads
                ),
            );
        }
        if self.rms_norm_eps.is_nan() || self.rms_norm_eps <= 0.0 {
            return err(
                "rms_norm_eps",
                format!("must be > 0, got {}", self.rms_norm_eps),
            );
        }
        if let Some(bad) = self
            .eos_token_id
            .iter()
            .find(|&&t| t as usize >= self.vocab_size)
        {
            return err(
                "eos_token_id",
                format!("{bad} is not below vocab_size {}", self.vocab_size),
            );
        }
        self.rope.validate(self.head_dim, source)
    }

    /// Read `config.json` (a file, or a directory holding one).
    pub fn load(path: &Path) -> Result<Self> {
        let file = if path.is_dir() {
            path.join("config.json")
        } else {
            path.to_path_buf()
        };
        let text = std::fs::read_to_string(&file).map_err(|e| ModelError::io(&file, e))?;
        Self::from_hf_json_str(&text, &file.display().to_string())
    }

    /// Parse config.json text. `source` names the file in errors.
    pub fn from_hf_json_str(text: &str, source: &str) -> Result<Self> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| ModelError::config(source, "<json>", format!("invalid JSON: {e}")))?;
        Self::from_hf_value(&value, source)
    }

    /// Parse a config.json value.
    pub fn from_hf_value(value: &Value, source: &str) -> Result<Self> {
        let hf: HfConfig = serde_path_to_error::deserialize(value).map_err(|e| {
            let key = e.path().to_string();
            let message = e.inner().to_string();
            // serde names a missing key in the message, at the object that lacks it.
            match message
                .strip_prefix("missing field `")
                .and_then(|m| m.strip_suffix('`'))
            {
                Some(field) if key == "." => ModelError::config(source, field, "missing"),
                Some(field) => ModelError::config(source, &format!("{key}.{field}"), "missing"),
                None => ModelError::config(source, &key, message),
            }
        })?;
        let cfg = hf.into_config(source)?;
        cfg.validate(source)?;
        Ok(cfg)
    }

    /// config.json as transformers writes it for `LlamaForCausalLM` (or the Mistral/Qwen2
    /// class), RoPE in `layout`.
    pub fn to_hf_value(&self, layout: HfLayout) -> Value {
        let arch = match self.model_type.as_str() {
            "mistral" => "MistralForCausalLM",
            "qwen2" => "Qwen2ForCausalLM",
            _ => "LlamaForCausalLM",
        };
        let mut m = Map::new();
        m.insert("architectures".into(), json!([arch]));
        m.insert("model_type".into(), json!(self.model_type));
        m.insert("hidden_act".into(), json!("silu"));
        m.insert("hidden_size".into(), json!(self.hidden_size));
        m.insert("intermediate_size".into(), json!(self.intermediate_size));
        m.insert("num_hidden_layers".into(), json!(self.num_hidden_layers));
        m.insert(
            "num_attention_heads".into(),
            json!(self.num_attention_heads),
        );
        m.insert(
            "num_key_value_heads".into(),
            json!(self.num_key_value_heads),
        );
        m.insert("head_dim".into(), json!(self.head_dim));
        m.insert("rms_norm_eps".into(), json!(self.rms_norm_eps));
        m.insert("vocab_size".into(), json!(self.vocab_size));
        m.insert(
            "max_position_embeddings".into(),
            json!(self.max_position_embeddings),
        );
        m.insert(
            "tie_word_embeddings".into(),
            json!(self.tie_word_embeddings),
        );
        if self.model_type != "qwen2" {
            m.insert("attention_bias".into(), json!(self.attention_bias));
            m.insert("mlp_bias".into(), json!(self.mlp_bias));
        }
        if self.model_type == "mistral" {
            m.insert("sliding_window".into(), Value::Null);
        }
        m.insert("bos_token_id".into(), json!(self.bos_token_id));
        m.insert(
            "eos_token_id".into(),
            match self.eos_token_id.as_slice() {
                [] => Value::Null,
                [one] => json!(one),
                many => json!(many),
            },
        );
        m.insert("torch_dtype".into(), json!("float32"));
        m.insert("use_cache".into(), json!(true));

        // transformers' own view of the rope: ntk becomes default with the enlarged base.
        let hf_rope = match &self.rope.scaling {
            RopeScaling::Ntk(_) => {
                m.insert(ROPELENS_ROPE_KEY.into(), parameters(&self.rope));
                RopeConfig::new(self.rope.effective_theta(self.head_dim))
            }
            _ => self.rope.clone(),
        };
        let params = parameters(&hf_rope);
        if matches!(layout, HfLayout::V5 | HfLayout::Both) {
            m.insert("rope_parameters".into(), params.clone());
        }
        if matches!(layout, HfLayout::V4 | HfLayout::Both) {
            m.insert("rope_theta".into(), json!(hf_rope.theta));
            let scaling = match params {
                _ if hf_rope.scaling.is_default() => Value::Null,
                Value::Object(mut s) => {
                    s.remove("rope_theta");
                    s.insert("type".into(), json!(hf_rope.rope_type()));
                    Value::Object(s)
                }
                other => other,
            };
            m.insert("rope_scaling".into(), scaling);
        }
        Value::Object(m)
    }

    /// Write `dir/config.json` in `layout`.
    pub fn save(&self, dir: &Path, layout: HfLayout) -> Result<()> {
        let path = dir.join("config.json");
        let text = serde_json::to_string_pretty(&self.to_hf_value(layout))
            .expect("a JSON value always serializes");
        std::fs::write(&path, text + "\n").map_err(|e| ModelError::io(&path, e))
    }
}

/// A rope parameter dict as JSON (`rope_type` first).
fn parameters(rope: &RopeConfig) -> Value {
    serde_json::to_value(rope).expect("a RoPE config always serializes")
}

/// config.json as transformers writes it: the serde mirror of both RoPE layouts, converted
/// once by [`HfConfig::into_config`] (candle's `LlamaConfig::into_config` shape). Keys it does not
/// name are ignored, as transformers keeps them.
#[derive(Deserialize)]
struct HfConfig {
    #[serde(default)]
    model_type: Option<String>,
    #[serde(default)]
    hidden_act: Option<String>,
    #[serde(default)]
    use_sliding_window: Option<bool>,
    #[serde(default)]
    sliding_window: Option<Value>,
    #[serde(default)]
    partial_rotary_factor: Option<f64>,
    hidden_size: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    vocab_size: usize,
    #[serde(default)]
    num_key_value_heads: Option<usize>,
    #[serde(default)]
    head_dim: Option<usize>,
    #[serde(default)]
    rms_norm_eps: Option<f64>,
    #[serde(default)]
    max_position_embeddings: Option<usize>,
    #[serde(default)]
    tie_word_embeddings: Option<bool>,
    #[serde(default)]
    attention_bias: Option<bool>,
    #[serde(default)]
    mlp_bias: Option<bool>,
    #[serde(default)]
    bos_token_id: Option<u32>,
    #[serde(default)]
    eos_token_id: Option<TokenIds>,
    /// 4.x: the base, beside `rope_scaling`.
    #[serde(default)]
    rope_theta: Option<f64>,
    /// 4.x: the type and its keys (`type` or `rope_type`); null for plain RoPE.
    #[serde(default)]
    rope_scaling: Option<HfRopeDict>,
    /// 5.x: type, keys and base in one dict.
    #[serde(default)]
    rope_parameters: Option<HfRopeDict>,
    /// Phi-3 style original length at the top level.
    #[serde(default)]
    original_max_position_embeddings: Option<usize>,
    /// ropelens's own record of an `ntk` model (see the module doc).
    #[serde(default)]
    ropelens_rope: Option<HfRopeDict>,
}

/// `eos_token_id`: one id or a list.
#[derive(Deserialize)]
#[serde(untagged)]
enum TokenIds {
    One(u32),
    Many(Vec<u32>),
}

/// One rope dict of config.json: `rope_type` (4.x also `type`; absent: `default`), an optional
/// `rope_theta`, and the type's keys.
#[derive(Deserialize)]
#[serde(try_from = "Map<String, Value>")]
struct HfRopeDict {
    theta: Option<f64>,
    scaling: RopeScaling,
}

impl TryFrom<Map<String, Value>> for HfRopeDict {
    type Error = String;

    fn try_from(mut map: Map<String, Value>) -> std::result::Result<Self, String> {
        // transformers reads `rope_type` first, then the 4.x `type`.
        if let Some(t) = map.remove("type") {
            map.entry("rope_type").or_insert(t);
        }
        map.entry("rope_type").or_insert(json!("default"));
        // transformers 5 may keep `partial_rotary_factor` in the dict.
        match map.remove("partial_rotary_factor") {
            None | Some(Value::Null) => {}
            Some(p) if p.as_f64() == Some(1.0) => {}
            Some(p) => return Err(format!("partial RoPE is not supported, got {p}")),
        }
        let theta = match map.remove("rope_theta") {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                v.as_f64()
                    .ok_or_else(|| format!("`rope_theta` must be a number, got {v}"))?,
            ),
        };
        // transformers warns about keys a type does not use and goes on (NousResearch's YaRN
        // checkpoints carry `"finetuned": true`); so does this reader. Pipeline `rope` tables,
        // written for ropelens, keep refusing them.
        loop {
            match serde_json::from_value(Value::Object(map.clone())) {
                Ok(scaling) => return Ok(HfRopeDict { theta, scaling }),
                Err(e) => {
                    let msg = e.to_string();
                    let unused = msg
                        .strip_prefix("unknown field `")
                        .and_then(|m| m.split('`').next())
                        .filter(|k| *k != "rope_type" && map.contains_key(*k));
                    match unused {
                        Some(k) => {
                            let k = k.to_string();
                            map.remove(&k);
                        }
                        None => return Err(msg),
                    }
                }
            }
        }
    }
}

impl HfConfig {
    fn into_config(self, source: &str) -> Result<LlamaConfig> {
        let err = |key: &str, msg: String| Err(ModelError::config(source, key, msg));
        let model_type = self.model_type.unwrap_or_else(|| "llama".into());
        if !["llama", "mistral", "qwen2"].contains(&model_type.as_str()) {
            return err(
                "model_type",
                format!("`{model_type}` is not a LLaMA-family model (llama, mistral, qwen2)"),
            );
        }
        if let Some(act) = self.hidden_act
            && act != "silu"
        {
            return err(
                "hidden_act",
                format!("only `silu` (SwiGLU) is supported, got `{act}`"),
            );
        }
        let sliding = match model_type.as_str() {
            "qwen2" => self.use_sliding_window.unwrap_or(false),
            "mistral" => self.sliding_window.is_some_and(|v| !v.is_null()),
            _ => false,
        };
        if sliding {
            return err(
                "sliding_window",
                "sliding-window attention is not supported (set it to null)".into(),
            );
        }
        if let Some(p) = self.partial_rotary_factor
            && p != 1.0
        {
            return err(
                "partial_rotary_factor",
                format!("partial RoPE is not supported, got {p}"),
            );
        }
        let heads = self.num_attention_heads;
        if heads == 0 {
            return err("num_attention_heads", "must be > 0".into());
        }
        let head_dim = self.head_dim.unwrap_or(self.hidden_size / heads);

        // transformers: `rope_scaling` (4.x) wins over `rope_parameters` (5.x) when both are
        // set; a `rope_theta` inside the dict wins over the top-level one.
        let (key, dict) = match (self.rope_scaling, self.rope_parameters) {
            (Some(s), _) => ("rope_scaling", Some(s)),
            (None, p) => ("rope_parameters", p),
        };
        let top_theta = self.rope_theta.unwrap_or(DEFAULT_THETA);
        let mut rope = match dict {
            Some(d) => RopeConfig {
                theta: d.theta.unwrap_or(top_theta),
                scaling: d.scaling,
            },
            None => RopeConfig::new(top_theta),
        };
        // Phi-3 style top-level original length wins, as in transformers.
        if let Some(orig) = self.original_max_position_embeddings {
            rope.scaling.kind_mut().set_original_length(orig);
        }
        if let Some(own) = self.ropelens_rope {
            let RopeScaling::Ntk(_) = own.scaling else {
                return err(
                    ROPELENS_ROPE_KEY,
                    format!("only records `ntk`, got `{}`", own.scaling.kind().name()),
                );
            };
            if !rope.scaling.is_default() {
                return err(
                    ROPELENS_ROPE_KEY,
                    format!(
                        "`ntk` needs rope type `default` in {key}, got `{}`",
                        rope.rope_type()
                    ),
                );
            }
            let ntk = RopeConfig {
                theta: own.theta.unwrap_or(top_theta),
                scaling: own.scaling,
            };
            // The enlarged base written for transformers must be the one ntk implies.
            let implied = ntk.effective_theta(head_dim);
            if (implied - rope.theta).abs() > 1e-9 * implied.abs() {
                return err(
                    "rope_theta",
                    format!(
                        "is {} but {ROPELENS_ROPE_KEY} (ntk) implies {implied}; edit one of them",
                        rope.theta
                    ),
                );
            }
            rope = ntk;
        }

        let qwen2 = model_type == "qwen2";
        let attention_bias = self.attention_bias.unwrap_or(false);
        Ok(LlamaConfig {
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: heads,
            num_key_value_heads: self.num_key_value_heads.unwrap_or(heads),
            head_dim,
            rms_norm_eps: self.rms_norm_eps.unwrap_or(1e-6),
            vocab_size: self.vocab_size,
            max_position_embeddings: self.max_position_embeddings.unwrap_or(2048),
            tie_word_embeddings: self.tie_word_embeddings.unwrap_or(false),
            attention_bias: attention_bias || qwen2,
            o_proj_bias: attention_bias && !qwen2,
            mlp_bias: self.mlp_bias.unwrap_or(false),
            bos_token_id: self.bos_token_id,
            eos_token_id: match self.eos_token_id {
                None => Vec::new(),
                Some(TokenIds::One(t)) => vec![t],
                Some(TokenIds::Many(ts)) => ts,
            },
            rope,
            model_type,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::rope::{Linear, Llama3, Ntk, Yarn};

    const LLAMA2: &str = r#"{
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
        "hidden_size": 4096, "intermediate_size": 11008, "num_attention_heads": 32,
        "num_hidden_layers": 32, "num_key_value_heads": 32, "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-05, "rope_scaling": null, "rope_theta": 10000.0,
        "tie_word_embeddings": false, "vocab_size": 32000, "bos_token_id": 1, "eos_token_id": 2
    }"#;

    #[test]
    fn parses_llama2_v4_layout() {
        let c = LlamaConfig::from_hf_json_str(LLAMA2, "config.json").unwrap();
        assert_eq!(c.head_dim, 128);
        assert_eq!(c.rope, RopeConfig::new(10_000.0));
        assert_eq!(c.eos_token_id, vec![2]);
        assert_eq!(c.num_params(), 6_738_415_616);
    }

    #[test]
    fn parses_llama31_v4_and_qwen2() {
        let text = r#"{"model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
            "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 1,
            "vocab_size": 10, "max_position_embeddings": 131072, "rope_theta": 500000.0,
            "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192, "rope_type": "llama3"},
            "eos_token_id": [1, 2]}"#;
        let c = LlamaConfig::from_hf_json_str(text, "x").unwrap();
        assert_eq!(c.rope.theta, 5e5);
        assert_eq!(
            c.rope.scaling,
            RopeScaling::Llama3(Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: Some(8192)
            })
        );
        assert_eq!(c.eos_token_id, vec![1, 2]);
        let q = text.replace("\"llama\"", "\"qwen2\"");
        let q = LlamaConfig::from_hf_json_str(&q, "x").unwrap();
        assert!(q.attention_bias && !q.o_proj_bias);
    }

    #[test]
    fn writes_and_reads_both_layouts() {
        let ropes = [
            RopeConfig::new(1e4),
            RopeConfig::new(1e4).with_scaling(RopeScaling::Linear(Linear { factor: 4.0 })),
            RopeConfig::new(1e4).with_scaling(RopeScaling::Ntk(Ntk {
                factor: Some(4.0),
                base: None,
            })),
            RopeConfig::new(1e4).with_scaling(RopeScaling::Ntk(Ntk {
                factor: None,
                base: Some(1e6),
            })),
            RopeConfig::new(1e4).with_scaling(RopeScaling::Yarn(Yarn {
                original_max_position_embeddings: Some(64),
                ..Yarn::new(4.0)
            })),
        ];
        for rope in ropes {
            let cfg = LlamaConfig::new(256, 64, 2, 4, 64).with_rope(rope);
            for layout in [HfLayout::V4, HfLayout::V5, HfLayout::Both] {
                let v = cfg.to_hf_value(layout);
                assert_eq!(v.get("rope_parameters").is_some(), layout != HfLayout::V4);
                assert_eq!(v.get("rope_scaling").is_some(), layout != HfLayout::V5);
                let back = LlamaConfig::from_hf_value(&v, "written").unwrap();
                assert_eq!(back, cfg, "{layout:?}");
            }
        }
    }

    #[test]
    fn config_errors_name_the_key() {
        let e = |t: &str| {
            LlamaConfig::from_hf_json_str(t, "c.json")
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            e(r#"{"hidden_size": 64}"#),
            "c.json: `num_attention_heads`: missing"
        );
        let base = r#""hidden_size": 64, "intermediate_size": 8, "num_attention_heads": 4,
            "num_hidden_layers": 1, "vocab_size": 10"#;
        assert_eq!(
            e(&format!(r#"{{{base}, "num_key_value_heads": 3}}"#)),
            "c.json: `num_key_value_heads`: must divide num_attention_heads (4), got 3"
        );
        assert_eq!(
            e(&format!(
                r#"{{{base}, "rope_scaling": {{"type": "linear", "factor": 0.5}}}}"#
            )),
            "c.json: `factor`: factor must be a number >= 1, got 0.5"
        );
        assert!(e(&format!(r#"{{{base}, "model_type": "gpt2"}}"#)).contains("not a LLaMA-family"));
        // A key the type does not use is ignored, as transformers does.
        let yarn = format!(
            r#"{{{base}, "rope_scaling": {{"type": "yarn", "factor": 16, "finetuned": true, "original_max_position_embeddings": 4096}}}}"#
        );
        let c = LlamaConfig::from_hf_json_str(&yarn, "c.json").unwrap();
        assert_eq!(
            c.rope.scaling,
            RopeScaling::Yarn(Yarn {
                original_max_position_embeddings: Some(4096),
                ..Yarn::new(16.0)
            })
        );
        assert_eq!(
            e(&format!(
                r#"{{{base}, "rope_parameters": {{"rope_type": "linear", "factor": "2"}}}}"#
            )),
            "c.json: `rope_parameters`: invalid type: string \"2\", expected f64"
        );
        assert!(
            e(&format!(r#"{{{base}, "rope_scaling": {{"type": "su"}}}}"#))
                .starts_with("c.json: `rope_scaling`: unknown variant `su`")
        );
        assert_eq!(
            e(r#"{"hidden_size": 64, "num_attention_heads": "4"}"#),
            "c.json: `num_attention_heads`: invalid type: string \"4\", expected usize"
        );
        assert!(
            e(&format!(
                r#"{{{base}, "rope_theta": 5.0, "ropelens_rope": {{"rope_type": "ntk", "factor": 4}}}}"#
            ))
            .contains("implies")
        );
    }
}
