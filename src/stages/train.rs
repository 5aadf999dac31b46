//! The `train` stage: pretraining of a new model, or continual pretraining of `needs.init`
//! with a RoPE extension, on the token splits of `needs.data`.
//!
//! The stage only wires things together: it opens the data stage's output, builds or loads the
//! model (applying `rope`), hands [`crate::train::train`] a window sampler over the training
//! split and fixed validation windows, and writes the final Hugging Face checkpoint
//! (model.safetensors, config.json, the data stage's tokenizer.json) plus the `train_log` and
//! `val_log` tables. Checkpoints go to `checkpoints/` in the build directory, which the runner
//! keeps for a retried run (`resumable`), so a killed run continues where it stopped.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use burn::tensor::Device;

use super::{Ctx, NeedDecl, Needs, ParamError, Resources, StageKind};
use crate::data::{PreparedData, SampleMode, WindowSampler};
use crate::model::{HfLayout, Llama, load_llama, save_llama};
use crate::tables::{Table, TrainLogRow, ValLogRow};
use crate::train::{
    BatchSource, Sampling, TrainError, TrainJob, TrainStageParams, checkpoint, seeded_init, train,
};

/// The `train` stage kind.
pub struct Train;

/// Seed offset of the validation windows, so they differ from the training windows.
const VALIDATION_SEED: u64 = 0x7a11_da7a;

/// Summary file written beside the model.
pub const SUMMARY_FILE: &str = "train.json";

/// What a train instance records in [`SUMMARY_FILE`] beside its weights: the run's totals, the
/// model it made, and the warnings it printed (which the report stage publishes).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainSummary {
    /// Optimiser steps done.
    pub steps: u64,
    /// Training tokens seen.
    pub tokens: u64,
    /// Training sequence length.
    pub seq_len: usize,
    /// Training seconds over every session.
    pub elapsed_s: f64,
    /// Training throughput.
    pub tokens_per_s: f64,
    /// The checkpoint step this run resumed from, if it did.
    pub resumed_from: Option<u64>,
    /// The last logged training loss.
    pub final_loss: Option<f64>,
    /// The last validation loss.
    pub final_val_loss: Option<f64>,
    /// Parameters of the model.
    pub params: usize,
    /// The model's RoPE type (`default`, `linear`, `yarn`, ...).
    pub rope_type: String,
    /// The model's `max_position_embeddings`.
    pub max_position_embeddings: usize,
    /// The instance of `needs.init`, if the model started from one.
    pub init: Option<String>,
    /// The device it trained on.
    pub device: String,
    /// `WARNING:` lines printed while it ran (none: the key is left out).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// [`WindowSampler`] as a [`BatchSource`].
struct Sampler(WindowSampler);

impl BatchSource for Sampler {
    fn window(&self) -> usize {
        self.0.state().window
    }
    fn next_batch(&mut self, rows: usize) -> crate::train::Result<Vec<u32>> {
        Ok(self.0.next_batch(rows))
    }
    fn position(&self) -> u64 {
        self.0.state().position
    }
    fn set_position(&mut self, position: u64) {
        self.0.set_position(position)
    }
}

/// The Hugging Face checkpoint of an upstream model or train instance: its output directory,
/// or a `model/` directory inside it.
fn model_dir(dir: &Path) -> PathBuf {
    if dir.join("config.json").is_file() {
        dir.to_path_buf()
    } else {
        dir.join("model")
    }
}

