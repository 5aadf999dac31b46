//! The Slurm executor: one `sbatch` job per instance, running `pipe exec <job.json>` on a node.
//!
//! Everything a job needs and leaves, besides its build directory, lives in
//! `<cache>/jobs/<key>/`: `job.json` (the [`Job`]), `job.sh` (the batch script), `slurm-<id>.out`
//! (its log), `progress.jsonl` (progress events the scheduler tails onto the terminal),
//! `result.json` (the stage's own success or error) and `submitted.json` (the live job id, so a
//! later `pipe run` re-attaches to a job whose submitter died instead of submitting it twice).
//! So the cache must be on a filesystem every node sees at the same path (checked at start).
//!
//! Job states are polled in one batched `squeue -t all -j ID,ID,...` per poll interval; a job
//! that squeue no longer knows is looked up with `scontrol show job`, then `sacct` (accounting
//! storage) or `sacct -c` (the jobcomp file, where there is no slurmdbd). TIMEOUT, PREEMPTED and
//! NODE_FAIL resubmit the job (a resumable kind continues from its checkpoints) up to
//! `PIPE_SLURM_RETRIES` times; other endings fail the instance naming the job id, its exit code
//! and its log.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{Ended, Executor, ExecutorKind, ExecutorName, ExecutorOptions, Handle};
use crate::error::{Error, Result};
use crate::pipeline::cache::Cache;
use crate::pipeline::job::{Failure, Job};
use crate::pipeline::ui::InstanceProgress;
use crate::progress::Progress;
use crate::results::write_atomic;
use crate::stages::Resources;

/// File names inside `<cache>/jobs/<key>/`.
pub const JOB_FILE: &str = "job.json";
pub const PROGRESS_FILE: &str = "progress.jsonl";
pub const RESULT_FILE: &str = "result.json";
pub const SUBMITTED_FILE: &str = "submitted.json";

/// A job's state, as squeue, scontrol and sacct name it (`CANCELLED by 0` is `Cancelled`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlurmState {
    Pending,
    Running,
    Completing,
    Completed,
    Failed,
    Cancelled,
    Timeout,
    Preempted,
    NodeFail,
    OutOfMemory,
    BootFail,
    Deadline,
    /// Not found by any of Slurm's tools for several polls: gone without a trace.
    Vanished,
    /// Any other state (`SUSPENDED`, `REQUEUED`, ...): the job is still Slurm's.
    Other(String),
}

impl SlurmState {
    /// The state of a tool's state column (`CANCELLED by 0`, `COMPLETED+`).
    pub fn parse(text: &str) -> SlurmState {
        let word = text
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .trim_end_matches('+');
        match word {
            "PENDING" => SlurmState::Pending,
            "RUNNING" => SlurmState::Running,
            "COMPLETING" => SlurmState::Completing,
            "COMPLETED" => SlurmState::Completed,
            "FAILED" => SlurmState::Failed,
            "CANCELLED" => SlurmState::Cancelled,
            "TIMEOUT" => SlurmState::Timeout,
            "PREEMPTED" => SlurmState::Preempted,
            "NODE_FAIL" => SlurmState::NodeFail,
            "OUT_OF_MEMORY" => SlurmState::OutOfMemory,
            "BOOT_FAIL" => SlurmState::BootFail,
            "DEADLINE" => SlurmState::Deadline,
            other => SlurmState::Other(other.to_string()),
        }
    }

    /// Slurm's name for it.
    pub fn name(&self) -> &str {
        match self {
            SlurmState::Pending => "PENDING",
            SlurmState::Running => "RUNNING",
            SlurmState::Completing => "COMPLETING",
            SlurmState::Completed => "COMPLETED",
            SlurmState::Failed => "FAILED",
            SlurmState::Cancelled => "CANCELLED",
            SlurmState::Timeout => "TIMEOUT",
            SlurmState::Preempted => "PREEMPTED",
            SlurmState::NodeFail => "NODE_FAIL",
            SlurmState::OutOfMemory => "OUT_OF_MEMORY",
            SlurmState::BootFail => "BOOT_FAIL",
            SlurmState::Deadline => "DEADLINE",
            SlurmState::Vanished => "VANISHED",
            SlurmState::Other(s) => s,
        }
    }

