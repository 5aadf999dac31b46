//! The verdicts on the paper's three findings, each computed from the numbers by a fixed,
//! documented rule (docs/report.md, "Findings").
//!
//! - Every test is **two-sided** and **within seed**: findings 1 and 3 use the mean over seeds
//!   of Spearman's rho with a permutation test that shuffles only within a seed
//!   ([`stratified_rank_test`]); finding 2 uses the AUROC of entropy for failure counting only
//!   pairs of the same model instance and context length, with a bootstrap over needle cells
//!   ([`cluster_bootstrap_auroc`]).
//! - The sub-tests of a finding form one family, corrected with **Holm**. A sub-test
//!   **reproduces** when its adjusted p is at most alpha and the effect has the claimed sign,
//!   **does not reproduce** when its adjusted p is at most alpha and the sign is the opposite,
//!   is **inconclusive** otherwise (the report gives the effect and its interval), and is
//!   **not testable with this design** when even the most extreme data could not reach alpha.
//! - Only models that passed the adaptation gate enter a test ([`Study::adapted`]); every
//!   instance enters once (rows with a cache key already seen are the same measurement).

use super::data::{MassProfiles, Metric, Study, passed};
use super::options::{Group, ModelId, ReportOptions};
use crate::analysis::auroc::auroc;
use crate::analysis::divergence::js_divergence;
use crate::analysis::inference::{
    ClusterEstimate, StratifiedTest, cluster_bootstrap_auroc, holm, stratified_rank_test,
};
use crate::report::tables::{Align, format_value, markdown_table};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::hash::{Hash, Hasher};

/// The outcome of a finding or a sub-test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The data show the paper's effect (Holm-adjusted p <= alpha, claimed sign).
    Reproduces,
    /// The data show the opposite effect (Holm-adjusted p <= alpha, opposite sign).
    DoesNotReproduce,
    /// Neither: the evidence is too weak, or sub-tests disagree.
    Inconclusive,
    /// The design cannot reach alpha whatever the data (too few orderings).
    NotTestableByDesign,
    /// A table, model or setting the test needs is absent.
    NotTestable,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Reproduces => "reproduces",
            Verdict::DoesNotReproduce => "does not reproduce",
            Verdict::Inconclusive => "inconclusive",
            Verdict::NotTestableByDesign => "not testable with this design",
            Verdict::NotTestable => "not testable",
        })
    }
}

/// The numbers of one test.
#[derive(Debug, Clone, PartialEq)]
pub struct TestStats {
    /// What the statistic is, e.g. "mean within-seed Spearman ρ".
    pub statistic: &'static str,
    /// Its value.
    pub value: f64,
    /// Its value under no association (0 for rho, 0.5 for AUROC).
    pub null: f64,
    /// 95% bootstrap interval, when defined.
    pub interval: Option<(f64, f64)>,
    /// Observations (model instances for rho, trials for AUROC).
    pub n: usize,
    /// Two-sided p-value.
    pub p: f64,
    /// Holm-adjusted over the finding's sub-tests.
    pub p_holm: f64,
    /// The smallest p the design can give.
    pub min_p: f64,
    /// How p was computed, e.g. "exact over 216 within-seed orderings".
    pub method: String,
    /// The design in words, e.g. "3 seeds of 3, 3, 3 models".
    pub design: String,
}

/// One test of a finding.
#[derive(Debug, Clone, PartialEq)]
pub struct SubTest {
    /// What is tested, e.g. "JS divergence at 64 vs PPL beyond 256".
    pub name: String,
    /// Its verdict.
    pub verdict: Verdict,
    /// Why, with the numbers.
    pub reason: String,
    /// The test, when it ran.
    pub test: Option<TestStats>,
    /// The claimed sign of the effect relative to the null (+1 or -1).
    sign: f64,
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
    /// The sub-tests.
    pub subtests: Vec<SubTest>,
    /// Markdown with the observations behind the verdict.
    pub evidence: String,
}

/// Observations of one model per seed.
type Obs = BTreeMap<(ModelId, Option<i64>), f64>;

impl SubTest {
    fn not_testable(name: String, reason: String) -> Self {
        SubTest {
            name,
            verdict: Verdict::NotTestable,
            reason: format!("not testable: {reason}"),
            test: None,
            sign: 1.0,
        }
    }
}

fn p_text(p: f64) -> String {
    if p < 0.001 {
        "< 0.001".into()
    } else {
        format!("= {p:.3}")
    }
}

fn interval_text(i: Option<(f64, f64)>) -> String {
    i.map(|(lo, hi)| format!(" [95% CI {lo:.2}, {hi:.2}]"))
        .unwrap_or_default()
}

