//! Time and peak memory of the evaluation at one length, for docs/eval.md.
//!
//! `cargo run --release --example eval_bench -- <ppl|nll-fused|attention> <length>` builds the ~5M
//! benchmark config (hidden 256, 4 layers, 4 heads, ffn 704, vocab 4096, trained length 256,
//! random weights), evaluates one random window of `length` tokens and prints one JSON line:
//! seconds and the process's peak resident memory (run each length in its own process so the
//! peak is that length's).

use std::time::Instant;

use burn::tensor::Device;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use ropelens::eval::attention::attention_analysis;
use ropelens::eval::ppl::{PplDoc, PplMode, PplOptions, evaluate_ppl};
use ropelens::model::{AttentionBlocks, Llama, LlamaConfig};
use ropelens::progress::Silent;

fn peak_rss_mib() -> f64 {
    // SAFETY: getrusage only writes into the struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    usage.ru_maxrss as f64 / 1024.0
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if let [_, save, dir] = args.as_slice()
        && save == "save"
    {
        // The benchmark model as a Hugging Face checkpoint, to import with a `model` stage.
        let mut cfg = LlamaConfig::new(4096, 256, 4, 4, 256);
        cfg.intermediate_size = 704;
        let device = Device::flex();
        device.seed(7);
        let model = Llama::init(&cfg, &device)?;
        ropelens::model::save_llama(&model, std::path::Path::new(dir), Default::default())?;
        return Ok(());
    }
    let (what, length) = match args.as_slice() {
        [_, w, l] => (w.clone(), l.parse::<usize>()?),
        _ => anyhow::bail!(
            "usage: eval_bench <ppl|nll-fused|attention> <length> | eval_bench save <dir>"
        ),
    };
    let mut cfg = LlamaConfig::new(4096, 256, 4, 4, 256);
    cfg.intermediate_size = 704;
    let device = Device::flex();
    device.seed(7);
    let model = Llama::init(&cfg, &device)?;
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let tokens: Vec<u32> = (0..length).map(|_| rng.random_range(0..4096)).collect();
    let before = peak_rss_mib();
    let start = Instant::now();
    let value = match what.as_str() {
        "ppl" => {
            let doc = PplDoc {
                id: "0",
                tokens: &tokens,
                marks: None,
            };
            let opts = PplOptions {
                length,
                mode: PplMode::Truncate,
                batch_size: 1,
                chunk: 1024,
            };
            evaluate_ppl(&model, &[doc], &opts, &Silent)?.rows[0].nll
        }
        "nll-fused" => {
            // The model's own full forward (burn's fused attention), for comparison.
            let ids = ropelens::model::ids_tensor(&[tokens], &device)?;
            let nll = ropelens::model::llama::to_f32_vec(model.nll(ids, 1024)?);
            nll.iter().map(|&v| v as f64).sum::<f64>() / nll.len() as f64
        }
        "attention" => {
            // The attention stage's one pass: every query's entropy and the distance profile.
            let a = attention_analysis(&model, &[tokens], AttentionBlocks::default(), 1, &Silent)?;
            a.entropy.last().map_or(f64::NAN, |r| r.entropy_mean)
        }
        other => anyhow::bail!("unknown measurement `{other}`"),
    };
    let seconds = start.elapsed().as_secs_f64();
    println!(
        "{{\"what\":\"{what}\",\"length\":{length},\"seconds\":{seconds:.3},\"peak_rss_mib\":{:.1},\"rss_before_mib\":{before:.1},\"value\":{value}}}",
        peak_rss_mib()
    );
    Ok(())
}
