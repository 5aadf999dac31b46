//! The tokenization benchmark: the Rust side counts the same tokens as Python's `tokenizers`.

use std::path::PathBuf;

use ropelens::data::bench::{BenchTokenizeParams, bench_tokenize};
use ropelens::progress::Silent;

const VENV_PYTHON: &str = "/root/.cache/ropelens/venv/bin/python";

fn python() -> Option<PathBuf> {
    std::env::var_os("ROPELENS_BENCH_PYTHON")
        .map(PathBuf::from)
        .or_else(|| Some(PathBuf::from(VENV_PYTHON)))
        .filter(|p| p.is_file())
}

#[test]
fn bench_tokenize_small_agrees_with_python() {
    let dir = tempfile::tempdir().unwrap();
    let params = BenchTokenizeParams {
        megabytes: 1.0,
        train_megabytes: 0.5,
        vocab_size: 2000,
        work_dir: dir.path().to_path_buf(),
        python: python(),
        repeats: 1,
        ..BenchTokenizeParams::default()
    };
    let r = bench_tokenize(&params, &Silent).unwrap();
    assert!(r.bytes >= 1_000_000 && r.documents > 50);
    // Byte-level BPE with 2000 symbols on English-like text: 3-6 bytes per token.
    let bpt = r.bytes as f64 / r.tokens as f64;
    assert!((2.5..6.0).contains(&bpt), "{bpt}");
    assert!(r.rust_mb_per_s > 0.0);
    if params.python.is_some() {
        assert_eq!(r.python_error, None);
        assert_eq!(
            r.python_tokens,
            Some(r.tokens),
            "same tokenizer.json, same documents, same tokens"
        );
    }
}

/// `cargo test --release --test tests bench_tokenize_40mb -- --ignored --nocapture`:
/// the figures recorded in docs/data.md.
#[test]
#[ignore]
fn bench_tokenize_40mb() {
    let dir = tempfile::tempdir().unwrap();
    let params = BenchTokenizeParams {
        work_dir: dir.path().to_path_buf(),
        python: python(),
        ..BenchTokenizeParams::default()
    };
    let r = bench_tokenize(&params, &Silent).unwrap();
    println!("{}", serde_json::to_string_pretty(&r).unwrap());
    assert_eq!(r.python_tokens.unwrap_or(r.tokens), r.tokens);
}
