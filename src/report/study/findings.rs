//! The verdicts on the paper's three findings, each computed from the numbers by a fixed,
//! documented rule (docs/report.md, "Findings").
//!
//! Findings 1 and 3 are associations across models, tested with Spearman's rank correlation and
//! a one-sided exact (or seeded Monte Carlo) permutation test in the direction the paper claims.
//! A sub-test **reproduces** when rho has the claimed sign and `p <= alpha`; it **does not
//! reproduce** when rho has the other sign or is 0; it is **inconclusive** with fewer than 4
//! observations or when rho has the claimed sign but `p > alpha`. A finding reproduces when at
//! least one sub-test does and none contradicts it, does not reproduce when at least one
//! contradicts and none reproduces, and is otherwise inconclusive.
//!
//! Finding 2 reads each model's AUROC interval of entropy predicting failure: it reproduces when
//! at least half of the models with a defined AUROC have an interval above 0.5 and none below;
//! it does not reproduce when none is above and (some is below 0.5 or the median AUROC is at most
//! 0.5); otherwise it is inconclusive.

use super::data::{Metric, Study, passed};
use super::options::{Group, ModelId, ReportOptions};
use super::stats::{RankTest, rank_test};
use crate::analysis::auroc::{BootstrapConfig, score_vs_outcome};
use crate::report::tables::{Align, format_value, markdown_table};
use std::collections::BTreeMap;
use std::fmt;

/// The outcome of a finding or a sub-test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The data show the paper's effect at the chosen significance.
    Reproduces,
    /// The data show no effect or the opposite one.
    DoesNotReproduce,
    /// The direction may agree but the evidence is too weak, or sub-tests disagree.
    Inconclusive,
    /// A table or setting the test needs is absent.
    NotTestable,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Reproduces => "reproduces",
            Verdict::DoesNotReproduce => "does not reproduce",
            Verdict::Inconclusive => "inconclusive",
            Verdict::NotTestable => "not testable",
        })
    }
}

/// One rank-correlation test of a finding.
#[derive(Debug, Clone, PartialEq)]
pub struct SubTest {
    /// What is correlated with what, e.g. "JS divergence vs PPL beyond 512".
    pub name: String,
    /// The verdict of this test.
    pub verdict: Verdict,
    /// Why, with the numbers.
    pub reason: String,
    /// The test, when it ran.
    pub test: Option<RankTest>,
}

/// A finding's verdict and its evidence.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    /// 1, 2 or 3.
    pub number: u8,
    /// The paper's claim.
    pub claim: &'static str,
    /// The overall verdict.
    pub verdict: Verdict,
    /// One sentence with the numbers.
    pub summary: String,
    /// The sub-tests (findings 1 and 3).
    pub subtests: Vec<SubTest>,
    /// Markdown with the observations behind the verdict.
    pub evidence: String,
}

/// Minimum observations for a rank test to count.
const MIN_N: usize = 4;

/// Observations of one model per seed, or per model when seeds do not pair up.
type Obs = BTreeMap<(ModelId, Option<i64>), f64>;

/// Paired observations: model, seed (`None` for model means), x, y.
type Pairs = Vec<(ModelId, Option<i64>, f64, f64)>;

/// Pairs two per-(model, seed) value sets. Seed-level pairs are used when they cover every model
/// that the model-level (seed-averaged) pairing covers; otherwise model means.
fn pair(x: &Obs, y: &Obs) -> (Pairs, &'static str) {
    let seed_level: Vec<(ModelId, Option<i64>, f64, f64)> = x
        .iter()
        .filter_map(|(k, vx)| y.get(k).map(|vy| (k.0.clone(), k.1, *vx, *vy)))
        .collect();
    let means = |o: &Obs| {
        let mut m: BTreeMap<ModelId, (f64, f64)> = BTreeMap::new();
        for ((id, _), v) in o {
            let e = m.entry(id.clone()).or_default();
            e.0 += v;
            e.1 += 1.0;
        }
        m.into_iter()
            .map(|(k, (s, n))| (k, s / n))
            .collect::<BTreeMap<_, _>>()
    };
    let (mx, my) = (means(x), means(y));
    let model_level: Vec<(ModelId, Option<i64>, f64, f64)> = mx
        .iter()
        .filter_map(|(k, vx)| my.get(k).map(|vy| (k.clone(), None, *vx, *vy)))
        .collect();
    let seed_models: std::collections::BTreeSet<&ModelId> =
        seed_level.iter().map(|o| &o.0).collect();
    if !seed_level.is_empty() && seed_models.len() == model_level.len() {
        (seed_level, "model x seed")
    } else {
        (model_level, "model (seed means)")
    }
}

