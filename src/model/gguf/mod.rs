//! GGUF import: a llama.cpp model file becomes the same Hugging Face directory a safetensors
//! import writes (config.json, f32 model.safetensors with HF tensor names, tokenizer.json,
//! tokenizer_config.json), so everything downstream is unchanged.
//!
//! - [`file`]: the container (header, metadata, tensor directory).
//! - [`dequant`]: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K to f32; other types are an
//!   error naming the type.
//! - [`tokenizer`]: `tokenizer.ggml.*` to tokenizer.json (`gpt2` BPE and `llama` SentencePiece).
//!
//! llama.cpp's converter permutes the rows of `q_proj` and `k_proj` per head from the
//! half-split rotary layout transformers uses to the interleaved one ggml uses
//! (`convert_hf_to_gguf.py` `LlamaModel.permute`); the import undoes it.

pub mod dequant;
pub mod file;
pub mod tokenizer;

use std::path::Path;

use rayon::prelude::*;

use super::checkpoint::{CheckpointInfo, inspect_checkpoint, write_f32_safetensors};
use super::config::{HfLayout, LlamaConfig};
use super::error::{ModelError, Result};
use super::rope::{Linear, RopeConfig, RopeScaling, Yarn};
use dequant::GgmlType;
use file::{GgufFile, MetaValue, TensorInfo};

/// Whether `path` names a GGUF file (by its `.gguf` extension).
pub fn is_gguf(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

/// The model's config from the GGUF metadata (`general.architecture` must be `llama`).
pub fn gguf_config(f: &GgufFile) -> Result<LlamaConfig> {
    let src = f.path.display().to_string();
    let err = |key: &str, msg: String| ModelError::config(&src, key, msg);
    let arch = f
        .get("general.architecture")
        .and_then(MetaValue::as_str)
        .ok_or_else(|| err("general.architecture", "missing".into()))?;
    if arch != "llama" {
        return Err(err(
            "general.architecture",
            format!("`{arch}` is not supported (llama)"),
        ));
    }
    let key = |k: &str| format!("{arch}.{k}");
    let uint = |k: &str| -> Result<Option<usize>> {
        match f.get(&key(k)) {
            None => Ok(None),
            Some(v) => v.as_u64().map(|n| Some(n as usize)).ok_or_else(|| {
                err(
                    &key(k),
                    format!("must be a non-negative integer, got {v:?}"),
                )
            }),
        }
    };
    let req = |k: &str| uint(k)?.ok_or_else(|| err(&key(k), "missing".into()));
    let float = |k: &str| -> Result<Option<f64>> {
        match f.get(&key(k)) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| err(&key(k), format!("must be a number, got {v:?}"))),
        }
    };
    let hidden = req("embedding_length")?;
    let heads = req("attention.head_count")?;
    if heads == 0 {
        return Err(err(&key("attention.head_count"), "must be > 0".into()));
    }
    let head_dim = uint("attention.key_length")?.unwrap_or(hidden / heads);
    if let Some(rot) = uint("rope.dimension_count")?
        && rot != head_dim
    {
        return Err(err(
            &key("rope.dimension_count"),
            format!("partial RoPE ({rot} of {head_dim} dimensions) is not supported"),
        ));
    }
    let embed = f
        .tensors
        .iter()
        .find(|t| t.name == "token_embd.weight")
        .ok_or_else(|| ModelError::checkpoint(&f.path, "no tensor `token_embd.weight`"))?;
    let vocab = uint("vocab_size")?.unwrap_or(embed.dims.get(1).copied().unwrap_or(0) as usize);
    let theta = float("rope.freq_base")?.unwrap_or(super::rope::DEFAULT_THETA);
    let factor = float("rope.scaling.factor")?;
    let scaling = match f.get(&key("rope.scaling.type")).and_then(MetaValue::as_str) {
        None | Some("none") => match float("rope.scale_linear")? {
            Some(s) if s != 1.0 => RopeScaling::Linear(Linear { factor: s }),
            _ => RopeScaling::default(),
        },
        Some("linear") => RopeScaling::Linear(Linear {
            factor: factor.ok_or_else(|| err(&key("rope.scaling.factor"), "missing".into()))?,
        }),
        Some("yarn") => {
            let mut y = Yarn::new(
                factor.ok_or_else(|| err(&key("rope.scaling.factor"), "missing".into()))?,
            );
            y.original_max_position_embeddings = uint("rope.scaling.original_context_length")?;
            if let Some(b) = float("rope.scaling.yarn_beta_fast")?.filter(|b| *b != 0.0) {
                y.beta_fast = b;
            }
            if let Some(b) = float("rope.scaling.yarn_beta_slow")?.filter(|b| *b != 0.0) {
                y.beta_slow = b;
            }
            RopeScaling::Yarn(y)
        }
        Some(other) => {
            return Err(err(
                &key("rope.scaling.type"),
                format!("`{other}` is not supported (none, linear, yarn)"),
            ));
        }
    };
    if f.tensors.iter().any(|t| t.name == "rope_freqs.weight") {
        return Err(ModelError::checkpoint(
            &f.path,
            "tensor `rope_freqs.weight` (Llama 3.1 RoPE factors stored as a tensor) is not supported",
        ));
    }
    let ids = |k: &str| f.get(k).and_then(MetaValue::as_u64).map(|v| v as u32);
    let mut cfg = LlamaConfig::new(
        vocab,
        hidden,
        req("block_count")?,
        heads,
        req("context_length")?,
    )
    .with_rope(RopeConfig { theta, scaling });
    cfg.intermediate_size = req("feed_forward_length")?;
    cfg.num_key_value_heads = uint("attention.head_count_kv")?.unwrap_or(heads);
    cfg.head_dim = head_dim;
    cfg.rms_norm_eps = float("attention.layer_norm_rms_epsilon")?.unwrap_or(1e-5);
    cfg.tie_word_embeddings = !f.tensors.iter().any(|t| t.name == "output.weight");
    cfg.bos_token_id = ids("tokenizer.ggml.bos_token_id");
    cfg.eos_token_id = ids("tokenizer.ggml.eos_token_id").into_iter().collect();
    cfg.validate(&src)?;
    Ok(cfg)
}

