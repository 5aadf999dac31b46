//! `kind = "report"` through the runner: per-instance tables written by `command` stages are
//! gathered, the report is written and published into `results/<pipeline>/`, and
//! `pipe report` regenerates it from the results directory alone.

use ropelens::tables::{NeedleRow, PplRow, write_table};

use crate::runner::{HEAD, Project};

fn ppl_rows(slope: f64) -> Vec<PplRow> {
    [64i64, 128, 256, 512]
        .iter()
        .map(|&length| {
            let nll = 3.0 + slope * (length as f64 / 64.0).ln();
            PplRow {
                length,
                mode: "truncate".into(),
                document: "0".into(),
                tokens: length - 1,
                nll,
                ppl: nll.exp(),
                recall_tokens: 0,
                recall_nll: None,
            }
        })
        .collect()
}

fn needle_rows(pass: bool) -> Vec<NeedleRow> {
    vec![NeedleRow {
        task: "passkey".into(),
        length: 128,
        depth: 0.5,
        trial: 0,
        needle_token_position: 60,
        expected: "1 2 3".into(),
        reply: if pass { "1 2 3 .".into() } else { "9 .".into() },
        exact: Some(pass),
        substring: pass,
        overlap: if pass { 1.0 } else { 0.0 },
        entropy_mean: Some(if pass { 2.0 } else { 3.0 }),
        seconds: 0.1,
    }]
}

#[test]
fn the_report_stage_publishes_report_and_figures_and_pipe_report_regenerates_them() {
    let p = Project::new();
    for (name, slope, pass) in [("pi", 0.3, false), ("yarn", 0.1, true)] {
        let dir = p.path().join("tables").join(name);
        write_table(&dir.join("ppl.parquet"), &ppl_rows(slope)).unwrap();
        write_table(&dir.join("needle.parquet"), &needle_rows(pass)).unwrap();
    }
    // One `command` instance per method, each copying its tables into `metrics/`.
    let file = p.write(
        "study.toml",
        &format!(
            "{HEAD}[stages.ev]\nkind = \"command\"\n\
             args = [\"sh\", \"-c\", \"mkdir -p metrics && cp $PIPE_PIPELINE_DIR/tables/$SRC/*.parquet metrics/\"]\n\
             inputs = [\"tables\"]\n\
             matrix.env = [{{ name = \"pi\", SRC = \"pi\" }}, {{ name = \"yarn\", SRC = \"yarn\" }}]\n\
             [stages.report]\nkind = \"report\"\nneeds = {{ ppl = \"ev[*]\" }}\ntitle = \"Tiny study\"\n"
        ),
    );
    let file = file.to_str().unwrap();
    p.ok(&["run", file]);

    let results = p.path().join("results/t");
    let report = std::fs::read_to_string(results.join("report.md")).unwrap();
    assert!(report.starts_with("# Tiny study"), "{report}");
    assert!(report.contains("yarn") && report.contains("pi"), "{report}");
    let pngs: Vec<_> = std::fs::read_dir(&results)
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "png"))
        .collect();
    assert!(
        !pngs.is_empty(),
        "no figures published in {}",
        results.display()
    );
    // The gathered ppl table is there too, with both instances.
    let ppl = ropelens::tables::read_results::<PplRow>(&results.join("ppl.parquet")).unwrap();
    assert_eq!(ppl.len(), 8);

    // `pipe report` rewrites the report from results/ alone, with the file's options.
    std::fs::remove_file(results.join("report.md")).unwrap();
    let out = p.ok(&["report", file]);
    assert!(out.contains("report"), "{out}");
    let again = std::fs::read_to_string(results.join("report.md")).unwrap();
    assert!(again.starts_with("# Tiny study"));
}

#[test]
fn pipe_report_without_a_report_stage_says_so() {
    let p = Project::new();
    let file = p.write(
        "x.toml",
        &format!("{HEAD}[stages.a]\nkind = \"command\"\nargs = [\"true\"]\n"),
    );
    let err = p.fail(&["report", file.to_str().unwrap()]);
    assert!(err.contains("no stage of kind `report`"), "{err}");
    assert!(err.contains("x.toml"), "{err}");
}
