//! Times the model benchmark (`ropelens::model::bench::bench_model`) on the CPU and prints the
//! figures as JSON. `cargo run --release --example bench_model [-- ITERS [EVAL_LEN]]`.

use ropelens::model::bench::{BenchOptions, bench_model};
use ropelens::progress::Silent;

fn main() -> anyhow::Result<()> {
    let mut opts = BenchOptions::default();
    if let Some(n) = std::env::args().nth(1) {
        opts.iters = n.parse()?;
    }
    if let Some(n) = std::env::args().nth(2) {
        opts.eval_len = n.parse()?;
    }
    if std::env::var_os("BENCH_MALLOPT").is_some() {
        ropelens::device::keep_freed_memory();
    }
    let device = ropelens::device::device("cpu")?;
    let r = bench_model(&opts, &device, &Silent)?;
    println!(
        "{{\"impl\": \"ropelens-burn\", \"params\": {}, \"train_step_s\": {:.4}, \"eval_forward_s\": {:.4}, \"train_step_cpu_s\": {:.4}, \"eval_forward_cpu_s\": {:.4}, \"threads\": {}}}",
        r.params,
        r.train_step_s,
        r.eval_forward_s,
        r.train_step_cpu_s,
        r.eval_forward_cpu_s,
        std::env::var("RAYON_NUM_THREADS")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
    );
    Ok(())
}
