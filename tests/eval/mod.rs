//! Evaluation library tests: perplexity against transformers' NLL, sliding vs truncate, needle
//! trials and the resumable grid, attention entropy and distance on a model with uniform
//! attention, JS divergence bounds, entropy vs error.

mod stages;

#[allow(dead_code, clippy::duplicate_mod)]
#[path = "../model/fixture.rs"]
mod fixture;

use std::cell::Cell;
use std::f64::consts::LN_2;

use burn::module::Param;
use burn::tensor::{Device, Tensor};
use ropelens::analysis::distance::DistanceProfile;
use ropelens::analysis::scoring::score_reply;
use ropelens::eval::attention::{
    DistanceResult, attention_analysis, buckets, distance_rows, divergence_row,
};
use ropelens::eval::needle::{
    DecodeSettings, EntropySpan, NeedleCell, NeedleGrid, NeedlePrompt, TrialLog, failed,
    mean_answer_entropy, run_grid, run_trial,
};
use ropelens::eval::ppl::{PplDoc, PplMode, PplOptions, evaluate_ppl};
use ropelens::model::{AttentionBlocks, Llama, load_llama};
use ropelens::progress::Silent;

use fixture::{Reference, dir};

fn opts(length: usize, mode: PplMode) -> PplOptions {
    PplOptions {
        length,
        mode,
        batch_size: 2,
        chunk: 7,
    }
}

/// Token-weighted mean NLL equals transformers' on the same tokens, within the trained length
/// and beyond it (160 tokens for a model trained at 64), for plain RoPE and YaRN.
#[test]
fn ppl_matches_transformers_nll() {
    let device = Device::flex();
    for rope in ["default", "yarn"] {
        let model = load_llama(&dir(rope), &device).unwrap();
        let r = Reference::load(rope);
        for tag in ["short", "long"] {
            let ids = r.ids(&format!("{tag}.input_ids"));
            let want = r.values(&format!("{tag}.nll"));
            assert_eq!(want.len(), ids.len() - 1);
            let want_mean = want.iter().sum::<f64>() / want.len() as f64;
            let doc = PplDoc {
                id: "d0",
                tokens: &ids,
                marks: None,
            };
            let out =
                evaluate_ppl(&model, &[doc], &opts(ids.len(), PplMode::Truncate), &Silent).unwrap();
            assert_eq!(out.skipped, 0);
            let row = &out.rows[0];
            assert_eq!(row.tokens as usize, ids.len() - 1);
            assert!(
                (row.nll - want_mean).abs() < 1e-5,
                "{rope} {tag}: nll {} vs transformers {want_mean}",
                row.nll
            );
            assert!((row.ppl - want_mean.exp()).abs() < 1e-4 * want_mean.exp());
            assert_eq!((row.recall_tokens, row.recall_nll), (0, None));
        }
    }
}

/// Truncation to a shorter length scores the document's first tokens (plain RoPE: a prefix's
/// NLL does not depend on what follows), recall marks select their tokens, and short documents
/// are skipped and counted.
#[test]
fn ppl_truncate_marks_and_skips() {
    let device = Device::flex();
    let model = load_llama(&dir("default"), &device).unwrap();
    let r = Reference::load("default");
    let ids = r.ids("long.input_ids");
    let want = r.values("long.nll");
    let mut marks = vec![0u8; ids.len()];
    for p in [5, 17, 40, 99, 120] {
        marks[p] = 1;
    }
    let short = &ids[..20];
    let docs = [
        PplDoc {
            id: "long",
            tokens: &ids,
            marks: Some(&marks),
        },
        PplDoc {
            id: "short",
            tokens: short,
            marks: None,
        },
    ];
    let out = evaluate_ppl(&model, &docs, &opts(100, PplMode::Truncate), &Silent).unwrap();
    assert_eq!((out.rows.len(), out.skipped), (1, 1));
    let row = &out.rows[0];
    assert_eq!(
        (row.document.as_str(), row.tokens, row.mode.as_str()),
        ("long", 99, "truncate")
    );
    let mean = want[..99].iter().sum::<f64>() / 99.0;
    assert!((row.nll - mean).abs() < 1e-5, "{} vs {mean}", row.nll);
    // Marks at positions 5, 17, 40 and 99 fall in the window; NLL entry p - 1 scores token p.
    assert_eq!(row.recall_tokens, 4);
    let recall = [5, 17, 40, 99].iter().map(|&p| want[p - 1]).sum::<f64>() / 4.0;
    assert!((row.recall_nll.unwrap() - recall).abs() < 1e-5);
    assert_eq!(out.mean_nll(), Some(row.nll));
}

