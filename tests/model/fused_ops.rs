//! The fused CPU training ops (`model::fused`: RMSNorm, SwiGLU, RoPE with the head transpose,
//! cross-entropy) against PyTorch (fixture from tests/fixtures/make_fused_fixtures.py, float64)
//! and against burn's decomposed autodiff form of the same function, outputs and gradients.

use std::collections::HashMap;
use std::path::Path;

use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};
use ropelens::model::fused::rope::{Rotary, rotate_heads};
use ropelens::model::fused::{linear, loss, norm, swiglu};
use ropelens::model::host_op;
use ropelens::model::llama::{apply_rope, to_f32_vec};

use crate::model::fixture::{read_arrays, rel_diff};

type Arrays = HashMap<String, (Vec<usize>, Vec<f64>)>;

fn arrays() -> Arrays {
    read_arrays(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fused/reference.safetensors"),
    )
}

fn values(a: &Arrays, name: &str) -> Vec<f32> {
    a[name].1.iter().map(|&x| x as f32).collect()
}

fn tensor<const D: usize>(a: &Arrays, name: &str, device: &Device) -> Tensor<D> {
    let shape: [usize; D] = a[name].0.as_slice().try_into().unwrap();
    Tensor::from_data(TensorData::new(values(a, name), shape), device)
}

fn check(what: &str, got: &[f32], want: &[f32], tol: f32) {
    let d = rel_diff(got, want);
    // Shown with --nocapture: the measured differences docs/model.md quotes.
    eprintln!("{what}: {d:.1e}");
    assert!(d <= tol, "{what} differs by {d:e} (relative to its max)");
}

fn train_device() -> Device {
    let device = Device::flex().autodiff();
    assert!(host_op::available(&device));
    device
}

/// The output and the input gradients of `sum(f(inputs) * d_out)`.
fn run<const D: usize, const O: usize, const N: usize>(
    a: &Arrays,
    inputs: [&str; N],
    d_out: &str,
    f: impl Fn([Tensor<D>; N]) -> Tensor<O>,
) -> (Vec<f32>, [Vec<f32>; N]) {
    let device = train_device();
    let xs = inputs.map(|n| tensor::<D>(a, n, &device).require_grad());
    let out = f(xs.clone());
    let grads = (out.clone() * tensor::<O>(a, d_out, &device))
        .sum()
        .backward();
    let g = xs.map(|x| to_f32_vec(x.grad(&grads).expect("input has a gradient")));
    (to_f32_vec(out.inner()), g)
}

/// Fused against torch and against the decomposed form: output to `out_tol`, gradients to
/// `grad_tol`.
fn compare<const N: usize>(
    op: &str,
    fused: &(Vec<f32>, [Vec<f32>; N]),
    decomposed: &(Vec<f32>, [Vec<f32>; N]),
    torch: &(Vec<f32>, [Vec<f32>; N]),
    (out_tol, grad_tol): (f32, f32),
) {
    for (who, want) in [("torch", torch), ("decomposed", decomposed)] {
        check(&format!("{op} output vs {who}"), &fused.0, &want.0, out_tol);
        for (i, (g, w)) in fused.1.iter().zip(&want.1).enumerate() {
            check(&format!("{op} gradient {i} vs {who}"), g, w, grad_tol);
        }
    }
    check(
        &format!("{op}: decomposed vs torch"),
        &decomposed.0,
        &torch.0,
        out_tol,
    );
}

