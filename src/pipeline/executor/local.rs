//! The local executor: each job on a thread of `pipe run`, within `-j` CPU slots and the
//! machine's GPUs.

use std::sync::mpsc;
use std::time::Duration;

use chrono::Utc;

use super::{Ended, Executor, ExecutorKind, ExecutorOptions};
use crate::pipeline::cache::Cache;
use crate::pipeline::job::{Failure, Job};
use crate::pipeline::ui::InstanceProgress;
use crate::stages::Resources;

/// Runs jobs as threads.
pub struct LocalExecutor {
    cpus: u32,
    gpus: u32,
    used_cpus: u32,
    used_gpus: u32,
    running: std::collections::BTreeMap<usize, (u32, u32)>,
    tx: mpsc::Sender<Ended>,
    rx: mpsc::Receiver<Ended>,
}

/// GPUs this machine offers: `PIPE_GPUS`, else the entries of `CUDA_VISIBLE_DEVICES`, else the
/// `/dev/nvidiaN` devices; at least one, so that a `gpus = 1` stage on a machine without GPUs
/// still runs (alone), as a CPU stand-in.
pub fn gpu_count() -> u32 {
    let from_env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    let n = if let Some(v) = from_env("PIPE_GPUS") {
        v.trim().parse().unwrap_or(1)
    } else if let Some(v) = from_env("CUDA_VISIBLE_DEVICES") {
        v.split(',').filter(|s| !s.trim().is_empty()).count() as u32
    } else {
        std::fs::read_dir("/dev")
            .map(|rd| {
                rd.flatten()
                    .filter(|e| {
                        let n = e.file_name().to_string_lossy().to_string();
                        n.strip_prefix("nvidia")
                            .is_some_and(|d| !d.is_empty() && d.chars().all(|c| c.is_ascii_digit()))
                    })
                    .count() as u32
            })
            .unwrap_or(0)
    };
    n.max(1)
}

impl LocalExecutor {
    /// `jobs` CPU slots (`-j`) and `gpus` GPUs.
    pub fn new(jobs: usize, gpus: u32) -> LocalExecutor {
        let (tx, rx) = mpsc::channel();
        LocalExecutor {
            cpus: u32::try_from(jobs.max(1)).unwrap_or(u32::MAX),
            gpus: gpus.max(1),
            used_cpus: 0,
            used_gpus: 0,
            running: Default::default(),
            tx,
            rx,
        }
    }

    /// What a job holds here: more than the machine has is capped to all of it, so that it runs
    /// alone instead of never.
    fn slots(&self, r: &Resources) -> (u32, u32) {
        (r.cpus.clamp(1, self.cpus), r.gpus.min(self.gpus))
    }
}

impl ExecutorKind for LocalExecutor {
    fn default_jobs() -> usize {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }

    fn create(opts: &ExecutorOptions, _cache: &Cache) -> crate::error::Result<LocalExecutor> {
        Ok(LocalExecutor::new(opts.jobs, gpu_count()))
    }
}

impl Executor for LocalExecutor {
    fn fits(&self, resources: &Resources) -> bool {
        let (c, g) = self.slots(resources);
        self.used_cpus + c <= self.cpus && self.used_gpus + g <= self.gpus
    }

    fn submit(&mut self, id: usize, job: &Job, progress: InstanceProgress) -> Result<(), Failure> {
        let (c, g) = self.slots(&job.resources);
        self.used_cpus += c;
        self.used_gpus += g;
        self.running.insert(id, (c, g));
        let tx = self.tx.clone();
        let job = job.clone();
        std::thread::Builder::new()
            .name(format!("pipe-{}", job.instance))
            .spawn(move || {
                let started = Utc::now();
                let result = job.run(&progress);
                let _ = tx.send(Ended {
                    id,
                    result,
                    started,
                    finished: Utc::now(),
                });
            })
            .map_err(|e| Failure::Submit(format!("cannot start a thread: {e}")))?;
        Ok(())
    }

    fn wait(&mut self, timeout: Duration) -> Vec<Ended> {
        let mut out = Vec::new();
        if self.running.is_empty() {
            return out;
        }
        if let Ok(e) = self.rx.recv_timeout(timeout) {
            out.push(e);
            out.extend(self.rx.try_iter());
        }
        for e in &out {
            if let Some((c, g)) = self.running.remove(&e.id) {
                self.used_cpus -= c;
                self.used_gpus -= g;
            }
        }
        out
    }

    fn cancel_all(&mut self) {
        // Threads cannot be cancelled; they end with the process.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_cap_at_the_machine_and_count_gpus() {
        let e = LocalExecutor::new(2, 2);
        let ask = |cpus, gpus| Resources {
            cpus,
            gpus,
            ..Resources::default()
        };
        assert_eq!(e.slots(&ask(8, 5)), (2, 2));
        assert!(e.fits(&ask(2, 2)));
        let mut busy = LocalExecutor::new(2, 2);
        busy.used_gpus = 1;
        busy.used_cpus = 1;
        assert!(busy.fits(&ask(1, 1)));
        assert!(!busy.fits(&ask(1, 2)));
        assert!(!busy.fits(&ask(2, 0)));
    }
}
