//! The CPU training attention (`model::flash_grad`: the fused forward with FlashAttention-2's
//! backward) against PyTorch (fixture from tests/fixtures/make_attention_fixtures.py: causal
//! `scaled_dot_product_attention` with repeated KV heads, in float64) and against burn's
//! decomposed autodiff attention, for grouped-query and plain multi-head shapes whose lengths
//! are below, at and not a multiple of the kernels' tiles.

use std::path::Path;

use burn::tensor::{Device, Tensor, TensorData};
use ropelens::model::attention::attend_materialized;
use ropelens::model::flash_grad;
use ropelens::model::llama::to_f32_vec;

use crate::model::fixture::{read_arrays, rel_diff};

/// The output and the gradients of q, k and v of `sum(out * d_out)`.
struct Grads {
    out: Vec<f32>,
    dq: Vec<f32>,
    dk: Vec<f32>,
    dv: Vec<f32>,
}

fn tensor(arrays: &Arrays, name: &str, device: &Device) -> Tensor<4> {
    let (shape, values) = &arrays[name];
    let values: Vec<f32> = values.iter().map(|&x| x as f32).collect();
    let shape: [usize; 4] = shape.as_slice().try_into().unwrap();
    Tensor::from_data(TensorData::new(values, shape), device)
}

type Arrays = std::collections::HashMap<String, (Vec<usize>, Vec<f64>)>;

fn vec(t: Tensor<4>) -> Vec<f32> {
    to_f32_vec(t)
}

/// Runs `attend` on shape `i` of the fixture on the CPU autodiff device.
fn run(
    arrays: &Arrays,
    i: usize,
    attend: impl Fn(Tensor<4>, Tensor<4>, Tensor<4>) -> Tensor<4>,
) -> Grads {
    let device = Device::flex().autodiff();
    let [q, k, v] =
        ["q", "k", "v"].map(|n| tensor(arrays, &format!("{i}.{n}"), &device).require_grad());
    let d_out = tensor(arrays, &format!("{i}.d_out"), &device);
    let out = attend(q.clone(), k.clone(), v.clone());
    let grads = (out.clone() * d_out).sum().backward();
    let grad = |t: &Tensor<4>| vec(t.grad(&grads).expect("input has a gradient"));
    Grads {
        dq: grad(&q),
        dk: grad(&k),
        dv: grad(&v),
        out: vec(out.inner()),
    }
}

fn compare(what: &str, got: &Grads, want: &Grads, tol: f32) {
    for (name, g, w) in [
        ("out", &got.out, &want.out),
        ("dq", &got.dq, &want.dq),
        ("dk", &got.dk, &want.dk),
        ("dv", &got.dv, &want.dv),
    ] {
        let d = rel_diff(g, w);
        assert!(
            d <= tol,
            "{what}: {name} differs by {d:e} (relative to its max)"
        );
    }
}

#[test]
fn training_attention_matches_pytorch_and_the_decomposed_backward() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/attention/reference.safetensors");
    let arrays = read_arrays(&path);
    let shapes = arrays.keys().filter(|k| k.ends_with(".q")).count();
    assert_eq!(shapes, 3, "fixture shapes");
    for i in 0..shapes {
        let torch = Grads {
            out: vec(tensor(&arrays, &format!("{i}.out"), &Device::flex())),
            dq: vec(tensor(&arrays, &format!("{i}.dq"), &Device::flex())),
            dk: vec(tensor(&arrays, &format!("{i}.dk"), &Device::flex())),
            dv: vec(tensor(&arrays, &format!("{i}.dv"), &Device::flex())),
        };
        let fused = run(&arrays, i, flash_grad::attend);
        let decomposed = run(&arrays, i, |q, k, v| {
            attend_materialized(q, k, v, 0, false).0
        });
        compare(&format!("shape {i}, fused vs torch"), &fused, &torch, 2e-6);
        compare(
            &format!("shape {i}, decomposed vs torch"),
            &decomposed,
            &torch,
            2e-6,
        );
        compare(
            &format!("shape {i}, fused vs decomposed"),
            &fused,
            &decomposed,
            2e-6,
        );
    }
}

/// Inputs that need no gradient take the op's untracked path: the same output, no gradients.
#[test]
fn untracked_inputs_give_the_same_output() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/attention/reference.safetensors");
    let arrays = read_arrays(&path);
    let device = Device::flex().autodiff();
    let [q, k, v] = ["q", "k", "v"].map(|n| tensor(&arrays, &format!("0.{n}"), &device));
    let tracked = run(&arrays, 0, flash_grad::attend);
    let out = flash_grad::attend(q, k, v);
    assert_eq!(vec(out.inner()), tracked.out);
    assert!(flash_grad::available(&device));
    assert!(!flash_grad::available(&Device::flex()));
}
