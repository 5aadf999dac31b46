//! What a user writes under `[stages.data]` (besides `kind` and `needs`): typed, defaulted and
//! strict (unknown keys are errors), so that the canonical JSON of a fully defaulted value can
//! go into the cache key and the pipeline JSON schema can be generated from these types.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::error::DataError;
use super::haystack::HaystackParams;
use super::synthetic::SyntheticParams;

/// Parameters of a `data_prep` stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct DataPrepParams {
    /// Where the documents come from: `{ synthetic = {..} }` (default), `{ text = {..} }`,
    /// `{ jsonl = {..} }` or `{ parquet = {..} }`.
    pub source: SourceParams,
    /// `{ train_bpe = {..} }` (default), `{ path = "tokenizer.json" }` or
    /// `{ from = "<need name>" }` (a tokenizer.json in an upstream stage's output).
    pub tokenizer: TokenizerParams,
    /// Put the BOS token before every document. Default: yes when the tokenizer has one.
    pub add_bos: Option<bool>,
    /// Put the EOS token after every document. Default: yes when the tokenizer has one.
    pub add_eos: Option<bool>,
    /// The BOS token's text. Default: `<s>` for a trained tokenizer; for a given one,
    /// tokenizer_config.json's `bos_token` or a well-known name found in the vocabulary.
    pub bos_token: Option<String>,
    /// The EOS token's text (found like `bos_token`; default `</s>` for a trained tokenizer).
    pub eos_token: Option<String>,
    /// Element type of the token shards: `auto` (u16 when the vocabulary fits), `u16`, `u32`.
    pub token_dtype: TokenDtype,
    /// Which documents are kept.
    pub filter: FilterParams,
    /// Shuffle documents (seeded by the pipeline seed) before the split.
    pub shuffle: bool,
    /// The train/validation split.
    pub split: SplitParams,
    /// How needle haystacks are built from this data (the eval stage picks task, lengths, depths).
    pub haystack: HaystackParams,
}

impl Default for DataPrepParams {
    fn default() -> Self {
        DataPrepParams {
            source: SourceParams::Synthetic(SyntheticParams::default()),
            tokenizer: TokenizerParams::TrainBpe(BpeParams::default()),
            add_bos: None,
            add_eos: None,
            bos_token: None,
            eos_token: None,
            token_dtype: TokenDtype::Auto,
            filter: FilterParams::default(),
            shuffle: true,
            split: SplitParams::default(),
            haystack: HaystackParams::default(),
        }
    }
}

/// One source of documents.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum SourceParams {
    /// The built-in generator of documents with long-range structure.
    Synthetic(SyntheticParams),
    /// Plain text files.
    Text(TextSource),
    /// JSON lines (plain, `.gz` or `.zst`).
    Jsonl(JsonlSource),
    /// Parquet with a text column or a tokenized `input_ids`-style list column.
    Parquet(ParquetSource),
}

impl SourceParams {
    /// The source's name as written in TOML.
    pub fn kind(&self) -> &'static str {
        match self {
            SourceParams::Synthetic(_) => "synthetic",
            SourceParams::Text(_) => "text",
            SourceParams::Jsonl(_) => "jsonl",
            SourceParams::Parquet(_) => "parquet",
        }
    }
}

/// Plain text: one document per file, or split on a separator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TextSource {
    /// A file, a directory (all files below it, hidden ones skipped) or a glob; relative to the
    /// pipeline file; a leading `~/` is the home directory.
    pub path: String,
    /// Split each file into documents on this string (e.g. "\n\n"); empty pieces are dropped.
    #[serde(default)]
    pub separator: Option<String>,
    /// A file that is not valid UTF-8: `error` (stop, naming the file and the byte offset),
    /// `replace` (invalid bytes become U+FFFD) or `skip` (leave the file out). Replaced and
    /// skipped files are counted in `data_stats`.
    // Left out of the key at its default, so that existing data stages keep their keys.
    #[serde(default, skip_serializing_if = "InvalidUtf8::is_error")]
    pub invalid_utf8: InvalidUtf8,
}

/// What a text source does with a file that is not valid UTF-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum InvalidUtf8 {
    /// Stop with an error naming the file and the offset of the first invalid byte.
    #[default]
    Error,
    /// Replace each invalid sequence with U+FFFD and keep the file.
    Replace,
    /// Leave the file out.
    Skip,
}

impl InvalidUtf8 {
    fn is_error(&self) -> bool {
        *self == InvalidUtf8::Error
    }
}

/// JSON lines, one document per line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JsonlSource {
    /// A file, a directory (`*.jsonl`, `*.jsonl.gz`, `*.jsonl.zst`, `*.json`) or a glob.
    pub path: String,
    /// The string field holding the text.
    #[serde(default = "default_text_field")]
    pub field: String,
}

/// Parquet files, one document per row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ParquetSource {
    /// A file, a directory (`*.parquet`) or a glob.
    pub path: String,
    /// A string column (text) or a list-of-integers column (already tokenized, e.g.
    /// `input_ids`; then the tokenizer must be the one that made the ids).
    #[serde(default = "default_text_field")]
    pub column: String,
}

