//! Planning (keys, statuses, selection) and the parallel scheduler.
//!
//! Planning computes every instance's key in topological order and decides, cargo-style, what
//! is cached, what must run and why (typed: [`Status`], [`RunReason`]). Execution is cargo's job
//! queue in miniature: the main thread owns all state; an instance whose upstream is done and
//! whose resources fit the executor is [`prepare`]d (its key locked, its build directory made,
//! its [`Job`] written), submitted to the [`Executor`], and [`finish`]ed (committed, unlocked)
//! when the executor reports its end. A failure stops new starts unless `--keep-going`, which
//! only skips what depends on it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::cache::{Cache, KeyLock};
use super::executor::Executor;
use super::graph::Graph;
use super::job::{Failure, Job};
use super::key::{FileHasher, KeyFields, KeyRecord, canonical, compare};
use super::spec::Pipeline;
use super::ui::{InstanceProgress, Ui};
use crate::error::{Error, Result};
use crate::results::RunStatus;
use crate::stages::{Resources, Upstream, WorkLock};

/// What a run should do.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Stage or instance names (`--stage`); empty means all.
    pub stages: Vec<String>,
    pub downstream: bool,
    pub force: bool,
    pub force_all: bool,
}

/// Why an instance that is not stale must be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunReason {
    /// Never built for this pipeline.
    New,
    /// `--force` / `--force-all`.
    Forced,
    /// Built before with another key whose fields compare equal (e.g. a kind version).
    Missing,
    /// Built before with this very key, but the entry is gone.
    EntryRemoved,
    /// Its build finished, but the run was stopped (killed) before the entry was committed:
    /// `<key>.partial/` holds its key file ([`Cache::uncommitted`]). The next run commits it
    /// as it is, without running the stage.
    Uncommitted,
}

impl std::fmt::Display for RunReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RunReason::New => "new",
            RunReason::Forced => "forced",
            RunReason::Missing => "missing",
            RunReason::EntryRemoved => "missing: its cache entry was removed",
            RunReason::Uncommitted => "uncommitted: a run was stopped while committing it",
        })
    }
}

