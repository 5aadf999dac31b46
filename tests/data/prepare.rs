//! The prepared directory: tokenizer training, BOS/EOS, shards, samplers, eval windows, stats.

use std::fs::File;

use arrow::array::{AsArray, RecordBatchReader};
use arrow::datatypes::{Float64Type, UInt64Type};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use ropelens::data::tokenizer::encode_piece;
use ropelens::data::{PreparedData, SampleMode, SyntheticCorpus, SyntheticParams, WindowSampler};

use super::{SMALL_SYNTHETIC, prep, prep_from, small_synthetic};

#[test]
fn bpe_training_is_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("c"),
    );
    prep(SMALL_SYNTHETIC, dir.path(), &a, 11).unwrap();
    prep(SMALL_SYNTHETIC, dir.path(), &b, 11).unwrap();
    prep(SMALL_SYNTHETIC, dir.path(), &c, 12).unwrap();
    let read = |d: &std::path::Path, f: &str| std::fs::read(d.join(f)).unwrap();
    assert_eq!(read(&a, "tokenizer.json"), read(&b, "tokenizer.json"));
    assert_eq!(read(&a, "train.tokens"), read(&b, "train.tokens"));
    assert_eq!(read(&a, "valid.marks"), read(&b, "valid.marks"));
    assert_eq!(read(&a, "data.json"), read(&b, "data.json"));
    assert_ne!(read(&a, "train.tokens"), read(&c, "train.tokens"));
}

#[test]
fn synthetic_words_are_single_tokens_and_documents_carry_bos_eos() {
    let data = PreparedData::open(small_synthetic()).unwrap();
    let corpus = SyntheticCorpus::new(data.manifest.synthetic.as_ref().unwrap()).unwrap();
    for w in corpus.vocabulary() {
        let ids = encode_piece(&data.tokenizer, &format!(" {w}")).unwrap();
        assert_eq!(ids.len(), 1, "`{w}` is {ids:?}");
    }
    let s = data.special().clone();
    assert!(s.add_bos && s.add_eos);
    assert_eq!(
        (s.bos_token.as_deref(), s.eos_token.as_deref()),
        (Some("<s>"), Some("</s>"))
    );
    let (bos, eos) = (s.bos_id.unwrap(), s.eos_id.unwrap());
    for split in [&data.train, &data.valid] {
        let mut n = 0;
        for i in 0..split.num_docs() {
            let t = split.tokens(split.doc_range(i));
            assert_eq!((t[0], t[t.len() - 1]), (bos, eos));
            assert!(!t[1..t.len() - 1].contains(&bos) && !t[1..t.len() - 1].contains(&eos));
            // Word count = tokens: lengths are exact in tokens.
            assert!((64 + 2..=2048 + 2).contains(&t.len()), "{}", t.len());
            n += t.len();
        }
        assert_eq!(n, split.len());
    }
    // The saved tokenizer adds BOS itself, matching the shards.
    let e = data.tokenizer.encode("the pass key is", true).unwrap();
    assert_eq!(e.get_ids()[0], bos);
    assert_eq!(e.get_ids().len(), 5);
}

#[test]
fn validation_documents_are_long_enough() {
    let data = PreparedData::open(small_synthetic()).unwrap();
    assert_eq!(data.valid.num_docs(), 30);
    for i in 0..data.valid.num_docs() {
        assert!(data.valid.doc_range(i).len() >= 1024 + 2);
    }
    assert_eq!(data.train.num_docs() + data.valid.num_docs(), 300);
    let w = data.valid.eval_windows(1024, None);
    assert_eq!(w.len(), 30);
    for win in &w {
        assert_eq!(win.tokens.len(), 1024);
        assert_eq!(win.marks.as_ref().unwrap().len(), 1024);
        assert_eq!(win.tokens[0], data.special().bos_id.unwrap());
    }
    let long = data.valid.docs_at_least(2000);
    assert_eq!(
        data.valid.eval_windows(2000, Some(3)).len(),
        long.len().min(3)
    );
}

