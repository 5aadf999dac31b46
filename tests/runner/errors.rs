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
