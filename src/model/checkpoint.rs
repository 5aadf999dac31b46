//! Hugging Face checkpoints: load safetensors (single file or sharded, f32/f16/bf16) into a
//! [`Llama`], save a [`Llama`] as safetensors with HF tensor names plus config.json, and
//! validate/import a checkpoint directory for the pipeline's `model` stage.
//!
//! HF stores linear weights `[out, in]`; the model keeps `[in, out]`, so loading and saving
//! transpose on the host. f32 values go through unchanged, so save-then-load is bit-identical.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use burn::module::Param;
use burn::tensor::{Device, Tensor, TensorData};
use memmap2::Mmap;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde_json::Value;

use super::config::{HfLayout, LlamaConfig};
use super::error::{ModelError, Result};
use super::llama::{Attention, DecoderLayer, Linear, Llama, Mlp, RmsNorm};

/// Single-file weights name.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// Index of sharded weights.
pub const INDEX_FILE: &str = "model.safetensors.index.json";
/// Optional files copied along by [`import_checkpoint`] when present.
pub const OPTIONAL_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
];

/// The safetensors files of a checkpoint directory: the shards named by
/// `model.safetensors.index.json` (sorted, deduplicated) or `model.safetensors`.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join(INDEX_FILE);
    if index.is_file() {
        let text = std::fs::read_to_string(&index).map_err(|e| ModelError::io(&index, e))?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| ModelError::checkpoint(&index, format!("invalid JSON: {e}")))?;
        let map = v
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| ModelError::checkpoint(&index, "no `weight_map` object"))?;
        let mut files: Vec<String> = map
            .values()
            .map(|f| {
                f.as_str().map(str::to_string).ok_or_else(|| {
                    ModelError::checkpoint(
                        &index,
                        format!("weight_map value {f} is not a file name"),
                    )
                })
            })
            .collect::<Result<_>>()?;
        files.sort();
        files.dedup();
        let mut out = Vec::new();
        for f in files {
            if f.contains('/') || f.contains('\\') || f.starts_with('.') {
                return Err(ModelError::checkpoint(
                    &index,
                    format!("shard `{f}` is not a plain file name"),
                ));
            }
            let p = dir.join(&f);
            if !p.is_file() {
                return Err(ModelError::checkpoint(
                    &index,
                    format!("shard `{f}` is missing"),
                ));
            }
            out.push(p);
        }
        if out.is_empty() {
            return Err(ModelError::checkpoint(&index, "`weight_map` is empty"));
        }
        return Ok(out);
    }
    let single = dir.join(WEIGHTS_FILE);
    if single.is_file() {
        return Ok(vec![single]);
    }
    Err(ModelError::checkpoint(
        dir,
        format!(
            "no {WEIGHTS_FILE} or {INDEX_FILE} (a Hugging Face checkpoint directory holds config.json and safetensors weights)"
        ),
    ))
}

/// Memory-mapped safetensors files and where each tensor lives.
struct Store {
    maps: Vec<(PathBuf, Mmap)>,
    /// name -> index into `maps`.
    index: HashMap<String, usize>,
}

impl Store {
    fn open(files: &[PathBuf]) -> Result<Self> {
        let mut maps = Vec::new();
        let mut index = HashMap::new();
        for (i, path) in files.iter().enumerate() {
            let file = File::open(path).map_err(|e| ModelError::io(path, e))?;
            // SAFETY: the file is only read; a concurrent writer is outside our contract, as
            // for every memory-mapped model loader.
            let map = unsafe { Mmap::map(&file) }.map_err(|e| ModelError::io(path, e))?;
            let st = SafeTensors::deserialize(&map).map_err(|e| {
                ModelError::checkpoint(path, format!("not a safetensors file: {e}"))
            })?;
            for name in st.names() {
                if index.insert(name.to_string(), i).is_some() {
                    return Err(ModelError::checkpoint(
                        path,
                        format!("tensor `{name}` appears twice"),
                    ));
                }
            }
            maps.push((path.clone(), map));
        }
        Ok(Store { maps, index })
    }

    fn names(&self) -> impl Iterator<Item = &String> {
        self.index.keys()
    }

