//! The `train` stage on a tiny synthetic data stage: pretraining writes a loadable Hugging Face
//! checkpoint with the tokenizer and both tables; extending from `init` changes only the RoPE
//! config; a missing CUDA build and a `model` table beside `init` are clear errors.

use std::collections::BTreeMap;
use std::path::Path;

use ropelens::data::{DataPrepParams, PrepareContext, PreparedData, prepare};
use ropelens::model::checkpoint::hf_tensors;
use ropelens::model::{RopeScaling, load_llama};
use ropelens::progress::Silent;
use ropelens::stages::train::Train;
use ropelens::stages::{Ctx, StageKind, Upstream};
use ropelens::tables::{TrainLogRow, ValLogRow, read_table};
use ropelens::train::TrainStageParams;

fn prepare_data(out: &Path) {
    let params: DataPrepParams = toml::from_str(
        "source = { synthetic = { documents = 60, max_tokens = 256 } }\n\
         tokenizer = { train_bpe = { vocab_size = 300 } }\n\
         split = { valid_documents = 6 }",
    )
    .unwrap();
    prepare(
        &params,
        &PrepareContext {
            out_dir: out.to_path_buf(),
            base_dir: out.to_path_buf(),
            seed: 1,
            tokenizer_dir: None,
            progress: &Silent,
        },
    )
    .unwrap();
}

fn upstream(stage: &str, kind: &str, dir: &Path) -> Upstream {
    Upstream {
        stage: stage.into(),
        instance: stage.into(),
        kind: kind.into(),
        dir: dir.to_path_buf(),
        matrix: BTreeMap::new(),
        params: serde_json::Value::Null,
        key: String::new(),
        inputs: Default::default(),
    }
}

fn run_stage(
    toml_text: &str,
    needs: &BTreeMap<String, Vec<Upstream>>,
    out: &Path,
    device: &str,
) -> anyhow::Result<()> {
    let params: TrainStageParams = toml::from_str(toml_text).unwrap();
    std::fs::create_dir_all(out).unwrap();
    let ctx = Ctx {
        stage: "t",
        instance: "t",
        out_dir: out,
        needs,
        ancestors: &[],
        seed: 5,
        device,
        pipeline_dir: out,
        progress: &Silent,
    };
    Train::run(&params, &ctx)
}

const BASE: &str = "model = { hidden_size = 32, num_hidden_layers = 2, num_attention_heads = 2 }\n\
     train = { seq_len = 32, batch_size = 4, steps = 6, lr = 3e-3, val_every = 3, checkpoint_every = 2, log_every = 2, val_batches = 2 }";