/// Holm over the sub-tests that ran, then each verdict and reason (see the module doc).
fn decide(subtests: &mut [SubTest], alpha: f64) {
    let ran: Vec<usize> = (0..subtests.len())
        .filter(|&i| subtests[i].test.is_some())
        .collect();
    let p: Vec<f64> = ran
        .iter()
        .map(|&i| subtests[i].test.as_ref().expect("ran").p)
        .collect();
    let adjusted = holm(&p);
    for (&i, adj) in ran.iter().zip(adjusted) {
        let s = &mut subtests[i];
        let t = s.test.as_mut().expect("ran");
        t.p_holm = adj;
        let claimed = if s.sign > 0.0 { "above" } else { "below" };
        let stats = format!(
            "{} = {:.2}{}, n = {} ({}), two-sided p {} ({}), Holm-adjusted p {}",
            t.statistic,
            t.value,
            interval_text(t.interval),
            t.n,
            t.design,
            p_text(t.p),
            t.method,
            p_text(adj)
        );
        let effect = s.sign * (t.value - t.null);
        (s.verdict, s.reason) = if t.min_p > alpha {
            (
                Verdict::NotTestableByDesign,
                format!(
                    "not testable with this design: the smallest two-sided p it can give is \
                     {:.3} > α = {alpha} whatever the data ({stats})",
                    t.min_p
                ),
            )
        } else if adj <= alpha && effect > 0.0 {
            (
                Verdict::Reproduces,
                format!("reproduces: {stats} ≤ α = {alpha}"),
            )
        } else if adj <= alpha && effect < 0.0 {
            (
                Verdict::DoesNotReproduce,
                format!(
                    "does not reproduce: the claim puts the statistic {claimed} {}; {stats} ≤ \
                     α = {alpha}",
                    t.null
                ),
            )
        } else {
            (
                Verdict::Inconclusive,
                format!("inconclusive: {stats} > α = {alpha}"),
            )
        };
    }
}

/// The overall verdict of sub-tests (see the module doc).
fn combine(subtests: &[SubTest]) -> Verdict {
    let count = |v: Verdict| subtests.iter().filter(|s| s.verdict == v).count();
    let (yes, no) = (count(Verdict::Reproduces), count(Verdict::DoesNotReproduce));
    let ran = subtests.len() - count(Verdict::NotTestable);
    if ran == 0 {
        Verdict::NotTestable
    } else if yes > 0 && no == 0 {
        Verdict::Reproduces
    } else if no > 0 && yes == 0 {
        Verdict::DoesNotReproduce
    } else if count(Verdict::NotTestableByDesign) == ran {
        Verdict::NotTestableByDesign
    } else {
        Verdict::Inconclusive
    }
}

/// The count of sub-test verdicts, e.g. "2 of 3 sub-tests that ran reproduce, none
/// contradicts the claim, 1 inconclusive."
fn summary_of(subtests: &[SubTest]) -> String {
    let count = |v: Verdict| subtests.iter().filter(|s| s.verdict == v).count();
    let ran = subtests.len() - count(Verdict::NotTestable);
    let mut parts = vec![format!(
        "{} of {ran} sub-tests that ran reproduce (Holm-corrected, two-sided)",
        count(Verdict::Reproduces)
    )];
    parts.push(match count(Verdict::DoesNotReproduce) {
        0 => "none contradicts the claim".to_string(),
        k => format!("{k} contradict the claim"),
    });
    for (v, what) in [
        (Verdict::Inconclusive, "inconclusive"),
        (
            Verdict::NotTestableByDesign,
            "not testable with this design",
        ),
        (Verdict::NotTestable, "not testable (missing data)"),
    ] {
        let k = count(v);
        if k > 0 {
            parts.push(format!("{k} {what}"));
        }
    }
    parts.join(", ") + "."
}

/// Keeps the observations of (model, seed)s that passed the adaptation gate.
fn gated(study: &Study, obs: Obs) -> Obs {
    obs.into_iter()
        .filter(|((id, seed), _)| study.adapted(id, *seed))
        .collect()
}

/// The within-seed strata of paired observations: per seed, the (x, y) of each model having
/// both; `None` as its own stratum. Also the table rows (model, seed, x, y) in report order.
#[allow(clippy::type_complexity)]
fn strata(
    study: &Study,
    x: &Obs,
    y: &Obs,
) -> (
    Vec<(Vec<f64>, Vec<f64>)>,
    Vec<(ModelId, Option<i64>, f64, f64)>,
) {
    let mut rows: Vec<(ModelId, Option<i64>, f64, f64)> = x
        .iter()
        .filter_map(|(k, vx)| y.get(k).map(|vy| (k.0.clone(), k.1, *vx, *vy)))
        .collect();
    let rank = |id: &ModelId| study.models.iter().position(|m| &m.id == id);
    rows.sort_by(|a, b| a.1.cmp(&b.1).then(rank(&a.0).cmp(&rank(&b.0))));
    let mut by_seed: BTreeMap<Option<i64>, (Vec<f64>, Vec<f64>)> = BTreeMap::new();
    for (_, seed, vx, vy) in &rows {
        let e = by_seed.entry(*seed).or_default();
        e.0.push(*vx);
        e.1.push(*vy);
    }
    (by_seed.into_values().collect(), rows)
}

fn design_text(t: &StratifiedTest) -> String {
    let sizes: Vec<String> = t.strata.iter().map(|n| n.to_string()).collect();
    let mut d = format!(
        "{} seed{} of {} model{}",
        t.strata.len(),
        if t.strata.len() == 1 { "" } else { "s" },
        sizes.join(", "),
        if t.strata.iter().all(|n| *n == 1) {
            ""
        } else {
            "s"
        }
    );
    if !t.dropped.is_empty() {
        d.push_str(&format!(
            "; {} seed(s) without variation left out",
            t.dropped.len()
        ));
    }
    d
}