    /// Whether the job will not run again by itself.
    pub fn ended(&self) -> bool {
        !matches!(
            self,
            SlurmState::Pending
                | SlurmState::Running
                | SlurmState::Completing
                | SlurmState::Other(_)
        )
    }

    /// An ending that is not the job's fault: submit it again.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            SlurmState::Timeout | SlurmState::Preempted | SlurmState::NodeFail
        )
    }
}

impl std::fmt::Display for SlurmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The directory of a key's job files.
pub fn job_dir(cache: &Cache, key: &str) -> PathBuf {
    cache.root.join("jobs").join(key)
}

/// What `submitted.json` records.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Submitted {
    job_id: String,
    instance: String,
    attempt: u32,
    /// RFC 3339.
    submitted_at: String,
}

/// What `pipe exec` leaves in `result.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobResult {
    pub ok: bool,
    pub error: Option<String>,
}

/// One job this run watches.
struct Watched {
    key: String,
    job_id: String,
    state: SlurmState,
    attempt: u32,
    out_dir: PathBuf,
    started: DateTime<Utc>,
    progress: InstanceProgress,
    progress_offset: u64,
    /// Polls that did not find the job anywhere (it may not be visible yet right after sbatch).
    unseen: u32,
}

/// Submits to Slurm.
pub struct SlurmExecutor {
    cache: Cache,
    /// `pipe` itself, as the nodes run it.
    exe: PathBuf,
    /// Most jobs submitted and not ended at once (`-j`).
    max_jobs: usize,
    retries: u32,
    poll: Duration,
    next_poll: Instant,
    jobs: BTreeMap<usize, Watched>,
}

