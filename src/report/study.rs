//! The study report: reads whichever results tables a run produced and writes `report.md` with
//! PNG figures, tables and a findings section that states, for each of the paper's three
//! findings, what this run shows.
//!
//! [`write_report`] is the whole job; [`ReportOptions`] are its parameters (and those of the
//! `report` stage kind). Missing tables are reported, never fatal. The verdict rules are in
//! `findings` and docs/report.md.

mod data;
mod figures;
mod findings;
mod lineage;
mod options;
mod rope_view;
mod stats;

pub use data::TableStatus;
pub use findings::{Finding, SubTest, TestStats, Verdict};
pub use lineage::{Lineage, RunInfo};
pub use options::{
    Classifier, Group, ModelId, ReportOptions, compact_number, method_label, variant_of,
};

use crate::analysis::effective::effective_length;
use crate::eval::ppl::PplModeKind;
use crate::report::plots::{Scale, VLine};
use crate::report::tables::{Align, format_value, markdown_table};
use data::{GateOutcome, Metric, Study, cell, lengths_of};
use figures::{Figures, distance_lengths};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Why the report could not be written (missing or broken tables are not errors: the report
/// says what it could not show).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReportError {
    /// A report option is invalid.
    #[error("report option `{key}`: {message}")]
    Option { key: &'static str, message: String },
    /// The results directory does not exist.
    #[error("results directory {0} does not exist")]
    NoResults(PathBuf),
    /// The output directory or report.md could not be written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What [`write_report`] wrote and concluded.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportSummary {
    /// The Markdown report.
    pub report: PathBuf,
    /// PNG figures written, in order.
    pub figures: Vec<PathBuf>,
    /// Tables and their status (loaded with n rows, missing, unreadable).
    pub tables: Vec<(String, TableStatus)>,
    /// The three findings with verdicts.
    pub findings: Vec<Finding>,
    /// Figures that could not be drawn, with the reason.
    pub problems: Vec<String>,
}

/// Reads the tables in `results_dir` (`<table>.parquet` in the gathered layout, see
/// `crate::tables`) and writes `report.md` and PNG figures into `out_dir` (created if missing).
///
/// Errors: invalid options, a results directory that does not exist, or an unwritable output.
pub fn write_report(
    results_dir: &Path,
    out_dir: &Path,
    opts: &ReportOptions,
) -> Result<ReportSummary, ReportError> {
    opts.check()
        .map_err(|(key, message)| ReportError::Option { key, message })?;
    let classifier = options::Classifier::new(opts).map_err(|message| ReportError::Option {
        key: "base/ablation",
        message,
    })?;
    if !results_dir.is_dir() {
        return Err(ReportError::NoResults(results_dir.to_path_buf()));
    }
    std::fs::create_dir_all(out_dir).map_err(|source| ReportError::Io {
        path: out_dir.to_path_buf(),
        source,
    })?;
    let study = Study::load(results_dir, opts, classifier);
    let mut figs = Figures::new(out_dir);
    let found = [
        findings::finding1(&study, opts),
        findings::finding2(&study, opts),
        findings::finding3(&study, opts),
    ];

    let mut md = String::new();
    let _ = writeln!(md, "# {}\n", opts.title);
    // A report stage reads the tables it gathered inside the cache: that absolute path means
    // nothing to a reader, whereas the runner publishes the same tables beside the report.
    let source = if results_dir.is_relative() {
        format!("Results read from `{}`.", results_dir.display())
    } else {
        "Results read from the pipeline's gathered tables (the `<table>.parquet` files beside \
         this report in `results/<pipeline>/`)."
            .to_string()
    };
    let _ = writeln!(
        md,
        "{source} Figures are PNG files beside this report. Numbers are means over seeds, \
         `mean ± sd` (sample standard deviation) where a model has several seeds. Entropies and \
         divergences are in nats. How every number and verdict is computed: docs/report.md.\n"
    );
    inputs_section(&mut md, &study);
    warnings_section(&mut md, &study);
    findings_section(&mut md, &found);
    ppl_section(&mut md, &study, opts, &mut figs);
    needle_section(&mut md, &study, opts, &mut figs);
    rope_view::frequency_section(&mut md, &study, &mut figs);
    attention_section(&mut md, &study, &mut figs);
    entropy_error_section(&mut md, &study);
    training_section(&mut md, &study, &mut figs);
    ablation_section(&mut md, &study, opts, &mut figs);
    for (k, f) in found.iter().enumerate() {
        if !f.evidence.is_empty() {
            if k == 0 || found[..k].iter().all(|f| f.evidence.is_empty()) {
                let _ = writeln!(md, "## Evidence behind the findings\n");
            }
            let _ = writeln!(md, "### Finding {}\n\n{}", f.number, f.evidence);
        }
    }
    if !figs.problems.is_empty() {
        let _ = writeln!(md, "## Figures that could not be drawn\n");
        for p in &figs.problems {
            let _ = writeln!(md, "- {p}");
        }
        md.push('\n');
    }
    let report = out_dir.join("report.md");
    std::fs::write(&report, md.trim_end().to_string() + "\n").map_err(|source| {
        ReportError::Io {
            path: report.clone(),
            source,
        }
    })?;
    Ok(ReportSummary {
        report,
        figures: figs.written,
        tables: study
            .status
            .iter()
            .map(|(n, s)| (n.to_string(), s.clone()))
            .collect(),
        findings: found.to_vec(),
        problems: figs.problems,
    })
}

/// What the gathered instances warned about while they ran (a training length beyond the
/// RoPE's): printed once in the log, repeated here so that a reader of the results sees it.
fn warnings_section(md: &mut String, study: &Study) {
    if study.warnings.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "## Warnings
"
    );
    let rows: Vec<Vec<String>> = study
        .warnings
        .iter()
        .map(|w| vec![format!("`{}`", w.instance), w.row.message.clone()])
        .collect();
    md.push_str(&markdown_table(
        &["instance".into(), "warning".into()],
        &rows,
        &[Align::Left, Align::Left],
    ));
    md.push('\n');
}

