//! Planning (keys, statuses, selection) and the parallel scheduler.
//!
//! Planning computes every instance's key in topological order and decides, cargo-style, what
//! is cached, what must run and why. Execution is cargo's job queue in miniature: the main
//! thread owns all state, instances whose upstream is done start on scoped worker threads when a
//! `-j` slot and their resources (one GPU) are free, and workers report back over a channel. A
//! failure stops new starts unless `--keep-going`, which only skips what depends on it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Instant;

use chrono::{DateTime, Utc};

use super::cache::Cache;
use super::graph::Graph;
use super::key::{FileHasher, KeyFields, KeyRecord, canonical, compare};
use super::spec::Pipeline;
use super::ui::Ui;
use crate::error::{Error, Result};
use crate::stages::{Ctx, Resources, Upstream};

/// What a run should do.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Stage or instance names (`--stage`); empty means all.
    pub stages: Vec<String>,
    pub downstream: bool,
    pub force: bool,
    pub force_all: bool,
}

/// Why an instance will (or will not) run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Its entry is in the cache.
    Cached,
    /// It must be built: `new`, `missing ...` or `forced`.
    Run(String),
    /// Its key changed since it was last built; the reasons say how.
    Stale(Vec<String>),
    /// Not built and not needed: everything that needs it is cached or unselected.
    Unneeded,
}

impl Status {
    pub fn builds(&self) -> bool {
        matches!(self, Status::Run(_) | Status::Stale(_))
    }

    /// `cached`, `run`, `stale`, `unneeded`.
    pub fn word(&self) -> &'static str {
        match self {
            Status::Cached => "cached",
            Status::Run(_) => "run",
            Status::Stale(_) => "stale",
            Status::Unneeded => "unneeded",
        }
    }

    pub fn reason(&self) -> String {
        match self {
            Status::Cached => String::new(),
            Status::Run(r) => r.clone(),
            Status::Stale(r) => r.join("; "),
            Status::Unneeded => "nothing selected needs it".into(),
        }
    }
}

/// A pipeline with keys and statuses.
pub struct Plan {
    pub pipeline: Pipeline,
    pub graph: Graph,
    pub records: Vec<KeyRecord>,
    /// Instances in this run (selected plus their upstream).
    pub included: Vec<bool>,
    pub status: Vec<Status>,
    pub resources: Vec<Resources>,
    pub resumable: Vec<bool>,
}

impl Plan {
    pub fn key(&self, i: usize) -> &str {
        &self.records[i].key
    }

    /// Instances in the plan, each with status and reason, one per line (`status`, `--dry-run`).
    pub fn describe(&self) -> String {
        let width = self
            .graph
            .instances
            .iter()
            .map(|i| i.name.len())
            .max()
            .unwrap_or(0);
        let mut out = String::new();
        for (i, inst) in self.graph.instances.iter().enumerate() {
            if !self.included[i] {
                continue;
            }
            let s = &self.status[i];
            let reason = s.reason();
            out.push_str(&format!(
                "{:<8} {:<width$}  {}",
                s.word(),
                inst.name,
                &self.key(i)[..12]
            ));
            if !reason.is_empty() {
                out.push_str(&format!("  ({reason})"));
            }
            out.push('\n');
        }
        let count = |w: &str| {
            self.status
                .iter()
                .zip(&self.included)
                .filter(|(s, inc)| **inc && s.word() == w)
                .count()
        };
        out.push_str(&format!(
            "{} cached, {} to run, {} stale\n",
            count("cached"),
            count("run"),
            count("stale")
        ));
        out
    }
}