fn run_tool(program: &str, args: &[&str]) -> std::result::Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run `{program}`: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).to_string())
    } else {
        Err(format!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn env_number<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// Filesystems that nodes of a cluster share (statfs magic numbers).
fn network_filesystem(path: &Path) -> Option<&'static str> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statfs writes into the zeroed struct; `c` is a valid NUL-terminated path.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    #[allow(clippy::unnecessary_cast)]
    let kind = st.f_type as i64;
    match kind {
        0x6969 => Some("nfs"),
        0x0bd0_0bd0 => Some("lustre"),
        0x4750_4653 => Some("gpfs"),
        0x1916_1930 => Some("beegfs"),
        0x00c3_6400 => Some("cephfs"),
        0xff53_4d42 | 0xfe53_4d42 => Some("cifs/smb"),
        0x6573_5546 => Some("fuse"),
        _ => None,
    }
}

/// The cache must be where the nodes see it: on a network filesystem, or the cluster is this
/// machine alone. `PIPE_SLURM_SHARED=1` asserts it for filesystems not recognised here.
fn check_shared(root: &Path) -> Result<()> {
    if std::env::var("PIPE_SLURM_SHARED").is_ok_and(|v| v == "1") {
        return Ok(());
    }
    if network_filesystem(root).is_some() {
        return Ok(());
    }
    let nodes = run_tool("sinfo", &["-h", "-N", "-o", "%N"]).unwrap_or_default();
    let me = crate::pipeline::host_name();
    let me = me.split('.').next().unwrap_or_default();
    let mut names: Vec<&str> = nodes.split_whitespace().collect();
    names.dedup();
    if !names.is_empty() && names.iter().all(|n| *n == me) {
        return Ok(());
    }
    Err(Error::Usage(format!(
        "executor `slurm`: the cache {} is not on a network filesystem and the cluster's nodes ({}) are not this machine ({me}); put the cache on a filesystem every node mounts at the same path (PIPE_CACHE), or set PIPE_SLURM_SHARED=1 if it already is",
        root.display(),
        names.join(", ")
    )))
}

/// `sbatch` arguments for `resources`.
pub fn sbatch_resource_args(r: &Resources) -> Vec<String> {
    let mut args = vec![format!("--cpus-per-task={}", r.cpus.max(1))];
    if r.gpus > 0 {
        args.push(format!("--gres=gpu:{}", r.gpus));
    }
    for (flag, v) in [
        ("--mem", &r.mem),
        ("--time", &r.time),
        ("--partition", &r.partition),
        ("--account", &r.account),
        ("--constraint", &r.constraint),
    ] {
        if let Some(v) = v {
            args.push(format!("{flag}={v}"));
        }
    }
    args.extend(r.extra.iter().cloned());
    args
}

/// Quote for a POSIX shell.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

impl SlurmExecutor {
    /// Check that Slurm answers and the cache is shared.
    pub fn new(opts: &ExecutorOptions, cache: &Cache) -> Result<SlurmExecutor> {
        run_tool("sbatch", &["--version"]).map_err(|e| {
            Error::Usage(format!(
                "executor `slurm` needs Slurm's commands on PATH: {e}"
            ))
        })?;
        let root = std::path::absolute(&cache.root).unwrap_or_else(|_| cache.root.clone());
        std::fs::create_dir_all(&root).map_err(|e| Error::io("cannot create", &root, e))?;
        check_shared(&root)?;
        let exe = match std::env::var_os("PIPE_SLURM_EXE") {
            Some(p) => PathBuf::from(p),
            None => std::env::current_exe()
                .map_err(|e| Error::Usage(format!("cannot find the pipe executable: {e}")))?,
        };
        Ok(SlurmExecutor {
            cache: Cache { root },
            exe,
            max_jobs: opts.jobs.max(1),
            retries: env_number("PIPE_SLURM_RETRIES", 2),
            poll: Duration::from_secs_f64(env_number("PIPE_SLURM_POLL", 2.0_f64).max(0.1)),
            next_poll: Instant::now(),
            jobs: BTreeMap::new(),
        })
    }

    /// Submit (or re-attach to) the job of `job`; returns its id and whether it was re-attached.
    fn start(&self, job: &Job, attempt: u32) -> std::result::Result<(String, bool), Failure> {
        let dir = job_dir(&self.cache, &job.key);
        let io = |what: &str, e: &dyn std::fmt::Display| {
            Failure::Submit(format!("{what} {}: {e}", dir.display()))
        };
        std::fs::create_dir_all(&dir).map_err(|e| io("cannot create", &e))?;
        if attempt == 1
            && let Some(live) = live_submission(&self.cache, &job.key)
        {
            return Ok((live.job_id, true));
        }
        for stale in [RESULT_FILE, PROGRESS_FILE] {
            let _ = std::fs::remove_file(dir.join(stale));
        }
        let job_file = dir.join(JOB_FILE);
        let text = serde_json::to_vec_pretty(job).map_err(|e| io("cannot encode", &e))?;
        write_atomic(&job_file, &text).map_err(|e| io("cannot write in", &e))?;
        let script = dir.join("job.sh");
        let body = format!(
            "#!/bin/sh\n# {} of pipeline {}, key {}\nexec {} exec {}\n",
            job.instance,
            job.pipeline,
            job.key,
            sh_quote(&self.exe.to_string_lossy()),
            sh_quote(&job_file.to_string_lossy())
        );
        write_atomic(&script, body.as_bytes()).map_err(|e| io("cannot write in", &e))?;
        let name: String = format!("pipe-{}-{}", job.pipeline, job.instance)
            .chars()
            .map(|c| if c.is_ascii_graphic() { c } else { '_' })
            .collect();
        let mut args = vec![
            "--parsable".to_string(),
            format!("--job-name={name}"),
            format!("--output={}", dir.join("slurm-%j.out").display()),
            format!("--chdir={}", job.pipeline_dir.display()),
            // Slurm must not requeue the job itself (JobRequeue=1, PreemptMode=REQUEUE): under
            // the same id it would hide NODE_FAIL or PREEMPTED from the poll, run again into a
            // build directory a non-resumable kind must start afresh, and bypass
            // PIPE_SLURM_RETRIES. The scheduler resubmits those endings itself.
            "--no-requeue".to_string(),
        ];
        if job.resumable {
            // A resumable kind gets notice before its time limit (SIGUSR1, a minute unless
            // PIPE_SLURM_SIGNAL_SECONDS says otherwise) so it can checkpoint; the job is then
            // resubmitted and resumes.
            let lead: u32 = env_number("PIPE_SLURM_SIGNAL_SECONDS", 60);
            args.push(format!("--signal=B:USR1@{lead}"));
        }
        args.extend(sbatch_resource_args(&job.resources));
        args.push(script.to_string_lossy().to_string());
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = run_tool("sbatch", &refs).map_err(Failure::Submit)?;
        let job_id = out.trim().split(';').next().unwrap_or_default().to_string();
        if job_id.is_empty() || !job_id.chars().all(|c| c.is_ascii_digit() || c == '_') {
            return Err(Failure::Submit(format!(
                "sbatch printed no job id: {out:?}"
            )));
        }
        let record = Submitted {
            job_id: job_id.clone(),
            instance: job.instance.clone(),
            attempt,
            submitted_at: Utc::now().to_rfc3339(),
        };
        let bytes = serde_json::to_vec_pretty(&record).unwrap_or_default();
        write_atomic(&dir.join(SUBMITTED_FILE), &bytes).map_err(|e| io("cannot write in", &e))?;
        Ok((job_id, false))
    }

    /// Apply the progress events the job appended since the last look.
    fn tail_progress(&mut self) {
        for w in self.jobs.values_mut() {
            let path = job_dir(&self.cache, &w.key).join(PROGRESS_FILE);
            let Ok(mut f) = std::fs::File::open(&path) else {
                continue;
            };
            if f.seek(SeekFrom::Start(w.progress_offset)).is_err() {
                continue;
            }
            let mut text = String::new();
            if f.read_to_string(&mut text).is_err() {
                continue;
            }
            // Only whole lines; a partly written last line waits for the next look.
            let Some(end) = text.rfind('\n') else {
                continue;
            };
            for line in text[..end].lines() {
                if let Ok(ev) = serde_json::from_str::<ProgressEvent>(line) {
                    ev.apply(&w.progress);
                }
            }
            w.progress_offset += end as u64 + 1;
        }
    }

    /// One batched look at every watched job; returns the ended ones.
    fn poll(&mut self) -> Vec<Ended> {
        let ids: Vec<String> = self.jobs.values().map(|w| w.job_id.clone()).collect();
        let states = job_states(&ids);
        let mut ended = Vec::new();
        let mut resubmit = Vec::new();
        for (&id, w) in self.jobs.iter_mut() {
            let Some(found) = states.get(&w.job_id) else {
                w.unseen += 1;
                // Not found anywhere for a while: the job is gone without a trace.
                if w.unseen >= 10 {
                    ended.push((id, SlurmState::Vanished, String::new()));
                }
                continue;
            };
            w.unseen = 0;
            if found.state != w.state {
                w.state = found.state.clone();
                if !found.state.ended() {
                    w.progress.warn(&format!(
                        "job {} {}",
                        w.job_id,
                        found.state.name().to_lowercase()
                    ));
                }
            }
            if !found.state.ended() {
                continue;
            }
            if found.state.retryable() && w.attempt <= self.retries {
                resubmit.push(id);
            } else {
                ended.push((id, found.state.clone(), found.exit_code.clone()));
            }
        }
        let mut out = Vec::new();
        for id in resubmit {
            let Some(w) = self.jobs.get(&id) else {
                continue;
            };
            let job_file = job_dir(&self.cache, &w.key).join(JOB_FILE);
            let job: Option<Job> = std::fs::read(&job_file)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            let (old, state, attempt) = (w.job_id.clone(), w.state.clone(), w.attempt + 1);
            let restarted = match job {
                None => Err(Failure::Submit(format!(
                    "cannot read {} to resubmit",
                    job_file.display()
                ))),
                Some(job) => {
                    if !job.resumable {
                        let _ = std::fs::remove_dir_all(&w.out_dir);
                        let _ = std::fs::create_dir_all(&w.out_dir);
                    }
                    self.start(&job, attempt)
                }
            };
            let Some(w) = self.jobs.get_mut(&id) else {
                continue;
            };
            match restarted {
                Ok((new_id, _)) => {
                    w.progress.warn(&format!(
                        "job {old} ended {state}; resubmitted as job {new_id} (attempt {attempt} of {})",
                        self.retries + 1
                    ));
                    w.job_id = new_id;
                    w.attempt = attempt;
                    w.state = SlurmState::Pending;
                    // The new attempt writes a new progress file from its start.
                    w.progress_offset = 0;
                }
                Err(f) => {
                    let started = w.started;
                    self.jobs.remove(&id);
                    out.push(Ended {
                        id,
                        result: Err(f),
                        started,
                        finished: Utc::now(),
                    });
                }
            }
        }
        for (id, state, exit_code) in ended {
            let Some(w) = self.jobs.remove(&id) else {
                continue;
            };
            let dir = job_dir(&self.cache, &w.key);
            let result: Option<JobResult> = std::fs::read(dir.join(RESULT_FILE))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            let log = dir.join(format!("slurm-{}.out", w.job_id));
            let outcome = match (&state, &result) {
                (SlurmState::Completed, Some(r)) if r.ok => Ok(()),
                _ => Err(Failure::Job {
                    id: w.job_id.clone(),
                    state: state.name().to_string(),
                    exit_code,
                    detail: result
                        .and_then(|r| r.error)
                        .unwrap_or_else(|| log_tail(&log, 5)),
                    log,
                }),
            };
            if outcome.is_ok() {
                let _ = std::fs::remove_file(dir.join(SUBMITTED_FILE));
            }
            out.push(Ended {
                id,
                result: outcome,
                started: w.started,
                finished: Utc::now(),
            });
        }
        out
    }
}

fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(lines).collect();
    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
}

