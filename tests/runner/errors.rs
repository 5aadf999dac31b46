//! Every class of pipeline error names the file, line, column and key, before anything runs.

use super::{HEAD, Project};

/// Validate `text` and return the error, asserting it names `p.toml:LINE:` and `key`.
fn error(text: &str, line: usize, key: &str) -> String {
    let p = Project::new();
    p.write("p.toml", text);
    let err = p.fail(&["validate", "p.toml"]);
    assert!(
        err.contains(&format!("p.toml:{line}:")),
        "expected line {line}:\n{err}"
    );
    if !key.is_empty() {
        assert!(
            err.contains(&format!("`{key}`")),
            "expected key `{key}`:\n{err}"
        );
    }
    // Nothing ran: no cache was created.
    assert!(!p.cache().exists());
    err
}

#[test]
fn toml_syntax() {
    let e = error(
        &format!("{HEAD}[stages.a]\nkind = \"command\"\nargs = [\"true\"\n"),
        5,
        "",
    );
    assert!(e.contains("TOML syntax"), "{e}");
}

#[test]
fn unknown_parameter() {
    let e = error(
        &format!("{HEAD}[stages.a]\nkind = \"command\"\nargs = [\"true\"]\nargz = 1\n"),
        6,
        "stages.a.argz",
    );
    assert!(e.contains("unknown field `argz`"), "{e}");
}

#[test]
fn unknown_top_level_and_header_keys() {
    let e = error(
        &format!("{HEAD}[stagez.a]\nkind = \"command\"\n"),
        3,
        "stagez",
    );
    assert!(e.contains("unknown key `stagez`"), "{e}");
    let e = error("[pipeline]\nname = \"t\"\nseeed = 1\n", 3, "pipeline.seeed");
    assert!(e.contains("unknown field `seeed`"), "{e}");
}

#[test]
fn wrong_type() {
    let e = error(
        &format!("{HEAD}[stages.a]\nkind = \"command\"\nargs = [\"true\"]\ngpu = \"one\"\n"),
        6,
        "stages.a.gpu",
    );
    assert!(e.contains("invalid type"), "{e}");
    error("[pipeline]\nname = \"t\"\nseed = -1\n", 3, "pipeline.seed");
}

#[test]
fn unknown_stage_kind() {
    let e = error(
        &format!("{HEAD}\n[stages.a]\nkind = \"trian\"\n"),
        5,
        "stages.a.kind",
    );
    assert!(
        e.contains("unknown stage kind `trian`") && e.contains("command"),
        "{e}"
    );
}

#[test]
fn need_that_names_no_stage() {
    let e = error(
        &format!(
            "{HEAD}[stages.a]\nkind = \"command\"\nargs = [\"true\"]\nneeds = {{ data = \"dta\" }}\n"
        ),
        6,
        "stages.a.needs.data",
    );
    assert!(e.contains("names no stage `dta`"), "{e}");
}

#[test]
fn cycle_prints_its_path() {
    let text = format!(
        "{HEAD}[stages.a]\nkind = \"command\"\nargs = [\"true\"]\nneeds = {{ x = \"c\" }}\n\
         [stages.b]\nkind = \"command\"\nargs = [\"true\"]\nneeds = {{ x = \"a\" }}\n\
         [stages.c]\nkind = \"command\"\nargs = [\"true\"]\nneeds = {{ x = \"b\" }}\n"
    );
    let p = Project::new();
    p.write("p.toml", &text);
    let e = p.fail(&["validate", "p.toml"]);
    assert!(e.contains("p.toml:"), "{e}");
    assert!(
        ["a -> b -> c -> a", "b -> c -> a -> b", "c -> a -> b -> c"]
            .iter()
            .any(|c| e.contains(c)),
        "{e}"
    );
    assert!(e.contains("stages.") && e.contains(".needs.x"), "{e}");
}

#[test]
fn duplicate_instance_names() {
    let e = error(
        &format!("{HEAD}[stages.a]\nkind = \"command\"\nargs = [\"true\"]\nmatrix.gpu = [1, 1]\n"),
        6,
        "stages.a.matrix.gpu[1]",
    );
    assert!(e.contains("duplicate instance name `a@gpu-1`"), "{e}");
    let e = error(
        &format!(
            "{HEAD}[stages.a]\nkind = \"command\"\nargs = [\"true\"]\n\
             [[stages.a.matrix.vars]]\nname = \"x\"\nlr = 1\n[[stages.a.matrix.vars]]\nname = \"x\"\nlr = 2\n"
        ),
        10,
        "stages.a.matrix.vars[1]",
    );
    assert!(e.contains("duplicate instance name `a@x`"), "{e}");
}

#[test]
fn matrix_over_a_key_the_kind_does_not_have() {
    let e = error(
        &format!(
            "{HEAD}[stages.a]\nkind = \"command\"\nargs = [\"true\"]\nmatrix.factor = [2.0, 4.0]\n"
        ),
        6,
        "stages.a.matrix.factor",
    );
    assert!(e.contains("does not have"), "{e}");
}

