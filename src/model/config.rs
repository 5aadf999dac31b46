//! The model's configuration, read from and written to Hugging Face `config.json`.
//!
//! One struct, [`LlamaConfig`], covers `LlamaForCausalLM` and the Mistral/Qwen2 files of the same
//! architecture. RoPE comes from either layout transformers has used: 4.x (`rope_theta` plus
//! `rope_scaling` with `type` or `rope_type`) and 5.x (`rope_parameters`). Writing picks the
//! layout ([`HfLayout`]); `Both` writes the two consistently so that every transformers version
//! reads the same model. `ntk` is written as `default` with the enlarged `rope_theta` plus a
//! top-level `ropelens_rope` key that transformers keeps and ignores (docs/model.md).

use std::path::Path;

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

    /// Number of parameters of the model this config describes.
    pub fn num_params(&self) -> usize {
        let (h, i, v) = (self.hidden_size, self.intermediate_size, self.vocab_size);
        let (q, kv) = (
            self.num_attention_heads * self.head_dim,
            self.num_key_value_heads * self.head_dim,
        );
        let mut attn = h * q + 2 * h * kv + q * h;
        if self.attention_bias {
            attn += q + 2 * kv;
        }
        if self.o_proj_bias {
            attn += h;
        }
        let mlp = 3 * h * i + if self.mlp_bias { 2 * i + h } else { 0 };
        let layer = attn + mlp + 2 * h;
        let head = if self.tie_word_embeddings { 0 } else { v * h };
        v * h + self.num_hidden_layers * layer + h + head
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
        let map = value
            .as_object()
            .ok_or_else(|| ModelError::config(source, "<json>", "must be a JSON object"))?;
        let c = Cfg { map, source };
        let model_type = c.str_opt("model_type")?.unwrap_or("llama").to_string();
        if !["llama", "mistral", "qwen2"].contains(&model_type.as_str()) {
            return Err(ModelError::config(
                source,
                "model_type",
                format!("`{model_type}` is not a LLaMA-family model (llama, mistral, qwen2)"),
            ));
        }
        if let Some(act) = c.str_opt("hidden_act")?
            && act != "silu"
        {
            return Err(ModelError::config(
                source,
                "hidden_act",
                format!("only `silu` (SwiGLU) is supported, got `{act}`"),
            ));
        }
        let sliding = match model_type.as_str() {
            "qwen2" => c.bool_opt("use_sliding_window")?.unwrap_or(false),
            "mistral" => !matches!(map.get("sliding_window"), None | Some(Value::Null)),
            _ => false,
        };
        if sliding {
            return Err(ModelError::config(
                source,
                "sliding_window",
                "sliding-window attention is not supported (set it to null)",
            ));
        }
        if let Some(p) = c.f64_opt("partial_rotary_factor")?
            && p != 1.0
        {
            return Err(ModelError::config(
                source,
                "partial_rotary_factor",
                format!("partial RoPE is not supported, got {p}"),
            ));
        }
        let hidden_size = c.usize_req("hidden_size")?;
        let heads = c.usize_req("num_attention_heads")?;
        if heads == 0 {
            return Err(ModelError::config(
                source,
                "num_attention_heads",
                "must be > 0",
            ));
        }
        let head_dim = c.usize_opt("head_dim")?.unwrap_or(hidden_size / heads);
        let max_position_embeddings = c.usize_opt("max_position_embeddings")?.unwrap_or(2048);
        let rope = parse_rope(map, source, max_position_embeddings)?;
        let qwen2 = model_type == "qwen2";
        let attention_bias = c.bool_opt("attention_bias")?.unwrap_or(false);
        let eos_token_id = match map.get("eos_token_id") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(list)) => list
                .iter()
                .map(|v| c.token(v, "eos_token_id"))
                .collect::<Result<_>>()?,
            Some(v) => vec![c.token(v, "eos_token_id")?],
        };
        let bos_token_id = match map.get("bos_token_id") {
            None | Some(Value::Null) => None,
            Some(v) => Some(c.token(v, "bos_token_id")?),
        };
        let cfg = LlamaConfig {
            hidden_size,
            intermediate_size: c.usize_req("intermediate_size")?,
            num_hidden_layers: c.usize_req("num_hidden_layers")?,
            num_attention_heads: heads,
            num_key_value_heads: c.usize_opt("num_key_value_heads")?.unwrap_or(heads),
            head_dim,
            rms_norm_eps: c.f64_opt("rms_norm_eps")?.unwrap_or(1e-6),
            vocab_size: c.usize_req("vocab_size")?,
            max_position_embeddings,
            tie_word_embeddings: c.bool_opt("tie_word_embeddings")?.unwrap_or(false),
            attention_bias: attention_bias || qwen2,
            o_proj_bias: attention_bias && !qwen2,
            mlp_bias: c.bool_opt("mlp_bias")?.unwrap_or(false),
            bos_token_id,
            eos_token_id,
            rope,
            model_type,
        };
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
        let head_dim = self.head_dim;
        let hf_rope = match &self.rope.scaling {
            RopeScaling::Ntk { .. } => {
                m.insert(
                    ROPELENS_ROPE_KEY.into(),
                    Value::Object(self.rope.to_parameters()),
                );
                RopeConfig::new(self.rope.effective_theta(head_dim))
            }
            _ => self.rope.clone(),
        };
        let params = hf_rope.to_parameters();
        if matches!(layout, HfLayout::V5 | HfLayout::Both) {
            m.insert("rope_parameters".into(), Value::Object(params.clone()));
        }
        if matches!(layout, HfLayout::V4 | HfLayout::Both) {
            m.insert("rope_theta".into(), json!(hf_rope.theta));
            let scaling = match hf_rope.scaling {
                RopeScaling::Default => Value::Null,
                _ => {
                    let mut s = params;
                    s.remove("rope_theta");
                    let t = s.get("rope_type").cloned().unwrap_or(Value::Null);
                    s.insert("type".into(), t);
                    Value::Object(s)
                }
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

/// RoPE from either layout, plus ropelens's `ntk` record.
fn parse_rope(map: &Map<String, Value>, source: &str, max_pos: usize) -> Result<RopeConfig> {
    let c = Cfg { map, source };
    let top_theta = c.f64_opt("rope_theta")?;
    // transformers: `rope_scaling` (4.x) wins over `rope_parameters` (5.x) when both are set.
    let (key, params) = match (map.get("rope_scaling"), map.get("rope_parameters")) {
        (Some(Value::Object(s)), _) => ("rope_scaling", Some(s)),
        (_, Some(Value::Object(p))) => ("rope_parameters", Some(p)),
        (Some(v @ (Value::Bool(_) | Value::Number(_) | Value::String(_) | Value::Array(_))), _) => {
            return Err(ModelError::config(
                source,
                "rope_scaling",
                format!("must be an object or null, got {v}"),
            ));
        }
        _ => ("rope_parameters", None),
    };
    let theta = top_theta.unwrap_or(DEFAULT_THETA);
    let mut rope = match params {
        Some(p) => RopeConfig::from_hf_parameters(p, theta, &format!("{source}: {key}"))?,
        None => RopeConfig::new(theta),
    };
    // Phi-3 style top-level original length wins, as in transformers.
    if let Some(orig) = c.usize_opt("original_max_position_embeddings")? {
        match &mut rope.scaling {
            RopeScaling::Yarn {
                original_max_position_embeddings: o,
                ..
            }
            | RopeScaling::Llama3 {
                original_max_position_embeddings: o,
                ..
            }
            | RopeScaling::LongRope {
                original_max_position_embeddings: o,
                ..
            } => *o = Some(orig),
            _ => {}
        }
    }
    if let Some(own) = map.get(ROPELENS_ROPE_KEY) {
        let own_src = format!("{source}: {ROPELENS_ROPE_KEY}");
        let own_map = own
            .as_object()
            .ok_or_else(|| ModelError::config(source, ROPELENS_ROPE_KEY, "must be an object"))?;
        let ntk = RopeConfig::from_hf_parameters(own_map, theta, &own_src)?;
        if !matches!(ntk.scaling, RopeScaling::Ntk { .. }) {
            return Err(ModelError::config(
                source,
                ROPELENS_ROPE_KEY,
                format!("only records `ntk`, got `{}`", ntk.rope_type()),
            ));
        }
        if rope.scaling != RopeScaling::Default {
            return Err(ModelError::config(
                source,
                ROPELENS_ROPE_KEY,
                format!(
                    "`ntk` needs rope type `default` in {key}, got `{}`",
                    rope.rope_type()
                ),
            ));
        }
        // The enlarged base written for transformers must be the one ntk implies.
        let head_dim = match (
            c.usize_opt("head_dim")?,
            c.usize_opt("hidden_size")?,
            c.usize_opt("num_attention_heads")?,
        ) {
            (Some(d), _, _) => d,
            (None, Some(h), Some(n)) if n > 0 => h / n,
            _ => 0,
        };
        let implied = ntk.effective_theta(head_dim);
        if (implied - rope.theta).abs() > 1e-9 * implied.abs() {
            return Err(ModelError::config(
                source,
                "rope_theta",
                format!(
                    "is {} but {ROPELENS_ROPE_KEY} (ntk) implies {implied}; edit one of them",
                    rope.theta
                ),
            ));
        }
        rope = ntk;
    }
    let _ = max_pos;
    Ok(rope)
}

/// Typed access to config.json keys, with errors naming the key.
struct Cfg<'a> {
    map: &'a Map<String, Value>,
    source: &'a str,
}

impl Cfg<'_> {
    fn err(&self, key: &str, msg: String) -> ModelError {
        ModelError::config(self.source, key, msg)
    }

    fn usize_opt(&self, key: &str) -> Result<Option<usize>> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .map(|n| Some(n as usize))
                .ok_or_else(|| self.err(key, format!("must be a non-negative integer, got {v}"))),
        }
    }

    fn usize_req(&self, key: &str) -> Result<usize> {
        self.usize_opt(key)?
            .ok_or_else(|| self.err(key, "missing".into()))
    }

    fn f64_opt(&self, key: &str) -> Result<Option<f64>> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.err(key, format!("must be a number, got {v}"))),
        }
    }

    fn bool_opt(&self, key: &str) -> Result<Option<bool>> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.err(key, format!("must be true or false, got {v}"))),
        }
    }

    fn str_opt(&self, key: &str) -> Result<Option<&str>> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| self.err(key, format!("must be a string, got {v}"))),
        }
    }

    fn token(&self, v: &Value, key: &str) -> Result<u32> {
        v.as_u64()
            .filter(|n| *n <= u32::MAX as u64)
            .map(|n| n as u32)
            .ok_or_else(|| self.err(key, format!("must be a token id, got {v}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: Some(8192)
            }
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
            RopeConfig::new(1e4).with_scaling(RopeScaling::Linear { factor: 4.0 }),
            RopeConfig::new(1e4).with_scaling(RopeScaling::Ntk {
                factor: Some(4.0),
                base: None,
            }),
            RopeConfig::new(1e4).with_scaling(RopeScaling::Ntk {
                factor: None,
                base: Some(1e6),
            }),
            RopeConfig::new(1e4).with_scaling(RopeScaling::Yarn {
                factor: 4.0,
                original_max_position_embeddings: Some(64),
                beta_fast: 32.0,
                beta_slow: 1.0,
                mscale: None,
                mscale_all_dim: None,
                attention_factor: None,
                truncate: true,
            }),
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
        assert!(
            e(&format!(
                r#"{{{base}, "rope_theta": 5.0, "ropelens_rope": {{"rope_type": "ntk", "factor": 4}}}}"#
            ))
            .contains("implies")
        );
    }
}