/// The model to train, on the autodiff device: `init`'s weights, or a new seeded model.
fn build_model(
    params: &TrainStageParams,
    ctx: &Ctx<'_>,
    data: &PreparedData,
    device: &Device,
) -> anyhow::Result<Llama> {
    let init = ctx.need_all("init");
    let model = match init {
        [] => {
            let special = data.special();
            let config = params.model.clone().unwrap_or_default().config(
                data.vocab_size(),
                params.train.seq_len,
                special.bos_id,
                special.eos_id,
            )?;
            seeded_init(Llama::init(&config, device)?, ctx.seed)
        }
        [up] => {
            if params.model.is_some() {
                bail!(
                    "`model`: a model started from `needs.init` (`{}`) keeps its architecture; remove the `model` table (change the RoPE with `rope`)",
                    up.instance
                );
            }
            let dir = model_dir(&up.dir);
            let model = load_llama(&dir, device)
                .with_context(|| format!("loading the `init` model of `{}`", up.instance))?;
            if model.config().vocab_size < data.vocab_size() {
                bail!(
                    "the `init` model `{}` has vocab_size {}, but the data's tokenizer has {} tokens",
                    up.instance,
                    model.config().vocab_size,
                    data.vocab_size()
                );
            }
            model
        }
        many => bail!(
            "need `init` has {} instances where one was expected",
            many.len()
        ),
    };
    Ok(match &params.rope {
        Some(rope) => rope.apply_to(model)?,
        None => model,
    })
}

/// Warnings about the training length against the model's: a `train.seq_len` above the
/// `max_position_embeddings` of a model from `needs.init` (after `rope`) trains it beyond the
/// length its RoPE is set for, and its config.json keeps the shorter length. Not an error: a
/// "RoPE unchanged" control arm does exactly this on purpose. (A new model's `model` table is
/// checked when the pipeline is read, since both lengths are known there.)
fn length_warnings(
    seq_len: usize,
    config: &crate::model::LlamaConfig,
    ctx: &Ctx<'_>,
) -> Vec<String> {
    let max = config.max_position_embeddings;
    if seq_len <= max {
        return Vec::new();
    }
    let from = ctx
        .need_all("init")
        .first()
        .map_or("the new model".to_string(), |u| format!("`{}`", u.instance));
    vec![format!(
        "WARNING: train.seq_len {seq_len} is longer than the max_position_embeddings {max} of {from} with its RoPE ({}): it trains beyond the length that RoPE is set for, and its config.json keeps {max}",
        config.rope.rope_type()
    )]
}

/// A training parameter error at its key (`train.steps`, `model.hidden_size`, `rope.factor`).
impl From<TrainError> for ParamError {
    fn from(e: TrainError) -> ParamError {
        match e {
            TrainError::Param { key, message } => ParamError::new(key, message),
            other => ParamError::new("", other.to_string()),
        }
    }
}

impl StageKind for Train {
    const KIND: &'static str = "train";
    // 2: on the CPU the attention is the fused training op (model::flash_grad), whose forward
    // and backward round differently from the decomposed attention in the last bits.
    // 3: RMSNorm, SwiGLU, RoPE and the loss are fused training ops too (model::fused).
    // 4: the validation loss (`val_log`) runs the same fused kernels forward only, so its last
    // bits differ (the weights do not).
    const VERSION: u32 = 4;
    type Params = TrainStageParams;

    fn needs() -> Needs {
        Needs::Fixed(const { &[NeedDecl::required("data"), NeedDecl::optional("init")] })
    }

    fn check(params: &Self::Params) -> Result<(), ParamError> {
        params.train.validate()?;
        if let Some(model) = &params.model {
            model.check(params.train.seq_len)?;
        }
        if let Some(rope) = &params.rope {
            rope.check()?;
        }
        Ok(())
    }

    fn check_needs(params: &Self::Params, given: &[&str]) -> Result<(), ParamError> {
        if params.model.is_some() && given.contains(&"init") {
            return Err(ParamError::new(
                "model",
                "a model started from `needs.init` keeps its architecture: remove the `model` table (change the RoPE with `rope`)",
            ));
        }
        Ok(())
    }

    fn resources(_params: &Self::Params, device: &str) -> Resources {
        Resources::for_device(device)
    }

    fn resumable(_params: &Self::Params) -> bool {
        true
    }

