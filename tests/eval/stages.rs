//! The three stage kinds end to end on a small synthetic data directory and a tiny random
//! model: tables written and readable, needle resume from the build directory, divergence of a
//! model from itself.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use burn::tensor::Device;
use ropelens::data::{DataPrepParams, PrepareContext, prepare};
use ropelens::model::{HfLayout, Llama, LlamaConfig, save_llama};
use ropelens::progress::{Progress, Silent};
use ropelens::stages::attention::{Attention, AttentionParams};
use ropelens::stages::eval_needle::{EvalNeedle, EvalNeedleParams, TRIAL_LOG};
use ropelens::stages::eval_ppl::{EvalPpl, EvalPplParams};
use ropelens::stages::{Ctx, StageKind, Upstream};
use ropelens::tables::{
    AttentionDistanceRow, AttentionDivergenceRow, AttentionEntropyRow, EntropyVsErrorRow,
    NeedleEntropyRow, NeedleRow, PplRow, Table, read_table,
};

/// Records progress messages.
#[derive(Default)]
struct Messages(Mutex<Vec<String>>);

impl Progress for Messages {
    fn start(&self, _phase: &str, _total: u64) {}
    fn advance(&self, _steps: u64) {}
    fn message(&self, text: &str) {
        self.0.lock().unwrap().push(text.to_string());
    }
}

struct Fixture {
    _tmp: tempfile::TempDir,
    data: PathBuf,
    model: PathBuf,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let params: DataPrepParams = toml::from_str(
        r#"
source = { synthetic = { documents = 80, min_tokens = 64, max_tokens = 512 } }
split = { valid_fraction = 0.2, valid_min_tokens = 256 }
"#,
    )
    .unwrap();
    prepare(
        &params,
        &PrepareContext {
            out_dir: data.clone(),
            base_dir: tmp.path().to_path_buf(),
            seed: 3,
            tokenizer_dir: None,
            progress: &Silent,
        },
    )
    .unwrap();
    let vocab = ropelens::data::PreparedData::open(&data)
        .unwrap()
        .vocab_size();
    let mut cfg = LlamaConfig::new(vocab, 32, 2, 2, 64);
    cfg.intermediate_size = 64;
    let device = Device::flex();
    device.seed(5);
    let model = Llama::init(&cfg, &device).unwrap();
    let model_dir = tmp.path().join("train");
    save_llama(&model, &model_dir.join("model"), HfLayout::Both).unwrap();
    Fixture {
        _tmp: tmp,
        data,
        model: model_dir,
    }
}

fn upstream(stage: &str, kind: &str, dir: &Path) -> Vec<Upstream> {
    vec![Upstream {
        stage: stage.into(),
        instance: stage.into(),
        kind: kind.into(),
        dir: dir.to_path_buf(),
        matrix: BTreeMap::new(),
        params: serde_json::Value::Null,
        key: String::new(),
        inputs: Default::default(),
    }]
}

fn run<K: StageKind>(
    params: &K::Params,
    needs: &BTreeMap<String, Vec<Upstream>>,
    out: &Path,
    progress: &dyn Progress,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).unwrap();
    let ctx = Ctx {
        stage: "s",
        instance: "s",
        out_dir: out,
        needs,
        ancestors: &[],
        seed: 11,
        device: "cpu",
        pipeline_dir: out,
        progress,
    };
    K::run(params, &ctx)
}

fn table<T: Table>(out: &Path) -> Vec<T> {
    read_table(&out.join("metrics").join(format!("{}.parquet", T::NAME))).unwrap()
}

fn needs(f: &Fixture, reference: bool) -> BTreeMap<String, Vec<Upstream>> {
    let mut needs = BTreeMap::new();
    needs.insert("model".into(), upstream("train", "train", &f.model));
    needs.insert("data".into(), upstream("data", "data_prep", &f.data));
    if reference {
        needs.insert("reference".into(), upstream("base", "train", &f.model));
    }
    needs
}

