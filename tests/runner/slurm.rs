//! The Slurm executor against a real single-node Slurm (`scripts/slurm-up.sh`, which `.ci/run`
//! calls first). Each test skips, saying why, when no Slurm answers here, unless
//! `PIPE_TEST_SLURM=require` (set by `.ci/run` once the cluster is up) makes that a failure.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use super::{Project, output_text};

/// The one test cluster: tests share it, except those that need it idle (two GPU jobs must find
/// both GPUs and the CPUs free, which the shrunk quickstart's jobs would hold) or that disturb
/// it (a node taken down, a preempting job), which would end every other test's jobs.
static CLUSTER: RwLock<()> = RwLock::new(());

/// The cluster is also shared with the test runs of other checkouts on this machine: the same
/// lock, between processes (`flock` on this file: shared or exclusive).
const CLUSTER_LOCK_FILE: &str = "/tmp/ropelens-slurm-tests.lock";

/// A hold on the test cluster, in this process (`G`, a guard of [`CLUSTER`]) and between
/// processes (the locked file), released when dropped.
struct ClusterGuard<G> {
    _here: G,
    _between: Option<std::fs::File>,
}

/// The lock file, locked shared or exclusive; `None` where it cannot be opened (then only this
/// process's tests are ordered).
fn lock_between_processes(exclusive: bool) -> Option<std::fs::File> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(CLUSTER_LOCK_FILE)
        .ok()?;
    let locked = if exclusive {
        file.lock()
    } else {
        file.lock_shared()
    };
    locked.ok().map(|()| file)
}

fn shared_cluster() -> ClusterGuard<RwLockReadGuard<'static, ()>> {
    ClusterGuard {
        _here: CLUSTER.read().unwrap_or_else(|e| e.into_inner()),
        _between: lock_between_processes(false),
    }
}

fn idle_cluster() -> ClusterGuard<RwLockWriteGuard<'static, ()>> {
    ClusterGuard {
        _here: CLUSTER.write().unwrap_or_else(|e| e.into_inner()),
        _between: lock_between_processes(true),
    }
}

/// Whether a Slurm node with two GPUs is idle or busy here; prints why not.
fn slurm_up(test: &str) -> bool {
    let out = Command::new("sinfo").args(["-h", "-o", "%T %G"]).output();
    let why = match out {
        Err(e) => format!("no `sinfo` ({e})"),
        Ok(o) if !o.status.success() => format!(
            "sinfo failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Ok(o) => {
            let text = String::from_utf8_lossy(&o.stdout).to_string();
            if text.lines().any(|l| l.contains("gpu:2")) {
                return true;
            }
            format!("no node with gres gpu:2 ({})", text.trim())
        }
    };
    assert!(
        std::env::var("PIPE_TEST_SLURM").as_deref() != Ok("require"),
        "{test}: Slurm is required (PIPE_TEST_SLURM=require) but {why}"
    );
    eprintln!("skipping {test}: Slurm is not up ({why}); run scripts/slurm-up.sh");
    false
}

/// A project whose `p.toml` is a pipeline of `stages` named uniquely after `name` (so squeue
/// can be filtered by it), or `None` (the test skips) when Slurm is not up.
fn slurm_project(test: &str, name: &str, stages: &str) -> Option<(Project, String)> {
    if !slurm_up(test) {
        return None;
    }
    let p = Project::new();
    let name = unique(name);
    p.write(
        "p.toml",
        &format!("[pipeline]\nname = \"{name}\"\n{stages}"),
    );
    Some((p, name))
}

/// `pipe` with the Slurm executor, polling fast.
fn slurm_cmd(p: &Project, args: &[&str]) -> Command {
    let mut c = p.command(args);
    c.arg("--executor")
        .arg("slurm")
        .env("PIPE_SLURM_POLL", "0.3")
        .env("PIPE_SLURM_SIGNAL_SECONDS", "20");
    c
}

