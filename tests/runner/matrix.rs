//! Matrix expansion names, fan-out over matrix stages, gathers and consistent products.

use super::{HEAD, Project};

const STUDY: &str = r#"
[stages.base]
kind = "command"
args = ["sh", "-c", "echo $PIPE_SEED > seed.txt"]
matrix.seed = [1, 2]

[stages.extend]
kind = "command"
needs = { init = "base" }
args = ["sh", "-c", "echo $(cat $PIPE_NEED_INIT/seed.txt) $PIPE_SEED > pair.txt"]
[[stages.extend.matrix.vars]]
name = "yarn"
factor = 4.0
[[stages.extend.matrix.vars]]
rope = "pi"
factor = 8

[stages.eval]
kind = "command"
needs = { model = "extend", init = "base" }
args = ["sh", "-c", "cat $PIPE_NEED_MODEL/pair.txt $PIPE_NEED_INIT/seed.txt > both.txt"]
matrix.gpu = [0]

[stages.report]
kind = "command"
needs = { all = "eval[*]" }
args = ["sh", "-c", "echo $PIPE_NEED_ALL | tr ':' '\n' | wc -l > n.txt"]

[stages.per_seed]
kind = "command"
needs = { base = "base", evals = "eval[*]" }
args = ["sh", "-c", "echo $PIPE_NEED_EVALS | tr ':' '\n' | wc -l > n.txt"]

[stages.one]
kind = "command"
needs = { m = "extend@seed-2,yarn" }
args = ["true"]
"#;

fn dag(p: &Project) -> Vec<String> {
    p.ok(&["dag", "p.toml"])
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn names_fan_out_and_gather() {
    let p = Project::new();
    p.write("p.toml", &format!("{HEAD}{STUDY}"));
    let lines = dag(&p);
    let names: Vec<&str> = lines
        .iter()
        .map(|l| l.split(' ').next().unwrap_or_default())
        .collect();
    assert_eq!(
        names,
        [
            "base@seed-1",
            "base@seed-2",
            "extend@seed-1,yarn",
            "extend@seed-1,pi-factor-8",
            "extend@seed-2,yarn",
            "extend@seed-2,pi-factor-8",
            "eval@seed-1,yarn,gpu-0",
            "eval@seed-1,pi-factor-8,gpu-0",
            "eval@seed-2,yarn,gpu-0",
            "eval@seed-2,pi-factor-8,gpu-0",
            "report",
            "per_seed@seed-1",
            "per_seed@seed-2",
            "one",
        ]
    );
    // eval pairs each model with the base of the same seed only.
    assert!(
        lines[6].contains("init = base@seed-1") && lines[6].contains("model = extend@seed-1,yarn"),
        "{}",
        lines[6]
    );
    assert!(lines[9].contains("init = base@seed-2"), "{}", lines[9]);
    assert_eq!(lines[10].matches("eval@").count(), 4, "{}", lines[10]);
    assert_eq!(lines[11].matches("eval@seed-1").count(), 2, "{}", lines[11]);
    assert_eq!(lines[11].matches("eval@").count(), 2, "{}", lines[11]);
    assert!(
        lines[13].ends_with("m = extend@seed-2,yarn"),
        "{}",
        lines[13]
    );
}

#[test]
fn upstream_outputs_and_seeds_reach_each_instance() {
    let p = Project::new();
    p.write("p.toml", &format!("{HEAD}{STUDY}"));
    let built = p.run("p.toml", &["-j", "2"]);
    assert_eq!(built.len(), 14);
    // Read each instance's output through the cache key list.
    let mut boths = Vec::new();
    let mut counts = Vec::new();
    for k in p.entries() {
        let d = p.cache().join(&k);
        if let Ok(s) = std::fs::read_to_string(d.join("both.txt")) {
            boths.push(s.split_whitespace().collect::<Vec<_>>().join(" "));
        }
        if let Ok(s) = std::fs::read_to_string(d.join("n.txt")) {
            counts.push(s.trim().to_string());
        }
    }
    boths.sort();
    // extend inherits base's matrix seed; eval's own seed too.
    assert_eq!(boths, ["1 1 1", "1 1 1", "2 2 2", "2 2 2"]);
    counts.sort();
    assert_eq!(counts, ["2", "2", "4"]);
}

#[test]
fn dot_and_mermaid_render_every_edge() {
    let p = Project::new();
    p.write("p.toml", &format!("{HEAD}{STUDY}"));
    let dot = p.ok(&["dag", "p.toml", "--format", "dot"]);
    assert!(dot.starts_with("digraph \"t\" {"), "{dot}");
    let edges = |s: &str, arrow: &str| s.lines().filter(|l| l.contains(arrow)).count();
    // 4 extend + 8 eval + 4 report + 2 base and 4 evals of per_seed + 1 one.
    assert_eq!(edges(&dot, "->"), 23, "{dot}");
    let mermaid = p.ok(&["dag", "p.toml", "--format", "mermaid"]);
    assert!(mermaid.starts_with("flowchart LR"), "{mermaid}");
    assert_eq!(edges(&mermaid, "-->"), 23, "{mermaid}");
}

#[test]
fn several_matrix_keys_give_their_product() {
    let p = Project::new();
    p.write(
        "p.toml",
        &format!("{HEAD}[stages.a]\nkind = \"command\"\nargs = [\"true\"]\nmatrix.gpu = [0, 1]\nmatrix.env = [{{ M = \"fast\" }}, {{ M = \"slow\" }}]\n"),
    );
    let out = p.ok(&["validate", "p.toml"]);
    assert!(out.contains("1 stages, 4 instances"), "{out}");
    let names: Vec<String> = dag(&p)
        .iter()
        .map(|l| l.split(' ').next().unwrap_or_default().to_string())
        .collect();
    assert_eq!(
        names,
        [
            "a@gpu-0,fast",
            "a@gpu-0,slow",
            "a@gpu-1,fast",
            "a@gpu-1,slow"
        ]
    );
}