#[test]
fn rms_norm_matches_pytorch_and_the_decomposed_form() {
    let a = arrays();
    let eps = 1e-6;
    // The weight is 1-D, the input 3-D: both go in as 3-D and the weight is reshaped.
    let norm_of = |f: fn(Tensor<3>, Tensor<1>, f64) -> Tensor<3>| {
        let device = train_device();
        let x = tensor::<3>(&a, "norm.x", &device).require_grad();
        let w = tensor::<1>(&a, "norm.w", &device).require_grad();
        let out = f(x.clone(), w.clone(), eps);
        let grads = (out.clone() * tensor::<3>(&a, "norm.d_out", &device))
            .sum()
            .backward();
        let dx = to_f32_vec(x.grad(&grads).unwrap());
        let dw = to_f32_vec(w.grad(&grads).unwrap());
        (to_f32_vec(out.inner()), [dx, dw])
    };
    let torch = (
        values(&a, "norm.y"),
        [values(&a, "norm.dx"), values(&a, "norm.dw")],
    );
    let fused = norm_of(norm::rms_norm);
    let decomposed = norm_of(norm::decomposed);
    compare("RMSNorm", &fused, &decomposed, &torch, (1e-6, 1e-5));
}

#[test]
fn swiglu_matches_pytorch_and_the_decomposed_form() {
    let a = arrays();
    let inputs = ["swiglu.gate", "swiglu.up"];
    let torch = (
        values(&a, "swiglu.y"),
        [values(&a, "swiglu.dgate"), values(&a, "swiglu.dup")],
    );
    let fused = run(&a, inputs, "swiglu.d_out", |[g, u]: [Tensor<3>; 2]| {
        swiglu::swiglu(g, u)
    });
    let decomposed = run(&a, inputs, "swiglu.d_out", |[g, u]: [Tensor<3>; 2]| {
        swiglu::decomposed(g, u)
    });
    compare("SwiGLU", &fused, &decomposed, &torch, (1e-6, 1e-5));
}

#[test]
fn rope_matches_pytorch_and_the_decomposed_form() {
    let a = arrays();
    let [t, d] = [37, 16];
    let heads = 3;
    let rot =
        |device: &Device| Rotary::new(values(&a, "rope.cos"), values(&a, "rope.sin"), t, d, device);
    let torch = (values(&a, "rope.y"), [values(&a, "rope.dx")]);
    let fused = run(&a, ["rope.x"], "rope.d_out", |[x]: [Tensor<3>; 1]| {
        let rot = rot(&x.device());
        rotate_heads(x, heads, &rot)
    });
    let decomposed = run(&a, ["rope.x"], "rope.d_out", |[x]: [Tensor<3>; 1]| {
        let (cos, sin) = rot(&x.device()).tensors();
        let [b, _, _] = x.dims();
        apply_rope(x.reshape([b, t, heads, d]).swap_dims(1, 2), cos, sin)
    });
    compare("RoPE", &fused, &decomposed, &torch, (1e-6, 1e-5));
}

#[test]
fn cross_entropy_matches_pytorch_and_the_decomposed_form() {
    let a = arrays();
    let targets = |device: &Device| {
        let v: Vec<i64> = a["loss.targets"].1.iter().map(|&x| x as i64).collect();
        Tensor::<2, Int>::from_data(TensorData::new(v, [2, 70]), device)
    };
    // The fixture's gradient is that of 0.5 * loss (the upstream gradient is honoured). Each
    // entry is (softmax - onehot) * 0.5 / rows: compared times rows / 0.5, at the scale of 1.
    let unscale = |g: Vec<f32>| -> Vec<f32> { g.iter().map(|x| x * 140.0 / 0.5).collect() };
    let torch = (
        values(&a, "loss.loss"),
        [unscale(values(&a, "loss.dlogits"))],
    );
    let of = |f: &dyn Fn(Tensor<3>, Tensor<2, Int>) -> Tensor<1>| {
        let device = train_device();
        let z = tensor::<3>(&a, "loss.logits", &device).require_grad();
        let out = f(z.clone(), targets(&device));
        let grads = (out.clone() * 0.5).backward();
        let dz = to_f32_vec(z.grad(&grads).unwrap());
        (to_f32_vec(out.inner()), [unscale(dz)])
    };
    let fused = of(&|z, t| loss::cross_entropy(z, t).unwrap());
    let decomposed = of(&loss::decomposed);
    compare("cross-entropy", &fused, &decomposed, &torch, (1e-6, 1e-5));
}

