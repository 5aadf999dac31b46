//! Results: gathered Parquet tables, `runs.parquet` and `run.json`, read back with arrow.

use std::sync::Arc;

use arrow::array::{Array, BooleanArray, Float64Array, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use ropelens::results::read_parquet;

use super::{HEAD, Project};

fn ppl_batch(lengths: &[i64], ppl: &[f64]) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("length", DataType::Int64, false),
        Field::new("ppl", DataType::Float64, false),
    ]));
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from(lengths.to_vec())),
            Arc::new(Float64Array::from(ppl.to_vec())),
        ],
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

fn read(p: &Project, table: &str) -> RecordBatch {
    let (schema, batches) = read_parquet(&p.path().join(format!("results/t/{table}.parquet")))
        .unwrap_or_else(|e| panic!("{e}"));
    arrow::compute::concat_batches(&schema, &batches).unwrap_or_else(|e| panic!("{e}"))
}

fn strings(b: &RecordBatch, col: &str) -> Vec<String> {
    let a = b
        .column_by_name(col)
        .unwrap_or_else(|| panic!("no column {col}"));
    let a = a
        .as_any()
        .downcast_ref::<StringArray>()
        .unwrap_or_else(|| panic!("{col} is not utf8"));
    (0..a.len())
        .map(|i| {
            if a.is_null(i) {
                "<null>".into()
            } else {
                a.value(i).to_string()
            }
        })
        .collect()
}

fn floats(b: &RecordBatch, col: &str) -> Vec<f64> {
    let a = b
        .column_by_name(col)
        .unwrap_or_else(|| panic!("no column {col}"));
    a.as_any()
        .downcast_ref::<Float64Array>()
        .unwrap_or_else(|| panic!("{col} is not f64"))
        .values()
        .to_vec()
}