#[test]
fn marks_fall_on_recalled_tokens() {
    let data = PreparedData::open(small_synthetic()).unwrap();
    let split = &data.train;
    let marks = split.marks(0..split.len()).unwrap();
    let mut counts = [0usize; 4];
    for (i, &m) in marks.iter().enumerate() {
        counts[m as usize] += 1;
        if m == ropelens::data::marks::VALUE_RECALL || m == ropelens::data::marks::PASSKEY_ANSWER {
            let s = data.tokenizer.decode(&[split.token(i)], false).unwrap();
            assert!(
                s.trim().len() == 1 && s.trim().chars().all(|c| c.is_ascii_digit()),
                "{s:?}"
            );
        }
    }
    assert!(
        counts[1] > 1000 && counts[2] > 500 && counts[3] > 50,
        "{counts:?}"
    );
}

#[test]
fn sampler_is_seeded_and_resumable() {
    let data = PreparedData::open(small_synthetic()).unwrap();
    let mut a = WindowSampler::new(&data.train, 65, 99, SampleMode::Stream).unwrap();
    let mut b = WindowSampler::new(&data.train, 65, 99, SampleMode::Stream).unwrap();
    let first: Vec<Vec<u32>> = (0..5).map(|_| a.next_batch(8)).collect();
    for batch in &first {
        assert_eq!(batch, &b.next_batch(8));
        assert_eq!(batch.len(), 8 * 65);
    }
    // Save, continue, restore: the same windows.
    let state = a.state();
    let json = serde_json::to_string(&state).unwrap();
    let next = a.next_batch(8);
    let mut c = WindowSampler::restore(&data.train, serde_json::from_str(&json).unwrap()).unwrap();
    assert_eq!(c.next_batch(8), next);
    assert_eq!(c.state().position, 48);
    // Windows are contiguous slices of the stream; another seed gives other windows.
    for k in 0..20 {
        let s = a.start_of(k);
        assert_eq!(a.window_at(k), data.train.tokens(s..s + 65));
    }
    let mut d = WindowSampler::new(&data.train, 65, 100, SampleMode::Stream).unwrap();
    assert_ne!(d.next_batch(8), first[0]);
    // Document-start windows begin with BOS.
    let mut e = WindowSampler::new(&data.train, 65, 1, SampleMode::DocumentStart).unwrap();
    let bos = data.special().bos_id.unwrap();
    for _ in 0..50 {
        assert_eq!(e.next_window()[0], bos);
    }
    // Sequential windows: window i is tokens [64 i, 64 (i + 1) + 1), whatever the seed, and
    // after the last whole window the split starts over.
    let n = data.train.len();
    let whole = (n - 1) / 64;
    let mut f = WindowSampler::new(&data.train, 65, 1, SampleMode::Sequential).unwrap();
    let g = WindowSampler::new(&data.train, 65, 2, SampleMode::Sequential).unwrap();
    let batch = f.next_batch(3);
    assert_eq!(
        batch,
        data.train
            .tokens(0..65 * 3 - 2)
            .windows(65)
            .step_by(64)
            .flatten()
            .copied()
            .collect::<Vec<_>>()
    );
    assert_eq!(g.window_at(1), data.train.tokens(64..129));
    assert_eq!(f.start_of(whole as u64 - 1), 64 * (whole - 1));
    // The last whole window ends at token 64 whole + 1; one more would not fit.
    assert!(64 * whole < n && 64 * (whole + 1) + 1 > n);
    assert_eq!(f.window_at(whole as u64 + 2), f.window_at(2));
    let err =
        WindowSampler::new(&data.valid, data.valid.len() + 1, 1, SampleMode::Stream).unwrap_err();
    assert!(
        err.to_string().contains("does not fit the valid split"),
        "{err}"
    );
}