fn orderings_text(n: u64) -> String {
    if n == u64::MAX {
        "more than 1.8e19".into()
    } else if n >= 1_000_000 {
        format!("{n:.1e}")
    } else {
        n.to_string()
    }
}

/// A within-seed rank test of `x` against `y` in the claimed direction `sign`; its verdict is
/// set by [`decide`].
#[allow(clippy::too_many_arguments)]
fn rank_subtest(
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
    let (x, y) = (gated(study, x.clone()), gated(study, y.clone()));
    let (strata, rows) = strata(study, &x, &y);
    if rows.is_empty() {
        return SubTest::not_testable(
            name,
            "no (model, seed) that passed the adaptation gate has both numbers".into(),
        );
    }
    evidence.push_str(&format!("\n{name} (one row per model and seed):\n\n"));
    let table: Vec<Vec<String>> = rows
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
        &table,
        &[Align::Left, Align::Right, Align::Right, Align::Right],
    ));
    match stratified_rank_test(&strata, opts.resamples, opts.bootstrap_seed) {
        Ok(t) => SubTest {
            name,
            verdict: Verdict::Inconclusive,
            reason: String::new(),
            test: Some(TestStats {
                statistic: "mean within-seed Spearman ρ",
                value: t.rho,
                null: 0.0,
                interval: t.interval,
                n: t.n,
                p: t.p,
                p_holm: f64::NAN,
                min_p: t.min_p,
                method: if t.exact {
                    format!("exact over {} within-seed orderings", t.orderings)
                } else {
                    format!(
                        "{} random within-seed orderings of {}",
                        opts.resamples,
                        orderings_text(t.orderings)
                    )
                },
                design: design_text(&t),
            }),
            sign,
        },
        Err(e) => SubTest {
            name,
            verdict: Verdict::Inconclusive,
            reason: format!("inconclusive: {e} (n = {})", rows.len()),
            test: None,
            sign,
        },
    }
}

/// Per (model, seed), the geometric mean of a positive metric (perplexity) or the mean (others)
/// over `lengths`; a seed missing a length is left out.
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

/// An extrapolation outcome beyond a length: name, per-(model, seed) value, claimed sign
/// relative to "more of x", decimals and column header.
struct Outcome {
    what: &'static str,
    values: Result<Obs, String>,
    sign: f64,
    decimals: usize,
    header: String,
}

/// PPL, copy PPL (when the corpus has recall tokens) and needle accuracy beyond `limit`, each
/// over the lengths above it that every model has (geometric mean for perplexities).
fn outcomes_beyond(
    study: &Study,
    opts: &ReportOptions,
    ids: &[&ModelId],
    limit: i64,
) -> Vec<Outcome> {
    let metrics: [(&'static str, Metric, bool, f64, &str); 3] = [
        (
            "PPL",
            study.ppl_metric(opts.ppl_mode.as_str(), false),
            true,
            1.0,
            "`ppl`",
        ),
        (
            "copy PPL",
            study.ppl_metric(opts.ppl_mode.as_str(), true),
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
    let mut out = Vec::new();
    for (what, m, geometric, sign, table) in metrics {
        if m.is_empty() {
            // Copy PPL is optional: a corpus without recall tokens simply has none.
            if what != "copy PPL" {
                out.push(Outcome {
                    what,
                    values: Err(format!("{table} has no rows for these models")),
                    sign,
                    decimals: 3,
                    header: String::new(),
                });
            }
            continue;
        }
        let lengths = common_lengths_above(&m, ids, limit);
        let values = if lengths.is_empty() {
            Err(format!(
                "no {what} length above {limit} common to these models"
            ))
        } else {
            Ok(over_lengths(&m, ids, &lengths, geometric))
        };
        out.push(Outcome {
            what,
            values,
            sign,
            decimals: if geometric { 2 } else { 3 },
            header: format!(
                "{what} ({} over {})",
                if geometric { "geo. mean" } else { "mean" },
                lengths_text(&lengths)
            ),
        });
    }
    out
}

/// The extrapolation sub-tests shared by findings 1 and 3: `x` against each outcome.
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
    outcomes_beyond(study, opts, ids, limit)
        .into_iter()
        .map(|o| {
            let name = format!("{x_name} vs {} beyond {limit}", o.what);
            match &o.values {
                Err(why) => SubTest::not_testable(name, why.clone()),
                Ok(y) => rank_subtest(
                    study,
                    opts,
                    name,
                    x,
                    y,
                    x_sign * o.sign,
                    (x_decimals, o.decimals),
                    (x_name, &o.header),
                    evidence,
                ),
            }
        })
        .collect()
}

/// How finding 1 measures "keeps the pretrained attention pattern".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JsVariant {
    /// Mean over (layer, head) of the JS between the two heads' distance distributions.
    PerHead,
    /// Mean over layers of the JS between the layers' distance distributions (heads pooled).
    PerLayer,
    /// JS between the distance distributions of all heads and layers pooled.
    Pooled,
    /// The `attention` stage's `attention_divergence.js_nats`: mean probability per bucket,
    /// renormalised over the buckets both cover (every bucket weighs the same).
    Stage,
}

impl JsVariant {
    const ALL: [JsVariant; 4] = [Self::PerHead, Self::PerLayer, Self::Pooled, Self::Stage];

    fn name(self) -> &'static str {
        match self {
            Self::PerHead => "JS per head (mean)",
            Self::PerLayer => "JS per layer (mean)",
            Self::Pooled => "JS pooled",
            Self::Stage => "JS of mean probability per bucket (stage)",
        }
    }
}