#[test]
fn tables_are_gathered_with_stage_instance_and_matrix_columns() {
    let p = Project::new();
    ropelens::results::write_table(
        &p.path().join("fix/a"),
        "ppl",
        &ppl_batch(&[128, 256], &[30.5, 31.5]),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    ropelens::results::write_table(&p.path().join("fix/b"), "ppl", &ppl_batch(&[128], &[40.25]))
        .unwrap_or_else(|e| panic!("{e}"));
    p.write(
        "p.toml",
        &format!(
            "{HEAD}[stages.eval]\nkind = \"command\"\nargs = [\"sh\", \"-c\", \"mkdir -p metrics && cp $PIPE_PIPELINE_DIR/fix/$SRC/metrics/ppl.parquet metrics/\"]\n\
             inputs = [\"fix\"]\n\
             [[stages.eval.matrix.env]]\nname = \"yarn\"\nSRC = \"a\"\n\
             [[stages.eval.matrix.env]]\nname = \"pi\"\nSRC = \"b\"\n\
             [stages.other]\nkind = \"command\"\nargs = [\"true\"]\nmatrix.gpu = [0]\n\
             needs = {{ up = \"eval[*]\" }}\n"
        ),
    );
    p.run("p.toml", &[]);
    let ppl = read(&p, "ppl");
    let names: Vec<&str> = ppl
        .schema_ref()
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect();
    assert_eq!(names, ["stage", "instance", "env", "SRC", "length", "ppl"]);
    assert_eq!(strings(&ppl, "stage"), ["eval", "eval", "eval"]);
    assert_eq!(
        strings(&ppl, "instance"),
        ["eval@yarn", "eval@yarn", "eval@pi"]
    );
    assert_eq!(strings(&ppl, "env"), ["yarn", "yarn", "pi"]);
    assert_eq!(floats(&ppl, "ppl"), [30.5, 31.5, 40.25]);
    let len = ppl.column_by_name("length").and_then(|a| {
        a.as_any()
            .downcast_ref::<Int64Array>()
            .map(|a| a.values().to_vec())
    });
    assert_eq!(len, Some(vec![128, 256, 128]));

    let runs = read(&p, "runs");
    let names: Vec<&str> = runs
        .schema_ref()
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect();
    assert_eq!(
        names,
        [
            "stage",
            "instance",
            "env",
            "SRC",
            "gpu",
            "key",
            "cached",
            "status",
            "seconds",
            "started_at",
            "finished_at",
            "tool_version",
            "error",
            "needs"
        ]
    );
    assert_eq!(
        strings(&runs, "instance"),
        ["eval@yarn", "eval@pi", "other@gpu-0"]
    );
    assert_eq!(strings(&runs, "status"), ["built", "built", "built"]);
    // Lineage: `other` gathered both eval instances; their keys are its `up` need.
    let keys = strings(&runs, "key");
    assert_eq!(
        strings(&runs, "needs"),
        [
            "{}".to_string(),
            "{}".to_string(),
            format!("{{\"up\":[\"{}\",\"{}\"]}}", keys[0], keys[1])
        ]
    );
    assert_eq!(strings(&runs, "SRC"), ["a", "b", "<null>"]);
    let gpu = runs.column_by_name("gpu").and_then(|a| {
        a.as_any()
            .downcast_ref::<Int64Array>()
            .map(|a| (a.is_null(0), a.value(2)))
    });
    assert_eq!(gpu, Some((true, 0)));
    assert!(strings(&runs, "key").iter().all(|k| k.len() == 32));

    // A re-run: all cached, the tables unchanged.
    p.run("p.toml", &[]);
    let runs = read(&p, "runs");
    let cached = runs.column_by_name("cached").and_then(|a| {
        a.as_any()
            .downcast_ref::<BooleanArray>()
            .map(|a| a.iter().flatten().collect::<Vec<_>>())
    });
    assert_eq!(cached, Some(vec![true, true, true]));
    assert_eq!(strings(&runs, "status"), ["cached", "cached", "cached"]);
    assert_eq!(floats(&read(&p, "ppl"), "ppl"), [30.5, 31.5, 40.25]);

    let run_json: serde_json::Value = serde_json::from_slice(
        &std::fs::read(p.path().join("results/t/run.json")).unwrap_or_default(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(run_json["pipeline"], "t");
    assert_eq!(run_json["device"], "cpu");
    assert_eq!(run_json["tables"], serde_json::json!(["ppl"]));
    assert_eq!(run_json["instances"].as_array().map(Vec::len), Some(3));
    assert_eq!(run_json["file_hash"].as_str().map(str::len), Some(64));
    assert_eq!(run_json["tool_version"], env!("CARGO_PKG_VERSION"));
}

#[test]
fn failed_instances_are_recorded_in_runs() {
    let p = Project::new();
    p.write(
        "p.toml",
        &format!("{HEAD}[stages.bad]\nkind = \"command\"\nargs = [\"sh\", \"-c\", \"exit 2\"]\n"),
    );
    p.fail(&["run", "p.toml"]);
    let runs = read(&p, "runs");
    assert_eq!(strings(&runs, "status"), ["failed"]);
    assert!(strings(&runs, "error")[0].contains("exited with status 2"));
}

#[test]
fn results_dir_can_be_set_in_the_file() {
    let p = Project::new();
    p.write("sub/p.toml", "[pipeline]\nname = \"t\"\nresults = \"out\"\n[stages.a]\nkind = \"command\"\nargs = [\"true\"]\n");
    p.ok(&["run", "sub/p.toml"]);
    assert!(p.path().join("sub/out/runs.parquet").is_file());
}

#[test]
fn forced_rebuild_regathers_tables() {
    let p = Project::new();
    let write = |v: f64| {
        ropelens::results::write_table(&p.path().join("fix"), "ppl", &ppl_batch(&[128], &[v]))
            .unwrap_or_else(|e| panic!("{e}"))
    };
    write(1.0);
    // The fixture is deliberately not an input: only --force picks up its change.
    p.write(
        "p.toml",
        &format!("{HEAD}[stages.e]\nkind = \"command\"\nargs = [\"sh\", \"-c\", \"mkdir -p metrics && cp $PIPE_PIPELINE_DIR/fix/metrics/ppl.parquet metrics/\"]\n"),
    );
    p.run("p.toml", &[]);
    assert_eq!(floats(&read(&p, "ppl"), "ppl"), [1.0]);
    write(2.0);
    assert!(p.run("p.toml", &[]).is_empty());
    assert_eq!(floats(&read(&p, "ppl"), "ppl"), [1.0]);
    assert_eq!(p.run("p.toml", &["--force"]), ["e"]);
    assert_eq!(floats(&read(&p, "ppl"), "ppl"), [2.0]);
}