/// `pipe ARGS` with the Slurm executor (and `env`) to its end: whether it succeeded, and its
/// stdout and stderr together.
fn slurm_run(p: &Project, args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let out = slurm_cmd(p, args)
        .envs(env.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    (out.status.success(), output_text(&out))
}

/// Names of this test's jobs that squeue lists as pending or running.
fn queued(pipeline: &str) -> Vec<String> {
    let out = Command::new("squeue")
        .args(["-h", "-o", "%i %j %T"])
        .output()
        .unwrap_or_else(|e| panic!("squeue: {e}"));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&format!("pipe-{pipeline}-")))
        .map(str::to_string)
        .collect()
}

/// A pipeline name no other test (or earlier run) uses, so squeue can be filtered by it.
fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{name}{}x{nanos}", std::process::id())
}

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !done() {
        assert!(t0.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn slurm_failure_names_the_job_its_exit_code_and_log() {
    let _cluster = shared_cluster();
    let Some((p, _)) = slurm_project(
        "slurm_failure_names_the_job_its_exit_code_and_log",
        "fail",
        "[stages.bad]\nkind = \"command\"\nargs = [\"sh\", \"-c\", \"echo broken input >&2; exit 3\"]\n[stages.good]\nkind = \"command\"\nargs = [\"sh\", \"-c\", \"echo ok > out.txt\"]\n",
    ) else {
        return;
    };
    let (ok, text) = slurm_run(&p, &["run", "p.toml", "--keep-going"], &[]);
    assert!(!ok, "{text}");
    assert!(text.contains("1 of 2 instance(s) failed"), "{text}");
    let line = text
        .lines()
        .find(|l| l.contains("bad: job ") && l.contains(" ended "))
        .unwrap_or_else(|| panic!("no failure line:\n{text}"));
    assert!(line.contains("ended FAILED (exit code 1:0)"), "{line}");
    let log = line
        .split("; log ")
        .nth(1)
        .unwrap_or_else(|| panic!("no log in {line}"));
    let log_text = std::fs::read_to_string(log).unwrap_or_else(|e| panic!("{log}: {e}"));
    assert!(log_text.contains("broken input"), "{log_text}");
    // The stage's own error reaches the summary, not only the job's.
    assert!(text.contains("exited with status 3"), "{text}");
    assert_eq!(super::built(&text), ["good"], "{text}");
    assert_eq!(p.entries().len(), 1);
}

#[test]
fn slurm_interrupted_run_cancels_every_job() {
    let _cluster = shared_cluster();
    // Different commands: identical ones would share one key and build once.
    let sleeper = |s: &str| {
        format!("[stages.{s}]\nkind = \"command\"\nargs = [\"sh\", \"-c\", \"sleep 120 # {s}\"]\n")
    };
    let Some((p, name)) = slurm_project(
        "slurm_interrupted_run_cancels_every_job",
        "cancel",
        &format!("{}{}", sleeper("a"), sleeper("b")),
    ) else {
        return;
    };
    let child = slurm_cmd(&p, &["run", "p.toml"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    wait_for("two jobs in squeue", Duration::from_secs(30), || {
        queued(&name).len() == 2
    });
    // SAFETY: kill(2) on the child we spawned.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let out = child.wait_with_output().unwrap_or_else(|e| panic!("{e}"));
    let text = output_text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("interrupted"), "{text}");
    // scancel is asynchronous: the jobs leave the queue within moments.
    wait_for("the queue to empty", Duration::from_secs(15), || {
        queued(&name).is_empty()
    });
    assert!(p.entries().is_empty());
}

#[test]
fn slurm_gpu_stages_share_the_two_gpus() {
    let _cluster = idle_cluster();
    let stage = |s: &str| {
        format!(
            "[stages.{s}]\nkind = \"command\"\nresources = {{ gpus = 1 }}\nargs = [\"sh\", \"-c\", \"echo start {s} $(date +%s%N) $CUDA_VISIBLE_DEVICES >> $PIPE_PIPELINE_DIR/log; sleep 2; echo end {s} $(date +%s%N) >> $PIPE_PIPELINE_DIR/log\"]\n"
        )
    };
    let Some((p, _)) = slurm_project(
        "slurm_gpu_stages_share_the_two_gpus",
        "gpus",
        &format!("{}{}", stage("a"), stage("b")),
    ) else {
        return;
    };
    let (ok, text) = slurm_run(&p, &["run", "p.toml"], &[]);
    assert!(ok, "{text}");
    let log = std::fs::read_to_string(p.path().join("log")).unwrap_or_default();
    let at = |ev: &str, who: &str| -> (u128, String) {
        log.lines()
            .find_map(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                (w.first() == Some(&ev) && w.get(1) == Some(&who)).then(|| {
                    (
                        w.get(2).and_then(|t| t.parse().ok()).unwrap_or(0),
                        w.get(3).map_or(String::new(), |s| s.to_string()),
                    )
                })
            })
            .unwrap_or_else(|| panic!("no `{ev} {who}` in {log}"))
    };
    let (sa, gpu_a) = at("start", "a");
    let (sb, gpu_b) = at("start", "b");
    let (ea, _) = at("end", "a");
    let (eb, _) = at("end", "b");
    assert!(
        sa < eb && sb < ea,
        "the two gpus = 1 jobs did not overlap:\n{log}"
    );
    let gpus: BTreeSet<String> = [gpu_a, gpu_b].into();
    assert_eq!(gpus, ["0".to_string(), "1".to_string()].into(), "{log}");
}

#[test]
fn slurm_rerun_reattaches_to_a_job_whose_submitter_died() {
    let _cluster = shared_cluster();
    let Some((p, name)) = slurm_project(
        "slurm_rerun_reattaches_to_a_job_whose_submitter_died",
        "attach",
        "[stages.slow]\nkind = \"command\"\nargs = [\"sh\", \"-c\", \"echo run >> $PIPE_PIPELINE_DIR/count; sleep 6; echo ok > out.txt\"]\n",
    ) else {
        return;
    };
    let mut child = slurm_cmd(&p, &["run", "p.toml"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    wait_for("the job to start", Duration::from_secs(30), || {
        p.path().join("count").is_file()
    });
    // The submitter dies without a chance to cancel anything.
    // SAFETY: kill(2) on the child we spawned.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGKILL) }, 0);
    let _ = child.wait();
    assert_eq!(
        queued(&name).len(),
        1,
        "the job should outlive its submitter"
    );
    let status = p.ok(&["status", "p.toml"]);
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("slurm job ") && l.contains("RUNNING") && l.ends_with(" slow")),
        "{status}"
    );
    let (ok, text) = slurm_run(&p, &["run", "p.toml"], &[]);
    assert!(ok, "{text}");
    assert!(text.contains("re-attached to job"), "{text}");
    assert_eq!(super::built(&text), ["slow"], "{text}");
    // Built once, by the first job.
    let count = std::fs::read_to_string(p.path().join("count")).unwrap_or_default();
    assert_eq!(count, "run\n");
    let entries = p.entries();
    assert_eq!(entries.len(), 1);
    let ok = std::fs::read_to_string(p.cache().join(&entries[0]).join("out.txt"));
    assert_eq!(ok.ok().as_deref(), Some("ok\n"));
}

/// A Slurm job id, cancelled when dropped (also when the test fails first).
struct Cancelled(String);

impl Drop for Cancelled {
    fn drop(&mut self) {
        let _ = Command::new("scancel").arg(&self.0).output();
    }
}

#[test]
fn slurm_gc_keeps_the_build_of_a_live_job_whose_submitter_died() {
    let _cluster = shared_cluster();
    // A job held pending (`--begin`), whose submitter dies: nothing on this machine holds a
    // lock for its build directory, only `jobs/<key>/submitted.json` says a job will write
    // it. `cache gc` for another pipeline must keep it (before, it removed it).
    let Some((p, name)) = slurm_project(
        "slurm_gc_keeps_the_build_of_a_live_job_whose_submitter_died",
        "gclive",
        "[stages.later]\nkind = \"command\"\nresources = { extra = [\"--begin=now+300\"] }\nargs = [\"sh\", \"-c\", \"echo ok > out.txt\"]\n",
    ) else {
        return;
    };
    p.write(
        "other.toml",
        "[pipeline]\nname = \"other\"\n[stages.c]\nkind = \"command\"\nargs = [\"true\"]\n",
    );
    let mut child = slurm_cmd(&p, &["run", "p.toml"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let submitted = || {
        std::fs::read_dir(p.cache().join("jobs"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path().join("submitted.json"))
            .find(|f| f.is_file())
    };
    wait_for("the job's submission", Duration::from_secs(30), || {
        submitted().is_some()
    });
    // SAFETY: kill(2) on the child we spawned.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGKILL) }, 0);
    let _ = child.wait();
    let record = submitted().unwrap_or_else(|| panic!("no submitted.json"));
    let key = record
        .parent()
        .and_then(Path::file_name)
        .map(|k| k.to_string_lossy().to_string())
        .unwrap_or_default();
    let job: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&record).unwrap_or_default())
            .unwrap_or_else(|e| panic!("{e}"));
    let job = Cancelled(job["job_id"].as_str().unwrap_or_default().to_string());
    let partial = p.cache().join(format!("{key}.partial"));
    assert!(partial.is_dir());
    assert_eq!(queued(&name).len(), 1, "the job should be pending");
    let gc = p.ok(&["cache", "gc", "other.toml"]);
    assert!(partial.is_dir(), "the live job's build was removed:\n{gc}");
    // Once the job has ended, its build directory is garbage like any other.
    drop(job);
    wait_for("the job to be cancelled", Duration::from_secs(30), || {
        queued(&name).is_empty()
    });
    let gc = p.ok(&["cache", "gc", "other.toml"]);
    assert!(!partial.exists(), "{gc}");
}

#[test]
fn slurm_time_limit_resubmits_and_resumes() {
    let _cluster = shared_cluster();
    // The first attempt writes a checkpoint when warned (SIGUSR1, which `--signal` sends to
    // `pipe exec` and the command stage passes on) and is then killed at its one-minute limit;
    // the resubmitted attempt finds the checkpoint in the kept build directory and finishes.
    let script = "n=$(cat attempts 2>/dev/null || echo 0); echo $((n+1)) > attempts; \
                  if [ -f checkpoint ]; then echo resumed > out.txt; exit 0; fi; \
                  trap 'echo warned > checkpoint' USR1; \
                  sleep 300 & wait; sleep 300 & wait";
    let Some((p, _)) = slurm_project(
        "slurm_time_limit_resubmits_and_resumes",
        "timeout",
        &format!(
            "[stages.long]\nkind = \"command\"\nresumable = true\nresources = {{ time = \"1\" }}\nargs = [\"sh\", \"-c\", \"{script}\"]\n"
        ),
    ) else {
        return;
    };
    let (ok, text) = slurm_run(&p, &["run", "p.toml"], &[]);
    assert!(ok, "{text}");
    assert!(text.contains("ended TIMEOUT; resubmitted as job"), "{text}");
    let entries = p.entries();
    assert_eq!(entries.len(), 1, "{text}");
    let entry = p.cache().join(&entries[0]);
    let read = |f: &str| std::fs::read_to_string(entry.join(f)).unwrap_or_default();
    assert_eq!(read("attempts"), "2\n");
    assert_eq!(read("out.txt"), "resumed\n");
}

/// The shrunk quickstart (tests/stages/quickstart.rs) through Slurm and locally: the same
/// tables, value for value, apart from wall-clock columns.
#[test]
fn slurm_quickstart_matches_the_local_run() {
    let _cluster = shared_cluster();
    if !slurm_up("slurm_quickstart_matches_the_local_run") {
        return;
    }
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/quickstart.toml");
    let file = file.to_string_lossy().to_string();
    let mut args = vec!["run", file.as_str()];
    for s in crate::stages::quickstart::SHRINK {
        args.extend(["--set", s]);
    }
    let local = Project::new();
    local.ok(&args);
    let remote = Project::new();
    let (ok, text) = slurm_run(&remote, &args, &[]);
    assert!(ok, "{text}");
    assert!(text.contains("submitted as job"), "{text}");
    let dir = |p: &Project| p.path().join("results/quickstart");
    let mut tables = 0;
    for entry in std::fs::read_dir(dir(&local))
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().to_string();
        if !name.ends_with(".parquet") || name == "runs.parquet" {
            continue;
        }
        let a = super::comparable(&entry.path());
        let b = super::comparable(&dir(&remote).join(&name));
        assert_eq!(a, b, "{name} differs between the local and the Slurm run");
        tables += 1;
    }
    assert!(tables >= 10, "only {tables} tables");
    // The same keys: the executor is not part of any key.
    assert_eq!(local.entries(), remote.entries());
}

/// A train stage that trains for about 100 s (4 ms of compute and, through a failpoint, 250 ms
/// of sleep per step) under a one-minute time limit, checkpointing only when warned.
const SLOW_TRAIN: &str = "[stages.data]\nkind = \"data_prep\"\nsource = { synthetic = { documents = 60, max_tokens = 256 } }\nsplit = { valid_documents = 6 }\n\n[stages.base]\nkind = \"train\"\nneeds = { data = \"data\" }\nresources = { time = \"1\" }\nmodel = { hidden_size = 32, num_hidden_layers = 2, num_attention_heads = 2 }\ntrain = { seq_len = 32, batch_size = 4, steps = 400, lr = 3e-3, val_every = 100, checkpoint_every = 0, log_every = 10, val_batches = 2 }\n";

#[test]
fn slurm_time_limit_kills_a_train_instance_that_resumes_with_identical_weights_and_logs() {
    let _cluster = shared_cluster();
    // Slurm warns the job 40 s before its limit (SIGUSR1 through `--signal`); the training loop
    // writes a checkpoint at its next step (its only mid-run checkpoint: `checkpoint_every = 0`)
    // and goes on until the limit kills it. The resubmitted job resumes from that checkpoint
    // (each attempt gets the same warning; a slow machine may take several) and must end with
    // the weights and logs of an uninterrupted run.
    let Some((p, name)) = slurm_project(
        "slurm_time_limit_kills_a_train_instance_that_resumes_with_identical_weights_and_logs",
        "trainlimit",
        SLOW_TRAIN,
    ) else {
        return;
    };
    let local = Project::new();
    local.write(
        "p.toml",
        &format!("[pipeline]\nname = \"{name}\"\n{SLOW_TRAIN}"),
    );
    local.ok(&["run", "p.toml"]);
    let env = [
        ("PIPE_FAILPOINT", "train-step:sleep=250"),
        ("PIPE_SLURM_SIGNAL_SECONDS", "40"),
        ("PIPE_SLURM_RETRIES", "8"),
    ];
    let (ok, text) = slurm_run(&p, &["run", "p.toml"], &env);
    assert!(ok, "{text}");
    assert!(text.contains("ended TIMEOUT; resubmitted as job"), "{text}");
    assert_eq!(local.entries(), p.entries(), "{text}");
    // The jobs' progress reached this terminal (tailed from progress.jsonl on the shared
    // filesystem): the loop's own step messages, from the first attempt and from the resumed
    // one, which starts its progress file afresh.
    let lines: Vec<&str> = text.lines().collect();
    let resubmitted = lines
        .iter()
        .position(|l| l.contains("resubmitted as job"))
        .unwrap_or(0);
    let step_line = |l: &&str| l.contains("base: train ") && l.contains("/400 · loss ");
    assert!(lines[..resubmitted].iter().any(step_line), "{text}");
    assert!(
        lines[resubmitted..]
            .iter()
            .any(|l| l.contains("base: train (0/400)")),
        "no progress from the resubmitted job:\n{text}"
    );
    let (from, summary) = assert_same_training(&local, &p, &name);
    // Resumed, not restarted. Usually from the warned checkpoint mid-run; but slurmctld checks
    // time limits only every 30 s, so a job may outlive its minute by that much, finish its
    // 400 steps and be killed while writing its outputs: then the kept final checkpoint (step
    // 400) is the one resumed from, which is also right.
    assert!(from.is_some_and(|s| s > 0 && s <= 400), "{summary}\n{text}");
}

/// Checks that the `base` train instance of pipeline `name` in `remote` (a run that was
/// interrupted and resumed) ended with the weights and logs of the one in `local` (a run left
/// alone); returns the step it resumed from (`resumed_from`) and its `train.json`.
fn assert_same_training(
    local: &Project,
    remote: &Project,
    name: &str,
) -> (Option<u64>, serde_json::Value) {
    let base = std::fs::read_to_string(
        remote
            .cache()
            .join("instances")
            .join(name)
            .join("base.json"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let key: serde_json::Value = serde_json::from_str(&base).unwrap_or_else(|e| panic!("{e}"));
    let key = key["key"].as_str().unwrap_or_default().to_string();
    let read = |p: &Project, f: &str| {
        std::fs::read(p.cache().join(&key).join(f)).unwrap_or_else(|e| panic!("{f}: {e}"))
    };
    let summary: serde_json::Value =
        serde_json::from_slice(&read(remote, "train.json")).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        read(remote, "model.safetensors") == read(local, "model.safetensors"),
        "the resumed weights differ from the uninterrupted run's"
    );
    for table in ["train_log.parquet", "val_log.parquet"] {
        let at = |p: &Project| p.path().join("results").join(name).join(table);
        assert_eq!(
            super::comparable(&at(local)),
            super::comparable(&at(remote)),
            "{table}"
        );
    }
    (summary["resumed_from"].as_u64(), summary)
}

/// SLOW_TRAIN without its time limit and with a checkpoint every 20 of 120 steps: a train job
/// that a test disturbs once it has checkpointed (slowed by the `train-step` failpoint to about
/// 100 ms a step, so that it is still training then).
fn checkpointed_train() -> String {
    let text = SLOW_TRAIN
        .replace("resources = { time = \"1\" }\n", "")
        .replace("steps = 400,", "steps = 120,")
        .replace("checkpoint_every = 0,", "checkpoint_every = 20,");
    for (gone, there) in [
        ("time = ", "steps = 120,"),
        ("time = ", "checkpoint_every = 20,"),
    ] {
        assert!(!text.contains(gone) && text.contains(there), "{text}");
    }
    text
}

/// The latest checkpoint step in any build directory of `p`'s cache.
fn latest_checkpoint(p: &Project) -> Option<u64> {
    p.partials()
        .iter()
        .flat_map(|d| {
            std::fs::read_dir(d.join("checkpoints"))
                .into_iter()
                .flatten()
        })
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            name.strip_prefix("step-")?.parse().ok()
        })
        .max()
}

/// The one node of the test cluster.
fn the_node() -> String {
    let out = Command::new("sinfo")
        .args(["-h", "-N", "-o", "%N"])
        .output()
        .unwrap_or_else(|e| panic!("sinfo: {e}"));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.split_whitespace()
        .next()
        .unwrap_or_else(|| panic!("sinfo lists no node"))
        .to_string()
}

/// `scontrol ARGS`; its output, and whether it succeeded.
fn scontrol(args: &[&str]) -> (bool, String) {
    let out = Command::new("scontrol")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("scontrol: {e}"));
    (out.status.success(), output_text(&out))
}

