//! JSON lines, plain or compressed (`.gz`, `.zst`): one document per line, text in a named field.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use super::Document;
use crate::data::error::DataError;

pub(super) fn read(path: &Path, field: &str, docs: &mut Vec<Document>) -> Result<(), DataError> {
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    let name = path.to_string_lossy();
    let reader: Box<dyn Read> = if name.ends_with(".gz") {
        Box::new(flate2::read::MultiGzDecoder::new(file))
    } else if name.ends_with(".zst") {
        Box::new(zstd::stream::read::Decoder::new(file).map_err(|e| DataError::io(path, e))?)
    } else {
        Box::new(file)
    };
    let reader = BufReader::with_capacity(1 << 20, reader);
    for (i, line) in reader.lines().enumerate() {
        let line_no = i + 1;
        let line = line.map_err(|e| DataError::io(path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        let err = |message: String| DataError::Jsonl {
            path: path.to_path_buf(),
            line: line_no,
            message,
        };
        let value: serde_json::Value =
            serde_json::from_str(&line).map_err(|e| err(format!("invalid JSON: {e}")))?;
        match value.get(field) {
            Some(serde_json::Value::String(s)) => {
                if !s.trim().is_empty() {
                    docs.push(Document::text(s.clone()));
                }
            }
            Some(other) => {
                return Err(err(format!(
                    "field `{field}` is not a string but {}",
                    json_kind(other)
                )));
            }
            None => {
                let keys: Vec<&str> = value
                    .as_object()
                    .map(|o| o.keys().map(String::as_str).collect())
                    .unwrap_or_default();
                return Err(err(format!(
                    "no field `{field}` (fields: {})",
                    keys.join(", ")
                )));
            }
        }
    }
    Ok(())
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}