/// JS divergence of each adapted method (per seed) at `length` against the base model of the
/// same seed at the pretrained length `pre`, on the same validation windows.
fn js_obs(
    study: &Study,
    profiles: &MassProfiles,
    ids: &[&ModelId],
    length: i64,
    pre: i64,
    variant: JsVariant,
) -> Obs {
    let mut out = Obs::new();
    if variant == JsVariant::Stage {
        let js = study.js_metric();
        for id in ids {
            if let Some(by_seed) = js.get(*id).and_then(|l| l.get(&length)) {
                for (seed, v) in by_seed {
                    out.insert(((*id).clone(), *seed), *v);
                }
            }
        }
        return out;
    }
    let base: Vec<&super::data::ModelInfo> = study.group(Group::Base);
    let Some(base) = base.first() else {
        return out;
    };
    for ((id, seed, len), parts) in profiles {
        if *len != length || !ids.contains(&id) {
            continue;
        }
        // The base of the same seed, else the only base.
        let reference =
            profiles
                .get(&(base.id.clone(), *seed, pre))
                .or_else(|| match base.seeds.len() {
                    0 => profiles.get(&(base.id.clone(), None, pre)),
                    1 => profiles.get(&(base.id.clone(), base.seeds.first().copied(), pre)),
                    _ => None,
                });
        let Some(reference) = reference else { continue };
        let keep = |k: &(Option<i64>, Option<i64>)| match variant {
            JsVariant::PerHead => k.0.is_some() && k.1.is_some(),
            JsVariant::PerLayer => k.0.is_some() && k.1.is_none(),
            _ => k.0.is_none() && k.1.is_none(),
        };
        let values: Vec<f64> = parts
            .iter()
            .filter(|(k, _)| keep(k))
            .filter_map(|(k, p)| {
                let q = reference.get(k)?;
                // The full distance distribution: buckets one side lacks hold no mass there.
                let n = p.len().max(q.len());
                let (mut p, mut q) = (p.clone(), q.clone());
                p.resize(n, 0.0);
                q.resize(n, 0.0);
                js_divergence(&p, &q).ok()
            })
            .collect();
        if !values.is_empty() {
            out.insert(
                (id.clone(), *seed),
                values.iter().sum::<f64>() / values.len() as f64,
            );
        }
    }
    out
}

/// Finding 1: extensions that keep the pretrained attention pattern (low JS divergence against
/// the base model) extrapolate better.
pub fn finding1(study: &Study, opts: &ReportOptions) -> Finding {
    let claim = "Extensions that keep the pretrained attention pattern (low JS divergence from \
                 the base model at its pretrained length L, on the same inputs) extrapolate \
                 better beyond the fine-tuning length.";
    let not_testable = |why: String| Finding {
        number: 1,
        claim,
        verdict: Verdict::NotTestable,
        summary: format!("not testable: {why}"),
        subtests: Vec::new(),
        evidence: String::new(),
    };
    if study.absence("attention_distance").is_some()
        && study.absence("attention_divergence").is_some()
    {
        return not_testable(format!(
            "{} and {}",
            study.absence("attention_distance").unwrap_or_default(),
            study.absence("attention_divergence").unwrap_or_default()
        ));
    }
    let Some(pre) = study.pretrained_length.as_ref().map(|p| p.0) else {
        return not_testable(
            "the pretrained length is unknown (set `pretrained_length` or provide `train_log`)"
                .into(),
        );
    };
    let methods: Vec<&super::data::ModelInfo> = study
        .group(Group::Method)
        .into_iter()
        .filter(|m| m.shared_with.is_none())
        .collect();
    let ids: Vec<&ModelId> = methods.iter().map(|m| &m.id).collect();
    let profiles = study.mass_profiles();
    // The primary measure: the finest that the tables hold, at L.
    let Some((primary, x)) = JsVariant::ALL.iter().find_map(|v| {
        let o = js_obs(study, &profiles, &ids, pre, pre, *v);
        let models: BTreeSet<&ModelId> = o.keys().map(|k| &k.0).collect();
        (models.len() >= 2).then_some((*v, o))
    }) else {
        return not_testable(format!(
            "fewer than 2 extension methods have an attention profile at the pretrained length \
             {pre} to compare with the base model's"
        ));
    };
    let ft = methods
        .iter()
        .filter_map(|m| m.ft_length)
        .max()
        .unwrap_or(pre);
    let mut evidence = format!(
        "x = {} at the pretrained length {pre}: each method against the base model of its seed, \
         on the same validation windows, over the full distribution of attention over distance \
         buckets (each bucket weighing by the attention its keys receive). Extrapolation is \
         measured at the lengths above the fine-tuning length {ft}; PPL mode `{}`.\n",
        primary.name(),
        opts.ppl_mode
    );
    let mut subtests = extrapolation_tests(
        study,
        opts,
        &ids,
        &x,
        primary.name(),
        1.0,
        4,
        ft,
        &mut evidence,
    );
    decide(&mut subtests, opts.alpha);
    evidence.push_str(&sensitivity(study, opts, &profiles, &ids, pre, ft));
    Finding {
        number: 1,
        claim,
        verdict: combine(&subtests),
        summary: summary_of(&subtests),
        subtests,
        evidence,
    }
}