    /// The tensor as f32 values, checked against `shape`.
    fn get(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let &i = self.index.get(name).ok_or_else(|| {
            ModelError::checkpoint(&self.maps[0].0, format!("tensor `{name}` is missing"))
        })?;
        let (path, map) = &self.maps[i];
        let st = SafeTensors::deserialize(map)
            .map_err(|e| ModelError::checkpoint(path, format!("not a safetensors file: {e}")))?;
        let view = st
            .tensor(name)
            .map_err(|e| ModelError::checkpoint(path, format!("tensor `{name}`: {e}")))?;
        if view.shape() != shape {
            return Err(ModelError::checkpoint(
                path,
                format!(
                    "tensor `{name}` has shape {:?}, the config implies {shape:?}",
                    view.shape()
                ),
            ));
        }
        let bytes = view.data();
        Ok(match view.dtype() {
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            other => {
                return Err(ModelError::checkpoint(
                    path,
                    format!("tensor `{name}` has dtype {other:?}; only F32, F16 and BF16 load"),
                ));
            }
        })
    }
}

/// `[rows, cols]` row-major -> `[cols, rows]`.
fn transpose(v: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; v.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = v[r * cols + c];
        }
    }
    out
}

struct Loader<'a> {
    store: &'a Store,
    device: &'a Device,
}

impl Loader<'_> {
    fn param1(&self, name: &str, n: usize) -> Result<Param<Tensor<1>>> {
        let v = self.store.get(name, &[n])?;
        Ok(Param::from_tensor(Tensor::from_data(
            TensorData::new(v, [n]),
            self.device,
        )))
    }

    fn linear(&self, prefix: &str, d_in: usize, d_out: usize, bias: bool) -> Result<Linear> {
        let w = self
            .store
            .get(&format!("{prefix}.weight"), &[d_out, d_in])?;
        let w = transpose(&w, d_out, d_in);
        Ok(Linear {
            weight: Param::from_tensor(Tensor::from_data(
                TensorData::new(w, [d_in, d_out]),
                self.device,
            )),
            bias: if bias {
                Some(self.param1(&format!("{prefix}.bias"), d_out)?)
            } else {
                None
            },
        })
    }

    fn norm(&self, name: &str, n: usize, eps: f64) -> Result<RmsNorm> {
        Ok(RmsNorm {
            weight: self.param1(name, n)?,
            eps,
        })
    }
}

/// HF names the config implies, for checking a checkpoint holds nothing else.
fn expected_names(c: &LlamaConfig) -> Vec<String> {
    let mut names = vec![
        "model.embed_tokens.weight".to_string(),
        "model.norm.weight".into(),
    ];
    if !c.tie_word_embeddings {
        names.push("lm_head.weight".into());
    }
    for i in 0..c.num_hidden_layers {
        let p = format!("model.layers.{i}");
        names.push(format!("{p}.input_layernorm.weight"));
        names.push(format!("{p}.post_attention_layernorm.weight"));
        for proj in ["q_proj", "k_proj", "v_proj", "o_proj"] {
            names.push(format!("{p}.self_attn.{proj}.weight"));
        }
        if c.attention_bias {
            for proj in ["q_proj", "k_proj", "v_proj"] {
                names.push(format!("{p}.self_attn.{proj}.bias"));
            }
        }
        if c.o_proj_bias {
            names.push(format!("{p}.self_attn.o_proj.bias"));
        }
        for proj in ["gate_proj", "up_proj", "down_proj"] {
            names.push(format!("{p}.mlp.{proj}.weight"));
            if c.mlp_bias {
                names.push(format!("{p}.mlp.{proj}.bias"));
            }
        }
    }
    names
}