/// A document exactly one window long gives the same row in both modes, whatever the stride;
/// a longer one scores every token once in sliding mode, and with stride = 1 each window
/// scores its last token with full context.
#[test]
fn sliding_agrees_with_truncate_on_a_single_window() {
    let device = Device::flex();
    let model = load_llama(&dir("default"), &device).unwrap();
    let r = Reference::load("default");
    let ids = r.ids("long.input_ids");
    let doc = [PplDoc {
        id: "d",
        tokens: &ids[..48],
        marks: None,
    }];
    let t = evaluate_ppl(&model, &doc, &opts(48, PplMode::Truncate), &Silent).unwrap();
    for stride in [1, 16, 47] {
        let s = evaluate_ppl(
            &model,
            &doc,
            &opts(48, PplMode::Sliding { stride }),
            &Silent,
        )
        .unwrap();
        assert_eq!(s.rows[0].tokens, t.rows[0].tokens);
        assert!((s.rows[0].nll - t.rows[0].nll).abs() < 1e-6);
        assert_eq!(s.rows[0].mode, "sliding");
    }
    let long = [PplDoc {
        id: "d",
        tokens: &ids,
        marks: None,
    }];
    let s = evaluate_ppl(
        &model,
        &long,
        &opts(48, PplMode::Sliding { stride: 16 }),
        &Silent,
    )
    .unwrap();
    assert_eq!(s.rows[0].tokens as usize, ids.len() - 1);
    assert!(s.rows[0].nll.is_finite() && s.rows[0].nll > 0.0);
}

/// The three needle scores on hand-written replies, and which rows count as failures.
#[test]
fn needle_scores_on_hand_written_replies() {
    let s = score_reply("7 3 1 9 2 .", "73192");
    assert_eq!((s.exact, s.substring), (Some(true), false));
    let s = score_reply("The pass key is 73192", "73192");
    assert_eq!((s.exact, s.substring, s.overlap), (Some(true), true, 1.0));
    let s = score_reply("731", "73192");
    assert_eq!((s.exact, s.substring, s.overlap), (Some(false), false, 0.0));
    let s = score_reply(
        "Eat a SANDWICH in Dolores park",
        "eat a sandwich and sit in Dolores Park",
    );
    assert_eq!((s.exact, s.substring), (None, false));
    assert!((s.overlap - 6.0 / 8.0).abs() < 1e-12, "{}", s.overlap);
    let row = |exact, substring| ropelens::tables::NeedleRow {
        task: "t".into(),
        length: 1,
        depth: 0.0,
        trial: 0,
        needle_token_position: 0,
        expected: String::new(),
        reply: String::new(),
        exact,
        substring,
        overlap: 0.0,
        entropy_mean: None,
        seconds: 0.0,
    };
    assert!(failed(&row(Some(false), true)));
    assert!(!failed(&row(Some(true), false)));
    assert!(failed(&row(None, false)));
    assert!(!failed(&row(None, true)));
}

fn decode(ids: &[u32]) -> Result<String, String> {
    // Token 10 is a newline; others read as their number.
    Ok(ids
        .iter()
        .map(|&t| {
            if t == 10 {
                "\n".to_string()
            } else {
                format!("{t} ")
            }
        })
        .collect())
}