#[test]
fn pretrain_then_extend_with_yarn() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    prepare_data(&data);
    let vocab = PreparedData::open(&data).unwrap().vocab_size();
    let needs = BTreeMap::from([(
        "data".to_string(),
        vec![upstream("data", "data_prep", &data)],
    )]);
    let base = dir.path().join("base");
    run_stage(BASE, &needs, &base, "cpu").unwrap();

    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "train.json",
    ] {
        assert!(base.join(f).is_file(), "{f} missing");
    }
    // Checkpoints stay until the runner has committed the entry, which then removes them
    // (`scratch`; the quickstart test checks the committed entries).
    assert!(
        base.join("checkpoints").is_dir(),
        "checkpoints are kept until the commit"
    );
    let params: TrainStageParams = toml::from_str(BASE).unwrap();
    assert_eq!(Train::scratch(&params), ["checkpoints"]);
    let model = load_llama(&base, &burn::tensor::Device::flex()).unwrap();
    let c = model.config();
    assert_eq!(
        (c.vocab_size, c.hidden_size, c.max_position_embeddings),
        (vocab, 32, 32)
    );
    let log: Vec<TrainLogRow> = read_table(&base.join("metrics/train_log.parquet")).unwrap();
    assert_eq!(
        log.iter().map(|r| r.step).collect::<Vec<_>>(),
        vec![1, 2, 4, 6]
    );
    assert!(log.iter().all(|r| r.loss.is_finite() && r.seq_len == 32));
    assert!(log[3].loss < log[0].loss, "{log:?}");
    let val: Vec<ValLogRow> = read_table(&base.join("metrics/val_log.parquet")).unwrap();
    assert_eq!(val.iter().map(|r| r.step).collect::<Vec<_>>(), vec![3, 6]);
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(base.join("train.json")).unwrap()).unwrap();
    assert_eq!(summary["steps"], 6);
    assert_eq!(summary["tokens"], 6 * 4 * 32);

    // Continual pretraining of `base` at 4x the length with YaRN.
    let mut needs_ext = needs.clone();
    needs_ext.insert("init".into(), vec![upstream("base", "train", &base)]);
    let ext = dir.path().join("ext");
    let text = "train = { seq_len = 64, batch_size = 2, steps = 2, lr = 1e-3 }\n\
                rope = { rope_type = \"yarn\", factor = 4.0 }";
    run_stage(text, &needs_ext, &ext, "cpu").unwrap();
    let extended = load_llama(&ext, &burn::tensor::Device::flex()).unwrap();
    let e = extended.config();
    assert_eq!(e.max_position_embeddings, 128);
    assert!(matches!(
        e.rope.scaling,
        RopeScaling::Yarn(ropelens::model::rope::Yarn {
            original_max_position_embeddings: Some(32),
            factor: 4.0,
            ..
        })
    ));
    // Same architecture, trained further: every tensor keeps its shape, values moved.
    let (a, b) = (hf_tensors(&model), hf_tensors(&extended));
    assert_eq!(
        a.iter()
            .map(|(k, (s, _))| (k.clone(), s.clone()))
            .collect::<Vec<_>>(),
        b.iter()
            .map(|(k, (s, _))| (k.clone(), s.clone()))
            .collect::<Vec<_>>()
    );
    assert_ne!(
        a["model.layers.0.self_attn.q_proj.weight"].1,
        b["model.layers.0.self_attn.q_proj.weight"].1
    );

    // A `model` table beside `init` is refused.
    let e = run_stage(
        "model = { hidden_size = 64 }\ntrain = { seq_len = 64, steps = 1 }",
        &needs_ext,
        &dir.path().join("bad"),
        "cpu",
    )
    .unwrap_err();
    assert!(format!("{e:#}").contains("keeps its architecture"), "{e:#}");
}

#[test]
fn cuda_without_the_feature_is_a_clear_error_and_holds_the_gpu() {
    let params = TrainStageParams::default();
    assert_eq!(Train::resources(&params, "cuda:1").gpus, 1);
    assert_eq!(Train::resources(&params, "cpu").gpus, 0);
    assert!(Train::resumable(&params));
    #[cfg(not(feature = "cuda"))]
    {
        let dir = tempfile::tempdir().unwrap();
        let needs = BTreeMap::new();
        let e = run_stage("train = { steps = 1 }", &needs, dir.path(), "cuda").unwrap_err();
        assert_eq!(
            e.to_string(),
            "device `cuda` needs CUDA, but this ropelens was built without it; rebuild with `cargo build --release --features cuda`"
        );
    }
}

#[test]
fn a_train_stage_on_evaluation_only_data_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    prepare_data(&data);
    // The same corpus with every document in validation, tokenized by the first one's tokenizer.
    let eval = dir.path().join("eval");
    let params: DataPrepParams = toml::from_str(
        "source = { synthetic = { documents = 6, max_tokens = 256 } }\n\
         tokenizer = { from = \"data\" }\n\
         split = { valid_fraction = 1.0 }",
    )
    .unwrap();
    prepare(
        &params,
        &PrepareContext {
            out_dir: eval.clone(),
            base_dir: eval.clone(),
            seed: 1,
            tokenizer_dir: Some(data),
            progress: &Silent,
        },
    )
    .unwrap();
    let needs = BTreeMap::from([(
        "data".to_string(),
        vec![upstream("data", "data_prep", &eval)],
    )]);
    let err = run_stage(BASE, &needs, &dir.path().join("t"), "cpu").unwrap_err();
    assert_eq!(
        err.to_string(),
        "the data of `data` has no training documents: every document went to validation (`split`), which is for evaluation only; a train stage needs training data"
    );
}