/// A job's state as one of Slurm's tools reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobState {
    pub state: SlurmState,
    /// `exit:signal`; empty where the tool does not say.
    pub exit_code: String,
}

/// States of `ids`: one `squeue` for all, then `scontrol` for ended or unknown ones (it has the
/// exit code), then `sacct` / `sacct -c` for jobs even scontrol forgot.
pub fn job_states(ids: &[String]) -> BTreeMap<String, JobState> {
    let mut out = BTreeMap::new();
    if ids.is_empty() {
        return out;
    }
    let list = ids.join(",");
    if let Ok(text) = run_tool("squeue", &["-h", "-t", "all", "-j", &list, "-o", "%i|%T"]) {
        for line in text.lines() {
            if let Some((id, state)) = line.trim().split_once('|') {
                out.insert(
                    id.to_string(),
                    JobState {
                        state: SlurmState::parse(state),
                        exit_code: String::new(),
                    },
                );
            }
        }
    }
    let need_detail: Vec<&String> = ids
        .iter()
        .filter(|id| out.get(*id).is_none_or(|s| s.state.ended()))
        .collect();
    let mut forgotten = Vec::new();
    for id in need_detail {
        match run_tool("scontrol", &["show", "job", "-o", id]) {
            Ok(text) => {
                let field = |name: &str| {
                    text.split_whitespace()
                        .find_map(|w| w.strip_prefix(name))
                        .unwrap_or_default()
                        .to_string()
                };
                out.insert(
                    id.clone(),
                    JobState {
                        state: SlurmState::parse(&field("JobState=")),
                        exit_code: field("ExitCode="),
                    },
                );
            }
            Err(_) => forgotten.push(id.clone()),
        }
    }
    if !forgotten.is_empty() {
        let list = forgotten.join(",");
        let base = ["-n", "-P", "-X", "-j", &list, "-o", "JobID,State,ExitCode"];
        let text = run_tool("sacct", &base).or_else(|_| {
            let mut with_c = vec!["-c"];
            with_c.extend(base.iter().filter(|a| **a != "-X"));
            run_tool("sacct", &with_c)
        });
        for line in text.unwrap_or_default().lines() {
            let parts: Vec<&str> = line.split('|').collect();
            if let [id, state, exit] = parts[..]
                && forgotten.iter().any(|f| f == id)
            {
                out.insert(
                    id.to_string(),
                    JobState {
                        state: SlurmState::parse(state),
                        exit_code: exit.to_string(),
                    },
                );
            }
        }
    }
    out
}

