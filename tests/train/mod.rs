//! The training loop on tiny models: the loss falls, runs are deterministic, a killed run
//! resumes to the same weights, checkpoints reload, RoPE changes keep weights, and errors name
//! what went wrong.

mod bench_cli;
mod parity;

use burn::tensor::Device;
use ropelens::model::checkpoint::hf_tensors;
use ropelens::model::llama::to_f32_vec;
use ropelens::model::{
    HfLayout, Llama, LlamaConfig, RopeScaling, ids_tensor, load_llama, save_llama,
};
use ropelens::progress::Silent;
use ropelens::train::{
    ParamGroup, RopeParams, TokenWindows, TrainError, TrainJob, TrainOutput, TrainParams,
    seeded_init, train,
};

const VOCAB: usize = 48;

/// A stream with learnable structure: a fixed cycle through the vocabulary with a rare
/// seeded jump, so the next token is mostly a function of the current one.
fn stream(n: usize) -> Vec<u32> {
    let mut out = Vec::with_capacity(n);
    let mut t = 1u32;
    let mut x = 12345u64;
    for _ in 0..n {
        out.push(t);
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        t = if (x >> 60) == 0 {
            ((x >> 32) % VOCAB as u64) as u32
        } else {
            (t * 7 + 3) % VOCAB as u32
        };
    }
    out
}

fn tiny_config(max_pos: usize) -> LlamaConfig {
    let mut c = LlamaConfig::new(VOCAB, 32, 2, 4, max_pos);
    c.num_key_value_heads = 2;
    c
}

fn params(steps: u64) -> TrainParams {
    TrainParams {
        seq_len: 16,
        batch_size: 8,
        steps: Some(steps),
        lr: 1e-2,
        warmup_steps: Some(2),
        checkpoint_every: 0,
        val_every: 0,
        log_every: 1,
        ..TrainParams::default()
    }
}

fn model(seed: u64) -> Llama {
    let device = Device::flex().autodiff();
    seeded_init(Llama::init(&tiny_config(16), &device).unwrap(), seed)
}

fn validation() -> Vec<Vec<u32>> {
    let s = stream(5000);
    (0..8).map(|i| s[i * 100..i * 100 + 17].to_vec()).collect()
}

fn run(
    p: &TrainParams,
    dir: &std::path::Path,
    stop_after: Option<u64>,
) -> Result<TrainOutput, TrainError> {
    let job = TrainJob {
        params: p,
        seed: 7,
        run_dir: dir,
        progress: &Silent,
        stop_after,
    };
    let mut source = TokenWindows::new(stream(20_000), p.seq_len + 1, 7).unwrap();
    train(&job, model(7), &mut source, &validation())
}

fn weights(m: &Llama) -> Vec<(String, Vec<f32>)> {
    hf_tensors(m)
        .into_iter()
        .map(|(k, (_, v))| (k, v))
        .collect()
}

#[test]
fn loss_falls_and_logs_are_complete() {
    let dir = tempfile::tempdir().unwrap();
    let p = TrainParams {
        val_every: 20,
        checkpoint_every: 20,
        log_every: 10,
        ..params(60)
    };
    let out = run(&p, dir.path(), None).unwrap();
    let first = out.train_log.first().unwrap().loss;
    let last = out.train_log.last().unwrap().loss;
    // ln(48) = 3.87 at the start; the cycle is learnable down to the noise of the jumps.
    assert!(first > 3.5, "first loss {first}");
    assert!(last < 0.35 * first, "loss {first} -> {last}");
    let steps: Vec<i64> = out.train_log.iter().map(|r| r.step).collect();
    assert_eq!(steps, vec![1, 10, 20, 30, 40, 50, 60]);
    assert_eq!(out.train_log[1].tokens, 10 * 8 * 16);
    assert!(
        out.train_log
            .iter()
            .all(|r| r.seq_len == 16 && r.grad_norm.unwrap() > 0.0)
    );
    assert!(
        out.train_log
            .iter()
            .all(|r| r.tokens_per_s > 0.0 && r.elapsed_s > 0.0)
    );
    // Warmup of 2 steps then cosine to 10%, as transformers steps it: step k at the
    // schedule's value at k - 1.
    assert_eq!(out.train_log[0].lr, 0.0);
    let last = 1e-3 + 9e-3 * 0.5 * (1.0 + (std::f64::consts::PI * 57.0 / 58.0).cos());
    assert!((out.train_log.last().unwrap().lr - last).abs() < 1e-15);
    let val: Vec<i64> = out.val_log.iter().map(|r| r.step).collect();
    assert_eq!(val, vec![20, 40, 60]);
    assert!(out.val_log[2].val_loss < 0.5 * first, "{:?}", out.val_log);
    assert_eq!((out.steps, out.tokens), (60, 60 * 128));
    assert!(out.final_checkpoint.ends_with("checkpoints/step-00000060"));
    // Older checkpoints are gone once a newer one is in place.
    let left: Vec<_> = std::fs::read_dir(dir.path().join("checkpoints"))
        .unwrap()
        .collect();
    assert_eq!(left.len(), 1);
}

