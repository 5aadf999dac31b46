//! The README's main job, `pipelines/quickstart.toml`, shrunk with `--set` to seconds: every
//! stage kind of the study runs end to end and the results directory is complete and readable.

use std::path::Path;

use ropelens::tables::{NeedleRow, PplRow, TrainLogRow, read_results};

use crate::runner::Project;

/// Overrides that keep the quickstart's shape (every stage, every instance) at toy size.
pub const SHRINK: &[&str] = &[
    "stages.pretrain_data.source.synthetic.documents=200",
    "stages.pretrain_data.split.valid_documents=10",
    "stages.data.source.synthetic.documents=80",
    "stages.data.source.synthetic.min_tokens=260",
    "stages.data.source.synthetic.max_tokens=300",
    "stages.ft_data.source.synthetic.documents=80",
    "stages.ft_data.split.valid_documents=4",
    "stages.data.split.valid_documents=4",
    "stages.data.split.valid_min_tokens=260",
    "stages.base.train.steps=4",
    "stages.base.train.batch_size=4",
    "stages.base.train.val_every=2",
    "stages.extend.train.steps=2",
    "stages.extend.train.batch_size=2",
    "stages.extend.train.val_every=2",
    "stages.ppl.lengths=[64, 256]",
    "stages.ppl_base.lengths=[64, 256]",
    "stages.needle.lengths=[64, 256]",
    "stages.needle.depths=[0.0, 1.0]",
    "stages.needle.trials=1",
    "stages.needle_base.lengths=[64, 256]",
    "stages.needle_base.depths=[0.0, 1.0]",
    "stages.needle_base.trials=1",
    "stages.attn.lengths=[64, 256]",
    "stages.attn.windows=1",
    "stages.attn_base.lengths=[64, 256]",
    "stages.attn_base.windows=1",
];

#[test]
fn the_quickstart_runs_every_stage_kind_end_to_end() {
    let p = Project::new();
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/quickstart.toml");
    let mut args = vec!["run", file.to_str().unwrap()];
    for s in SHRINK {
        args.extend(["--set", s]);
    }
    let log = p.ok(&args);
    // The RoPE-unchanged arm's warning is a line of its own in the log, not a passing status.
    assert!(
        log.lines().any(|l| l.starts_with("  extend@plain: WARNING: train.seq_len 256 is longer than the max_position_embeddings 64")),
        "{log}"
    );

    let results = p.path().join("results/quickstart");
    assert!(results.join("runs.parquet").is_file());
    super::assert_study_tables(&results);
    // The three corpora went through one tokenizer: the fine-tuning and evaluation corpora took
    // the pretraining corpus's tokenizer.json (`tokenizer = { from = "tokenizer" }`).
    let vocab = super::data_stats_vocab(&results);
    let instances: std::collections::BTreeSet<&str> =
        vocab.iter().map(|(i, _)| i.as_str()).collect();
    assert_eq!(
        instances,
        ["data", "ft_data", "pretrain_data"].into(),
        "{vocab:?}"
    );
    assert!(vocab.windows(2).all(|w| w[0].1 == w[1].1), "{vocab:?}");

    // One training log per train instance: base and the four extensions.
    let train = read_results::<TrainLogRow>(&results.join("train_log.parquet")).unwrap();
    let mut instances: Vec<&str> = train.iter().map(|r| r.instance.as_str()).collect();
    instances.dedup();
    assert_eq!(
        instances,
        [
            "base",
            "extend@plain",
            "extend@pi",
            "extend@ntk",
            "extend@yarn"
        ]
    );
    // Perplexity of five models at both lengths; every value finite.
    let ppl = read_results::<PplRow>(&results.join("ppl.parquet")).unwrap();
    let models: std::collections::BTreeSet<&str> =
        ppl.iter().map(|r| r.instance.as_str()).collect();
    assert_eq!(models.len(), 5, "{models:?}");
    assert!(
        ppl.iter()
            .all(|r| r.row.nll.is_finite() && r.row.tokens > 0)
    );
    // 5 models x 2 lengths x 2 depths x 1 trial, each with its Algorithm 1 entropy.
    let needle = read_results::<NeedleRow>(&results.join("needle.parquet")).unwrap();
    assert_eq!(needle.len(), 20);
    assert!(
        needle
            .iter()
            .all(|r| r.row.entropy_mean.is_some_and(f64::is_finite))
    );

    // The report and its figures are published, and every figure is a PNG that decodes.
    let report = std::fs::read_to_string(results.join("report.md")).unwrap();
    assert!(report.contains("## Findings"), "{report}");
    // The frequency view reads every model's config.json from the published `model_config`
    // table: PI x4 interpolates all 16 pairs of head_dim 32 by 4.
    assert!(results.join("model_config.parquet").is_file());
    assert!(report.contains("## RoPE frequencies"), "{report}");
    assert!(
        report.contains("| PI x4               | linear, theta 10000  |       32 |          0 |      0 |           16 |          4.00 |"),
        "{report}"
    );
    assert!(
        report.contains("Effective length (RULER's measure)"),
        "{report}"
    );
    // The RoPE-unchanged arm trains at 4L = 256 with the base's RoPE for L = 64 on purpose: its
    // warning is published and shown in the report, only for that arm.
    assert!(results.join("warnings.parquet").is_file());
    assert!(report.contains("## Warnings"), "{report}");
    let warned: Vec<&str> = report
        .lines()
        .filter(|l| l.contains("WARNING: train.seq_len"))
        .collect();
    assert_eq!(warned.len(), 1, "{report}");
    assert!(
        warned[0].contains("`extend@plain`")
            && warned[0].contains(
                "train.seq_len 256 is longer than the max_position_embeddings 64 of `base`"
            ),
        "{}",
        warned[0]
    );
    // Inside the run the report follows lineage (runs.parquet from the entries' key files).
    assert!(report.contains("| `runs`"), "{report}");
    assert!(
        !report.contains("| `runs`                 | missing"),
        "{report}"
    );
    let mut figures = 0;
    for entry in std::fs::read_dir(&results).unwrap().flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "png") {
            let decoder =
                png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&path).unwrap()));
            let info = decoder.read_info().unwrap();
            assert!(info.info().width >= 600, "{}", path.display());
            assert!(
                report.contains(&*path.file_name().unwrap().to_string_lossy()),
                "{} is not linked from report.md",
                path.display()
            );
            figures += 1;
        }
    }
    assert!(figures >= 8, "only {figures} figures");

    // No committed entry keeps its training checkpoints (removed after the commit).
    for entry in std::fs::read_dir(p.cache()).unwrap().flatten() {
        assert!(
            !entry.path().join("checkpoints").exists(),
            "{} kept its checkpoints",
            entry.path().display()
        );
    }

    // A second run builds nothing.
    let again = p.ok(&args);
    assert!(again.contains("0 built"), "{again}");
}
