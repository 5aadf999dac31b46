//! Haystacks: exact lengths for every length and depth, needles where asked, answers with room,
//! no stray BOS; with the synthetic corpus and with a SentencePiece-style tokenizer on text.

use std::path::PathBuf;

use ropelens::data::bench::generate_bench_text;
use ropelens::data::{Haystack, HaystackBuilder, NeedleTask, PreparedData};
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::{
    AddedToken, DecoderWrapper, NormalizerWrapper, PostProcessorWrapper, PreTokenizerWrapper,
    TokenizerImpl,
};

use super::{prep, small_synthetic};

const DEPTHS: [f64; 11] = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0];

fn check(b: &HaystackBuilder, data: &PreparedData, h: &Haystack, length: usize) {
    let tok = &data.tokenizer;
    assert_eq!(
        h.input_ids.len() + h.answer_ids.len(),
        length,
        "{:?} at {} depth {}",
        h.task,
        length,
        h.depth
    );
    let bos = data.special().bos_id.unwrap();
    assert_eq!(h.input_ids[0], bos);
    assert!(!h.input_ids[1..].contains(&bos), "stray BOS");
    assert!(
        !h.input_ids.contains(&data.special().eos_id.unwrap()),
        "EOS inside"
    );
    let t = b.template(h.task);
    let needle = tok
        .decode(
            &h.input_ids[h.needle_pos..h.needle_pos + h.needle_len],
            false,
        )
        .unwrap();
    if !h.value.is_empty() {
        assert!(needle.contains(&h.value), "{needle:?} lacks {:?}", h.value);
        assert!(h.answer.contains(&h.value));
    }
    if !h.key.is_empty() {
        assert!(needle.contains(&h.key));
    }
    let answer = tok.decode(&h.answer_ids, false).unwrap();
    assert_eq!(answer.trim(), h.answer.trim());
    let question =
        ropelens::data::tokenizer::encode_piece(tok, &t.question.replace("{key}", &h.key)).unwrap();
    assert!(h.input_ids.ends_with(&question));
}

#[test]
fn synthetic_haystacks_are_exact_over_a_grid() {
    let data = PreparedData::open(small_synthetic()).unwrap();
    let b = data.haystacks().unwrap();
    for task in [NeedleTask::Passkey, NeedleTask::Niah, NeedleTask::Multikey] {
        let t = b.template(task).clone();
        for length in [64, 100, 128, 256, 333, 512, 1024, 2048] {
            for (i, &depth) in DEPTHS.iter().enumerate() {
                let h = b.build(task, length, depth, i as u64).unwrap();
                check(&b, &data, &h, length);
                if depth == 0.0 {
                    assert_eq!(h.needle_pos, 1, "depth 0: right after BOS (no instruction)");
                    assert_eq!(h.actual_depth, 0.0);
                }
                let question = ropelens::data::tokenizer::encode_piece(
                    &data.tokenizer,
                    &t.question.replace("{key}", &h.key),
                )
                .unwrap();
                if depth == 1.0 {
                    assert_eq!(
                        h.needle_pos + h.needle_len,
                        h.input_ids.len() - question.len(),
                        "depth 1: just before the question"
                    );
                    assert_eq!(h.actual_depth, 1.0);
                }
                assert!(h.actual_depth <= depth + 1e-9);
            }
        }
    }
    // The corpus's own passkey form, word for word.
    let h = b.build(NeedleTask::Passkey, 128, 0.5, 3).unwrap();
    let text = data.tokenizer.decode(&h.input_ids, true).unwrap();
    assert!(
        text.trim_end()
            .ends_with("what is the pass key ? the pass key is"),
        "{text}"
    );
    assert!(text.contains(&format!("the pass key is {} .", h.value)));
    assert_eq!(h.value.split(' ').count(), 5);
    assert_eq!(h.answer_ids.len(), 5);
    // Deterministic in (task, length, depth, seed).
    assert_eq!(h, b.build(NeedleTask::Passkey, 128, 0.5, 3).unwrap());
    assert_ne!(
        h.input_ids,
        b.build(NeedleTask::Passkey, 128, 0.5, 4).unwrap().input_ids
    );
    let err = b.build(NeedleTask::Passkey, 20, 0.5, 1).unwrap_err();
    assert!(err.to_string().contains("too short"), "{err}");
}