/// The live job recorded for `key`, if Slurm still has it pending or running.
fn live_submission(cache: &Cache, key: &str) -> Option<Submitted> {
    let bytes = std::fs::read(job_dir(cache, key).join(SUBMITTED_FILE)).ok()?;
    let s: Submitted = serde_json::from_slice(&bytes).ok()?;
    let states = job_states(std::slice::from_ref(&s.job_id));
    let state = states.get(&s.job_id)?;
    (!state.state.ended()).then_some(s)
}

/// The live Slurm jobs of `keys` (for `pipe status` and `cache gc`): one batched squeue.
fn live_jobs(cache: &Cache, keys: &[&str]) -> BTreeMap<String, Handle> {
    let submitted: Vec<(String, Submitted)> = keys
        .iter()
        .filter_map(|k| {
            let bytes = std::fs::read(job_dir(cache, k).join(SUBMITTED_FILE)).ok()?;
            Some((k.to_string(), serde_json::from_slice(&bytes).ok()?))
        })
        .collect();
    if submitted.is_empty() {
        return BTreeMap::new();
    }
    let ids: Vec<String> = submitted.iter().map(|(_, s)| s.job_id.clone()).collect();
    let states = job_states(&ids);
    submitted
        .into_iter()
        .filter_map(|(k, s)| {
            let st = states.get(&s.job_id)?;
            (!st.state.ended()).then(|| {
                (
                    k,
                    Handle {
                        executor: ExecutorName::Slurm,
                        job_id: s.job_id,
                        state: st.state.name().to_string(),
                    },
                )
            })
        })
        .collect()
}

