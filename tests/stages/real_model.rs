//! `pipelines/real-model.toml`, the study on a user's own checkpoint and corpus, run end to end
//! on the tiny transformers-generated checkpoint of tests/fixtures/hf/default (L = 64) with a
//! word-level tokenizer.json written beside it and a small text corpus: every stage runs, every
//! results table reads back well formed, and the report is published. The pipeline's lengths
//! are divided by 64 (its L = 4096 becomes the fixture's 64), so the shape is the same.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use arrow::array::Array;
use ropelens::results::read_parquet;
use ropelens::tables::{
    AttentionDivergenceRow, AttentionEntropyRow, NeedleRow, PplRow, ResultRow, TrainLogRow,
    read_results,
};

use crate::runner::Project;

fn pipeline_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/real-model.toml")
}

/// Words of the corpus and of the YaRN passkey prompt, so that no prompt token is unknown.
const WORDS: &[&str] = &[
    "There",
    "is",
    "an",
    "important",
    "info",
    "hidden",
    "inside",
    "a",
    "lot",
    "of",
    "irrelevant",
    "text",
    "Find",
    "it",
    "and",
    "memorize",
    "them",
    "I",
    "will",
    "quiz",
    "you",
    "about",
    "the",
    "information",
    "there",
    "The",
    "pass",
    "key",
    "Remember",
    "What",
    "grass",
    "green",
    "sky",
    "blue",
    "sun",
    "yellow",
    "Here",
    "we",
    "go",
    "back",
    "again",
    "river",
    "stone",
    "walks",
    "under",
    "old",
    "bridge",
    "light",
    "falls",
    "on",
    "quiet",
    "town",
    "market",
    "opens",
    "early",
    "morning",
    "bread",
    "smells",
    "warm",
    "children",
    "run",
    "to",
    "school",
    "rain",
    "comes",
    "later",
    "wind",
    "turns",
    "north",
    "boats",
    "return",
    "harbor",
    "night",
    "lamps",
    "shine",
    "window",
    "cat",
    "sleeps",
    "near",
    "door",
];

/// A word-level tokenizer.json in LLaMA's id layout (`<unk>` 0, `<s>` 1, `</s>` 2), digits
/// split one per token as LLaMA's tokenizer does; 3 + 10 + 3 + WORDS ids, within the
/// fixture's vocab_size of 256.
fn tokenizer_json() -> serde_json::Value {
    let mut vocab = serde_json::Map::new();
    let specials = ["<unk>", "<s>", "</s>"];
    let digits = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];
    let punct = [".", "?", ","];
    for (id, tok) in specials
        .iter()
        .chain(&digits)
        .chain(&punct)
        .chain(WORDS)
        .enumerate()
    {
        assert!(vocab.insert(tok.to_string(), id.into()).is_none(), "{tok}");
    }
    let added: Vec<serde_json::Value> = specials
        .iter()
        .enumerate()
        .map(|(id, tok)| {
            serde_json::json!({
                "id": id, "content": tok, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true
            })
        })
        .collect();
    serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                { "type": "Whitespace" },
                { "type": "Digits", "individual_digits": true }
            ]
        },
        "post_processor": null,
        "decoder": null,
        "model": { "type": "WordLevel", "vocab": vocab, "unk_token": "<unk>" }
    })
}

/// The checkpoint directory as a user has it: config.json and model.safetensors from the
/// fixture, plus tokenizer.json and tokenizer_config.json.
pub fn checkpoint_in(p: &Project) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf/default");
    let dst = p.path().join("tiny-llama");
    std::fs::create_dir_all(&dst).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(src.join(f), dst.join(f)).unwrap();
    }
    std::fs::write(dst.join("tokenizer.json"), tokenizer_json().to_string()).unwrap();
    std::fs::write(
        dst.join("tokenizer_config.json"),
        r#"{"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": true}"#,
    )
    .unwrap();
    // The tokenizer loads, and every id fits the model's embedding.
    let tok = ropelens::data::tokenizer::load_tokenizer(&dst.join("tokenizer.json")).unwrap();
    assert!(tok.get_vocab_size(true) <= 256);
    dst
}

/// A corpus directory: one document per file, sentences of the words above with numbers.
pub fn corpus_in(p: &Project) -> PathBuf {
    let dir = p.path().join("corpus");
    std::fs::create_dir_all(&dir).unwrap();
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = |n: usize| {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((state >> 33) % n as u64) as usize
    };
    for doc in 0..24 {
        let words = 300 + next(200);
        let mut text = String::new();
        let mut count = 0;
        while count < words {
            let len = 4 + next(8);
            for i in 0..len {
                if i > 0 {
                    text.push(' ');
                }
                if next(10) == 0 {
                    text.push_str(&next(1000).to_string());
                } else {
                    text.push_str(WORDS[next(WORDS.len())]);
                }
            }
            text.push_str(if next(6) == 0 { "? " } else { ". " });
            count += len;
        }
        std::fs::write(dir.join(format!("doc-{doc:02}.txt")), text.trim_end()).unwrap();
    }
    dir
}