/// Finding 1 under every JS measure and every measured length: rho and p per outcome, so a
/// reader sees whether the verdict depends on the analysis choice. Descriptive (no verdicts).
fn sensitivity(
    study: &Study,
    opts: &ReportOptions,
    profiles: &MassProfiles,
    ids: &[&ModelId],
    pre: i64,
    ft: i64,
) -> String {
    let mut lengths: BTreeSet<i64> = profiles.keys().map(|k| k.2).collect();
    lengths.extend(study.attention_divergence.iter().map(|r| r.row.length));
    let outcomes = outcomes_beyond(study, opts, ids, ft);
    let mut rows = Vec::new();
    // The adapted instances (what the verdict uses), then every instance with the gate
    // ignored, so that a run where the gate leaves too few still shows the association.
    for (gate, who) in [(true, "adapted"), (false, "all (gate ignored)")] {
        let keep = |o: Obs| if gate { gated(study, o) } else { o };
        for v in JsVariant::ALL {
            for &len in &lengths {
                let x = keep(js_obs(study, profiles, ids, len, pre, v));
                if x.keys().map(|k| &k.0).collect::<BTreeSet<_>>().len() < 2 {
                    continue;
                }
                let mut row = vec![who.to_string(), v.name().to_string(), len.to_string()];
                for o in &outcomes {
                    row.push(match &o.values {
                        Err(_) => "–".into(),
                        Ok(y) => {
                            let (strata, _) = strata(study, &x, &keep(y.clone()));
                            match stratified_rank_test(
                                &strata,
                                opts.resamples.min(2000),
                                opts.bootstrap_seed,
                            ) {
                                Ok(t) => format!("{:.2} (p {})", t.rho, p_text(t.p)),
                                Err(_) => "undefined".into(),
                            }
                        }
                    });
                }
                rows.push(row);
            }
        }
    }
    if rows.is_empty() {
        return String::new();
    }
    let mut header = vec![
        "instances".to_string(),
        "JS measure".to_string(),
        "at length".to_string(),
    ];
    header.extend(
        outcomes
            .iter()
            .map(|o| format!("ρ vs {} beyond {ft}", o.what)),
    );
    let mut align = vec![Align::Left, Align::Left, Align::Right];
    align.extend(outcomes.iter().map(|_| Align::Right));
    format!(
        "\nSensitivity of finding 1 to the analysis choices (mean within-seed Spearman ρ, \
         two-sided permutation p, not Holm-corrected; descriptive, the verdict uses the first \
         measure available at {pre} only). A positive ρ with PPL and a negative ρ with needle \
         accuracy is the paper's direction:\n\n{}",
        markdown_table(&header, &rows, &align)
    )
}

fn hash_of(v: impl Hash) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    v.hash(&mut h);
    h.finish()
}

/// One needle trial for finding 2.
struct Trial {
    id: ModelId,
    seed: Option<i64>,
    task: String,
    length: i64,
    depth_bits: u64,
    entropy: f64,
    failed: bool,
}

/// Needle trials with an entropy, each instance once (rows whose cache key was already seen
/// under another stage or instance name are skipped); with `gate`, only adapted instances.
fn trials(study: &Study, gate: bool) -> (Vec<Trial>, usize) {
    let mut owner: BTreeMap<&str, (&str, &str)> = BTreeMap::new();
    let mut duplicates = BTreeSet::new();
    let mut out = Vec::new();
    for r in &study.needle {
        let Some(h) = r.row.entropy_mean.filter(|h| h.is_finite()) else {
            continue;
        };
        if let Some(k) = study.key_of(r) {
            let first = *owner.entry(k).or_insert((&r.stage, &r.instance));
            if first != (r.stage.as_str(), r.instance.as_str()) {
                duplicates.insert((&r.stage, &r.instance));
                continue;
            }
        }
        let id = study.model_of(r);
        if gate && !study.adapted(&id, r.seed()) {
            continue;
        }
        out.push(Trial {
            id,
            seed: r.seed(),
            task: r.row.task.clone(),
            length: r.row.length,
            depth_bits: r.row.depth.to_bits(),
            entropy: h,
            failed: !passed(&r.row),
        });
    }
    (out, duplicates.len())
}

/// The stratum of a trial: pairs for the AUROC are formed only inside one (instance, seed,
/// task, length).
fn stratum(t: &&Trial) -> u64 {
    hash_of((&t.id, t.seed, &t.task, t.length))
}

/// Stratified AUROC of `trials` (strata: instance, task, length; clusters: + depth).
fn trial_auroc(trials: &[&Trial], opts: &ReportOptions) -> Option<ClusterEstimate> {
    let scores: Vec<f64> = trials.iter().map(|t| t.entropy).collect();
    let fails: Vec<bool> = trials.iter().map(|t| t.failed).collect();
    let strata: Vec<u64> = trials.iter().map(stratum).collect();
    let clusters: Vec<u64> = trials
        .iter()
        .map(|t| hash_of((&t.id, t.seed, &t.task, t.length, t.depth_bits)))
        .collect();
    cluster_bootstrap_auroc(
        &scores,
        &fails,
        &strata,
        &clusters,
        opts.resamples.clamp(1, 2000),
        opts.bootstrap_seed,
    )
    .ok()
}