/// Why an instance will (or will not) run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Its entry is in the cache.
    Cached,
    /// It must be built.
    Run(RunReason),
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
            Status::Run(r) => r.to_string(),
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
        let count = |f: fn(&Status) -> bool| {
            self.status
                .iter()
                .zip(&self.included)
                .filter(|(s, inc)| **inc && f(s))
                .count()
        };
        out.push_str(&format!(
            "{} cached, {} to run, {} stale\n",
            count(|s| matches!(s, Status::Cached)),
            count(|s| matches!(s, Status::Run(_))),
            count(|s| matches!(s, Status::Stale(_)))
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
        resources.push(
            stage
                .resources
                .apply(kind.resources(&inst.params, device).map_err(bad)?),
        );
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
        // Planning changes no entry (`status`, `--dry-run` and `cache gc` plan too): `run`
        // finishes an interrupted commit of a cached entry, under the key's lock.
        if cached {
            status[i] = Status::Cached;
        } else if builds {
            let key = &records[i].key;
            status[i] = if forced[i] {
                Status::Run(RunReason::Forced)
            } else {
                // A finished build killed after its key file: before its record (`None`), or
                // after it, before the rename.
                let uncommitted = cache.uncommitted(key);
                match cache.last_record(&pipeline.header.name, &graph.instances[i].name) {
                    Some(old) if old.key == *key => Status::Run(if uncommitted {
                        RunReason::Uncommitted
                    } else {
                        RunReason::EntryRemoved
                    }),
                    None if uncommitted => Status::Run(RunReason::Uncommitted),
                    Some(old) => {
                        let reasons = compare(&old, &records[i]);
                        if reasons.is_empty() {
                            Status::Run(RunReason::Missing)
                        } else {
                            Status::Stale(reasons)
                        }
                    }
                    None => Status::Run(RunReason::New),
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

/// Why an instance that had to be built was not started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    /// An instance it needs failed or was skipped itself.
    UpstreamFailed(String),
    /// Nothing failed, yet an upstream instance never became available.
    Unavailable,
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Skip::UpstreamFailed(u) => write!(f, "upstream `{u}` did not build"),
            Skip::Unavailable => f.write_str("an upstream instance was not available"),
        }
    }
}

/// What happened to one instance.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// In the cache before the run, or built by another run: meanwhile, or an earlier one that
    /// was stopped before committing it ([`Prepared::Committed`]).
    Cached,
    Built,
    Failed(Failure),
    Skipped(Skip),
    /// Not started: a failure stopped the run first.
    NotRun,
}

impl Outcome {
    /// What `runs.parquet`'s `status` column records of it.
    pub fn status(&self) -> RunStatus {
        match self {
            Outcome::Cached => RunStatus::Cached,
            Outcome::Built => RunStatus::Built,
            Outcome::Failed(_) => RunStatus::Failed,
            Outcome::Skipped(_) => RunStatus::Skipped,
            Outcome::NotRun => RunStatus::NotRun,
        }
    }

    /// The error of a failed or skipped instance, as `runs.parquet` records it.
    pub fn error(&self) -> Option<String> {
        match self {
            Outcome::Failed(f) => Some(f.to_string()),
            Outcome::Skipped(s) => Some(s.to_string()),
            _ => None,
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

/// An instance this run builds: its job, and its key's lock, held until [`finish`].
pub struct Claim {
    pub job: Job,
    record: KeyRecord,
    /// Folders removed once the entry is committed.
    scratch: Vec<&'static str>,
    _lock: KeyLock,
}

/// What [`prepare`] found.
pub enum Prepared {
    /// Another process holds the key's lock (it is building it): try again later.
    Busy,
    /// A process an earlier, killed run started still writes the build directory (it holds the
    /// directory's [`WorkLock`]): try again when it has ended.
    Orphaned,
    /// Another run built it since the plan was made.
    Cached,
    /// An earlier, stopped run finished building it but not committing it
    /// ([`RunReason::Uncommitted`]): it is committed now, without running the stage.
    Committed,
    /// This run builds it.
    Build(Box<Claim>),
}

impl Plan {
    /// Instance `u` as a finished upstream entry of the cache.
    fn upstream(&self, u: usize, cache: &Cache) -> Upstream {
        let ui = &self.graph.instances[u];
        let ustage = &self.pipeline.stages[ui.stage];
        Upstream {
            stage: ustage.name.clone(),
            instance: ui.name.clone(),
            kind: ustage.kind.kind().to_string(),
            dir: absolute(cache.entry(self.key(u))),
            matrix: ui.matrix_columns().into_iter().collect(),
            params: ui.params.clone(),
            key: self.key(u).to_string(),
            inputs: ui
                .needs
                .iter()
                .map(|(n, ids)| {
                    (
                        n.clone(),
                        ids.iter().map(|&x| self.key(x).to_string()).collect(),
                    )
                })
                .collect(),
        }
    }

    /// The job of instance `i`, built into `out_dir`.
    pub fn job(&self, i: usize, cache: &Cache, out_dir: PathBuf) -> Job {
        let inst = &self.graph.instances[i];
        let stage = &self.pipeline.stages[inst.stage];
        let needs: BTreeMap<String, Vec<Upstream>> = inst
            .needs
            .iter()
            .map(|(name, ups)| {
                let list = ups.iter().map(|&u| self.upstream(u, cache)).collect();
                (name.clone(), list)
            })
            .collect();
        // Every instance `i` depends on, transitively, in plan order.
        let mut ancestors = BTreeSet::new();
        let mut todo: Vec<usize> = inst.needs.values().flatten().copied().collect();
        while let Some(u) = todo.pop() {
            if ancestors.insert(u) {
                todo.extend(self.graph.instances[u].needs.values().flatten().copied());
            }
        }
        Job {
            key: self.key(i).to_string(),
            pipeline: self.pipeline.header.name.clone(),
            stage: stage.name.clone(),
            instance: inst.name.clone(),
            kind: stage.kind.kind().to_string(),
            params: inst.params.clone(),
            needs,
            ancestors: ancestors
                .into_iter()
                .map(|u| self.upstream(u, cache))
                .collect(),
            seed: inst.seed,
            device: self.pipeline.header.device.clone(),
            pipeline_dir: absolute(self.pipeline.dir.clone()),
            out_dir: absolute(out_dir),
            resources: self.resources[i].clone(),
            resumable: self.resumable[i],
        }
    }
}

/// `p` made absolute (as it is where it cannot be): a job runs in another directory, or on
/// another node.
fn absolute(p: PathBuf) -> PathBuf {
    std::path::absolute(&p).unwrap_or(p)
}

/// Take instance `i`'s key lock without waiting and, unless another run built it meanwhile,
/// prepare its build directory and job (scheduler side; just's `CacheStatus::Miss(CacheLock)`).
/// `keep_partial`: a job of an earlier run still writes the build directory (re-attach).
pub fn prepare(
    plan: &Plan,
    cache: &Cache,
    i: usize,
    keep_partial: bool,
) -> std::result::Result<Prepared, Failure> {
    let record = &plan.records[i];
    let cache_err = |e: Error| Failure::Cache(e.to_string());
    let Some(lock) = cache.try_lock(&record.key).map_err(cache_err)? else {
        return Ok(Prepared::Busy);
    };
    let forced = plan.status[i] == Status::Run(RunReason::Forced);
    if !forced && cache.has(&record.key) {
        cache.write_record(record).map_err(cache_err)?;
        return Ok(Prepared::Cached);
    }
    // A re-attached cluster job holds it rightfully.
    if !keep_partial && WorkLock::held(&cache.partial(&record.key)) {
        return Ok(Prepared::Orphaned);
    }
    let inst = &plan.graph.instances[i];
    let scratch = plan.pipeline.stages[inst.stage]
        .kind
        .scratch(&inst.params)
        .map_err(|e| Failure::Stage(format!("{e:#}")))?;
    if !forced && !keep_partial && cache.uncommitted(&record.key) {
        cache.commit(record, &scratch).map_err(cache_err)?;
        return Ok(Prepared::Committed);
    }
    let out_dir = cache
        .begin(&record.key, plan.resumable[i] || keep_partial)
        .map_err(cache_err)?;
    Ok(Prepared::Build(Box::new(Claim {
        job: plan.job(i, cache, out_dir),
        record: record.clone(),
        scratch,
        _lock: lock,
    })))
}

/// Commit a claim's build when its job succeeded, then release its lock.
pub fn finish(
    cache: &Cache,
    claim: Claim,
    result: std::result::Result<(), Failure>,
) -> std::result::Result<(), Failure> {
    result?;
    let cache_err = |e: Error| Failure::Cache(e.to_string());
    cache
        .commit(&claim.record, &claim.scratch)
        .map_err(cache_err)?;
    Ok(())
}

/// How long the scheduler waits for an executor event before looking again (locks held by
/// other runs, Ctrl-C).
const TICK: Duration = Duration::from_millis(200);

/// Build what the plan says must be built on `executor`. Returns one report per instance.
pub fn execute(
    plan: &Plan,
    cache: &Cache,
    opts: &ExecOptions,
    executor: &mut dyn Executor,
) -> Vec<Report> {
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
    let catches = executor.catches_interrupt();
    if catches {
        crate::signals::catch_interrupt();
    }
    let mut waiting: BTreeSet<usize> = to_build.iter().copied().collect();
    // Instances waiting for another run's key lock, and for an orphan's work lock (each said
    // once).
    let mut busy_noted: BTreeSet<usize> = BTreeSet::new();
    let mut orphan_noted: BTreeSet<usize> = BTreeSet::new();
    let mut running: BTreeMap<usize, (Claim, InstanceProgress)> = BTreeMap::new();
    let mut stop = false;
    loop {
        if catches && crate::signals::interrupted() {
            ui.println("interrupted: cancelling every job of this run");
            executor.cancel_all();
            for (i, (_claim, progress)) in std::mem::take(&mut running) {
                ui.finish(
                    Some(progress),
                    &format!("CANCELLED {}", plan.graph.instances[i].name),
                );
                reports[i].outcome = Outcome::Failed(Failure::Interrupted);
            }
            stop = true;
            break;
        }
        // Skip whatever depends on a failure.
        let doomed: Vec<(usize, Skip)> = waiting
            .iter()
            .filter_map(|&i| {
                plan.graph
                    .upstream(i)
                    .into_iter()
                    .find(|&u| {
                        matches!(reports[u].outcome, Outcome::Failed(_) | Outcome::Skipped(_))
                    })
                    .map(|u| {
                        (
                            i,
                            Skip::UpstreamFailed(plan.graph.instances[u].name.clone()),
                        )
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
        // Whether an instance ended without running (cached meanwhile, failed to prepare),
        // which may make others ready.
        let mut settled = false;
        if !stop {
            let mut ready: Vec<usize> = waiting
                .iter()
                .copied()
                .filter(|&i| {
                    plan.graph
                        .upstream(i)
                        .iter()
                        .all(|&u| matches!(reports[u].outcome, Outcome::Built | Outcome::Cached))
                })
                .collect();
            ready.sort_by_key(|&i| (std::cmp::Reverse(weight[i]), i));
            for i in ready {
                if !executor.fits(&plan.resources[i]) {
                    continue;
                }
                let name = &plan.graph.instances[i].name;
                match prepare(plan, cache, i, executor.attachable(plan.key(i))) {
                    Ok(Prepared::Busy) => {
                        if busy_noted.insert(i) {
                            ui.println(&format!(
                                "  {name}: waiting for another pipe run building the same key"
                            ));
                        }
                    }
                    Ok(Prepared::Orphaned) => {
                        if orphan_noted.insert(i) {
                            let dir = cache.partial(plan.key(i));
                            ui.println(&format!(
                                "  {name}: waiting for a process of an earlier, killed run that still writes its build directory {} (it holds {}; `fuser -v` on that file shows it)",
                                dir.display(),
                                dir.join(crate::stages::WORK_LOCK).display()
                            ));
                        }
                    }
                    Ok(Prepared::Cached) => {
                        settled = true;
                        waiting.remove(&i);
                        reports[i].outcome = Outcome::Cached;
                        ui.finish(None, &format!("cached {name} (built by another run)"));
                    }
                    Ok(Prepared::Committed) => {
                        settled = true;
                        waiting.remove(&i);
                        reports[i].outcome = Outcome::Cached;
                        ui.finish(
                            None,
                            &format!(
                                "committed {name} (built by an earlier run, stopped before committing it)"
                            ),
                        );
                    }
                    Ok(Prepared::Build(claim)) => {
                        waiting.remove(&i);
                        let progress = ui.start(name);
                        match executor.submit(i, &claim.job, progress.clone()) {
                            Ok(()) => {
                                running.insert(i, (*claim, progress));
                            }
                            Err(f) => {
                                settled = true;
                                ui.finish(Some(progress), &format!("FAILED {name}: {f}"));
                                reports[i].outcome = Outcome::Failed(f);
                                stop |= !opts.keep_going;
                            }
                        }
                    }
                    Err(f) => {
                        settled = true;
                        waiting.remove(&i);
                        ui.finish(None, &format!("FAILED {name}: {f}"));
                        reports[i].outcome = Outcome::Failed(f);
                        stop |= !opts.keep_going;
                    }
                }
                if stop {
                    break;
                }
            }
        }
        let lock_waits = !stop
            && waiting
                .iter()
                .any(|i| busy_noted.contains(i) || orphan_noted.contains(i));
        if running.is_empty() && !lock_waits && !settled {
            break;
        }
        if running.is_empty() && settled {
            continue;
        }
        if running.is_empty() {
            // Only waiting for another run's lock.
            std::thread::sleep(TICK);
            continue;
        }
        for ended in executor.wait(TICK) {
            let Some((claim, progress)) = running.remove(&ended.id) else {
                continue;
            };
            let i = ended.id;
            let secs = (ended.finished - ended.started)
                .num_microseconds()
                .map_or(0.0, |us| us.max(0) as f64 / 1e6);
            reports[i].started_at = Some(ended.started);
            reports[i].finished_at = Some(ended.finished);
            reports[i].seconds = secs;
            let name = &plan.graph.instances[i].name;
            match finish(cache, claim, ended.result) {
                Ok(()) => {
                    reports[i].outcome = Outcome::Built;
                    ui.finish(Some(progress), &format!("built {name} in {secs:.1}s"));
                }
                Err(f) => {
                    let text = f.to_string();
                    ui.finish(
                        Some(progress),
                        &format!(
                            "FAILED {name} after {secs:.1}s: {}",
                            text.lines().next().unwrap_or("")
                        ),
                    );
                    reports[i].outcome = Outcome::Failed(f);
                    stop |= !opts.keep_going;
                }
            }
        }
    }
    // Whatever still waits could not start: after a failure without --keep-going it stays
    // `not-run`; otherwise an upstream was unavailable, which must not pass silently.
    if !stop {
        for i in waiting {
            reports[i].outcome = Outcome::Skipped(Skip::Unavailable);
        }
    }
    ui.close();
    reports
}
