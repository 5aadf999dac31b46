//! The metric table contract: every results table a stage writes, in one place.
//!
//! Each table is a row struct (`PplRow`, `NeedleRow`, ...) whose fields are the table's columns,
//! with a doc per column. From these definitions come the Arrow schema ([`Table::schema`]), the
//! conversion of rows to a `RecordBatch` ([`Table::to_batch`], so stage authors never build
//! Arrow arrays by hand), the reading of rows back ([`Table::from_batch`], [`read_table`],
//! [`read_results`]) and the user documentation `schemas/tables.md` ([`tables_markdown`], checked
//! against the committed file by a test).
//!
//! Column types are chosen for the tools users open the files with (pandas, polars, DuckDB):
//! integers are `int64`, reals `float64`, text `utf8`, flags `bool`; an `Option` field is a
//! nullable column. Entropies, NLLs and divergences are in nats.
//!
//! The runner gathers the per-instance tables into `results/<pipeline>/<table>.parquet` with
//! leading columns `stage`, `instance`, then the instance's matrix values flattened, then the
//! table's own columns. [`read_results`] reads such a file into [`ResultRow`]s, which keep the
//! stage, instance and matrix values beside the typed row; it also reads a per-instance file
//! (no leading columns). A table column missing from a file reads as null when the field is an
//! `Option` (files written before the column existed) and is an error otherwise.

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Float64Array, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why a table could not be built, written or read. Every variant names the table and, where
/// there is one, the file and column.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TableError {
    /// A file could not be opened or created.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The Parquet reader or writer failed.
    #[error("{path}: table `{table}`: {message}")]
    Parquet {
        path: PathBuf,
        table: &'static str,
        message: String,
    },
    /// Arrow refused the arrays (should not happen for rows built by this module).
    #[error("table `{table}`: {message}")]
    Arrow {
        table: &'static str,
        message: String,
    },
    /// A column the table requires is absent from the file.
    #[error("{path}: table `{table}` has no column `{column}`")]
    MissingColumn {
        path: PathBuf,
        table: &'static str,
        column: &'static str,
    },
    /// A column has a type that cannot be read as the table's type.
    #[error("{path}: table `{table}`, column `{column}` is {found}, expected {expected}")]
    WrongType {
        path: PathBuf,
        table: &'static str,
        column: String,
        found: String,
        expected: String,
    },
    /// A non-nullable column holds a null.
    #[error("{path}: table `{table}`, column `{column}`, row {row}: null in a non-nullable column")]
    Null {
        path: PathBuf,
        table: &'static str,
        column: &'static str,
        row: usize,
    },
}

/// A value type a column can hold: `int64`, `float64`, `utf8` or `bool`.
pub trait Scalar: Sized + Clone {
    /// The Arrow type of the column.
    fn data_type() -> DataType;
    /// The type as written in `schemas/tables.md`.
    const TYPE_NAME: &'static str;
    /// An Arrow array of the values (`None` = null).
    fn array(values: Vec<Option<Self>>) -> ArrayRef;
    /// The values of an array already cast to [`Scalar::data_type`].
    fn values(array: &dyn Array) -> Vec<Option<Self>>;
}

/// [`Scalar`] for a type stored as an Arrow primitive array.
macro_rules! primitive_scalar {
    ($t:ty, $data_type:expr, $name:literal, $array:ty, $arrow:ty) => {
        impl Scalar for $t {
            fn data_type() -> DataType {
                $data_type
            }
            const TYPE_NAME: &'static str = $name;
            fn array(values: Vec<Option<Self>>) -> ArrayRef {
                Arc::new(<$array>::from(values))
            }
            fn values(array: &dyn Array) -> Vec<Option<Self>> {
                array.as_primitive::<$arrow>().iter().collect()
            }
        }
    };
}

primitive_scalar!(i64, DataType::Int64, "int64", Int64Array, Int64Type);
primitive_scalar!(f64, DataType::Float64, "float64", Float64Array, Float64Type);

impl Scalar for String {
    fn data_type() -> DataType {
        DataType::Utf8
    }
    const TYPE_NAME: &'static str = "utf8";
    fn array(values: Vec<Option<Self>>) -> ArrayRef {
        Arc::new(StringArray::from(values))
    }
    fn values(array: &dyn Array) -> Vec<Option<Self>> {
        array
            .as_string::<i32>()
            .iter()
            .map(|v| v.map(str::to_string))
            .collect()
    }
}

impl Scalar for bool {
    fn data_type() -> DataType {
        DataType::Boolean
    }
    const TYPE_NAME: &'static str = "bool";
    fn array(values: Vec<Option<Self>>) -> ArrayRef {
        Arc::new(BooleanArray::from(values))
    }
    fn values(array: &dyn Array) -> Vec<Option<Self>> {
        array.as_boolean().iter().collect()
    }
}

/// A row field: a [`Scalar`] (non-nullable column) or an `Option` of one (nullable column).
pub trait Column: Sized + Clone {
    /// The value type.
    type Inner: Scalar;
    /// Whether the column may hold nulls.
    const NULLABLE: bool;
    /// The value, `None` for null.
    fn to_inner(&self) -> Option<Self::Inner>;
    /// The field from a value; `None` when a null reaches a non-nullable field.
    fn from_inner(value: Option<Self::Inner>) -> Option<Self>;
}