/// Load a Hugging Face checkpoint directory (config.json + safetensors) onto `device`.
pub fn load_llama(dir: &Path, device: &Device) -> Result<Llama> {
    let config = LlamaConfig::load(dir)?;
    config.check_fits_in_memory(&format!("the model in {}", dir.display()))?;
    let files = weight_files(dir)?;
    let store = Store::open(&files)?;
    let expected = expected_names(&config);
    let known: std::collections::HashSet<&str> = expected.iter().map(String::as_str).collect();
    let mut extra: Vec<&String> = store
        .names()
        .filter(|n| {
            let ignored = n.ends_with("rotary_emb.inv_freq")
                || (config.tie_word_embeddings && n.as_str() == "lm_head.weight");
            !known.contains(n.as_str()) && !ignored
        })
        .collect();
    extra.sort();
    if let Some(name) = extra.first() {
        return Err(ModelError::checkpoint(
            dir,
            format!(
                "unexpected tensor `{name}` ({} unexpected in all): the checkpoint does not match config.json",
                extra.len()
            ),
        ));
    }
    let l = Loader {
        store: &store,
        device,
    };
    let c = &config;
    let (h, hd) = (c.hidden_size, c.head_dim);
    let mut layers = Vec::with_capacity(c.num_hidden_layers);
    for i in 0..c.num_hidden_layers {
        let p = format!("model.layers.{i}");
        layers.push(DecoderLayer {
            input_layernorm: l.norm(&format!("{p}.input_layernorm.weight"), h, c.rms_norm_eps)?,
            self_attn: Attention {
                q_proj: l.linear(
                    &format!("{p}.self_attn.q_proj"),
                    h,
                    c.num_attention_heads * hd,
                    c.attention_bias,
                )?,
                k_proj: l.linear(
                    &format!("{p}.self_attn.k_proj"),
                    h,
                    c.num_key_value_heads * hd,
                    c.attention_bias,
                )?,
                v_proj: l.linear(
                    &format!("{p}.self_attn.v_proj"),
                    h,
                    c.num_key_value_heads * hd,
                    c.attention_bias,
                )?,
                o_proj: l.linear(
                    &format!("{p}.self_attn.o_proj"),
                    c.num_attention_heads * hd,
                    h,
                    c.o_proj_bias,
                )?,
            },
            post_attention_layernorm: l.norm(
                &format!("{p}.post_attention_layernorm.weight"),
                h,
                c.rms_norm_eps,
            )?,
            mlp: Mlp {
                gate_proj: l.linear(
                    &format!("{p}.mlp.gate_proj"),
                    h,
                    c.intermediate_size,
                    c.mlp_bias,
                )?,
                up_proj: l.linear(
                    &format!("{p}.mlp.up_proj"),
                    h,
                    c.intermediate_size,
                    c.mlp_bias,
                )?,
                down_proj: l.linear(
                    &format!("{p}.mlp.down_proj"),
                    c.intermediate_size,
                    h,
                    c.mlp_bias,
                )?,
            },
        });
    }
    let embed = store.get("model.embed_tokens.weight", &[c.vocab_size, h])?;
    Ok(Llama {
        embed_tokens: Param::from_tensor(Tensor::from_data(
            TensorData::new(embed, [c.vocab_size, h]),
            device,
        )),
        layers,
        norm: l.norm("model.norm.weight", h, c.rms_norm_eps)?,
        lm_head: if c.tie_word_embeddings {
            None
        } else {
            Some(l.linear("lm_head", h, c.vocab_size, false)?)
        },
        config,
    })
}

/// One tensor to write: HF name, HF shape, little-endian f32 bytes.
type Entry = (String, Vec<usize>, Vec<u8>);

fn to_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn tensor_values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    super::llama::to_f32_vec(t)
}

fn push_linear(out: &mut Vec<Entry>, prefix: &str, lin: &Linear) {
    let [d_in, d_out] = lin.weight.val().dims();
    let w = transpose(&tensor_values(lin.weight.val()), d_in, d_out);
    out.push((format!("{prefix}.weight"), vec![d_out, d_in], to_bytes(&w)));
    if let Some(b) = &lin.bias {
        out.push((
            format!("{prefix}.bias"),
            vec![d_out],
            to_bytes(&tensor_values(b.val())),
        ));
    }
}

fn push_vec(out: &mut Vec<Entry>, name: &str, p: &Param<Tensor<1>>) {
    let v = tensor_values(p.val());
    out.push((name.to_string(), vec![v.len()], to_bytes(&v)));
}

/// The model's tensors with HF names and shapes, as f32 values (sorted by name).
pub fn hf_tensors(model: &Llama) -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    entries(model)
        .into_iter()
        .map(|(name, shape, bytes)| {
            let values = bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            (name, (shape, values))
        })
        .collect()
}

fn entries(model: &Llama) -> Vec<Entry> {
    let mut out = Vec::new();
    let embed = model.embed_tokens.val();
    let [v, h] = embed.dims();
    out.push((
        "model.embed_tokens.weight".into(),
        vec![v, h],
        to_bytes(&tensor_values(embed)),
    ));
    for (i, layer) in model.layers.iter().enumerate() {
        let p = format!("model.layers.{i}");
        push_vec(
            &mut out,
            &format!("{p}.input_layernorm.weight"),
            &layer.input_layernorm.weight,
        );
        push_vec(
            &mut out,
            &format!("{p}.post_attention_layernorm.weight"),
            &layer.post_attention_layernorm.weight,
        );
        let a = &layer.self_attn;
        push_linear(&mut out, &format!("{p}.self_attn.q_proj"), &a.q_proj);
        push_linear(&mut out, &format!("{p}.self_attn.k_proj"), &a.k_proj);
        push_linear(&mut out, &format!("{p}.self_attn.v_proj"), &a.v_proj);
        push_linear(&mut out, &format!("{p}.self_attn.o_proj"), &a.o_proj);
        push_linear(
            &mut out,
            &format!("{p}.mlp.gate_proj"),
            &layer.mlp.gate_proj,
        );
        push_linear(&mut out, &format!("{p}.mlp.up_proj"), &layer.mlp.up_proj);
        push_linear(
            &mut out,
            &format!("{p}.mlp.down_proj"),
            &layer.mlp.down_proj,
        );
    }
    push_vec(&mut out, "model.norm.weight", &model.norm.weight);
    if let Some(head) = &model.lm_head {
        push_linear(&mut out, "lm_head", head);
    }
    out
}

