//! The `model` stage kind: a Hugging Face checkpoint directory the user already has, imported
//! into the cache so that train and eval stages can start from a real model.
//!
//! The directory's files are part of the key (hashed by content, memoised by size and mtime), so
//! replacing the checkpoint re-imports it and everything downstream, and touching it does not.

use std::path::{Path, PathBuf};

use anyhow::Context;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Ctx, Needs, StageKind};
use crate::model::import_checkpoint;

/// Imports a checkpoint directory (config.json, safetensors, optional tokenizer.json).
pub struct Model;

/// Parameters of a `model` stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelParams {
    /// The checkpoint directory, relative to the pipeline file: a Hugging Face LLaMA-family
    /// model (config.json, model.safetensors or sharded with model.safetensors.index.json,
    /// f32/f16/bf16 weights, and tokenizer.json when the data stage should use its tokenizer).
    pub path: PathBuf,
}

impl StageKind for Model {
    const KIND: &'static str = "model";
    const VERSION: u32 = 1;
    type Params = ModelParams;

    fn needs() -> Needs {
        Needs::Fixed(&[])
    }

    fn inputs(params: &ModelParams, _pipeline_dir: &Path) -> Vec<PathBuf> {
        vec![params.path.clone()]
    }

    fn device_sensitive(_params: &ModelParams) -> bool {
        false
    }

    fn run(params: &ModelParams, ctx: &Ctx<'_>) -> anyhow::Result<()> {
        let src = ctx.resolve(&params.path);
        ctx.progress.start("import", 1);
        let info = import_checkpoint(&src, ctx.out_dir)
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
