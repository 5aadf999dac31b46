//! Evaluation-only corpora (every document in validation) and text files that are not UTF-8.

use std::path::{Path, PathBuf};

use arrow::array::{Array, UInt64Array};
use ropelens::data::PreparedData;

use super::{prep, prep_from};

/// Writes `docs/` with three text files and trains a tokenizer on them into `tok/`.
fn corpus_and_tokenizer(dir: &Path) -> PathBuf {
    let docs = dir.join("docs");
    std::fs::create_dir_all(&docs).unwrap();
    for (i, text) in [
        "the first document has some words in it",
        "a second document with other words and more of them",
        "third and last, a short one",
    ]
    .iter()
    .enumerate()
    {
        std::fs::write(docs.join(format!("{i}.txt")), text).unwrap();
    }
    let tok = dir.join("tok");
    prep(
        "source = { text = { path = \"docs\" } }\n\
         tokenizer = { train_bpe = { vocab_size = 300, min_frequency = 1 } }\n\
         split = { valid_fraction = 0.0 }",
        dir,
        &tok,
        1,
    )
    .unwrap();
    tok
}

#[test]
fn every_document_can_go_to_validation() {
    let dir = tempfile::tempdir().unwrap();
    let tok = corpus_and_tokenizer(dir.path());

    let out = dir.path().join("eval");
    let stats = prep_from(
        "source = { text = { path = \"docs\" } }\n\
         tokenizer = { from = \"tok\" }\n\
         split = { valid_fraction = 1.0 }",
        dir.path(),
        &out,
        1,
        Some(tok.clone()),
    )
    .unwrap();
    let docs: Vec<(String, u64)> = stats
        .splits
        .iter()
        .map(|s| (s.split.clone(), s.documents))
        .collect();
    assert_eq!(docs, [("train".into(), 0), ("valid".into(), 3)]);
    let data = PreparedData::open(&out).unwrap();
    assert_eq!((data.train.num_docs(), data.valid.num_docs()), (0, 3));
    assert!(data.train.is_empty() && !data.valid.is_empty());

    // `valid_documents = 1` on a one-document file: the test-set case of the YaRN eval.
    std::fs::write(dir.path().join("one.txt"), "a single held-out document").unwrap();
    let stats = prep_from(
        "source = { text = { path = \"one.txt\" } }\n\
         tokenizer = { from = \"tok\" }\n\
         split = { valid_documents = 1 }",
        dir.path(),
        &dir.path().join("one"),
        1,
        Some(tok),
    )
    .unwrap();
    assert_eq!(
        (stats.splits[0].documents, stats.splits[1].documents),
        (0, 1)
    );

    // A tokenizer trained here needs training documents: the error says what to do.
    let err = prep(
        "source = { text = { path = \"docs\" } }\n\
         tokenizer = { train_bpe = { vocab_size = 300 } }\n\
         split = { valid_fraction = 1.0 }",
        dir.path(),
        &dir.path().join("bpe"),
        1,
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid parameter `tokenizer.train_bpe`: trains on the training split, which is empty (every document went to validation): for an evaluation-only corpus give the model's tokenizer, `tokenizer = { path = .. }` or `{ from = .. }`"
    );
}

/// The `data_stats` column `col` (every row).
fn stats_column(out: &Path, col: &str) -> Vec<u64> {
    let (_, batches) =
        ropelens::results::read_parquet(&out.join("metrics/data_stats.parquet")).unwrap();
    batches
        .iter()
        .flat_map(|b| {
            let a = b
                .column_by_name(col)
                .and_then(|c| c.as_any().downcast_ref::<UInt64Array>())
                .unwrap_or_else(|| panic!("no u64 column {col}"));
            (0..a.len()).map(|i| a.value(i)).collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn text_that_is_not_utf8_is_an_error_or_replaced_or_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let tok = corpus_and_tokenizer(dir.path());
    let docs = dir.path().join("mixed");
    std::fs::create_dir_all(&docs).unwrap();
    std::fs::write(docs.join("a.txt"), "plain words in the first file").unwrap();
    // Latin-1 "café au lait": byte 3 is 0xE9.
    std::fs::write(docs.join("b.txt"), b"caf\xe9 au lait and more words").unwrap();
    let params = |mode: &str| {
        format!(
            "source = {{ text = {{ path = \"mixed\"{mode} }} }}\n\
             tokenizer = {{ from = \"tok\" }}\n\
             split = {{ valid_fraction = 0.0 }}"
        )
    };
    let run = |mode: &str, out: &str| {
        prep_from(
            &params(mode),
            dir.path(),
            &dir.path().join(out),
            1,
            Some(tok.clone()),
        )
    };

    let err = run("", "default").unwrap_err().to_string();
    assert!(
        err.contains("mixed/b.txt: not UTF-8 text (invalid byte at offset 3)"),
        "{err}"
    );
    assert!(err.contains("invalid_utf8 = \"replace\""), "{err}");

    let replaced = run(", invalid_utf8 = \"replace\"", "replace").unwrap();
    assert_eq!(replaced.source_files.replaced, 1);
    assert_eq!(replaced.source_files.skipped, 0);
    assert_eq!(replaced.splits[0].documents, 2);
    assert_eq!(
        stats_column(&dir.path().join("replace"), "replaced_files"),
        [1, 1]
    );
    let data = PreparedData::open(&dir.path().join("replace")).unwrap();
    let all = data.train.tokens(0..data.train.len());
    let text = data.tokenizer.decode(&all, true).unwrap();
    assert!(text.contains('\u{FFFD}'), "{text}");

    let skipped = run(", invalid_utf8 = \"skip\"", "skip").unwrap();
    assert_eq!(skipped.source_files.skipped, 1);
    assert_eq!(skipped.splits[0].documents, 1);
    assert_eq!(
        stats_column(&dir.path().join("skip"), "skipped_files"),
        [1, 1]
    );
}
