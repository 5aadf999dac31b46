//! A Hugging Face `tokenizer.json` (and `tokenizer_config.json`) from a GGUF file's
//! `tokenizer.ggml.*` metadata, for the two kinds LLaMA-family GGUF files carry:
//!
//! - `gpt2`: byte-level BPE (`tokens` already in byte-level form, `merges`), with the
//!   pre-tokenizer llama.cpp names in `tokenizer.ggml.pre` (`default`/`gpt-2`, `smollm`: digits
//!   split one by one, `llama-bpe`: Llama 3's split regex);
//! - `llama`: SentencePiece BPE (`tokens` with `▁`, `scores`, byte tokens `<0xNN>`), rebuilt as
//!   transformers' GGUF conversion does: merges from the vocabulary ordered by score, byte
//!   fallback, Metaspace (`▁` for spaces, one in front unless the text starts with a space).
//!
//! Token types (1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte) make control
//! and user-defined tokens added tokens, so they are never split.

use std::collections::HashMap;

use serde_json::{Value, json};

use super::file::{GgufFile, MetaValue};

/// A tokenizer built from the metadata.
pub struct GgufTokenizer {
    /// tokenizer.json.
    pub tokenizer: Value,
    /// tokenizer_config.json: `bos_token`, `eos_token`, `add_bos_token`, `add_eos_token`,
    /// `chat_template` when the GGUF has them.
    pub config: Value,
}

const CONTROL: i128 = 3;
const USER_DEFINED: i128 = 4;

fn strings(f: &GgufFile, key: &str) -> Result<Vec<String>, String> {
    f.get(key)
        .and_then(MetaValue::as_array)
        .ok_or_else(|| format!("`{key}` is missing (a list of strings)"))?
        .iter()
        .map(|v| {
            v.as_str()
                .map(str::to_string)
                .ok_or_else(|| format!("`{key}` holds a value that is not a string"))
        })
        .collect()
}

fn token_id(f: &GgufFile, key: &str, n: usize) -> Option<usize> {
    f.get(key)
        .and_then(MetaValue::as_u64)
        .map(|v| v as usize)
        .filter(|&v| v < n)
}