/// A node taken down by a test, brought back when dropped (also when the test fails first).
/// The test cluster's `ReturnToService=2` may already have returned it when its slurmd
/// re-registered; then `state=resume` is refused, which is fine.
struct NodeDown(String);

impl NodeDown {
    fn take(node: &str) -> NodeDown {
        let (ok, text) = scontrol(&[
            "update",
            &format!("nodename={node}"),
            "state=down",
            "reason=ropelens test",
        ]);
        assert!(ok, "scontrol update state=down: {text}");
        NodeDown(node.to_string())
    }
}

impl Drop for NodeDown {
    fn drop(&mut self) {
        let down = || {
            Command::new("sinfo")
                .args(["-h", "-n", &self.0, "-o", "%T"])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("down"))
        };
        if down() {
            let _ = scontrol(&["update", &format!("nodename={}", self.0), "state=resume"]);
        }
    }
}

/// The id of the job the scheduler last submitted for the instance being built in `p`.
fn submitted_job(p: &Project) -> Option<String> {
    std::fs::read_dir(p.cache().join("jobs"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("submitted.json")).ok())
        .filter_map(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .find_map(|v| v["job_id"].as_str().map(str::to_string))
}

/// Runs the checkpointed train through Slurm and, once its job has written a checkpoint,
/// `disturb`s the cluster, which must end that job with Slurm state `state` (as squeue, scontrol
/// or sacct report it); what `disturb` returns is dropped then (to undo the disturbance). The
/// run must submit the instance again and end with the weights and logs of an uninterrupted
/// local run, the new job resuming from a checkpoint at least as late as the one seen before the
/// disturbance.
fn disturbed_train_resumes<T>(test: &str, name: &str, state: &str, disturb: impl FnOnce() -> T) {
    let Some((p, name)) = slurm_project(test, name, &checkpointed_train()) else {
        return;
    };
    let local = Project::new();
    local.write(
        "p.toml",
        &format!("[pipeline]\nname = \"{name}\"\n{}", checkpointed_train()),
    );
    local.ok(&["run", "p.toml"]);
    let child = slurm_cmd(&p, &["run", "p.toml"])
        .env("PIPE_FAILPOINT", "train-step:sleep=100")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    // Only the train instance checkpoints; the data job has ended by then.
    wait_for(
        "the train job's first checkpoint",
        Duration::from_secs(120),
        || latest_checkpoint(&p).is_some(),
    );
    let seen = latest_checkpoint(&p).unwrap_or_default();
    let job = submitted_job(&p).unwrap_or_else(|| panic!("no submitted.json"));
    let undo = disturb();
    let slurm_state = || {
        ropelens::pipeline::executor::slurm::job_states(std::slice::from_ref(&job))
            .get(&job)
            .map(|s| s.state.clone())
    };
    wait_for(
        &format!("job {job} to end"),
        Duration::from_secs(30),
        || slurm_state().is_some_and(|s| s.ended()),
    );
    let ended = slurm_state().map(|s| s.name().to_string());
    assert_eq!(ended.as_deref(), Some(state), "how Slurm ended job {job}");
    drop(undo);
    let out = child.wait_with_output().unwrap_or_else(|e| panic!("{e}"));
    let text = output_text(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&format!("job {job} ended {state}; resubmitted as job")),
        "{text}"
    );
    assert_eq!(local.entries(), p.entries(), "{text}");
    let (from, summary) = assert_same_training(&local, &p, &name);
    // Resumed from the checkpoint seen (or a later one written before the job was ended), not
    // restarted and not from the final one: the disturbance came with about 100 steps to go.
    assert!(
        from.is_some_and(|s| s >= seen && s < 120 && s % 20 == 0),
        "resumed_from {from:?}, checkpoint step {seen} seen before the disturbance\n{summary}\n{text}"
    );
}

