//! Executors: where a prepared [`Job`] runs. The scheduler (`super::exec`) decides what runs
//! when and holds the keys' locks; an executor only starts jobs, reports when they end and
//! cancels them (snakemake's executor interface: `run_job`, `check_active_jobs`,
//! `cancel_jobs`).
//!
//! Adding an executor is its own file here, implementing [`Executor`] and [`ExecutorKind`], and
//! one line in the `executors!` list below, which declares the module and derives from it the
//! [`ExecutorName`] variant (its name in TOML, on the command line and in the schema), the
//! constructor and the default `-j`; nothing else names executors (docs/cluster.md, "Adding an
//! executor").

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::cache::Cache;
use super::job::{Failure, Job};
use super::ui::InstanceProgress;
use crate::stages::Resources;

/// The executors, one line each: `/// what it is` (its description in `--help` and the schema),
/// then `Variant => module::Type` (its file, `module.rs`, and the type implementing
/// [`ExecutorKind`]); its name is the variant's in lower case.
macro_rules! executors {
    ($($(#[$attr:meta])* $variant:ident => $module:ident :: $kind:ident,)+) => {
        $(pub mod $module;)+

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
        // One spelling in TOML and on the command line: the variant in lower case.
        #[serde(rename_all = "lowercase")]
        #[value(rename_all = "lowercase")]
        pub enum ExecutorName {
            $($(#[$attr])* $variant,)+
        }

        impl ExecutorName {
            /// `-j` when the command line does not say.
            pub fn default_jobs(self) -> usize {
                match self {
                    $(ExecutorName::$variant => <$module::$kind as ExecutorKind>::default_jobs(),)+
                }
            }

            /// The executor for a run over `cache`.
            pub fn make(
                self,
                opts: &ExecutorOptions,
                cache: &Cache,
            ) -> crate::error::Result<Box<dyn Executor>> {
                Ok(match self {
                    $(ExecutorName::$variant => Box::new(<$module::$kind as ExecutorKind>::create(opts, cache)?),)+
                })
            }
        }

        /// Jobs of any executor that still build one of `keys` (a run in progress, or one whose
        /// submitter died), by key: for `pipe status` and `cache gc`.
        pub fn live_jobs(cache: &Cache, keys: &[&str]) -> BTreeMap<String, Handle> {
            let mut out = BTreeMap::new();
            $(out.extend(<$module::$kind as ExecutorKind>::live_jobs(cache, keys));)+
            out
        }
    };
}

executors! {
    /// Threads of `pipe run` on this machine.
    #[default]
    Local => local::LocalExecutor,
    /// One `sbatch` job per instance on a Slurm cluster; the cache must be on a filesystem the
    /// nodes share.
    Slurm => slurm::SlurmExecutor,
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
    /// Whose job it is.
    pub executor: ExecutorName,
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

/// What an executor's file provides besides [`Executor`]: how to make it, and what it knows
/// about jobs that outlive a run. Listed in `executors!`.
pub trait ExecutorKind: Executor + Sized + 'static {
    /// `-j` when the command line does not say.
    fn default_jobs() -> usize;
    /// The executor for a run over the cache `cache` (checking what it needs, e.g. that the
    /// cluster answers).
    fn create(opts: &ExecutorOptions, cache: &Cache) -> crate::error::Result<Self>;
    /// Its jobs that still build one of `keys` (of a run in progress, or of one whose submitter
    /// died), by key. None where jobs die with `pipe run`.
    fn live_jobs(_cache: &Cache, _keys: &[&str]) -> BTreeMap<String, Handle> {
        BTreeMap::new()
    }
}

impl std::fmt::Display for ExecutorName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use clap::ValueEnum;
        let name = self.to_possible_value().map(|v| v.get_name().to_string());
        f.write_str(&name.unwrap_or_default())
    }
}