/// Compute keys of every instance (upstream first) and the statuses of the selected ones.
pub fn plan(pipeline: Pipeline, graph: Graph, cache: &Cache, sel: &Selection) -> Result<Plan> {
    let n = graph.instances.len();
    let hasher = FileHasher::new(&cache.root);
    let mut records: Vec<KeyRecord> = Vec::with_capacity(n);
    let mut resources = Vec::with_capacity(n);
    let mut resumable = Vec::with_capacity(n);
    let device = &pipeline.header.device;
    for inst in &graph.instances {
        let stage = &pipeline.stages[inst.stage];
        let kind = stage.kind;
        let bad = |e: anyhow::Error| Error::Usage(format!("instance `{}`: {e:#}", inst.name));
        let mut files = BTreeMap::new();
        for f in kind.inputs(&inst.params, &pipeline.dir).map_err(bad)? {
            let path = pipeline.dir.join(&f);
            let hash = hasher.hash(&path).map_err(|e| {
                Error::Usage(format!(
                    "instance `{}`: input `{}`: {e}",
                    inst.name,
                    f.display()
                ))
            })?;
            files.insert(f.to_string_lossy().to_string(), hash);
        }
        let mut inputs = BTreeMap::new();
        let mut upstream = BTreeMap::new();
        for (need, ups) in &inst.needs {
            inputs.insert(
                need.clone(),
                ups.iter().map(|&u| records[u].key.clone()).collect(),
            );
            upstream.insert(
                need.clone(),
                ups.iter()
                    .map(|&u| graph.instances[u].name.clone())
                    .collect(),
            );
        }
        let fields = KeyFields {
            kind: kind.kind().to_string(),
            version: kind.version(),
            params: canonical(&inst.params),
            inputs,
            files,
            seed: inst.seed,
            device: kind
                .device_sensitive(&inst.params)
                .map_err(bad)?
                .then(|| device.clone()),
        };
        records.push(KeyRecord {
            key: fields.hash(),
            pipeline: pipeline.header.name.clone(),
            stage: stage.name.clone(),
            instance: inst.name.clone(),
            fields,
            upstream,
        });
        resources.push(kind.resources(&inst.params, device).map_err(bad)?);
        resumable.push(kind.resumable(&inst.params).map_err(bad)?);
    }
    hasher.save();

    // Selection: named instances (and downstream), plus everything upstream of them.
    let mut named = vec![sel.stages.is_empty(); n];
    for s in &sel.stages {
        let mut found = false;
        for (i, inst) in graph.instances.iter().enumerate() {
            if inst.name == *s || pipeline.stages[inst.stage].name == *s {
                named[i] = true;
                found = true;
            }
        }
        if !found {
            let stages: Vec<&str> = pipeline.stages.iter().map(|s| s.name.as_str()).collect();
            return Err(Error::Usage(format!(
                "--stage `{s}` names no stage or instance of `{}` (stages: {})",
                pipeline.file.display(),
                stages.join(", ")
            )));
        }
    }
    if sel.downstream {
        for i in 0..n {
            // Instances are in topological order, so one forward pass closes downstream.
            if !named[i] && graph.upstream(i).iter().any(|&u| named[u]) {
                named[i] = true;
            }
        }
    }
    let mut included = named.clone();
    for i in (0..n).rev() {
        if included[i] {
            for u in graph.upstream(i) {
                included[u] = true;
            }
        }
    }
    let forced: Vec<bool> = (0..n)
        .map(|i| included[i] && (sel.force_all || (sel.force && named[i])))
        .collect();

    // Status from keys alone: what to build is named-and-not-cached plus their missing upstream.
    let mut status = vec![Status::Unneeded; n];
    let mut needed = vec![false; n];
    for i in (0..n).rev() {
        if !included[i] {
            continue;
        }
        let cached = !forced[i] && cache.has(&records[i].key);
        let builds = !cached && (named[i] || needed[i] || forced[i]);
        if builds {
            for u in graph.upstream(i) {
                needed[u] = true;
            }
        }
        if cached {
            status[i] = Status::Cached;
        } else if builds {
            status[i] = if forced[i] {
                Status::Run("forced".into())
            } else {
                match cache.last_record(&pipeline.header.name, &graph.instances[i].name) {
                    Some(old) if old.key == records[i].key => {
                        Status::Run("missing: its cache entry was removed".into())
                    }
                    Some(old) => {
                        let reasons = compare(&old, &records[i]);
                        if reasons.is_empty() {
                            Status::Run("missing".into())
                        } else {
                            Status::Stale(reasons)
                        }
                    }
                    None => Status::Run("new".into()),
                }
            };
        }
    }
    Ok(Plan {
        pipeline,
        graph,
        records,
        included,
        status,
        resources,
        resumable,
    })
}

