//! The model trains on an autodiff device, and a RoPE change keeps every weight.

use burn::module::Module;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::Device;
use ropelens::model::checkpoint::hf_tensors;
use ropelens::model::llama::to_f32_vec;
use ropelens::model::rope::{Linear, Yarn};
use ropelens::model::{Llama, LlamaConfig, RopeConfig, RopeScaling, ids_tensor};

fn tiny() -> LlamaConfig {
    let mut c = LlamaConfig::new(32, 32, 2, 4, 16);
    c.num_key_value_heads = 2;
    c
}

#[test]
fn adamw_steps_lower_the_loss_and_autodiff_matches_inference() {
    let device = Device::flex().autodiff();
    device.seed(3);
    let mut model = Llama::init(&tiny(), &device).unwrap();
    // A repeating sequence is easy to learn.
    let rows: Vec<Vec<u32>> = (0..4)
        .map(|r| (0..16).map(|i| ((i + r) % 8) as u32).collect())
        .collect();
    let ids = ids_tensor(&rows, &device).unwrap();
    let mut optim = AdamWConfig::new().init();
    let first = to_f32_vec(model.lm_loss(ids.clone()).unwrap())[0];
    // The autodiff (materialized attention) and plain (fused attention) forwards agree.
    let inference = model.valid();
    let plain_ids = ids_tensor(&rows, &Device::flex()).unwrap();
    let a = to_f32_vec(model.forward(ids.clone()).unwrap());
    let b = to_f32_vec(inference.forward(plain_ids).unwrap());
    let d = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max);
    assert!(d < 1e-5, "autodiff vs inference logits differ by {d}");
    let mut last = first;
    for _ in 0..30 {
        let loss = model.lm_loss(ids.clone()).unwrap();
        last = to_f32_vec(loss.clone())[0];
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(3e-3, model, grads);
    }
    assert!(
        (first - (32f32).ln()).abs() < 0.2,
        "initial loss {first} is not about ln(32)"
    );
    assert!(last < first * 0.5, "loss {first} -> {last} did not fall");
}

#[test]
fn changing_rope_keeps_every_weight_and_changes_the_output() {
    let device = Device::flex();
    device.seed(5);
    let model = Llama::init(&tiny(), &device).unwrap();
    let before = hf_tensors(&model);
    let ids = ids_tensor(&[(0..16).collect()], &device).unwrap();
    let y0 = to_f32_vec(model.forward(ids.clone()).unwrap());
    let yarn = RopeConfig::new(1e4).with_scaling(RopeScaling::Yarn(Yarn::new(4.0)));
    let model = model.with_rope(yarn.clone()).unwrap();
    assert_eq!(model.config().rope, yarn);
    assert_eq!(hf_tensors(&model), before);
    let y1 = to_f32_vec(model.forward(ids).unwrap());
    assert!(y0.iter().zip(&y1).any(|(a, b)| (a - b).abs() > 1e-4));
    let bad = RopeConfig::new(1e4).with_scaling(RopeScaling::Linear(Linear { factor: 0.5 }));
    assert!(model.with_rope(bad).is_err());
}

/// PI, NTK and YaRN with factor 1 are the plain model: the adaptation gate's sanity check that
/// an extension changes nothing by itself (logits equal to 1e-6).
#[test]
fn extensions_with_factor_one_give_the_plain_model() {
    let device = Device::flex();
    device.seed(9);
    let model = Llama::init(&tiny(), &device).unwrap();
    let ids = ids_tensor(&[(0..16).collect()], &device).unwrap();
    let plain = to_f32_vec(model.forward(ids.clone()).unwrap());
    let hf = tiny().to_hf_value(ropelens::model::HfLayout::V4);
    for (key, scaling) in [
        (
            "rope_scaling",
            serde_json::json!({"rope_type": "linear", "factor": 1.0}),
        ),
        (
            "rope_scaling",
            serde_json::json!({"rope_type": "yarn", "factor": 1.0,
                "original_max_position_embeddings": 16}),
        ),
        (
            "ropelens_rope",
            serde_json::json!({"rope_type": "ntk", "factor": 1.0}),
        ),
    ] {
        let mut v = hf.clone();
        v[key] = scaling.clone();
        let config = LlamaConfig::from_hf_value(&v, "test").unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(config.rope, tiny().rope, "{scaling} parsed as a scaling");
        let scaled = model.clone().with_rope(config.rope.clone()).unwrap();
        let y = to_f32_vec(scaled.forward(ids.clone()).unwrap());
        let worst = plain
            .iter()
            .zip(&y)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst <= 1e-6, "{scaling}: max |logit difference| {worst}");
    }
}
