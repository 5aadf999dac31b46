//! The `pipe` command line: flags (clap) and one function per subcommand.
//!
//! `main` calls [`run`] and nothing else (ripgrep's shape); every error is printed once, here.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use clap::{Parser, Subcommand};

use crate::error::{Error, Result};
use crate::pipeline::cache::Cache;
use crate::pipeline::exec::{ExecOptions, Selection};
use crate::pipeline::executor::{self as executors, ExecutorName, ExecutorOptions};
use crate::pipeline::graph::DagFormat;
use crate::pipeline::{self, schema};
use crate::stages::StageKind;

#[derive(Debug, Parser)]
#[command(
    name = "pipe",
    version,
    about = "Run TOML pipelines of cached, parallel stages into Parquet results"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Flags shared by commands that load a pipeline.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// The pipeline file.
    pub file: PathBuf,
    /// Override a value for this run: `--set stages.extend.train.steps=100` (a TOML value; a
    /// bare word is a string).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
}

/// Which instances to consider.
#[derive(Debug, Clone, clap::Args)]
pub struct SelectArgs {
    /// Only this stage or instance (and what it needs); repeatable.
    #[arg(long = "stage", value_name = "NAME")]
    pub stages: Vec<String>,
    /// Also everything downstream of the selected stages.
    #[arg(long)]
    pub downstream: bool,
    /// Rebuild the selected stages (all, without --stage) even when cached.
    #[arg(long)]
    pub force: bool,
    /// Rebuild every instance of the run, upstream included.
    #[arg(long)]
    pub force_all: bool,
}

