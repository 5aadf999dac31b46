//! The data_prep stage's work, without the runner glue: read, shuffle, split, tokenize (in
//! parallel), write token shards, the tokenizer, data.json and the data_stats table.

use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use super::error::DataError;
use super::haystack::{FillerKind, HaystackStyle};
use super::params::{DataPrepParams, SourceParams, SplitParams, TokenDtype, TokenizerParams};
use super::shards::{Dtype, SplitWriter};
use super::source::{Content, Document, read_documents, resolve_inputs};
use super::stats::{DataStats, SourceFiles, SplitStats, write_data_stats};
use super::synthetic::SyntheticParams;
use super::tokenizer::{
    SpecialTokens, encode_marked, encode_text, find_tokenizer_json, load_tokenizer,
    resolve_special_tokens, train_bpe,
};
use crate::progress::Progress;

/// Version of the output format; bump when the files written change.
pub const FORMAT_VERSION: u32 = 1;

const SHUFFLE_SALT: u64 = 0x5348_5546_464c_4531;

/// What `prepare` needs from the runner.
pub struct PrepareContext<'a> {
    /// Directory receiving every output (created if missing).
    pub out_dir: PathBuf,
    /// Relative input paths are resolved against this (the pipeline file's directory).
    pub base_dir: PathBuf,
    /// The pipeline seed: synthetic generation and shuffling.
    pub seed: u64,
    /// The upstream output directory for `tokenizer = { from = ".." }`.
    pub tokenizer_dir: Option<PathBuf>,
    pub progress: &'a dyn Progress,
}

/// data.json: how the data was made and how to read it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    /// "synthetic", "text", "jsonl" or "parquet".
    pub source: String,
    pub token_dtype: Dtype,
    /// Tokenizer vocabulary size, added tokens included.
    pub vocab_size: usize,
    pub special: SpecialTokens,
    /// Whether `<split>.marks` files exist.
    pub has_marks: bool,
    /// Generator parameters when the source or the haystack filler is synthetic.
    pub synthetic: Option<SyntheticParams>,
    pub haystack: HaystackStyle,
    pub splits: Vec<SplitStats>,
    /// Source files skipped or repaired (absent in data.json written before it existed).
    #[serde(default)]
    pub source_files: SourceFiles,
}

/// The input files `prepare` will read (for the runner's content hash). Paths that do not
/// resolve are returned as written (joined to `base_dir`), so hashing them reports the problem.
pub fn external_files(params: &DataPrepParams, base_dir: &Path) -> Vec<PathBuf> {
    let resolve = |p: &str, exts: &[&str]| {
        resolve_inputs(p, base_dir, exts).unwrap_or_else(|_| vec![base_dir.join(p)])
    };
    let mut files = match &params.source {
        SourceParams::Synthetic(_) => vec![],
        SourceParams::Text(t) => resolve(&t.path, &[]),
        SourceParams::Jsonl(j) => resolve(&j.path, &[".jsonl", ".jsonl.gz", ".jsonl.zst", ".json"]),
        SourceParams::Parquet(p) => resolve(&p.path, &[".parquet"]),
    };
    if let TokenizerParams::Path(p) = &params.tokenizer {
        let p = base_dir.join(p);
        if let Some(cfg) = p.parent().map(|d| d.join("tokenizer_config.json"))
            && cfg.is_file()
        {
            files.push(cfg);
        }
        files.push(p);
    }
    files
}

fn assign_split(
    lengths: &[usize],
    split: &SplitParams,
    progress: &dyn Progress,
) -> Result<Vec<bool>, DataError> {
    let n = lengths.len();
    let want = split
        .valid_documents
        .unwrap_or_else(|| (split.valid_fraction * n as f64).round() as usize);
    let mut valid = vec![false; n];
    if want == 0 {
        return Ok(valid);
    }
    let eligible: Vec<usize> = (0..n)
        .filter(|&i| lengths[i] >= split.valid_min_tokens)
        .collect();
    if eligible.is_empty() {
        return Err(DataError::EmptyCorpus {
            reason: format!(
                "no document has at least split.valid_min_tokens = {} tokens for the validation split",
                split.valid_min_tokens
            ),
        });
    }
    if eligible.len() < want {
        progress.message(&format!(
            "only {} documents have at least {} tokens: validation gets {} instead of {want}",
            eligible.len(),
            split.valid_min_tokens,
            eligible.len()
        ));
    }
    for &i in eligible.iter().rev().take(want) {
        valid[i] = true;
    }
    Ok(valid)
}

struct Tokenized {
    ids: Vec<u32>,
    marks: Option<Vec<u8>>,
}

