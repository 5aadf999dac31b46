//! Reading documents from a source: the corpus formats a researcher has (text, JSONL, Parquet)
//! and the built-in synthetic generator, all into one in-memory document list.

mod jsonl;
mod parquet;
mod text;

use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::error::DataError;
use super::params::SourceParams;
pub use super::stats::SourceFiles;
use super::synthetic::{MarkSpan, SyntheticCorpus};
use crate::progress::Progress;

/// A document as read: text, or token ids of an already tokenized corpus.
#[derive(Debug, Clone, PartialEq)]
pub enum Content {
    Text(String),
    Tokens(Vec<u32>),
}

/// One document with the byte ranges of its long-range recalls (synthetic corpus only).
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    pub content: Content,
    pub marks: Vec<MarkSpan>,
}

impl Document {
    pub(crate) fn text(text: String) -> Document {
        Document {
            content: Content::Text(text),
            marks: vec![],
        }
    }

    /// Whitespace-separated words (a lower bound of the tokens of a byte-level BPE), or the
    /// number of ids of a tokenized document.
    pub(crate) fn words(&self) -> usize {
        match &self.content {
            Content::Text(t) => t.split_whitespace().count(),
            Content::Tokens(ids) => ids.len(),
        }
    }
}

/// Reads every document of the source, in a deterministic order, with the files skipped or
/// repaired on the way.
pub fn read_documents(
    source: &SourceParams,
    base_dir: &Path,
    seed: u64,
    progress: &dyn Progress,
) -> Result<(Vec<Document>, SourceFiles), DataError> {
    let mut counts = SourceFiles::default();
    let docs = match source {
        SourceParams::Synthetic(p) => {
            let corpus = SyntheticCorpus::new(p)?;
            progress.start("generate", p.documents as u64);
            (0..p.documents as u64)
                .into_par_iter()
                .map(|i| {
                    let d = corpus.document(seed, i);
                    progress.advance(1);
                    Document {
                        content: Content::Text(d.text),
                        marks: d.marks,
                    }
                })
                .collect()
        }
        SourceParams::Text(t) => {
            let files = resolve_inputs(&t.path, base_dir, &[])?;
            progress.start("read", files.len() as u64);
            let mut docs = vec![];
            for f in files {
                text::read(
                    &f,
                    t.separator.as_deref(),
                    t.invalid_utf8,
                    &mut docs,
                    &mut counts,
                )?;
                progress.advance(1);
            }
            docs
        }
        SourceParams::Jsonl(j) => {
            let files = resolve_inputs(
                &j.path,
                base_dir,
                &[".jsonl", ".jsonl.gz", ".jsonl.zst", ".json"],
            )?;
            progress.start("read", files.len() as u64);
            let mut docs = vec![];
            for f in files {
                jsonl::read(&f, &j.field, &mut docs)?;
                progress.advance(1);
            }
            docs
        }
        SourceParams::Parquet(p) => {
            let files = resolve_inputs(&p.path, base_dir, &[".parquet"])?;
            progress.start("read", files.len() as u64);
            let mut docs = vec![];
            for f in files {
                parquet::read(&f, &p.column, &mut docs)?;
                progress.advance(1);
            }
            docs
        }
    };
    Ok((docs, counts))
}

/// The input files a source reads: a file, every file under a directory (with one of `exts`
/// when given; hidden entries skipped), or the matches of a glob; sorted.
pub fn resolve_inputs(
    pattern: &str,
    base_dir: &Path,
    exts: &[&str],
) -> Result<Vec<PathBuf>, DataError> {
    let path = base_dir.join(crate::paths::expand_home(Path::new(pattern)));
    if path.is_file() {
        return Ok(vec![path]);
    }
    if path.is_dir() {
        let mut out = vec![];
        walk(&path, exts, &mut out)?;
        out.sort();
        if out.is_empty() {
            return Err(DataError::EmptyCorpus {
                reason: format!("directory {} holds no input files", path.display()),
            });
        }
        return Ok(out);
    }
    if pattern.contains(['*', '?', '[']) {
        let full = path.to_string_lossy().to_string();
        let opts = glob::MatchOptions {
            require_literal_leading_dot: true,
            ..glob::MatchOptions::new()
        };
        let entries = glob::glob_with(&full, opts)
            .map_err(|e| DataError::param("source.path", format!("bad glob `{pattern}`: {e}")))?;
        let mut out: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .filter(|p| p.is_file())
            .collect();
        out.sort();
        if !out.is_empty() {
            return Ok(out);
        }
    }
    Err(DataError::NotFound { path })
}

fn walk(dir: &Path, exts: &[&str], out: &mut Vec<PathBuf>) -> Result<(), DataError> {
    let entries = std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| DataError::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().to_string();
        if name.starts_with('.') {
            continue;
        }
        let p = entry.path();
        if p.is_dir() {
            walk(&p, exts, out)?;
        } else if exts.is_empty() || exts.iter().any(|e| name.ends_with(e)) {
            out.push(p);
        }
    }
    Ok(())
}