/// A rank test of `x` against `y` across models in the claimed direction `sign`.
#[allow(clippy::too_many_arguments)]
fn sub_test(
    study: &Study,
    opts: &ReportOptions,
    name: String,
    x: &Obs,
    y: &Obs,
    sign: f64,
    decimals: (usize, usize),
    headers: (&str, &str),
    evidence: &mut String,
) -> SubTest {
    let (mut obs, unit) = pair(x, y);
    // Report order (base, methods as first seen, ablation arms by length), then seed.
    let rank = |id: &ModelId| study.models.iter().position(|m| &m.id == id);
    obs.sort_by(|a, b| rank(&a.0).cmp(&rank(&b.0)).then(a.1.cmp(&b.1)));
    let claimed = if sign > 0.0 { "positive" } else { "negative" };
    if obs.is_empty() {
        return SubTest {
            name,
            verdict: Verdict::NotTestable,
            reason: "no model has both numbers".into(),
            test: None,
        };
    }
    evidence.push_str(&format!("\n{name} (one row per {unit}):\n\n"));
    let rows: Vec<Vec<String>> = obs
        .iter()
        .map(|(id, seed, vx, vy)| {
            vec![
                study.label(id),
                seed.map(|s| s.to_string()).unwrap_or_else(|| "–".into()),
                format_value(Some(*vx), decimals.0),
                format_value(Some(*vy), decimals.1),
            ]
        })
        .collect();
    evidence.push_str(&markdown_table(
        &[
            "model".into(),
            "seed".into(),
            headers.0.into(),
            headers.1.into(),
        ],
        &rows,
        &[Align::Left, Align::Right, Align::Right, Align::Right],
    ));
    let xs: Vec<f64> = obs.iter().map(|o| o.2).collect();
    let ys: Vec<f64> = obs.iter().map(|o| o.3).collect();
    let n = obs.len();
    let Some(t) = rank_test(&xs, &ys, sign, opts.resamples, opts.bootstrap_seed) else {
        return SubTest {
            name,
            verdict: Verdict::Inconclusive,
            reason: format!("inconclusive: rank correlation undefined (no variation), n = {n}"),
            test: None,
        };
    };
    let p = if t.p < 0.001 {
        "p < 0.001".to_string()
    } else {
        format!("p = {:.3}", t.p)
    };
    let stats = format!(
        "Spearman ρ = {:.2}, n = {n}, one-sided {p}{}",
        t.rho,
        if t.exact {
            " (exact)"
        } else {
            " (permutation)"
        }
    );
    let (verdict, reason) = if n < MIN_N {
        (
            Verdict::Inconclusive,
            format!("inconclusive (n too small: {n} < {MIN_N}): {stats}"),
        )
    } else if sign * t.rho <= 0.0 {
        (
            Verdict::DoesNotReproduce,
            format!("does not reproduce: the claimed correlation is {claimed}, observed {stats}"),
        )
    } else if t.p <= opts.alpha {
        (
            Verdict::Reproduces,
            format!("reproduces: {stats}, α = {}", opts.alpha),
        )
    } else {
        (
            Verdict::Inconclusive,
            format!(
                "inconclusive: {claimed} as claimed but p > α = {}: {stats}",
                opts.alpha
            ),
        )
    };
    SubTest {
        name,
        verdict,
        reason,
        test: Some(t),
    }
}

/// The overall verdict of sub-tests (see the module doc).
fn combine(subtests: &[SubTest]) -> Verdict {
    let count = |v: Verdict| subtests.iter().filter(|s| s.verdict == v).count();
    let (yes, no) = (count(Verdict::Reproduces), count(Verdict::DoesNotReproduce));
    if subtests.iter().all(|s| s.verdict == Verdict::NotTestable) {
        Verdict::NotTestable
    } else if yes > 0 && no == 0 {
        Verdict::Reproduces
    } else if no > 0 && yes == 0 {
        Verdict::DoesNotReproduce
    } else {
        Verdict::Inconclusive
    }
}

