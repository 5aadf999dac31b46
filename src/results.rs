//! Writing and reading the Parquet results, in one place: the per-instance tables a stage
//! writes, the gathering into `results/<pipeline>/`, `runs.parquet`, published folders, and the
//! atomic file write every cache and results file goes through.
//!
//! A stage writes `metrics/<table>.parquet` in its output directory ([`write_table`]). After a
//! run, every table any instance wrote is gathered into `results/<pipeline>/<table>.parquet`
//! with the columns `stage`, `instance`, the instance's matrix values flattened, then the table's
//! own columns; `runs.parquet` has one row per instance and `run.json` the provenance. Every file
//! is written to a temporary name and renamed ([`write_atomic`], [`write_parquet`]), so readers
//! never see half a file, and is created with the mode the umask allows (as `File::create`
//! would), not the temporary file's private 0600.
//!
//! A leaf: it depends on arrow, parquet, [`crate::error`] and [`crate::failpoint`] only, so the runner
//! (`crate::pipeline`), the stage kinds and the typed tables (`crate::tables`) all use it
//! without importing one another.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatchReader, StringArray,
    TimestampMicrosecondArray, new_null_array,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use crate::error::{Error, Result};

/// Where a stage's tables live inside its output directory.
pub const METRICS_DIR: &str = "metrics";

fn results_err(table: &str, message: impl Into<String>) -> Error {
    Error::Results {
        table: table.to_string(),
        message: message.into(),
    }
}

fn check_table_name(table: &str) -> Result<()> {
    let ok = !table.is_empty()
        && table
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(results_err(
            table,
            "a table name may use only letters, digits, `_` and `-`",
        ))
    }
}

/// Write `path` through a temporary file beside it and a rename: `fill` writes the content.
/// The temporary is created with mode 0666 less the umask (what `File::create` gives), so the
/// file is as readable as any other the user creates. A kill before the rename leaves only a
/// `.tmpXXXXXX` file, which the cache removes before it commits an entry.
pub fn write_via_temporary(
    path: &Path,
    fill: impl FnOnce(&mut std::fs::File) -> Result<()>,
) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    let dir = dir.unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::io("cannot create", dir, e))?;
    let mut tmp = tempfile::Builder::new()
        .permissions(std::fs::Permissions::from_mode(0o666))
        .tempfile_in(dir)
        .map_err(|e| Error::io("cannot write in", dir, e))?;
    fill(tmp.as_file_mut())?;
    crate::failpoint::hit("atomic-write");
    tmp.persist(path)
        .map_err(|e| Error::io("cannot write", path, e.error))?;
    Ok(())
}

/// Write `bytes` to `path` atomically (see [`write_via_temporary`]).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_via_temporary(path, |f| {
        f.write_all(bytes)
            .map_err(|e| Error::io("cannot write", path, e))
    })
}

/// Write batches (sharing `schema`) to `path` as zstd Parquet, atomically.
pub fn write_parquet(path: &Path, schema: SchemaRef, batches: &[RecordBatch]) -> Result<()> {
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .build();
    let table = path
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    write_via_temporary(path, |file| {
        let mut writer = ArrowWriter::try_new(file, schema, Some(props))
            .map_err(|e| results_err(&table, e.to_string()))?;
        for b in batches {
            writer
                .write(b)
                .map_err(|e| results_err(&table, e.to_string()))?;
        }
        writer
            .close()
            .map_err(|e| results_err(&table, e.to_string()))?;
        Ok(())
    })
}

/// Write `batch` as table `table` of the instance whose output directory is `out_dir`.
pub fn write_table(out_dir: &Path, table: &str, batch: &RecordBatch) -> Result<()> {
    check_table_name(table)?;
    let path = out_dir.join(METRICS_DIR).join(format!("{table}.parquet"));
    write_parquet(&path, batch.schema(), std::slice::from_ref(batch))
}

/// Read a whole Parquet file.
pub fn read_parquet(path: &Path) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    let table = path
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    let file = std::fs::File::open(path).map_err(|e| Error::io("cannot read", path, e))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .and_then(|b| b.build())
        .map_err(|e| results_err(&table, format!("{}: {e}", path.display())))?;
    let schema = reader.schema();
    let batches = reader
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| results_err(&table, format!("{}: {e}", path.display())))?;
    Ok((schema, batches))
}

/// What the gatherer needs to know of one instance.
#[derive(Debug, Clone)]
pub struct InstanceInfo {
    pub stage: String,
    pub instance: String,
    pub matrix: Vec<(String, serde_json::Value)>,
    /// Its finished output directory, when it has one.
    pub dir: Option<PathBuf>,
}

