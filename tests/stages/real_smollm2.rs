//! A real pretrained model end to end: SmolLM2-135M-Instruct (Q4_1 GGUF) and metamath's set.mm,
//! fetched by scripts/fetch-real.sh into `ROPELENS_REAL` (default ~/.cache/ropelens/real). The
//! reference numbers (tests/fixtures/real/smollm2.json) are transformers' on the same dequantized
//! weights (tests/fixtures/make_real_reference.py). Without the files the tests pass after
//! printing why they did not run.

use std::path::PathBuf;

use ropelens::model::{GreedyOptions, greedy_decode, ids_tensor, import_gguf, load_llama};

/// The reference was made with these files (sizes checked; the token ids check the content).
const GGUF: (&str, u64) = ("SmolLM2-135M-Instruct.Q4_1.gguf", 98_362_432);
const SET_MM: (&str, u64) = ("set.mm", 41_013_180);

/// The GGUF and set.mm, or `None` after printing why the test is skipped.
pub fn real_files() -> Option<(PathBuf, PathBuf)> {
    let dir = std::env::var_os("ROPELENS_REAL")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/ropelens/real"))
        })?;
    let mut found = vec![];
    for (name, size) in [GGUF, SET_MM] {
        let path = dir.join(name);
        match std::fs::metadata(&path) {
            Ok(m) if m.len() == size => found.push(path),
            Ok(m) => {
                eprintln!(
                    "SKIPPED: {} has {} bytes, not the {size} the reference was made with",
                    path.display(),
                    m.len()
                );
                return None;
            }
            Err(_) => {
                eprintln!(
                    "SKIPPED: {} is missing (run scripts/fetch-real.sh to fetch it)",
                    path.display()
                );
                return None;
            }
        }
    }
    Some((found[0].clone(), found[1].clone()))
}

fn reference() -> serde_json::Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/real/smollm2.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .filter_map(|x| x.as_u64().map(|x| x as u32))
        .collect()
}

#[test]
fn smollm2_gguf_matches_transformers_on_set_mm() {
    let Some((gguf, set_mm)) = real_files() else {
        return;
    };
    let r = reference();
    let dir = tempfile::tempdir().unwrap();
    let info = import_gguf(&gguf, dir.path()).unwrap();
    let c = &info.config;
    assert_eq!(
        (
            c.num_hidden_layers,
            c.num_attention_heads,
            c.num_key_value_heads
        ),
        (30, 9, 3)
    );
    assert_eq!((c.hidden_size, c.vocab_size), (576, 49152));
    assert_eq!((c.rope.theta, c.max_position_embeddings), (1e5, 8192));
    assert!(c.tie_word_embeddings && c.rope.scaling.is_default());

    // The imported tokenizer splits the span as the original SmolLM2 tokenizer does.
    let tok = tokenizers::Tokenizer::from_file(dir.path().join("tokenizer.json")).unwrap();
    let span = r["span"].as_array().unwrap();
    let (a, b) = (
        span[0].as_u64().unwrap() as usize,
        span[1].as_u64().unwrap() as usize,
    );
    let bytes = std::fs::read(&set_mm).unwrap();
    let text = std::str::from_utf8(&bytes[a..b]).unwrap();
    let want = ids(&r["ids"]);
    let got = tok.encode(text, false).unwrap().get_ids()[..want.len()].to_vec();
    assert_eq!(got, want, "the set.mm span tokenizes differently");

    // Perplexity of 1024 tokens: transformers' float32 forward on the same weights.
    let device = ropelens::device::device("cpu").unwrap();
    let model = load_llama(dir.path(), &device).unwrap();
    let nll = ropelens::model::llama::to_f32_vec(
        model
            .nll(ids_tensor(&[want], &device).unwrap(), 256)
            .unwrap(),
    );
    let mean = nll.iter().map(|&x| x as f64).sum::<f64>() / nll.len() as f64;
    let expect = r["mean_nll"].as_f64().unwrap();
    assert!(
        (mean - expect).abs() < 1e-4,
        "mean NLL {mean} vs transformers {expect} (PPL {} vs {})",
        mean.exp(),
        expect.exp()
    );

    // Greedy decoding: the same tokens as transformers' generate.
    let out = greedy_decode(
        &model,
        &ids(&r["prompt_ids"]),
        &GreedyOptions {
            max_new_tokens: 8,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(out.tokens, ids(&r["greedy"]), "{:?}", r["greedy_text"]);
}