macro_rules! plain_column {
    ($($t:ty),*) => {$(
        impl Column for $t {
            type Inner = $t;
            const NULLABLE: bool = false;
            fn to_inner(&self) -> Option<$t> {
                Some(self.clone())
            }
            fn from_inner(value: Option<$t>) -> Option<Self> {
                value
            }
        }
        impl Column for Option<$t> {
            type Inner = $t;
            const NULLABLE: bool = true;
            fn to_inner(&self) -> Option<$t> {
                self.clone()
            }
            fn from_inner(value: Option<$t>) -> Option<Self> {
                Some(value)
            }
        }
    )*};
}
plain_column!(i64, f64, String, bool);

/// One column of a table, as documented.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnSpec {
    /// The name users type.
    pub name: &'static str,
    /// Its Arrow type.
    pub data_type: DataType,
    /// `int64`, `float64`, `utf8` or `bool`.
    pub type_name: &'static str,
    /// Whether it may be null.
    pub nullable: bool,
    /// What it holds, with units.
    pub doc: String,
}

/// A results table: its name, documentation, columns, and the conversions of its rows.
///
/// Implemented by the row structs of this module; stage code uses [`Table::to_batch`] and the
/// runner's table writer, the report uses [`read_results`].
pub trait Table: Sized + Clone {
    /// The table name: the file is `<NAME>.parquet`.
    const NAME: &'static str;
    /// What one row is.
    fn doc() -> String;
    /// The columns in order.
    fn columns() -> Vec<ColumnSpec>;
    /// The Arrow schema of the table's own columns.
    fn schema() -> Schema {
        Schema::new(
            Self::columns()
                .into_iter()
                .map(|c| Field::new(c.name, c.data_type, c.nullable))
                .collect::<Vec<_>>(),
        )
    }
    /// The rows as one batch with [`Table::schema`] (zero rows give an empty batch).
    fn to_batch(rows: &[Self]) -> Result<RecordBatch, TableError>;
    /// Rows from a batch holding at least the table's columns (found by name; other columns
    /// are ignored; castable types such as `int32` for `int64` are accepted). `path` is only
    /// used in error messages.
    fn from_batch(batch: &RecordBatch, path: &Path) -> Result<Vec<Self>, TableError>;
}

/// The values of column `name` of `batch`, cast to `C`'s type; an absent column is all nulls
/// for a nullable field and an error otherwise.
#[doc(hidden)]
pub fn column_values<C: Column>(
    batch: &RecordBatch,
    table: &'static str,
    name: &'static str,
    path: &Path,
) -> Result<Vec<Option<C::Inner>>, TableError> {
    let Some(array) = batch.column_by_name(name) else {
        return if C::NULLABLE {
            Ok(vec![None; batch.num_rows()])
        } else {
            Err(TableError::MissingColumn {
                path: path.to_path_buf(),
                table,
                column: name,
            })
        };
    };
    let want = C::Inner::data_type();
    let wrong = || TableError::WrongType {
        path: path.to_path_buf(),
        table,
        column: name.to_string(),
        found: array.data_type().to_string(),
        expected: C::Inner::TYPE_NAME.to_string(),
    };
    let cast_ok = match (array.data_type(), &want) {
        (a, b) if a == b => true,
        // Only casts that cannot change a value's meaning: wider integers, wider floats,
        // integers to floats, other string layouts.
        (DataType::Int8 | DataType::Int16 | DataType::Int32, DataType::Int64) => true,
        (DataType::UInt8 | DataType::UInt16 | DataType::UInt32, DataType::Int64) => true,
        (
            DataType::Float16
            | DataType::Float32
            | DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32,
            DataType::Float64,
        ) => true,
        (DataType::LargeUtf8 | DataType::Utf8View, DataType::Utf8) => true,
        (DataType::Null, _) => true,
        _ => false,
    };
    if !cast_ok {
        return Err(wrong());
    }
    let cast = arrow::compute::cast(array, &want).map_err(|_| wrong())?;
    Ok(C::Inner::values(cast.as_ref()))
}

/// Field `row` of a column read by [`column_values`], or a null error for a non-nullable field.
#[doc(hidden)]
pub fn take_value<C: Column>(
    values: &mut [Option<C::Inner>],
    row: usize,
    table: &'static str,
    name: &'static str,
    path: &Path,
) -> Result<C, TableError> {
    C::from_inner(values[row].take()).ok_or_else(|| TableError::Null {
        path: path.to_path_buf(),
        table,
        column: name,
        row,
    })
}

