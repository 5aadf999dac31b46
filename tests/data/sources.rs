//! Each source format on small fixtures written by the tests.

use std::io::Write;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, Int64Array, LargeListArray, ListArray, RecordBatch, StringArray,
};
use arrow::datatypes::{DataType, Field, Int64Type, Schema};
use parquet::arrow::ArrowWriter;
use ropelens::data::PreparedData;
use ropelens::data::tokenizer::encode_text;

use super::prep;

const DOCS: [&str; 3] = [
    "The first document talks about rivers and bridges.",
    "A second one, about mountains; and numbers like 12345.",
    "Third: short.",
];

/// The documents of a split, decoded without BOS/EOS.
fn decoded(data: &PreparedData, split: &ropelens::data::TokenSplit) -> Vec<String> {
    (0..split.num_docs())
        .map(|i| {
            data.tokenizer
                .decode(&split.tokens(split.doc_range(i)), true)
                .unwrap()
                .trim()
                .to_string()
        })
        .collect()
}

const PLAIN: &str = r#"
shuffle = false
split = { valid_fraction = 0.0 }
tokenizer = { train_bpe = { vocab_size = 400, min_frequency = 1 } }
"#;

#[test]
fn text_file_split_on_separator() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("corpus.txt"),
        DOCS.join("\n\n\n\n") + "\n\n  \n\n",
    )
    .unwrap();
    let out = dir.path().join("out");
    let toml = format!(
        "source = {{ text = {{ path = \"corpus.txt\", separator = \"\\n\\n\" }} }}\n{PLAIN}"
    );
    let stats = prep(&toml, dir.path(), &out, 1).unwrap();
    assert_eq!(stats.splits[0].documents, 3);
    assert_eq!(stats.splits[1].documents, 0);
    let data = PreparedData::open(&out).unwrap();
    assert_eq!(decoded(&data, &data.train), DOCS);
    let bytes: usize = DOCS.iter().map(|d| d.len()).sum();
    assert_eq!(stats.splits[0].bytes, bytes as u64);
}

#[test]
fn text_directory_and_glob() {
    let dir = tempfile::tempdir().unwrap();
    let c = dir.path().join("c");
    std::fs::create_dir_all(c.join("sub")).unwrap();
    std::fs::write(c.join("a.txt"), DOCS[0]).unwrap();
    std::fs::write(c.join("b.md"), DOCS[1]).unwrap();
    std::fs::write(c.join("sub/c.txt"), DOCS[2]).unwrap();
    std::fs::write(c.join(".hidden.txt"), "never read").unwrap();
    let out = dir.path().join("o1");
    prep(
        &format!("source = {{ text = {{ path = \"c\" }} }}\n{PLAIN}"),
        dir.path(),
        &out,
        1,
    )
    .unwrap();
    let data = PreparedData::open(&out).unwrap();
    assert_eq!(decoded(&data, &data.train), DOCS);

    let out = dir.path().join("o2");
    prep(
        &format!("source = {{ text = {{ path = \"c/**/*.txt\" }} }}\n{PLAIN}"),
        dir.path(),
        &out,
        1,
    )
    .unwrap();
    let data = PreparedData::open(&out).unwrap();
    assert_eq!(decoded(&data, &data.train), vec![DOCS[0], DOCS[2]]);
    let files = ropelens::data::external_files(
        &toml::from_str("source = { text = { path = \"c/**/*.txt\" } }").unwrap(),
        dir.path(),
    );
    assert_eq!(files, vec![c.join("a.txt"), c.join("sub/c.txt")]);
}

#[test]
fn jsonl_plain_gzip_and_zstd_with_a_field_name() {
    let dir = tempfile::tempdir().unwrap();
    let j = dir.path().join("j");
    std::fs::create_dir_all(&j).unwrap();
    let line = |i: usize| {
        format!(
            "{{\"id\": {i}, \"content\": {}}}\n",
            serde_json::to_string(DOCS[i]).unwrap()
        )
    };
    std::fs::write(j.join("a.jsonl"), line(0) + "\n").unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(line(1).as_bytes()).unwrap();
    std::fs::write(j.join("b.jsonl.gz"), gz.finish().unwrap()).unwrap();
    std::fs::write(
        j.join("c.jsonl.zst"),
        zstd::encode_all(line(2).as_bytes(), 3).unwrap(),
    )
    .unwrap();
    std::fs::write(j.join("notes.txt"), "not a jsonl file").unwrap();
    let out = dir.path().join("out");
    let toml = format!("source = {{ jsonl = {{ path = \"j\", field = \"content\" }} }}\n{PLAIN}");
    prep(&toml, dir.path(), &out, 1).unwrap();
    let data = PreparedData::open(&out).unwrap();
    assert_eq!(decoded(&data, &data.train), DOCS);
}