fn default_text_field() -> String {
    "text".to_string()
}

/// Where the tokenizer comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum TokenizerParams {
    /// Train a byte-level BPE tokenizer on the training split.
    TrainBpe(BpeParams),
    /// A Hugging Face tokenizer.json, relative to the pipeline file.
    Path(String),
    /// The tokenizer.json inside the output of the upstream stage of this need name.
    From(String),
}

/// Byte-level BPE training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct BpeParams {
    /// Vocabulary size including the special tokens and the 256 byte symbols.
    pub vocab_size: usize,
    /// A pair must occur at least this often to be merged.
    pub min_frequency: u64,
    /// Special tokens, ids 0.. in this order (the BOS/EOS tokens are added if missing).
    pub special_tokens: Vec<String>,
}

impl Default for BpeParams {
    fn default() -> Self {
        BpeParams {
            vocab_size: 2048,
            min_frequency: 2,
            special_tokens: vec!["<s>".into(), "</s>".into(), "<pad>".into()],
        }
    }
}

/// Element type of the token shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum TokenDtype {
    /// u16 when every id is below 65536, else u32.
    #[default]
    Auto,
    U16,
    U32,
}

/// Which documents are kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields, default)]
pub struct FilterParams {
    /// Drop documents with fewer tokens (BOS/EOS not counted).
    pub min_tokens: usize,
    /// Drop documents with more tokens (BOS/EOS not counted).
    pub max_tokens: Option<usize>,
    /// Read at most this many documents (after the shuffle, before tokenization).
    pub max_documents: Option<usize>,
}

/// The train/validation split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SplitParams {
    /// Fraction of the documents read that go to validation; 1 puts every document there (an
    /// evaluation-only corpus: a train stage on it is an error, and the tokenizer must be given).
    pub valid_fraction: f64,
    /// A number of validation documents instead of a fraction.
    pub valid_documents: Option<usize>,
    /// Validation documents are drawn only among documents at least this long (as `--min-tokens`
    /// of the YaRN eval: set it to the longest eval length). With a tokenizer trained here the
    /// length used is the number of whitespace-separated words, a lower bound of the tokens.
    pub valid_min_tokens: usize,
}

impl Default for SplitParams {
    fn default() -> Self {
        SplitParams {
            valid_fraction: 0.05,
            valid_documents: None,
            valid_min_tokens: 0,
        }
    }
}

/// A tokenizer to train on a training split that every document left for validation.
pub(crate) fn bpe_without_training_split() -> DataError {
    DataError::param(
        "tokenizer.train_bpe",
        "trains on the training split, which is empty (every document went to validation): for an evaluation-only corpus give the model's tokenizer, `tokenizer = { path = .. }` or `{ from = .. }`",
    )
}

impl DataPrepParams {
    /// Checks the values that serde cannot (ranges, combinations).
    pub fn validate(&self) -> Result<(), DataError> {
        let f = self.split.valid_fraction;
        if !(0.0..=1.0).contains(&f) {
            return Err(DataError::param(
                "split.valid_fraction",
                format!("{f} is not in [0, 1]"),
            ));
        }
        if let Some(max) = self.filter.max_tokens
            && max < self.filter.min_tokens
        {
            return Err(DataError::param(
                "filter.max_tokens",
                format!(
                    "{max} is below filter.min_tokens = {}",
                    self.filter.min_tokens
                ),
            ));
        }
        if self.filter.max_documents == Some(0) {
            return Err(DataError::param(
                "filter.max_documents",
                "must be at least 1",
            ));
        }
        if let SourceParams::Text(t) = &self.source
            && t.separator.as_deref() == Some("")
        {
            return Err(DataError::param(
                "source.text.separator",
                "is empty: give the string that separates documents (e.g. \"\\n\\n\"), or leave it out for one document per file",
            ));
        }
        for (key, token) in [
            ("bos_token", &self.bos_token),
            ("eos_token", &self.eos_token),
        ] {
            if token.as_deref().is_some_and(|t| t.trim().is_empty()) {
                return Err(DataError::param(key, "is empty"));
            }
        }
        if let TokenizerParams::TrainBpe(bpe) = &self.tokenizer {
            if f >= 1.0 && self.split.valid_documents.is_none() {
                return Err(bpe_without_training_split());
            }
            if bpe.vocab_size < 300 {
                return Err(DataError::param(
                    "tokenizer.train_bpe.vocab_size",
                    format!(
                        "{} is too small: byte-level BPE needs the 256 byte symbols plus merges",
                        bpe.vocab_size
                    ),
                ));
            }
            if self.token_dtype == TokenDtype::U16 && bpe.vocab_size > 65536 {
                return Err(DataError::VocabTooLarge {
                    vocab_size: bpe.vocab_size,
                    dtype: "u16",
                    limit: 65536,
                });
            }
        }
        if let SourceParams::Synthetic(s) = &self.source {
            s.validate()?;
        }
        self.haystack.validate()?;
        Ok(())
    }
}