fn tokenize_all(
    tokenizer: &Tokenizer,
    docs: &[Document],
    progress: &dyn Progress,
) -> Result<Vec<Tokenized>, DataError> {
    progress.start("tokenize", docs.len() as u64);
    docs.par_iter()
        .map(|d| {
            let r = match &d.content {
                Content::Text(t) if !d.marks.is_empty() => encode_marked(tokenizer, t, &d.marks)
                    .map(|(ids, m)| Tokenized {
                        ids,
                        marks: Some(m),
                    }),
                Content::Text(t) => {
                    encode_text(tokenizer, t).map(|ids| Tokenized { ids, marks: None })
                }
                Content::Tokens(ids) => Ok(Tokenized {
                    ids: ids.clone(),
                    marks: None,
                }),
            };
            progress.advance(1);
            r
        })
        .collect()
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), DataError> {
    crate::results::write_atomic(path, bytes).map_err(|e| DataError::Write(e.to_string()))
}

/// Runs the whole preparation into `ctx.out_dir`; see docs/data.md for the files written.
pub fn prepare(params: &DataPrepParams, ctx: &PrepareContext) -> Result<DataStats, DataError> {
    params.validate()?;
    let progress = ctx.progress;
    let out = &ctx.out_dir;
    std::fs::create_dir_all(out).map_err(|e| DataError::io(out, e))?;

    let (mut docs, source_files) =
        read_documents(&params.source, &ctx.base_dir, ctx.seed, progress)?;
    if docs.is_empty() {
        return Err(DataError::EmptyCorpus {
            reason: format!("the {} source produced no documents", params.source.kind()),
        });
    }
    if params.shuffle {
        docs.shuffle(&mut ChaCha8Rng::seed_from_u64(ctx.seed ^ SHUFFLE_SALT));
    }
    if let Some(m) = params.filter.max_documents {
        docs.truncate(m);
    }
    let pretokenized = docs.iter().any(|d| matches!(d.content, Content::Tokens(_)));

    let (tokenizer, source_json, valid, tokenized) = match &params.tokenizer {
        TokenizerParams::TrainBpe(bpe) => {
            if pretokenized {
                return Err(DataError::param(
                    "tokenizer",
                    "the source is already tokenized: name the tokenizer that made the ids ({ path = .. } or { from = .. }) instead of train_bpe",
                ));
            }
            if params.token_dtype == TokenDtype::U16 && bpe.vocab_size > 1 << 16 {
                return Err(DataError::VocabTooLarge {
                    vocab_size: bpe.vocab_size,
                    dtype: "u16",
                    limit: 1 << 16,
                });
            }
            let words: Vec<usize> = docs.iter().map(Document::words).collect();
            let valid = assign_split(&words, &params.split, progress)?;
            let texts: Vec<&str> = docs
                .iter()
                .zip(&valid)
                .filter(|(_, v)| !**v)
                .filter_map(|(d, _)| match &d.content {
                    Content::Text(t) => Some(t.as_str()),
                    Content::Tokens(_) => None,
                })
                .collect();
            if texts.is_empty() {
                return Err(super::params::bpe_without_training_split());
            }
            progress.start("train tokenizer", 1);
            let bos = params.bos_token.as_deref().unwrap_or("<s>");
            let add_bos = params.add_bos.unwrap_or(true);
            let tok = train_bpe(
                &texts,
                bpe,
                bos,
                params.eos_token.as_deref().unwrap_or("</s>"),
                add_bos,
            )?;
            progress.advance(1);
            let tokenized = tokenize_all(&tok, &docs, progress)?;
            (tok, None, valid, tokenized)
        }
        TokenizerParams::Path(p) | TokenizerParams::From(p) => {
            let path = match &params.tokenizer {
                TokenizerParams::Path(_) => ctx.base_dir.join(p),
                _ => {
                    let dir = ctx.tokenizer_dir.as_ref().ok_or_else(|| {
                        DataError::param(
                            "tokenizer.from",
                            format!("no output directory was given for the need `{p}`"),
                        )
                    })?;
                    find_tokenizer_json(dir)?
                }
            };
            let tok = load_tokenizer(&path)?;
            let tokenized = tokenize_all(&tok, &docs, progress)?;
            let lengths: Vec<usize> = tokenized.iter().map(|t| t.ids.len()).collect();
            let valid = assign_split(&lengths, &params.split, progress)?;
            (tok, Some(path), valid, tokenized)
        }
    };

    let special = match &source_json {
        None => resolve_special_tokens(
            &tokenizer,
            None,
            Some(params.bos_token.as_deref().unwrap_or("<s>")),
            Some(params.eos_token.as_deref().unwrap_or("</s>")),
            Some(params.add_bos.unwrap_or(true)),
            Some(params.add_eos.unwrap_or(true)),
        )?,
        Some(p) => resolve_special_tokens(
            &tokenizer,
            p.parent(),
            params.bos_token.as_deref(),
            params.eos_token.as_deref(),
            params.add_bos,
            params.add_eos,
        )?,
    };
    let vocab_size = tokenizer.get_vocab_size(true);
    let dtype = match params.token_dtype {
        TokenDtype::U32 => Dtype::U32,
        TokenDtype::U16 if vocab_size > 1 << 16 => {
            return Err(DataError::VocabTooLarge {
                vocab_size,
                dtype: "u16",
                limit: 1 << 16,
            });
        }
        TokenDtype::U16 => Dtype::U16,
        TokenDtype::Auto if vocab_size > 1 << 16 => Dtype::U32,
        TokenDtype::Auto => Dtype::U16,
    };
    for (i, t) in tokenized.iter().enumerate() {
        if let Some(&bad) = t.ids.iter().find(|&&id| id as usize >= vocab_size) {
            return Err(DataError::Format {
                path: source_json.clone().unwrap_or_default(),
                message: format!(
                    "document {i} has token id {bad}, but the tokenizer has {vocab_size} ids"
                ),
            });
        }
    }

    // Filters on the documents' own tokens.
    let keep: Vec<bool> = tokenized
        .iter()
        .map(|t| {
            t.ids.len() >= params.filter.min_tokens.max(1)
                && params.filter.max_tokens.is_none_or(|m| t.ids.len() <= m)
        })
        .collect();
    // An evaluation-only corpus (every document in validation) is fine here; a train stage
    // on it says so. Nothing at all left is an error.
    if !keep.contains(&true) {
        return Err(DataError::EmptyCorpus {
            reason: format!(
                "no documents left after the filters (filter.min_tokens = {}, filter.max_tokens = {:?})",
                params.filter.min_tokens, params.filter.max_tokens
            ),
        });
    }

    let has_marks = tokenized.iter().any(|t| t.marks.is_some());
    progress.start("write", docs.len() as u64);
    let mut splits = vec![];
    for (name, want_valid) in [("train", false), ("valid", true)] {
        let idx: Vec<usize> = (0..docs.len())
            .filter(|&i| keep[i] && valid[i] == want_valid)
            .collect();
        let bytes: u64 = idx
            .par_iter()
            .map(|&i| match &docs[i].content {
                Content::Text(t) => t.len() as u64,
                // A decoded prefix space (byte-level BPE) is not part of the text.
                Content::Tokens(ids) => tokenizer
                    .decode(ids, true)
                    .map(|s| s.strip_prefix(' ').unwrap_or(&s).len() as u64)
                    .unwrap_or(0),
            })
            .sum();
        let mut writer = SplitWriter::create(out, name, dtype, has_marks)?;
        let mut lens = Vec::with_capacity(idx.len());
        let mut content = 0u64;
        let mut ids = vec![];
        let mut marks = vec![];
        for &i in &idx {
            let t = &tokenized[i];
            ids.clear();
            marks.clear();
            let starts_with_bos =
                special.bos_id.is_some() && t.ids.first().copied() == special.bos_id;
            if special.add_bos && !starts_with_bos {
                ids.push(special.bos_id.unwrap_or_default());
                marks.push(0);
            }
            ids.extend_from_slice(&t.ids);
            match &t.marks {
                Some(m) => marks.extend_from_slice(m),
                None => marks.resize(ids.len(), 0),
            }
            if special.add_eos {
                ids.push(special.eos_id.unwrap_or_default());
                marks.push(0);
            }
            content += t.ids.len() as u64;
            lens.push(ids.len() as u64);
            writer.push(&ids, Some(&marks))?;
            progress.advance(1);
        }
        writer.finish()?;
        splits.push(SplitStats::compute(name, &lens, content, bytes, vocab_size));
    }

    // Tokenizer: the trained one, or a byte copy of the given one (and its config).
    let tok_out = out.join("tokenizer.json");
    match &source_json {
        None => {
            let s = tokenizer.to_string(false).map_err(DataError::tokenizer)?;
            write_atomic(&tok_out, s.as_bytes())?;
        }
        Some(p) => {
            let b = std::fs::read(p).map_err(|e| DataError::io(p, e))?;
            write_atomic(&tok_out, &b)?;
            if let Some(cfg) = p.parent().map(|d| d.join("tokenizer_config.json"))
                && let Ok(b) = std::fs::read(&cfg)
            {
                write_atomic(&out.join("tokenizer_config.json"), &b)?;
            }
        }
    }

    let synthetic_source = matches!(params.source, SourceParams::Synthetic(_));
    let haystack = params.haystack.resolve(synthetic_source);
    let synthetic = match &params.source {
        SourceParams::Synthetic(p) => Some(p.clone()),
        _ if haystack.filler == FillerKind::Synthetic => Some(SyntheticParams::default()),
        _ => None,
    };
    let stats = DataStats {
        splits,
        source_files,
    };
    write_data_stats(&out.join("metrics").join("data_stats.parquet"), &stats)?;
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        source: params.source.kind().to_string(),
        token_dtype: dtype,
        vocab_size,
        special,
        has_marks,
        synthetic,
        haystack,
        splits: stats.splits.clone(),
        source_files: stats.source_files,
    };
    let json = serde_json::to_vec_pretty(&manifest).map_err(|e| DataError::Format {
        path: out.join("data.json"),
        message: e.to_string(),
    })?;
    write_atomic(&out.join("data.json"), &json)?;
    Ok(stats)
}
