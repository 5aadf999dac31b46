//! The `model` stage kind: a Hugging Face checkpoint directory the user already has, imported
//! into the cache so that train and eval stages can start from a real model.
//!
//! The checkpoint's files are part of the key (hashed by content, memoised by size and mtime), so
//! replacing the checkpoint re-imports it and everything downstream, and touching it does not.
//! Only the files the import reads count (config.json, the safetensors and their index, the
//! tokenizer files): a hub download or clone also holds a `.git`, PyTorch `.bin` copies of the
//! weights and a README: hashing them would double the work, and git rewriting its own files
//! would look like a new model.

use std::path::{Path, PathBuf};

use anyhow::Context;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Ctx, Needs, ParamError, StageKind};
use crate::model::{checkpoint_files, import_checkpoint, import_gguf, is_gguf};
use crate::paths::expand_home;

/// Imports a checkpoint directory (config.json, safetensors, optional tokenizer.json) or a
/// GGUF file (dequantized into the same layout).
pub struct Model;

/// Parameters of a `model` stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelParams {
    /// The checkpoint directory, relative to the pipeline file: a Hugging Face LLaMA-family
    /// model (config.json, model.safetensors or sharded with model.safetensors.index.json,
    /// f32/f16/bf16 weights, and tokenizer.json when the data stage should use its tokenizer),
    /// or a `.gguf` file (llama.cpp; F32/F16/BF16/Q8_0/Q4_0/Q4_1/Q4_K/Q5_K/Q6_K tensors are
    /// dequantized to f32 and the tokenizer is rebuilt from its metadata). A leading `~/` is
    /// the home directory.
    pub path: PathBuf,
}

impl StageKind for Model {
    const KIND: &'static str = "model";
    const VERSION: u32 = 1;
    type Params = ModelParams;

    fn needs() -> Needs {
        Needs::Fixed(&[])
    }

    fn inputs(params: &ModelParams, pipeline_dir: &Path) -> Vec<PathBuf> {
        let path = expand_home(&params.path);
        if is_gguf(&path) {
            return vec![path];
        }
        // Named as the user wrote the path (relative to the pipeline file, or absolute). A
        // directory that is not a checkpoint is hashed whole, so that a missing one fails
        // before anything runs and a broken one fails in `run` with the import's message.
        match checkpoint_files(&pipeline_dir.join(&path)) {
            Ok(files) => files
                .iter()
                .filter_map(|f| f.file_name())
                .map(|name| path.join(name))
                .collect(),
            Err(_) => vec![path],
        }
    }

    fn check(params: &ModelParams) -> Result<(), ParamError> {
        if params.path.as_os_str().is_empty() {
            return Err(ParamError::new(
                "path",
                "is empty: give the checkpoint directory or .gguf file",
            ));
        }
        Ok(())
    }

    fn device_sensitive(_params: &ModelParams) -> bool {
        false
    }

    fn run(params: &ModelParams, ctx: &Ctx<'_>) -> anyhow::Result<()> {
        let src = ctx.resolve(expand_home(&params.path));
        ctx.progress.start("import", 1);
        let info = if is_gguf(&src) {
            import_gguf(&src, ctx.out_dir)
        } else {
            import_checkpoint(&src, ctx.out_dir)
        }
        .with_context(|| format!("cannot import the checkpoint in {}", src.display()))?;
        ctx.progress.message(&format!(
            "{} parameters, {} files",
            info.config.num_params(),
            info.files.len()
        ));
        ctx.progress.advance(1);
        Ok(())
    }
}
