//! Checkpoints: save/reload bit-identically, config.json in both layouts, sharded and
//! half-precision weights, and importing a checkpoint directory.

use std::collections::BTreeMap;
use std::path::Path;

use burn::tensor::Device;
use ropelens::model::checkpoint::hf_tensors;
use ropelens::model::llama::to_f32_vec;
use ropelens::model::{
    HfLayout, LlamaConfig, ModelError, ids_tensor, import_checkpoint, inspect_checkpoint,
    load_llama, save_llama,
};
use safetensors::tensor::{Dtype, TensorView};

use super::fixture::dir;

fn logits(model: &ropelens::model::Llama) -> Vec<f32> {
    let ids: Vec<u32> = (0..24).map(|i| (i * 37 + 5) % 256).collect();
    let x = ids_tensor(&[ids], &model.device()).unwrap();
    to_f32_vec(model.forward(x).unwrap())
}

#[test]
fn saved_checkpoint_reloads_bit_identically_in_both_layouts() {
    let device = Device::flex();
    for rope in ["yarn", "ntk", "longrope"] {
        let model = load_llama(&dir(rope), &device).unwrap();
        let want = hf_tensors(&model);
        let want_logits = logits(&model);
        for layout in [HfLayout::V4, HfLayout::V5, HfLayout::Both] {
            let tmp = tempfile::tempdir().unwrap();
            save_llama(&model, tmp.path(), layout).unwrap();
            let back = load_llama(tmp.path(), &device).unwrap();
            assert_eq!(back.config(), model.config(), "{rope} {layout:?}");
            let got = hf_tensors(&back);
            assert_eq!(
                got.keys().collect::<Vec<_>>(),
                want.keys().collect::<Vec<_>>()
            );
            for (name, (shape, values)) in &want {
                let (s, v) = &got[name];
                assert_eq!(s, shape, "{name}");
                assert!(
                    v.iter()
                        .zip(values)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{name} differs after save/load"
                );
            }
            assert_eq!(logits(&back), want_logits, "{rope} {layout:?}");
        }
    }
}

#[test]
fn saved_names_match_the_hf_checkpoint() {
    let device = Device::flex();
    let model = load_llama(&dir("default"), &device).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    save_llama(&model, tmp.path(), HfLayout::Both).unwrap();
    let names = |p: &Path| {
        let bytes = std::fs::read(p.join("model.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut n: Vec<(String, Vec<usize>)> = st
            .tensors()
            .into_iter()
            .map(|(k, v)| (k, v.shape().to_vec()))
            .collect();
        n.sort();
        n
    };
    assert_eq!(names(tmp.path()), names(&dir("default")));
    // Written config.json parses back and carries what transformers reads.
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("config.json")).unwrap())
            .unwrap();
    assert_eq!(v["architectures"][0], "LlamaForCausalLM");
    assert_eq!(v["rope_parameters"]["rope_type"], "default");
    assert_eq!(v["rope_scaling"], serde_json::Value::Null);
    assert_eq!(
        LlamaConfig::load(tmp.path()).unwrap(),
        model.config().clone()
    );
}

/// Name, shape and bytes of one tensor of a shard.
type Shard = (String, Vec<usize>, Vec<u8>);