/// The HF name of a GGUF tensor name of a LLaMA model.
fn hf_name(gguf: &str) -> Option<String> {
    let fixed = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(n) = fixed {
        return Some(n.to_string());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (part, suffix) = rest.rsplit_once('.')?;
    let hf = match part {
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}.{suffix}"))
}

/// Undo llama.cpp's rotary permutation of the rows of a q or k projection (weight `[rows,
/// cols]` or bias `[rows]`, `cols = 1`): GGUF row `h*hd + 2i + j` is HF row `h*hd + j*hd/2 + i`.
pub fn unpermute_rows(data: &[f32], heads: usize, cols: usize) -> Vec<f32> {
    let rows = data.len() / cols;
    let hd = rows / heads;
    let half = hd / 2;
    let mut out = vec![0f32; data.len()];
    for h in 0..heads {
        for i in 0..half {
            for j in 0..2 {
                let g = h * hd + 2 * i + j;
                let r = h * hd + j * half + i;
                out[r * cols..(r + 1) * cols].copy_from_slice(&data[g * cols..(g + 1) * cols]);
            }
        }
    }
    out
}

/// One tensor dequantized to f32 in HF layout: (HF name, HF shape, values).
fn hf_tensor(
    f: &GgufFile,
    t: &TensorInfo,
    cfg: &LlamaConfig,
) -> Result<(String, Vec<usize>, Vec<f32>)> {
    let name = hf_name(&t.name).ok_or_else(|| {
        ModelError::checkpoint(
            &f.path,
            format!("tensor `{}` is not part of a LLaMA model", t.name),
        )
    })?;
    let ty = GgmlType::from_code(t.ggml_type)
        .map_err(|m| ModelError::checkpoint(&f.path, format!("tensor `{}`: {m}", t.name)))?;
    let n = t.elements() as usize;
    let len = ty.bytes_for(n).ok_or_else(|| {
        ModelError::checkpoint(
            &f.path,
            format!(
                "tensor `{}` has {n} elements, not whole blocks of its type",
                t.name
            ),
        )
    })?;
    let mut values = vec![0f32; n];
    dequant::dequantize(ty, f.tensor_bytes(t, len)?, &mut values);
    // ggml dims are innermost first: [in, out] is HF's [out, in], same bytes.
    let shape: Vec<usize> = t.dims.iter().rev().map(|&d| d as usize).collect();
    let cols = if shape.len() == 2 { shape[1] } else { 1 };
    let values = if name.ends_with("q_proj.weight") || name.ends_with("q_proj.bias") {
        unpermute_rows(&values, cfg.num_attention_heads, cols)
    } else if name.ends_with("k_proj.weight") || name.ends_with("k_proj.bias") {
        unpermute_rows(&values, cfg.num_key_value_heads, cols)
    } else {
        values
    };
    Ok((name, shape, values))
}

/// Import `src` (a .gguf file) into `dst` as a Hugging Face checkpoint directory; returns the
/// info of the written checkpoint ([`inspect_checkpoint`] of `dst`).
pub fn import_gguf(src: &Path, dst: &Path) -> Result<CheckpointInfo> {
    let f = GgufFile::open(src)?;
    let cfg = gguf_config(&f)?;
    cfg.check_fits_in_memory(&src.display().to_string())?;
    let tok = tokenizer::tokenizer_from_gguf(&f)
        .map_err(|m| ModelError::checkpoint(src, format!("tokenizer: {m}")))?;
    let tensors: Vec<(String, Vec<usize>, Vec<f32>)> = f
        .tensors
        .par_iter()
        .map(|t| hf_tensor(&f, t, &cfg))
        .collect::<Result<_>>()?;
    if let Some((name, i)) = tensors
        .iter()
        .find_map(|(name, _, v)| Some((name, v.iter().position(|x| !x.is_finite())?)))
    {
        return Err(ModelError::checkpoint(
            src,
            format!(
                "tensor `{name}` holds NaN or infinite values once dequantized (element {i}): the weights are broken"
            ),
        ));
    }
    std::fs::create_dir_all(dst).map_err(|e| ModelError::io(dst, e))?;
    write_f32_safetensors(dst, &tensors)?;
    cfg.save(dst, HfLayout::Both)?;
    let write_json = |name: &str, v: &serde_json::Value| {
        let p = dst.join(name);
        let text = serde_json::to_string_pretty(v).expect("JSON values serialize");
        std::fs::write(&p, text + "\n").map_err(|e| ModelError::io(&p, e))
    };
    write_json("tokenizer.json", &tok.tokenizer)?;
    write_json("tokenizer_config.json", &tok.config)?;
    // A tokenizer.json the tokenizers library cannot read is a bug here: say so now.
    tokenizers::Tokenizer::from_file(dst.join("tokenizer.json")).map_err(|e| {
        ModelError::checkpoint(
            src,
            format!("the tokenizer built from the metadata does not load: {e}"),
        )
    })?;
    inspect_checkpoint(dst)
}