impl ExecutorKind for SlurmExecutor {
    fn default_jobs() -> usize {
        // How many jobs to keep submitted; Slurm decides where and when they run.
        1000
    }

    fn create(opts: &ExecutorOptions, cache: &Cache) -> Result<SlurmExecutor> {
        SlurmExecutor::new(opts, cache)
    }

    fn live_jobs(cache: &Cache, keys: &[&str]) -> BTreeMap<String, Handle> {
        live_jobs(cache, keys)
    }
}

impl Executor for SlurmExecutor {
    fn fits(&self, _resources: &Resources) -> bool {
        // Slurm places jobs; the run only bounds how many it keeps submitted.
        self.jobs.len() < self.max_jobs
    }

    fn submit(&mut self, id: usize, job: &Job, progress: InstanceProgress) -> Result<(), Failure> {
        let (job_id, attached) = self.start(job, 1)?;
        if attached {
            progress.warn(&format!(
                "re-attached to job {job_id}, still running from an earlier pipe run"
            ));
        } else {
            progress.warn(&format!("submitted as job {job_id}"));
        }
        // A re-attached job's progress so far is shown from the start of its file.
        self.jobs.insert(
            id,
            Watched {
                key: job.key.clone(),
                job_id,
                state: SlurmState::Pending,
                attempt: 1,
                out_dir: job.out_dir.clone(),
                started: Utc::now(),
                progress,
                progress_offset: 0,
                unseen: 0,
            },
        );
        // Look soon: short jobs end within seconds.
        self.next_poll = self
            .next_poll
            .min(Instant::now() + Duration::from_millis(500));
        Ok(())
    }

    fn wait(&mut self, timeout: Duration) -> Vec<Ended> {
        if self.jobs.is_empty() {
            return Vec::new();
        }
        let now = Instant::now();
        if now < self.next_poll {
            std::thread::sleep(timeout.min(self.next_poll - now));
        }
        self.tail_progress();
        if Instant::now() < self.next_poll {
            return Vec::new();
        }
        self.next_poll = Instant::now() + self.poll;
        let ended = self.poll();
        self.tail_progress();
        ended
    }