/// How an instance ended in a run: the `status` column of `runs.parquet` and `run.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    /// Its entry was in the cache.
    Cached,
    /// This run built it.
    Built,
    /// Its build failed.
    Failed,
    /// Not built because something it needs failed.
    Skipped,
    /// Not built: the run stopped first.
    NotRun,
}

impl RunStatus {
    /// The word written to the results.
    pub fn word(self) -> &'static str {
        match self {
            RunStatus::Cached => "cached",
            RunStatus::Built => "built",
            RunStatus::Failed => "failed",
            RunStatus::Skipped => "skipped",
            RunStatus::NotRun => "not-run",
        }
    }
}

/// One row of `runs.parquet`.
#[derive(Debug, Clone)]
pub struct RunRow {
    pub key: String,
    pub cached: bool,
    pub status: RunStatus,
    pub seconds: f64,
    pub started_at: Option<chrono::DateTime<chrono::Utc>>,
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
    pub error: Option<String>,
    /// The cache keys of the instances each need resolved to (`{"init": ["<key>"], ...}`):
    /// the lineage a report follows instead of matching names.
    pub needs: BTreeMap<String, Vec<String>>,
}

/// The Arrow type of a matrix column, inferred from its values: all integers `int64`, all
/// numbers `float64`, all booleans `bool`, otherwise `utf8`. `tables::results_batch` uses it
/// too, so tests that write results directly get the runner's types.
pub fn matrix_type(values: &[Option<&serde_json::Value>]) -> DataType {
    let present: Vec<&serde_json::Value> = values.iter().flatten().copied().collect();
    if present.is_empty() {
        DataType::Utf8
    } else if present.iter().all(|v| v.is_i64()) {
        DataType::Int64
    } else if present.iter().all(|v| v.is_number()) {
        DataType::Float64
    } else if present.iter().all(|v| v.is_boolean()) {
        DataType::Boolean
    } else {
        DataType::Utf8
    }
}

fn matrix_array(ty: &DataType, v: Option<&serde_json::Value>, n: usize) -> ArrayRef {
    match (ty, v) {
        (_, None) => new_null_array(ty, n),
        (DataType::Int64, Some(v)) => Arc::new(Int64Array::from(vec![v.as_i64(); n])),
        (DataType::Float64, Some(v)) => Arc::new(Float64Array::from(vec![v.as_f64(); n])),
        (DataType::Boolean, Some(v)) => Arc::new(BooleanArray::from(vec![v.as_bool(); n])),
        (_, Some(v)) => {
            let s = match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            Arc::new(StringArray::from(vec![s; n]))
        }
    }
}

/// Prefix each instance's batches with `stage`, `instance` and matrix columns, unify schemas.
fn assemble(
    table: &str,
    parts: &[(&InstanceInfo, SchemaRef, Vec<RecordBatch>)],
) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    // The table's own columns: union by name, first appearance order, types must agree.
    let mut own: Vec<Field> = Vec::new();
    for (info, schema, _) in parts {
        for f in schema.fields() {
            match own.iter().find(|o| o.name() == f.name()) {
                Some(o) if o.data_type() != f.data_type() => {
                    return Err(results_err(
                        table,
                        format!(
                            "column `{}` is {} in one instance and {} in `{}`",
                            f.name(),
                            o.data_type(),
                            f.data_type(),
                            info.instance
                        ),
                    ));
                }
                Some(_) => {}
                None => own.push(f.as_ref().clone().with_nullable(true)),
            }
        }
    }
    let own_names: BTreeSet<&str> = own.iter().map(|f| f.name().as_str()).collect();
    let mut matrix_names: Vec<String> = Vec::new();
    for (info, _, _) in parts {
        for (k, _) in &info.matrix {
            if !matrix_names.contains(k)
                && !own_names.contains(k.as_str())
                && k != "stage"
                && k != "instance"
            {
                matrix_names.push(k.clone());
            }
        }
    }
    let matrix_types: Vec<DataType> = matrix_names
        .iter()
        .map(|m| {
            let vals: Vec<Option<&serde_json::Value>> = parts
                .iter()
                .map(|(i, _, _)| i.matrix.iter().find(|(k, _)| k == m).map(|(_, v)| v))
                .collect();
            matrix_type(&vals)
        })
        .collect();
    let mut fields = vec![
        Field::new("stage", DataType::Utf8, false),
        Field::new("instance", DataType::Utf8, false),
    ];
    fields.extend(
        matrix_names
            .iter()
            .zip(&matrix_types)
            .map(|(n, t)| Field::new(n, t.clone(), true)),
    );
    fields.extend(own.iter().cloned());
    let schema = Arc::new(Schema::new(fields));
    let mut out = Vec::new();
    for (info, _, batches) in parts {
        for b in batches {
            let n = b.num_rows();
            let mut cols: Vec<ArrayRef> = vec![
                Arc::new(StringArray::from(vec![info.stage.as_str(); n])),
                Arc::new(StringArray::from(vec![info.instance.as_str(); n])),
            ];
            for (m, t) in matrix_names.iter().zip(&matrix_types) {
                let v = info.matrix.iter().find(|(k, _)| k == m).map(|(_, v)| v);
                cols.push(matrix_array(t, v, n));
            }
            for f in &own {
                cols.push(match b.column_by_name(f.name()) {
                    Some(c) => c.clone(),
                    None => new_null_array(f.data_type(), n),
                });
            }
            out.push(
                RecordBatch::try_new(schema.clone(), cols).map_err(|e| {
                    results_err(table, format!("instance `{}`: {e}", info.instance))
                })?,
            );
        }
    }
    Ok((schema, out))
}

