//! Token shards: per split, one contiguous little-endian u16/u32 token array
//! (`<split>.tokens`), a document offset index (`<split>.offsets`: u64, documents + 1 entries,
//! document i is tokens[offsets[i]..offsets[i+1]]) and, for the synthetic corpus, one mark byte
//! per token (`<split>.marks`, see `synthetic::marks`). Consumers memory-map them.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;
use serde::{Deserialize, Serialize};

use super::error::DataError;

/// Element type of a token array on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dtype {
    U16,
    U32,
}

impl Dtype {
    /// Bytes per token.
    pub fn size(self) -> usize {
        match self {
            Dtype::U16 => 2,
            Dtype::U32 => 4,
        }
    }

    /// Ids must be below this.
    pub fn limit(self) -> u64 {
        match self {
            Dtype::U16 => 1 << 16,
            Dtype::U32 => 1 << 32,
        }
    }

    /// "u16" or "u32".
    pub fn name(self) -> &'static str {
        match self {
            Dtype::U16 => "u16",
            Dtype::U32 => "u32",
        }
    }
}

/// Writes one split's files under temporary names, renamed into place by `finish`.
pub(crate) struct SplitWriter {
    paths: [(PathBuf, PathBuf); 3],
    dtype: Dtype,
    tokens: BufWriter<File>,
    marks: Option<BufWriter<File>>,
    offsets: Vec<u64>,
}

fn tmp(p: &Path) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}

fn create(p: &Path) -> Result<BufWriter<File>, DataError> {
    Ok(BufWriter::with_capacity(
        1 << 20,
        File::create(p).map_err(|e| DataError::io(p, e))?,
    ))
}

impl SplitWriter {
    pub(crate) fn create(
        dir: &Path,
        split: &str,
        dtype: Dtype,
        with_marks: bool,
    ) -> Result<SplitWriter, DataError> {
        let final_paths = [
            dir.join(format!("{split}.tokens")),
            dir.join(format!("{split}.offsets")),
            dir.join(format!("{split}.marks")),
        ];
        let paths = final_paths.map(|p| (tmp(&p), p));
        let tokens = create(&paths[0].0)?;
        let marks = if with_marks {
            Some(create(&paths[2].0)?)
        } else {
            None
        };
        Ok(SplitWriter {
            paths,
            dtype,
            tokens,
            marks,
            offsets: vec![0],
        })
    }

    /// Appends one document (ids already checked against the dtype).
    pub(crate) fn push(&mut self, ids: &[u32], marks: Option<&[u8]>) -> Result<(), DataError> {
        let path = &self.paths[0].0;
        match self.dtype {
            Dtype::U16 => {
                let buf: Vec<u8> = ids.iter().flat_map(|&t| (t as u16).to_le_bytes()).collect();
                self.tokens.write_all(&buf)
            }
            Dtype::U32 => {
                let buf: Vec<u8> = ids.iter().flat_map(|&t| t.to_le_bytes()).collect();
                self.tokens.write_all(&buf)
            }
        }
        .map_err(|e| DataError::io(path, e))?;
        if let Some(w) = &mut self.marks {
            let zeros;
            let m = match marks {
                Some(m) => m,
                None => {
                    zeros = vec![0u8; ids.len()];
                    &zeros
                }
            };
            w.write_all(m)
                .map_err(|e| DataError::io(&self.paths[2].0, e))?;
        }
        let last = *self.offsets.last().unwrap_or(&0);
        self.offsets.push(last + ids.len() as u64);
        Ok(())
    }

    /// Flushes, writes the offsets and renames every file into place.
    pub(crate) fn finish(mut self) -> Result<(), DataError> {
        self.tokens
            .flush()
            .map_err(|e| DataError::io(&self.paths[0].0, e))?;
        if let Some(w) = &mut self.marks {
            w.flush().map_err(|e| DataError::io(&self.paths[2].0, e))?;
        }
        let buf: Vec<u8> = self.offsets.iter().flat_map(|o| o.to_le_bytes()).collect();
        std::fs::write(&self.paths[1].0, buf).map_err(|e| DataError::io(&self.paths[1].0, e))?;
        let with_marks = self.marks.is_some();
        drop(self.tokens);
        drop(self.marks);
        for (i, (t, p)) in self.paths.iter().enumerate() {
            if i == 2 && !with_marks {
                continue;
            }
            std::fs::rename(t, p).map_err(|e| DataError::io(p, e))?;
        }
        Ok(())
    }
}

/// A read-only file mapped in memory (an empty file maps to nothing).
#[derive(Debug)]
enum Mapped {
    Map(Mmap),
    Empty,
}

