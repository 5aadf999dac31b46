//! The cache key, one field at a time (just's tests/cache.rs): what rebuilds and what does not.

use std::os::unix::process::ExitStatusExt;

use super::{HEAD, Project};

/// `a` -> `b`, and an independent `c`; `a` reads `data.txt`.
fn chain(a_vars: &str, head: &str) -> String {
    format!(
        "{head}[stages.a]\nkind = \"command\"\nargs = [\"sh\", \"-c\", \"cat $PIPE_PIPELINE_DIR/data.txt > out.txt\"]\ninputs = [\"data.txt\"]\nvars = {a_vars}\n\n\
         [stages.b]\nkind = \"command\"\nneeds = {{ a = \"a\" }}\nargs = [\"sh\", \"-c\", \"cp $PIPE_NEED_A/out.txt .\"]\n\n\
         [stages.c]\nkind = \"command\"\nargs = [\"true\"]\n"
    )
}

fn project(a_vars: &str) -> Project {
    let p = Project::new();
    p.write("data.txt", "hello");
    p.write("p.toml", &chain(a_vars, HEAD));
    assert_eq!(p.run("p.toml", &[]), ["a", "b", "c"]);
    p
}

#[test]
fn unchanged_pipeline_builds_nothing() {
    let p = project("{ x = 1 }");
    assert!(p.run("p.toml", &[]).is_empty());
    let status = p.ok(&["status", "p.toml"]);
    assert!(status.contains("3 cached, 0 to run, 0 stale"), "{status}");
}

#[test]
fn param_change_rebuilds_the_instance_and_its_downstream() {
    let p = project("{ x = 1 }");
    p.write("p.toml", &chain("{ x = 2 }", HEAD));
    let status = p.ok(&["status", "p.toml"]);
    assert!(
        status.contains("stale    a") && status.contains("`vars.x` changed (1 -> 2)"),
        "{status}"
    );
    assert!(status.contains("upstream `a` changed"), "{status}");
    assert!(status.contains("cached   c"), "{status}");
    assert_eq!(p.run("p.toml", &[]), ["a", "b"]);
    // Going back finds the old entries: nothing to build.
    p.write("p.toml", &chain("{ x = 1 }", HEAD));
    assert!(p.run("p.toml", &[]).is_empty());
}

#[test]
fn defaulted_param_spelled_out_does_not_invalidate() {
    let p = project("{ x = 1 }");
    let text = chain("{ x = 1 }", HEAD).replace(
        "[stages.c]\nkind = \"command\"\n",
        "[stages.c]\nkind = \"command\"\ngpu = 0\nenv = {}\n",
    );
    p.write("p.toml", &text);
    assert!(p.run("p.toml", &[]).is_empty());
}

#[test]
fn touching_an_input_file_rebuilds_nothing() {
    let p = project("{ x = 1 }");
    let f = p.path().join("data.txt");
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(60);
    std::fs::File::options()
        .write(true)
        .open(&f)
        .and_then(|file| file.set_modified(later))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(p.run("p.toml", &[]).is_empty());
}

#[test]
fn changing_an_input_file_rebuilds() {
    let p = project("{ x = 1 }");
    p.write("data.txt", "hello, world");
    let status = p.ok(&["status", "p.toml"]);
    assert!(status.contains("input file `data.txt` changed"), "{status}");
    assert_eq!(p.run("p.toml", &[]), ["a", "b"]);
    let entry = p.entries().into_iter().find(|k| {
        p.cache().join(k).join("out.txt").is_file()
            && std::fs::read_to_string(p.cache().join(k).join("out.txt")).unwrap_or_default()
                == "hello, world"
    });
    assert!(entry.is_some());
}

#[test]
fn seed_invalidates() {
    let p = project("{ x = 1 }");
    p.write(
        "p.toml",
        &chain("{ x = 1 }", "[pipeline]\nname = \"t\"\nseed = 5\n"),
    );
    let status = p.ok(&["status", "p.toml"]);
    assert!(status.contains("seed changed (0 -> 5)"), "{status}");
    assert_eq!(p.run("p.toml", &[]), ["a", "b", "c"]);
}

#[test]
fn stage_seed_invalidates_only_that_stage() {
    let p = project("{ x = 1 }");
    let text = chain("{ x = 1 }", HEAD).replace(
        "[stages.c]\nkind = \"command\"\n",
        "[stages.c]\nkind = \"command\"\nseed = 3\n",
    );
    p.write("p.toml", &text);
    assert_eq!(p.run("p.toml", &[]), ["c"]);
}

