//! `pipe bench tokenize`: how fast the data stage tokenizes text with a trained BPE, against the
//! Python `tokenizers` package on the same file, tokenizer.json and documents.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use super::error::DataError;
use super::params::BpeParams;
use super::tokenizer::{encode_text, train_bpe};
use crate::progress::Progress;

/// The Python side, kept in bench/ and written next to the corpus when run.
pub const PYTHON_SCRIPT: &str = include_str!("../../bench/tokenize_bench.py");

/// What to measure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchTokenizeParams {
    /// Size of the generated corpus.
    pub megabytes: f64,
    /// BPE vocabulary size.
    pub vocab_size: usize,
    /// Megabytes of the corpus the BPE is trained on (not timed).
    pub train_megabytes: f64,
    /// Where corpus.txt, tokenizer.json and the Python script are written.
    pub work_dir: PathBuf,
    /// A Python with `tokenizers` installed; None skips the comparison.
    pub python: Option<PathBuf>,
    /// Timed repetitions on each side; the best is kept.
    pub repeats: usize,
    pub seed: u64,
}

impl Default for BenchTokenizeParams {
    fn default() -> Self {
        BenchTokenizeParams {
            megabytes: 40.0,
            vocab_size: 8192,
            train_megabytes: 4.0,
            work_dir: std::env::temp_dir().join("ropelens-bench-tokenize"),
            python: None,
            repeats: 3,
            seed: 1234,
        }
    }
}

/// The figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchTokenizeReport {
    pub bytes: u64,
    pub documents: u64,
    pub tokens: u64,
    /// Rayon threads used by the Rust side.
    pub threads: usize,
    pub rust_seconds: f64,
    pub rust_mb_per_s: f64,
    pub python_seconds: Option<f64>,
    pub python_mb_per_s: Option<f64>,
    pub python_tokens: Option<u64>,
    /// Rust throughput / Python throughput (> 1: Rust faster).
    pub speedup_vs_python: Option<f64>,
    /// Why the Python side did not run, when it did not.
    pub python_error: Option<String>,
}

/// Pseudo-English: Zipfian made-up words (a large vocabulary, so BPE has real merges to make),
/// capitalised sentences, commas, numbers; paragraphs separated by blank lines.
pub fn generate_bench_text(bytes: usize, seed: u64) -> String {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let onsets = [
        "b", "c", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "br", "ch",
        "st", "th", "tr", "pl", "gr", "sh",
    ];
    let vowels = ["a", "e", "i", "o", "u", "ea", "ou", "ai", "y"];
    let codas = ["", "", "", "n", "r", "s", "t", "l", "nd", "ng", "st", "ck"];
    let words: Vec<String> = (0..30_000)
        .map(|_| {
            let n = rng.random_range(1..=4);
            (0..n)
                .map(|_| {
                    format!(
                        "{}{}{}",
                        onsets[rng.random_range(0..onsets.len())],
                        vowels[rng.random_range(0..vowels.len())],
                        codas[rng.random_range(0..codas.len())]
                    )
                })
                .collect()
        })
        .collect();
    let mut acc = 0.0;
    let cdf: Vec<f64> = (1..=words.len())
        .map(|r| {
            acc += 1.0 / r as f64;
            acc
        })
        .collect();
    let mut out = String::with_capacity(bytes + 1024);
    while out.len() < bytes {
        let sentences = rng.random_range(3..40);
        for s in 0..sentences {
            if s > 0 {
                out.push(' ');
            }
            let n = rng.random_range(4..25);
            for i in 0..n {
                if i > 0 {
                    out.push_str(if rng.random_range(0..12) == 0 {
                        ", "
                    } else {
                        " "
                    });
                }
                if rng.random_range(0..40) == 0 {
                    out.push_str(&rng.random_range(0..100_000).to_string());
                    continue;
                }
                let u = rng.random::<f64>() * acc;
                let w = &words[cdf.partition_point(|&c| c < u).min(words.len() - 1)];
                if i == 0 {
                    let mut c = w.chars();
                    if let Some(f) = c.next() {
                        out.extend(f.to_uppercase());
                        out.push_str(c.as_str());
                    }
                } else {
                    out.push_str(w);
                }
            }
            out.push(if rng.random_range(0..10) == 0 {
                '?'
            } else {
                '.'
            });
        }
        out.push_str("\n\n");
    }
    out
}