#[test]
fn same_seed_same_curve_and_resume_equals_uninterrupted() {
    let p = TrainParams {
        checkpoint_every: 4,
        val_every: 5,
        grad_accum: 2,
        ..params(12)
    };
    let a_dir = tempfile::tempdir().unwrap();
    let a = run(&p, a_dir.path(), None).unwrap();
    let b_dir = tempfile::tempdir().unwrap();
    let b = run(&p, b_dir.path(), None).unwrap();
    let losses = |o: &TrainOutput| o.train_log.iter().map(|r| r.loss).collect::<Vec<_>>();
    // Same seed: the same loss curve, bit for bit (the CPU backend is deterministic).
    assert_eq!(losses(&a), losses(&b));
    assert_eq!(weights(&a.model), weights(&b.model));

    // Killed after step 6: the checkpoint of step 4 is the newest; resuming replays 5 and 6.
    let c_dir = tempfile::tempdir().unwrap();
    let e = run(&p, c_dir.path(), Some(6)).unwrap_err();
    assert!(matches!(e, TrainError::Interrupted { step: 6 }), "{e}");
    let c = run(&p, c_dir.path(), None).unwrap();
    assert_eq!(c.resumed_from, Some(4));
    assert_eq!(losses(&c), losses(&a));
    assert_eq!(
        c.val_log.iter().map(|r| r.val_loss).collect::<Vec<_>>(),
        a.val_log.iter().map(|r| r.val_loss).collect::<Vec<_>>()
    );
    assert_eq!(
        weights(&c.model),
        weights(&a.model),
        "resumed weights differ"
    );

    // A finished run found again resumes at its end and trains nothing.
    let d = run(&p, c_dir.path(), None).unwrap();
    assert_eq!(d.resumed_from, Some(12));
    assert_eq!(weights(&d.model), weights(&a.model));

    // Another configuration refuses the checkpoint instead of mixing runs.
    let other = TrainParams {
        lr: 2e-2,
        ..p.clone()
    };
    let e = run(&other, c_dir.path(), None).unwrap_err().to_string();
    assert!(e.contains("written by a run with other parameters"), "{e}");
}

#[test]
fn grad_accumulation_matches_a_larger_batch() {
    let big = params(3);
    let small = TrainParams {
        batch_size: 4,
        grad_accum: 2,
        ..params(3)
    };
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = run(&big, d1.path(), None).unwrap();
    let b = run(&small, d2.path(), None).unwrap();
    let max_diff = weights(&a.model)
        .iter()
        .zip(weights(&b.model))
        .flat_map(|((_, x), (_, y))| {
            x.iter()
                .zip(y)
                .map(|(p, q)| (p - q).abs())
                .collect::<Vec<_>>()
        })
        .fold(0.0f32, f32::max);
    assert!(
        max_diff < 1e-4,
        "accumulated vs big batch differ by {max_diff}"
    );
    assert!((a.train_log[0].loss - b.train_log[0].loss).abs() < 1e-5);
}