/// Per (model, seed), the geometric mean of a positive metric (perplexity) or the mean (others)
/// over `lengths`; models missing a length for a seed are left out for that seed.
fn over_lengths(m: &Metric, ids: &[&ModelId], lengths: &[i64], geometric: bool) -> Obs {
    let mut out = Obs::new();
    for id in ids {
        let Some(by_len) = m.get(*id) else { continue };
        let Some(first) = lengths.first().and_then(|l| by_len.get(l)) else {
            continue;
        };
        for seed in first.keys() {
            let vals: Option<Vec<f64>> = lengths
                .iter()
                .map(|l| by_len.get(l).and_then(|s| s.get(seed)).copied())
                .collect();
            if let Some(vals) = vals.filter(|v| !v.is_empty()) {
                let v = if geometric {
                    (vals.iter().map(|v| v.ln()).sum::<f64>() / vals.len() as f64).exp()
                } else {
                    vals.iter().sum::<f64>() / vals.len() as f64
                };
                out.insert(((*id).clone(), *seed), v);
            }
        }
    }
    out
}

/// Lengths above `limit` measured for every one of `ids` that has the metric at all.
fn common_lengths_above(m: &Metric, ids: &[&ModelId], limit: i64) -> Vec<i64> {
    let present: Vec<&ModelId> = ids
        .iter()
        .copied()
        .filter(|id| m.contains_key(*id))
        .collect();
    let Some(first) = present.first().and_then(|id| m.get(*id)) else {
        return Vec::new();
    };
    first
        .keys()
        .copied()
        .filter(|l| *l > limit && present.iter().all(|id| m[*id].contains_key(l)))
        .collect()
}

