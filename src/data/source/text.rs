//! Plain text files: one document per file, or pieces split on a separator.

use std::path::Path;

use super::{Document, SourceFiles};
use crate::data::error::DataError;
use crate::data::params::InvalidUtf8;

pub(super) fn read(
    path: &Path,
    separator: Option<&str>,
    invalid_utf8: InvalidUtf8,
    docs: &mut Vec<Document>,
    files: &mut SourceFiles,
) -> Result<(), DataError> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    let text = match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => match invalid_utf8 {
            InvalidUtf8::Error => {
                return Err(DataError::Format {
                    path: path.to_path_buf(),
                    message: format!(
                        "not UTF-8 text (invalid byte at offset {}); set `invalid_utf8 = \"replace\"` or `\"skip\"` in the text source to go on",
                        e.utf8_error().valid_up_to()
                    ),
                });
            }
            InvalidUtf8::Replace => {
                files.replaced += 1;
                String::from_utf8_lossy(e.as_bytes()).into_owned()
            }
            InvalidUtf8::Skip => {
                files.skipped += 1;
                return Ok(());
            }
        },
    };
    match separator {
        Some(sep) if !sep.is_empty() => {
            for piece in text.split(sep) {
                if !piece.trim().is_empty() {
                    docs.push(Document::text(piece.to_string()));
                }
            }
        }
        _ => {
            if !text.trim().is_empty() {
                docs.push(Document::text(text));
            }
        }
    }
    Ok(())
}