#[test]
fn frozen_groups_do_not_move() {
    let p = TrainParams {
        trainable: Some(vec![ParamGroup::Attention]),
        ..params(3)
    };
    let dir = tempfile::tempdir().unwrap();
    let out = run(&p, dir.path(), None).unwrap();
    let before: std::collections::BTreeMap<_, _> =
        weights(&model(7).valid_model()).into_iter().collect();
    for (name, values) in weights(&out.model) {
        let same = before[&name] == values;
        assert_eq!(same, !name.contains("self_attn"), "{name}");
    }
}

trait Valid {
    fn valid_model(self) -> Llama;
}

impl Valid for Llama {
    fn valid_model(self) -> Llama {
        burn::module::Module::valid(&self)
    }
}

#[test]
fn trained_checkpoint_reloads_with_identical_logits() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(&params(3), dir.path(), None).unwrap();
    let saved = dir.path().join("final");
    save_llama(&out.model, &saved, HfLayout::Both).unwrap();
    let device = Device::flex();
    let back = load_llama(&saved, &device).unwrap();
    let ids = ids_tensor(&[stream(40)[..32].to_vec()], &device).unwrap();
    let a = to_f32_vec(out.model.forward(ids.clone()).unwrap());
    let b = to_f32_vec(back.forward(ids).unwrap());
    assert_eq!(a, b);
    // The checkpoint directory itself is a loadable model too.
    let ck = load_llama(&out.final_checkpoint, &device).unwrap();
    assert_eq!(weights(&ck), weights(&out.model));
}

#[test]
fn rope_change_keeps_every_weight_and_changes_only_frequencies() {
    let base = model(3).valid_model();
    let yarn: RopeParams = toml::from_str("rope_type = \"yarn\"\nfactor = 4.0").unwrap();
    let ext = yarn.apply_to(base.clone()).unwrap();
    assert_eq!(weights(&ext), weights(&base));
    let (bc, ec) = (base.config(), ext.config());
    assert_eq!(ec.max_position_embeddings, 64);
    assert!(matches!(
        ec.rope.scaling,
        RopeScaling::Yarn(ropelens::model::rope::Yarn {
            original_max_position_embeddings: Some(16),
            ..
        })
    ));
    // Everything but the RoPE and the length is the same config.
    let mut same = ec.clone();
    same.rope = bc.rope.clone();
    same.max_position_embeddings = bc.max_position_embeddings;
    assert_eq!(&same, bc);
    let fb = bc
        .rope
        .frequencies(bc.head_dim, bc.max_position_embeddings, 16);
    let fe = ec
        .rope
        .frequencies(ec.head_dim, ec.max_position_embeddings, 16);
    assert_ne!(fb.inv_freq, fe.inv_freq);
    // YaRN keeps the highest frequency and interpolates the lowest by the factor.
    assert_eq!(fb.inv_freq[0], fe.inv_freq[0]);
    let last = fb.inv_freq.len() - 1;
    assert!((fe.inv_freq[last] * 4.0 - fb.inv_freq[last]).abs() < 1e-6 * fb.inv_freq[last]);
}

#[test]
fn divergence_names_the_step_and_keeps_the_last_checkpoint() {
    let p = TrainParams {
        lr: 1e30,
        warmup_steps: Some(0),
        grad_clip: 0.0,
        checkpoint_every: 1,
        ..params(10)
    };
    let dir = tempfile::tempdir().unwrap();
    let e = run(&p, dir.path(), None).unwrap_err();
    let TrainError::Diverged {
        step,
        last_step,
        last_checkpoint,
        ..
    } = &e
    else {
        panic!("expected divergence, got {e}");
    };
    assert_eq!((*step, *last_step), (2, 1), "{e}");
    let ck = last_checkpoint.clone().unwrap();
    assert!(ck.join("model.safetensors").is_file());
    let msg = e.to_string();
    assert!(
        msg.starts_with("training diverged at step 2: loss is"),
        "{msg}"
    );
    assert!(msg.contains("step-00000001"), "{msg}");
}