/// A trial reproduces transformers' greedy tokens, scores them and records Algorithm 1's
/// entropy per layer and head.
#[test]
fn needle_trial_reproduces_hf_generation() {
    let device = Device::flex();
    let model = load_llama(&dir("default"), &device).unwrap();
    let r = Reference::load("default");
    let prompt = r.ids("gen.prompt");
    let want = r.ids("gen.tokens");
    let expected = decode(&want).unwrap().replace('\n', " ");
    let cell = NeedleCell {
        task: "passkey".into(),
        length: prompt.len() + want.len(),
        depth: 0.5,
        trial: 0,
    };
    let p = NeedlePrompt {
        input_ids: prompt.clone(),
        needle_pos: 2,
        expected: expected.trim().to_string(),
        answer_tokens: want.len(),
    };
    let settings = DecodeSettings {
        max_new_tokens: want.len(),
        stop_tokens: vec![],
        record_entropy: true,
        entropy_span: EntropySpan::Answer,
    };
    let rec = run_trial(&model, &cell, &p, &settings, &decode).unwrap();
    assert_eq!(rec.generated, want);
    let c = model.config();
    assert_eq!(rec.entropy.len(), c.num_hidden_layers);
    assert!(rec.entropy.iter().all(|h| h.len() == c.num_attention_heads));
    let flat: Vec<f64> = rec.entropy.iter().flatten().copied().collect();
    let mean = flat.iter().sum::<f64>() / flat.len() as f64;
    assert!((rec.entropy_mean.unwrap() - mean).abs() < 1e-12);
    // The entropy of a query over n keys lies in [0, ln n].
    let max = ((prompt.len() + want.len()) as f64).ln();
    assert!(flat.iter().all(|&e| (0.0..=max).contains(&e)), "{flat:?}");
    if !want.contains(&10) {
        assert!(rec.substring, "reply {:?} vs {:?}", rec.reply, p.expected);
        assert_eq!(rec.overlap, 1.0);
    }
    assert_eq!(rec.row().needle_token_position, 2);
    assert_eq!(
        rec.entropy_rows().len(),
        c.num_hidden_layers * c.num_attention_heads
    );
    // Algorithm 1 stops at the expected answer's length: with a 2-token answer, the entropy
    // is the mean of the first two steps only; the older form averages every generated step.
    let short = NeedlePrompt {
        answer_tokens: 2,
        ..p.clone()
    };
    let two = run_trial(&model, &cell, &short, &settings, &decode).unwrap();
    let all_steps = run_trial(
        &model,
        &cell,
        &short,
        &DecodeSettings {
            entropy_span: EntropySpan::Generated,
            ..settings.clone()
        },
        &decode,
    )
    .unwrap();
    assert_eq!(all_steps.entropy, rec.entropy, "generated = every step");
    assert!(want.len() > 2);
    let per_step = ropelens::model::greedy_decode(
        &model,
        &prompt,
        &ropelens::model::GreedyOptions {
            max_new_tokens: want.len(),
            record_entropy: true,
            ..Default::default()
        },
    )
    .unwrap()
    .entropy;
    assert_eq!(two.entropy, mean_answer_entropy(&per_step, 2));
    assert_ne!(two.entropy, rec.entropy);
    // Without entropy recording, nothing is stored.
    let quiet = DecodeSettings {
        record_entropy: false,
        ..settings.clone()
    };
    let rec = run_trial(&model, &cell, &p, &quiet, &decode).unwrap();
    assert_eq!((rec.entropy_mean, rec.entropy.len()), (None, 0));
    // A stop token ends the reply and is not part of it.
    let stop = DecodeSettings {
        stop_tokens: vec![want[2]],
        ..settings
    };
    let rec = run_trial(&model, &cell, &p, &stop, &decode).unwrap();
    let first = want.iter().position(|&t| t == want[2]).unwrap();
    assert_eq!(rec.generated, want[..=first].to_vec());
    assert_eq!(
        rec.reply,
        decode(&want[..first])
            .unwrap()
            .split('\n')
            .next()
            .unwrap()
            .trim()
    );
}

