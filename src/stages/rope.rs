//! The `rope` stage kind: a model with its RoPE changed and nothing else, i.e. a training-free
//! RoPE extension (the paper's PI, NTK, YaRN and dynamic NTK applied to pretrained weights).
//!
//! The output is a checkpoint directory like the `model` kind's: config.json with the new RoPE
//! and lengths ([`RopeParams::apply`], exactly what a `train` stage's `rope` does before
//! training), and the upstream's weights and tokenizer files hard-linked (copied where the
//! filesystem cannot link), so an extension costs a config.json rather than a copy of the
//! weights.

use anyhow::Context;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::eval_io::model_dir;
use super::{Ctx, NeedDecl, Needs, ParamError, StageKind};
use crate::model::{HfLayout, LlamaConfig, checkpoint_files, inspect_checkpoint};
use crate::train::RopeParams;

/// Applies a RoPE to the `model` need's checkpoint.
pub struct Rope;

/// Parameters of a `rope` stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RopeStageParams {
    /// The RoPE, as a `train` stage's `rope` table (a `matrix.rope` sweeps it): `rope_type` and
    /// its keys, plus `rope_theta` and `max_position_embeddings`. The model's trained length
    /// becomes the original length of yarn, llama3 and longrope.
    pub rope: RopeParams,
}

impl StageKind for Rope {
    const KIND: &'static str = "rope";
    const VERSION: u32 = 1;
    type Params = RopeStageParams;

    fn needs() -> Needs {
        Needs::Fixed(const { &[NeedDecl::required("model")] })
    }

    fn check(params: &RopeStageParams) -> Result<(), ParamError> {
        Ok(params.rope.check()?)
    }

    fn device_sensitive(_params: &RopeStageParams) -> bool {
        false
    }

    fn run(params: &RopeStageParams, ctx: &Ctx<'_>) -> anyhow::Result<()> {
        let up = ctx.need("model")?;
        let src = model_dir(up)?;
        let config = LlamaConfig::load(&src)?;
        let config = params
            .rope
            .apply(&config)
            .with_context(|| format!("applying the RoPE to `{}`", up.instance))?;
        std::fs::create_dir_all(ctx.out_dir)?;
        for f in checkpoint_files(&src)? {
            let Some(name) = f.file_name() else { continue };
            if name == "config.json" {
                continue;
            }
            let to = ctx.out_dir.join(name);
            if std::fs::hard_link(&f, &to).is_err() {
                std::fs::copy(&f, &to)
                    .with_context(|| format!("copying {} to {}", f.display(), to.display()))?;
            }
        }
        config.save(ctx.out_dir, HfLayout::Both)?;
        inspect_checkpoint(ctx.out_dir)?;
        ctx.progress.message(&format!(
            "{} ({}), max_position_embeddings {}",
            config.rope.rope_type(),
            up.instance,
            config.max_position_embeddings
        ));
        Ok(())
    }
}