#[test]
fn wrong_type_inside_a_matrix_value_points_at_it() {
    let e = error(
        &format!(
            "{HEAD}[stages.a]\nkind = \"command\"\nargs = [\"true\"]\nmatrix.gpu = [1, \"two\"]\n"
        ),
        6,
        "stages.a.matrix.gpu[1]",
    );
    assert!(e.contains("invalid type"), "{e}");
}

#[test]
fn bad_set_override_names_the_argument() {
    let p = Project::new();
    p.write(
        "p.toml",
        &format!("{HEAD}[stages.a]\nkind = \"command\"\nargs = [\"true\"]\n"),
    );
    let e = p.fail(&["validate", "p.toml", "--set", "stages.a.gpu=[1]"]);
    assert!(
        e.contains("--set:1:") && e.contains("`stages.a.gpu`"),
        "{e}"
    );
}

#[test]
fn several_errors_are_reported_together() {
    let p = Project::new();
    p.write(
        "p.toml",
        &format!("{HEAD}[stages.a]\nkind = \"command\"\nargz = 1\n[stages.b]\nkind = \"nope\"\n"),
    );
    let e = p.fail(&["validate", "p.toml"]);
    assert!(e.contains("p.toml:5:") && e.contains("p.toml:7:"), "{e}");
}

/// A data stage and a train stage, so that a kind's `check` runs on realistic parameters.
const TRAIN: &str = "[stages.data]\nkind = \"data_prep\"\nsource = { synthetic = { documents = 10 } }\n\n[stages.base]\nkind = \"train\"\nneeds = { data = \"data\" }\n";

#[test]
fn kind_checks_run_before_anything_with_file_line_and_key() {
    // Lines: 1-2 header, 3-5 data, 6 blank, 7-9 base, then the value under test.
    let e = error(
        &format!("{HEAD}{TRAIN}train = {{ steps = 0 }}\n"),
        10,
        "stages.base.train.steps",
    );
    assert!(e.contains("must be at least 1"), "{e}");
    let e = error(
        &format!("{HEAD}{TRAIN}train = {{ steps = 10, warmup_steps = 20 }}\n"),
        10,
        "stages.base.train.warmup_steps",
    );
    assert!(e.contains("20 is more than the 10 steps"), "{e}");
    let needle = format!(
        "{HEAD}[stages.n]\nkind = \"eval_needle\"\nneeds = {{ model = \"m\", data = \"d\" }}\nlengths = [64]\ndepths = [0.5, 1.5]\n"
    );
    let e = error(&needle, 7, "stages.n.depths");
    assert!(e.contains("1.5") && e.contains("[0, 1]"), "{e}");
    // A value given with --set points at the argument.
    let p = Project::new();
    p.write("p.toml", &format!("{HEAD}{TRAIN}"));
    let e = p.fail(&[
        "run",
        "p.toml",
        "--dry-run",
        "--set",
        "stages.base.train.steps=0",
    ]);
    assert!(e.contains("`stages.base.train.steps`"), "{e}");
    assert!(!p.cache().exists());
}

#[test]
fn eval_checks_name_the_parameter() {
    let head = format!(
        "{HEAD}[stages.e]\nkind = \"eval_ppl\"\nneeds = {{ model = \"m\", data = \"d\" }}\n"
    );
    let e = error(
        &format!("{head}lengths = [64, 64]\n"),
        6,
        "stages.e.lengths",
    );
    assert!(e.contains("lists 64 twice"), "{e}");
    let e = error(
        &format!("{head}lengths = [64]\nbatch_size = 0\n"),
        7,
        "stages.e.batch_size",
    );
    assert!(e.contains("must be at least 1"), "{e}");
    // A default cannot be wrong; the stage's line is named when the value is not in the file.
    let e = error(
        &format!("{HEAD}[stages.c]\nkind = \"command\"\nargs = []\n"),
        5,
        "stages.c.args",
    );
    assert!(e.contains("is empty"), "{e}");
}

#[test]
fn resources_are_checked_and_not_part_of_the_key() {
    let e = error(
        &format!(
            "{HEAD}[stages.a]\nkind = \"command\"\nargs = [\"true\"]\nresources = {{ cpus = 0 }}\n"
        ),
        6,
        "stages.a.resources.cpus",
    );
    assert!(e.contains("must be at least 1"), "{e}");
    let e = error(
        &format!(
            "{HEAD}[stages.a]\nkind = \"command\"\nargs = [\"true\"]\nresources = {{ gpu = 1 }}\n"
        ),
        6,
        "",
    );
    assert!(e.contains("unknown field `gpu`"), "{e}");
    let p = Project::new();
    p.write(
        "p.toml",
        &format!("{HEAD}[stages.a]\nkind = \"command\"\nargs = [\"true\"]\n"),
    );
    assert_eq!(p.run("p.toml", &[]), ["a"]);
    p.write(
        "p.toml",
        &format!("{HEAD}[stages.a]\nkind = \"command\"\nargs = [\"true\"]\nresources = {{ cpus = 2, mem = \"1G\", time = \"1:00:00\" }}\n"),
    );
    assert!(p.run("p.toml", &[]).is_empty(), "resources changed the key");
}