/// Build the tokenizer, or say why not (the message names the metadata key).
pub fn tokenizer_from_gguf(f: &GgufFile) -> Result<GgufTokenizer, String> {
    let kind = f
        .get("tokenizer.ggml.model")
        .and_then(MetaValue::as_str)
        .ok_or("`tokenizer.ggml.model` is missing")?;
    let tokens = strings(f, "tokenizer.ggml.tokens")?;
    let n = tokens.len();
    let types: Vec<i128> = match f.get("tokenizer.ggml.token_type") {
        Some(MetaValue::Array(a)) => a
            .iter()
            .map(|v| match v {
                MetaValue::Int(i) => *i,
                _ => 1,
            })
            .collect(),
        _ => vec![1; n],
    };
    let bos = token_id(f, "tokenizer.ggml.bos_token_id", n);
    let eos = token_id(f, "tokenizer.ggml.eos_token_id", n);
    let unk = token_id(f, "tokenizer.ggml.unknown_token_id", n);
    let flag = |k: &str| f.get(k).and_then(MetaValue::as_bool);
    let add_bos = flag("tokenizer.ggml.add_bos_token");
    let add_eos = flag("tokenizer.ggml.add_eos_token");

    let added: Vec<Value> = tokens
        .iter()
        .enumerate()
        .filter(|(i, _)| matches!(types.get(*i), Some(&CONTROL) | Some(&USER_DEFINED)))
        .map(|(i, t)| {
            json!({"id": i, "content": t, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": types[i] == CONTROL})
        })
        .collect();
    let vocab: serde_json::Map<String, Value> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), json!(i)))
        .collect();
    // BOS in front when the GGUF says so, as transformers' converters do.
    let post_processor = match (add_bos.unwrap_or(kind == "llama"), bos) {
        (true, Some(b)) => {
            let bos_tok = &tokens[b];
            json!({"type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": bos_tok, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": bos_tok, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                         {"SpecialToken": {"id": bos_tok, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {bos_tok.clone(): {"id": bos_tok, "ids": [b], "tokens": [bos_tok]}}})
        }
        _ => Value::Null,
    };

    let (model, normalizer, pre_tokenizer, decoder) = match kind {
        "gpt2" => {
            let merges = strings(f, "tokenizer.ggml.merges")?;
            let pre = f
                .get("tokenizer.ggml.pre")
                .and_then(MetaValue::as_str)
                .unwrap_or("default");
            let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
            let pre_tokenizer = match pre {
                "default" | "gpt-2" | "gpt2" => byte_level(true),
                "smollm" => json!({"type": "Sequence", "pretokenizers": [
                    {"type": "Digits", "individual_digits": true}, byte_level(true)]}),
                "llama-bpe" | "llama3" => json!({"type": "Sequence", "pretokenizers": [
                    {"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT}, "behavior": "Isolated", "invert": false},
                    byte_level(false)]}),
                other => {
                    return Err(format!(
                        "`tokenizer.ggml.pre` = `{other}` is not a pre-tokenizer ropelens knows (default, gpt-2, smollm, llama-bpe)"
                    ));
                }
            };
            let model = json!({"type": "BPE", "dropout": null, "unk_token": null,
                "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": false,
                "byte_fallback": false, "ignore_merges": pre == "llama-bpe", "vocab": vocab, "merges": merges});
            let decoder = json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true});
            (model, Value::Null, pre_tokenizer, decoder)
        }
        "llama" => {
            let scores: Vec<f64> = match f.get("tokenizer.ggml.scores") {
                Some(MetaValue::Array(a)) => a.iter().map(|v| v.as_f64().unwrap_or(0.0)).collect(),
                _ => return Err("`tokenizer.ggml.scores` is missing (a list of numbers)".into()),
            };
            if scores.len() != n {
                return Err(format!(
                    "`tokenizer.ggml.scores` has {} entries for {n} tokens",
                    scores.len()
                ));
            }
            let merges = spm_merges(&tokens, &scores);
            let model = json!({"type": "BPE", "dropout": null,
                "unk_token": unk.map(|u| tokens[u].clone()),
                "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": true,
                "byte_fallback": true, "ignore_merges": false, "vocab": vocab, "merges": merges});
            // Spaces become `▁`, and one `▁` goes in front unless the text starts with a space
            // (transformers' Llama tokenizer: Metaspace, prepend_scheme "first").
            let pre = json!({"type": "Metaspace", "replacement": "\u{2581}",
                "prepend_scheme": "first", "split": false});
            let decoder = json!({"type": "Sequence", "decoders": [
                {"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "},
                {"type": "ByteFallback"}, {"type": "Fuse"},
                {"type": "Strip", "content": " ", "start": 1, "stop": 0}]});
            (model, Value::Null, pre, decoder)
        }
        other => {
            return Err(format!(
                "`tokenizer.ggml.model` = `{other}` is not supported (gpt2, llama)"
            ));
        }
    };
    let tokenizer = json!({"version": "1.0", "truncation": null, "padding": null,
        "added_tokens": added, "normalizer": normalizer, "pre_tokenizer": pre_tokenizer,
        "post_processor": post_processor, "decoder": decoder, "model": model});
    let mut config = serde_json::Map::new();
    if let Some(b) = bos {
        config.insert("bos_token".into(), json!(tokens[b]));
    }
    if let Some(e) = eos {
        config.insert("eos_token".into(), json!(tokens[e]));
    }
    if let Some(u) = unk {
        config.insert("unk_token".into(), json!(tokens[u]));
    }
    if let Some(a) = add_bos {
        config.insert("add_bos_token".into(), json!(a));
    }
    if let Some(a) = add_eos {
        config.insert("add_eos_token".into(), json!(a));
    }
    if let Some(t) = f.get("tokenizer.chat_template").and_then(MetaValue::as_str) {
        config.insert("chat_template".into(), json!(t));
    }
    Ok(GgufTokenizer {
        tokenizer,
        config: Value::Object(config),
    })
}

/// Llama 3's pre-tokenizer split (llama.cpp `llama-bpe`, transformers' tokenizer.json).
const LLAMA3_SPLIT: &str = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

/// SentencePiece merges as transformers' `SentencePieceExtractor` derives them: every split of
/// a token into two tokens of the vocabulary, per token ordered by the two ids, then all
/// ordered by the merged token's score, highest first (a stable sort).
fn spm_merges(tokens: &[String], scores: &[f64]) -> Vec<[String; 2]> {
    let ids: HashMap<&str, usize> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    let mut merges: Vec<(usize, usize, f64)> = Vec::new();
    for (t, &score) in tokens.iter().zip(scores) {
        let mut local: Vec<(usize, usize, f64)> = t
            .char_indices()
            .skip(1)
            .filter_map(|(k, _)| {
                let (l, r) = t.split_at(k);
                Some((*ids.get(l)?, *ids.get(r)?, score))
            })
            .collect();
        local.sort_by_key(|&(l, r, _)| (l, r));
        merges.extend(local);
    }
    merges.sort_by(|a, b| b.2.total_cmp(&a.2));
    merges
        .into_iter()
        .map(|(l, r, _)| [tokens[l].clone(), tokens[r].clone()])
        .collect()
}
