//! The `data_prep` stage kind: a corpus (or the built-in synthetic one) turned into a tokenizer,
//! memory-mapped token shards and haystack settings that the train and eval stages read.
//!
//! The work is in [`crate::data`]; this file only maps the runner's context onto it.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use super::{Ctx, NeedDecl, Needs, ParamError, StageKind};
use crate::data::{
    DataError, DataPrepParams, FORMAT_VERSION, PrepareContext, TokenizerParams, external_files,
    prepare,
};

/// Prepares a corpus.
pub struct DataPrep;

impl StageKind for DataPrep {
    const KIND: &'static str = "data_prep";
    /// The file format plus the synthetic generator's revision: a new corpus or haystack form must
    /// not be served from an old cache entry. 2: the passkey needle repeats its key (YaRN form).
    const VERSION: u32 = FORMAT_VERSION * 100 + 2;
    type Params = DataPrepParams;

    fn needs() -> Needs {
        // `tokenizer = { from = "model" }` (or `"tokenizer"`: another data stage, so that a
        // pretraining corpus and a long-document corpus share one vocabulary) reads the
        // tokenizer.json of that need.
        Needs::Fixed(const { &[NeedDecl::optional("model"), NeedDecl::optional("tokenizer")] })
    }

    fn inputs(params: &DataPrepParams, pipeline_dir: &Path) -> Vec<PathBuf> {
        // Keep names relative to the pipeline file so that a moved project keeps its cache.
        external_files(params, pipeline_dir)
            .into_iter()
            .map(|p| {
                p.strip_prefix(pipeline_dir)
                    .map_or(p.clone(), Path::to_path_buf)
            })
            .collect()
    }

    fn check(params: &DataPrepParams) -> Result<(), ParamError> {
        params.validate().map_err(|e| match e {
            DataError::Param { key, message } => ParamError::new(key, message),
            DataError::VocabTooLarge { .. } => {
                ParamError::new("tokenizer.train_bpe.vocab_size", e.to_string())
            }
            other => ParamError::new("", other.to_string()),
        })
    }

    fn check_needs(params: &DataPrepParams, given: &[&str]) -> Result<(), ParamError> {
        match &params.tokenizer {
            TokenizerParams::From(need) if !given.contains(&need.as_str()) => Err(ParamError::new(
                "tokenizer.from",
                format!(
                    "`{need}` names no need of this stage: add `needs = {{ {need} = \"<stage>\" }}`"
                ),
            )),
            _ => Ok(()),
        }
    }

    fn device_sensitive(_params: &DataPrepParams) -> bool {
        false
    }

    fn run(params: &DataPrepParams, ctx: &Ctx<'_>) -> anyhow::Result<()> {
        let tokenizer_dir = match &params.tokenizer {
            TokenizerParams::From(need) => match ctx.needs.get(need).map(Vec::as_slice) {
                Some([up]) => Some(up.dir.clone()),
                _ => bail!(
                    "`tokenizer.from = \"{need}\"` names no need of stage `{}`: add `needs = {{ {need} = \"<stage>\" }}`",
                    ctx.stage
                ),
            },
            _ => None,
        };
        let stats = prepare(
            params,
            &PrepareContext {
                out_dir: ctx.out_dir.to_path_buf(),
                base_dir: ctx.pipeline_dir.to_path_buf(),
                seed: ctx.seed,
                tokenizer_dir,
                progress: ctx.progress,
            },
        )
        .with_context(|| {
            // The tokenizer read is the cache's copy: name the file the user gave too.
            let origin = match &params.tokenizer {
                TokenizerParams::From(need) => ctx
                    .need(need)
                    .ok()
                    .filter(|up| up.kind == "model")
                    .and_then(|up| up.params.get("path")?.as_str().map(str::to_string))
                    .map(|p| {
                        let path = ctx.resolve(crate::paths::expand_home(Path::new(&p)));
                        format!(" (its tokenizer is the one of {})", path.display())
                    }),
                _ => None,
            };
            format!(
                "data preparation of `{}`{}",
                ctx.instance,
                origin.unwrap_or_default()
            )
        })?;
        let tokens: u64 = stats.splits.iter().map(|s| s.tokens).sum();
        ctx.progress.message(&format!("{tokens} tokens"));
        Ok(())
    }
}