#[test]
fn device_invalidates() {
    let p = project("{ x = 1 }");
    let status = p.ok(&["status", "p.toml", "--set", "pipeline.device=cuda:1"]);
    assert!(
        status.contains("device changed (cpu -> cuda:1)"),
        "{status}"
    );
}

#[test]
fn set_override_invalidates_like_an_edit() {
    let p = project("{ x = 1 }");
    assert_eq!(p.run("p.toml", &["--set", "stages.b.env.MODE=fast"]), ["b"]);
    assert!(
        p.run("p.toml", &["--set", "stages.b.env.MODE=fast"])
            .is_empty()
    );
    assert!(
        p.run("p.toml", &[]).is_empty(),
        "the old entry is still there"
    );
}

#[test]
fn needs_change_invalidates() {
    let p = project("{ x = 1 }");
    let text = chain("{ x = 1 }", HEAD)
        .replace("needs = { a = \"a\" }", "needs = { a = \"a\", c = \"c\" }");
    p.write("p.toml", &text);
    let status = p.ok(&["status", "p.toml"]);
    assert!(status.contains("need `c` added"), "{status}");
    assert_eq!(p.run("p.toml", &[]), ["b"]);
}

#[test]
fn renaming_the_pipeline_keeps_the_cache() {
    let p = project("{ x = 1 }");
    p.write(
        "p.toml",
        &chain("{ x = 1 }", "[pipeline]\nname = \"renamed\"\n"),
    );
    assert!(p.run("p.toml", &[]).is_empty());
}

#[test]
fn force_rebuilds_the_named_stage_only_and_force_all_everything() {
    let p = project("{ x = 1 }");
    let status = p.ok(&["run", "p.toml", "--stage", "b", "--force", "--dry-run"]);
    assert!(
        status.contains("run      b") && status.contains("(forced)"),
        "{status}"
    );
    assert!(status.contains("cached   a"), "{status}");
    assert!(!status.contains(" c "), "c is not selected:\n{status}");
    assert_eq!(p.run("p.toml", &["--stage", "b", "--force"]), ["b"]);
    assert_eq!(
        p.run("p.toml", &["--stage", "b", "--force-all"]),
        ["a", "b"]
    );
}

#[test]
fn removed_entry_is_rebuilt_as_missing() {
    let p = project("{ x = 1 }");
    for k in p.entries() {
        std::fs::remove_dir_all(p.cache().join(k)).unwrap_or_else(|e| panic!("{e}"));
    }
    let status = p.ok(&["status", "p.toml"]);
    assert!(status.contains("missing"), "{status}");
    assert_eq!(p.run("p.toml", &[]), ["a", "b", "c"]);
}

#[test]
fn downstream_cached_does_not_rebuild_a_removed_upstream() {
    let p = project("{ x = 1 }");
    let status = p.ok(&["status", "p.toml"]);
    let a_key = status
        .lines()
        .find(|l| l.contains(" a "))
        .and_then(|l| l.split_whitespace().nth(2))
        .map(str::to_string)
        .unwrap_or_default();
    let a_dir = p
        .entries()
        .into_iter()
        .find(|k| k.starts_with(&a_key))
        .unwrap_or_default();
    std::fs::remove_dir_all(p.cache().join(a_dir)).unwrap_or_else(|e| panic!("{e}"));
    assert!(p.run("p.toml", &["--stage", "b"]).is_empty());
}

#[test]
fn gc_removes_unreferenced_entries() {
    let p = project("{ x = 1 }");
    p.write("p.toml", &chain("{ x = 2 }", HEAD));
    p.run("p.toml", &[]);
    assert_eq!(p.entries().len(), 5);
    let dry = p.ok(&["cache", "gc", "p.toml", "--dry-run"]);
    assert!(dry.contains("would remove 2 entries"), "{dry}");
    assert_eq!(p.entries().len(), 5);
    let gc = p.ok(&["cache", "gc", "p.toml"]);
    assert!(gc.contains("removed 2 entries"), "{gc}");
    assert_eq!(p.entries().len(), 3);
    assert!(p.run("p.toml", &[]).is_empty());
    let ls = p.ok(&["cache", "ls"]);
    assert!(
        ls.contains("3 entries") && ls.contains("t/a (command)"),
        "{ls}"
    );
}

