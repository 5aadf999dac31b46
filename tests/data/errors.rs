//! Clear errors for the mistakes a researcher makes.

use std::sync::Arc;

use arrow::array::{RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use ropelens::data::{DataError, DataPrepParams};

use super::prep;

const TINY_BPE: &str = "tokenizer = { train_bpe = { vocab_size = 300, min_frequency = 1 } }\nsplit = { valid_fraction = 0.0 }\n";

#[test]
fn missing_input_file_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let err = prep(
        &format!("source = {{ text = {{ path = \"nowhere/corpus.txt\" }} }}\n{TINY_BPE}"),
        dir.path(),
        &dir.path().join("out"),
        1,
    )
    .unwrap_err();
    assert!(matches!(err, DataError::NotFound { .. }), "{err:?}");
    assert!(err.to_string().contains("nowhere/corpus.txt"), "{err}");
}

#[test]
fn empty_corpus() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("blank.txt"), "  \n\n \n").unwrap();
    let err = prep(
        &format!("source = {{ text = {{ path = \"blank.txt\" }} }}\n{TINY_BPE}"),
        dir.path(),
        &dir.path().join("out"),
        1,
    )
    .unwrap_err();
    assert!(matches!(err, DataError::EmptyCorpus { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "empty corpus: the text source produced no documents"
    );

    std::fs::create_dir(dir.path().join("empty")).unwrap();
    let err = prep(
        &format!("source = {{ jsonl = {{ path = \"empty\" }} }}\n{TINY_BPE}"),
        dir.path(),
        &dir.path().join("out"),
        1,
    )
    .unwrap_err();
    assert!(err.to_string().contains("holds no input files"), "{err}");

    // Every document filtered out.
    std::fs::write(dir.path().join("short.txt"), "two words").unwrap();
    let err = prep(
        &format!("source = {{ text = {{ path = \"short.txt\" }} }}\nfilter = {{ min_tokens = 50 }}\n{TINY_BPE}"),
        dir.path(),
        &dir.path().join("out"),
        1,
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("no documents left after the filters"),
        "{err}"
    );
}

#[test]
fn missing_parquet_column_lists_the_columns() {
    let dir = tempfile::tempdir().unwrap();
    let schema = Arc::new(Schema::new(vec![Field::new("text", DataType::Utf8, false)]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![Arc::new(StringArray::from(vec!["a b c"]))],
    )
    .unwrap();
    let file = std::fs::File::create(dir.path().join("d.parquet")).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(file, schema, None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    let err = prep(
        &format!(
            "source = {{ parquet = {{ path = \"d.parquet\", column = \"body\" }} }}\n{TINY_BPE}"
        ),
        dir.path(),
        &dir.path().join("out"),
        1,
    )
    .unwrap_err();
    assert!(matches!(err, DataError::MissingColumn { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("d.parquet") && msg.contains("no column `body`") && msg.contains("has: text"),
        "{msg}"
    );
}

#[test]
fn jsonl_missing_field_names_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("d.jsonl"),
        "{\"text\": \"ok\"}\n{\"body\": \"no\"}\n",
    )
    .unwrap();
    let err = prep(
        &format!("source = {{ jsonl = {{ path = \"d.jsonl\" }} }}\n{TINY_BPE}"),
        dir.path(),
        &dir.path().join("out"),
        1,
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.ends_with("d.jsonl:2: no field `text` (fields: body)"),
        "{msg}"
    );
    std::fs::write(dir.path().join("d.jsonl"), "{\"text\": 3}\n").unwrap();
    let msg = prep(
        &format!("source = {{ jsonl = {{ path = \"d.jsonl\" }} }}\n{TINY_BPE}"),
        dir.path(),
        &dir.path().join("out"),
        1,
    )
    .unwrap_err()
    .to_string();
    assert!(
        msg.ends_with("d.jsonl:1: field `text` is not a string but a number"),
        "{msg}"
    );
}

#[test]
fn tokenizer_json_that_does_not_parse() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("c.txt"), "some words here").unwrap();
    std::fs::write(dir.path().join("tokenizer.json"), "{ \"model\": ").unwrap();
    let err = prep(
        "source = { text = { path = \"c.txt\" } }\ntokenizer = { path = \"tokenizer.json\" }\nsplit = { valid_fraction = 0.0 }",
        dir.path(),
        &dir.path().join("out"),
        1,
    )
    .unwrap_err();
    assert!(matches!(err, DataError::TokenizerParse { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("tokenizer.json: not a valid tokenizer.json"),
        "{err}"
    );
}

#[test]
fn vocab_size_the_dtype_cannot_hold() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("c.txt"), "some words here and there").unwrap();
    let err = prep(
        "source = { text = { path = \"c.txt\" } }\ntokenizer = { train_bpe = { vocab_size = 70000 } }\ntoken_dtype = \"u16\"",
        dir.path(),
        &dir.path().join("out"),
        1,
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            DataError::VocabTooLarge {
                vocab_size: 70000,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("vocab size 70000 does not fit token dtype u16"),
        "{err}"
    );

    // A given tokenizer with more than 65536 ids: u16 refused, auto picks u32.
    let first = dir.path().join("first");
    prep(
        &format!("source = {{ text = {{ path = \"c.txt\" }} }}\n{TINY_BPE}"),
        dir.path(),
        &first,
        1,
    )
    .unwrap();
    let mut tok = ropelens::data::tokenizer::load_tokenizer(&first.join("tokenizer.json")).unwrap();
    let extra: Vec<tokenizers::AddedToken> = (0..66000)
        .map(|i| tokenizers::AddedToken::from(format!("<extra_{i}>"), true))
        .collect();
    tok.add_special_tokens(extra).unwrap();
    tok.save(dir.path().join("big.json"), false).unwrap();
    let base = "source = { text = { path = \"c.txt\" } }\ntokenizer = { path = \"big.json\" }\nsplit = { valid_fraction = 0.0 }\n";
    let err = prep(
        &format!("{base}token_dtype = \"u16\""),
        dir.path(),
        &dir.path().join("o2"),
        1,
    )
    .unwrap_err();
    assert!(
        matches!(err, DataError::VocabTooLarge { dtype: "u16", .. }),
        "{err:?}"
    );
    prep(base, dir.path(), &dir.path().join("o3"), 1).unwrap();
    let data = ropelens::data::PreparedData::open(&dir.path().join("o3")).unwrap();
    assert_eq!(data.manifest.token_dtype, ropelens::data::Dtype::U32);
    assert!(data.vocab_size() > 66000);
}

#[test]
fn unknown_keys_and_bad_values_are_refused() {
    let err = toml::from_str::<DataPrepParams>("sorce = { synthetic = {} }").unwrap_err();
    assert!(err.to_string().contains("unknown field `sorce`"), "{err}");
    let err =
        toml::from_str::<DataPrepParams>("source = { synthetic = { document = 3 } }").unwrap_err();
    assert!(
        err.to_string().contains("unknown field `document`"),
        "{err}"
    );
    let p: DataPrepParams = toml::from_str("split = { valid_fraction = 1.5 }").unwrap();
    assert_eq!(
        p.validate().unwrap_err().to_string(),
        "invalid parameter `split.valid_fraction`: 1.5 is not in [0, 1]"
    );
    let dir = tempfile::tempdir().unwrap();
    let err = super::prep_from(
        "tokenizer = { from = \"model\" }",
        dir.path(),
        &dir.path().join("out"),
        1,
        None,
    )
    .unwrap_err();
    assert!(err.to_string().contains("tokenizer.from"), "{err}");
}

#[test]
fn parameters_have_a_json_schema_and_round_trip_through_json() {
    let schema = serde_json::to_value(schemars::schema_for!(DataPrepParams)).unwrap();
    let props = schema["properties"].as_object().unwrap();
    for key in [
        "source",
        "tokenizer",
        "filter",
        "split",
        "haystack",
        "add_bos",
        "token_dtype",
    ] {
        assert!(props.contains_key(key), "{key}");
    }
    assert_eq!(
        schema["additionalProperties"],
        serde_json::Value::Bool(false)
    );
    let p = DataPrepParams::default();
    let json = serde_json::to_string(&p).unwrap();
    assert_eq!(serde_json::from_str::<DataPrepParams>(&json).unwrap(), p);
    let q: DataPrepParams = toml::from_str(
        r#"
source = { jsonl = { path = "d/*.jsonl.zst" } }
tokenizer = { path = "tok/tokenizer.json" }
haystack = { filler = "repeat", passkey = { instruction = "", needle = " key {value}.", question = " key?", answer = " {value}", value_digits = 4, spaced_digits = false, keys = "words" } }
"#,
    )
    .unwrap();
    assert_eq!(
        serde_json::from_str::<DataPrepParams>(&serde_json::to_string(&q).unwrap()).unwrap(),
        q
    );
}