fn inputs_section(md: &mut String, study: &Study) {
    let _ = writeln!(md, "## Inputs\n");
    let rows: Vec<Vec<String>> = study
        .status
        .iter()
        .map(|(name, s)| {
            vec![
                format!("`{name}`"),
                match s {
                    TableStatus::Loaded(n) => format!("{n} rows"),
                    TableStatus::Missing(_) => "missing".into(),
                    TableStatus::Unreadable(e) => format!("unreadable: {e}"),
                },
            ]
        })
        .collect();
    md.push_str(&markdown_table(
        &["table".into(), "status".into()],
        &rows,
        &[Align::Left, Align::Left],
    ));
    md.push('\n');
    match &study.pretrained_length {
        Some((l, src)) => {
            let _ = writeln!(md, "Pretrained length: {l} tokens ({src}).\n");
        }
        None => {
            let _ = writeln!(
                md,
                "Pretrained length: unknown (no base `train_log` and no `pretrained_length` \
                 option).\n"
            );
        }
    }
    if study.models.is_empty() {
        let _ = writeln!(md, "No model rows were found in any table.\n");
        return;
    }
    let rows: Vec<Vec<String>> = study
        .models
        .iter()
        .map(|m| {
            vec![
                m.label.clone(),
                match m.id.group {
                    Group::Base => "base",
                    Group::Method => "method",
                    Group::Ablation => "ablation",
                }
                .into(),
                if m.seeds.is_empty() {
                    "–".into()
                } else {
                    m.seeds
                        .iter()
                        .map(|s| s.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                },
                match m.ft_length {
                    Some(l) => format!("{l} ({})", m.ft_source),
                    None if m.id.group == Group::Base => "–".into(),
                    None if m.training_free => "training-free".into(),
                    None => "unknown".into(),
                },
                m.stages
                    .iter()
                    .map(|s| format!("`{s}`"))
                    .collect::<Vec<_>>()
                    .join(", "),
            ]
        })
        .collect();
    md.push_str(&markdown_table(
        &["model", "group", "seeds", "fine-tuning length", "stages"].map(String::from),
        &rows,
        &[Align::Left; 5],
    ));
    md.push('\n');
    for m in &study.models {
        if let Some(other) = &m.shared_with {
            let _ = writeln!(
                md,
                "{} is the same instance as {} (equal cache keys in `runs.parquet`): it is \
                 counted once in the findings and drawn once.\n",
                m.label,
                study.label(other)
            );
        }
    }
    gate_section(md, study);
}

/// The adaptation gate: which (model, seed)s enter the findings.
fn gate_section(md: &mut String, study: &Study) {
    let _ = writeln!(md, "### Adaptation gate\n");
    if study.gate_threshold <= 0.0 {
        let _ = writeln!(
            md,
            "Disabled (`adaptation_gate = 0`): every model enters the tests.\n"
        );
        return;
    }
    let pre = study.pretrained_length.as_ref().map(|p| p.0);
    let t = study.gate_threshold;
    let _ = writeln!(
        md,
        "A fine-tuned model enters the findings' tests only where its needle accuracy is at \
         least {t} both at the pretrained length{} and at its own fine-tuning length (it has \
         learnt its new positions and kept retrieval); the base only where it reaches {t} at \
         the pretrained length (a solid base). Models that fail are listed as *not adapted* \
         (*not solid*) and left out of every test.\n",
        pre.map(|p| format!(" {p}")).unwrap_or_default()
    );
    if study
        .gate
        .iter()
        .any(|g| g.outcome == GateOutcome::TrainingFree)
    {
        let _ = writeln!(
            md,
            "Training-free extensions (the pretrained weights with only their RoPE changed; \
             the run's lineage shows no training) are not gated: nothing was trained, so a loss \
             of retrieval at L is the method's own effect, which the findings measure, not an \
             unfinished fine-tune. Their accuracy at L is shown.\n"
        );
    }
    let rows: Vec<Vec<String>> = study
        .gate
        .iter()
        .map(|g| {
            let base = g.id.group == Group::Base;
            vec![
                study.label(&g.id),
                g.seed.map(|s| s.to_string()).unwrap_or_else(|| "–".into()),
                format_value(g.at_pretrained, 3),
                match g.at_finetune {
                    Some((l, a)) => format!("{} at {l}", format_value(a, 3)),
                    None => "–".into(),
                },
                match (g.outcome, base) {
                    (GateOutcome::Passed, false) => "adapted",
                    (GateOutcome::Failed, false) => "**not adapted**",
                    (GateOutcome::Passed, true) => "solid",
                    (GateOutcome::Failed, true) => "**not solid**",
                    (GateOutcome::NotChecked, _) => "not checked (no needle rows at the length)",
                    (GateOutcome::TrainingFree, _) => "training-free: not gated",
                }
                .into(),
            ]
        })
        .collect();
    if rows.is_empty() {
        let _ = writeln!(md, "No model to check.\n");
        return;
    }
    md.push_str(&markdown_table(
        &[
            "model",
            "seed",
            "accuracy at L",
            "accuracy at fine-tuning length",
            "gate",
        ]
        .map(String::from),
        &rows,
        &[
            Align::Left,
            Align::Right,
            Align::Right,
            Align::Right,
            Align::Left,
        ],
    ));
    let failed = study
        .gate
        .iter()
        .filter(|g| g.outcome == GateOutcome::Failed)
        .count();
    let _ = writeln!(
        md,
        "\n{failed} of {} (model, seed) instances fail the gate and are excluded from the \
         findings' tests.\n",
        study.gate.len()
    );
}

fn findings_section(md: &mut String, found: &[Finding]) {
    let _ = writeln!(
        md,
        "## Findings\n\nEach verdict follows a fixed rule (docs/report.md): two-sided tests \
         within seed (findings 1 and 3: mean within-seed Spearman ρ, permutations within each \
         seed; finding 2: AUROC with pairs inside one model instance and context length, \
         bootstrap over needle cells), Holm-corrected over a finding's sub-tests. \
         *Reproduces* and *does not reproduce* both need an adjusted p ≤ α; *not testable with \
         this design* means no data could have reached α. Only models that passed the \
         adaptation gate (Inputs) enter the tests.\n"
    );
    for f in found {
        let _ = writeln!(
            md,
            "### Finding {}: {}\n\n**Verdict: {}.** {}\n",
            f.number,
            f.claim,
            f.verdict,
            capitalise(&f.summary)
        );
        // A finding with one test states it in its summary already.
        let listed: Vec<&SubTest> = f
            .subtests
            .iter()
            .filter(|s| s.reason != f.summary)
            .collect();
        for s in &listed {
            let _ = writeln!(md, "- {} — {}", s.name, s.reason);
        }
        if !listed.is_empty() {
            md.push('\n');
        }
    }
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

/// A model x length table of `mean ± sd` over seeds, the best mean per column in bold.
fn spread_table(
    study: &Study,
    metric: &Metric,
    ids: &[&ModelId],
    decimals: usize,
    lower_is_better: Option<bool>,
) -> String {
    let lengths = lengths_of(metric, ids);
    let ids: Vec<&ModelId> = ids
        .iter()
        .copied()
        .filter(|id| metric.contains_key(*id))
        .collect();
    let best: Vec<Option<String>> = lengths
        .iter()
        .map(|l| {
            let means = ids
                .iter()
                .map(|id| cell(metric, id, *l))
                .filter(|v| !v.is_empty())
                .map(|v| stats::mean(&v));
            let b = match lower_is_better {
                Some(true) => means.reduce(f64::min),
                Some(false) => means.reduce(f64::max),
                None => None,
            };
            b.map(|b| format_value(Some(b), decimals))
        })
        .collect();
    let rows: Vec<Vec<String>> = ids
        .iter()
        .map(|id| {
            std::iter::once(study.label(id))
                .chain(lengths.iter().zip(&best).map(|(l, b)| {
                    let v = cell(metric, id, *l);
                    let text = stats::format_spread(&v, decimals);
                    let m = (!v.is_empty()).then(|| format_value(Some(stats::mean(&v)), decimals));
                    if m.is_some() && m == *b {
                        format!("**{text}**")
                    } else {
                        text
                    }
                }))
                .collect()
        })
        .collect();
    let header: Vec<String> = std::iter::once("model".to_string())
        .chain(lengths.iter().map(|l| l.to_string()))
        .collect();
    let align: Vec<Align> = std::iter::once(Align::Left)
        .chain(lengths.iter().map(|_| Align::Right))
        .collect();
    markdown_table(&header, &rows, &align)
}

/// Dashed lines at the pretrained length and each fine-tuning length of `group`.
fn length_lines(study: &Study, group: Group) -> Vec<VLine> {
    let mut lines = Vec::new();
    if let Some((l, _)) = &study.pretrained_length {
        lines.push(VLine::new(*l as f64, format!("pretrained {l}")));
    }
    let fts: std::collections::BTreeSet<i64> = study
        .group(group)
        .iter()
        .filter_map(|m| m.ft_length)
        .collect();
    for l in fts {
        if study.pretrained_length.as_ref().map(|p| p.0) != Some(l) {
            lines.push(VLine::new(l as f64, format!("fine-tuned {l}")));
        }
    }
    lines
}

fn main_ids(study: &Study) -> Vec<&ModelId> {
    study
        .models
        .iter()
        .filter(|m| m.id.group != Group::Ablation)
        .map(|m| &m.id)
        .collect()
}

/// Writes a section's heading, and when `table` is absent the reason instead of a body:
/// whether the section has anything to show.
fn section_heading(md: &mut String, study: &Study, heading: &str, table: &str) -> bool {
    let _ = writeln!(md, "{heading}\n");
    match study.absence(table) {
        Some(why) => {
            let _ = writeln!(md, "Not shown: {why}.\n");
            false
        }
        None => true,
    }
}

fn ppl_section(md: &mut String, study: &Study, opts: &ReportOptions, figs: &mut Figures) {
    if !section_heading(md, study, "## Perplexity", "ppl") {
        return;
    }
    let ids = main_ids(study);
    let lines = length_lines(study, Group::Method);
    let mut modes: Vec<&str> = study.ppl.iter().map(|r| r.row.mode.as_str()).collect();
    modes.sort_unstable();
    modes.dedup();
    // The findings' mode first.
    modes.sort_by_key(|m| *m != opts.ppl_mode.as_str());
    for mode in modes {
        let metric = study.ppl_metric(mode, false);
        if let Some(img) = figs.metric_vs_length(
            study,
            &metric,
            &ids,
            &format!("Perplexity vs context length ({mode})"),
            "perplexity (log scale)",
            Scale::Log10,
            &lines,
            &format!("ppl_vs_length_{mode}"),
        ) {
            md.push_str(&img);
            md.push('\n');
        }
        let scored = PplModeKind::from_name(mode)
            .map(|m| format!(": {}", m.what_is_scored()))
            .unwrap_or_default();
        let _ = writeln!(
            md,
            "Perplexity by model and context length, mode `{mode}`{scored} (token-weighted \
             over documents; lowest in bold):\n"
        );
        md.push_str(&spread_table(study, &metric, &ids, 2, Some(true)));
        md.push('\n');
        let copy = study.ppl_metric(mode, true);
        if !copy.is_empty() {
            if let Some(img) = figs.metric_vs_length(
                study,
                &copy,
                &ids,
                &format!("Copy perplexity of long-range recall tokens ({mode})"),
                "copy perplexity (log scale)",
                Scale::Log10,
                &lines,
                &format!("copy_ppl_vs_length_{mode}"),
            ) {
                md.push_str(&img);
                md.push('\n');
            }
            let _ = writeln!(
                md,
                "Copy perplexity (`exp(recall_nll)`, the recalled tokens only), mode `{mode}`:\n"
            );
            md.push_str(&spread_table(study, &copy, &ids, 2, Some(true)));
            md.push('\n');
        }
    }
}

fn needle_section(md: &mut String, study: &Study, opts: &ReportOptions, figs: &mut Figures) {
    if !section_heading(md, study, "## Needle retrieval", "needle") {
        return;
    }
    let ids: Vec<&ModelId> = study.models.iter().map(|m| &m.id).collect();
    let _ = writeln!(
        md,
        "Accuracy by model and context length (pass = `exact`, or `substring` where `exact` is \
         null; over tasks, depths and trials; highest in bold):\n"
    );
    md.push_str(&spread_table(
        study,
        &study.needle_accuracy(),
        &ids,
        3,
        Some(false),
    ));
    md.push('\n');
    let entropy = study.needle_entropy();
    if !entropy.is_empty() {
        let _ = writeln!(md, "Mean attention entropy while answering (nats):\n");
        md.push_str(&spread_table(study, &entropy, &ids, 3, None));
        md.push('\n');
    }
    // The dashed line is drawn only for a model with a fine-tuning length.
    let dashed = match study.models.iter().any(|m| m.ft_length.is_some()) {
        true => "; the dashed line follows the fine-tuning length",
        false => "",
    };
    let _ = writeln!(
        md,
        "Heatmaps: x = context length, y = needle depth (% of the haystack, 0 = farthest from \
         the question), colour = pass rate (viridis: dark purple 0, yellow 1; colour-blind safe), \
         cell text = mean entropy (nats){dashed}.\n"
    );
    for img in figs.needle_heatmaps(study) {
        md.push_str(&img);
        md.push('\n');
    }
    effective_length_table(md, study, &ids, opts.effective_length_threshold);
}

/// RULER's effective length per model and seed: the longest tested length up to which needle
/// accuracy stays at or above `threshold`.
fn effective_length_table(md: &mut String, study: &Study, ids: &[&ModelId], threshold: f64) {
    let acc = study.needle_accuracy();
    let seeds: BTreeSet<Option<i64>> = acc
        .values()
        .flat_map(|l| l.values().flat_map(|s| s.keys().copied()))
        .collect();
    let rows: Vec<Vec<String>> = ids
        .iter()
        .filter_map(|id| {
            let by_len = acc.get(*id)?;
            let cells = seeds.iter().map(|seed| {
                let curve: BTreeMap<i64, f64> = by_len
                    .iter()
                    .filter_map(|(l, s)| s.get(seed).map(|a| (*l, *a)))
                    .collect();
                effective_length(&curve, threshold)
                    .map(|e| e.to_string())
                    .unwrap_or_default()
            });
            Some(std::iter::once(study.label(id)).chain(cells).collect())
        })
        .collect();
    if rows.is_empty() {
        return;
    }
    let header: Vec<String> = std::iter::once("model".to_string())
        .chain(seeds.iter().map(|s| match s {
            Some(s) => format!("seed {s}"),
            None => "all".to_string(),
        }))
        .collect();
    let align: Vec<Align> = std::iter::once(Align::Left)
        .chain(seeds.iter().map(|_| Align::Right))
        .collect();
    let _ = writeln!(
        md,
        "Effective length (RULER's measure): the longest tested length up to which needle \
         accuracy stays at or above {threshold} (the `effective_length_threshold` option), read \
         from the shortest length upwards and stopping at the first length below it; `≥` when \
         every tested length passes, `<` when the shortest already fails. One number per model \
         and seed:\n"
    );
    md.push_str(&markdown_table(&header, &rows, &align));
    md.push('\n');
}

fn attention_section(md: &mut String, study: &Study, figs: &mut Figures) {
    let _ = writeln!(md, "## Attention\n");
    let ids = main_ids(study);
    if section_heading(
        md,
        study,
        "### Attention by relative distance",
        "attention_distance",
    ) {
        let lengths = distance_lengths(study);
        if lengths.is_empty() {
            let _ = writeln!(md, "No measured length to show.\n");
        }
        for l in lengths {
            if let Some(img) = figs.distance_at(study, &ids, l) {
                md.push_str(&img);
                md.push('\n');
            }
        }
    }
    if section_heading(
        md,
        study,
        "### JS divergence from the base model (Table 1)",
        "attention_divergence",
    ) {
        let mut refs: Vec<String> = study
            .attention_divergence
            .iter()
            .map(|r| {
                format!(
                    "`{}` at {}",
                    r.row.reference_instance, r.row.reference_length
                )
            })
            .collect();
        refs.sort();
        refs.dedup();
        let _ = writeln!(
            md,
            "Jensen-Shannon divergence (nats, at most ln 2 = 0.693) of each model's mean \
             attention-by-distance profile against {}, over the distance buckets both cover; \
             lower keeps the pretrained pattern (lowest in bold):\n",
            refs.join(", ")
        );
        md.push_str(&spread_table(
            study,
            &study.js_metric(),
            &ids,
            4,
            Some(true),
        ));
        md.push('\n');
    }
    let _ = writeln!(md, "### Attention entropy vs length\n");
    let (metric, what) = if study.has("attention_entropy") {
        (
            study.attention_entropy_metric(),
            "mean attention entropy over layers, heads and query positions (`attention_entropy`)",
        )
    } else {
        (
            study.needle_entropy(),
            "mean attention entropy while answering needle prompts (`needle`; \
             `attention_entropy` is missing)",
        )
    };
    if metric.is_empty() {
        let why = study.absence("attention_entropy").unwrap_or_default();
        let _ = writeln!(md, "Not shown: {why}, and `needle` has no entropy.\n");
        return;
    }
    if let Some(img) = figs.metric_vs_length(
        study,
        &metric,
        &ids,
        "Attention entropy vs context length",
        "entropy (nats)",
        Scale::Linear,
        &length_lines(study, Group::Method),
        "entropy_vs_length",
    ) {
        md.push_str(&img);
        md.push('\n');
    }
    let _ = writeln!(md, "Entropy: {what}.\n");
    md.push_str(&spread_table(study, &metric, &ids, 3, None));
    md.push('\n');
}

fn entropy_error_section(md: &mut String, study: &Study) {
    if !section_heading(md, study, "## Entropy vs error", "entropy_vs_error") {
        return;
    }
    let ci = |v: Option<f64>, lo: Option<f64>, hi: Option<f64>| match (v, lo, hi) {
        (Some(v), Some(lo), Some(hi)) => format!("{v:.3} [{lo:.3}, {hi:.3}]"),
        (Some(v), _, _) => format!("{v:.3}"),
        _ => "–".into(),
    };
    let rows: Vec<Vec<String>> = study
        .entropy_vs_error
        .iter()
        .map(|r| {
            let e = &r.row;
            vec![
                study.label(&study.model_of(r)),
                r.seed()
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "–".into()),
                e.task.clone(),
                e.n.to_string(),
                e.failures.to_string(),
                format_value(e.mean_entropy_pass, 3),
                format_value(e.mean_entropy_fail, 3),
                ci(e.auroc, e.auroc_lo, e.auroc_hi),
                ci(e.point_biserial, e.point_biserial_lo, e.point_biserial_hi),
                e.note.clone().unwrap_or_default(),
            ]
        })
        .collect();
    let _ = writeln!(
        md,
        "As the `eval_needle` stage wrote it: AUROC of attention entropy predicting a failed \
         trial, and the point-biserial correlation, with 95% bootstrap intervals, **pooled over \
         context lengths** (so longer contexts, with both more entropy and more failures, \
         inflate it; finding 2 uses the within-length form instead):\n"
    );
    md.push_str(&markdown_table(
        &[
            "model",
            "seed",
            "task",
            "n",
            "failures",
            "H pass",
            "H fail",
            "AUROC [95% CI]",
            "r_pb [95% CI]",
            "note",
        ]
        .map(String::from),
        &rows,
        &[
            Align::Left,
            Align::Right,
            Align::Left,
            Align::Right,
            Align::Right,
            Align::Right,
            Align::Right,
            Align::Right,
            Align::Right,
            Align::Left,
        ],
    ));
    md.push('\n');
}

fn training_section(md: &mut String, study: &Study, figs: &mut Figures) {
    if !section_heading(md, study, "## Training", "train_log") {
        return;
    }
    let base: Vec<&ModelId> = study.group(Group::Base).iter().map(|m| &m.id).collect();
    let tuned: Vec<&ModelId> = study
        .models
        .iter()
        .filter(|m| m.id.group != Group::Base)
        .map(|m| &m.id)
        .collect();
    for (ids, title, stem) in [
        (&base, "Pretraining loss", "train_loss_pretrain"),
        (&tuned, "Fine-tuning loss", "train_loss_finetune"),
    ] {
        if let Some(img) = figs.loss_curves(study, ids, title, stem, false) {
            md.push_str(&img);
            md.push('\n');
        }
    }
    if study.has("val_log") {
        let all: Vec<&ModelId> = study.models.iter().map(|m| &m.id).collect();
        if let Some(img) = figs.loss_curves(study, &all, "Validation loss", "val_loss", true) {
            md.push_str(&img);
            md.push('\n');
        }
    }
    // Final logged loss, tokens and throughput per model (over seeds).
    let rows: Vec<Vec<String>> = study
        .models
        .iter()
        .filter_map(|m| {
            let mut last: std::collections::BTreeMap<Option<i64>, &crate::tables::TrainLogRow> =
                Default::default();
            for r in study.train_log.iter().filter(|r| study.model_of(r) == m.id) {
                let e = last.entry(r.seed()).or_insert(&r.row);
                if r.row.step > e.step {
                    *e = &r.row;
                }
            }
            if last.is_empty() {
                return None;
            }
            let vals = |f: &dyn Fn(&crate::tables::TrainLogRow) -> f64| -> Vec<f64> {
                last.values().map(|r| f(r)).collect()
            };
            let mut val_last: std::collections::BTreeMap<Option<i64>, (i64, f64)> =
                Default::default();
            for r in study.val_log.iter().filter(|r| study.model_of(r) == m.id) {
                let e = val_last
                    .entry(r.seed())
                    .or_insert((r.row.step, r.row.val_loss));
                if r.row.step >= e.0 {
                    *e = (r.row.step, r.row.val_loss);
                }
            }
            let val: Vec<f64> = val_last.values().map(|v| v.1).collect();
            // Counts that every seed shares print once, without a zero spread.
            let count = |v: Vec<f64>| {
                if v.windows(2).all(|w| w[0] == w[1]) {
                    format_value(v.first().copied(), 0)
                } else {
                    stats::format_spread(&v, 0)
                }
            };
            Some(vec![
                m.label.clone(),
                count(vals(&|r| r.seq_len as f64)),
                count(vals(&|r| r.step as f64)),
                count(vals(&|r| r.tokens as f64)),
                stats::format_spread(&vals(&|r| r.loss), 3),
                stats::format_spread(&val, 3),
                stats::format_spread(&vals(&|r| r.tokens_per_s), 0),
                stats::format_spread(&vals(&|r| r.elapsed_s), 1),
            ])
        })
        .collect();
    let _ = writeln!(md, "Last logged step per model:\n");
    md.push_str(&markdown_table(
        &[
            "model",
            "seq_len",
            "steps",
            "tokens",
            "final loss",
            "final val loss",
            "tokens/s",
            "seconds",
        ]
        .map(String::from),
        &rows,
        &[
            Align::Left,
            Align::Right,
            Align::Right,
            Align::Right,
            Align::Right,
            Align::Right,
            Align::Right,
            Align::Right,
        ],
    ));
    md.push('\n');
}

fn ablation_section(md: &mut String, study: &Study, opts: &ReportOptions, figs: &mut Figures) {
    let _ = writeln!(md, "## Fine-tuning-length ablation\n");
    let arms: Vec<&ModelId> = study.group(Group::Ablation).iter().map(|m| &m.id).collect();
    if arms.is_empty() {
        let _ = writeln!(
            md,
            "Not shown: no rows from {}.\n",
            study.ablation_rule(opts)
        );
        return;
    }
    let lines = length_lines(study, Group::Ablation);
    let ppl = study.ppl_metric(opts.ppl_mode.as_str(), false);
    if !ppl.is_empty() {
        if let Some(img) = figs.metric_vs_length(
            study,
            &ppl,
            &arms,
            &format!("Ablation: perplexity vs context length ({})", opts.ppl_mode),
            "perplexity (log scale)",
            Scale::Log10,
            &lines,
            "ablation_ppl_vs_length",
        ) {
            md.push_str(&img);
            md.push('\n');
        }
        let _ = writeln!(md, "Perplexity (`{}`):\n", opts.ppl_mode);
        md.push_str(&spread_table(study, &ppl, &arms, 2, Some(true)));
        md.push('\n');
    }
    let copy = study.ppl_metric(opts.ppl_mode.as_str(), true);
    if !copy.is_empty() {
        let _ = writeln!(md, "Copy perplexity (`{}`):\n", opts.ppl_mode);
        md.push_str(&spread_table(study, &copy, &arms, 2, Some(true)));
        md.push('\n');
    }
    let acc = study.needle_accuracy();
    if !acc.is_empty() {
        let _ = writeln!(md, "Needle accuracy:\n");
        md.push_str(&spread_table(study, &acc, &arms, 3, Some(false)));
        md.push('\n');
    }
    let entropy = if study.has("attention_entropy") {
        study.attention_entropy_metric()
    } else {
        study.needle_entropy()
    };
    if !entropy.is_empty() {
        if let Some(img) = figs.metric_vs_length(
            study,
            &entropy,
            &arms,
            "Ablation: attention entropy vs context length",
            "entropy (nats)",
            Scale::Linear,
            &lines,
            "ablation_entropy_vs_length",
        ) {
            md.push_str(&img);
            md.push('\n');
        }
        let _ = writeln!(md, "Attention entropy (nats):\n");
        md.push_str(&spread_table(study, &entropy, &arms, 3, Some(true)));
        md.push('\n');
    }
}
