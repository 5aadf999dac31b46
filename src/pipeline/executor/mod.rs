//! Executors: where a prepared [`Job`] runs. The scheduler (`super::exec`) decides what runs
//! when and holds the keys' locks; an executor only starts jobs, reports when they end and
//! cancels them (snakemake's executor interface: `run_job`, `check_active_jobs`,
//! `cancel_jobs`). Adding an executor is one file here and one arm in [`make`].

pub mod local;
pub mod slurm;

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::job::{Failure, Job};
use super::ui::InstanceProgress;
use crate::stages::Resources;

/// Which executor runs a pipeline's instances (`executor = "..."`, `pipe run --executor`).
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum ExecutorName {
    /// Threads of `pipe run` on this machine.
    #[default]
    Local,
    /// One `sbatch` job per instance on a Slurm cluster; the cache must be on a filesystem the
    /// nodes share.
    Slurm,
}

/// A job that ended, as the executor saw it.
#[derive(Debug, Clone)]
pub struct Ended {
    /// The scheduler's id of the job (the instance's index in the plan).
    pub id: usize,
    pub result: Result<(), Failure>,
    pub started: DateTime<Utc>,
    pub finished: DateTime<Utc>,
}

/// A job's live state, for `pipe status` and the terminal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handle {
    /// The cluster's job id.
    pub job_id: String,
    /// Its state as last seen (`PENDING`, `RUNNING`).
    pub state: String,
}

/// Starts jobs, reports when they end, cancels them.
pub trait Executor {
    /// Whether a job asking for `resources` can start beside those running now. The scheduler
    /// submits nothing that does not fit.
    fn fits(&self, resources: &Resources) -> bool;
    /// Start `job` (scheduler id `id`); its progress goes to `progress`. Its end arrives
    /// through [`Executor::wait`].
    fn submit(&mut self, id: usize, job: &Job, progress: InstanceProgress) -> Result<(), Failure>;
    /// Wait at most `timeout` for running jobs to end; returns those that did.
    fn wait(&mut self, timeout: Duration) -> Vec<Ended>;
    /// Cancel every job submitted and not yet ended (Ctrl-C).
    fn cancel_all(&mut self);
    /// Whether the process should catch Ctrl-C and call [`Executor::cancel_all`] (jobs that
    /// outlive `pipe run` must be cancelled; local threads die with it).
    fn catches_interrupt(&self) -> bool {
        false
    }
    /// Whether a job of an earlier run still builds `key` and [`Executor::submit`] will
    /// re-attach to it (then its build directory must be kept as it is).
    fn attachable(&self, _key: &str) -> bool {
        false
    }
}

/// Executor options from the command line.
#[derive(Debug, Clone)]
pub struct ExecutorOptions {
    /// `-j`: local slots, or the most jobs a cluster executor keeps submitted.
    pub jobs: usize,
}

/// The executor `name` for a run over the cache at `cache_root`.
pub fn make(
    name: ExecutorName,
    opts: &ExecutorOptions,
    cache: &super::cache::Cache,
) -> crate::error::Result<Box<dyn Executor>> {
    Ok(match name {
        ExecutorName::Local => Box::new(local::LocalExecutor::new(opts.jobs, local::gpu_count())),
        ExecutorName::Slurm => Box::new(slurm::SlurmExecutor::new(opts, cache)?),
    })
}
