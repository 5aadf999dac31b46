//! The library's error type: one enum whose every message names the file, key or value at fault.
//!
//! Errors in a pipeline file carry a [`Location`] (file, line, column, dotted key) so that a user
//! can jump straight to the problem; everything else names the path or instance involved.

use std::fmt;
use std::path::PathBuf;

/// Where in a pipeline file (or in a `--set` argument) a problem was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The pipeline file, or `--set` for a command-line override.
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// The dotted key, e.g. `stages.extend.train.steps`.
    pub key: String,
    /// The source line, shown under the message with a caret.
    pub source_line: String,
}

/// An error in a pipeline's text or structure, found before anything runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    pub location: Location,
    pub message: String,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let l = &self.location;
        write!(f, "{}:{}:{}: ", l.file.display(), l.line, l.column)?;
        if !l.key.is_empty() {
            write!(f, "`{}`: ", l.key)?;
        }
        write!(f, "{}", self.message)?;
        if !l.source_line.is_empty() {
            let gutter = l.line.to_string();
            let pad = " ".repeat(gutter.len());
            write!(
                f,
                "\n{pad} |\n{gutter} | {}\n{pad} | {}^",
                l.source_line,
                " ".repeat(l.column.saturating_sub(1))
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for SpecError {}

/// Everything that can go wrong in the runner.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A pipeline file is malformed (syntax, unknown key, wrong type, bad need, cycle, ...).
    #[error("{0}")]
    Spec(#[from] Box<SpecError>),
    /// Several problems in one file, each with its location.
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n\n"))]
    Specs(Vec<SpecError>),
    /// A file or directory could not be read or written.
    #[error("{action} `{path}`: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// A command-line argument does not make sense for this pipeline.
    #[error("{0}")]
    Usage(String),
    /// A results table could not be gathered or written.
    #[error("results table `{table}`: {message}")]
    Results { table: String, message: String },
    /// One or more instances failed; the summary lists each with its error.
    #[error("{failed} of {total} instance(s) failed:\n{summary}")]
    RunFailed {
        failed: usize,
        total: usize,
        summary: String,
    },
}

impl Error {
    /// Wrap an I/O error with what was being done and to which path.
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            action,
            path: path.into(),
            source,
        }
    }
}

impl From<SpecError> for Error {
    fn from(e: SpecError) -> Self {
        Error::Spec(Box::new(e))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