/// The pipeline at toy size: each length of the file divided by 64 (the needle's excepted), one
/// trial per needle cell, two optimiser steps per fine-tune.
const SHRINK: &[&str] = &[
    "stages.data.split.valid_documents=4",
    "stages.data.split.valid_min_tokens=256",
    "stages.extend.train.seq_len=32",
    "stages.extend.train.steps=2",
    "stages.extend.train.val_every=1",
    "stages.ppl.lengths=[32, 64, 128]",
    "stages.ppl_base.lengths=[32, 64, 128]",
    // The YaRN passkey prompt with its answer is 69 tokens here: the haystack must hold it.
    "stages.needle.lengths=[96, 128]",
    "stages.needle.depths=[0.0, 1.0]",
    "stages.needle.trials=1",
    "stages.needle_base.lengths=[96, 128]",
    "stages.needle_base.depths=[0.0, 1.0]",
    "stages.needle_base.trials=1",
    "stages.attn.lengths=[32, 64, 128]",
    "stages.attn.windows=1",
    "stages.attn_base.lengths=[32, 64, 128]",
    "stages.attn_base.windows=1",
    "stages.report.pretrained_length=64",
];

const METHODS: [&str; 4] = ["plain", "pi", "ntk", "yarn"];

/// The `rope` matrix value of a row (the extension's name); None for the base model's stages.
fn rope<T>(r: &ResultRow<T>) -> Option<&str> {
    r.matrix
        .iter()
        .find(|(k, _)| k == "rope")
        .and_then(|(_, v)| v.as_str())
}

/// Instances of a table, and that the base's stage and every extension are among them.
fn instances<T>(rows: &[ResultRow<T>], base_stage: &str, stage: &str) -> BTreeSet<String> {
    let got: BTreeSet<String> = rows.iter().map(|r| r.instance.clone()).collect();
    let mut want: BTreeSet<String> = METHODS.iter().map(|m| format!("{stage}@{m}")).collect();
    want.insert(base_stage.to_string());
    assert_eq!(got, want);
    for r in rows {
        match r.stage.as_str() {
            s if s == base_stage => assert_eq!(rope(r), None, "{}", r.instance),
            s if s == stage => assert_eq!(
                rope(r),
                r.instance.split_once('@').map(|(_, m)| m),
                "{}",
                r.instance
            ),
            s => panic!("unexpected stage {s}"),
        }
    }
    got
}

