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
    assert!(
        std::fs::read_dir(p.cache())
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().ends_with(".partial"))
    );
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