impl SelectArgs {
    fn selection(&self) -> Selection {
        Selection {
            stages: self.stages.clone(),
            downstream: self.downstream,
            force: self.force,
            force_all: self.force_all,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build what is not cached, then write results/<pipeline>/.
    Run {
        #[command(flatten)]
        load: LoadArgs,
        #[command(flatten)]
        select: SelectArgs,
        /// Print what would run, and why, without running anything.
        #[arg(long)]
        dry_run: bool,
        /// Instances run at once (default: the number of cores).
        #[arg(short = 'j', long)]
        jobs: Option<usize>,
        /// After a failure, go on with everything that does not depend on it.
        #[arg(long)]
        keep_going: bool,
        /// No progress output.
        #[arg(short, long)]
        quiet: bool,
        /// Where instances run (default: the pipeline's `executor`, else local).
        #[arg(long, value_enum)]
        executor: Option<ExecutorName>,
    },
    /// Run one prepared job (what a Slurm job runs on its node).
    #[command(hide = true)]
    Exec {
        /// The job description (`<cache>/jobs/<key>/job.json`).
        job: PathBuf,
    },
    /// Print each instance as cached, run or stale, with the reason.
    Status {
        #[command(flatten)]
        load: LoadArgs,
        #[command(flatten)]
        select: SelectArgs,
    },
    /// Print the instance graph.
    Dag {
        #[command(flatten)]
        load: LoadArgs,
        #[arg(long, value_enum, default_value = "text")]
        format: DagFormat,
    },
    /// Check a pipeline file without running anything.
    Validate {
        #[command(flatten)]
        load: LoadArgs,
    },
    /// Print the JSON schema of pipeline files.
    Schema,
    /// Print the frequency view of a model's RoPE: per frequency pair its wavelength, the
    /// rotations it completes within the pretrained length, and the interpolation a method
    /// applies (docs/study.md).
    Rope {
        /// The model's config.json.
        config: PathBuf,
        /// Override a RoPE key (transformers' `rope_parameters`): `--set rope_type=yarn --set
        /// factor=4` (a JSON value; a bare word is a string). Setting `rope_type` starts from
        /// that type's defaults.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// Forward length for the length-dependent types (dynamic, longrope); default the
        /// pretrained length times the factor.
        #[arg(long)]
        length: Option<usize>,
    },
    /// Regenerate the report (report.md and figures) of a pipeline's report stages from its
    /// results directory, without running anything.
    Report {
        #[command(flatten)]
        load: LoadArgs,
    },
    /// Inspect or clean the cache ($PIPE_CACHE or .pipe/cache).
    Cache {
        #[command(subcommand)]
        command: CacheCommand,
    },
    /// Benchmarks of the tool itself.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// List entries with size, age and instance.
    Ls,
    /// Remove entries that no given pipeline file references.
    Gc {
        /// Pipeline files whose instances to keep.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// Only print what would be removed.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// No-op re-run of a fully cached pipeline of `command` stages.
    Runner {
        /// Instances in the generated pipeline.
        #[arg(long, default_value_t = 100)]
        instances: usize,
        /// Timed repetitions.
        #[arg(long, default_value_t = 20)]
        reps: usize,
    },
    /// A training step and a long eval forward of the ~5M-parameter benchmark model; compare
    /// with `python bench/torch_reference.py` on the same machine.
    Model {
        /// Timed repetitions (the median is reported).
        #[arg(long, default_value_t = 5)]
        iters: usize,
        /// Length of the eval forward.
        #[arg(long, default_value_t = 2048)]
        eval_len: usize,
        /// Device: cpu, cuda or cuda:N.
        #[arg(long, default_value = "cpu")]
        device: String,
    },
    /// Training throughput of the train stage's loop (forward, backward, clipping, AdamW, in
    /// `--shards` data-parallel shards) on random tokens, at the shape the flags give (defaults:
    /// the ~5M-parameter shape); compare with `python bench/torch_train_shapes.py` and the same
    /// flags on the same machine.
    Train {
        #[command(flatten)]
        shape: crate::train::bench::TrainShape,
        /// Device: cpu, cuda or cuda:N.
        #[arg(long, default_value = "cpu")]
        device: String,
    },
    /// The evaluation of a checkpoint at long lengths (`eval_ppl`'s NLL, the attention stage's
    /// analysis, or greedy decoding) on one random window per length; compare with `python
    /// bench/torch_eval.py run|generate DIR --lengths ...` on the same machine.
    Eval {
        /// Hugging Face checkpoint directory (config.json + safetensors).
        #[arg(long)]
        model: PathBuf,
        /// Window lengths in tokens.
        #[arg(long, num_args = 1.., required = true)]
        lengths: Vec<usize>,
        /// What to time.
        #[arg(long, value_enum, default_value = "ppl")]
        work: crate::eval::bench::EvalWork,
        /// Timed repetitions per length (the median is reported).
        #[arg(long, default_value_t = 1)]
        iters: usize,
        /// Positions per head/loss chunk (the `eval_ppl` stage's `chunk`).
        #[arg(long, default_value_t = 1024)]
        chunk: usize,
        /// `--work generate`: tokens decoded after the first; the per-token time is a
        /// difference of two runs divided by this, so raise it at long prompts.
        #[arg(long, default_value_t = crate::eval::bench::DECODE_TOKENS)]
        new_tokens: usize,
        /// Device: cpu, cuda or cuda:N.
        #[arg(long, default_value = "cpu")]
        device: String,
    },
    /// Tokenizing a generated corpus with a trained BPE tokenizer, against the Python
    /// `tokenizers` package on the same file when `--python` is given.
    Tokenize {
        /// Size of the generated corpus in MB.
        #[arg(long, default_value_t = 40.0)]
        megabytes: f64,
        /// A Python interpreter with `tokenizers` installed.
        #[arg(long)]
        python: Option<PathBuf>,
    },
}

/// Parse `std::env::args`, run, print any error once, and choose the exit code.
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr().lock(), "error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run {
            load,
            select,
            dry_run,
            jobs,
            keep_going,
            quiet,
            executor,
        } => {
            let t0 = Instant::now();
            let cache = Cache::from_env();
            let plan = pipeline::plan(&load.file, &load.sets, &cache, &select.selection())?;
            if dry_run {
                print!("{}", plan.describe());
                return Ok(());
            }
            let executor = executor.unwrap_or(plan.pipeline.header.executor);
            let jobs = jobs.unwrap_or_else(|| executor.default_jobs());
            let mut exec = executor.make(&ExecutorOptions { jobs }, &cache)?;
            let summary = pipeline::run(
                &plan,
                &cache,
                &ExecOptions {
                    jobs,
                    keep_going,
                    quiet,
                },
                exec.as_mut(),
            )?;
            if !quiet {
                eprintln!(
                    "{} built, {} cached in {:.2}s; results in {}",
                    summary.built,
                    summary.cached,
                    t0.elapsed().as_secs_f64(),
                    summary.results_dir.display()
                );
            }
            Ok(())
        }
        Command::Exec { job } => executors::slurm::exec_job(&job),
        Command::Status { load, select } => {
            let cache = Cache::from_env();
            let plan = pipeline::plan(&load.file, &load.sets, &cache, &select.selection())?;
            print!("{}", plan.describe());
            // Jobs of a run in progress (or of one whose submitter died) on a cluster.
            let keys: Vec<&str> = (0..plan.records.len())
                .filter(|&i| plan.included[i] && plan.status[i].builds())
                .map(|i| plan.key(i))
                .collect();
            for (key, h) in executors::live_jobs(&cache, &keys) {
                if let Some(r) = plan.records.iter().find(|r| r.key == key) {
                    println!("{} job {} {} {}", h.executor, h.job_id, h.state, r.instance);
                }
            }
            Ok(())
        }
        Command::Dag { load, format } => {
            let (p, g) = pipeline::load(&load.file, &load.sets)?;
            print!("{}", g.render(&p, format));
            Ok(())
        }
        Command::Validate { load } => {
            let (p, g) = pipeline::load(&load.file, &load.sets)?;
            println!(
                "{}: ok ({} stages, {} instances)",
                load.file.display(),
                p.stages.len(),
                g.instances.len()
            );
            Ok(())
        }
        Command::Schema => {
            print!("{}", schema::pipeline_schema_text());
            Ok(())
        }
        Command::Report { load } => report_command(&load),
        Command::Rope {
            config,
            sets,
            length,
        } => rope_command(&config, &sets, length),
        Command::Cache { command } => cache_command(command),
        Command::Bench { command } => bench_command(command),
    }
}

