//! The `data_stats` table: per split, documents, tokens, bytes, tokens per byte, document length
//! quantiles and vocabulary size, plus the source files skipped or repaired (the same on every
//! row: they belong to no split); written as metrics/data_stats.parquet (zstd, atomically).

use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, RecordBatch, StringArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema};
use serde::{Deserialize, Serialize};

use super::error::DataError;

/// Statistics of one split. Token counts include the BOS/EOS tokens stored in the shards;
/// `tokens_per_byte` counts only the documents' own tokens (a property of the tokenizer).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitStats {
    pub split: String,
    pub documents: u64,
    pub tokens: u64,
    pub bytes: u64,
    pub tokens_per_byte: f64,
    pub min_doc_tokens: u64,
    pub median_doc_tokens: u64,
    pub max_doc_tokens: u64,
    pub vocab_size: u64,
}

/// Source files left out or changed while reading (text sources with `invalid_utf8`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceFiles {
    /// Files left out because they are not valid UTF-8 (`invalid_utf8 = "skip"`).
    pub skipped: u64,
    /// Files whose invalid UTF-8 was replaced with U+FFFD (`invalid_utf8 = "replace"`).
    pub replaced: u64,
}

/// What `prepare` returns: one row per split, and the source files skipped or repaired.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataStats {
    pub splits: Vec<SplitStats>,
    pub source_files: SourceFiles,
}

impl SplitStats {
    /// From per-document stored lengths, content token total and UTF-8 bytes.
    pub(crate) fn compute(
        split: &str,
        doc_tokens: &[u64],
        content_tokens: u64,
        bytes: u64,
        vocab_size: usize,
    ) -> SplitStats {
        let mut sorted = doc_tokens.to_vec();
        sorted.sort_unstable();
        let n = sorted.len();
        SplitStats {
            split: split.to_string(),
            documents: n as u64,
            tokens: sorted.iter().sum(),
            bytes,
            tokens_per_byte: if bytes == 0 {
                0.0
            } else {
                content_tokens as f64 / bytes as f64
            },
            min_doc_tokens: sorted.first().copied().unwrap_or(0),
            median_doc_tokens: if n == 0 { 0 } else { sorted[(n - 1) / 2] },
            max_doc_tokens: sorted.last().copied().unwrap_or(0),
            vocab_size: vocab_size as u64,
        }
    }
}

/// The Arrow schema of `data_stats`.
pub fn data_stats_schema() -> Schema {
    let u = |n: &str| Field::new(n, DataType::UInt64, false);
    Schema::new(vec![
        Field::new("split", DataType::Utf8, false),
        u("documents"),
        u("tokens"),
        u("bytes"),
        Field::new("tokens_per_byte", DataType::Float64, false),
        u("min_doc_tokens"),
        u("median_doc_tokens"),
        u("max_doc_tokens"),
        u("vocab_size"),
        u("skipped_files"),
        u("replaced_files"),
    ])
}

/// Writes `path` as every results file is written (`crate::results`: a temporary renamed into
/// place, the umask's mode).
pub fn write_data_stats(path: &Path, stats: &DataStats) -> Result<(), DataError> {
    let werr = |e: &dyn std::fmt::Display| DataError::Parquet {
        path: path.to_path_buf(),
        message: format!("writing: {e}"),
    };
    let s = &stats.splits;
    let col = |f: fn(&SplitStats) -> u64| {
        Arc::new(UInt64Array::from_iter_values(s.iter().map(f))) as ArrayRef
    };
    let schema = Arc::new(data_stats_schema());
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from_iter_values(
                s.iter().map(|x| x.split.as_str()),
            )),
            col(|x| x.documents),
            col(|x| x.tokens),
            col(|x| x.bytes),
            Arc::new(Float64Array::from_iter_values(
                s.iter().map(|x| x.tokens_per_byte),
            )),
            col(|x| x.min_doc_tokens),
            col(|x| x.median_doc_tokens),
            col(|x| x.max_doc_tokens),
            col(|x| x.vocab_size),
            Arc::new(UInt64Array::from_iter_values(
                s.iter().map(|_| stats.source_files.skipped),
            )),
            Arc::new(UInt64Array::from_iter_values(
                s.iter().map(|_| stats.source_files.replaced),
            )),
        ],
    )
    .map_err(|e| werr(&e))?;
    crate::results::write_parquet(path, schema, &[batch])
        .map_err(|e| DataError::Write(e.to_string()))
}