/// The smallest two-sided p any test of the stratified AUROC can give on these trials, whatever
/// their entropies: under the null the failures of a stratum (instance, seed, task, length) are
/// any `fails` of its `n` trials, so the most extreme arrangement of all strata at once has
/// probability `prod 1 / C(n, fails)` over the strata holding both outcomes; doubled for two
/// sides. With two strata of one failure and one pass it is 0.5: a bootstrap over so few pairs
/// gives an interval of [1, 1] and a tiny p that no design this small can earn.
fn auroc_floor(trials: &[&Trial]) -> f64 {
    let mut strata: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    for t in trials {
        let e = strata.entry(stratum(t)).or_default();
        e.0 += 1;
        e.1 += u64::from(t.failed);
    }
    // ln C(n, k) summed over the informative strata.
    let ln_arrangements: f64 = strata
        .values()
        .filter(|(n, f)| *f > 0 && f < n)
        .map(|&(n, f)| {
            let k = f.min(n - f);
            (0..k)
                .map(|i| ((n - i) as f64).ln() - ((i + 1) as f64).ln())
                .sum::<f64>()
        })
        .sum();
    (2.0 * (-ln_arrangements).exp()).min(1.0)
}

fn estimate_cells(e: Option<&ClusterEstimate>) -> [String; 2] {
    match e {
        Some(e) => [
            format!("{:.3} [{:.3}, {:.3}]", e.value, e.lo, e.hi),
            p_text(e.p).replace("= ", ""),
        ],
        None => ["undefined".into(), "–".into()],
    }
}

/// Finding 2: high attention entropy coincides with retrieval errors.
pub fn finding2(study: &Study, opts: &ReportOptions) -> Finding {
    let claim = "High attention entropy coincides with retrieval errors: within a context \
                 length, a needle trial that fails has higher answer entropy than one that \
                 passes (AUROC > 0.5).";
    let name = "stratified AUROC of answer entropy for failure, all adapted instances".to_string();
    let (all, duplicates) = trials(study, true);
    if all.is_empty() {
        let why = if study.needle.iter().any(|r| r.row.entropy_mean.is_some()) {
            "no adapted model instance has needle trials with an entropy".to_string()
        } else {
            format!(
                "{}`needle` has no `entropy_mean`",
                study
                    .absence("needle")
                    .map(|w| format!("{w}; "))
                    .unwrap_or_default()
            )
        };
        return Finding {
            number: 2,
            claim,
            verdict: Verdict::NotTestable,
            summary: format!("not testable: {why}"),
            subtests: vec![SubTest::not_testable(name, why)],
            evidence: String::new(),
        };
    }
    let refs: Vec<&Trial> = all.iter().collect();
    let instances: BTreeSet<(&ModelId, Option<i64>)> =
        all.iter().map(|t| (&t.id, t.seed)).collect();
    let mut subtest = match trial_auroc(&refs, opts) {
        Some(e) => SubTest {
            name,
            verdict: Verdict::Inconclusive,
            reason: String::new(),
            test: Some(TestStats {
                statistic: "stratified AUROC",
                value: e.value,
                null: 0.5,
                interval: Some((e.lo, e.hi)),
                n: all.len(),
                p: e.p,
                p_holm: f64::NAN,
                // The coarser of the bootstrap's resolution and the design's floor.
                min_p: (2.0 / (1.0 + e.resamples as f64)).max(auroc_floor(&refs)),
                method: format!(
                    "bootstrap over {} needle cells, {} resamples",
                    e.clusters, e.resamples
                ),
                design: format!(
                    "{} trials of {} model instances, pairs within (instance, length)",
                    all.len(),
                    instances.len()
                ),
            }),
            sign: 1.0,
        },
        None => SubTest {
            name,
            verdict: Verdict::Inconclusive,
            reason: "inconclusive: no (instance, length) has both passed and failed trials, \
                     so the AUROC is undefined"
                .into(),
            test: None,
            sign: 1.0,
        },
    };
    decide(std::slice::from_mut(&mut subtest), opts.alpha);
    let mut evidence = format!(
        "Trials: the `needle` rows with an answer entropy of the {} model instances that passed \
         the adaptation gate{}. The AUROC counts only (failed, passed) pairs of the same model \
         instance, task and context length, so length, which raises both entropy and failures, \
         cannot create the association; intervals and p-values come from resampling whole \
         needle cells (instance, task, length, depth).\n\n",
        instances.len(),
        if duplicates > 0 {
            format!(
                "; {duplicates} instance(s) whose cache key was already counted under another \
                 stage are left out (the same measurement)"
            )
        } else {
            String::new()
        }
    );
    // Within each length (pooled over instances), Holm over the lengths.
    let lengths: BTreeSet<i64> = all.iter().map(|t| t.length).collect();
    let per_len: Vec<(i64, usize, usize, Option<ClusterEstimate>)> = lengths
        .iter()
        .map(|&l| {
            let sel: Vec<&Trial> = all.iter().filter(|t| t.length == l).collect();
            let fails = sel.iter().filter(|t| t.failed).count();
            (l, sel.len(), fails, trial_auroc(&sel, opts))
        })
        .collect();
    let defined: Vec<f64> = per_len
        .iter()
        .filter_map(|r| r.3.as_ref().map(|e| e.p))
        .collect();
    let mut adjusted = holm(&defined).into_iter();
    let rows: Vec<Vec<String>> = per_len
        .iter()
        .map(|(l, n, f, e)| {
            let [a, p] = estimate_cells(e.as_ref());
            let adj = e
                .as_ref()
                .and_then(|_| adjusted.next())
                .map(|a| p_text(a).replace("= ", ""))
                .unwrap_or_else(|| "–".into());
            vec![l.to_string(), n.to_string(), f.to_string(), a, p, adj]
        })
        .collect();
    evidence.push_str("Within each context length (pairs within an instance):\n\n");
    evidence.push_str(&markdown_table(
        &[
            "length",
            "trials",
            "failures",
            "AUROC [95% CI]",
            "p",
            "Holm p",
        ]
        .map(String::from),
        &rows,
        &[
            Align::Right,
            Align::Right,
            Align::Right,
            Align::Right,
            Align::Right,
            Align::Right,
        ],
    ));
    // Per model (seeds pooled, pairs within a seed and length).
    let ids: BTreeSet<&ModelId> = all.iter().map(|t| &t.id).collect();
    let mut ids: Vec<&ModelId> = ids.into_iter().collect();
    let rank = |id: &ModelId| study.models.iter().position(|m| &m.id == id);
    ids.sort_by_key(|id| rank(id));
    let rows: Vec<Vec<String>> = ids
        .iter()
        .map(|id| {
            let sel: Vec<&Trial> = all.iter().filter(|t| &t.id == *id).collect();
            let fails = sel.iter().filter(|t| t.failed).count();
            let [a, p] = estimate_cells(trial_auroc(&sel, opts).as_ref());
            vec![
                study.label(id),
                sel.len().to_string(),
                fails.to_string(),
                a,
                p,
            ]
        })
        .collect();
    evidence.push_str("\nPer model (its adapted seeds; pairs within a seed and length):\n\n");
    evidence.push_str(&markdown_table(
        &["model", "trials", "failures", "AUROC [95% CI]", "p"].map(String::from),
        &rows,
        &[
            Align::Left,
            Align::Right,
            Align::Right,
            Align::Right,
            Align::Right,
        ],
    ));
    // Descriptive contrasts: every instance regardless of the gate, and pooling over lengths.
    let (ungated, _) = trials(study, false);
    let ungated_refs: Vec<&Trial> = ungated.iter().collect();
    let pooled = auroc(
        &all.iter().map(|t| t.entropy).collect::<Vec<_>>(),
        &all.iter().map(|t| t.failed).collect::<Vec<_>>(),
    );
    evidence.push_str(&format!(
        "\nFor contrast (descriptive, not tests): every distinct instance, gate ignored: {}; the \
         adapted trials pooled over lengths and instances (the confounded form): {}.\n",
        match trial_auroc(&ungated_refs, opts) {
            Some(e) => format!(
                "stratified AUROC {:.3} [{:.3}, {:.3}] over {} trials",
                e.value,
                e.lo,
                e.hi,
                ungated.len()
            ),
            None => "undefined".into(),
        },
        match pooled {
            Ok(a) => format!("AUROC {a:.3}"),
            Err(e) => e.to_string(),
        }
    ));
    Finding {
        number: 2,
        claim,
        verdict: subtest.verdict,
        summary: subtest.reason.clone(),
        subtests: vec![subtest],
        evidence,
    }
}

