//! The runner: load a pipeline, plan it against the cache, execute, gather results.
//!
//! `spec` (TOML to checked stages) -> `graph` (instances, DAG) -> `exec::plan` (keys, statuses)
//! -> `exec::execute` (the scheduler, handing `job::Job`s to an `executor`) -> `results`
//! (Parquet tables, `runs`, `run.json`; the leaf module `crate::results`).

pub mod cache;
pub mod exec;
pub mod executor;
pub mod graph;
pub mod job;
pub mod key;
pub mod schema;
pub mod spec;
pub mod ui;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};

use crate::error::{Error, Result};
use crate::results::{self, InstanceInfo, RunRow};
use cache::Cache;
use exec::{ExecOptions, Outcome, Plan, Report, Selection, Status};

/// Load, check and expand a pipeline file.
pub fn load(file: &Path, sets: &[String]) -> Result<(spec::Pipeline, graph::Graph)> {
    let p = spec::load(file, sets)?;
    let g = graph::expand(&p)?;
    Ok((p, g))
}

/// Every external file an instance reads exists, so that `pipe run` (`--dry-run` too) and
/// `pipe status` name a missing corpus, checkpoint or program at its stage, before anything
/// runs; the key computation would fail on it too, without the stage's line. Not part of
/// [`load`]: `pipe validate` checks the file itself, which stays valid on a machine that has
/// not fetched the data yet (`pipelines/real-smollm2.toml`).
fn check_inputs(p: &spec::Pipeline, g: &graph::Graph) -> Result<()> {
    let mut errors = Vec::new();
    for inst in &g.instances {
        let stage = &p.stages[inst.stage];
        let files = stage
            .kind
            .inputs(&inst.params, &p.dir)
            .map_err(|e| Error::Usage(format!("instance `{}`: {e:#}", inst.name)))?;
        for f in files {
            let path = p.dir.join(&f);
            if std::fs::symlink_metadata(&path).is_err() {
                let e = crate::error::SpecError {
                    location: stage.location.clone(),
                    message: format!(
                        "instance `{}` reads `{}`, which does not exist ({})",
                        inst.name,
                        f.display(),
                        path.display()
                    ),
                };
                if !errors.contains(&e) {
                    errors.push(e);
                }
            }
        }
    }
    match errors.len() {
        0 => Ok(()),
        1 => Err(Box::new(errors.remove(0)).into()),
        _ => Err(Error::Specs(errors)),
    }
}

/// Load and plan against `cache`.
pub fn plan(file: &Path, sets: &[String], cache: &Cache, sel: &Selection) -> Result<Plan> {
    let (p, g) = load(file, sets)?;
    check_inputs(&p, &g)?;
    exec::plan(p, g, cache, sel)
}

/// What a finished run did.
#[derive(Debug)]
pub struct RunSummary {
    pub built: usize,
    pub cached: usize,
    pub failed: usize,
    pub skipped: usize,
    pub results_dir: PathBuf,
    pub reports: Vec<Report>,
}

/// Execute a plan on `executor` and write the results; an error when any instance failed.
pub fn run(
    plan: &Plan,
    cache: &Cache,
    opts: &ExecOptions,
    executor: &mut dyn executor::Executor,
) -> Result<RunSummary> {
    let started = Utc::now();
    // Pin every entry of the run (upstream entries it reads included) against `cache gc`.
    let keys: Vec<&str> = (0..plan.records.len())
        .filter(|&i| plan.included[i])
        .map(|i| plan.key(i))
        .collect();
    let lease = cache.lease(&keys)?;
    // A run killed right after renaming an entry into place left its scratch folders
    // (checkpoints) in it: finish those commits before the entries are used.
    let cached =
        (0..plan.records.len()).filter(|&i| plan.included[i] && plan.status[i] == Status::Cached);
    for i in cached {
        cache.finish_commit(plan.key(i))?;
    }
    let reports = exec::execute(plan, cache, opts, executor);
    drop(lease);
    let finished = Utc::now();
    write_results(plan, cache, &reports, started, finished)?;
    let count = |f: fn(&Outcome) -> bool| {
        reports
            .iter()
            .zip(&plan.included)
            .filter(|(r, inc)| **inc && f(&r.outcome))
            .count()
    };
    let summary = RunSummary {
        built: count(|o| matches!(o, Outcome::Built)),
        cached: count(|o| matches!(o, Outcome::Cached)),
        failed: count(|o| matches!(o, Outcome::Failed(_))),
        skipped: count(|o| matches!(o, Outcome::Skipped(_))),
        results_dir: plan.pipeline.results_dir.clone(),
        reports,
    };
    if summary.failed > 0 || summary.skipped > 0 {
        let mut text = String::new();
        for (i, r) in summary.reports.iter().enumerate() {
            let name = &plan.graph.instances[i].name;
            match &r.outcome {
                Outcome::Failed(e) => text.push_str(&format!(
                    "  {name}: {}\n",
                    e.to_string().replace('\n', "\n    ")
                )),
                Outcome::Skipped(why) => text.push_str(&format!("  {name}: skipped, {why}\n")),
                _ => {}
            }
        }
        let not_started = plan
            .included
            .iter()
            .zip(&plan.status)
            .zip(&summary.reports)
            .filter(|((inc, s), r)| **inc && s.builds() && r.outcome == Outcome::NotRun)
            .count();
        if not_started > 0 {
            text.push_str(&format!("  ({not_started} instance(s) not started after the failure; --keep-going runs independent ones)\n"));
        }
        return Err(Error::RunFailed {
            failed: summary.failed,
            total: plan.included.iter().filter(|i| **i).count(),
            summary: text.trim_end().to_string(),
        });
    }
    Ok(summary)
}