/// The linear op makes burn's GEMM calls (same strides, same split over threads), so its
/// output and both gradients equal `Tensor::matmul`'s bit for bit, below and above the size
/// at which the GEMM runs in parallel.
#[test]
fn linear_equals_burns_matmul_bit_for_bit() {
    let device = train_device();
    device.seed(5);
    for (rows, d_in, d_out) in [(140, 48, 200), (300, 160, 200)] {
        let x = Tensor::<2>::random([rows, d_in], Distribution::Normal(0.0, 1.0), &device);
        let w = Tensor::<2>::random([d_in, d_out], Distribution::Normal(0.0, 1.0), &device);
        let dy = Tensor::<2>::random([rows, d_out], Distribution::Normal(0.0, 1.0), &device);
        let grads_of = |f: fn(Tensor<2>, Tensor<2>) -> Tensor<2>| {
            let (x, w) = (x.clone().require_grad(), w.clone().require_grad());
            let out = f(x.clone(), w.clone());
            let grads = (out.clone() * dy.clone()).sum().backward();
            [
                to_f32_vec(out.inner()),
                to_f32_vec(x.grad(&grads).unwrap()),
                to_f32_vec(w.grad(&grads).unwrap()),
            ]
        };
        let fused = grads_of(linear::linear);
        let burn = grads_of(|x, w| x.matmul(w));
        for (name, (f, b)) in ["y", "dx", "dw"].iter().zip(fused.iter().zip(&burn)) {
            assert!(
                f == b,
                "[{rows}, {d_in}] x [{d_in}, {d_out}]: {name} differs from burn's"
            );
        }
    }
}

/// The tied head's product reads the embedding transposed in place and gives burn's 2-D
/// `x.matmul(w.transpose())` bit for bit (below and above burn's parallel-GEMM threshold), and
/// the head's former batched form wherever it has more than one row. With one row (a decoding
/// step) burn's batched product takes another path whose last bits differ: `eval_needle`
/// version 4.
#[test]
fn transposed_linear_equals_burns_matmul_of_the_transpose_bit_for_bit() {
    let device = Device::flex();
    device.seed(9);
    for (rows, d_in, d_out) in [(7, 48, 200), (300, 160, 700), (1, 576, 4099)] {
        let x = Tensor::<2>::random([rows, d_in], Distribution::Normal(0.0, 1.0), &device);
        let w = Tensor::<2>::random([d_out, d_in], Distribution::Normal(0.0, 1.0), &device);
        let fused = to_f32_vec(linear::linear_transposed(x.clone(), w.clone()));
        let burn = to_f32_vec(x.clone().matmul(w.clone().transpose()));
        let batched = to_f32_vec(x.unsqueeze::<3>().matmul(w.transpose().unsqueeze::<3>()));
        let case = format!("[{rows}, {d_in}] x [{d_out}, {d_in}]^T");
        assert!(fused == burn, "{case} differs from burn's");
        if rows > 1 {
            assert!(fused == batched, "{case} differs from the batched form");
        } else {
            let d = rel_diff(&fused, &batched);
            assert!(d < 1e-6, "{case}: {d:e} from the batched form");
        }
    }
}

#[test]
fn cross_entropy_refuses_a_target_outside_the_vocabulary() {
    let device = train_device();
    let z = Tensor::<3>::zeros([1, 2, 5], &device).require_grad();
    let t = Tensor::<2, Int>::from_data(TensorData::new(vec![1i64, 5], [1, 2]), &device);
    let err = loss::cross_entropy(z, t).unwrap_err().to_string();
    assert!(
        err.contains("target token 5 is not below vocab_size 5"),
        "{err}"
    );
}

