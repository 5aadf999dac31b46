//! GGUF import against gguf-py and transformers (fixtures from
//! tests/fixtures/make_gguf_fixtures.py): every tensor type dequantizes to gguf-py's values with
//! llama.cpp's q/k permutation undone, the logits of the imported model match transformers' on
//! the same dequantized weights, the rope metadata becomes the config, and both tokenizer kinds
//! encode as their references.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use burn::tensor::Device;
use ropelens::model::checkpoint::hf_tensors;
use ropelens::model::gguf::file::GgufFile;
use ropelens::model::gguf::tokenizer::tokenizer_from_gguf;
use ropelens::model::llama::to_f32_vec;
use ropelens::model::rope::Yarn;
use ropelens::model::{RopeScaling, ids_tensor, import_gguf, load_llama};

use super::fixture::{Reference, max_abs};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/gguf")
        .join(name)
}

fn reference_json() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("reference.json")).unwrap()).unwrap()
}

#[test]
fn gguf_import_dequantizes_every_type_and_matches_transformers() {
    let dir = tempfile::tempdir().unwrap();
    let info = import_gguf(&fixture("mixed.gguf"), dir.path()).unwrap();
    let c = &info.config;
    assert_eq!(
        (c.hidden_size, c.num_hidden_layers, c.num_attention_heads),
        (256, 2, 4)
    );
    assert_eq!(
        (c.num_key_value_heads, c.head_dim, c.intermediate_size),
        (2, 64, 256)
    );
    // GGUF stores the epsilon as f32.
    assert_eq!(
        (c.max_position_embeddings, c.rms_norm_eps as f32),
        (128, 1e-5)
    );
    assert!(!c.tie_word_embeddings);
    assert_eq!(c.rope.theta, 1e5);
    assert_eq!(
        c.rope.scaling,
        RopeScaling::Yarn(Yarn {
            original_max_position_embeddings: Some(64),
            ..Yarn::new(2.0)
        })
    );
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        assert!(dir.path().join(f).is_file(), "{f}");
    }

    let r = Reference::from_file(&fixture("mixed.reference.safetensors"));
    let model = load_llama(dir.path(), &Device::flex()).unwrap();
    let tensors = hf_tensors(&model);
    let types = reference_json()["types"].clone();
    let types = types.as_object().unwrap();
    assert_eq!(types.len(), tensors.len());
    let mut seen: Vec<&str> = types.values().filter_map(|t| t.as_str()).collect();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(
        seen,
        [
            "BF16", "F16", "F32", "Q4_0", "Q4_1", "Q4_K", "Q5_K", "Q6_K", "Q8_0"
        ]
    );
    for (name, ty) in types {
        let (shape, values) = &tensors[name];
        let cols = if shape.len() == 2 {
            shape[1]
        } else {
            values.len()
        };
        let rows = values.len() / cols;
        let picked: Vec<usize> = {
            let mut p: Vec<usize> = [0, 1, 33, rows - 1]
                .iter()
                .map(|&i| i.min(rows - 1))
                .collect();
            p.sort_unstable();
            p.dedup();
            p
        };
        let got: Vec<f32> = picked
            .iter()
            .flat_map(|&i| values[i * cols..(i + 1) * cols].to_vec())
            .collect();
        // The same f32 operations as gguf-py: equal values.
        let d = max_abs(&got, r.values(&format!("{name}.rows")));
        assert_eq!(d, 0.0, "{name} ({ty}): rows differ by {d:e}");
        let sum: f64 = values.iter().map(|&v| v as f64).sum();
        let want = r.values(&format!("{name}.sum"))[0];
        assert!(
            (sum - want).abs() <= 1e-9 * want.abs().max(1.0),
            "{name} ({ty}): sum {sum} vs {want}"
        );
    }

    let ids = r.ids("input_ids");
    let x = ids_tensor(&[ids], &Device::flex()).unwrap();
    let logits = to_f32_vec(model.forward(x).unwrap());
    let d = max_abs(&logits, r.values("logits"));
    assert!(d <= 1e-4, "logits differ from transformers by {d:e}");
}

#[test]
fn gguf_tokenizers_encode_as_their_references() {
    let reference = reference_json();
    let samples: Vec<&str> = reference["samples"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s.as_str())
        .collect();
    for (file, key) in [("mixed.gguf", "mixed"), ("spm.gguf", "spm")] {
        let f = GgufFile::open(&fixture(file)).unwrap();
        let built = tokenizer_from_gguf(&f).unwrap();
        let tok = tokenizers::Tokenizer::from_str(&built.tokenizer.to_string()).unwrap();
        for (text, want) in samples.iter().zip(reference[key].as_array().unwrap()) {
            let want: Vec<u32> = want
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|v| v.as_u64().map(|v| v as u32))
                .collect();
            let got = tok.encode(*text, false).unwrap().get_ids().to_vec();
            assert_eq!(got, want, "{file}: {text:?}");
        }
    }
}

#[test]
fn a_file_that_is_not_gguf_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("model.gguf");
    std::fs::write(&bad, b"GGML and then nothing").unwrap();
    let err = import_gguf(&bad, &dir.path().join("out")).unwrap_err();
    assert!(err.to_string().contains("not a GGUF file"), "{err}");
    let mut truncated = std::fs::read(fixture("mixed.gguf")).unwrap();
    truncated.truncate(100_000);
    std::fs::write(&bad, &truncated).unwrap();
    let err = import_gguf(&bad, &dir.path().join("out")).unwrap_err();
    assert!(
        err.to_string().contains("runs past the end of the file"),
        "{err}"
    );
}
