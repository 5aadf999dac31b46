//! What the evaluation stages share: finding and loading an upstream model, opening the data
//! stage's output, writing a table, and the GPU resource rule.
//!
//! A model upstream (a `train` or `model` stage) is a directory holding a Hugging Face layout
//! (`config.json` + safetensors), either in its `model/` subdirectory or at its top level;
//! [`model_dir`] looks in that order, so a stage that saves its final model to `model/` next
//! to checkpoints and logs needs no further agreement.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use super::{Ctx, ParamError, Upstream};
use crate::data::PreparedData;
use crate::model::{Llama, load_llama};
use crate::tables::Table;

/// The directory holding the model of an upstream instance.
pub fn model_dir(upstream: &Upstream) -> anyhow::Result<PathBuf> {
    for dir in [upstream.dir.join("model"), upstream.dir.clone()] {
        if dir.join("config.json").is_file() {
            return Ok(dir);
        }
    }
    bail!(
        "upstream `{}` ({}) has no model: neither {} nor {} exists",
        upstream.instance,
        upstream.kind,
        upstream.dir.join("model/config.json").display(),
        upstream.dir.join("config.json").display()
    )
}

/// Loads the model of need `name` on the pipeline's device.
pub fn load_model(ctx: &Ctx<'_>, name: &str) -> anyhow::Result<(Llama, String)> {
    let up = ctx.need(name)?;
    let dir = model_dir(up)?;
    let device = crate::device::device(ctx.device)?;
    let model = load_llama(&dir, &device)
        .with_context(|| format!("loading model `{}` from {}", up.instance, dir.display()))?;
    Ok((model, up.instance.clone()))
}

/// Opens the data stage's output of need `data`, checking that its vocabulary fits the model.
pub fn open_data(ctx: &Ctx<'_>, model: &Llama) -> anyhow::Result<PreparedData> {
    let up = ctx.need("data")?;
    let data = PreparedData::open(&up.dir)
        .with_context(|| format!("opening data `{}` at {}", up.instance, up.dir.display()))?;
    let vocab = model.config().vocab_size;
    if data.vocab_size() > vocab {
        bail!(
            "data `{}` has {} tokens in its vocabulary but the model's vocab_size is {vocab}",
            up.instance,
            data.vocab_size()
        );
    }
    Ok(data)
}

/// Writes `rows` as table `T` of the instance (`metrics/<table>.parquet`).
pub fn write_rows<T: Table>(ctx: &Ctx<'_>, rows: &[T]) -> anyhow::Result<()> {
    let batch = T::to_batch(rows)?;
    ctx.write_table(T::NAME, &batch)?;
    Ok(())
}

/// The longest context length an evaluation accepts: 4M tokens, 32 times the paper's 128K; a
/// larger value is a typo that would otherwise fail allocating its buffers.
pub const MAX_CONTEXT: usize = 1 << 22;

/// Checks a list of context lengths (parameter `key`): non-empty, each at least `min`, no
/// duplicates.
pub fn check_lengths(lengths: &[usize], min: usize, key: &str) -> Result<(), ParamError> {
    if lengths.is_empty() {
        return Err(ParamError::new(
            key,
            "is empty: give at least one context length",
        ));
    }
    if let Some(l) = lengths.iter().find(|&&l| l < min || l > MAX_CONTEXT) {
        return Err(ParamError::new(
            key,
            format!("holds {l}: context lengths must be in [{min}, {MAX_CONTEXT}]"),
        ));
    }
    let mut sorted = lengths.to_vec();
    sorted.sort_unstable();
    if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
        return Err(ParamError::new(key, format!("lists {} twice", w[0])));
    }
    Ok(())
}

/// Each named count must be at least 1.
pub fn check_positive(counts: &[(&str, usize)]) -> Result<(), ParamError> {
    match counts.iter().find(|(_, v)| *v == 0) {
        Some((key, _)) => Err(ParamError::new(*key, "must be at least 1")),
        None => Ok(()),
    }
}

/// A path inside the instance's output directory.
pub fn out_path(ctx: &Ctx<'_>, name: &str) -> PathBuf {
    Path::new(ctx.out_dir).join(name)
}