/// On the evaluation device (the CPU without autodiff) each function runs the training
/// device's kernel forward only: the tracked forward's values bit for bit, torch's to 1e-6.
#[test]
fn the_evaluation_device_runs_the_training_kernels_forward() {
    let a = arrays();
    let eval = Device::flex();
    assert_eq!(host_op::path(&eval), host_op::HostPath::Forward);
    let train = train_device();
    let both = |f: &dyn Fn(&Device) -> Vec<f32>| (f(&eval), f(&train));

    let (e, t) = both(&|d| {
        to_f32_vec(norm::rms_norm(
            tensor::<3>(&a, "norm.x", d),
            tensor::<1>(&a, "norm.w", d),
            1e-6,
        ))
    });
    assert!(e == t, "RMSNorm: evaluation and training forwards differ");
    check(
        "RMSNorm evaluation vs torch",
        &e,
        &values(&a, "norm.y"),
        1e-6,
    );

    let (e, t) = both(&|d| {
        to_f32_vec(swiglu::swiglu(
            tensor::<3>(&a, "swiglu.gate", d),
            tensor::<3>(&a, "swiglu.up", d),
        ))
    });
    assert!(e == t, "SwiGLU: evaluation and training forwards differ");
    check(
        "SwiGLU evaluation vs torch",
        &e,
        &values(&a, "swiglu.y"),
        1e-6,
    );

    let [t_len, d_head, heads] = [37, 16, 3];
    let (e, t) = both(&|d| {
        let rot = Rotary::new(
            values(&a, "rope.cos"),
            values(&a, "rope.sin"),
            t_len,
            d_head,
            d,
        );
        to_f32_vec(rotate_heads(tensor::<3>(&a, "rope.x", d), heads, &rot))
    });
    assert!(e == t, "RoPE: evaluation and training forwards differ");
    check("RoPE evaluation vs torch", &e, &values(&a, "rope.y"), 1e-6);

    // Fixed values (not `random`, which draws differently per device).
    let values = |n: usize, k: usize| -> Vec<f32> {
        (0..n)
            .map(|i| ((i * k % 101) as f32 - 50.0) / 25.0)
            .collect()
    };
    let (x, w) = (values(70 * 24, 37), values(24 * 33, 53));
    let (e, t) = both(&|d| {
        let x = Tensor::<2>::from_data(TensorData::new(x.clone(), [70, 24]), d);
        let w = Tensor::<2>::from_data(TensorData::new(w.clone(), [24, 33]), d);
        to_f32_vec(linear::linear(x.clone(), w.clone()))
            .into_iter()
            .chain(to_f32_vec(x.matmul(w)))
            .collect()
    });
    let half = e.len() / 2;
    assert!(e == t, "linear: evaluation and training forwards differ");
    assert!(
        e[..half] == e[half..],
        "linear: the host product differs from burn's matmul"
    );
}

/// Where the host kernels cannot run (here: autodiff with gradient checkpointing) each function
/// is burn's decomposed form, bit for bit.
#[test]
fn off_the_cpu_kernels_the_decomposed_form_runs() {
    let a = arrays();
    let device = Device::flex().autodiff().gradient_checkpointing();
    assert_eq!(host_op::path(&device), host_op::HostPath::Decomposed);
    let x = tensor::<3>(&a, "norm.x", &device);
    let w = tensor::<1>(&a, "norm.w", &device);
    assert_eq!(
        to_f32_vec(norm::rms_norm(x.clone(), w.clone(), 1e-6)),
        to_f32_vec(norm::decomposed(x, w, 1e-6))
    );
    let (g, u) = (
        tensor::<3>(&a, "swiglu.gate", &device),
        tensor::<3>(&a, "swiglu.up", &device),
    );
    assert_eq!(
        to_f32_vec(swiglu::swiglu(g.clone(), u.clone())),
        to_f32_vec(swiglu::decomposed(g, u))
    );
}