/// A grid killed after two cells (with a half-written third line) resumes: only the missing
/// cells run, and the result equals an uninterrupted run.
#[test]
fn needle_grid_resumes_after_a_kill() {
    let device = Device::flex();
    let model = load_llama(&dir("default"), &device).unwrap();
    let r = Reference::load("default");
    let prompt = r.ids("gen.prompt");
    let grid = NeedleGrid {
        tasks: vec!["passkey".into()],
        lengths: vec![prompt.len()],
        depths: vec![0.0, 0.5],
        trials: 2,
    };
    let settings = DecodeSettings {
        max_new_tokens: 4,
        stop_tokens: vec![10],
        record_entropy: true,
        entropy_span: EntropySpan::Answer,
    };
    let calls = Cell::new(0);
    let mut make = |cell: &NeedleCell| {
        calls.set(calls.get() + 1);
        // Vary the prompt by cell so that rows differ.
        let mut ids = prompt.clone();
        ids[0] = (cell.trial as u32 + (cell.depth * 10.0) as u32) % 200 + 20;
        Ok(NeedlePrompt {
            input_ids: ids,
            needle_pos: 1,
            expected: "42".into(),
            answer_tokens: 4,
        })
    };
    let tmp = tempfile::tempdir().unwrap();
    let full_path = tmp.path().join("full.jsonl");
    let mut log = TrialLog::open(&full_path).unwrap();
    let full = run_grid(
        &model, &grid, &mut make, &settings, &decode, &mut log, &Silent,
    )
    .unwrap();
    assert_eq!((full.len(), calls.get()), (4, 4));
    drop(log);

    // The killed run: two complete lines and a partial third.
    let text = std::fs::read_to_string(&full_path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let killed = tmp.path().join("killed.jsonl");
    std::fs::write(
        &killed,
        format!("{}\n{}\n{}", lines[0], lines[1], &lines[2][..20]),
    )
    .unwrap();
    calls.set(0);
    let mut log = TrialLog::open(&killed).unwrap();
    assert_eq!(log.len(), 2);
    let resumed = run_grid(
        &model, &grid, &mut make, &settings, &decode, &mut log, &Silent,
    )
    .unwrap();
    assert_eq!(calls.get(), 2, "only the unfinished cells run");
    for (a, b) in full.iter().zip(&resumed) {
        assert_eq!(a.cell, b.cell);
        assert_eq!(a.generated, b.generated);
        assert_eq!(a.reply, b.reply);
        let (ea, eb) = (a.entropy_mean.unwrap(), b.entropy_mean.unwrap());
        assert!((ea - eb).abs() < 1e-12);
    }
    // The log is whole again: four lines, all readable; a third run does nothing.
    drop(log);
    assert_eq!(std::fs::read_to_string(&killed).unwrap().lines().count(), 4);
    calls.set(0);
    let mut log = TrialLog::open(&killed).unwrap();
    run_grid(
        &model, &grid, &mut make, &settings, &decode, &mut log, &Silent,
    )
    .unwrap();
    assert_eq!(calls.get(), 0);
    // A corrupt line in the middle is an error naming the file and line.
    std::fs::write(&killed, format!("{}\nnot json\n{}\n", lines[0], lines[1])).unwrap();
    let e = TrialLog::open(&killed).unwrap_err().to_string();
    assert!(e.contains("killed.jsonl:2"), "{e}");
}

/// The fixture model with every query projection zeroed: all scores 0, so each query attends
/// uniformly to the keys it sees (entropy ln(p + 1) at position p; position 0 is one-hot).
fn uniform_model(device: &Device) -> Llama {
    let mut model = load_llama(&dir("default"), device).unwrap();
    for layer in &mut model.layers {
        let dims = layer.self_attn.q_proj.weight.val().dims();
        layer.self_attn.q_proj.weight = Param::from_tensor(Tensor::zeros(dims, device));
    }
    model
}

#[test]
fn attention_entropy_of_uniform_and_one_hot_rows() {
    let device = Device::flex();
    let model = uniform_model(&device);
    let r = Reference::load("default");
    let ids = r.ids("long.input_ids");
    let len = 100;
    let windows = vec![
        ids[..len].to_vec(),
        ids[30..30 + len].to_vec(),
        ids[50..50 + len].to_vec(),
    ];
    let blocks = AttentionBlocks { query: 16, key: 24 };
    let rows = attention_analysis(&model, &windows, blocks, 2, &Silent)
        .unwrap()
        .entropy;
    let c = model.config();
    let nb = buckets().count_for_len(len as u64);
    assert_eq!(rows.len(), c.num_hidden_layers * c.num_attention_heads * nb);
    for row in &rows {
        let (lo, hi) = (row.query_bucket_lo as usize, row.query_bucket_hi as usize);
        let want = (lo..=hi).map(|p| ((p + 1) as f64).ln()).sum::<f64>() / (hi - lo + 1) as f64;
        assert!((row.entropy_mean - want).abs() < 1e-4, "{row:?} vs {want}");
        assert_eq!(row.queries as usize, 3 * (hi - lo + 1));
        if lo == 0 {
            assert!(row.entropy_mean.abs() < 1e-6, "one-hot row: {row:?}");
        }
    }
    assert_eq!(rows.last().unwrap().query_bucket_hi, 99);
}

/// Windows analysed two to a forward give each window's own numbers: the per-query entropy and
/// distance mass are read back per (window, head), so a swapped batch and head index would mix
/// heads (the fixture model's heads differ).
#[test]
fn attention_analysis_of_a_batch_equals_its_windows_one_at_a_time() {
    let device = Device::flex();
    let model = load_llama(&dir("default"), &device).unwrap();
    let r = Reference::load("default");
    let ids = r.ids("long.input_ids");
    let len = 48;
    let windows: Vec<Vec<u32>> = [0, 20, 40, 60]
        .iter()
        .map(|&s| ids[s..s + len].to_vec())
        .collect();
    let blocks = AttentionBlocks { query: 16, key: 24 };
    let batched = attention_analysis(&model, &windows, blocks, 2, &Silent).unwrap();
    let single = attention_analysis(&model, &windows, blocks, 1, &Silent).unwrap();
    assert_eq!(batched.entropy.len(), single.entropy.len());
    let of = |head: i64| {
        single
            .entropy
            .iter()
            .filter(move |r| r.head == head)
            .map(|r| r.entropy_mean)
    };
    assert!(
        of(0).zip(of(1)).any(|(a, b)| (a - b).abs() > 1e-3),
        "heads 0 and 1 must differ for this test to mean anything"
    );
    for (b, s) in batched.entropy.iter().zip(&single.entropy) {
        assert_eq!((b.layer, b.head, b.queries), (s.layer, s.head, s.queries));
        assert!(
            (b.entropy_mean - s.entropy_mean).abs() < 1e-5,
            "{b:?} vs {s:?}"
        );
    }
    let (bd, sd) = (
        distance_rows(&batched.distance).unwrap(),
        distance_rows(&single.distance).unwrap(),
    );
    for (b, s) in bd.iter().zip(&sd) {
        assert!((b.mass - s.mass).abs() < 1e-5, "{b:?} vs {s:?}");
    }
}

#[test]
fn attention_distance_of_uniform_attention() {
    let device = Device::flex();
    let model = uniform_model(&device);
    let r = Reference::load("default");
    let ids = r.ids("long.input_ids");
    let len = 40;
    let windows = vec![ids[..len].to_vec(), ids[60..60 + len].to_vec()];
    let blocks = AttentionBlocks { query: 16, key: 8 };
    let d = attention_analysis(&model, &windows, blocks, 1, &Silent)
        .unwrap()
        .distance;
    // Uniform attention: the key at distance d from query p gets 1 / (p + 1).
    let b = buckets();
    let heads = model.config().num_attention_heads as f64;
    let nb = b.count_for_len(len as u64);
    let mut mass = vec![0f64; nb];
    let mut pairs = vec![0u64; nb];
    for p in 0..len {
        for dist in 0..=p {
            let k = b.bucket(dist as u64);
            mass[k] += 1.0 / (p + 1) as f64;
            pairs[k] += 1;
        }
    }
    let rows = distance_rows(&d).unwrap();
    let layers = model.config().num_hidden_layers;
    // One row set per head of each layer, per layer, and for all layers.
    assert_eq!(rows.len(), (layers * heads as usize + layers + 1) * nb);
    let total: f64 = mass.iter().sum();
    for row in &rows {
        let k = row.bucket as usize;
        let n = match (row.layer, row.head) {
            (Some(_), Some(_)) => 2.0,
            (Some(_), None) => 2.0 * heads,
            _ => 2.0 * heads * layers as f64,
        };
        assert_eq!(row.pairs as f64, pairs[k] as f64 * n, "{row:?}");
        assert!(
            (row.mean_prob - mass[k] / pairs[k] as f64).abs() < 1e-5,
            "{row:?}"
        );
        assert!((row.mass - mass[k] / total).abs() < 1e-5, "{row:?}");
    }
    assert!(
        rows.iter().any(|r| r.layer == Some(1) && r.head == Some(1)),
        "per-head rows"
    );
    let all: Vec<_> = rows.iter().filter(|r| r.layer.is_none()).collect();
    assert!((all.iter().map(|r| r.mass).sum::<f64>() - 1.0).abs() < 1e-9);
    assert_eq!((all[3].distance_lo, all[3].distance_hi), (4, 7));
    assert_eq!(all.last().unwrap().distance_hi, 39);

    // A profile compared with itself diverges by 0.
    let same = divergence_row(&d, &d, "self").unwrap();
    assert!(same.js_nats.abs() < 1e-12);
    assert_eq!(
        (same.length, same.reference_length, same.common_buckets),
        (40, 40, nb as i64)
    );
}

/// JS divergence of disjoint profiles is ln 2 (nats), over the common buckets only.
#[test]
fn divergence_of_disjoint_profiles_is_ln2() {
    let profile = |mass: Vec<f64>| {
        let n = mass.len();
        DistanceProfile::from_parts(buckets(), mass, vec![1; n], 1).unwrap()
    };
    let result = |length, mass: Vec<f64>| DistanceResult {
        length,
        heads: vec![],
        layers: vec![],
        all: profile(mass),
    };
    let reference = result(4, vec![1.0, 0.0, 0.0]);
    let model = result(16, vec![0.0, 2.0, 3.0, 0.5, 0.5]);
    let row = divergence_row(&model, &reference, "base").unwrap();
    assert!((row.js_nats - LN_2).abs() < 1e-12, "{}", row.js_nats);
    assert_eq!(
        (row.common_buckets, row.reference_length, row.length),
        (3, 4, 16)
    );
    assert_eq!(row.reference_instance, "base");
}
