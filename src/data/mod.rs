//! Data preparation: corpora (text, JSONL, Parquet, the built-in synthetic corpus), tokenizers,
//! memory-mapped token shards, training/eval windows, needle haystacks and the data_stats table.
//!
//! The `data_prep` stage calls [`prepare`]; train and eval stages open its output with
//! [`PreparedData::open`]. See docs/data.md for the parameters and the output layout.

pub mod bench;
mod error;
pub mod haystack;
mod params;
mod prepare;
mod reader;
mod sampler;
mod shards;
pub mod source;
mod stats;
pub mod synthetic;
pub mod tokenizer;

pub use error::DataError;
pub use haystack::{
    Filler, FillerKind, Haystack, HaystackBuilder, HaystackParams, HaystackStyle, KeyKind,
    NeedleTask, NeedleTemplate,
};
pub use params::{
    BpeParams, DataPrepParams, FilterParams, JsonlSource, ParquetSource, SourceParams, SplitParams,
    TextSource, TokenDtype, TokenizerParams,
};
pub use prepare::{FORMAT_VERSION, Manifest, PrepareContext, external_files, prepare};
pub use reader::PreparedData;
pub(crate) use sampler::seeded_below;
pub use sampler::sequential_start;
pub use sampler::{EvalWindow, SampleMode, SamplerState, WindowSampler};
pub use shards::{Dtype, TokenSplit};
pub use stats::{DataStats, SourceFiles, SplitStats, data_stats_schema, write_data_stats};
pub use synthetic::{SyntheticCorpus, SyntheticParams, marks};
pub use tokenizer::SpecialTokens;