/// How to execute.
#[derive(Debug, Clone)]
pub struct ExecOptions {
    pub jobs: usize,
    pub keep_going: bool,
    pub quiet: bool,
}

/// What happened to one instance.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Cached,
    Built,
    Failed(String),
    Skipped(String),
    NotRun,
}

impl Outcome {
    pub fn word(&self) -> &'static str {
        match self {
            Outcome::Cached => "cached",
            Outcome::Built => "built",
            Outcome::Failed(_) => "failed",
            Outcome::Skipped(_) => "skipped",
            Outcome::NotRun => "not-run",
        }
    }
}

/// One instance's outcome with its timing.
#[derive(Debug, Clone)]
pub struct Report {
    pub outcome: Outcome,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub seconds: f64,
}

enum Msg {
    Done(
        usize,
        std::result::Result<bool, String>,
        DateTime<Utc>,
        DateTime<Utc>,
        f64,
    ),
}

/// Build what the plan says must be built. Returns one report per instance.
pub fn execute(plan: &Plan, cache: &Cache, opts: &ExecOptions) -> Vec<Report> {
    let n = plan.graph.instances.len();
    let mut reports: Vec<Report> = (0..n)
        .map(|i| Report {
            outcome: match plan.status[i] {
                Status::Cached if plan.included[i] => Outcome::Cached,
                _ => Outcome::NotRun,
            },
            started_at: None,
            finished_at: None,
            seconds: 0.0,
        })
        .collect();
    let to_build: Vec<usize> = (0..n)
        .filter(|&i| plan.included[i] && plan.status[i].builds())
        .collect();
    let ui = Ui::new(to_build.len(), opts.quiet);
    // Priority: the number of instances that transitively depend on one (cargo's heuristic).
    let mut weight = vec![0usize; n];
    for i in (0..n).rev() {
        for u in plan.graph.upstream(i) {
            weight[u] += weight[i] + 1;
        }
    }
    let mut waiting: BTreeSet<usize> = to_build.iter().copied().collect();
    let mut running: BTreeMap<usize, Option<super::ui::InstanceProgress>> = BTreeMap::new();
    let mut gpu_busy = 0u32;
    let mut stop = false;
    let jobs = opts.jobs.max(1);
    let (tx, rx) = mpsc::channel::<Msg>();
    std::thread::scope(|scope| {
        loop {
            // Skip whatever depends on a failure.
            let doomed: Vec<(usize, String)> = waiting
                .iter()
                .filter_map(|&i| {
                    plan.graph
                        .upstream(i)
                        .into_iter()
                        .find_map(|u| match &reports[u].outcome {
                            Outcome::Failed(_) | Outcome::Skipped(_) => Some((
                                i,
                                format!(
                                    "upstream `{}` did not build",
                                    plan.graph.instances[u].name
                                ),
                            )),
                            _ => None,
                        })
                })
                .collect();
            for (i, why) in doomed {
                waiting.remove(&i);
                ui.finish(
                    None,
                    &format!("skip  {} ({why})", plan.graph.instances[i].name),
                );
                reports[i].outcome = Outcome::Skipped(why);
            }
            if !stop {
                let mut ready: Vec<usize> = waiting
                    .iter()
                    .copied()
                    .filter(|&i| {
                        plan.graph.upstream(i).iter().all(|&u| {
                            matches!(reports[u].outcome, Outcome::Built | Outcome::Cached)
                        })
                    })
                    .collect();
                ready.sort_by_key(|&i| (std::cmp::Reverse(weight[i]), i));
                for i in ready {
                    if running.len() >= jobs {
                        break;
                    }
                    let gpu = plan.resources[i].gpu;
                    if gpu > 0 && gpu_busy > 0 {
                        continue;
                    }
                    gpu_busy += gpu;
                    waiting.remove(&i);
                    let progress = ui.start(&plan.graph.instances[i].name);
                    running.insert(i, Some(progress.clone()));
                    let tx = tx.clone();
                    scope.spawn(move || {
                        let started = Utc::now();
                        let t0 = Instant::now();
                        let result = build_one(plan, cache, i, &progress);
                        let _ = tx.send(Msg::Done(
                            i,
                            result,
                            started,
                            Utc::now(),
                            t0.elapsed().as_secs_f64(),
                        ));
                    });
                }
            }
            if running.is_empty() {
                break;
            }
            let Ok(Msg::Done(i, result, started, finished, secs)) = rx.recv() else {
                break;
            };
            let progress = running.remove(&i).flatten();
            gpu_busy -= plan.resources[i].gpu.min(gpu_busy);
            let name = &plan.graph.instances[i].name;
            reports[i].started_at = Some(started);
            reports[i].finished_at = Some(finished);
            reports[i].seconds = secs;
            match result {
                Ok(true) => {
                    reports[i].outcome = Outcome::Built;
                    ui.finish(progress, &format!("built {name} in {secs:.1}s"));
                }
                Ok(false) => {
                    reports[i].outcome = Outcome::Cached;
                    ui.finish(progress, &format!("cached {name} (built by another run)"));
                }
                Err(e) => {
                    ui.finish(
                        progress,
                        &format!(
                            "FAILED {name} after {secs:.1}s: {}",
                            e.lines().next().unwrap_or("")
                        ),
                    );
                    reports[i].outcome = Outcome::Failed(e);
                    if !opts.keep_going {
                        stop = true;
                    }
                }
            }
        }
    });
    // Whatever still waits could not start: after a failure without --keep-going it stays
    // `not-run`; otherwise an upstream was unavailable, which must not pass silently.
    if !stop {
        for i in waiting {
            reports[i].outcome = Outcome::Skipped("an upstream instance was not available".into());
        }
    }
    ui.close();
    reports
}