#[test]
fn non_finite_numbers_and_bad_names_are_refused_at_parse_time() {
    let e = error(
        &format!("{HEAD}{TRAIN}train = {{ lr = nan }}\n"),
        10,
        "stages.base.train.lr",
    );
    assert!(e.contains("not a finite number"), "{e}");
    let e = error(
        &format!(
            "{HEAD}[stages.n]\nkind = \"eval_needle\"\nneeds = {{ model = \"m\", data = \"d\" }}\nlengths = [64]\ndepths = [0.5, -inf]\n"
        ),
        7,
        "stages.n.depths",
    );
    assert!(e.contains("not a finite number"), "{e}");
    let p = Project::new();
    p.write("p.toml", &format!("{HEAD}{TRAIN}"));
    let e = p.fail(&["validate", "p.toml", "--set", "stages.base.train.lr=inf"]);
    assert!(
        e.contains("`stages.base.train.lr`") && e.contains("finite"),
        "{e}"
    );
    let e = p.fail(&["validate", "p.toml", "--set", "pipeline.name=\"a\\nb\""]);
    assert!(
        e.contains("`pipeline.name`") && e.contains("control"),
        "{e}"
    );
    let long = "x".repeat(300);
    let e = p.fail(&[
        "validate",
        "p.toml",
        "--set",
        &format!("pipeline.name={long}"),
    ]);
    assert!(e.contains("`pipeline.name`"), "{e}");
    let e = error(
        &format!(
            "{HEAD}[stages.e]\nkind = \"eval_ppl\"\nneeds = {{ model = \"m\", data = \"d\" }}\nlengths = [18446744073709551615]\n"
        ),
        6,
        "",
    );
    assert!(!e.contains("panicked"), "{e}");
    let e = error(
        &format!(
            "{HEAD}[stages.e]\nkind = \"eval_ppl\"\nneeds = {{ model = \"m\", data = \"d\" }}\nlengths = [64, 100000000]\n"
        ),
        6,
        "stages.e.lengths",
    );
    assert!(e.contains("must be in [2, 4194304]"), "{e}");
}

/// `--executor slurm` with a cache on a local disk and a cluster whose nodes are other machines
/// (stub `sbatch` and `sinfo` on PATH: no Slurm needed) is refused before anything is
/// submitted, naming the cache and the nodes; `PIPE_SLURM_SHARED=1` vouches for the filesystem.
#[test]
fn slurm_refuses_a_cache_the_nodes_cannot_see() {
    use std::os::unix::fs::PermissionsExt;
    let p = Project::new();
    p.write(
        "p.toml",
        "[pipeline]\nname = \"p\"\n[stages.a]\nkind = \"command\"\nargs = [\"true\"]\n",
    );
    let bin = p.path().join("fake-slurm");
    std::fs::create_dir_all(&bin).unwrap();
    for (tool, body) in [
        ("sbatch", "echo 'slurm 23.11.4'"),
        ("sinfo", "printf 'node-a\\nnode-b\\n'"),
        // Anything else must not be reached.
        (
            "squeue",
            "echo called >> \"$(dirname \"$0\")/reached\"; exit 1",
        ),
    ] {
        let path = bin.join(tool);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = p
        .command(&["run", "p.toml", "--executor", "slurm"])
        .env("PATH", &path)
        .env_remove("PIPE_SLURM_SHARED")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("is not on a network filesystem and the cluster's nodes (node-a, node-b) are not this machine"),
        "{err}"
    );
    assert!(err.contains(&p.cache().display().to_string()), "{err}");
    assert!(!bin.join("reached").exists());
    assert!(p.entries().is_empty());
}

/// An executor that does not exist is refused, naming the known ones, on the command line and
/// in the pipeline file (with its line and key), before anything runs.
#[test]
fn an_unknown_executor_is_refused_naming_the_known_ones() {
    let p = Project::new();
    p.write(
        "p.toml",
        &format!("{HEAD}[stages.a]\nkind = \"command\"\nargs = [\"true\"]\n"),
    );
    let err = p.fail(&["run", "p.toml", "--executor", "pbs"]);
    assert!(
        err.contains("invalid value 'pbs' for '--executor <EXECUTOR>'")
            && err.contains("[possible values: local, slurm]"),
        "{err}"
    );
    let err = error(
        &format!("{HEAD}executor = \"pbs\"\n[stages.a]\nkind = \"command\"\nargs = [\"true\"]\n"),
        3,
        "pipeline.executor",
    );
    assert!(
        err.contains("unknown variant `pbs`, expected `local` or `slurm`"),
        "{err}"
    );
    assert!(p.entries().is_empty());
}