    fn cancel_all(&mut self) {
        let ids: Vec<String> = self.jobs.values().map(|w| w.job_id.clone()).collect();
        if ids.is_empty() {
            return;
        }
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        if let Err(e) = run_tool("scancel", &refs) {
            eprintln!("error: {e}");
        }
        for w in self.jobs.values() {
            let _ = std::fs::remove_file(job_dir(&self.cache, &w.key).join(SUBMITTED_FILE));
        }
        self.jobs.clear();
    }

    fn catches_interrupt(&self) -> bool {
        true
    }

    fn attachable(&self, key: &str) -> bool {
        live_submission(&self.cache, key).is_some()
    }
}

/// One line of `progress.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProgressEvent {
    Start { phase: String, total: u64 },
    Advance { steps: u64 },
    Message { text: String },
    Warn { text: String },
}

impl ProgressEvent {
    fn apply(&self, p: &dyn Progress) {
        match self {
            ProgressEvent::Start { phase, total } => p.start(phase, *total),
            ProgressEvent::Advance { steps } => p.advance(*steps),
            ProgressEvent::Message { text } => p.message(text),
            ProgressEvent::Warn { text } => p.warn(text),
        }
    }
}

/// Progress of a job on a node, appended to `progress.jsonl` for the scheduler to tail.
/// Advances and messages are coalesced to at most one line a second.
pub struct FileProgress {
    file: std::sync::Mutex<(std::fs::File, u64, Option<String>, Instant)>,
}

impl FileProgress {
    pub fn create(path: &Path) -> std::io::Result<FileProgress> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(FileProgress {
            file: std::sync::Mutex::new((file, 0, None, Instant::now())),
        })
    }

    fn write(file: &mut std::fs::File, ev: &ProgressEvent) {
        use std::io::Write;
        if let Ok(mut line) = serde_json::to_string(ev) {
            line.push('\n');
            let _ = file.write_all(line.as_bytes());
        }
    }

    /// Write what is pending (advances, the last message).
    fn flush(state: &mut (std::fs::File, u64, Option<String>, Instant)) {
        let (file, steps, message, last) = state;
        if *steps > 0 {
            Self::write(file, &ProgressEvent::Advance { steps: *steps });
            *steps = 0;
        }
        if let Some(text) = message.take() {
            Self::write(file, &ProgressEvent::Message { text });
        }
        *last = Instant::now();
    }
}

impl Progress for FileProgress {
    fn start(&self, phase: &str, total: u64) {
        let mut s = self.file.lock().unwrap_or_else(|e| e.into_inner());
        Self::flush(&mut s);
        Self::write(
            &mut s.0,
            &ProgressEvent::Start {
                phase: phase.to_string(),
                total,
            },
        );
    }

    fn advance(&self, steps: u64) {
        let mut s = self.file.lock().unwrap_or_else(|e| e.into_inner());
        s.1 += steps;
        if s.3.elapsed() >= Duration::from_secs(1) {
            Self::flush(&mut s);
        }
    }

    fn message(&self, text: &str) {
        let mut s = self.file.lock().unwrap_or_else(|e| e.into_inner());
        s.2 = Some(text.to_string());
        if s.3.elapsed() >= Duration::from_secs(1) {
            Self::flush(&mut s);
        }
    }

    fn warn(&self, text: &str) {
        // At once and in order: a warning is never coalesced away like a status.
        let mut s = self.file.lock().unwrap_or_else(|e| e.into_inner());
        Self::flush(&mut s);
        Self::write(
            &mut s.0,
            &ProgressEvent::Warn {
                text: text.to_string(),
            },
        );
    }
}

impl Drop for FileProgress {
    fn drop(&mut self) {
        let mut s = self.file.lock().unwrap_or_else(|e| e.into_inner());
        Self::flush(&mut s);
    }
}