fn bench_command(command: BenchCommand) -> Result<()> {
    use crate::progress::Silent;
    let failed = |e: &dyn std::fmt::Display| Error::Usage(format!("benchmark failed: {e}"));
    match command {
        BenchCommand::Runner { instances, reps } => crate::bench::runner(instances, reps),
        BenchCommand::Model {
            iters,
            eval_len,
            device,
        } => {
            use crate::model::bench::{BenchOptions, bench_model};
            let opts = BenchOptions {
                iters,
                eval_len,
                ..BenchOptions::default()
            };
            let dev = crate::device::device(&device).map_err(|e| failed(&e))?;
            let r = bench_model(&opts, &dev, &Silent).map_err(|e| failed(&e))?;
            println!(
                "model: {} parameters, batch {} x seq {}",
                r.params, opts.batch_size, opts.seq_len
            );
            println!(
                "train step (fwd+bwd+AdamW): {:.3} s wall, {:.3} s CPU",
                r.train_step_s, r.train_step_cpu_s
            );
            println!(
                "eval forward at {} tokens: {:.3} s wall, {:.3} s CPU",
                opts.eval_len, r.eval_forward_s, r.eval_forward_cpu_s
            );
            Ok(())
        }
        BenchCommand::Train { shape, device } => {
            let bench = shape.bench().map_err(Error::Usage)?;
            let dev = crate::device::device(&device).map_err(|e| failed(&e))?;
            let r =
                crate::train::bench::bench_train(&bench, &dev, &Silent).map_err(|e| failed(&e))?;
            println!(
                "{{\"impl\":\"ropelens\",\"params\":{},\"hidden\":{},\"layers\":{},\"heads\":{},\"ffn\":{},\"vocab\":{},\"batch\":{},\"seq_len\":{},\"shards\":{},\"threads\":{},\"steps\":{},\"step_s\":{},\"step_cpu_s\":{},\"tokens_per_s\":{:.0},\"peak_rss_mib\":{:.1}}}",
                r.params,
                shape.hidden,
                shape.layers,
                shape.heads,
                bench.config.intermediate_size,
                shape.vocab,
                shape.batch,
                shape.seq_len,
                shape.shards,
                rayon::current_num_threads(),
                shape.steps,
                r.step_s,
                r.step_cpu_s,
                r.tokens_per_s,
                crate::eval::bench::peak_rss_mib()
            );
            Ok(())
        }
        BenchCommand::Eval {
            model,
            lengths,
            work,
            iters,
            chunk,
            new_tokens,
            device,
        } => {
            let dev = crate::device::device(&device).map_err(|e| failed(&e))?;
            let threads = rayon::current_num_threads();
            let opts = crate::eval::bench::EvalBenchOptions {
                work,
                iters,
                chunk,
                new_tokens,
            };
            let load_s = crate::eval::bench::bench_eval(
                &model,
                &dev,
                &lengths,
                opts,
                &mut |r| {
                    println!(
                        "{{\"impl\":\"ropelens\",\"work\":\"{work:?}\",\"threads\":{threads},\"length\":{},\"seconds\":{:.3},\"cpu_s\":{:.3},\"all_s\":{:?},\"tokens_per_s\":{:.1},\"peak_rss_mib\":{:.1},\"decode_token_s\":{}}}",
                        r.length,
                        r.seconds,
                        r.cpu_s,
                        r.all_seconds,
                        r.tokens_per_s,
                        r.peak_rss_mib,
                        r.decode_token_s
                            .map_or("null".to_string(), |s| format!("{s:.4}"))
                    )
                },
            )
            .map_err(|e| failed(&e))?;
            println!("{{\"load_s\":{load_s:.3}}}");
            Ok(())
        }
        BenchCommand::Tokenize { megabytes, python } => {
            use crate::data::bench::{BenchTokenizeParams, bench_tokenize};
            let params = BenchTokenizeParams {
                megabytes,
                python,
                ..BenchTokenizeParams::default()
            };
            let r = bench_tokenize(&params, &Silent).map_err(|e| failed(&e))?;
            println!(
                "rust: {:.1} MB in {:.2} s = {:.2} MB/s ({} threads, {} tokens)",
                r.bytes as f64 / 1e6,
                r.rust_seconds,
                r.rust_mb_per_s,
                r.threads,
                r.tokens
            );
            match (r.python_mb_per_s, r.speedup_vs_python, &r.python_error) {
                (Some(mbs), Some(x), _) => {
                    println!("python tokenizers: {mbs:.2} MB/s; ropelens is {x:.2}x its speed")
                }
                (_, _, Some(e)) => println!("python side not run: {e}"),
                _ => println!("python side not run (give --python PATH)"),
            }
            Ok(())
        }
    }
}