/// Documents of a corpus file: pieces between blank lines, empty ones dropped.
pub fn split_documents(text: &str) -> Vec<&str> {
    text.split("\n\n")
        .filter(|d| !d.trim().is_empty())
        .collect()
}

/// Tokenizes documents in parallel exactly as `prepare` does; returns the total token count.
pub fn tokenize_documents(tokenizer: &Tokenizer, docs: &[&str]) -> Result<u64, DataError> {
    docs.par_iter()
        .map(|d| encode_text(tokenizer, d).map(|ids| ids.len() as u64))
        .try_reduce(|| 0, |a, b| Ok(a + b))
}

#[derive(Deserialize)]
struct PythonResult {
    seconds: f64,
    tokens: u64,
}

/// Generates the corpus, trains the tokenizer, times Rust and (when given) Python.
pub fn bench_tokenize(
    params: &BenchTokenizeParams,
    progress: &dyn Progress,
) -> Result<BenchTokenizeReport, DataError> {
    let dir = &params.work_dir;
    std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
    progress.start("generate", 1);
    let text = generate_bench_text((params.megabytes * 1e6) as usize, params.seed);
    let text_path = dir.join("corpus.txt");
    std::fs::write(&text_path, &text).map_err(|e| DataError::io(&text_path, e))?;
    progress.advance(1);

    progress.start("train tokenizer", 1);
    let docs = split_documents(&text);
    let mut train = vec![];
    let mut size = 0usize;
    for d in &docs {
        if size as f64 >= params.train_megabytes * 1e6 {
            break;
        }
        size += d.len();
        train.push(*d);
    }
    let bpe = BpeParams {
        vocab_size: params.vocab_size,
        ..BpeParams::default()
    };
    let tok = train_bpe(&train, &bpe, "<s>", "</s>", false)?;
    let tok_path = dir.join("tokenizer.json");
    tok.save(&tok_path, false).map_err(DataError::tokenizer)?;
    // Time the tokenizer as consumers load it, from the file.
    let tok = super::tokenizer::load_tokenizer(&tok_path)?;
    progress.advance(1);

    let repeats = params.repeats.max(1);
    progress.start("tokenize (rust)", repeats as u64);
    let mut best = f64::INFINITY;
    let mut tokens = 0;
    for _ in 0..repeats {
        let t0 = Instant::now();
        tokens = tokenize_documents(&tok, &docs)?;
        best = best.min(t0.elapsed().as_secs_f64());
        progress.advance(1);
    }
    let mb = text.len() as f64 / 1e6;
    let mut report = BenchTokenizeReport {
        bytes: text.len() as u64,
        documents: docs.len() as u64,
        tokens,
        threads: rayon::current_num_threads(),
        rust_seconds: best,
        rust_mb_per_s: mb / best,
        python_seconds: None,
        python_mb_per_s: None,
        python_tokens: None,
        speedup_vs_python: None,
        python_error: None,
    };
    if let Some(python) = &params.python {
        progress.start("tokenize (python)", 1);
        let script = dir.join("tokenize_bench.py");
        std::fs::write(&script, PYTHON_SCRIPT).map_err(|e| DataError::io(&script, e))?;
        let run = Command::new(python)
            .arg(&script)
            .arg("--text")
            .arg(&text_path)
            .arg("--tokenizer")
            .arg(&tok_path)
            .arg("--repeats")
            .arg(repeats.to_string())
            .output();
        match run {
            Ok(o) if o.status.success() => {
                let line = String::from_utf8_lossy(&o.stdout);
                match serde_json::from_str::<PythonResult>(line.trim()) {
                    Ok(r) => {
                        report.python_seconds = Some(r.seconds);
                        report.python_mb_per_s = Some(mb / r.seconds);
                        report.python_tokens = Some(r.tokens);
                        report.speedup_vs_python = Some(r.seconds / best);
                    }
                    Err(e) => {
                        report.python_error =
                            Some(format!("unreadable output `{}`: {e}", line.trim()))
                    }
                }
            }
            Ok(o) => {
                report.python_error = Some(String::from_utf8_lossy(&o.stderr).trim().to_string())
            }
            Err(e) => report.python_error = Some(format!("{}: {e}", python.display())),
        }
        progress.advance(1);
    }
    Ok(report)
}
