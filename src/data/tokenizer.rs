//! Tokenizers: loading any Hugging Face tokenizer.json, training a byte-level BPE on the training
//! split, deciding BOS/EOS explicitly, and encoding pieces so that token sequences can be
//! assembled exactly (haystacks) without stray special tokens.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{
    AddedToken, DecoderWrapper, NormalizerWrapper, PostProcessorWrapper, PreTokenizerWrapper,
    Tokenizer, TokenizerImpl,
};

use super::error::DataError;
use super::params::BpeParams;
use super::synthetic::MarkSpan;

/// The BOS/EOS decision of a prepared data set, recorded in data.json.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpecialTokens {
    pub bos_token: Option<String>,
    pub bos_id: Option<u32>,
    pub eos_token: Option<String>,
    pub eos_id: Option<u32>,
    /// Every document in the shards starts with `bos_id`.
    pub add_bos: bool,
    /// Every document in the shards ends with `eos_id`.
    pub add_eos: bool,
}

const BOS_NAMES: [&str; 4] = ["<s>", "<|begin_of_text|>", "<bos>", "<|startoftext|>"];
const EOS_NAMES: [&str; 4] = ["</s>", "<|end_of_text|>", "<|endoftext|>", "<eos>"];

/// Loads a tokenizer.json, with an error naming the file when it does not parse.
pub fn load_tokenizer(path: &Path) -> Result<Tokenizer, DataError> {
    let bytes = std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => DataError::NotFound {
            path: path.to_path_buf(),
        },
        _ => DataError::io(path, e),
    })?;
    let mut tokenizer = Tokenizer::from_bytes(&bytes).map_err(|e| DataError::TokenizerParse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    widen_cache(&mut tokenizer);
    Ok(tokenizer)
}

/// Words cached per thread by BPE/Unigram models after `widen_cache`.
pub const WORD_CACHE_CAPACITY: usize = 1 << 18;

/// Raises the model's word cache from the library's 10,000 entries (which fill up and then
/// stop caching, so every rarer word is merged again) to [`WORD_CACHE_CAPACITY`].
pub fn widen_cache(tokenizer: &mut Tokenizer) {
    let mut model = tokenizer.get_model().clone();
    model.resize_cache(WORD_CACHE_CAPACITY);
    tokenizer.with_model(model);
}

/// The tokenizer.json of an upstream stage's output: in `dir` itself or one level below.
pub fn find_tokenizer_json(dir: &Path) -> Result<PathBuf, DataError> {
    let direct = dir.join("tokenizer.json");
    if direct.is_file() {
        return Ok(direct);
    }
    let mut found = vec![];
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path().join("tokenizer.json");
            if p.is_file() {
                found.push(p);
            }
        }
    }
    found.sort();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(DataError::NotFound { path: direct }),
        _ => Err(DataError::Format {
            path: dir.to_path_buf(),
            message: format!(
                "several tokenizer.json files: {}",
                found
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }),
    }
}

/// Trains a byte-level BPE (GPT-2 style pre-tokenization, prefix space added so that a word is
/// the same token at the start of a text and inside it). Deterministic for the same texts.
/// `bos`/`eos` are added to the special tokens when missing; when `add_bos`, the saved tokenizer's
/// post-processor prepends BOS (so `encode(.., true)` matches the shards).
pub fn train_bpe<S: AsRef<str> + Send + Sync>(
    texts: &[S],
    params: &BpeParams,
    bos: &str,
    eos: &str,
    add_bos: bool,
) -> Result<Tokenizer, DataError> {
    let mut specials = params.special_tokens.clone();
    for t in [bos, eos] {
        if !specials.iter().any(|s| s == t) {
            specials.push(t.to_string());
        }
    }
    let alphabet: HashSet<char> = ByteLevel::alphabet().into_iter().collect();
    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(params.vocab_size)
        .min_frequency(params.min_frequency)
        .special_tokens(
            specials
                .iter()
                .map(|s| AddedToken::from(s.clone(), true))
                .collect(),
        )
        .initial_alphabet(alphabet)
        .show_progress(false)
        .build();
    let mut tk: TokenizerImpl<
        BPE,
        NormalizerWrapper,
        PreTokenizerWrapper,
        PostProcessorWrapper,
        DecoderWrapper,
    > = TokenizerImpl::new(BPE::default());
    tk.with_pre_tokenizer(Some(ByteLevel::default().add_prefix_space(true)));
    tk.with_decoder(Some(ByteLevel::default()));
    tk.train(&mut trainer, texts.iter().map(|s| s.as_ref()))
        .map_err(|e| DataError::tokenizer(format!("BPE training failed: {e}")))?;
    if add_bos {
        let id = tk.token_to_id(bos).ok_or_else(|| {
            DataError::tokenizer(format!("BOS token `{bos}` missing after training"))
        })?;
        let template = TemplateProcessing::builder()
            .try_single(format!("{bos} $A"))
            .map_err(DataError::tokenizer)?
            .special_tokens(vec![(bos.to_string(), id)])
            .build()
            .map_err(DataError::tokenizer)?;
        tk.with_post_processor(Some(template));
    } else {
        tk.with_post_processor(Some(ByteLevel::default()));
    }
    let mut tokenizer: Tokenizer = tk.into();
    widen_cache(&mut tokenizer);
    Ok(tokenizer)
}