/// `pipe rope CONFIG [--set KEY=VALUE]...`: the frequency view of the config's RoPE, or of the
/// RoPE the overrides make of it.
fn rope_command(path: &std::path::Path, sets: &[String], length: Option<usize>) -> Result<()> {
    use crate::model::{LlamaConfig, RopeConfig};
    use crate::report::frequencies::{frequency_view, view_markdown};
    let usage = |m: String| Error::Usage(format!("{}: {m}", path.display()));
    let config = LlamaConfig::load(path).map_err(|e| usage(e.to_string()))?;
    let trained = config
        .rope
        .scaling
        .kind()
        .original_length()
        .unwrap_or(config.max_position_embeddings);
    let mut value = serde_json::to_value(&config.rope).map_err(|e| usage(e.to_string()))?;
    if sets.iter().any(|s| s.starts_with("rope_type=")) {
        value = serde_json::json!({ "rope_theta": config.rope.theta });
    }
    for set in sets {
        let (key, text) = set
            .split_once('=')
            .ok_or_else(|| usage(format!("--set {set}: expected KEY=VALUE")))?;
        let parsed = serde_json::from_str(text)
            .unwrap_or_else(|_| serde_json::Value::String(text.to_string()));
        value[key] = parsed;
    }
    let rope: RopeConfig =
        serde_json::from_value(value).map_err(|e| usage(format!("--set: {e}")))?;
    rope.validate(config.head_dim, &path.display().to_string())
        .map_err(|e| usage(e.to_string()))?;
    let seq_len = length.unwrap_or_else(|| {
        rope.scaling
            .kind()
            .extended_length(trained)
            .unwrap_or(trained)
    });
    let rows = frequency_view(&rope, config.head_dim, trained, seq_len);
    println!("{}", view_markdown(&rope, &rows, config.head_dim, trained));
    Ok(())
}