#[test]
fn slurm_node_failure_resubmits_a_train_instance_that_resumes() {
    // Taking the node down ends every job on it: no other test may have one there.
    let _cluster = idle_cluster();
    disturbed_train_resumes(
        "slurm_node_failure_resubmits_a_train_instance_that_resumes",
        "nodefail",
        "NODE_FAIL",
        // Brought back once the job is seen ended, so that the resubmitted job finds a node.
        || NodeDown::take(&the_node()),
    );
}

#[test]
fn slurm_preemption_resubmits_a_train_instance_that_resumes() {
    // The blocker takes the whole node: no other test may have a job there.
    let _cluster = idle_cluster();
    let logs = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    disturbed_train_resumes(
        "slurm_preemption_resubmits_a_train_instance_that_resumes",
        "preempt",
        "PREEMPTED",
        || {
            // A job of the partition with the higher priority tier (scripts/slurm-up.sh) that
            // asks for the whole node preempts (cancels) the train job. It is cancelled once
            // the train job is seen ended, so that the resubmitted one finds the node free.
            let out = Command::new("sbatch")
                .args([
                    "--parsable",
                    "--partition=urgent",
                    "--exclusive",
                    "--job-name=pipe-preempt-blocker",
                ])
                .arg(format!("--output={}/slurm-%j.out", logs.path().display()))
                .arg("--wrap=sleep 300")
                .output()
                .unwrap_or_else(|e| panic!("sbatch: {e}"));
            assert!(out.status.success(), "{}", output_text(&out));
            Cancelled(String::from_utf8_lossy(&out.stdout).trim().to_string())
        },
    );
}