/// Joins the lines of a doc comment into one paragraph.
fn paragraph(lines: &[&str]) -> String {
    lines
        .iter()
        .map(|l| l.trim())
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

macro_rules! tables {
    ($(
        $(#[doc = $tdoc:literal])*
        $name:literal => $Row:ident {
            $( $(#[doc = $fdoc:literal])* $field:ident : $ty:ty ),* $(,)?
        }
    )*) => {
        $(
            $(#[doc = $tdoc])*
            #[derive(Debug, Clone, PartialEq)]
            pub struct $Row {
                $( $(#[doc = $fdoc])* pub $field: $ty, )*
            }

            impl Table for $Row {
                const NAME: &'static str = $name;

                fn doc() -> String {
                    paragraph(&[$($tdoc),*])
                }

                fn columns() -> Vec<ColumnSpec> {
                    vec![$(ColumnSpec {
                        name: stringify!($field),
                        data_type: <<$ty as Column>::Inner as Scalar>::data_type(),
                        type_name: <<$ty as Column>::Inner as Scalar>::TYPE_NAME,
                        nullable: <$ty as Column>::NULLABLE,
                        doc: paragraph(&[$($fdoc),*]),
                    }),*]
                }

                fn to_batch(rows: &[Self]) -> Result<RecordBatch, TableError> {
                    let columns: Vec<ArrayRef> = vec![$(
                        <<$ty as Column>::Inner as Scalar>::array(
                            rows.iter().map(|r| Column::to_inner(&r.$field)).collect(),
                        )
                    ),*];
                    RecordBatch::try_new(Arc::new(Self::schema()), columns).map_err(|e| {
                        TableError::Arrow { table: $name, message: e.to_string() }
                    })
                }

                fn from_batch(batch: &RecordBatch, path: &Path) -> Result<Vec<Self>, TableError> {
                    $(
                        let mut $field =
                            column_values::<$ty>(batch, $name, stringify!($field), path)?;
                    )*
                    (0..batch.num_rows())
                        .map(|i| {
                            Ok(Self {
                                $( $field: take_value::<$ty>(
                                    &mut $field, i, $name, stringify!($field), path,
                                )?, )*
                            })
                        })
                        .collect()
                }
            }
        )*

        /// Every table, in documentation order: name, what a row is, and its columns.
        pub fn all_tables() -> Vec<TableSpec> {
            vec![$(TableSpec {
                name: <$Row as Table>::NAME,
                doc: <$Row as Table>::doc(),
                columns: <$Row as Table>::columns(),
            }),*]
        }
    };
}

/// A table's documentation, for `schemas/tables.md`.
#[derive(Debug, Clone, PartialEq)]
pub struct TableSpec {
    /// The table name.
    pub name: &'static str,
    /// What one row is.
    pub doc: String,
    /// The columns in order.
    pub columns: Vec<ColumnSpec>,
}

tables! {
    /// One row per (context length, evaluation mode, document): the perplexity of one
    /// evaluated document of the eval split at one context length. Aggregate over documents
    /// weighting by `tokens` (`exp(sum(nll * tokens) / sum(tokens))`).
    "ppl" => PplRow {
        /// Context length in tokens of each evaluated window.
        length: i64,
        /// `truncate`: the document is cut to its first `length` tokens, one window, every token
        /// after the first scored; `sliding`: windows of `length` tokens advance by a stride and
        /// only tokens not scored before are scored (every token after the first exactly once),
        /// each with at least `length - stride` tokens of context after the first window.
        mode: String,
        /// Identifier of the document: its id in the corpus, or its index in the eval split.
        document: String,
        /// Number of tokens scored (predicted) in this document.
        tokens: i64,
        /// Mean negative log-likelihood per scored token, in nats.
        nll: f64,
        /// Perplexity, `exp(nll)`.
        ppl: f64,
        /// Number of scored tokens that are long-range recalls (the synthetic corpus marks the
        /// recalled value tokens); 0 when the corpus marks none.
        recall_tokens: i64,
        /// Mean NLL (nats) of the recall tokens ("copy PPL" is `exp(recall_nll)`); null when the
        /// document has no recall tokens.
        recall_nll: Option<f64>,
    }

    /// One row per needle-in-a-haystack trial: a prompt with a needle hidden at a depth of a
    /// haystack of a given length, the greedy reply and its scores.
    "needle" => NeedleRow {
        /// Task name, e.g. `passkey` or `kv` (key-value recall).
        task: String,
        /// Context length tested, in tokens: the prompt plus the room for the expected answer
        /// (the data stage's haystack length).
        length: i64,
        /// Needle depth as a fraction of the haystack in `[0, 1]`: 0 = at the start (farthest
        /// from the question), 1 = at the end.
        depth: f64,
        /// Trial index within the (task, length, depth) cell, from 0.
        trial: i64,
        /// Token position of the needle's first token in the prompt.
        needle_token_position: i64,
        /// The expected answer text.
        expected: String,
        /// The generated reply (greedy decoding).
        reply: String,
        /// Whether the first integer of the reply equals the expected key; null when the
        /// expected answer is not an integer (see docs/analysis.md).
        exact: Option<bool>,
        /// Whether the expected text occurs in the reply (case-insensitive, whitespace
        /// normalised).
        substring: bool,
        /// Fraction of the expected answer's words found in the reply, in `[0, 1]`.
        overlap: f64,
        /// Attention entropy (nats) while generating the answer, averaged over answer tokens,
        /// layers and heads; null when not recorded.
        entropy_mean: Option<f64>,
        /// Wall-clock seconds the trial took.
        seconds: f64,
    }

    /// One row per needle trial, layer and head: the attention entropy of that head while
    /// generating the answer, averaged over the answer tokens (the paper's Algorithm 1).
    "needle_entropy" => NeedleEntropyRow {
        /// Task name, as in `needle`.
        task: String,
        /// Prompt length in tokens, as in `needle`.
        length: i64,
        /// Needle depth fraction, as in `needle`.
        depth: f64,
        /// Trial index, as in `needle`.
        trial: i64,
        /// Layer index, from 0.
        layer: i64,
        /// Query head index, from 0.
        head: i64,
        /// Mean attention entropy (nats) over the answer tokens.
        entropy: f64,
    }

    /// One row per (context length, layer, head, query-position bucket): the mean attention
    /// entropy of the queries whose positions fall in the bucket, over the evaluated windows.
    "attention_entropy" => AttentionEntropyRow {
        /// Context length in tokens of the evaluated windows.
        length: i64,
        /// Layer index, from 0.
        layer: i64,
        /// Query head index, from 0.
        head: i64,
        /// First query position of the bucket (0-based, inclusive).
        query_bucket_lo: i64,
        /// Last query position of the bucket (inclusive).
        query_bucket_hi: i64,
        /// Number of query rows averaged (over windows and positions).
        queries: i64,
        /// Mean entropy (nats) of those queries' attention distributions.
        entropy_mean: f64,
    }

    /// One row per (context length, layer and head, or layer, or all layers, relative-distance
    /// bucket): how much attention keys at that distance receive (the paper's Fig. 2). Buckets are log-spaced:
    /// bucket 0 is distance 0, bucket `k >= 1` holds distances `[2^(k-1), 2^k - 1]` (base 2).
    "attention_distance" => AttentionDistanceRow {
        /// Context length in tokens of the evaluated windows.
        length: i64,
        /// Layer index from 0; null for the mean over all layers.
        layer: Option<i64>,
        /// Query head index from 0 (rows of one head of one layer); null for the rows that
        /// pool the heads of a layer (or of every layer). Null throughout in files written
        /// before per-head rows existed.
        head: Option<i64>,
        /// Distance bucket index.
        bucket: i64,
        /// Smallest relative distance (query position minus key position) in the bucket.
        distance_lo: i64,
        /// Largest relative distance in the bucket (inclusive).
        distance_hi: i64,
        /// Mean attention probability of a key in the bucket (summed probability over
        /// (query, key) pairs divided by `pairs`): the curve compared by the JS divergence.
        mean_prob: f64,
        /// Share of all attention that lands in the bucket; sums to 1 over the buckets of a
        /// (length, layer, head): the distance distribution whose buckets weigh by the keys
        /// they hold.
        mass: f64,
        /// Number of (query, key) pairs counted in the bucket (over the pooled heads and the
        /// windows).
        pairs: i64,
    }

    /// One row per context length of a model: the Jensen-Shannon divergence between its mean
    /// attention-by-distance profile (`mean_prob`, all layers) and a reference model's profile
    /// at the reference's pretrained length (the paper's Table 1), over the distance buckets
    /// both cover.
    "attention_divergence" => AttentionDivergenceRow {
        /// Context length in tokens at which this model's profile was measured.
        length: i64,
        /// Instance name of the reference model (the base model, e.g. `attn_base`).
        reference_instance: String,
        /// Context length of the reference profile (the base model's pretrained length).
        reference_length: i64,
        /// JS divergence in nats, in `[0, ln 2]`.
        js_nats: f64,
        /// Number of distance buckets both profiles cover (the comparison's support).
        common_buckets: i64,
    }

    /// One row per needle task of a model: how well the attention entropy of a trial predicts
    /// that it failed (`exact` false, or `substring` false where `exact` is null). Intervals are
    /// 95% stratified bootstrap percentile intervals.
    "entropy_vs_error" => EntropyVsErrorRow {
        /// Task name, as in `needle` (`all` for every task pooled).
        task: String,
        /// Number of trials with an entropy.
        n: i64,
        /// Number of failed trials among them.
        failures: i64,
        /// Mean entropy (nats) of the passed trials; null when none passed.
        mean_entropy_pass: Option<f64>,
        /// Mean entropy (nats) of the failed trials; null when none failed.
        mean_entropy_fail: Option<f64>,
        /// AUROC of entropy predicting failure (0.5 = no association, 1 = failures always have
        /// higher entropy); null when undefined (no failures or no passes).
        auroc: Option<f64>,
        /// Lower end of the AUROC interval.
        auroc_lo: Option<f64>,
        /// Upper end of the AUROC interval.
        auroc_hi: Option<f64>,
        /// Point-biserial correlation of entropy with failure (coded 1); null when undefined.
        point_biserial: Option<f64>,
        /// Lower end of the point-biserial interval.
        point_biserial_lo: Option<f64>,
        /// Upper end of the point-biserial interval.
        point_biserial_hi: Option<f64>,
        /// Why a statistic is null (e.g. `AUROC is undefined: no positive outcomes`); null when
        /// both are defined.
        note: Option<String>,
    }

    /// One row per logged optimiser step of a training run (pretraining or RoPE-extension
    /// fine-tuning).
    "train_log" => TrainLogRow {
        /// Optimiser step, from 1.
        step: i64,
        /// Training tokens seen up to and including this step.
        tokens: i64,
        /// Training sequence length in tokens.
        seq_len: i64,
        /// Mean training loss (cross-entropy, nats per token) of the step's batch.
        loss: f64,
        /// Learning rate used at this step.
        lr: f64,
        /// Global gradient L2 norm before clipping; null when not measured.
        grad_norm: Option<f64>,
        /// Training throughput over the last logging interval, tokens per second.
        tokens_per_s: f64,
        /// Seconds since the run started (resumed runs continue the count).
        elapsed_s: f64,
    }

    /// One row per validation pass of a training run.
    "val_log" => ValLogRow {
        /// Optimiser step after which validation ran.
        step: i64,
        /// Training tokens seen by then.
        tokens: i64,
        /// Mean validation loss (nats per token) at the training sequence length.
        val_loss: f64,
    }

    /// One row per model a `report` stage gathered (an instance whose output holds a
    /// `config.json`: `train`, `rope` and `model` kinds), written by the report stage beside its
    /// report so that `pipe report` can show each model's RoPE without the cache.
    "model_config" => ModelConfigRow {
        /// The model's `config.json` (transformers' layout), verbatim.
        config: String,
    }

    /// One row per warning a gathered instance recorded in its summary (a `train` instance's
    /// `train.json` `warnings`: e.g. a `seq_len` beyond the RoPE's length), written by the report
    /// stage beside its report so that the report shows it and `pipe report` finds it.
    "warnings" => WarningRow {
        /// The warning, as the stage printed it.
        message: String,
    }
}

/// A row of a gathered results file: the typed row with the runner's leading columns.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultRow<T> {
    /// The stage that wrote the row (`ppl`).
    pub stage: String,
    /// The instance that wrote it (`ppl@yarn,seed-1`); the stage name without a matrix.
    pub instance: String,
    /// The instance's matrix values in column order (`rope`, `rope_type`, `factor`, `seed`);
    /// null matrix cells (an instance without that axis) are left out.
    pub matrix: Vec<(String, serde_json::Value)>,
    /// The table's own columns.
    pub row: T,
}

impl<T> ResultRow<T> {
    /// The matrix value of column `name`, if the instance has one.
    pub fn matrix_value(&self, name: &str) -> Option<&serde_json::Value> {
        self.matrix.iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }

    /// The instance's seed: the matrix column `seed`, or else one named `<stage>.seed` (the
    /// runner's name for a second `seed` axis), when it is an integer.
    pub fn seed(&self) -> Option<i64> {
        self.matrix_value("seed")
            .or_else(|| {
                self.matrix
                    .iter()
                    .find(|(k, _)| k.ends_with(".seed"))
                    .map(|(_, v)| v)
            })
            .and_then(|v| v.as_i64())
    }
}

/// A results-layer error as a table error of `table` at `path`.
fn table_err(path: &Path, table: &'static str, e: crate::Error) -> TableError {
    match e {
        crate::Error::Io { source, .. } => TableError::Io {
            path: path.to_path_buf(),
            source,
        },
        other => TableError::Parquet {
            path: path.to_path_buf(),
            table,
            message: other.to_string(),
        },
    }
}

/// Reads through the one Parquet reader, [`crate::results::read_parquet`].
fn read_batches(path: &Path, table: &'static str) -> Result<Vec<RecordBatch>, TableError> {
    crate::results::read_parquet(path)
        .map(|(_, batches)| batches)
        .map_err(|e| table_err(path, table, e))
}

/// Reads the rows of a per-instance table file (`metrics/<table>.parquet`) or of a gathered
/// results file, ignoring any columns that are not the table's.
pub fn read_table<T: Table>(path: &Path) -> Result<Vec<T>, TableError> {
    let mut rows = Vec::new();
    for batch in read_batches(path, T::NAME)? {
        rows.extend(T::from_batch(&batch, path)?);
    }
    Ok(rows)
}

/// A scalar of a matrix column as JSON, `None` for null; other types read as their text.
fn matrix_cell(array: &dyn Array, row: usize) -> Option<serde_json::Value> {
    if array.is_null(row) {
        return None;
    }
    Some(match array.data_type() {
        DataType::Int64 => array.as_primitive::<Int64Type>().value(row).into(),
        DataType::Float64 => array.as_primitive::<Float64Type>().value(row).into(),
        DataType::Boolean => array.as_boolean().value(row).into(),
        DataType::Utf8 => array.as_string::<i32>().value(row).into(),
        _ => {
            let text = arrow::compute::cast(&array.slice(row, 1), &DataType::Utf8).ok()?;
            text.as_string::<i32>().value(0).into()
        }
    })
}

/// Reads a gathered results file (`results/<pipeline>/<table>.parquet`): each row with its
/// `stage`, `instance` and matrix values (every column that is neither of those two nor one of
/// the table's own). A per-instance file without the leading columns reads with empty `stage`
/// and `instance`.
pub fn read_results<T: Table>(path: &Path) -> Result<Vec<ResultRow<T>>, TableError> {
    let own: Vec<&'static str> = T::columns().iter().map(|c| c.name).collect();
    let mut out = Vec::new();
    for batch in read_batches(path, T::NAME)? {
        let rows = T::from_batch(&batch, path)?;
        let text = |name: &str| -> Result<Vec<String>, TableError> {
            match batch.column_by_name(name) {
                None => Ok(vec![String::new(); batch.num_rows()]),
                Some(a) => {
                    let cast = arrow::compute::cast(a, &DataType::Utf8).map_err(|e| {
                        TableError::WrongType {
                            path: path.to_path_buf(),
                            table: T::NAME,
                            column: name.to_string(),
                            found: format!("{} ({e})", a.data_type()),
                            expected: "utf8".into(),
                        }
                    })?;
                    Ok(cast
                        .as_string::<i32>()
                        .iter()
                        .map(|v| v.unwrap_or_default().to_string())
                        .collect())
                }
            }
        };
        let stages = text("stage")?;
        let instances = text("instance")?;
        let schema = batch.schema();
        let matrix_cols: Vec<(String, &ArrayRef)> = schema
            .fields()
            .iter()
            .zip(batch.columns())
            .filter(|(f, _)| {
                let n = f.name().as_str();
                n != "stage" && n != "instance" && !own.contains(&n)
            })
            .map(|(f, a)| (f.name().clone(), a))
            .collect();
        for (i, row) in rows.into_iter().enumerate() {
            let matrix = matrix_cols
                .iter()
                .filter_map(|(name, a)| matrix_cell(a.as_ref(), i).map(|v| (name.clone(), v)))
                .collect();
            out.push(ResultRow {
                stage: stages[i].clone(),
                instance: instances[i].clone(),
                matrix,
                row,
            });
        }
    }
    Ok(out)
}

/// Writes through the one Parquet writer, [`crate::results::write_parquet`]: atomically, zstd.
fn write_batch(path: &Path, table: &'static str, batch: &RecordBatch) -> Result<(), TableError> {
    crate::results::write_parquet(path, batch.schema(), std::slice::from_ref(batch))
        .map_err(|e| table_err(path, table, e))
}

/// Writes rows as a per-instance table file (the table's own columns only).
pub fn write_table<T: Table>(path: &Path, rows: &[T]) -> Result<(), TableError> {
    write_batch(path, T::NAME, &T::to_batch(rows)?)
}

/// Rows with their leading columns as one batch in the gathered layout: `stage`, `instance`,
/// the matrix columns (first-mention order, types inferred; a matrix value whose name is a table
/// column is left out, as the runner does), then the table's columns.
pub fn results_batch<T: Table>(rows: &[ResultRow<T>]) -> Result<RecordBatch, TableError> {
    // As the runner does: a matrix value named like a table column (or `stage`/`instance`) is
    // dropped, the table's own column wins.
    let own_names: Vec<&'static str> = T::columns().iter().map(|c| c.name).collect();
    let mut matrix_names: Vec<String> = Vec::new();
    for r in rows {
        for (k, _) in &r.matrix {
            if !matrix_names.contains(k)
                && !own_names.contains(&k.as_str())
                && k != "stage"
                && k != "instance"
            {
                matrix_names.push(k.clone());
            }
        }
    }
    let own = T::to_batch(&rows.iter().map(|r| r.row.clone()).collect::<Vec<_>>())?;
    let mut fields = vec![
        Field::new("stage", DataType::Utf8, false),
        Field::new("instance", DataType::Utf8, false),
    ];
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &r.stage))),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| &r.instance),
        )),
    ];
    for name in &matrix_names {
        let values: Vec<Option<&serde_json::Value>> =
            rows.iter().map(|r| r.matrix_value(name)).collect();
        let ty = crate::results::matrix_type(&values);
        let array: ArrayRef = match ty {
            DataType::Int64 => Arc::new(Int64Array::from(
                values
                    .iter()
                    .map(|v| v.and_then(|v| v.as_i64()))
                    .collect::<Vec<_>>(),
            )),
            DataType::Float64 => Arc::new(Float64Array::from(
                values
                    .iter()
                    .map(|v| v.and_then(|v| v.as_f64()))
                    .collect::<Vec<_>>(),
            )),
            DataType::Boolean => Arc::new(BooleanArray::from(
                values
                    .iter()
                    .map(|v| v.and_then(|v| v.as_bool()))
                    .collect::<Vec<_>>(),
            )),
            _ => Arc::new(StringArray::from(
                values
                    .iter()
                    .map(|v| {
                        v.map(|v| match v {
                            serde_json::Value::String(s) => s.clone(),
                            other => other.to_string(),
                        })
                    })
                    .collect::<Vec<_>>(),
            )),
        };
        fields.push(Field::new(name, ty, true));
        columns.push(array);
    }
    for (f, c) in own.schema().fields().iter().zip(own.columns()) {
        fields.push(f.as_ref().clone().with_nullable(true));
        columns.push(c.clone());
    }
    let schema: SchemaRef = Arc::new(Schema::new(fields));
    RecordBatch::try_new(schema, columns).map_err(|e| TableError::Arrow {
        table: T::NAME,
        message: e.to_string(),
    })
}