/// Write the fixture's tensors re-encoded as `dtype`, split into two shards with an index.
fn write_sharded(src: &Path, dst: &Path, dtype: Dtype) -> BTreeMap<String, Vec<f32>> {
    let model = load_llama(src, &Device::flex()).unwrap();
    let tensors = hf_tensors(&model);
    let mut expect = BTreeMap::new();
    let mut shards: [Vec<Shard>; 2] = [vec![], vec![]];
    for (i, (name, (shape, values))) in tensors.iter().enumerate() {
        let (bytes, rounded): (Vec<u8>, Vec<f32>) = match dtype {
            Dtype::F16 => {
                let h: Vec<half::f16> = values.iter().map(|&x| half::f16::from_f32(x)).collect();
                (
                    h.iter().flat_map(|x| x.to_le_bytes()).collect(),
                    h.iter().map(|x| x.to_f32()).collect(),
                )
            }
            Dtype::BF16 => {
                let h: Vec<half::bf16> = values.iter().map(|&x| half::bf16::from_f32(x)).collect();
                (
                    h.iter().flat_map(|x| x.to_le_bytes()).collect(),
                    h.iter().map(|x| x.to_f32()).collect(),
                )
            }
            _ => (
                values.iter().flat_map(|x| x.to_le_bytes()).collect(),
                values.clone(),
            ),
        };
        expect.insert(name.clone(), rounded);
        shards[i % 2].push((name.clone(), shape.clone(), bytes));
    }
    std::fs::create_dir_all(dst).unwrap();
    std::fs::copy(src.join("config.json"), dst.join("config.json")).unwrap();
    let mut weight_map = serde_json::Map::new();
    for (k, shard) in shards.iter().enumerate() {
        let file = format!("model-{:05}-of-00002.safetensors", k + 1);
        let views: Vec<(String, TensorView)> = shard
            .iter()
            .map(|(n, s, b)| (n.clone(), TensorView::new(dtype, s.clone(), b).unwrap()))
            .collect();
        for (n, _, _) in shard {
            weight_map.insert(n.clone(), serde_json::json!(file));
        }
        safetensors::tensor::serialize_to_file(views, None, &dst.join(&file)).unwrap();
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(
        dst.join("model.safetensors.index.json"),
        serde_json::to_string(&index).unwrap(),
    )
    .unwrap();
    expect
}

#[test]
fn loads_sharded_f32_f16_and_bf16() {
    for dtype in [Dtype::F32, Dtype::F16, Dtype::BF16] {
        let tmp = tempfile::tempdir().unwrap();
        let expect = write_sharded(&dir("llama3"), tmp.path(), dtype);
        let model = load_llama(tmp.path(), &Device::flex()).unwrap();
        let got = hf_tensors(&model);
        for (name, values) in &expect {
            assert_eq!(&got[name].1, values, "{dtype:?} {name}");
        }
        let info = inspect_checkpoint(tmp.path()).unwrap();
        let names: Vec<String> = info
            .files
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "config.json",
                "model-00001-of-00002.safetensors",
                "model-00002-of-00002.safetensors",
                "model.safetensors.index.json"
            ]
        );
    }
}

#[test]
fn import_copies_and_lists_files_and_rejects_mismatches() {
    let tmp = tempfile::tempdir().unwrap();
    let dst = tmp.path().join("imported");
    let info = import_checkpoint(&dir("yarn"), &dst).unwrap();
    assert!(info.files.iter().all(|p| p.starts_with(&dst)));
    let names: Vec<_> = info
        .files
        .iter()
        .map(|p| p.file_name().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["config.json", "model.safetensors"]);
    assert_eq!(info.config.rope.rope_type(), "yarn");
    assert!(load_llama(&dst, &Device::flex()).is_ok());

    // A config that does not fit the weights names the tensor and both shapes.
    let text = std::fs::read_to_string(dst.join("config.json")).unwrap();
    std::fs::write(
        dst.join("config.json"),
        text.replace("\"intermediate_size\": 96", "\"intermediate_size\": 128"),
    )
    .unwrap();
    let err = inspect_checkpoint(&dst).unwrap_err().to_string();
    assert!(
        err.contains("tensor `model.layers.0.mlp.gate_proj.weight` has shape [96, 64], the config implies [128, 64]"),
        "{err}"
    );
    let err = load_llama(&dst, &Device::flex()).unwrap_err().to_string();
    assert!(
        err.contains("has shape [96, 64], the config implies [128, 64]"),
        "{err}"
    );

    // No weights at all.
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::copy(dir("yarn").join("config.json"), empty.join("config.json")).unwrap();
    let err = inspect_checkpoint(&empty).unwrap_err();
    assert!(matches!(err, ModelError::Checkpoint { .. }));
    assert!(err.to_string().contains("no model.safetensors"), "{err}");

    // Missing config.json names the file.
    let err = load_llama(tmp.path(), &Device::flex())
        .unwrap_err()
        .to_string();
    assert!(err.contains("config.json"), "{err}");
}