/// Finding 3: a longer continual-pretraining length (same token budget) lowers entropy and
/// improves extrapolation.
pub fn finding3(study: &Study, opts: &ReportOptions) -> Finding {
    let claim = "A longer continual-pretraining length (same token budget) lowers attention \
                 entropy and improves extrapolation beyond the longest arm's training length.";
    let arms: Vec<_> = study
        .group(Group::Ablation)
        .into_iter()
        .filter(|m| m.ft_length.is_some())
        .collect();
    let lengths: BTreeSet<i64> = arms.iter().filter_map(|m| m.ft_length).collect();
    if lengths.len() < 2 {
        return Finding {
            number: 3,
            claim,
            verdict: Verdict::NotTestable,
            summary: format!(
                "not testable: the fine-tuning-length ablation ({}) has {} arm(s) with a known \
                 fine-tuning length; at least 2 are needed",
                study.ablation_rule(opts),
                lengths.len()
            ),
            subtests: Vec::new(),
            evidence: String::new(),
        };
    }
    let ids: Vec<&ModelId> = arms.iter().map(|m| &m.id).collect();
    let max_ft = *lengths.iter().max().expect("two lengths");
    // x: the fine-tuning length of each (arm, seed).
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
        "Arms: {}. Entropy and extrapolation are measured at the lengths above the longest \
         arm's fine-tuning length {max_ft}, where no arm was trained.\n",
        arms.iter()
            .map(|m| {
                let shared = m
                    .shared_with
                    .as_ref()
                    .map(|s| format!(", the same instance as {}", study.label(s)))
                    .unwrap_or_default();
                format!("{} ({}{shared})", m.label, m.ft_length.unwrap_or_default())
            })
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
    let (entropy, source) = if study.has("attention_entropy") {
        (study.attention_entropy_metric(), "attention entropy")
    } else {
        (study.needle_entropy(), "needle answer entropy")
    };
    let beyond = common_lengths_above(&entropy, &ids, max_ft);
    let name = format!("fine-tuning length vs {source} beyond {max_ft}");
    if beyond.is_empty() {
        subtests.push(SubTest::not_testable(
            name,
            format!(
                "no {source} is measured above {max_ft} for every arm (at {max_ft} the longest \
                 arm is in distribution)"
            ),
        ));
    } else {
        let y = over_lengths(&entropy, &ids, &beyond, false);
        subtests.push(rank_subtest(
            study,
            opts,
            name,
            &x,
            &y,
            -1.0,
            (0, 3),
            (
                "fine-tuning length",
                &format!("{source} (nats, mean over {})", lengths_text(&beyond)),
            ),
            &mut evidence,
        ));
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
    decide(&mut subtests, opts.alpha);
    Finding {
        number: 3,
        claim,
        verdict: combine(&subtests),
        summary: summary_of(&subtests),
        subtests,
        evidence,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trial(variant: &str, length: i64, failed: bool) -> Trial {
        Trial {
            id: ModelId {
                group: Group::Method,
                variant: variant.into(),
            },
            seed: None,
            task: "passkey".into(),
            length,
            depth_bits: 0,
            entropy: if failed { 3.0 } else { 2.0 },
            failed,
        }
    }

    #[test]
    fn the_auroc_floor_counts_the_arrangements_of_failures_within_strata() {
        // Two strata of one failure in two trials: 2 x 2 arrangements, two-sided 0.5.
        let few = [
            trial("ntk", 4096, true),
            trial("ntk", 4096, false),
            trial("yarn", 4096, true),
            trial("yarn", 4096, false),
            // All failed or all passed: no arrangement to test.
            trial("pi", 4096, true),
            trial("pi", 4096, true),
            trial("plain", 12288, false),
        ];
        let refs: Vec<&Trial> = few.iter().collect();
        assert!((auroc_floor(&refs) - 0.5).abs() < 1e-12);
        // One stratum of 3 failures in 10 trials: C(10, 3) = 120, two-sided 1/60.
        let many: Vec<Trial> = (0..10).map(|i| trial("yarn", 1024, i < 3)).collect();
        let refs: Vec<&Trial> = many.iter().collect();
        assert!((auroc_floor(&refs) - 2.0 / 120.0).abs() < 1e-12);
        // Nothing to arrange: the floor is 1.
        assert_eq!(auroc_floor(&refs[..3]), 1.0);
    }

    fn ran(p: f64, min_p: f64, value: f64, sign: f64) -> SubTest {
        SubTest {
            name: "t".into(),
            verdict: Verdict::Inconclusive,
            reason: String::new(),
            test: Some(TestStats {
                statistic: "ρ",
                value,
                null: 0.0,
                interval: None,
                n: 9,
                p,
                p_holm: f64::NAN,
                min_p,
                method: "exact".into(),
                design: "3 seeds".into(),
            }),
            sign,
        }
    }

    #[test]
    fn verdicts_are_symmetric_and_holm_corrected() {
        // Claimed positive: a significant negative effect contradicts, a positive one reproduces.
        let mut s = vec![ran(0.001, 0.0001, 0.9, 1.0)];
        decide(&mut s, 0.05);
        assert_eq!(s[0].verdict, Verdict::Reproduces, "{}", s[0].reason);
        let mut s = vec![ran(0.001, 0.0001, -0.9, 1.0)];
        decide(&mut s, 0.05);
        assert_eq!(s[0].verdict, Verdict::DoesNotReproduce, "{}", s[0].reason);
        // A wrong sign without evidence is inconclusive, not a contradiction.
        let mut s = vec![ran(0.4, 0.0001, -0.3, 1.0)];
        decide(&mut s, 0.05);
        assert_eq!(s[0].verdict, Verdict::Inconclusive);
        // Holm: 0.03 alone reproduces; with two more tests its adjusted p is 0.09.
        let mut s = vec![
            ran(0.03, 0.0001, 0.5, 1.0),
            ran(0.5, 0.0001, 0.1, 1.0),
            ran(0.6, 0.0001, 0.1, 1.0),
        ];
        decide(&mut s, 0.05);
        assert_eq!(s[0].verdict, Verdict::Inconclusive, "{}", s[0].reason);
        assert!((s[0].test.as_ref().unwrap().p_holm - 0.09).abs() < 1e-12);
        assert_eq!(combine(&s), Verdict::Inconclusive);
        // A design that cannot reach alpha says so, whatever the observed p.
        let mut s = vec![ran(0.5, 0.5, -1.0, -1.0), ran(0.5, 0.5, -1.0, -1.0)];
        decide(&mut s, 0.05);
        assert!(s.iter().all(|t| t.verdict == Verdict::NotTestableByDesign));
        assert!(
            s[0].reason.starts_with(
                "not testable with this design: the smallest two-sided p it can give is 0.500"
            ),
            "{}",
            s[0].reason
        );
        assert_eq!(combine(&s), Verdict::NotTestableByDesign);
        assert_eq!(
            Verdict::NotTestableByDesign.to_string(),
            "not testable with this design"
        );
    }
}