/// `sbatch --parsable` of a one-line script; the job's id.
fn sbatch_wrap(dir: &Path, script: &str) -> String {
    let out = Command::new("sbatch")
        .args(["--parsable", "--job-name=pipe-sacct-test"])
        .arg(format!("--output={}/slurm-%j.out", dir.display()))
        .arg(format!("--wrap={script}"))
        .output()
        .unwrap_or_else(|e| panic!("sbatch: {e}"));
    assert!(out.status.success(), "{}", output_text(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn slurm_job_states_come_from_sacct_once_the_controller_forgot_the_job() {
    let _cluster = shared_cluster();
    // A job that ended before the scheduler's next poll and left squeue and scontrol meanwhile
    // (after MinJobAge, 10 s on the test cluster, and the next purge, at most 60 s later) is
    // found in the jobcomp file through `sacct -c` (there is no accounting database here).
    let test = "slurm_job_states_come_from_sacct_once_the_controller_forgot_the_job";
    if !slurm_up(test) {
        return;
    }
    let config = Command::new("scontrol")
        .args(["show", "config"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default();
    let age: u64 = config
        .lines()
        .find(|l| l.starts_with("MinJobAge"))
        .and_then(|l| l.split('=').nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(u64::MAX);
    assert!(
        age <= 30,
        "{test}: MinJobAge is {age} s; scripts/slurm-up.sh sets 10 s (run it again)"
    );
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let ok = sbatch_wrap(dir.path(), "true");
    let bad = sbatch_wrap(dir.path(), "exit 3");
    let known = |id: &str| {
        Command::new("scontrol")
            .args(["show", "job", id])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    wait_for(
        "scontrol to forget both jobs",
        Duration::from_secs(150),
        || !known(&ok) && !known(&bad),
    );
    let states = ropelens::pipeline::executor::slurm::job_states(&[ok.clone(), bad.clone()]);
    let got = |id: &str| {
        states
            .get(id)
            .map(|s| (s.state.name(), s.exit_code.as_str()))
    };
    assert_eq!(got(&ok), Some(("COMPLETED", "0:0")), "{states:?}");
    assert_eq!(got(&bad), Some(("FAILED", "3:0")), "{states:?}");
}
