//! What train and eval stages open: the output directory of a data_prep stage, with its
//! tokenizer, memory-mapped splits, samplers and haystack builder.

use std::path::{Path, PathBuf};

use tokenizers::Tokenizer;

use super::error::DataError;
use super::haystack::{Filler, FillerKind, HaystackBuilder, HaystackStyle};
use super::prepare::{FORMAT_VERSION, Manifest};
use super::shards::TokenSplit;
use super::synthetic::SyntheticCorpus;
use super::tokenizer::{SpecialTokens, load_tokenizer};

/// Tokens of the validation (or training) stream used as haystack filler, at most.
const MAX_FILLER_TOKENS: usize = 1 << 22;

/// A prepared data directory, opened.
#[derive(Debug, Clone)]
pub struct PreparedData {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub tokenizer: Tokenizer,
    pub train: TokenSplit,
    pub valid: TokenSplit,
}

impl PreparedData {
    /// Opens `dir` (the output of `prepare`), checking that its files agree.
    pub fn open(dir: &Path) -> Result<PreparedData, DataError> {
        let mp = dir.join("data.json");
        let bytes = std::fs::read(&mp).map_err(|e| DataError::io(&mp, e))?;
        let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|e| DataError::Format {
            path: mp.clone(),
            message: e.to_string(),
        })?;
        if manifest.format_version != FORMAT_VERSION {
            return Err(DataError::Format {
                path: mp,
                message: format!(
                    "format version {} (this build reads {FORMAT_VERSION}); prepare the data again",
                    manifest.format_version
                ),
            });
        }
        let tokenizer = load_tokenizer(&dir.join("tokenizer.json"))?;
        let train = TokenSplit::open(dir, "train", manifest.token_dtype)?;
        let valid = TokenSplit::open(dir, "valid", manifest.token_dtype)?;
        Ok(PreparedData {
            dir: dir.to_path_buf(),
            manifest,
            tokenizer,
            train,
            valid,
        })
    }

    /// BOS/EOS ids and whether documents carry them.
    pub fn special(&self) -> &SpecialTokens {
        &self.manifest.special
    }

    /// Vocabulary size (added tokens included): the model's minimum `vocab_size`.
    pub fn vocab_size(&self) -> usize {
        self.manifest.vocab_size
    }

    /// A haystack builder with the style recorded by the data stage.
    pub fn haystacks(&self) -> Result<HaystackBuilder, DataError> {
        self.haystacks_with(self.manifest.haystack.clone())
    }

    /// A haystack builder with another style (e.g. templates overridden by the eval stage).
    pub fn haystacks_with(&self, style: HaystackStyle) -> Result<HaystackBuilder, DataError> {
        let synthetic = || -> Result<Filler, DataError> {
            let p = self.manifest.synthetic.clone().unwrap_or_default();
            Ok(Filler::Synthetic(SyntheticCorpus::new(&p)?))
        };
        let tokens = || {
            let split = if self.valid.is_empty() {
                &self.train
            } else {
                &self.valid
            };
            Filler::Tokens(split.tokens(0..split.len().min(MAX_FILLER_TOKENS)))
        };
        let filler = match style.filler {
            FillerKind::Synthetic => synthetic()?,
            FillerKind::Repeat => Filler::Repeat(style.repeat_text.clone()),
            FillerKind::Validation => tokens(),
            FillerKind::Auto if self.manifest.source == "synthetic" => synthetic()?,
            FillerKind::Auto => tokens(),
        };
        HaystackBuilder::new(
            self.tokenizer.clone(),
            style,
            filler,
            &self.manifest.special,
        )
    }
}
