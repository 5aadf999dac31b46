//! Execution: parallelism, failures, kill safety and concurrent runs on one cache.

use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

use super::{HEAD, Project};

fn log_lines(p: &Project) -> Vec<(String, String, u128)> {
    let text = std::fs::read_to_string(p.path().join("log")).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some((
                w.next()?.to_string(),
                w.next()?.to_string(),
                w.next()?.parse().ok()?,
            ))
        })
        .collect()
}

fn sleeper(name: &str) -> String {
    format!(
        "[stages.{name}]\nkind = \"command\"\nargs = [\"sh\", \"-c\", \"echo start {name} $(date +%s%N) >> $PIPE_PIPELINE_DIR/log; sleep 0.4; echo end {name} $(date +%s%N) >> $PIPE_PIPELINE_DIR/log\"]\n"
    )
}

#[test]
fn independent_stages_overlap_with_two_jobs() {
    let p = Project::new();
    p.write("p.toml", &format!("{HEAD}{}{}", sleeper("a"), sleeper("b")));
    p.run("p.toml", &["-j", "2"]);
    let log = log_lines(&p);
    let t = |ev: &str, who: &str| {
        log.iter()
            .find(|(e, w, _)| e == ev && w == who)
            .map(|x| x.2)
            .unwrap_or(0)
    };
    // Both started before either finished.
    assert!(
        t("start", "a") < t("end", "b") && t("start", "b") < t("end", "a"),
        "{log:?}"
    );
}

#[test]
fn one_job_runs_them_one_after_the_other() {
    let p = Project::new();
    p.write("p.toml", &format!("{HEAD}{}{}", sleeper("a"), sleeper("b")));
    p.run("p.toml", &["-j", "1"]);
    let log = log_lines(&p);
    let order: Vec<&str> = log.iter().map(|(e, _, _)| e.as_str()).collect();
    assert_eq!(order, ["start", "end", "start", "end"], "{log:?}");
}

#[test]
fn gpu_stages_never_overlap() {
    let p = Project::new();
    let text = format!("{HEAD}{}gpu = 1\n{}gpu = 1\n", sleeper("a"), sleeper("b"));
    p.write("p.toml", &text);
    p.run("p.toml", &["-j", "2"]);
    let order: Vec<String> = log_lines(&p).into_iter().map(|(e, _, _)| e).collect();
    assert_eq!(order, ["start", "end", "start", "end"]);
}

const FAILING: &str = r#"
[stages.bad]
kind = "command"
args = ["sh", "-c", "echo broken input >&2; exit 3"]

[stages.after_bad]
kind = "command"
needs = { x = "bad" }
args = ["true"]

[stages.good]
kind = "command"
args = ["sh", "-c", "sleep 0.2"]
"#;

#[test]
fn failure_is_summarised_and_keep_going_runs_independent_branches() {
    let p = Project::new();
    p.write("p.toml", &format!("{HEAD}{FAILING}"));
    let err = p.fail(&["run", "p.toml", "--keep-going", "-j", "1"]);
    assert!(err.contains("1 of 3 instance(s) failed"), "{err}");
    assert!(
        err.contains("bad: `sh -c echo broken input >&2; exit 3` exited with status 3"),
        "{err}"
    );
    assert!(err.contains("broken input"), "{err}");
    assert!(
        err.contains("after_bad: skipped, upstream `bad` did not build"),
        "{err}"
    );
    assert_eq!(super::built(&err), ["good"]);
    // The failed build is kept for inspection, never as an entry.
    assert_eq!(p.entries().len(), 1);
    assert!(!p.partials().is_empty());
}

#[test]
fn without_keep_going_nothing_new_starts_after_a_failure() {
    let p = Project::new();
    p.write("p.toml", &format!("{HEAD}{FAILING}"));
    let err = p.fail(&["run", "p.toml", "-j", "1"]);
    assert!(err.contains("not started after the failure"), "{err}");
    assert!(super::built(&err).is_empty(), "{err}");
}

#[test]
fn killed_run_leaves_no_entry_and_a_rerun_completes() {
    let p = Project::new();
    p.write(
        "p.toml",
        &format!(
            "{HEAD}[stages.slow]\nkind = \"command\"\nargs = [\"sh\", \"-c\", \"touch started; if [ -f $PIPE_PIPELINE_DIR/slow ]; then sleep 30; fi; echo ok > out.txt\"]\n"
        ),
    );
    p.write("slow", "");
    let mut child = p
        .command(&["run", "p.toml"])
        .process_group(0)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let t0 = Instant::now();
    let started = || {
        std::fs::read_dir(p.cache())
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| e.path().join("started").is_file())
    };
    while !started() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the stage never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // SIGKILL the runner and its stage mid-stage.
    // SAFETY: kill(2) on the process group we created; no memory is involved.
    let rc = unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
    assert_eq!(rc, 0);
    let _ = child.wait();
    assert!(
        p.entries().is_empty(),
        "a killed build must not leave an entry"
    );
    std::fs::remove_file(p.path().join("slow")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(p.run("p.toml", &[]), ["slow"]);
    let entries = p.entries();
    assert_eq!(entries.len(), 1);
    let out =
        std::fs::read_to_string(p.cache().join(&entries[0]).join("out.txt")).unwrap_or_default();
    assert_eq!(out, "ok\n");
}

