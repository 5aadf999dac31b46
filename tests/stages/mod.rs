//! Integration tests of the study's stage kinds driven through `pipe run`, on tiny fixtures.

mod model_stage;
pub mod quickstart;
pub mod real_model;
mod real_smollm2;
mod report_stage;
mod schema;
mod train_stage;

use std::path::Path;

/// The tables every study pipeline (data, train, ppl, needle, attention) publishes.
const STUDY_TABLES: [&str; 10] = [
    "data_stats",
    "train_log",
    "val_log",
    "ppl",
    "needle",
    "needle_entropy",
    "entropy_vs_error",
    "attention_entropy",
    "attention_distance",
    "attention_divergence",
];

/// Asserts that `results` (a `results/<pipeline>/` directory) holds every study table.
fn assert_study_tables(results: &Path) {
    for table in STUDY_TABLES {
        assert!(
            results.join(format!("{table}.parquet")).is_file(),
            "{}/{table}.parquet is missing",
            results.display()
        );
    }
}

/// (instance, tokenizer vocabulary size) of every row of a `data_stats` table.
fn data_stats_vocab(results: &Path) -> Vec<(String, i64)> {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{DataType, Int64Type};
    let (schema, batches) =
        ropelens::results::read_parquet(&results.join("data_stats.parquet")).unwrap();
    let stats = arrow::compute::concat_batches(&schema, &batches).unwrap();
    let column = |name: &str, ty: &DataType| {
        arrow::compute::cast(stats.column_by_name(name).unwrap(), ty).unwrap()
    };
    let instance = column("instance", &DataType::Utf8);
    let vocab = column("vocab_size", &DataType::Int64);
    let (instance, vocab) = (
        instance.as_string::<i32>(),
        vocab.as_primitive::<Int64Type>(),
    );
    (0..stats.num_rows())
        .map(|i| {
            assert!(!vocab.is_null(i));
            (instance.value(i).to_string(), vocab.value(i))
        })
        .collect()
}

/// Every pipeline file shipped in `pipelines/` and `pipelines/variants/` (the variants behind
/// docs/study.md's measurements, whose results are committed) parses, names only keys that
/// exist and forms a DAG; the paper-small study has its full shape (too long to run in a test:
/// it is run by hand and its results are committed).
#[test]
fn every_pipeline_in_the_repository_validates() {
    let p = crate::runner::Project::new();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let fixture = root.join("tests/fixtures/hf/default");
    let mut seen = Vec::new();
    for dir in ["pipelines", "pipelines/variants"] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap().flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "toml") {
                continue;
            }
            let file = path.to_str().unwrap();
            let name = path
                .strip_prefix(root.join("pipelines"))
                .unwrap()
                .to_string_lossy()
                .to_string();
            // real-model.toml leaves its two paths to the user on purpose ("<required>").
            let model = format!("stages.model.path={}", fixture.display());
            let corpus = format!("stages.data.source.text.path={}", p.path().display());
            let mut args = vec!["validate", file];
            if name == "real-model.toml" {
                args.extend(["--set", &model, "--set", &corpus]);
            }
            let out = p.ok(&args);
            assert!(out.contains(": ok ("), "{name}: {out}");
            if name == "paper-small.toml" {
                // 4 corpora (pretraining, fine-tuning, ablation, evaluation), 3 seeds x (base,
                // 5 extensions, 3 ablation arms, and their evaluations of 3 kinds), one report
                // (docs/study.md): 4 + 3 x (1 + 5 + 3) x 4 + 1.
                assert!(out.contains("(17 stages, 113 instances)"), "{out}");
            }
            seen.push(name);
        }
    }
    seen.sort();
    assert_eq!(
        seen,
        [
            "paper-small.toml",
            "quickstart.toml",
            "real-model.toml",
            "real-smollm2.toml",
            "variants/paper-small-h64.toml",
            "variants/quickstart-ft900.toml",
            "variants/quickstart-h64.toml",
            "variants/quickstart-solid-ft1500.toml",
            "variants/quickstart-solid.toml",
            "variants/quickstart-theta100.toml",
        ]
    );
}

/// `pipe rope` prints the frequency view of a config.json, with RoPE keys overridden; bad keys
/// are errors naming the file.
#[test]
fn pipe_rope_prints_the_frequency_view() {
    let p = crate::runner::Project::new();
    let config =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf/default/config.json");
    let file = config.to_str().unwrap();
    // head_dim 16, theta 1e4, L 64: 3 of 8 pairs rotate within L (2 pi 1e4^(i/8) <= 64).
    let out = p.ok(&["rope", file]);
    assert!(
        out.contains("RoPE `default`, rope_theta 10000, head_dim 16 (8 pairs)"),
        "{out}"
    );
    assert!(
        out.contains("3 of 8 pairs complete a rotation within L"),
        "{out}"
    );
    assert!(out.contains("| interpolation ratio |"), "{out}");
    let out = p.ok(&[
        "rope",
        file,
        "--set",
        "rope_type=linear",
        "--set",
        "factor=4",
    ]);
    assert!(
        out.contains("keeps 0, ramps 0 and interpolates 8 pairs"),
        "{out}"
    );
    assert!(out.contains("4.000 | interpolated"), "{out}");
    let err = p.fail(&[
        "rope",
        file,
        "--set",
        "rope_type=linear",
        "--set",
        "beta_fast=4",
    ]);
    assert!(
        err.contains("config.json") && err.contains("beta_fast"),
        "{err}"
    );
}