    fn scratch(params: &Self::Params) -> Vec<&'static str> {
        if params.train.keep_checkpoint {
            Vec::new()
        } else {
            vec![checkpoint::CHECKPOINTS_DIR]
        }
    }

    fn run(params: &Self::Params, ctx: &Ctx<'_>) -> anyhow::Result<()> {
        let device = crate::device::device(ctx.device)?;
        let train_device = device.clone().autodiff();
        let data_up = ctx.need("data")?;
        let data = PreparedData::open(&data_up.dir)
            .with_context(|| format!("opening the data of `{}`", data_up.instance))?;
        if data.train.num_docs() == 0 {
            bail!(
                "the data of `{}` has no training documents: every document went to validation (`split`), which is for evaluation only; a train stage needs training data",
                data_up.instance
            );
        }
        // The model ships with its data's tokenizer. Copied before training, while the data
        // entry is known to be whole; a tokenizer missing now is an error, never a model
        // committed without one.
        let tok = data.dir.join("tokenizer.json");
        let to = ctx.out_dir.join("tokenizer.json");
        std::fs::copy(&tok, &to).with_context(|| {
            format!(
                "copying the tokenizer of `{}` ({}) to {}",
                data_up.instance,
                tok.display(),
                to.display()
            )
        })?;
        let p = &params.train;
        let window = p.seq_len + 1;
        let model = build_model(params, ctx, &data, &train_device)?;
        let warnings = length_warnings(p.seq_len, model.config(), ctx);
        for w in &warnings {
            ctx.progress.warn(w);
        }

        let mode = match p.sample {
            Sampling::Stream => SampleMode::Stream,
            Sampling::DocumentStart => SampleMode::DocumentStart,
            Sampling::Sequential => SampleMode::Sequential,
        };
        let sampler = WindowSampler::new(&data.train, window, ctx.seed, mode)
            .map_err(|e| TrainError::Data(format!("training split: {e}")))?;
        let mut source = Sampler(sampler);
        let validation: Vec<Vec<u32>> = if data.valid.len() >= window {
            let mut v = WindowSampler::new(
                &data.valid,
                window,
                ctx.seed ^ VALIDATION_SEED,
                SampleMode::Stream,
            )
            .map_err(|e| TrainError::Data(format!("validation split: {e}")))?;
            (0..p.val_batches * p.batch_size)
                .map(|_| v.next_window())
                .collect()
        } else {
            ctx.progress.message(&format!(
                "validation split has {} tokens, fewer than a window of {window}: no val_log",
                data.valid.len()
            ));
            Vec::new()
        };

        let job = TrainJob {
            params: p,
            seed: ctx.seed,
            run_dir: ctx.out_dir,
            progress: ctx.progress,
            stop_after: None,
        };
        let out = train(&job, model, &mut source, &validation)?;

        save_llama(&out.model, ctx.out_dir, HfLayout::Both)?;
        ctx.write_table(TrainLogRow::NAME, &TrainLogRow::to_batch(&out.train_log)?)?;
        ctx.write_table(ValLogRow::NAME, &ValLogRow::to_batch(&out.val_log)?)?;
        let c = out.model.config();
        let summary = TrainSummary {
            steps: out.steps,
            tokens: out.tokens,
            seq_len: p.seq_len,
            elapsed_s: out.elapsed_s,
            tokens_per_s: out.tokens_per_s,
            resumed_from: out.resumed_from,
            final_loss: out.train_log.last().map(|r| r.loss),
            final_val_loss: out.val_log.last().map(|r| r.val_loss),
            params: c.num_params(),
            rope_type: c.rope.rope_type().to_string(),
            max_position_embeddings: c.max_position_embeddings,
            init: ctx.need_all("init").first().map(|u| u.instance.clone()),
            device: ctx.device.to_string(),
            warnings,
        };
        let sp = ctx.out_dir.join(SUMMARY_FILE);
        crate::results::write_atomic(
            &sp,
            (serde_json::to_string_pretty(&summary)? + "\n").as_bytes(),
        )?;
        // Checkpoints stay until the entry is committed (`scratch`): removing them here would
        // leave a kill before the commit nothing to resume from.
        Ok(())
    }
}