/// Writes rows in the gathered layout (see [`results_batch`]): what the runner writes to
/// `results/<pipeline>/<table>.parquet`, for tests and tools that build results directly.
pub fn write_results<T: Table>(path: &Path, rows: &[ResultRow<T>]) -> Result<(), TableError> {
    write_batch(path, T::NAME, &results_batch(rows)?)
}

/// The Markdown documentation of every table (the content of `schemas/tables.md`).
pub fn tables_markdown() -> String {
    let mut out = String::from(
        "# Results tables\n\n\
         <!-- Generated from src/tables.rs by `tables_markdown()`; a test checks this file. \
         Do not edit by hand. -->\n\n\
         Every stage writes its numbers to Parquet tables. After a run, \
         `results/<pipeline>/<table>.parquet` holds one table over all instances, with the \
         leading columns `stage` (utf8, the stage name), `instance` (utf8, e.g. \
         `ppl@yarn,seed-1`), then the instance's matrix values flattened (e.g. `rope`, \
         `rope_type`, `factor`, `seed`; types inferred from the values), then the table's own \
         columns below. In gathered files every table column is nullable.\n\n\
         Types: `int64`, `float64`, `utf8`, `bool`. Entropies, negative log-likelihoods and \
         divergences are in nats (natural logarithms).\n\n\
         ```python\n\
         import polars as pl\n\
         ppl = pl.read_parquet(\"results/quickstart/ppl.parquet\")\n\
         ```\n\n## Tables\n\n",
    );
    let tables = all_tables();
    for t in &tables {
        out.push_str(&format!("- [`{0}`](#{0})\n", t.name));
    }
    for t in &tables {
        out.push_str(&format!("\n## {}\n\n{}\n\n", t.name, t.doc));
        out.push_str("| column | type | null | meaning |\n| :-- | :-- | :-- | :-- |\n");
        for c in &t.columns {
            out.push_str(&format!(
                "| `{}` | {} | {} | {} |\n",
                c.name,
                c.type_name,
                if c.nullable { "yes" } else { "no" },
                c.doc.replace('|', "\\|")
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ppl_rows() -> Vec<PplRow> {
        vec![
            PplRow {
                length: 128,
                mode: "truncate".into(),
                document: "0".into(),
                tokens: 127,
                nll: 3.5,
                ppl: 3.5f64.exp(),
                recall_tokens: 5,
                recall_nll: Some(0.25),
            },
            PplRow {
                length: 256,
                mode: "sliding".into(),
                document: "doc-7".into(),
                tokens: 255,
                nll: 3.25,
                ppl: 3.25f64.exp(),
                recall_tokens: 0,
                recall_nll: None,
            },
        ]
    }

    #[test]
    fn schema_has_the_documented_types() {
        let s = PplRow::schema();
        let f = s.field_with_name("length").unwrap();
        assert_eq!(f.data_type(), &DataType::Int64);
        assert!(!f.is_nullable());
        let f = s.field_with_name("recall_nll").unwrap();
        assert_eq!(f.data_type(), &DataType::Float64);
        assert!(f.is_nullable());
        let s = NeedleRow::schema();
        assert_eq!(
            s.field_with_name("exact").unwrap().data_type(),
            &DataType::Boolean
        );
        assert!(s.field_with_name("exact").unwrap().is_nullable());
        assert_eq!(
            s.field_with_name("reply").unwrap().data_type(),
            &DataType::Utf8
        );
        let names: Vec<&str> = all_tables().iter().map(|t| t.name).collect();
        assert_eq!(
            names,
            [
                "ppl",
                "needle",
                "needle_entropy",
                "attention_entropy",
                "attention_distance",
                "attention_divergence",
                "entropy_vs_error",
                "train_log",
                "val_log",
                "model_config",
                "warnings"
            ]
        );
        for t in all_tables() {
            assert!(!t.doc.is_empty(), "{}", t.name);
            for c in &t.columns {
                assert!(!c.doc.is_empty(), "{}.{}", t.name, c.name);
            }
        }
    }

    #[test]
    fn rows_round_trip_through_a_batch_and_a_file() {
        let rows = ppl_rows();
        let batch = PplRow::to_batch(&rows).unwrap();
        assert_eq!(batch.num_rows(), 2);
        assert_eq!(batch.num_columns(), 8);
        assert_eq!(PplRow::from_batch(&batch, Path::new("x")).unwrap(), rows);
        let empty = PplRow::to_batch(&[]).unwrap();
        assert_eq!(empty.num_rows(), 0);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics/ppl.parquet");
        write_table(&path, &rows).unwrap();
        assert_eq!(read_table::<PplRow>(&path).unwrap(), rows);
        // A per-instance file read as results: no leading columns, no matrix.
        let r = read_results::<PplRow>(&path).unwrap();
        assert_eq!(r[1].row, rows[1]);
        assert_eq!((r[1].stage.as_str(), r[1].instance.as_str()), ("", ""));
        assert!(r[1].matrix.is_empty());
    }

    #[test]
    fn gathered_results_keep_stage_instance_and_matrix() {
        let rows: Vec<ResultRow<PplRow>> = ppl_rows()
            .into_iter()
            .enumerate()
            .map(|(i, row)| ResultRow {
                stage: "ppl".into(),
                instance: format!("ppl@yarn,seed-{i}"),
                matrix: if i == 0 {
                    vec![
                        ("rope".into(), "yarn".into()),
                        ("factor".into(), 4.0.into()),
                        ("seed".into(), 1.into()),
                    ]
                } else {
                    vec![("rope".into(), "base".into())]
                },
                row,
            })
            .collect();
        let batch = results_batch(&rows).unwrap();
        let names: Vec<String> = batch
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        assert_eq!(
            &names[..6],
            ["stage", "instance", "rope", "factor", "seed", "length"]
        );
        assert_eq!(batch.schema().field(3).data_type(), &DataType::Float64);
        assert_eq!(batch.schema().field(4).data_type(), &DataType::Int64);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ppl.parquet");
        write_results(&path, &rows).unwrap();
        let back = read_results::<PplRow>(&path).unwrap();
        assert_eq!(back, rows);
        assert_eq!(back[0].seed(), Some(1));
        assert_eq!(back[1].seed(), None);
        assert_eq!(
            back[0].matrix_value("factor").and_then(|v| v.as_f64()),
            Some(4.0)
        );
    }

    #[test]
    fn a_matrix_value_named_like_a_column_gives_way_to_the_column() {
        let rows = vec![ResultRow {
            stage: "ablation".to_string(),
            instance: "ablation@seq_len-256".to_string(),
            matrix: vec![("seq_len".into(), 256.into()), ("seed".into(), 3.into())],
            row: ValLogRow {
                step: 5,
                tokens: 1280,
                val_loss: 2.5,
            },
        }];
        let batch = results_batch(&rows).unwrap();
        assert_eq!(
            batch.num_columns(),
            2 + 2 + 3,
            "seq_len is not a val_log column: kept"
        );
        let train = vec![ResultRow {
            stage: "ablation".to_string(),
            instance: "ablation@seq_len-256".to_string(),
            matrix: vec![("seq_len".into(), 999.into()), ("seed".into(), 3.into())],
            row: TrainLogRow {
                step: 1,
                tokens: 256,
                seq_len: 256,
                loss: 3.0,
                lr: 1e-3,
                grad_norm: None,
                tokens_per_s: 100.0,
                elapsed_s: 2.0,
            },
        }];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("train_log.parquet");
        write_results(&path, &train).unwrap();
        let back = read_results::<TrainLogRow>(&path).unwrap();
        assert_eq!(back[0].row, train[0].row);
        assert_eq!(back[0].matrix, vec![("seed".to_string(), 3.into())]);
    }

    #[test]
    fn the_runners_gathered_tables_read_back_as_typed_rows() {
        use crate::results::{InstanceInfo, gather_tables};
        let dir = tempfile::tempdir().unwrap();
        let mut instances = Vec::new();
        for (i, variant) in ["pi", "yarn"].iter().enumerate() {
            let out = dir.path().join(variant);
            let mut rows = ppl_rows();
            rows[0].length = 100 + i as i64;
            write_table(&out.join("metrics").join("ppl.parquet"), &rows).unwrap();
            instances.push(InstanceInfo {
                stage: "ppl".into(),
                instance: format!("ppl@{variant}"),
                matrix: vec![("rope".into(), (*variant).into())],
                dir: Some(out),
            });
        }
        write_table(
            &dir.path()
                .join("yarn")
                .join("metrics")
                .join("val_log.parquet"),
            &[ValLogRow {
                step: 1,
                tokens: 2,
                val_loss: 3.0,
            }],
        )
        .unwrap();
        let out = dir.path().join("results");
        let written = gather_tables(&out, &instances).unwrap();
        assert_eq!(written, ["ppl", "val_log"]);
        let ppl = read_results::<PplRow>(&out.join("ppl.parquet")).unwrap();
        assert_eq!(ppl.len(), 4);
        assert_eq!(ppl[2].instance, "ppl@yarn");
        assert_eq!(ppl[2].row.length, 101);
        assert_eq!(ppl[3].matrix_value("rope"), Some(&"yarn".into()));
        let val = read_results::<ValLogRow>(&out.join("val_log.parquet")).unwrap();
        assert_eq!((val.len(), val[0].stage.as_str()), (1, "ppl"));
    }

    #[test]
    fn bad_files_give_errors_naming_table_column_and_row() {
        let dir = tempfile::tempdir().unwrap();
        // A needle file read as ppl: required columns are missing.
        let path = dir.path().join("needle.parquet");
        write_table(
            &path,
            &[ValLogRow {
                step: 1,
                tokens: 10,
                val_loss: 2.0,
            }],
        )
        .unwrap();
        let err = read_table::<PplRow>(&path).unwrap_err().to_string();
        assert!(err.contains("table `ppl` has no column `length`"), "{err}");
        assert!(err.contains("needle.parquet"), "{err}");

        // Wrong type: val_loss written as text.
        let schema = Arc::new(Schema::new(vec![
            Field::new("step", DataType::Int32, false),
            Field::new("tokens", DataType::Int64, false),
            Field::new("val_loss", DataType::Utf8, false),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(arrow::array::Int32Array::from(vec![1])),
                Arc::new(Int64Array::from(vec![10])),
                Arc::new(StringArray::from(vec!["2.0"])),
            ],
        )
        .unwrap();
        let err = ValLogRow::from_batch(&batch, Path::new("v.parquet"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "v.parquet: table `val_log`, column `val_loss` is Utf8, expected float64"
        );

        // A null in a non-nullable column (gathered files make every column nullable).
        let schema = Arc::new(Schema::new(vec![
            Field::new("step", DataType::Int32, true),
            Field::new("tokens", DataType::Int64, true),
            Field::new("val_loss", DataType::Float32, true),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(arrow::array::Int32Array::from(vec![Some(1), Some(2)])),
                Arc::new(Int64Array::from(vec![Some(10), None])),
                Arc::new(arrow::array::Float32Array::from(vec![Some(2.5), Some(1.5)])),
            ],
        )
        .unwrap();
        let err = ValLogRow::from_batch(&batch, Path::new("v.parquet"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "v.parquet: table `val_log`, column `tokens`, row 1: null in a non-nullable column"
        );

        let missing = read_table::<PplRow>(&dir.path().join("none.parquet")).unwrap_err();
        assert!(missing.to_string().contains("none.parquet"), "{missing}");
    }

    #[test]
    fn optional_columns_missing_from_a_file_read_as_null() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("step", DataType::Int64, false),
            Field::new("tokens", DataType::Int64, false),
            Field::new("seq_len", DataType::Int64, false),
            Field::new("loss", DataType::Float64, false),
            Field::new("lr", DataType::Float64, false),
            Field::new("tokens_per_s", DataType::Float64, false),
            Field::new("elapsed_s", DataType::Float64, false),
        ]));
        let f = |v: f64| -> ArrayRef { Arc::new(Float64Array::from(vec![v])) };
        let i = |v: i64| -> ArrayRef { Arc::new(Int64Array::from(vec![v])) };
        let batch = RecordBatch::try_new(
            schema,
            vec![i(3), i(384), i(128), f(2.5), f(1e-3), f(900.0), f(1.5)],
        )
        .unwrap();
        let rows = TrainLogRow::from_batch(&batch, Path::new("t")).unwrap();
        assert_eq!(rows[0].grad_norm, None);
        assert_eq!(rows[0].seq_len, 128);
    }

    /// `schemas/tables.md` is generated from these definitions. To refresh it after changing a
    /// table: `ROPELENS_WRITE_SCHEMAS=1 cargo test --release --lib tables::`.
    #[test]
    fn committed_tables_doc_is_current() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/tables.md");
        let generated = tables_markdown();
        if std::env::var_os("ROPELENS_WRITE_SCHEMAS").is_some() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &generated).unwrap();
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == generated,
            "schemas/tables.md is out of date: run \
             `ROPELENS_WRITE_SCHEMAS=1 cargo test --release --lib tables::` and commit it"
        );
    }
}