/// Build instance `i` under its key's lock. `Ok(false)` when another process built it meanwhile.
fn build_one(
    plan: &Plan,
    cache: &Cache,
    i: usize,
    progress: &super::ui::InstanceProgress,
) -> std::result::Result<bool, String> {
    let inst = &plan.graph.instances[i];
    let stage = &plan.pipeline.stages[inst.stage];
    let record = &plan.records[i];
    let forced = plan.status[i] == Status::Run("forced".into());
    let _lock = cache
        .lock(&record.key, || {
            progress.note("waiting for another pipe run building the same key")
        })
        .map_err(|e| e.to_string())?;
    if !forced && cache.has(&record.key) {
        cache.write_record(record).map_err(|e| e.to_string())?;
        return Ok(false);
    }
    let out_dir = cache
        .begin(&record.key, plan.resumable[i])
        .map_err(|e| e.to_string())?;
    let mut needs: BTreeMap<String, Vec<Upstream>> = BTreeMap::new();
    for (name, ups) in &inst.needs {
        let list = ups
            .iter()
            .map(|&u| {
                let ui = &plan.graph.instances[u];
                Upstream {
                    stage: plan.pipeline.stages[ui.stage].name.clone(),
                    instance: ui.name.clone(),
                    kind: plan.pipeline.stages[ui.stage].kind.kind().to_string(),
                    dir: std::path::absolute(cache.entry(plan.key(u)))
                        .unwrap_or_else(|_| cache.entry(plan.key(u))),
                    matrix: ui.matrix_columns().into_iter().collect(),
                    params: ui.params.clone(),
                }
            })
            .collect();
        needs.insert(name.clone(), list);
    }
    let abs_out: PathBuf = std::path::absolute(&out_dir).unwrap_or(out_dir);
    let pipeline_dir =
        std::path::absolute(&plan.pipeline.dir).unwrap_or_else(|_| plan.pipeline.dir.clone());
    let ctx = Ctx {
        stage: &stage.name,
        instance: &inst.name,
        out_dir: &abs_out,
        needs: &needs,
        seed: inst.seed,
        device: &plan.pipeline.header.device,
        pipeline_dir: &pipeline_dir,
        progress,
    };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        stage.kind.run(&inst.params, &ctx)
    }));
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(format!("{e:#}")),
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            return Err(format!("the stage panicked: {msg}"));
        }
    }
    cache.commit(record).map_err(|e| e.to_string())?;
    cache.write_record(record).map_err(|e| e.to_string())?;
    Ok(true)
}
