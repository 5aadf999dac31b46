//! Parquet: one document per row, from a string column (text) or a list-of-integers column
//! (already tokenized ids, as in Hugging Face datasets such as proofpile-test-tokenized).

use std::fs::File;
use std::path::Path;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, UInt32Type};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::{Content, Document};
use crate::data::error::DataError;

pub(super) fn read(path: &Path, column: &str, docs: &mut Vec<Document>) -> Result<(), DataError> {
    let perr = |message: String| DataError::Parquet {
        path: path.to_path_buf(),
        message,
    };
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    let builder =
        ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| perr(e.to_string()))?;
    let schema = builder.schema().clone();
    let Some(index) = schema.fields().iter().position(|f| f.name() == column) else {
        return Err(DataError::MissingColumn {
            path: path.to_path_buf(),
            column: column.to_string(),
            available: schema
                .fields()
                .iter()
                .map(|f| f.name().as_str())
                .collect::<Vec<_>>()
                .join(", "),
        });
    };
    let dtype = schema.field(index).data_type().clone();
    let mask = ProjectionMask::roots(builder.parquet_schema(), [index]);
    let reader = builder
        .with_projection(mask)
        .with_batch_size(1024)
        .build()
        .map_err(|e| perr(e.to_string()))?;
    for batch in reader {
        let batch = batch.map_err(|e| perr(e.to_string()))?;
        let col = batch.column(0);
        match &dtype {
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
                let col =
                    arrow::compute::cast(col, &DataType::Utf8).map_err(|e| perr(e.to_string()))?;
                for s in col.as_string::<i32>().iter().flatten() {
                    if !s.trim().is_empty() {
                        docs.push(Document::text(s.to_string()));
                    }
                }
            }
            DataType::List(f) | DataType::LargeList(f) if f.data_type().is_integer() => {
                let col = arrow::compute::cast(col, &DataType::LargeList(f.clone()))
                    .map_err(|e| perr(e.to_string()))?;
                let list = col.as_list::<i64>();
                for row in 0..list.len() {
                    if list.is_null(row) {
                        continue;
                    }
                    let values = list.value(row);
                    let ids = arrow::compute::cast(&values, &DataType::UInt32)
                        .map_err(|e| perr(e.to_string()))?;
                    if ids.null_count() > values.null_count() || values.null_count() > 0 {
                        return Err(perr(format!(
                            "column `{column}` row {row}: token ids must be non-negative integers below 2^32"
                        )));
                    }
                    let ids: Vec<u32> = ids.as_primitive::<UInt32Type>().values().to_vec();
                    if !ids.is_empty() {
                        docs.push(Document {
                            content: Content::Tokens(ids),
                            marks: vec![],
                        });
                    }
                }
            }
            other => {
                return Err(perr(format!(
                    "column `{column}` has type {other}; expected a string column or a list of integer token ids"
                )));
            }
        }
    }
    Ok(())
}