#[test]
fn stages_write_their_tables() {
    let f = fixture();
    let tmp = tempfile::tempdir().unwrap();

    // eval_ppl, both modes, a length beyond the model's 64.
    let out = tmp.path().join("ppl");
    for mode in ["truncate", "sliding"] {
        let p: EvalPplParams = serde_json::from_value(
            serde_json::json!({"lengths": [32, 128], "mode": mode, "max_documents": 3}),
        )
        .unwrap();
        run::<EvalPpl>(&p, &needs(&f, false), &out, &Silent).unwrap();
        let rows: Vec<PplRow> = table(&out);
        assert_eq!(rows.len(), 6, "{mode}: 3 documents x 2 lengths");
        assert!(
            rows.iter()
                .all(|r| r.mode == mode && r.nll.is_finite() && r.tokens > 0)
        );
        if mode == "truncate" {
            assert!(rows.iter().all(|r| r.tokens == r.length - 1));
        }
        // The synthetic corpus marks recall tokens; a random model scores them like the rest.
        assert!(
            rows.iter()
                .any(|r| r.recall_tokens > 0 && r.recall_nll.is_some())
        );
    }

    // Sliding over each document's first 256 tokens: every length scores the same 255
    // tokens of the same documents (those with 256 tokens), so lengths compare like with like.
    let out = tmp.path().join("ppl_capped");
    let p: EvalPplParams = serde_json::from_value(serde_json::json!({
        "lengths": [32, 128, 256], "mode": "sliding", "document_tokens": 256, "max_documents": 3
    }))
    .unwrap();
    run::<EvalPpl>(&p, &needs(&f, false), &out, &Silent).unwrap();
    let rows: Vec<PplRow> = table(&out);
    assert_eq!(rows.len(), 9, "3 documents x 3 lengths");
    assert!(rows.iter().all(|r| r.tokens == 255), "{rows:?}");
    let docs = |l: i64| {
        rows.iter()
            .filter(|r| r.length == l)
            .map(|r| r.document.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(docs(32), docs(256));
    // At the cap the one window is the truncate window.
    let trunc: EvalPplParams =
        serde_json::from_value(serde_json::json!({"lengths": [256], "max_documents": 3})).unwrap();
    let out_t = tmp.path().join("ppl_trunc256");
    run::<EvalPpl>(&trunc, &needs(&f, false), &out_t, &Silent).unwrap();
    let t: Vec<PplRow> = table(&out_t);
    for (a, b) in t.iter().zip(rows.iter().filter(|r| r.length == 256)) {
        assert_eq!(a.document, b.document);
        assert!((a.nll - b.nll).abs() < 1e-9, "{} vs {}", a.nll, b.nll);
    }
    // A length-32 run over the whole documents scores more tokens: the cap is what limits it.
    let whole: Vec<PplRow> = table(&tmp.path().join("ppl"));
    assert!(
        whole
            .iter()
            .filter(|r| r.length == 32)
            .any(|r| r.tokens > 255)
    );

    // eval_needle, then a resumed run from the same build directory does no new cell.
    let out = tmp.path().join("needle");
    let p: EvalNeedleParams = serde_json::from_value(serde_json::json!({
        "tasks": ["passkey"], "lengths": [96], "depths": [0.0, 1.0], "trials": 2,
        "max_new_tokens": 4, "bootstrap_resamples": 50
    }))
    .unwrap();
    run::<EvalNeedle>(&p, &needs(&f, false), &out, &Silent).unwrap();
    let rows: Vec<NeedleRow> = table(&out);
    assert_eq!(rows.len(), 4);
    assert!(
        rows.iter()
            .all(|r| r.length == 96 && r.entropy_mean.is_some())
    );
    assert!(rows.iter().all(|r| !r.expected.is_empty()));
    let ent: Vec<NeedleEntropyRow> = table(&out);
    assert_eq!(ent.len(), 4 * 2 * 2);
    let vs: Vec<EntropyVsErrorRow> = table(&out);
    assert_eq!((vs.len(), vs[0].n), (1, 4));
    let log = std::fs::read_to_string(out.join(TRIAL_LOG)).unwrap();
    assert_eq!(log.lines().count(), 4);
    let messages = Messages::default();
    run::<EvalNeedle>(&p, &needs(&f, false), &out, &messages).unwrap();
    let said = messages.0.lock().unwrap().join("\n");
    assert!(said.contains("4 of 4 cells already done"), "{said}");
    let again: Vec<NeedleRow> = table(&out);
    assert_eq!(
        again.iter().map(|r| &r.reply).collect::<Vec<_>>(),
        rows.iter().map(|r| &r.reply).collect::<Vec<_>>()
    );

    // attention with the model as its own reference: divergence 0 at the reference length.
    let out = tmp.path().join("attn");
    let p: AttentionParams = serde_json::from_value(serde_json::json!({
        "lengths": [64, 128], "windows": 2, "query_block": 32, "key_block": 48
    }))
    .unwrap();
    run::<Attention>(&p, &needs(&f, true), &out, &Silent).unwrap();
    let ent: Vec<AttentionEntropyRow> = table(&out);
    assert_eq!(ent.len(), 2 * 2 * (7 + 8));
    assert!(ent.iter().all(|r| r.queries > 0 && r.entropy_mean >= 0.0));
    let dist: Vec<AttentionDistanceRow> = table(&out);
    // Per length: 2 layers x 2 heads, 2 layers, all layers; 7 and 8 buckets.
    assert_eq!(dist.len(), (2 * 2 + 2 + 1) * (7 + 8));
    assert_eq!(
        dist.iter().filter(|r| r.head.is_some()).count(),
        2 * 2 * (7 + 8)
    );
    let div: Vec<AttentionDivergenceRow> = table(&out);
    assert_eq!(div.len(), 2);
    assert_eq!((div[0].length, div[0].reference_length), (64, 64));
    assert!(div[0].js_nats.abs() < 1e-9, "{:?}", div[0]);
    assert!(div[1].js_nats > 0.0 && div[1].js_nats < std::f64::consts::LN_2);
    assert_eq!(div[1].common_buckets, 7);

    // Errors name the problem.
    let p: AttentionParams = serde_json::from_value(serde_json::json!({
        "lengths": [64], "reference_length": 64
    }))
    .unwrap();
    let e = run::<Attention>(&p, &needs(&f, false), &out, &Silent).unwrap_err();
    assert!(e.to_string().contains("reference"), "{e}");
    let mut bad = needs(&f, false);
    bad.insert("model".into(), upstream("train", "train", &f.data));
    let p: EvalPplParams = serde_json::from_value(serde_json::json!({"lengths": [32]})).unwrap();
    let e = run::<EvalPpl>(&p, &bad, &out, &Silent).unwrap_err();
    assert!(e.to_string().contains("has no model"), "{e}");
}

#[test]
fn eval_ppl_with_no_document_long_enough_is_an_error() {
    // Every validation document is shorter than 4096 tokens: an empty table would pass for a
    // result.
    let f = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let p: EvalPplParams = serde_json::from_value(serde_json::json!({"lengths": [4096]})).unwrap();
    let e = run::<EvalPpl>(&p, &needs(&f, false), &tmp.path().join("ppl"), &Silent).unwrap_err();
    assert!(format!("{e:#}").contains("nothing was evaluated"), "{e:#}");
}