/// A model from `init` trained beyond its `max_position_embeddings` with its RoPE unchanged is
/// a loud warning (log and train.json), not an error: a control arm does it on purpose. A model
/// too large for memory is refused before it is allocated, naming its size.
#[test]
fn training_beyond_the_model_length_warns_and_a_huge_model_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    prepare_data(&data);
    let needs = BTreeMap::from([(
        "data".to_string(),
        vec![upstream("data", "data_prep", &data)],
    )]);
    let base = dir.path().join("base");
    let short = "model = { hidden_size = 32, num_hidden_layers = 1, num_attention_heads = 2 }\n\
                 train = { seq_len = 32, batch_size = 2, steps = 1 }";
    run_stage(short, &needs, &base, "cpu").unwrap();
    let summary = |dir: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(dir.join("train.json")).unwrap()).unwrap()
    };
    assert!(summary(&base).get("warnings").is_none());
    let mut needs_ext = needs.clone();
    needs_ext.insert("init".into(), vec![upstream("base", "train", &base)]);
    let plain = dir.path().join("plain");
    run_stage(
        "train = { seq_len = 64, batch_size = 2, steps = 1 }\nrope = { rope_type = \"default\" }",
        &needs_ext,
        &plain,
        "cpu",
    )
    .unwrap();
    let warnings = summary(&plain)["warnings"].to_string();
    assert!(
        warnings.contains(
            "WARNING: train.seq_len 64 is longer than the max_position_embeddings 32 of `base`"
        ),
        "{warnings}"
    );
    // Extended by the RoPE to 4 x 32 = 128 positions: no warning.
    let yarn = dir.path().join("yarn");
    run_stage(
        "train = { seq_len = 64, batch_size = 2, steps = 1 }\nrope = { rope_type = \"yarn\", factor = 4.0 }",
        &needs_ext,
        &yarn,
        "cpu",
    )
    .unwrap();
    assert!(summary(&yarn).get("warnings").is_none());

    // 8e11 parameters (3 TiB of f32): under the parse-time bound, over any machine's memory.
    let e = run_stage(
        "model = { hidden_size = 8192, num_hidden_layers = 1000, num_attention_heads = 64 }\n\
         train = { seq_len = 32, batch_size = 2, steps = 1 }",
        &needs,
        &dir.path().join("huge"),
        "cpu",
    )
    .unwrap_err();
    let e = format!("{e:#}");
    assert!(
        e.contains("the new model has 805") && e.contains("TiB of f32 weights, more than the"),
        "{e}"
    );
}

/// A data entry that lost its tokenizer (e.g. to a gc while a run used it) stops the train stage
/// before it trains, naming the upstream and the file; the model is never written without one.
#[test]
fn a_data_entry_without_its_tokenizer_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    prepare_data(&data);
    std::fs::remove_file(data.join("tokenizer.json")).unwrap();
    let needs = BTreeMap::from([(
        "data".to_string(),
        vec![upstream("data", "data_prep", &data)],
    )]);
    let out = dir.path().join("base");
    let e = run_stage(
        "model = { hidden_size = 32, num_hidden_layers = 1, num_attention_heads = 2 }\n\
         train = { seq_len = 32, batch_size = 2, steps = 1 }",
        &needs,
        &out,
        "cpu",
    )
    .unwrap_err();
    let text = format!("{e:#}");
    assert!(
        text.contains("the data of `data`")
            && text.contains(&data.join("tokenizer.json").display().to_string()),
        "{text}"
    );
    assert!(!out.join("model.safetensors").exists());
}