/// `pipe exec JOB.json`: run one job here (on a node) and leave `result.json` beside it.
pub fn exec_job(job_file: &Path) -> Result<()> {
    let bytes = std::fs::read(job_file).map_err(|e| Error::io("cannot read", job_file, e))?;
    let job: Job = serde_json::from_slice(&bytes)
        .map_err(|e| Error::Usage(format!("{}: not a job: {e}", job_file.display())))?;
    let dir = job_file.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(&job.out_dir)
        .map_err(|e| Error::io("cannot create", &job.out_dir, e))?;
    crate::signals::catch_checkpoint_request();
    let progress_path = dir.join(PROGRESS_FILE);
    let progress = FileProgress::create(&progress_path)
        .map_err(|e| Error::io("cannot write", &progress_path, e))?;
    eprintln!(
        "pipe exec: {} ({}) of pipeline {} into {}",
        job.instance,
        job.kind,
        job.pipeline,
        job.out_dir.display()
    );
    let outcome = job.run(&progress);
    drop(progress);
    let result = JobResult {
        ok: outcome.is_ok(),
        error: outcome.as_ref().err().map(|f| f.to_string()),
    };
    let bytes = serde_json::to_vec_pretty(&result).unwrap_or_default();
    write_atomic(&dir.join(RESULT_FILE), &bytes)?;
    match outcome {
        Ok(()) => Ok(()),
        Err(f) => Err(Error::Usage(format!("{}: {f}", job.instance))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_become_sbatch_flags() {
        let r = Resources {
            cpus: 4,
            gpus: 2,
            mem: Some("16G".into()),
            time: Some("1:00:00".into()),
            partition: Some("gpu".into()),
            account: None,
            constraint: Some("a100".into()),
            extra: vec!["--qos=high".into()],
        };
        assert_eq!(
            sbatch_resource_args(&r),
            [
                "--cpus-per-task=4",
                "--gres=gpu:2",
                "--mem=16G",
                "--time=1:00:00",
                "--partition=gpu",
                "--constraint=a100",
                "--qos=high"
            ]
        );
        assert_eq!(
            sbatch_resource_args(&Resources::default()),
            ["--cpus-per-task=1"]
        );
    }

    #[test]
    fn states_are_parsed_and_classified() {
        assert_eq!(SlurmState::parse("CANCELLED by 0"), SlurmState::Cancelled);
        assert_eq!(SlurmState::parse("CANCELLED+"), SlurmState::Cancelled);
        assert_eq!(SlurmState::parse("NODE_FAIL"), SlurmState::NodeFail);
        assert_eq!(
            SlurmState::parse("SUSPENDED"),
            SlurmState::Other("SUSPENDED".into())
        );
        // Ended and retried: the three endings that are not the job's fault.
        for s in ["TIMEOUT", "PREEMPTED", "NODE_FAIL"] {
            let st = SlurmState::parse(s);
            assert!(st.ended() && st.retryable(), "{s}");
            assert_eq!(st.name(), s);
        }
        // Ended for good.
        for s in [
            "COMPLETED",
            "FAILED",
            "CANCELLED",
            "OUT_OF_MEMORY",
            "BOOT_FAIL",
            "DEADLINE",
        ] {
            let st = SlurmState::parse(s);
            assert!(st.ended() && !st.retryable(), "{s}");
            assert_eq!(st.to_string(), s);
        }
        assert!(SlurmState::Vanished.ended() && !SlurmState::Vanished.retryable());
        // Still Slurm's.
        for s in ["PENDING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED"] {
            assert!(!SlurmState::parse(s).ended(), "{s}");
        }
    }

    #[test]
    fn progress_events_round_trip_through_the_file() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join(PROGRESS_FILE);
        {
            let p = FileProgress::create(&path).unwrap_or_else(|e| panic!("{e}"));
            p.start("train", 10);
            p.advance(3);
            p.message("loss 1.0");
            // Written at once, after what came before it, even within the second.
            p.warn("WARNING: w");
        }
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let events: Vec<ProgressEvent> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        assert_eq!(
            events,
            [
                ProgressEvent::Start {
                    phase: "train".into(),
                    total: 10
                },
                ProgressEvent::Advance { steps: 3 },
                ProgressEvent::Message {
                    text: "loss 1.0".into()
                },
                ProgressEvent::Warn {
                    text: "WARNING: w".into()
                },
            ]
        );
    }
}
