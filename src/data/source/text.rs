//! Plain text files: one document per file, or pieces split on a separator.

use std::path::Path;

use super::Document;
use crate::data::error::DataError;

pub(super) fn read(
    path: &Path,
    separator: Option<&str>,
    docs: &mut Vec<Document>,
) -> Result<(), DataError> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    let text = String::from_utf8(bytes).map_err(|e| DataError::Format {
        path: path.to_path_buf(),
        message: format!(
            "not UTF-8 text (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        ),
    })?;
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