#[test]
fn data_stats_table_reads_back() {
    let out = small_synthetic();
    let data = PreparedData::open(out).unwrap();
    let file = File::open(out.join("metrics/data_stats.parquet")).unwrap();
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let names: Vec<String> = reader
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    assert_eq!(
        names,
        [
            "split",
            "documents",
            "tokens",
            "bytes",
            "tokens_per_byte",
            "min_doc_tokens",
            "median_doc_tokens",
            "max_doc_tokens",
            "vocab_size",
            "skipped_files",
            "replaced_files"
        ]
    );
    let batches: Vec<_> = reader.map(Result::unwrap).collect();
    let b = &batches[0];
    assert_eq!(b.num_rows(), 2);
    let col = |i: usize| b.column(i).as_primitive::<UInt64Type>().values().to_vec();
    let split = b.column(0).as_string::<i32>();
    assert_eq!((split.value(0), split.value(1)), ("train", "valid"));
    assert_eq!(
        col(1),
        [data.train.num_docs() as u64, data.valid.num_docs() as u64]
    );
    assert_eq!(col(2), [data.train.len() as u64, data.valid.len() as u64]);
    let lens: Vec<u64> = (0..data.valid.num_docs())
        .map(|i| data.valid.doc_range(i).len() as u64)
        .collect();
    assert_eq!(col(5)[1], *lens.iter().min().unwrap());
    assert_eq!(col(7)[1], *lens.iter().max().unwrap());
    assert_eq!(col(8), [data.vocab_size() as u64; 2]);
    // Word-level corpus: one token per word, a word plus its space is about 4-5 bytes.
    let tpb = b.column(4).as_primitive::<Float64Type>().value(0);
    assert!((0.15..0.35).contains(&tpb), "{tpb}");
    let bytes = col(3)[0] as f64;
    let content = (data.train.len() - 2 * data.train.num_docs()) as f64;
    assert!((tpb - content / bytes).abs() < 1e-12);
}

#[test]
fn tokenizer_from_an_upstream_directory() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    std::fs::create_dir_all(model.join("checkpoint")).unwrap();
    std::fs::copy(
        small_synthetic().join("tokenizer.json"),
        model.join("checkpoint/tokenizer.json"),
    )
    .unwrap();
    let toml = r#"
source = { synthetic = { documents = 40, max_tokens = 256 } }
tokenizer = { from = "model" }
split = { valid_documents = 4 }
"#;
    let out = dir.path().join("out");
    let stats = prep_from(toml, dir.path(), &out, 3, Some(model)).unwrap();
    assert_eq!(stats.splits[1].documents, 4);
    assert_eq!(
        std::fs::read(out.join("tokenizer.json")).unwrap(),
        std::fs::read(small_synthetic().join("tokenizer.json")).unwrap()
    );
    let data = PreparedData::open(&out).unwrap();
    assert_eq!(data.special().bos_token.as_deref(), Some("<s>"));
    // Generation follows the synthetic parameters: 40 documents of 64..=256 words.
    assert_eq!(data.train.num_docs() + data.valid.num_docs(), 40);
    let p = SyntheticParams::default();
    assert_eq!(p.min_tokens, 64);
}

/// The quickstart's data with every default: `cargo test --release --test tests
/// default_synthetic_prepare -- --ignored --nocapture` prints its time and stats.
#[test]
#[ignore]
fn default_synthetic_prepare() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = std::time::Instant::now();
    let stats = prep("", dir.path(), &dir.path().join("out"), 1234).unwrap();
    println!(
        "{:.1} s: {}",
        t0.elapsed().as_secs_f64(),
        serde_json::to_string_pretty(&stats).unwrap()
    );
    let data = PreparedData::open(&dir.path().join("out")).unwrap();
    let corpus = SyntheticCorpus::new(data.manifest.synthetic.as_ref().unwrap()).unwrap();
    for w in corpus.vocabulary() {
        assert_eq!(
            encode_piece(&data.tokenizer, &format!(" {w}"))
                .unwrap()
                .len(),
            1,
            "{w}"
        );
    }
}
