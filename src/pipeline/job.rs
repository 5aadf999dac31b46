//! One instance as a self-contained, serialisable job, and how a job fails.
//!
//! The scheduler turns a planned instance into a [`Job`] (everything `run` needs: kind,
//! parameters, upstream outputs, seed, device, resources, output directory) under the key's lock
//! ([`super::exec::prepare`]). An executor runs it: the local one on a thread of `pipe run`, the
//! Slurm one as `pipe exec job.json` on a node. Neither needs the plan.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::progress::Progress;
use crate::stages::{self, Ctx, Resources, Upstream};

/// Everything needed to build one instance, on any machine that sees the cache.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// The instance's cache key.
    pub key: String,
    pub pipeline: String,
    pub stage: String,
    pub instance: String,
    /// The stage kind's name (`train`).
    pub kind: String,
    /// Fully defaulted parameters.
    pub params: serde_json::Value,
    /// Needs by name, each with its upstream instances' finished entries.
    pub needs: BTreeMap<String, Vec<Upstream>>,
    /// Every instance it depends on, transitively (the needs included), in plan order: the
    /// lineage a report publishes.
    #[serde(default)]
    pub ancestors: Vec<Upstream>,
    pub seed: u64,
    pub device: String,
    /// The pipeline file's directory (absolute), for relative paths in parameters.
    pub pipeline_dir: PathBuf,
    /// The build directory (absolute): `<cache>/<key>.partial/`.
    pub out_dir: PathBuf,
    pub resources: Resources,
    /// Whether a retried attempt keeps what the previous one left in `out_dir`.
    pub resumable: bool,
}

/// Why an instance did not build.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// The stage returned an error (its causes, one per line).
    Stage(String),
    /// The stage panicked.
    Panic(String),
    /// The cache could not be prepared or the entry committed.
    Cache(String),
    /// The executor could not start the job (e.g. `sbatch` refused it).
    Submit(String),
    /// A cluster job ended without success.
    Job {
        /// The cluster's job id.
        id: String,
        /// Its final state (`FAILED`, `TIMEOUT`, ...).
        state: String,
        /// `exit:signal` as the cluster reports it.
        exit_code: String,
        /// The job's output file.
        log: PathBuf,
        /// The stage's own error when the job got as far as writing it, else the log's tail.
        detail: String,
    },
    /// The run was interrupted (Ctrl-C) while the instance ran.
    Interrupted,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Stage(e) | Failure::Cache(e) => write!(f, "{e}"),
            Failure::Panic(e) => write!(f, "the stage panicked: {e}"),
            Failure::Submit(e) => write!(f, "could not submit: {e}"),
            Failure::Job {
                id,
                state,
                exit_code,
                log,
                detail,
            } => {
                write!(
                    f,
                    "job {id} ended {state} (exit code {exit_code}); log {}",
                    log.display()
                )?;
                if !detail.is_empty() {
                    write!(f, "\n{detail}")?;
                }
                Ok(())
            }
            Failure::Interrupted => write!(f, "interrupted"),
        }
    }
}

impl Job {
    /// Run the stage in this process, catching a panic as a failure.
    pub fn run(&self, progress: &dyn Progress) -> Result<(), Failure> {
        let kind = stages::kind(&self.kind)
            .ok_or_else(|| Failure::Stage(format!("unknown stage kind `{}`", self.kind)))?;
        let ctx = Ctx {
            stage: &self.stage,
            instance: &self.instance,
            out_dir: &self.out_dir,
            needs: &self.needs,
            ancestors: &self.ancestors,
            seed: self.seed,
            device: &self.device,
            pipeline_dir: &self.pipeline_dir,
            progress,
        };
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            kind.run(&self.params, &ctx)
        }));
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Failure::Stage(format!("{e:#}"))),
            Err(panic) => Err(Failure::Panic(
                panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "unknown panic".into()),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_survives_json() {
        let job = Job {
            key: "k".into(),
            pipeline: "p".into(),
            stage: "s".into(),
            instance: "s@a".into(),
            kind: "command".into(),
            params: serde_json::json!({"args": ["true"]}),
            needs: BTreeMap::from([(
                "x".to_string(),
                vec![Upstream {
                    stage: "u".into(),
                    instance: "u".into(),
                    kind: "command".into(),
                    dir: "/c/u".into(),
                    matrix: BTreeMap::from([("f".to_string(), serde_json::json!(2.5))]),
                    params: serde_json::json!({}),
                    key: "ku".into(),
                    inputs: BTreeMap::from([("d".to_string(), vec!["kd".to_string()])]),
                }],
            )]),
            ancestors: Vec::new(),
            seed: 7,
            device: "cpu".into(),
            pipeline_dir: "/p".into(),
            out_dir: "/c/k.partial".into(),
            resources: Resources::default(),
            resumable: false,
        };
        let text = serde_json::to_string(&job).unwrap_or_default();
        let back: Job = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, job);
    }
}