#[test]
fn two_concurrent_runs_build_a_shared_instance_once() {
    let p = Project::new();
    let shared = "[stages.shared]\nkind = \"command\"\nargs = [\"sh\", \"-c\", \"echo built >> $PIPE_PIPELINE_DIR/count; sleep 0.5\"]\n";
    p.write("one.toml", &format!("[pipeline]\nname = \"one\"\n{shared}[stages.x]\nkind = \"command\"\nneeds = {{ s = \"shared\" }}\nargs = [\"true\"]\n"));
    p.write("two.toml", &format!("[pipeline]\nname = \"two\"\n{shared}[stages.y]\nkind = \"command\"\nneeds = {{ s = \"shared\" }}\nargs = [\"sh\", \"-c\", \"echo y\"]\n"));
    let spawn = |f: &str| {
        p.command(&["run", f])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let (a, b) = (spawn("one.toml"), spawn("two.toml"));
    let (a, b) = (a.wait_with_output(), b.wait_with_output());
    for out in [a, b] {
        let out = out.unwrap_or_else(|e| panic!("{e}"));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let count = std::fs::read_to_string(p.path().join("count")).unwrap_or_default();
    assert_eq!(count, "built\n");
    assert_eq!(p.entries().len(), 3);
}

#[test]
fn gpu_stages_overlap_when_the_machine_has_two_gpus() {
    let p = Project::new();
    let text = format!(
        "{HEAD}{}gpu = 1\n{}resources = {{ gpus = 1 }}\n",
        sleeper("a"),
        sleeper("b")
    );
    p.write("p.toml", &text);
    let out = p
        .command(&["run", "p.toml", "-j", "2"])
        .env("PIPE_GPUS", "2")
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let order: Vec<String> = log_lines(&p).into_iter().map(|(e, _, _)| e).collect();
    assert_eq!(order, ["start", "start", "end", "end"]);
}

#[test]
fn a_stage_asking_for_every_cpu_runs_alone() {
    let p = Project::new();
    let text = format!(
        "{HEAD}{}resources = {{ cpus = 2 }}\n{}",
        sleeper("a"),
        sleeper("b")
    );
    p.write("p.toml", &text);
    p.run("p.toml", &["-j", "2"]);
    let order: Vec<String> = log_lines(&p).into_iter().map(|(e, _, _)| e).collect();
    assert_eq!(order, ["start", "end", "start", "end"]);
}

#[test]
fn killing_pipe_ends_its_command_stage() {
    let p = Project::new();
    p.write(
        "p.toml",
        &format!(
            "{HEAD}[stages.slow]\nkind = \"command\"\nargs = [\"sh\", \"-c\", \"echo $$ > $PIPE_PIPELINE_DIR/pid; exec sleep 60\"]\n"
        ),
    );
    // Not in a process group of its own: only `pipe` itself is killed.
    let mut child = p
        .command(&["run", "p.toml"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let pid_file = p.path().join("pid");
    let t0 = Instant::now();
    let pid: i32 = loop {
        if let Some(pid) = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|t| t.trim().parse().ok())
        {
            break pid;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the stage never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    // SAFETY: kill(2) on the child we spawned.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGKILL) }, 0);
    let _ = child.wait();
    // The stage's `sleep` dies with it (a zombie until its new parent reaps it counts as dead).
    let alive = || {
        std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| {
            !s.lines()
                .any(|l| l.starts_with("State:") && l.contains('Z'))
        })
    };
    let t1 = Instant::now();
    while alive() {
        assert!(
            t1.elapsed() < Duration::from_secs(5),
            "the command stage (pid {pid}) outlived pipe"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits (at most 20 s) until `path` holds a line starting with `word`.
fn wait_for_line(path: &std::path::Path, word: &str) {
    let t0 = Instant::now();
    while !std::fs::read_to_string(path).is_ok_and(|t| t.lines().any(|l| l.starts_with(word))) {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "no `{word}` line in {}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_rerun_waits_for_an_orphan_still_writing_the_build_directory() {
    // The script's background job outlives a kill -9 of `pipe` (the parent-death signal reaches
    // only the script itself): it keeps the build directory's work lock, and the re-run must
    // not start a second copy beside it.
    let p = Project::new();
    p.write(
        "p.toml",
        &format!(
            "{HEAD}[stages.slow]\nkind = \"command\"\nargs = [\"sh\", \"-c\", \"echo start $(date +%s%N) >> $PIPE_PIPELINE_DIR/log; (sleep 3; echo end $(date +%s%N) >> $PIPE_PIPELINE_DIR/log) & wait; echo ok > out.txt\"]\n"
        ),
    );
    let log = p.path().join("log");
    let mut child = p
        .command(&["run", "p.toml"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    wait_for_line(&log, "start");
    // SAFETY: kill(2) on the child we spawned.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGKILL) }, 0);
    let _ = child.wait();
    let text = p.ok(&["run", "p.toml"]);
    assert!(
        text.contains("waiting for a process of an earlier, killed run"),
        "{text}"
    );
    // The message names the build directory and the lock file the orphan holds.
    let partial = std::fs::read_dir(p.cache())
        .into_iter()
        .flatten()
        .flatten()
        .find_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            (name.len() == 32 && name.chars().all(|c| c.is_ascii_hexdigit()))
                .then(|| p.cache().join(format!("{name}.partial")))
        })
        .unwrap_or_else(|| panic!("no entry"));
    let lock = partial.join(".pipe-work.lock");
    assert!(
        text.contains(&format!("build directory {}", partial.display()))
            && text.contains(&format!("it holds {}", lock.display())),
        "{text}"
    );
    let times = |word: &str| -> Vec<u128> {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.strip_prefix(word)?.trim().parse().ok())
            .collect()
    };
    let (starts, ends) = (times("start"), times("end"));
    assert_eq!(starts.len(), 2, "{starts:?}");
    assert!(
        ends.first().is_some_and(|&end| starts[1] >= end),
        "the re-run started (at {}) while the orphan still ran (it ended at {ends:?})",
        starts[1]
    );
    assert_eq!(p.entries().len(), 1);
}

#[test]
fn a_build_is_not_committed_while_a_process_it_started_holds_its_work_lock() {
    // The first time, the script leaves a process in a session of its own (out of reach of the
    // group kill when the script ends) that inherits the work lock and may still write the
    // directory: the build is refused, not committed beside it (before, the commit removed
    // the lock file and committed). The next run waits for that process, then builds. The
    // script waits until the process is in its own session: before that, the group kill at
    // the script's end would take it too (a race that a loaded machine lost).
    let p = Project::new();
    p.write(
        "p.toml",
        &format!(
            "{HEAD}[stages.a]\nkind = \"command\"\nargs = [\"sh\", \"-c\", \"if [ ! -f $PIPE_PIPELINE_DIR/once ]; then touch $PIPE_PIPELINE_DIR/once; setsid sh -c 'touch $PIPE_PIPELINE_DIR/started; sleep 8; echo late > late.txt' >/dev/null 2>&1 & while [ ! -f $PIPE_PIPELINE_DIR/started ]; do sleep 0.05; done; fi; echo ok > out.txt\"]\n"
        ),
    );
    let err = p.fail(&["run", "p.toml"]);
    let partial = p
        .partials()
        .pop()
        .unwrap_or_else(|| panic!("no build directory kept:\n{err}"));
    assert!(
        err.contains(&format!("not committing {}", partial.display()))
            && err.contains(&format!(
                "holds its work lock {}",
                partial.join(".pipe-work.lock").display()
            )),
        "{err}"
    );
    assert!(p.entries().is_empty(), "committed beside a running process");
    assert_eq!(p.run("p.toml", &[]), ["a"]);
    let entry = p.cache().join(&p.entries()[0]);
    assert!(entry.join("out.txt").is_file());
    assert!(!entry.join("late.txt").exists() && !entry.join(".pipe-work.lock").exists());
}

/// The permission bits of `path`.
fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn results_and_cache_files_are_created_as_the_umask_allows() {
    for (umask, want) in [(0o022, 0o644), (0o002, 0o664)] {
        let p = Project::new();
        p.write(
            "p.toml",
            &format!("{HEAD}[stages.t]\nkind = \"command\"\nargs = [\"true\"]\n"),
        );
        let mut cmd = p.command(&["run", "p.toml"]);
        // SAFETY: umask(2) is async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                libc::umask(umask);
                Ok(())
            });
        }
        let out = cmd.output().unwrap_or_else(|e| panic!("{e}"));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let results = p.path().join("results/t");
        let entry = p.cache().join(&p.entries()[0]);
        for f in [
            results.join("runs.parquet"),
            results.join("run.json"),
            entry.join(".pipe-key.json"),
            p.cache().join("instances/t/t.json"),
        ] {
            assert_eq!(mode(&f), want, "umask {umask:o}: {}", f.display());
        }
    }
}

#[test]
fn a_gather_too_large_for_the_environment_passes_through_a_file() {
    // 100 instances whose cache paths are about 1.5 KB long: 150 KB of directories, more than
    // one environment string may hold (128 KiB). The gathering stage gets them in
    // PIPE_NEED_ALL_FILE, one per line.
    let p = Project::new();
    let long = (0..6)
        .map(|i| format!("{i}{}", "d".repeat(240)))
        .collect::<Vec<_>>();
    let cache = long.iter().fold(p.path().join("c"), |d, part| d.join(part));
    let values: Vec<String> = (0..100).map(|i| i.to_string()).collect();
    p.write(
        "p.toml",
        &format!(
            "{HEAD}[stages.many]\nkind = \"command\"\nargs = [\"sh\", \"-c\", \"echo $PIPE_PARAMS > out.txt\"]\nmatrix.vars = [{}]\n\n[stages.all]\nkind = \"command\"\nneeds = {{ all = \"many[*]\" }}\nargs = [\"sh\", \"-c\", \"echo $PIPE_NEED_ALL_FILE > where.txt; wc -l < $PIPE_NEED_ALL_FILE > n.txt; echo ${{PIPE_NEED_ALL:-unset}} > env.txt; while read d; do cat $d/out.txt; done < $PIPE_NEED_ALL_FILE | sort -u | wc -l > distinct.txt\"]\n",
            values
                .iter()
                .map(|v| format!("{{ i = {v} }}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    let out = p
        .command(&["run", "p.toml", "-j2"])
        .env("PIPE_CACHE", &cache)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let text = super::output_text(&out);
    assert!(out.status.success(), "{text}");
    let all = std::fs::read_to_string(cache.join("instances/t/all.json"))
        .unwrap_or_else(|e| panic!("{e}"));
    let key: serde_json::Value = serde_json::from_str(&all).unwrap_or_else(|e| panic!("{e}"));
    let key = key["key"].as_str().unwrap_or_default();
    let entry = cache.join(key);
    let read = |f: &str| std::fs::read_to_string(entry.join(f)).unwrap_or_default();
    assert_eq!(read("n.txt").trim(), "100");
    assert_eq!(read("distinct.txt").trim(), "100");
    assert_eq!(read("env.txt").trim(), "unset");
    // The list was in the build directory's logs/ (not in /tmp, where a kill -9 of `pipe`
    // would leave it for good), and is gone once the program has ended.
    let list = cache
        .join(format!("{key}.partial"))
        .join("logs/pipe_need_all.txt");
    assert_eq!(read("where.txt").trim(), list.to_string_lossy());
    assert!(
        !entry.join("logs/pipe_need_all.txt").exists(),
        "the need list was committed"
    );
}

/// A job carries every instance it depends on, transitively, each with its key and its needs'
/// keys: the lineage the report stage publishes (it tells a training-free model from a trained
/// one by the chain of `model` needs, which the gathered instances alone do not hold).
#[test]
fn a_job_carries_its_whole_lineage() {
    use ropelens::pipeline::{cache::Cache, exec::Selection};
    let p = Project::new();
    let stage = |name: &str, needs: &str| {
        format!("[stages.{name}]\nkind = \"command\"\n{needs}args = [\"true\"]\n")
    };
    p.write(
        "p.toml",
        &format!(
            "{HEAD}{}{}{}{}",
            stage("a", ""),
            stage("b", "needs = { up = \"a\" }\n"),
            stage("c", "needs = { up = \"b\" }\n"),
            stage("other", ""),
        ),
    );
    let cache = Cache {
        root: p.path().join("cache"),
    };
    let plan =
        ropelens::pipeline::plan(&p.path().join("p.toml"), &[], &cache, &Selection::default())
            .unwrap();
    let index = |name: &str| {
        plan.graph
            .instances
            .iter()
            .position(|inst| inst.name == name)
            .unwrap()
    };
    let job = plan.job(index("c"), &cache, p.path().join("out"));
    let mut names: Vec<&str> = job.ancestors.iter().map(|u| u.instance.as_str()).collect();
    names.sort();
    assert_eq!(names, ["a", "b"]);
    let b = job.ancestors.iter().find(|u| u.instance == "b").unwrap();
    assert_eq!(b.key, plan.key(index("b")));
    assert_eq!(b.inputs["up"], [plan.key(index("a")).to_string()]);
    assert!(
        plan.job(index("a"), &cache, p.path().join("out"))
            .ancestors
            .is_empty()
    );
}