/// Gather every table of `instances` into `dir/<table>.parquet`; returns the table names.
pub fn gather_tables(dir: &Path, instances: &[InstanceInfo]) -> Result<Vec<String>> {
    let mut by_table: BTreeMap<String, Vec<(&InstanceInfo, PathBuf)>> = BTreeMap::new();
    for info in instances {
        let Some(out) = &info.dir else { continue };
        let Ok(rd) = std::fs::read_dir(out.join(METRICS_DIR)) else {
            continue;
        };
        let mut files: Vec<PathBuf> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
            .collect();
        files.sort();
        for f in files {
            let table = f
                .file_stem()
                .map(|s| s.to_string_lossy().to_string())
                .unwrap_or_default();
            by_table.entry(table).or_default().push((info, f));
        }
    }
    for (table, files) in &by_table {
        if table == "runs" {
            return Err(results_err(
                table,
                "the name `runs` is reserved for the runner's own table",
            ));
        }
        let mut parts = Vec::new();
        for (info, f) in files {
            let (schema, batches) = read_parquet(f)?;
            parts.push((*info, schema, batches));
        }
        let (schema, batches) = assemble(table, &parts)?;
        write_parquet(&dir.join(format!("{table}.parquet")), schema, &batches)?;
        crate::failpoint::hit("results-publish");
    }
    Ok(by_table.into_keys().collect())
}

/// Where an instance's published folders go: straight into the results directory `dir` when
/// one instance publishes, into `dir/<instance>/` when several do (`pipe report` uses the same).
pub fn publish_target(dir: &Path, instance: &str, several: bool) -> PathBuf {
    if several {
        dir.join(instance)
    } else {
        dir.to_path_buf()
    }
}

/// Copy the files of the folders each instance's kind publishes (`StageKind::publishes`, e.g. a
/// report stage's `report/`) into `dir` (see [`publish_target`]). Each file is written
/// atomically; returns the files written.
pub fn publish(
    dir: &Path,
    instances: &[(&InstanceInfo, &'static [&'static str])],
) -> Result<Vec<PathBuf>> {
    let with_output: Vec<(&InstanceInfo, Vec<PathBuf>)> = instances
        .iter()
        .filter_map(|(info, folders)| {
            let out = info.dir.as_ref()?;
            let present: Vec<PathBuf> = folders
                .iter()
                .map(|f| out.join(f))
                .filter(|f| f.is_dir())
                .collect();
            (!present.is_empty()).then_some((*info, present))
        })
        .collect();
    let several = with_output.len() > 1;
    let mut written = Vec::new();
    for (info, folders) in with_output {
        let dst = publish_target(dir, &info.instance, several);
        for src in folders {
            let rd = std::fs::read_dir(&src).map_err(|e| Error::io("cannot read", &src, e))?;
            let mut files: Vec<PathBuf> = rd
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect();
            files.sort();
            for f in files {
                let bytes = std::fs::read(&f).map_err(|e| Error::io("cannot read", &f, e))?;
                let target = dst.join(f.file_name().unwrap_or_default());
                write_atomic(&target, &bytes)?;
                written.push(target);
            }
        }
    }
    Ok(written)
}