/// Save `model` into `dir` (created if needed) as `model.safetensors` (f32, HF tensor names,
/// metadata `format = pt`) plus `config.json` in `layout`, loadable by
/// `LlamaForCausalLM.from_pretrained(dir)`.
pub fn save_llama(model: &Llama, dir: &Path, layout: HfLayout) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
    write_weights(dir, &entries(model))?;
    model.config.save(dir, layout)
}

/// Write `dir/model.safetensors` from f32 tensors `(HF name, shape, values)`.
pub(crate) fn write_f32_safetensors(
    dir: &Path,
    tensors: &[(String, Vec<usize>, Vec<f32>)],
) -> Result<()> {
    let entries: Vec<Entry> = tensors
        .iter()
        .map(|(n, s, v)| (n.clone(), s.clone(), to_bytes(v)))
        .collect();
    write_weights(dir, &entries)
}

/// Write `dir/model.safetensors` (f32, metadata `format = pt`).
fn write_weights(dir: &Path, entries: &[Entry]) -> Result<()> {
    let views = entries
        .iter()
        .map(|(name, shape, bytes)| {
            TensorView::new(Dtype::F32, shape.clone(), bytes)
                .map(|v| (name.clone(), v))
                .map_err(|e| ModelError::checkpoint(dir, format!("tensor `{name}`: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    let path = dir.join(WEIGHTS_FILE);
    safetensors::tensor::serialize_to_file(views, Some(meta), &path)
        .map_err(|e| ModelError::checkpoint(&path, format!("cannot write: {e}")))
}

/// What [`inspect_checkpoint`] found.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointInfo {
    /// The parsed config.
    pub config: LlamaConfig,
    /// Every file whose content defines the model (config.json, index, shards, present
    /// tokenizer files), sorted: hash these for a cache key.
    pub files: Vec<PathBuf>,
}

/// Validate a checkpoint directory without loading weights: config.json parses, the
/// safetensors headers hold every tensor the config implies with the right shape and a
/// loadable dtype. Returns the config and the files to hash.
pub fn inspect_checkpoint(dir: &Path) -> Result<CheckpointInfo> {
    let config = LlamaConfig::load(dir)?;
    let weights = weight_files(dir)?;
    let mut shapes: HashMap<String, (Vec<usize>, Dtype, PathBuf)> = HashMap::new();
    for path in &weights {
        let file = File::open(path).map_err(|e| ModelError::io(path, e))?;
        // SAFETY: read-only mapping of a file we do not modify.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| ModelError::io(path, e))?;
        let (_, meta) = SafeTensors::read_metadata(&map)
            .map_err(|e| ModelError::checkpoint(path, format!("not a safetensors file: {e}")))?;
        for (name, info) in meta.tensors() {
            shapes.insert(name, (info.shape.clone(), info.dtype, path.clone()));
        }
    }
    let c = &config;
    let (h, hd) = (c.hidden_size, c.head_dim);
    for name in expected_names(c) {
        let (shape, dtype, path) = shapes.get(&name).ok_or_else(|| {
            ModelError::checkpoint(
                dir,
                format!("tensor `{name}` is missing from the safetensors files"),
            )
        })?;
        if !matches!(dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16) {
            return Err(ModelError::checkpoint(
                path,
                format!("tensor `{name}` has dtype {dtype:?}; only F32, F16 and BF16 load"),
            ));
        }
        let proj = |n: &str| {
            let q = c.num_attention_heads * hd;
            let kv = c.num_key_value_heads * hd;
            let i = c.intermediate_size;
            match n {
                "q_proj" => (q, h),
                "k_proj" | "v_proj" => (kv, h),
                "o_proj" => (h, q),
                "gate_proj" | "up_proj" => (i, h),
                "down_proj" => (h, i),
                _ => (0, 0),
            }
        };
        let parts: Vec<&str> = name.split('.').collect();
        let want: Vec<usize> = match (parts.as_slice(), name.as_str()) {
            (_, "model.embed_tokens.weight") | (_, "lm_head.weight") => vec![c.vocab_size, h],
            (_, n) if n.ends_with("norm.weight") => vec![h],
            ([.., p, "weight"], _) => {
                let (o, i) = proj(p);
                vec![o, i]
            }
            ([.., p, "bias"], _) => vec![proj(p).0],
            _ => shape.clone(),
        };
        if *shape != want {
            return Err(ModelError::checkpoint(
                path,
                format!("tensor `{name}` has shape {shape:?}, the config implies {want:?}"),
            ));
        }
    }
    Ok(CheckpointInfo {
        config,
        files: model_files(dir, weights),
    })
}

/// The files of a checkpoint directory that define the model: config.json, the safetensors
/// index and shards (or model.safetensors), and the [`OPTIONAL_FILES`] present; sorted. Nothing
/// else in the directory (a `.git`, PyTorch `.bin` copies of the weights, a README) counts, so
/// these are what a cache key hashes. Checks only that the weights are named, not their shapes
/// ([`inspect_checkpoint`] does).
pub fn checkpoint_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let config = dir.join("config.json");
    if !config.is_file() {
        return Err(ModelError::checkpoint(
            dir,
            "no config.json (a Hugging Face checkpoint directory holds config.json and safetensors weights)",
        ));
    }
    Ok(model_files(dir, weight_files(dir)?))
}

fn model_files(dir: &Path, weights: Vec<PathBuf>) -> Vec<PathBuf> {
    let mut files = vec![dir.join("config.json")];
    if dir.join(INDEX_FILE).is_file() {
        files.push(dir.join(INDEX_FILE));
    }
    files.extend(weights);
    files.extend(
        OPTIONAL_FILES
            .iter()
            .map(|f| dir.join(f))
            .filter(|p| p.is_file()),
    );
    files.sort();
    files.dedup();
    files
}

/// Refuses weights holding NaN or an infinity, naming the file and the tensor: such a model
/// evaluates to NaN everywhere (perplexity NaN, every needle trial failed, entropies NaN).
fn check_finite(files: &[PathBuf]) -> Result<()> {
    use rayon::prelude::*;
    for path in files {
        let file = File::open(path).map_err(|e| ModelError::io(path, e))?;
        // SAFETY: read-only mapping of a file we do not modify.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| ModelError::io(path, e))?;
        let st = SafeTensors::deserialize(&map)
            .map_err(|e| ModelError::checkpoint(path, format!("not a safetensors file: {e}")))?;
        let mut names = st.names();
        names.sort();
        for name in names {
            let view = st
                .tensor(name)
                .map_err(|e| ModelError::checkpoint(path, format!("tensor `{name}`: {e}")))?;
            // A value is NaN or infinite when its exponent bits are all ones.
            let (width, mask): (usize, u32) = match view.dtype() {
                Dtype::F32 => (4, 0x7f80_0000),
                Dtype::F16 => (2, 0x7c00),
                Dtype::BF16 => (2, 0x7f80),
                _ => continue,
            };
            let bad = view.data().par_chunks_exact(width).position_any(|b| {
                let bits = match *b {
                    [a, b, c, d] => u32::from_le_bytes([a, b, c, d]),
                    [a, b] => u32::from(u16::from_le_bytes([a, b])),
                    _ => 0,
                };
                bits & mask == mask
            });
            if let Some(i) = bad {
                return Err(ModelError::checkpoint(
                    path,
                    format!(
                        "tensor `{name}` holds NaN or infinite values (one at element {i}): the weights are broken"
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Validate `src` ([`inspect_checkpoint`]) and copy its model files into `dst` (created if
/// needed), keeping names. Returns the info of the copy (its `files` under `dst`).
pub fn import_checkpoint(src: &Path, dst: &Path) -> Result<CheckpointInfo> {
    let info = inspect_checkpoint(src)?;
    check_finite(&weight_files(src)?)?;
    // The tokenizer and generation files are read downstream from the cache's copy: one that
    // is not even JSON is named here, as the user's file, not there as a cache path (a data
    // stage that reads the tokenizer names the user's file in its context too).
    for f in &info.files {
        let name = f.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if OPTIONAL_FILES.contains(&name) {
            let text = std::fs::read_to_string(f).map_err(|e| ModelError::io(f, e))?;
            serde_json::from_str::<serde_json::Value>(&text)
                .map_err(|e| ModelError::checkpoint(f, format!("not valid JSON: {e}")))?;
        }
    }
    std::fs::create_dir_all(dst).map_err(|e| ModelError::io(dst, e))?;
    for f in &info.files {
        let name = f.file_name().expect("checkpoint files have names");
        let to = dst.join(name);
        std::fs::copy(f, &to).map_err(|e| ModelError::io(f, e))?;
    }
    inspect_checkpoint(dst)
}