#[test]
fn bad_inputs_are_errors_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let p = TrainParams {
        steps: Some(5),
        tokens: Some(100),
        ..params(5)
    };
    assert_eq!(
        run(&p, dir.path(), None).unwrap_err().to_string(),
        "`train.tokens`: give `steps` or `tokens`, not both (a token budget sets the steps)"
    );
    // A source with the wrong window length.
    let p = params(2);
    let job = TrainJob {
        params: &p,
        seed: 7,
        run_dir: dir.path(),
        progress: &Silent,
        stop_after: None,
    };
    let mut source = TokenWindows::new(stream(1000), 9, 7).unwrap();
    let e = train(&job, model(7), &mut source, &[]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "batch source: the source gives windows of 9 tokens; training at seq_len 16 needs 17"
    );
    // A model on a plain device cannot train.
    let mut source = TokenWindows::new(stream(1000), 17, 7).unwrap();
    let plain = Llama::init(&tiny_config(16), &Device::flex()).unwrap();
    let e = train(&job, plain, &mut source, &[]).unwrap_err();
    assert!(e.to_string().contains("autodiff device"), "{e}");
}

/// Throughput of the loop; run with
/// `cargo test --release --test tests train::throughput -- --ignored --nocapture`.
#[test]
#[ignore = "a benchmark: prints tokens/s, takes about a minute"]
fn throughput() {
    use ropelens::train::bench::{TrainBench, bench_train};
    // `ROPELENS_BENCH_SHARDS=1,2,4,8` sweeps `train.shards`; default: the default.
    let shards: Vec<usize> = std::env::var("ROPELENS_BENCH_SHARDS")
        .map(|v| v.split(',').map(|s| s.trim().parse().unwrap()).collect())
        .unwrap_or_else(|_| vec![ropelens::train::params::DEFAULT_SHARDS]);
    for (name, b) in [
        ("quickstart", TrainBench::quickstart()),
        ("quickstart extend", TrainBench::quickstart_extend()),
        ("5M", TrainBench::five_m()),
    ] {
        for &n in &shards {
            let b = TrainBench {
                shards: n,
                ..b.clone()
            };
            let r = bench_train(&b, &Device::flex(), &Silent).unwrap();
            println!(
                "{name}: {} params, batch {} x {}, {n} shards: {:.3} s/step ({:.3} CPU s), {:.0} tokens/s",
                r.params, b.batch_size, b.seq_len, r.step_s, r.step_cpu_s, r.tokens_per_s
            );
        }
    }
}

/// Blocks of 8 random tokens followed by the same 8 again: the second half of each block is
/// predictable only by attending back 8 positions (a copy circuit), never from the current
/// token alone.
fn copy_stream(n: usize) -> Vec<u32> {
    let mut out = Vec::with_capacity(n);
    let mut x = 99u64;
    while out.len() < n {
        let block: Vec<u32> = (0..8)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((x >> 33) % VOCAB as u64) as u32
            })
            .collect();
        out.extend(&block);
        out.extend(&block);
    }
    out.truncate(n);
    out
}

/// The training path learns attention, not only bigram statistics: on the copy stream a
/// 2-layer model must get well below ln(48) = 3.87 nats. PyTorch eager (transformers'
/// LlamaForCausalLM, the same shapes, optimiser and schedule) went from 3.90 to 2.86 in 1000
/// steps, ropelens to 2.78-2.95 (3.02 by step 300); a fresh random token is unpredictable, so
/// about 2.5-2.9 is the floor here. 400 steps keep the test short.
#[test]
fn attention_learns_to_copy_from_earlier_in_the_window() {
    let dir = tempfile::tempdir().unwrap();
    let p = TrainParams {
        batch_size: 32,
        lr: 3e-3,
        warmup_steps: Some(20),
        log_every: 50,
        ..params(400)
    };
    let job = TrainJob {
        params: &p,
        seed: 7,
        run_dir: dir.path(),
        progress: &Silent,
        stop_after: None,
    };
    let mut c = LlamaConfig::new(VOCAB, 128, 2, 4, 16);
    c.num_key_value_heads = 4;
    let device = Device::flex().autodiff();
    let model = seeded_init(Llama::init(&c, &device).unwrap(), 7);
    let mut source = TokenWindows::new(copy_stream(40_000), p.seq_len + 1, 7).unwrap();
    let out = train(&job, model, &mut source, &validation()).unwrap();
    let losses: Vec<f64> = out.train_log.iter().map(|r| r.loss).collect();
    let tail = &losses[losses.len() - 3..];
    let mean = tail.iter().sum::<f64>() / tail.len() as f64;
    assert!(mean < 3.3, "no copying learnt: {losses:?}");
}