/// A SentencePiece-style (Metaspace, prefix "▁" at the start only) BPE tokenizer, as LLaMA-family
/// tokenizer.json files are, trained on English-like text.
fn sentencepiece_tokenizer(dir: &std::path::Path, text: &str) -> PathBuf {
    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(3000)
        .min_frequency(2)
        .special_tokens(vec![
            AddedToken::from("<unk>", true),
            AddedToken::from("<s>", true),
            AddedToken::from("</s>", true),
        ])
        .initial_alphabet((' '..='~').collect())
        .show_progress(false)
        .build();
    let mut tk: TokenizerImpl<
        BPE,
        NormalizerWrapper,
        PreTokenizerWrapper,
        PostProcessorWrapper,
        DecoderWrapper,
    > = TokenizerImpl::new(BPE::builder().unk_token("<unk>".into()).build().unwrap());
    tk.with_pre_tokenizer(Some(Metaspace::new('▁', PrependScheme::First, true)));
    tk.with_decoder(Some(Metaspace::new('▁', PrependScheme::First, true)));
    let docs: Vec<&str> = text.split("\n\n").collect();
    tk.train(&mut trainer, docs.iter().copied()).unwrap();
    let t: tokenizers::Tokenizer = tk.into();
    let path = dir.join("sp/tokenizer.json");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    t.save(&path, false).unwrap();
    std::fs::write(
        dir.join("sp/tokenizer_config.json"),
        r#"{"bos_token": "<s>", "eos_token": {"content": "</s>"}}"#,
    )
    .unwrap();
    path
}

#[test]
fn text_haystacks_with_a_sentencepiece_tokenizer() {
    let dir = tempfile::tempdir().unwrap();
    let text = generate_bench_text(400_000, 5);
    std::fs::write(dir.path().join("corpus.txt"), &text).unwrap();
    sentencepiece_tokenizer(dir.path(), &text);
    let out = dir.path().join("out");
    let toml = r#"
source = { text = { path = "corpus.txt", separator = "\n\n" } }
tokenizer = { path = "sp/tokenizer.json" }
split = { valid_documents = 20 }
"#;
    prep(toml, dir.path(), &out, 1).unwrap();
    let data = PreparedData::open(&out).unwrap();
    assert_eq!(data.special().bos_token.as_deref(), Some("<s>"));
    let b = data.haystacks().unwrap();
    assert_eq!(b.style().filler, ropelens::data::FillerKind::Validation);
    for task in [NeedleTask::Passkey, NeedleTask::Niah, NeedleTask::Multikey] {
        let lengths: &[usize] = if task == NeedleTask::Multikey {
            &[512, 700, 1000, 2048, 4096]
        } else {
            &[200, 256, 300, 512, 1000, 2048, 4096]
        };
        for &length in lengths {
            for (i, &depth) in DEPTHS.iter().enumerate() {
                let h = b.build(task, length, depth, i as u64).unwrap();
                check(&b, &data, &h, length);
                let t = b.template(task);
                let instr = ropelens::data::tokenizer::encode_text(
                    &data.tokenizer,
                    &t.instruction.replace("{key}", &h.key),
                )
                .unwrap();
                if depth == 0.0 {
                    assert_eq!(h.needle_pos, 1 + instr.len());
                } else if depth < 1.0 && task == NeedleTask::Niah {
                    // Moved back to a sentence end.
                    let prev = data
                        .tokenizer
                        .decode(&[h.input_ids[h.needle_pos - 1]], false)
                        .unwrap();
                    assert!(
                        h.needle_pos == 1 + instr.len()
                            || prev.trim_end().ends_with(['.', '?', '!']),
                        "{prev:?}"
                    );
                }
            }
        }
    }
    // YaRN's passkey text; RULER's multikey asks for one of several keys.
    let h = b.build(NeedleTask::Passkey, 512, 0.3, 1).unwrap();
    let s = data.tokenizer.decode(&h.input_ids, true).unwrap();
    assert!(
        s.contains(&format!(
            "The pass key is {0}. Remember it. {0} is the pass key.",
            h.value
        )),
        "{s}"
    );
    assert!(s.starts_with("There is an important info hidden"));
    assert!(s.ends_with("What is the pass key? The pass key is"));
    let h = b.build(NeedleTask::Multikey, 1024, 0.5, 2).unwrap();
    let s = data.tokenizer.decode(&h.input_ids, true).unwrap();
    assert_eq!(s.matches("One of the special magic numbers for").count(), 4);
    assert!(s.ends_with(&format!(
        "The special magic number for {} mentioned in the provided text is",
        h.key
    )));
    assert_eq!(h.value.len(), 7);
}