fn lengths_text(ls: &[i64]) -> String {
    ls.iter()
        .map(|l| l.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The extrapolation sub-tests shared by findings 1 and 3: `x` against PPL, copy PPL and
/// needle accuracy beyond `limit`.
#[allow(clippy::too_many_arguments)]
fn extrapolation_tests(
    study: &Study,
    opts: &ReportOptions,
    ids: &[&ModelId],
    x: &Obs,
    x_name: &str,
    x_sign: f64,
    x_decimals: usize,
    limit: i64,
    evidence: &mut String,
) -> Vec<SubTest> {
    let mut out = Vec::new();
    let metrics: [(&str, Metric, bool, f64, &str); 3] = [
        (
            "PPL",
            study.ppl_metric(&opts.ppl_mode, false),
            true,
            1.0,
            "`ppl`",
        ),
        (
            "copy PPL",
            study.ppl_metric(&opts.ppl_mode, true),
            true,
            1.0,
            "`ppl.recall_nll`",
        ),
        (
            "needle accuracy",
            study.needle_accuracy(),
            false,
            -1.0,
            "`needle`",
        ),
    ];
    for (what, m, geometric, sign, table) in metrics {
        let name = format!("{x_name} vs {what} beyond {limit}");
        if m.is_empty() {
            // Copy PPL is optional: a corpus without recall tokens simply has none.
            if what != "copy PPL" {
                out.push(SubTest {
                    name,
                    verdict: Verdict::NotTestable,
                    reason: format!("not testable: {table} has no rows for these models"),
                    test: None,
                });
            }
            continue;
        }
        let lengths = common_lengths_above(&m, ids, limit);
        if lengths.is_empty() {
            out.push(SubTest {
                name,
                verdict: Verdict::NotTestable,
                reason: format!(
                    "not testable: no {what} length above {limit} common to these models"
                ),
                test: None,
            });
            continue;
        }
        let y = over_lengths(&m, ids, &lengths, geometric);
        let label = if geometric {
            format!("{what} (geo. mean over {})", lengths_text(&lengths))
        } else {
            format!("{what} (mean over {})", lengths_text(&lengths))
        };
        out.push(sub_test(
            study,
            opts,
            name,
            x,
            &y,
            x_sign * sign,
            (x_decimals, if geometric { 2 } else { 3 }),
            (x_name, &label),
            evidence,
        ));
    }
    out
}

/// The count of sub-test verdicts, e.g. "2 of 3 testable sub-tests reproduce, none contradicts
/// the claim, 1 inconclusive."
fn summary_of(subtests: &[SubTest]) -> String {
    let count = |v: Verdict| subtests.iter().filter(|s| s.verdict == v).count();
    let testable = subtests.len() - count(Verdict::NotTestable);
    let mut parts = vec![format!(
        "{} of {testable} testable sub-tests reproduce",
        count(Verdict::Reproduces)
    )];
    parts.push(match count(Verdict::DoesNotReproduce) {
        0 => "none contradicts the claim".to_string(),
        k => format!("{k} contradict the claim"),
    });
    let inconclusive = count(Verdict::Inconclusive);
    if inconclusive > 0 {
        parts.push(format!("{inconclusive} inconclusive"));
    }
    let untestable = count(Verdict::NotTestable);
    if untestable > 0 {
        parts.push(format!("{untestable} not testable"));
    }
    parts.join(", ") + "."
}

/// Finding 1: extensions that keep the pretrained attention pattern (low JS divergence against
/// the base model) extrapolate better.
pub fn finding1(study: &Study, opts: &ReportOptions) -> Finding {
    let claim = "Extensions that keep the pretrained attention pattern (low JS divergence from \
                 the base model at its pretrained length) extrapolate better beyond the \
                 fine-tuning length.";
    let not_testable = |why: String| Finding {
        number: 1,
        claim,
        verdict: Verdict::NotTestable,
        summary: format!("not testable: {why}"),
        subtests: Vec::new(),
        evidence: String::new(),
    };
    let methods = study.group(Group::Method);
    if let Some(why) = study.absence("attention_divergence") {
        return not_testable(why);
    }
    let js = study.js_metric();
    let ids: Vec<&ModelId> = methods
        .iter()
        .map(|m| &m.id)
        .filter(|id| js.contains_key(*id))
        .collect();
    if ids.len() < 2 {
        return not_testable(format!(
            "`attention_divergence` covers {} extension method(s); at least 2 are needed",
            ids.len()
        ));
    }
    let ft = methods
        .iter()
        .filter(|m| ids.contains(&&m.id))
        .filter_map(|m| m.ft_length)
        .max()
        .or(study.pretrained_length.as_ref().map(|p| p.0));
    let Some(ft) = ft else {
        return not_testable(
            "neither the fine-tuning nor the pretrained length is known (set `finetune_length` \
             or provide `train_log`)"
                .into(),
        );
    };
    // JS at the measured length nearest the fine-tuning length (log scale, ties to the shorter).
    let mut x = Obs::new();
    let mut js_lengths = Vec::new();
    for id in &ids {
        let by_len = &js[*id];
        let Some(&len) = by_len.keys().min_by(|a, b| {
            let da = ((**a as f64) / ft as f64).log2().abs();
            let db = ((**b as f64) / ft as f64).log2().abs();
            da.total_cmp(&db).then(a.cmp(b))
        }) else {
            continue;
        };
        js_lengths.push(len);
        for (seed, v) in &by_len[&len] {
            x.insert(((*id).clone(), *seed), *v);
        }
    }
    js_lengths.sort_unstable();
    js_lengths.dedup();
    let mut evidence = format!(
        "JS divergence measured at length {} (nearest the fine-tuning length {ft}); \
         extrapolation measured at the lengths above {ft}; mode `{}` for PPL.\n",
        lengths_text(&js_lengths),
        opts.ppl_mode
    );
    let subtests = extrapolation_tests(
        study,
        opts,
        &ids,
        &x,
        "JS divergence (nats)",
        1.0,
        4,
        ft,
        &mut evidence,
    );
    let verdict = combine(&subtests);
    Finding {
        number: 1,
        claim,
        verdict,
        summary: summary_of(&subtests),
        subtests,
        evidence,
    }
}

/// Finding 2: high attention entropy coincides with retrieval errors.
pub fn finding2(study: &Study, opts: &ReportOptions) -> Finding {
    let claim = "High attention entropy coincides with retrieval errors: entropy predicts a \
                 failed needle trial (AUROC > 0.5, interval excluding 0.5).";
    // (model, seed, task, n, failures, auroc, lo, hi)
    type Row = (
        ModelId,
        Option<i64>,
        String,
        i64,
        i64,
        Option<(f64, f64, f64)>,
    );
    let mut rows: Vec<Row> = Vec::new();
    let source;
    if study.has("entropy_vs_error") {
        source = "`entropy_vs_error`".to_string();
        let pooled = study.entropy_vs_error.iter().any(|r| r.row.task == "all");
        for r in &study.entropy_vs_error {
            if pooled && r.row.task != "all" {
                continue;
            }
            let ci = match (r.row.auroc, r.row.auroc_lo, r.row.auroc_hi) {
                (Some(a), Some(lo), Some(hi)) => Some((a, lo, hi)),
                _ => None,
            };
            rows.push((
                study.model_of(r),
                r.seed(),
                r.row.task.clone(),
                r.row.n,
                r.row.failures,
                ci,
            ));
        }
    } else if study.needle.iter().any(|r| r.row.entropy_mean.is_some()) {
        source = "`needle` (entropy_vs_error is missing; AUROC computed here per model and task, \
                  seeds pooled)"
            .to_string();
        let mut groups: BTreeMap<(ModelId, String), (Vec<f64>, Vec<bool>)> = BTreeMap::new();
        for r in &study.needle {
            if let Some(h) = r.row.entropy_mean.filter(|h| h.is_finite()) {
                let e = groups
                    .entry((study.model_of(r), r.row.task.clone()))
                    .or_default();
                e.0.push(h);
                e.1.push(!passed(&r.row));
            }
        }
        let config = BootstrapConfig {
            resamples: opts.resamples.clamp(1, 2000),
            level: 0.95,
            seed: opts.bootstrap_seed,
        };
        for ((id, task), (scores, fails)) in groups {
            let Ok(s) = score_vs_outcome(&scores, &fails, &config) else {
                continue;
            };
            rows.push((
                id,
                None,
                task,
                s.n as i64,
                s.positives as i64,
                s.auroc.ok().map(|e| (e.value, e.lo, e.hi)),
            ));
        }
    } else {
        let why = study.absence("entropy_vs_error").unwrap_or_default();
        return Finding {
            number: 2,
            claim,
            verdict: Verdict::NotTestable,
            summary: format!(
                "not testable: {why}, and `needle` has no `entropy_mean` to compute it from"
            ),
            subtests: Vec::new(),
            evidence: String::new(),
        };
    }
    let table_rows: Vec<Vec<String>> = rows
        .iter()
        .map(|(id, seed, task, n, f, ci)| {
            let verdict = match ci {
                None => "undefined".to_string(),
                Some((_, lo, _)) if *lo > 0.5 => "above 0.5".into(),
                Some((_, _, hi)) if *hi < 0.5 => "below 0.5".into(),
                Some(_) => "spans 0.5".into(),
            };
            vec![
                study.label(id),
                seed.map(|s| s.to_string()).unwrap_or_else(|| "–".into()),
                task.clone(),
                n.to_string(),
                f.to_string(),
                ci.map(|c| format!("{:.3} [{:.3}, {:.3}]", c.0, c.1, c.2))
                    .unwrap_or_else(|| "–".into()),
                verdict,
            ]
        })
        .collect();
    let mut evidence = format!("Source: {source}.\n\n");
    evidence.push_str(&markdown_table(
        &[
            "model",
            "seed",
            "task",
            "n",
            "failures",
            "AUROC [95% CI]",
            "interval",
        ]
        .map(String::from),
        &table_rows,
        &[
            Align::Left,
            Align::Right,
            Align::Left,
            Align::Right,
            Align::Right,
            Align::Right,
            Align::Left,
        ],
    ));
    let defined: Vec<(f64, f64, f64)> = rows.iter().filter_map(|r| r.5).collect();
    let k = defined.len();
    let above = defined.iter().filter(|c| c.1 > 0.5).count();
    let below = defined.iter().filter(|c| c.2 < 0.5).count();
    let mut aurocs: Vec<f64> = defined.iter().map(|c| c.0).collect();
    aurocs.sort_by(f64::total_cmp);
    let median = if k == 0 {
        f64::NAN
    } else if k % 2 == 1 {
        aurocs[k / 2]
    } else {
        (aurocs[k / 2 - 1] + aurocs[k / 2]) / 2.0
    };
    let counts = format!(
        "{above} of {k} model rows have an AUROC interval above 0.5, {below} below; median AUROC \
         {median:.3}"
    );
    let (verdict, summary) = if k == 0 {
        (
            Verdict::Inconclusive,
            format!(
                "inconclusive: no model has both passed and failed trials ({} rows), so AUROC \
                 is undefined",
                rows.len()
            ),
        )
    } else if 2 * above >= k && below == 0 {
        (Verdict::Reproduces, format!("reproduces: {counts}"))
    } else if above == 0 && (below > 0 || median <= 0.5) {
        (
            Verdict::DoesNotReproduce,
            format!("does not reproduce: {counts}"),
        )
    } else {
        (
            Verdict::Inconclusive,
            format!("inconclusive (intervals span 0.5 or disagree): {counts}"),
        )
    };
    Finding {
        number: 2,
        claim,
        verdict,
        summary,
        subtests: Vec::new(),
        evidence,
    }
}

/// Finding 3: a longer continual-pretraining length (same token budget) lowers entropy and
/// improves extrapolation.
pub fn finding3(study: &Study, opts: &ReportOptions) -> Finding {
    let claim = "A longer continual-pretraining length (same token budget) lowers attention \
                 entropy and improves extrapolation.";
    let arms: Vec<_> = study
        .group(Group::Ablation)
        .into_iter()
        .filter(|m| m.ft_length.is_some())
        .collect();
    let lengths: std::collections::BTreeSet<i64> =
        arms.iter().filter_map(|m| m.ft_length).collect();
    if lengths.len() < 2 {
        return Finding {
            number: 3,
            claim,
            verdict: Verdict::NotTestable,
            summary: format!(
                "not testable: the fine-tuning-length ablation (stages matching {:?}) has {} \
                 arm(s) with a known fine-tuning length; at least 2 are needed",
                opts.ablation,
                lengths.len()
            ),
            subtests: Vec::new(),
            evidence: String::new(),
        };
    }
    let ids: Vec<&ModelId> = arms.iter().map(|m| &m.id).collect();
    let max_ft = *lengths.iter().max().expect("two lengths");
    // x: the fine-tuning length of each (arm, seed) that has any observation.
    let mut x = Obs::new();
    for m in &arms {
        let ft = m.ft_length.expect("filtered") as f64;
        if m.seeds.is_empty() {
            x.insert((m.id.clone(), None), ft);
        }
        for s in &m.seeds {
            x.insert((m.id.clone(), Some(*s)), ft);
        }
    }
    let mut evidence = format!(
        "Arms: {}. Extrapolation measured at the lengths above the longest fine-tuning length \
         {max_ft}.\n",
        arms.iter()
            .map(|m| format!("{} ({})", m.label, m.ft_length.unwrap_or_default()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    // Token budgets, to check that the arms are comparable.
    let mut budget: BTreeMap<String, i64> = BTreeMap::new();
    for r in &study.train_log {
        let id = study.model_of(r);
        if ids.contains(&&id) {
            let e = budget.entry(study.label(&id)).or_default();
            *e = (*e).max(r.row.tokens);
        }
    }
    if !budget.is_empty() {
        evidence.push_str(&format!(
            "Training tokens per arm (from `train_log`): {}.\n",
            budget
                .iter()
                .map(|(l, t)| format!("{l}: {t}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let mut subtests = Vec::new();
    // Entropy: attention entropy at the longest length every arm has, else needle entropy.
    let (entropy, source) = if study.has("attention_entropy") {
        (study.attention_entropy_metric(), "attention entropy")
    } else {
        (study.needle_entropy(), "needle answer entropy")
    };
    let common: Vec<i64> = common_lengths_above(&entropy, &ids, i64::MIN);
    match common.last() {
        Some(&len) => {
            let y = over_lengths(&entropy, &ids, &[len], false);
            subtests.push(sub_test(
                study,
                opts,
                format!("fine-tuning length vs {source} at {len}"),
                &x,
                &y,
                -1.0,
                (0, 3),
                ("fine-tuning length", &format!("{source} (nats)")),
                &mut evidence,
            ));
        }
        None => subtests.push(SubTest {
            name: "fine-tuning length vs entropy".into(),
            verdict: Verdict::NotTestable,
            reason: "not testable: neither `attention_entropy` nor `needle.entropy_mean` covers \
                     every arm at a common length"
                .into(),
            test: None,
        }),
    }
    subtests.extend(extrapolation_tests(
        study,
        opts,
        &ids,
        &x,
        "fine-tuning length",
        -1.0,
        0,
        max_ft,
        &mut evidence,
    ));
    let verdict = combine(&subtests);
    Finding {
        number: 3,
        claim,
        verdict,
        summary: summary_of(&subtests),
        subtests,
        evidence,
    }
}