fn git_commit(dir: &Path) -> Option<String> {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["rev-parse", "HEAD"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// This machine's host name (`gethostname`).
pub fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return String::new();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).to_string()
}

/// Write `runs.parquet`, every gathered table and `run.json` into the results directory.
fn write_results(
    plan: &Plan,
    cache: &Cache,
    reports: &[Report],
    started: DateTime<Utc>,
    finished: DateTime<Utc>,
) -> Result<()> {
    let dir = &plan.pipeline.results_dir;
    let infos: Vec<InstanceInfo> = plan
        .graph
        .instances
        .iter()
        .enumerate()
        .map(|(i, inst)| InstanceInfo {
            stage: plan.pipeline.stages[inst.stage].name.clone(),
            instance: inst.name.clone(),
            matrix: inst.matrix_columns(),
            dir: cache.has(plan.key(i)).then(|| cache.entry(plan.key(i))),
        })
        .collect();
    let rows: Vec<(InstanceInfo, RunRow)> = infos
        .iter()
        .zip(reports)
        .enumerate()
        .filter(|(i, _)| plan.included[*i])
        .map(|(i, (info, r))| {
            let error = r.outcome.error();
            (
                info.clone(),
                RunRow {
                    key: plan.key(i).to_string(),
                    cached: r.outcome == Outcome::Cached,
                    status: r.outcome.status(),
                    seconds: r.seconds,
                    started_at: r.started_at,
                    finished_at: r.finished_at,
                    error,
                    needs: plan.graph.instances[i]
                        .needs
                        .iter()
                        .map(|(need, deps)| {
                            let keys = deps.iter().map(|&d| plan.key(d).to_string()).collect();
                            (need.clone(), keys)
                        })
                        .collect(),
                },
            )
        })
        .collect();
    results::write_runs(dir, &rows)?;

    // Gathering reads every instance's tables: skip it when the set of entries is unchanged.
    let gathered: Vec<(String, String)> = infos
        .iter()
        .enumerate()
        .filter(|(_, info)| info.dir.is_some())
        .map(|(i, info)| (info.instance.clone(), plan.key(i).to_string()))
        .collect();
    let run_json = dir.join("run.json");
    let previous: Option<serde_json::Value> = std::fs::read(&run_json)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    // A forced rebuild keeps its key but may change its tables: gather again after any build.
    let any_built = reports.iter().any(|r| r.outcome == Outcome::Built);
    let prev_tables: Option<Vec<String>> = previous
        .as_ref()
        .filter(|_| !any_built)
        .filter(|v| v["gathered"] == serde_json::json!(gathered))
        .and_then(|v| serde_json::from_value(v["tables"].clone()).ok())
        .filter(|t: &Vec<String>| t.iter().all(|t| dir.join(format!("{t}.parquet")).is_file()));
    let tables = match prev_tables {
        Some(t) => t,
        None => {
            let published: Vec<(&InstanceInfo, &'static [&'static str])> = infos
                .iter()
                .zip(&plan.graph.instances)
                .map(|(info, inst)| (info, plan.pipeline.stages[inst.stage].kind.publishes()))
                .collect();
            results::publish(dir, &published)?;
            results::gather_tables(dir, &infos)?
        }
    };
    let instances: Vec<serde_json::Value> = infos
        .iter()
        .zip(reports)
        .enumerate()
        .filter(|(i, _)| plan.included[*i])
        .map(|(i, (info, r))| {
            serde_json::json!({
                "stage": info.stage,
                "instance": info.instance,
                "key": plan.key(i),
                "status": r.outcome.status().word(),
                "seconds": r.seconds,
            })
        })
        .collect();
    let provenance = serde_json::json!({
        "pipeline": plan.pipeline.header.name,
        "file": plan.pipeline.file,
        "file_hash": plan.pipeline.file_hash,
        "tool_version": env!("CARGO_PKG_VERSION"),
        "git_commit": git_commit(&plan.pipeline.dir),
        "device": plan.pipeline.header.device,
        "host": host_name(),
        "cache": std::path::absolute(&cache.root).unwrap_or_else(|_| cache.root.clone()),
        "started_at": started.to_rfc3339(),
        "finished_at": finished.to_rfc3339(),
        "instances": instances,
        "tables": tables,
        "gathered": gathered,
    });
    let bytes = serde_json::to_vec_pretty(&provenance).unwrap_or_default();
    crate::results::write_atomic(&run_json, &bytes)
}

/// Every key any instance of these pipeline files has (for `pipe cache gc`).
pub fn referenced_keys(
    files: &[PathBuf],
    sets: &[String],
    cache: &Cache,
) -> Result<BTreeSet<String>> {
    let mut keys = BTreeSet::new();
    for f in files {
        let plan = plan(f, sets, cache, &Selection::default())?;
        keys.extend(plan.records.iter().map(|r| r.key.clone()));
    }
    Ok(keys)
}