/// A batch split into shards that run in parallel (one per thread) gives the loss and the
/// gradients of the whole batch: the same mean, up to float summation order.
#[test]
fn sharded_step_equals_the_whole_batch() {
    let m = model(3);
    let device = m.device();
    let s = stream(2000);
    let (rows, window) = (7, 17);
    let tokens: Vec<u32> = (0..rows)
        .flat_map(|r| s[r * 50..r * 50 + window].to_vec())
        .collect();
    for accum in [1, 3] {
        let whole = ropelens::train::Shards::new(rows, window, accum, 1).unwrap();
        let (loss1, g1) = whole.loss_and_grads(&m, &tokens, &device).unwrap();
        for count in [2, 3, 7] {
            let split = ropelens::train::Shards::new(rows, window, accum, count).unwrap();
            assert_eq!(split.len(), count);
            let (loss2, g2) = split.loss_and_grads(&m, &tokens, &device).unwrap();
            assert!(
                (loss1 - loss2).abs() < 1e-6,
                "{count} shards: {loss1} vs {loss2}"
            );
            let (g1, g2) = (g1.values(), g2.values());
            assert_eq!(g1.len(), g2.len());
            assert!(!g1.is_empty());
            for ((p1, v1), (p2, v2)) in g1.iter().zip(&g2) {
                assert_eq!(p1, p2);
                let scale = v1.iter().fold(0f32, |a, x| a.max(x.abs())).max(1e-3);
                let diff = v1
                    .iter()
                    .zip(v2)
                    .fold(0f32, |a, (x, y)| a.max((x - y).abs()));
                assert!(
                    diff <= 1e-5 * scale,
                    "{count} shards, {p1}: {diff} (max {scale})"
                );
            }
            // Twice the same: bit for bit.
            let (loss3, g3) = split.loss_and_grads(&m, &tokens, &device).unwrap();
            assert_eq!(loss2.to_bits(), loss3.to_bits());
            assert_eq!(g2, g3.values());
        }
    }
}

#[test]
fn thread_count_changes_nothing() {
    // Three shards of 8 rows (3 + 3 + 2) on 1, 2 and 3 threads: the same losses, gradient
    // norms, validation losses and weights, bit for bit.
    let p = TrainParams {
        shards: 3,
        val_every: 3,
        ..params(6)
    };
    let runs: Vec<TrainOutput> = [1, 2, 3]
        .into_iter()
        .map(|threads| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let dir = tempfile::tempdir().unwrap();
            pool.install(|| run(&p, dir.path(), None)).unwrap()
        })
        .collect();
    let bits = |o: &TrainOutput| {
        let log: Vec<(u64, u64)> = o
            .train_log
            .iter()
            .map(|r| (r.loss.to_bits(), r.grad_norm.unwrap().to_bits()))
            .collect();
        let val: Vec<u64> = o.val_log.iter().map(|r| r.val_loss.to_bits()).collect();
        let w: Vec<(String, Vec<u32>)> = weights(&o.model)
            .into_iter()
            .map(|(k, v)| (k, v.iter().map(|x| x.to_bits()).collect()))
            .collect();
        (log, val, w)
    };
    let first = bits(&runs[0]);
    assert_eq!(first.0.len(), 6);
    assert_eq!(first.1.len(), 2);
    for (threads, r) in [2, 3].into_iter().zip(&runs[1..]) {
        let b = bits(r);
        assert_eq!(b.0, first.0, "{threads} threads: other losses or norms");
        assert_eq!(b.1, first.1, "{threads} threads: other validation losses");
        assert!(b.2 == first.2, "{threads} threads: other weights");
    }
}