#[test]
fn gc_keeps_the_entries_a_running_run_uses() {
    let p = Project::new();
    p.write(
        "p.toml",
        &format!(
            "{HEAD}[stages.a]\nkind = \"command\"\nargs = [\"sh\", \"-c\", \"echo a > out.txt\"]\n\n[stages.b]\nkind = \"command\"\nneeds = {{ x = \"a\" }}\nargs = [\"sh\", \"-c\", \"touch $PIPE_PIPELINE_DIR/b-started; while [ ! -f $PIPE_PIPELINE_DIR/go ]; do sleep 0.05; done; cat $PIPE_NEED_X/out.txt > out.txt\"]\n"
        ),
    );
    p.write(
        "other.toml",
        "[pipeline]\nname = \"other\"\n[stages.c]\nkind = \"command\"\nargs = [\"true\"]\n",
    );
    let child = p
        .command(&["run", "p.toml", "-j", "1"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let t0 = std::time::Instant::now();
    while !p.path().join("b-started").is_file() {
        assert!(t0.elapsed().as_secs() < 20, "b never started");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // `a` is committed and unlocked; only the run's lease protects it.
    let gc = p.ok(&["cache", "gc", "other.toml"]);
    assert!(gc.contains("removed 0 entries"), "{gc}");
    p.write("go", "");
    let out = child.wait_with_output().unwrap_or_else(|e| panic!("{e}"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(p.entries().len(), 2);
    // Once the run is over, its entries are ordinary garbage for another pipeline.
    let gc = p.ok(&["cache", "gc", "other.toml"]);
    assert!(gc.contains("removed 2 entries"), "{gc}");
}

#[test]
fn commit_drops_temporaries_and_keeps_scratch_until_the_entry_is_in_place() {
    // A resumable stage whose first attempt is killed mid-write (a stray `.tmpXXXXXX`) and
    // which keeps a `checkpoints/` folder: the entry has neither.
    let p = Project::new();
    p.write(
        "p.toml",
        &format!(
            "{HEAD}[stages.a]\nkind = \"command\"\nresumable = true\nargs = [\"sh\", \"-c\", \"if [ ! -f first ]; then touch first .tmpAbC123; mkdir -p sub; touch sub/.tmpXyZ789; exit 1; fi; echo ok > out.txt\"]\n"
        ),
    );
    p.fail(&["run", "p.toml"]);
    // `cache ls` shows what the failed attempt left.
    let ls = p.ok(&["cache", "ls"]);
    assert!(
        ls.contains("0 entries") && ls.contains("1 partial build(s)") && ls.contains(".partial"),
        "{ls}"
    );
    p.run("p.toml", &[]);
    let entries = p.entries();
    assert_eq!(entries.len(), 1);
    let entry = p.cache().join(&entries[0]);
    assert!(entry.join("out.txt").is_file());
    assert!(!entry.join(".tmpAbC123").exists());
    assert!(!entry.join("sub/.tmpXyZ789").exists());
}

#[test]
fn only_a_finished_build_is_committed_without_running_again() {
    // A resumable stage that counts its runs and fails while `fail` exists.
    let p = Project::new();
    p.write(
        "p.toml",
        &format!(
            "{HEAD}[stages.a]\nkind = \"command\"\nresumable = true\nargs = [\"sh\", \"-c\", \"echo run >> $PIPE_PIPELINE_DIR/count; test ! -f $PIPE_PIPELINE_DIR/fail && echo ok > out.txt\"]\n"
        ),
    );
    let runs = || {
        std::fs::read_to_string(p.path().join("count"))
            .unwrap_or_default()
            .lines()
            .count()
    };
    let status = || p.ok(&["status", "p.toml"]);
    let killed_before_the_rename = |args: &[&str]| {
        let mut all = vec!["run", "p.toml"];
        all.extend_from_slice(args);
        let out = p
            .command(&all)
            .env("PIPE_FAILPOINT", "entry-rename:1")
            .output()
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGKILL),
            "{}",
            super::output_text(&out)
        );
    };
    p.run("p.toml", &[]);
    // Its entry removed and a rebuild failed: the build directory it left is no finished
    // build (before, any partial of the recorded key was called `uncommitted`).
    for k in p.entries() {
        std::fs::remove_dir_all(p.cache().join(k)).unwrap_or_else(|e| panic!("{e}"));
    }
    p.write("fail", "");
    p.fail(&["run", "p.toml"]);
    assert_eq!(runs(), 2);
    let s = status();
    assert!(s.contains("(missing: its cache entry was removed)"), "{s}");

    // Finished and killed before the rename: committed as it is by the next run (before,
    // the stage ran again).
    std::fs::remove_file(p.path().join("fail")).unwrap_or_else(|e| panic!("{e}"));
    killed_before_the_rename(&[]);
    assert_eq!(runs(), 3);
    let s = status();
    assert!(
        s.contains("(uncommitted: a run was stopped while committing it)"),
        "{s}"
    );
    let ls = p.ok(&["cache", "ls"]);
    assert!(ls.contains("finished, its commit interrupted"), "{ls}");
    let text = p.ok(&["run", "p.toml"]);
    assert!(
        text.contains("committed a (built by an earlier run, stopped before committing it)"),
        "{text}"
    );
    assert_eq!(runs(), 3, "the stage ran again:\n{text}");
    let s = status();
    assert!(s.contains("1 cached, 0 to run, 0 stale"), "{s}");

    // A forced rebuild into a finished build directory that fails: what it leaves is no
    // finished build any more, and the next run builds it instead of committing it.
    for k in p.entries() {
        std::fs::remove_dir_all(p.cache().join(k)).unwrap_or_else(|e| panic!("{e}"));
    }
    killed_before_the_rename(&[]);
    p.write("fail", "");
    p.fail(&["run", "p.toml", "--force"]);
    assert_eq!(runs(), 5);
    let s = status();
    assert!(s.contains("(missing: its cache entry was removed)"), "{s}");
    std::fs::remove_file(p.path().join("fail")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(p.run("p.toml", &[]), ["a"]);
    assert_eq!(runs(), 6);
    let entry = p.cache().join(&p.entries()[0]);
    assert_eq!(
        std::fs::read_to_string(entry.join("out.txt")).unwrap_or_default(),
        "ok\n"
    );
}

#[test]
fn gc_keeps_a_partial_build_a_process_still_writes() {
    // Two build directories no pipeline references: one whose work lock a process holds (an
    // orphan of a killed run, still writing it), one whose lock nobody holds.
    let p = project("{ x = 1 }");
    let writing = p.cache().join(format!("{}.partial", "a".repeat(32)));
    let dead = p.cache().join(format!("{}.partial", "b".repeat(32)));
    for d in [&writing, &dead] {
        std::fs::create_dir_all(d).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(d.join("out.txt"), "half").unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(d.join(".pipe-work.lock"), "").unwrap_or_else(|e| panic!("{e}"));
    }
    // The orphan is a separate process, as in life. Were the lock taken on a descriptor of this
    // test process, a sibling test's fork between our `lock` and our release would hold a copy
    // of it until that child's exec, and the second gc below could find it still held (seen
    // once under load).
    let orphan = Orphan::holding(&writing.join(".pipe-work.lock"));
    let gc = p.ok(&["cache", "gc", "p.toml"]);
    assert!(writing.is_dir(), "removed while a process writes it:\n{gc}");
    assert!(!dead.exists(), "{gc}");
    assert!(gc.contains("removed 1 entries"), "{gc}");
    assert_eq!(p.entries().len(), 3);
    drop(orphan);
    let gc = p.ok(&["cache", "gc", "p.toml"]);
    assert!(!writing.exists(), "{gc}");
}

/// A process that holds an exclusive `flock` on a file until dropped (killed and reaped).
struct Orphan(std::process::Child);

impl Orphan {
    fn holding(lock_file: &std::path::Path) -> Orphan {
        use std::io::BufRead;
        // The shell opens the file as descriptor 9, `flock` locks it (the lock belongs to the
        // open file, which the shell keeps), the shell says so on stdout and becomes `sleep`,
        // the lock's holder. This process never opens the file, so no fork of it can hold the
        // lock.
        let mut child = std::process::Command::new("sh")
            .args([
                "-c",
                "exec 9>>\"$1\" && flock -x 9 && echo locked && exec sleep 600",
                "sh",
            ])
            .arg(lock_file)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("sh: {e}"));
        let mut line = String::new();
        let stdout = child.stdout.take().expect("piped stdout");
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            line,
            "locked\n",
            "flock did not take {}",
            lock_file.display()
        );
        Orphan(child)
    }
}

impl Drop for Orphan {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