fn config_token(config: &serde_json::Value, key: &str) -> Option<String> {
    match config.get(key)? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

/// Decides BOS/EOS: explicit names first, then `tokenizer_config.json` beside the tokenizer,
/// then well-known names in the vocabulary. `add_*` default to "when the token exists"; asking
/// to add a token that does not exist is an error.
pub fn resolve_special_tokens(
    tokenizer: &Tokenizer,
    config_dir: Option<&Path>,
    bos_token: Option<&str>,
    eos_token: Option<&str>,
    add_bos: Option<bool>,
    add_eos: Option<bool>,
) -> Result<SpecialTokens, DataError> {
    let config: Option<serde_json::Value> = config_dir
        .map(|d| d.join("tokenizer_config.json"))
        .and_then(|p| std::fs::read(p).ok())
        .and_then(|b| serde_json::from_slice(&b).ok());
    let find = |explicit: Option<&str>,
                key: &str,
                names: &[&str]|
     -> Result<Option<(String, u32)>, DataError> {
        if let Some(name) = explicit {
            let id = tokenizer.token_to_id(name).ok_or_else(|| {
                DataError::tokenizer(format!(
                    "{key} `{name}` is not in the tokenizer's vocabulary"
                ))
            })?;
            return Ok(Some((name.to_string(), id)));
        }
        if let Some(name) = config.as_ref().and_then(|c| config_token(c, key))
            && let Some(id) = tokenizer.token_to_id(&name)
        {
            return Ok(Some((name, id)));
        }
        Ok(names
            .iter()
            .find_map(|n| tokenizer.token_to_id(n).map(|id| (n.to_string(), id))))
    };
    let bos = find(bos_token, "bos_token", &BOS_NAMES)?;
    let eos = find(eos_token, "eos_token", &EOS_NAMES)?;
    let add_bos = add_bos.unwrap_or(bos.is_some());
    let add_eos = add_eos.unwrap_or(eos.is_some());
    if add_bos && bos.is_none() {
        return Err(DataError::param(
            "add_bos",
            "the tokenizer has no BOS token; name it with bos_token or set add_bos = false",
        ));
    }
    if add_eos && eos.is_none() {
        return Err(DataError::param(
            "add_eos",
            "the tokenizer has no EOS token; name it with eos_token or set add_eos = false",
        ));
    }
    Ok(SpecialTokens {
        bos_token: bos.as_ref().map(|b| b.0.clone()),
        bos_id: bos.map(|b| b.1),
        eos_token: eos.as_ref().map(|e| e.0.clone()),
        eos_id: eos.map(|e| e.1),
        add_bos,
        add_eos,
    })
}

/// Token ids of a text, without special tokens (fast path, no offsets).
pub fn encode_text(tokenizer: &Tokenizer, text: &str) -> Result<Vec<u32>, DataError> {
    tokenizer
        .encode_fast(text, false)
        .map(|e| e.get_ids().to_vec())
        .map_err(DataError::tokenizer)
}

/// Token ids and per-token marks: a token is marked when its byte span overlaps a mark span.
pub fn encode_marked(
    tokenizer: &Tokenizer,
    text: &str,
    spans: &[MarkSpan],
) -> Result<(Vec<u32>, Vec<u8>), DataError> {
    let enc = tokenizer
        .encode(text, false)
        .map_err(DataError::tokenizer)?;
    let mut marks = vec![0u8; enc.len()];
    let mut s = 0;
    for (i, &(start, end)) in enc.get_offsets().iter().enumerate() {
        while s < spans.len() && spans[s].end <= start {
            s += 1;
        }
        if s < spans.len() && spans[s].start < end && start < spans[s].end {
            marks[i] = spans[s].kind;
        }
    }
    Ok((enc.get_ids().to_vec(), marks))
}

/// Token ids of `text` as it reads when it continues earlier text (e.g. " The pass key is"):
/// encoded after an anchor that is then stripped, so that tokenizers which treat the start of
/// a text specially (prefix spaces, SentencePiece's "▁") give the in-context tokens.
pub fn encode_piece(tokenizer: &Tokenizer, text: &str) -> Result<Vec<u32>, DataError> {
    if text.is_empty() {
        return Ok(vec![]);
    }
    const ANCHOR: &str = ".";
    let anchor = encode_text(tokenizer, ANCHOR)?;
    let both = encode_text(tokenizer, &format!("{ANCHOR}{text}"))?;
    if both.len() > anchor.len() && both.starts_with(&anchor) {
        Ok(both[anchor.len()..].to_vec())
    } else {
        encode_text(tokenizer, text)
    }
}