/// Write `runs.parquet`: one row per instance.
pub fn write_runs(dir: &Path, rows: &[(InstanceInfo, RunRow)]) -> Result<()> {
    let n = rows.len();
    let ts = |f: fn(&RunRow) -> Option<chrono::DateTime<chrono::Utc>>| -> ArrayRef {
        Arc::new(
            TimestampMicrosecondArray::from(
                rows.iter()
                    .map(|(_, r)| f(r).map(|t| t.timestamp_micros()))
                    .collect::<Vec<_>>(),
            )
            .with_timezone("UTC"),
        )
    };
    let own_schema = Schema::new(vec![
        Field::new("key", DataType::Utf8, false),
        Field::new("cached", DataType::Boolean, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("seconds", DataType::Float64, false),
        Field::new(
            "started_at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            true,
        ),
        Field::new(
            "finished_at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            true,
        ),
        Field::new("tool_version", DataType::Utf8, false),
        Field::new("error", DataType::Utf8, true),
        Field::new("needs", DataType::Utf8, false),
    ]);
    let version = env!("CARGO_PKG_VERSION");
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(
            rows.iter().map(|(_, r)| r.key.as_str()).collect::<Vec<_>>(),
        )),
        Arc::new(BooleanArray::from(
            rows.iter().map(|(_, r)| r.cached).collect::<Vec<_>>(),
        )),
        Arc::new(StringArray::from(
            rows.iter()
                .map(|(_, r)| r.status.word())
                .collect::<Vec<_>>(),
        )),
        Arc::new(Float64Array::from(
            rows.iter().map(|(_, r)| r.seconds).collect::<Vec<_>>(),
        )),
        ts(|r| r.started_at),
        ts(|r| r.finished_at),
        Arc::new(StringArray::from(vec![version; n])),
        Arc::new(StringArray::from(
            rows.iter()
                .map(|(_, r)| r.error.clone())
                .collect::<Vec<_>>(),
        )),
        Arc::new(StringArray::from(
            rows.iter()
                .map(|(_, r)| serde_json::to_string(&r.needs).expect("a map of strings"))
                .collect::<Vec<_>>(),
        )),
    ];
    let own_schema = Arc::new(own_schema);
    let batch = RecordBatch::try_new(own_schema.clone(), cols)
        .map_err(|e| results_err("runs", e.to_string()))?;
    // One part per instance so the matrix columns line up.
    let mut parts = Vec::new();
    for (i, (info, _)) in rows.iter().enumerate() {
        parts.push((info, own_schema.clone(), vec![batch.slice(i, 1)]));
    }
    let (schema, batches) = assemble("runs", &parts)?;
    let batches = if batches.is_empty() {
        vec![RecordBatch::new_empty(schema.clone())]
    } else {
        vec![
            arrow::compute::concat_batches(&schema, &batches)
                .map_err(|e| results_err("runs", e.to_string()))?,
        ]
    };
    write_parquet(&dir.join("runs.parquet"), schema, &batches)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn batch(col: &str, v: Vec<f64>) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new(col, DataType::Float64, false)]));
        RecordBatch::try_new(schema, vec![Arc::new(Float64Array::from(v))])
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn table_round_trip_with_prefix_columns() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        write_table(&a, "ppl", &batch("ppl", vec![1.5, 2.5])).unwrap_or_else(|e| panic!("{e}"));
        write_table(&b, "ppl", &batch("ppl", vec![3.5])).unwrap_or_else(|e| panic!("{e}"));
        let infos = vec![
            InstanceInfo {
                stage: "e".into(),
                instance: "e@f-2".into(),
                matrix: vec![("f".into(), json!(2))],
                dir: Some(a),
            },
            InstanceInfo {
                stage: "e".into(),
                instance: "e@f-4.5".into(),
                matrix: vec![("f".into(), json!(4.5))],
                dir: Some(b),
            },
        ];
        let out = dir.path().join("results");
        let tables = gather_tables(&out, &infos).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(tables, ["ppl"]);
        let (schema, batches) =
            read_parquet(&out.join("ppl.parquet")).unwrap_or_else(|e| panic!("{e}"));
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, ["stage", "instance", "f", "ppl"]);
        assert_eq!(schema.field(2).data_type(), &DataType::Float64);
        let all =
            arrow::compute::concat_batches(&schema, &batches).unwrap_or_else(|e| panic!("{e}"));
        let f = all
            .column(2)
            .as_any()
            .downcast_ref::<Float64Array>()
            .map(|a| a.values().to_vec());
        assert_eq!(f, Some(vec![2.0, 2.0, 4.5]));
        let inst = all
            .column(1)
            .as_any()
            .downcast_ref::<StringArray>()
            .map(|a| a.value(2).to_string());
        assert_eq!(inst.as_deref(), Some("e@f-4.5"));
    }

    #[test]
    fn bad_table_names_are_refused() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let e = write_table(dir.path(), "../x", &batch("a", vec![1.0]))
            .err()
            .map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.contains("`../x`")));
    }
}