#[test]
fn the_real_model_pipeline_runs_on_a_tiny_checkpoint_and_corpus() {
    let p = Project::new();
    let ckpt = checkpoint_in(&p);
    let corpus = corpus_in(&p);
    let file = pipeline_file();
    let model_set = format!("stages.model.path={}", ckpt.display());
    let corpus_set = format!("stages.data.source.text.path={}", corpus.display());
    let mut args = vec![
        "run",
        file.to_str().unwrap(),
        "--set",
        &model_set,
        "--set",
        &corpus_set,
    ];
    for s in SHRINK {
        args.extend(["--set", s]);
    }
    let log = p.ok(&args);
    assert!(log.contains("22 built, 0 cached"), "{log}");
    let results = p.path().join("results/real-model");

    // Every instance of the file ran: the import, the data, four fine-tunes, fifteen
    // evaluations and the report.
    let (schema, batches) = read_parquet(&results.join("runs.parquet")).unwrap();
    let runs = arrow::compute::concat_batches(&schema, &batches).unwrap();
    let column = |name: &str| -> Vec<String> {
        let a = runs.column_by_name(name).unwrap();
        let a = arrow::array::cast::as_string_array(a);
        (0..a.len()).map(|i| a.value(i).to_string()).collect()
    };
    let statuses = column("status");
    let run_instances: BTreeSet<String> = column("instance").into_iter().collect();
    assert_eq!(runs.num_rows(), 22, "{run_instances:?}");
    assert!(statuses.iter().all(|s| s == "built"), "{statuses:?}");
    for stage in [
        "model",
        "data",
        "ppl_base",
        "needle_base",
        "attn_base",
        "report",
    ] {
        assert!(run_instances.contains(stage), "{stage}: {run_instances:?}");
    }
    for stage in ["extend", "ppl", "needle", "attn"] {
        for m in METHODS {
            let i = format!("{stage}@{m}");
            assert!(run_instances.contains(&i), "{i}: {run_instances:?}");
        }
    }

    super::assert_study_tables(&results);

    // The data was tokenized with the checkpoint's own tokenizer (a BPE trained here would
    // have at least 300 tokens).
    let vocab = super::data_stats_vocab(&results);
    assert_eq!(vocab.len(), 2);
    assert!(
        vocab.iter().all(|(_, v)| *v == 16 + WORDS.len() as i64),
        "{vocab:?}"
    );

    // Four fine-tunes from the checkpoint at seq_len 32 (L/2), every loss finite.
    let train = read_results::<TrainLogRow>(&results.join("train_log.parquet")).unwrap();
    let trained: BTreeSet<&str> = train.iter().map(|r| r.instance.as_str()).collect();
    assert_eq!(trained.len(), 4, "{trained:?}");
    assert!(
        train
            .iter()
            .all(|r| r.row.seq_len == 32 && r.row.loss.is_finite() && r.row.loss > 0.0)
    );
    assert!(train.iter().any(|r| r.row.step == 2));

    // Perplexity of the base and the four extensions at L/2, L and 2L.
    let ppl = read_results::<PplRow>(&results.join("ppl.parquet")).unwrap();
    for inst in instances(&ppl, "ppl_base", "ppl") {
        let lengths: BTreeSet<i64> = ppl
            .iter()
            .filter(|r| r.instance == inst)
            .map(|r| r.row.length)
            .collect();
        assert_eq!(lengths, BTreeSet::from([32, 64, 128]), "{inst}");
    }
    assert!(ppl.iter().all(|r| r.row.tokens > 0
        && r.row.nll.is_finite()
        && r.row.ppl.is_finite()
        && r.row.mode == "truncate"
        && r.row.recall_tokens == 0));
    // At most 4 documents per length and model.
    assert!(
        ppl.len() <= 5 * 3 * 4 && ppl.len() >= 5 * 3,
        "{}",
        ppl.len()
    );

    // 5 models x 2 lengths x 2 depths x 1 trial of the YaRN-format passkey.
    let needle = read_results::<NeedleRow>(&results.join("needle.parquet")).unwrap();
    assert_eq!(needle.len(), 20);
    instances(&needle, "needle_base", "needle");
    for r in &needle {
        assert_eq!(r.row.task, "passkey");
        assert!([96, 128].contains(&r.row.length));
        assert_eq!(r.row.expected.trim().len(), 5, "{:?}", r.row.expected);
        assert!(
            r.row
                .entropy_mean
                .is_some_and(|e| e.is_finite() && e >= 0.0)
        );
        assert!((0.0..=1.0).contains(&r.row.overlap));
    }

    // Attention entropy of every model at every length, within [0, ln(length)].
    let entropy =
        read_results::<AttentionEntropyRow>(&results.join("attention_entropy.parquet")).unwrap();
    instances(&entropy, "attn_base", "attn");
    assert!(entropy.iter().all(|r| {
        let e = r.row.entropy_mean;
        e.is_finite() && e >= -1e-6 && e <= (r.row.length as f64).ln() + 1e-6
    }));

    // JS divergence against the checkpoint at its L = 64: one row per model and length; the base
    // against itself at L is 0.
    let js = read_results::<AttentionDivergenceRow>(&results.join("attention_divergence.parquet"))
        .unwrap();
    assert_eq!(js.len(), 5 * 3);
    instances(&js, "attn_base", "attn");
    for r in &js {
        assert_eq!(r.row.reference_length, 64);
        assert!(r.row.js_nats.is_finite());
        assert!((-1e-9..=std::f64::consts::LN_2 + 1e-9).contains(&r.row.js_nats));
        if r.instance == "attn_base" && r.row.length == 64 {
            assert!(r.row.js_nats.abs() < 1e-9, "{}", r.row.js_nats);
        }
    }

    // The report and its figures are published; the pretrained length is the one given.
    let report = std::fs::read_to_string(results.join("report.md")).unwrap();
    assert!(report.contains("## Findings"), "{report}");
    assert!(report.contains("Pretrained length: 64 tokens"), "{report}");
    assert!(report.contains("pretrained (no extension)"), "{report}");
    let figures: Vec<String> = std::fs::read_dir(&results)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".png"))
        .collect();
    assert!(figures.len() >= 5, "{figures:?}");
    for f in &figures {
        assert!(
            report.contains(f.as_str()),
            "{f} is not linked from report.md"
        );
    }

    // A second run builds nothing.
    let again = p.ok(&args);
    assert!(again.contains("0 built"), "{again}");
}

#[test]
fn the_real_model_pipeline_without_its_paths_names_the_keys_to_set() {
    let p = Project::new();
    let file = pipeline_file();
    let file = file.to_str().unwrap();
    // Neither path: both keys are named, with their `--set` form, and nothing runs.
    let err = p.fail(&["run", file]);
    assert!(err.contains("`stages.model.path`"), "{err}");
    assert!(err.contains("--set stages.model.path=VALUE"), "{err}");
    assert!(err.contains("`stages.data.source.text.path`"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(!p.cache().exists(), "something ran");

    // The corpus given, the model not: the model's key alone.
    let corpus = corpus_in(&p);
    let set = format!("stages.data.source.text.path={}", corpus.display());
    let err = p.fail(&["run", file, "--set", &set]);
    assert!(err.contains("real-model.toml:"), "{err}");
    assert!(
        err.contains("`stages.model.path`: required but not given"),
        "{err}"
    );
    assert!(!err.contains("source.text.path"), "{err}");
    assert!(!p.cache().exists(), "something ran");

    // `pipe validate` says the same.
    let err = p.fail(&["validate", file, "--set", &set]);
    assert!(err.contains("`stages.model.path`"), "{err}");
}