fn write_parquet(path: &std::path::Path, batch: RecordBatch) {
    let file = std::fs::File::create(path).unwrap();
    let mut w = ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

#[test]
fn parquet_text_column() {
    let dir = tempfile::tempdir().unwrap();
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("body", DataType::Utf8, false),
    ]));
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from(vec![0, 1, 2])) as ArrayRef,
            Arc::new(StringArray::from(DOCS.to_vec())) as ArrayRef,
        ],
    )
    .unwrap();
    write_parquet(&dir.path().join("d.parquet"), batch);
    let out = dir.path().join("out");
    let toml =
        format!("source = {{ parquet = {{ path = \"d.parquet\", column = \"body\" }} }}\n{PLAIN}");
    prep(&toml, dir.path(), &out, 1).unwrap();
    let data = PreparedData::open(&out).unwrap();
    assert_eq!(decoded(&data, &data.train), DOCS);
}

#[test]
fn pretokenized_parquet_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    // A tokenizer from a first preparation, as a model stage's checkpoint would provide.
    let first = dir.path().join("first");
    std::fs::write(dir.path().join("corpus.txt"), DOCS.join("\n\n")).unwrap();
    prep(
        &format!(
            "source = {{ text = {{ path = \"corpus.txt\", separator = \"\\n\\n\" }} }}\n{PLAIN}"
        ),
        dir.path(),
        &first,
        1,
    )
    .unwrap();
    let tok = ropelens::data::tokenizer::load_tokenizer(&first.join("tokenizer.json")).unwrap();
    let ids: Vec<Vec<u32>> = DOCS.iter().map(|d| encode_text(&tok, d).unwrap()).collect();
    let bos = tok.token_to_id("<s>").unwrap();

    // input_ids as list<int64> (as Hugging Face datasets write them), the second document
    // already starting with BOS (as proofpile-test-tokenized's rows do).
    let rows: Vec<Option<Vec<Option<i64>>>> = ids
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let mut r: Vec<Option<i64>> = v.iter().map(|&x| Some(x as i64)).collect();
            if i == 1 {
                r.insert(0, Some(bos as i64));
            }
            Some(r)
        })
        .collect();
    let list = ListArray::from_iter_primitive::<Int64Type, _, _>(rows.clone());
    let schema = Arc::new(Schema::new(vec![Field::new(
        "input_ids",
        list.data_type().clone(),
        true,
    )]));
    write_parquet(
        &dir.path().join("tok.parquet"),
        RecordBatch::try_new(schema, vec![Arc::new(list)]).unwrap(),
    );

    let out = dir.path().join("out");
    let toml = r#"
source = { parquet = { path = "tok.parquet", column = "input_ids" } }
tokenizer = { path = "first/tokenizer.json" }
add_bos = true
add_eos = false
shuffle = false
split = { valid_fraction = 0.0 }
"#;
    let stats = prep(toml, dir.path(), &out, 1).unwrap();
    let data = PreparedData::open(&out).unwrap();
    assert_eq!(data.train.num_docs(), 3);
    for (i, v) in ids.iter().enumerate() {
        let mut want = vec![bos];
        want.extend(v);
        assert_eq!(
            data.train.tokens(data.train.doc_range(i)),
            want,
            "document {i}: BOS added once"
        );
    }
    assert_eq!(decoded(&data, &data.train), DOCS);
    assert_eq!(
        stats.splits[0].bytes,
        DOCS.iter().map(|d| d.len() as u64).sum::<u64>()
    );
    assert_eq!(
        std::fs::read(out.join("tokenizer.json")).unwrap(),
        std::fs::read(first.join("tokenizer.json")).unwrap()
    );

    // LargeList<int32> reads the same.
    let rows32: Vec<Option<Vec<Option<i32>>>> = ids
        .iter()
        .map(|v| Some(v.iter().map(|&x| Some(x as i32)).collect()))
        .collect();
    let list = LargeListArray::from_iter_primitive::<arrow::datatypes::Int32Type, _, _>(rows32);
    let schema = Arc::new(Schema::new(vec![Field::new(
        "input_ids",
        list.data_type().clone(),
        true,
    )]));
    write_parquet(
        &dir.path().join("tok.parquet"),
        RecordBatch::try_new(schema, vec![Arc::new(list)]).unwrap(),
    );
    let out2 = dir.path().join("out2");
    prep(
        &toml.replace("add_bos = true", "add_bos = false"),
        dir.path(),
        &out2,
        1,
    )
    .unwrap();
    let data = PreparedData::open(&out2).unwrap();
    for (i, v) in ids.iter().enumerate() {
        assert_eq!(&data.train.tokens(data.train.doc_range(i)), v);
    }
}