/// `pipe report FILE`: each report instance's options, applied to `results/<pipeline>/`.
fn report_command(load: &LoadArgs) -> Result<()> {
    use crate::report::study::{ReportOptions, write_report};
    let (p, g) = pipeline::load(&load.file, &load.sets)?;
    let reports: Vec<_> = g
        .instances
        .iter()
        .filter(|i| p.stages[i.stage].kind.kind() == crate::stages::report::Report::KIND)
        .collect();
    if reports.is_empty() {
        return Err(Error::Usage(format!(
            "{}: the pipeline has no stage of kind `report`",
            load.file.display()
        )));
    }
    let dir = &p.results_dir;
    for inst in &reports {
        let opts: ReportOptions = serde_json::from_value(inst.params.clone())
            .map_err(|e| Error::Usage(format!("stage `{}`: report options: {e}", inst.name)))?;
        // The same place the runner publishes a report stage's output to.
        let out = crate::results::publish_target(dir, &inst.name, reports.len() > 1);
        let summary = write_report(dir, &out, &opts)
            .map_err(|e| Error::Usage(format!("report `{}`: {e}", inst.name)))?;
        println!(
            "{}: {} figures, report in {}",
            inst.name,
            summary.figures.len(),
            summary.report.display()
        );
    }
    Ok(())
}

/// `1.2 MiB`, `340 B`.
pub fn human_bytes(b: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

/// `45s`, `3m`, `2h`, `4d`.
pub fn human_age(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

fn cache_command(command: CacheCommand) -> Result<()> {
    let cache = Cache::from_env();
    match command {
        CacheCommand::Ls => {
            let entries = cache.list()?;
            let mut total = 0;
            for e in &entries {
                total += e.bytes;
                let age = e
                    .modified
                    .and_then(|m| SystemTime::now().duration_since(m).ok())
                    .map_or_else(|| "?".into(), human_age);
                let who = e.record.as_ref().map_or_else(String::new, |r| {
                    format!("{}/{} ({})", r.pipeline, r.instance, r.fields.kind)
                });
                println!("{}  {:>10}  {:>4}  {who}", e.key, human_bytes(e.bytes), age);
            }
            let partials = cache.partials();
            for (key, bytes, busy) in &partials {
                let what = if *busy {
                    "being built"
                } else if cache.uncommitted(key) {
                    "finished, its commit interrupted (the next run commits it)"
                } else {
                    "left by a failed or killed build (resumed or cleared by the next build; `cache gc` removes it when unreferenced)"
                };
                println!("{key}.partial  {:>10}  {what}", human_bytes(*bytes));
            }
            let partial_bytes: u64 = partials.iter().map(|(_, b, _)| b).sum();
            println!(
                "{} entries, {} in {}; {} partial build(s), {}",
                entries.len(),
                human_bytes(total),
                cache.root.display(),
                partials.len(),
                human_bytes(partial_bytes)
            );
            Ok(())
        }
        CacheCommand::Gc {
            files,
            sets,
            dry_run,
        } => {
            let referenced = pipeline::referenced_keys(&files, &sets, &cache)?;
            // The build of a live (e.g. Slurm) job stays whoever submitted it: a job whose
            // submitter died holds no lock here, and the next run re-attaches to it.
            let partials: Vec<String> = cache.partials().into_iter().map(|(k, ..)| k).collect();
            let partials: Vec<&str> = partials.iter().map(String::as_str).collect();
            let mut keep = referenced.clone();
            keep.extend(executors::live_jobs(&cache, &partials).into_keys());
            let removed = cache.gc(&keep, dry_run)?;
            let verb = if dry_run { "would remove" } else { "removed" };
            let mut total = 0;
            for (path, size) in &removed {
                total += size;
                println!("{verb} {} ({})", path.display(), human_bytes(*size));
            }
            println!(
                "{verb} {} entries, {}; kept {} referenced",
                removed.len(),
                human_bytes(total),
                referenced.len()
            );
            Ok(())
        }
    }
}