impl Mapped {
    fn open(path: &Path) -> Result<Mapped, DataError> {
        let file = File::open(path).map_err(|e| DataError::io(path, e))?;
        let len = file.metadata().map_err(|e| DataError::io(path, e))?.len();
        if len == 0 {
            return Ok(Mapped::Empty);
        }
        // SAFETY: the prepared-data directory is immutable once written (cache entries are
        // renamed into place complete and never modified).
        let map = unsafe { Mmap::map(&file) }.map_err(|e| DataError::io(path, e))?;
        Ok(Mapped::Map(map))
    }

    fn bytes(&self) -> &[u8] {
        match self {
            Mapped::Map(m) => m,
            Mapped::Empty => &[],
        }
    }
}

/// One memory-mapped split: tokens, document offsets and (synthetic corpus) marks.
/// Cheap to clone (shared maps).
#[derive(Debug, Clone)]
pub struct TokenSplit {
    name: String,
    dtype: Dtype,
    tokens: Arc<Mapped>,
    offsets: Arc<Vec<u64>>,
    marks: Option<Arc<Mapped>>,
}

impl TokenSplit {
    /// Opens `<dir>/<split>.{tokens,offsets,marks}` and checks that they agree.
    pub fn open(dir: &Path, split: &str, dtype: Dtype) -> Result<TokenSplit, DataError> {
        let tp = dir.join(format!("{split}.tokens"));
        let op = dir.join(format!("{split}.offsets"));
        let mp = dir.join(format!("{split}.marks"));
        let tokens = Mapped::open(&tp)?;
        let ob = std::fs::read(&op).map_err(|e| DataError::io(&op, e))?;
        let bad = |path: &Path, message: String| DataError::Format {
            path: path.to_path_buf(),
            message,
        };
        if ob.len() % 8 != 0 || ob.is_empty() {
            return Err(bad(
                &op,
                format!("{} bytes is not a non-empty list of u64", ob.len()),
            ));
        }
        let offsets: Vec<u64> = ob
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
            .collect();
        let n = tokens.bytes().len();
        if n % dtype.size() != 0 {
            return Err(bad(
                &tp,
                format!("{n} bytes is not a whole number of {} tokens", dtype.name()),
            ));
        }
        let n = (n / dtype.size()) as u64;
        if offsets[0] != 0 || offsets.windows(2).any(|w| w[0] > w[1]) || offsets.last() != Some(&n)
        {
            return Err(bad(
                &op,
                format!("offsets do not index the {n} tokens of {}", tp.display()),
            ));
        }
        let marks = if mp.is_file() {
            let m = Mapped::open(&mp)?;
            if m.bytes().len() as u64 != n {
                return Err(bad(
                    &mp,
                    format!("{} marks for {n} tokens", m.bytes().len()),
                ));
            }
            Some(Arc::new(m))
        } else {
            None
        };
        Ok(TokenSplit {
            name: split.to_string(),
            dtype,
            tokens: Arc::new(tokens),
            offsets: Arc::new(offsets),
            marks,
        })
    }

    /// "train" or "valid".
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.tokens.bytes().len() / self.dtype.size()
    }

    /// No tokens at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of documents.
    pub fn num_docs(&self) -> usize {
        self.offsets.len() - 1
    }

    /// Token range of document `i` (BOS/EOS included when they were added).
    pub fn doc_range(&self, i: usize) -> Range<usize> {
        self.offsets[i] as usize..self.offsets[i + 1] as usize
    }

    /// The document offset index (documents + 1 entries).
    pub fn offsets(&self) -> &[u64] {
        &self.offsets
    }

    /// Token at position `i`.
    pub fn token(&self, i: usize) -> u32 {
        let b = self.tokens.bytes();
        match self.dtype {
            Dtype::U16 => u16::from_le_bytes([b[2 * i], b[2 * i + 1]]) as u32,
            Dtype::U32 => u32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]]),
        }
    }

    /// Appends the tokens of `range` to `out`.
    pub fn extend_tokens(&self, range: Range<usize>, out: &mut Vec<u32>) {
        let b = self.tokens.bytes();
        match self.dtype {
            Dtype::U16 => out.extend(
                b[2 * range.start..2 * range.end]
                    .chunks_exact(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]) as u32),
            ),
            Dtype::U32 => out.extend(
                b[4 * range.start..4 * range.end]
                    .chunks_exact(4)
                    .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            ),
        }
    }

    /// The tokens of `range`.
    pub fn tokens(&self, range: Range<usize>) -> Vec<u32> {
        let mut v = Vec::with_capacity(range.len());
        self.extend_tokens(range, &mut v);
        v
    }

    /// Whether per-token marks exist (synthetic corpus).
    pub fn has_marks(&self) -> bool {
        self.marks.is_some()
    }

    /// Marks of `range` (see `synthetic::marks`), or None when the corpus has none.
    pub fn marks(&self, range: Range<usize>) -> Option<&[u8]> {
        self.marks.as_ref().map(|m| &m.bytes()[range])
    }
}
