//! Loading the results tables of a study and reducing them to per-model, per-length,
//! per-seed numbers that the figures, tables and findings share.
//!
//! A missing or unreadable table is recorded in [`Study::status`] and treated as empty, so the
//! report says what it could not show instead of failing.

use super::lineage::Lineage;
use super::options::{self, Classifier, Group, ModelId, ReportOptions, method_label};
use crate::tables::{
    AttentionDistanceRow, AttentionDivergenceRow, AttentionEntropyRow, EntropyVsErrorRow,
    ModelConfigRow, NeedleRow, PplRow, ResultRow, Table, TrainLogRow, ValLogRow, WarningRow,
    read_results,
};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A (model, seed, context length).
pub type ProfileKey = (ModelId, Option<i64>, i64);

/// Attention mass by distance bucket per (layer, head), `None` meaning pooled.
pub type LayerHeadProfiles = BTreeMap<(Option<i64>, Option<i64>), Vec<f64>>;

/// [`LayerHeadProfiles`] of every (model, seed, length).
pub type MassProfiles = BTreeMap<ProfileKey, LayerHeadProfiles>;

/// Values by model, then context length, then seed (`None` without a seed column).
pub type Metric = BTreeMap<ModelId, BTreeMap<i64, BTreeMap<Option<i64>, f64>>>;

/// What happened when loading one table.
#[derive(Debug, Clone, PartialEq)]
pub enum TableStatus {
    /// The file does not exist.
    Missing(PathBuf),
    /// The file exists but could not be read (the message names file and column).
    Unreadable(String),
    /// Read, with this many rows.
    Loaded(usize),
}

/// One model of the study, as seen in the tables.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    /// Group and variant.
    pub id: ModelId,
    /// Display label.
    pub label: String,
    /// Seeds seen in any table.
    pub seeds: BTreeSet<i64>,
    /// Stages whose rows measure it.
    pub stages: BTreeSet<String>,
    /// Fine-tuning sequence length, when known.
    pub ft_length: Option<i64>,
    /// Where `ft_length` came from.
    pub ft_source: String,
    /// Never trained in this run (lineage: an imported checkpoint, its RoPE possibly
    /// changed): there is no fine-tuning length and nothing to adapt.
    pub training_free: bool,
    /// An earlier model whose instances have exactly these cache keys: the same measurement
    /// under another stage's name (e.g. the ablation's 4L arm is the NTK x4 method).
    pub shared_with: Option<ModelId>,
}

/// Whether a (model, seed) passed the adaptation gate (see [`Study::gate`]).
#[derive(Debug, Clone, PartialEq)]
pub struct GateCheck {
    /// The model.
    pub id: ModelId,
    /// The seed.
    pub seed: Option<i64>,
    /// Needle accuracy at the pretrained length.
    pub at_pretrained: Option<f64>,
    /// The fine-tuning length and the accuracy there (fine-tuned models only).
    pub at_finetune: Option<(i64, Option<f64>)>,
    /// What the gate decided.
    pub outcome: GateOutcome,
}

/// The adaptation gate's decision for one (model, seed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateOutcome {
    /// Adapted (for the base: solid): enters the tests.
    Passed,
    /// Not adapted (not solid): left out of every test.
    Failed,
    /// No needle rows at a length the gate needs, or the gate is disabled: enters the tests.
    NotChecked,
    /// A training-free extension: nothing was trained, so there is nothing to have failed to
    /// learn; its retrieval at L is a property of the method and enters the tests as it is.
    TrainingFree,
}

/// Everything the report reads.
#[derive(Debug, Default)]
pub struct Study {
    pub ppl: Vec<ResultRow<PplRow>>,
    pub needle: Vec<ResultRow<NeedleRow>>,
    pub attention_entropy: Vec<ResultRow<AttentionEntropyRow>>,
    pub attention_distance: Vec<ResultRow<AttentionDistanceRow>>,
    pub attention_divergence: Vec<ResultRow<AttentionDivergenceRow>>,
    pub entropy_vs_error: Vec<ResultRow<EntropyVsErrorRow>>,
    pub train_log: Vec<ResultRow<TrainLogRow>>,
    pub val_log: Vec<ResultRow<ValLogRow>>,
    /// The models' config.json, published by the report stage.
    pub model_config: Vec<ResultRow<ModelConfigRow>>,
    /// The gathered instances' warnings, published by the report stage when there are some.
    pub warnings: Vec<ResultRow<WarningRow>>,
    /// Per table name, in reading order.
    pub status: Vec<(&'static str, TableStatus)>,
    /// Models in report order: base, methods (first seen), ablation arms (by length).
    pub models: Vec<ModelInfo>,
    /// The base model's pretrained length and where it came from.
    pub pretrained_length: Option<(i64, String)>,
    /// Cache keys and needs of every instance (`runs.parquet`).
    pub lineage: Lineage,
    /// The adaptation gate per (model, seed), in report order.
    pub gate: Vec<GateCheck>,
    /// The gate's threshold (needle accuracy); 0 disables it.
    pub gate_threshold: f64,
    classifier: Option<Classifier>,
    /// Train keys of the base model by lineage (empty: the name patterns decide).
    base_keys: BTreeSet<String>,
    /// Train stages that lineage and `train_log` show to be a fine-tuning-length ablation.
    ablation_stages: BTreeSet<String>,
}

fn load<T: Table>(dir: &Path, status: &mut Vec<(&'static str, TableStatus)>) -> Vec<ResultRow<T>> {
    let path = dir.join(format!("{}.parquet", T::NAME));
    if !path.exists() {
        status.push((T::NAME, TableStatus::Missing(path)));
        return Vec::new();
    }
    match read_results::<T>(&path) {
        Ok(rows) => {
            status.push((T::NAME, TableStatus::Loaded(rows.len())));
            rows
        }
        Err(e) => {
            status.push((T::NAME, TableStatus::Unreadable(e.to_string())));
            Vec::new()
        }
    }
}

/// Where a row came from, independent of its table.
struct Origin<'a> {
    stage: &'a str,
    instance: &'a str,
    matrix: &'a [(String, serde_json::Value)],
    seed: Option<i64>,
}

fn origins<T>(rows: &[ResultRow<T>]) -> impl Iterator<Item = Origin<'_>> {
    rows.iter().map(|r| Origin {
        stage: &r.stage,
        instance: &r.instance,
        matrix: &r.matrix,
        seed: r.seed(),
    })
}

impl Study {
    /// Reads every table that exists in `dir` and identifies the models.
    pub fn load(dir: &Path, opts: &ReportOptions, classifier: Classifier) -> Self {
        let mut status = Vec::new();
        let mut s = Study {
            ppl: load(dir, &mut status),
            needle: load(dir, &mut status),
            attention_entropy: load(dir, &mut status),
            attention_distance: load(dir, &mut status),
            attention_divergence: load(dir, &mut status),
            entropy_vs_error: load(dir, &mut status),
            train_log: load(dir, &mut status),
            val_log: load(dir, &mut status),
            model_config: load(dir, &mut status),
            ..Default::default()
        };
        // Written only when some instance warned: absent means none (or results from before
        // the table existed), not a missing input.
        if dir.join(format!("{}.parquet", WarningRow::NAME)).exists() {
            s.warnings = load(dir, &mut status);
        }
        let runs = dir.join("runs.parquet");
        if runs.exists() {
            match Lineage::load(&runs) {
                Ok(l) => {
                    status.push(("runs", TableStatus::Loaded(l.runs.len())));
                    s.lineage = l;
                }
                Err(e) => status.push(("runs", TableStatus::Unreadable(e))),
            }
        } else {
            status.push(("runs", TableStatus::Missing(runs)));
        }
        s.status = status;
        s.base_keys = s.lineage.base_keys();
        let mut trained: BTreeMap<(String, String), i64> = BTreeMap::new();
        for r in &s.train_log {
            let e = trained
                .entry((r.stage.clone(), r.instance.clone()))
                .or_insert(r.row.seq_len);
            *e = (*e).max(r.row.seq_len);
        }
        s.ablation_stages = s.lineage.ablation_stages(&trained);
        s.classifier = Some(classifier);
        s.identify_models(opts);
        s.gate_threshold = opts.adaptation_gate;
        s.gate = s.compute_gate();
        s
    }

    /// The model of a row. When `runs.parquet` records needs, lineage decides: the base when
    /// the instance's model key is a base key; an ablation arm when the train instance of that
    /// key (the one with the row's matrix label, where two stages share the key) belongs to a
    /// stage that trains one init at several lengths; else a method. Without lineage the
    /// `base` and `ablation` patterns decide.
    pub fn model_of<T>(&self, r: &ResultRow<T>) -> ModelId {
        self.model_at(&r.stage, &r.instance, &r.matrix)
    }

    fn model_at(
        &self,
        stage: &str,
        instance: &str,
        matrix: &[(String, serde_json::Value)],
    ) -> ModelId {
        let c = self.classifier.as_ref().expect("set by load");
        let id = c.model(stage, instance, matrix);
        if self.base_keys.is_empty() {
            return id;
        }
        let Some(k) = self.lineage.model_key(stage, instance) else {
            return id;
        };
        if self.base_keys.contains(&k) {
            return ModelId {
                group: Group::Base,
                variant: String::new(),
            };
        }
        let variant = c.model_variant(instance, matrix);
        let trainers = self.lineage.instances_with_key(&k);
        let trainer = trainers
            .iter()
            .find(|(_, i)| options::variant_of(i) == variant)
            .or(trainers.first());
        let group = match trainer {
            Some((s, _)) if self.ablation_stages.contains(*s) => Group::Ablation,
            Some(_) => Group::Method,
            None if id.group == Group::Base => c.non_base(stage, instance, matrix).group,
            None => id.group,
        };
        ModelId { group, variant }
    }

    /// How the report finds the fine-tuning-length ablation, for messages: lineage when
    /// `runs.parquet` identifies a base model (as [`Study::model_of`] decides), else the
    /// `ablation` option's patterns.
    pub fn ablation_rule(&self, opts: &ReportOptions) -> String {
        if self.base_keys.is_empty() {
            format!("stages matching {:?}, the `ablation` option", opts.ablation)
        } else {
            "train stages that fine-tune one `init` at several sequence lengths, by the \
             recorded lineage"
                .into()
        }
    }

    /// The cache key of the instance that wrote a row (from `runs.parquet`).
    pub fn key_of<T>(&self, r: &ResultRow<T>) -> Option<&str> {
        self.lineage.key(&r.stage, &r.instance)
    }

    /// Whether a (model, seed) may enter the findings' tests: it passed the adaptation gate or
    /// could not be checked.
    pub fn adapted(&self, id: &ModelId, seed: Option<i64>) -> bool {
        !self
            .gate
            .iter()
            .any(|g| &g.id == id && g.seed == seed && g.outcome == GateOutcome::Failed)
    }

    /// The adaptation gate: every fine-tuned (model, seed) must reach needle accuracy of at
    /// least the threshold at the pretrained length L and at its own fine-tuning length; the
    /// base must reach it at L (a solid base). Not checked where `needle` has no rows at the
    /// length, or when the threshold is 0; training-free models have no gate.
    fn compute_gate(&self) -> Vec<GateCheck> {
        let acc = self.needle_accuracy();
        let pre = self.pretrained_length.as_ref().map(|p| p.0);
        let mut out = Vec::new();
        for m in &self.models {
            let seeds: Vec<Option<i64>> = if m.seeds.is_empty() {
                vec![None]
            } else {
                m.seeds.iter().map(|s| Some(*s)).collect()
            };
            for seed in seeds {
                let at = |len: i64| {
                    acc.get(&m.id)
                        .and_then(|l| l.get(&len))
                        .and_then(|s| s.get(&seed))
                        .copied()
                };
                let at_pretrained = pre.and_then(at);
                let base = m.id.group == Group::Base;
                let at_finetune = if base {
                    None
                } else {
                    m.ft_length.map(|l| (l, at(l)))
                };
                let mut checks = vec![at_pretrained];
                if !base {
                    checks.push(at_finetune.and_then(|f| f.1));
                }
                let outcome = if m.training_free && !base {
                    GateOutcome::TrainingFree
                } else if self.gate_threshold <= 0.0 || checks.iter().any(|c| c.is_none()) {
                    GateOutcome::NotChecked
                } else if checks
                    .iter()
                    .all(|c| c.is_some_and(|a| a >= self.gate_threshold))
                {
                    GateOutcome::Passed
                } else {
                    GateOutcome::Failed
                };
                out.push(GateCheck {
                    id: m.id.clone(),
                    seed,
                    at_pretrained,
                    at_finetune,
                    outcome,
                });
            }
        }
        out
    }

    /// The model's info.
    pub fn info(&self, id: &ModelId) -> Option<&ModelInfo> {
        self.models.iter().find(|m| &m.id == id)
    }

    /// The model's label (its variant if unknown).
    pub fn label(&self, id: &ModelId) -> String {
        self.info(id)
            .map(|m| m.label.clone())
            .unwrap_or_else(|| id.variant.clone())
    }

    /// Models of a group, in report order.
    pub fn group(&self, g: Group) -> Vec<&ModelInfo> {
        self.models.iter().filter(|m| m.id.group == g).collect()
    }

    fn identify_models(&mut self, opts: &ReportOptions) {
        let all: Vec<Origin<'_>> = origins(&self.ppl)
            .chain(origins(&self.needle))
            .chain(origins(&self.attention_entropy))
            .chain(origins(&self.attention_distance))
            .chain(origins(&self.attention_divergence))
            .chain(origins(&self.entropy_vs_error))
            .chain(origins(&self.train_log))
            .chain(origins(&self.val_log))
            .collect();
        // Train lengths by model, from train_log.
        let mut train_len: BTreeMap<ModelId, i64> = BTreeMap::new();
        for r in &self.train_log {
            let id = self.model_of(r);
            let e = train_len.entry(id).or_insert(r.row.seq_len);
            *e = (*e).max(r.row.seq_len);
        }
        let mut models: Vec<ModelInfo> = Vec::new();
        let mut firsts: Vec<(String, Vec<(String, serde_json::Value)>)> = Vec::new();
        // Cache keys of each model's instances: equal sets are one measurement.
        let mut keys: BTreeMap<ModelId, BTreeSet<&str>> = BTreeMap::new();
        for o in &all {
            let id = self.model_at(o.stage, o.instance, o.matrix);
            if let Some(k) = self.lineage.key(o.stage, o.instance) {
                keys.entry(id.clone()).or_default().insert(k);
            }
            let idx = match models.iter().position(|m| m.id == id) {
                Some(i) => i,
                None => {
                    models.push(ModelInfo {
                        id: id.clone(),
                        label: String::new(),
                        seeds: BTreeSet::new(),
                        stages: BTreeSet::new(),
                        ft_length: None,
                        ft_source: String::new(),
                        // Until an instance says otherwise (below).
                        training_free: self.lineage.has_needs(),
                        shared_with: None,
                    });
                    firsts.push((o.instance.to_string(), Vec::new()));
                    models.len() - 1
                }
            };
            let m = &mut models[idx];
            // Training-free only when every instance's lineage says so.
            m.training_free &=
                self.lineage.measures_trained_model(o.stage, o.instance) == Some(false);
            m.stages.insert(o.stage.to_string());
            if let Some(seed) = o.seed {
                m.seeds.insert(seed);
            }
            // Keep the richest matrix seen (eval stages inherit the train stage's axes).
            let non_seed: Vec<(String, serde_json::Value)> = o
                .matrix
                .iter()
                .filter(|(k, _)| k != "seed" && !k.ends_with(".seed"))
                .cloned()
                .collect();
            if non_seed.len() > firsts[idx].1.len() {
                firsts[idx] = (o.instance.to_string(), non_seed);
            }
            if m.ft_length.is_none()
                && m.id.group != Group::Base
                && let Some(v) = o
                    .matrix
                    .iter()
                    .find(|(k, _)| *k == opts.finetune_length_column)
                    .and_then(|(_, v)| v.as_i64())
            {
                m.ft_length = Some(v);
                m.ft_source = format!("matrix column `{}`", opts.finetune_length_column);
            }
        }
        self.pretrained_length = match opts.pretrained_length {
            Some(l) => Some((l, "report option `pretrained_length`".into())),
            None => train_len
                .iter()
                .find(|(id, _)| id.group == Group::Base)
                .map(|(_, l)| (*l, "`train_log.seq_len` of the base model".into())),
        };
        let pre = self.pretrained_length.as_ref().map(|p| p.0);
        for (m, (instance, matrix)) in models.iter_mut().zip(&firsts) {
            if m.id.group == Group::Method
                && !m.training_free
                && let Some(l) = opts.finetune_length
            {
                m.ft_length = Some(l);
                m.ft_source = "report option `finetune_length`".into();
            }
            // A model with a training log was trained, whatever its lineage lacks.
            m.training_free &= !train_len.contains_key(&m.id);
            if m.ft_length.is_none()
                && m.id.group != Group::Base
                && let Some(l) = train_len.get(&m.id)
            {
                m.ft_length = Some(*l);
                m.ft_source = "`train_log.seq_len`".into();
            }
            m.label = match m.id.group {
                Group::Base => opts.base_label.clone(),
                Group::Method => method_label(opts, &m.id.variant, instance, matrix),
                Group::Ablation => match (opts.labels.get(&m.id.variant), m.ft_length) {
                    (Some(l), _) => l.clone(),
                    (None, Some(len)) => match pre {
                        Some(p) if p > 0 && len % p == 0 => {
                            format!("fine-tuned at {len} ({}L)", len / p)
                        }
                        _ => format!("fine-tuned at {len}"),
                    },
                    (None, None) => format!("ablation {}", m.id.variant),
                },
            };
        }
        // Distinct labels: two models must never share a legend entry.
        for i in 0..models.len() {
            if models[..i].iter().any(|m| m.label == models[i].label) {
                let v = models[i].id.variant.clone();
                models[i].label = format!("{} [{}]", models[i].label, v);
            }
        }
        let order = |m: &ModelInfo| match m.id.group {
            Group::Base => (0, 0),
            Group::Method => (1, 0),
            Group::Ablation => (2, m.ft_length.unwrap_or(i64::MAX)),
        };
        models.sort_by_key(order); // stable: methods keep first-seen order
        for i in 0..models.len() {
            let mine = keys.get(&models[i].id);
            models[i].shared_with = models[..i]
                .iter()
                .find(|m| mine.is_some_and(|k| !k.is_empty() && keys.get(&m.id) == Some(k)))
                .map(|m| m.id.clone());
        }
        self.models = models;
    }

    /// Whether the table was read with at least one row.
    pub fn has(&self, table: &str) -> bool {
        self.status
            .iter()
            .any(|(n, s)| *n == table && matches!(s, TableStatus::Loaded(k) if *k > 0))
    }

    /// Why a table is not available, for the report text (`None` when it has rows).
    pub fn absence(&self, table: &str) -> Option<String> {
        self.status
            .iter()
            .find(|(n, _)| *n == table)
            .and_then(|(_, s)| match s {
                TableStatus::Loaded(k) if *k > 0 => None,
                TableStatus::Loaded(_) => Some(format!("`{table}` has no rows")),
                // The file name only: inside a run the directory is the report stage's cache
                // entry, which means nothing to a reader of the published report.
                TableStatus::Missing(p) => Some(format!(
                    "`{table}` is missing (no {} beside the report)",
                    p.file_name().unwrap_or_default().to_string_lossy()
                )),
                TableStatus::Unreadable(e) => Some(format!("`{table}` is unreadable: {e}")),
            })
    }

    /// Perplexity by model, length and seed in `mode`: token-weighted over documents. With
    /// `recall`, the copy perplexity `exp` of the recall-token-weighted `recall_nll`.
    pub fn ppl_metric(&self, mode: &str, recall: bool) -> Metric {
        let mut sums: BTreeMap<(ModelId, i64, Option<i64>), (f64, f64)> = BTreeMap::new();
        for r in self.ppl.iter().filter(|r| r.row.mode == mode) {
            let (w, nll) = if recall {
                match r.row.recall_nll {
                    Some(n) if r.row.recall_tokens > 0 && n.is_finite() => {
                        (r.row.recall_tokens as f64, n)
                    }
                    _ => continue,
                }
            } else {
                (r.row.tokens as f64, r.row.nll)
            };
            if w <= 0.0 || !nll.is_finite() {
                continue;
            }
            let e = sums
                .entry((self.model_of(r), r.row.length, r.seed()))
                .or_default();
            e.0 += w * nll;
            e.1 += w;
        }
        collect(sums.into_iter().map(|(k, (s, w))| (k, (s / w).exp())))
    }

    /// Needle accuracy (pass = `exact`, or `substring` where `exact` is null) by model, length
    /// and seed, pooled over tasks, depths and trials.
    pub fn needle_accuracy(&self) -> Metric {
        let mut sums: BTreeMap<(ModelId, i64, Option<i64>), (f64, f64)> = BTreeMap::new();
        for r in &self.needle {
            let e = sums
                .entry((self.model_of(r), r.row.length, r.seed()))
                .or_default();
            e.0 += f64::from(u8::from(passed(&r.row)));
            e.1 += 1.0;
        }
        collect(sums.into_iter().map(|(k, (s, n))| (k, s / n)))
    }

    /// Mean needle answer entropy by model, length and seed (trials with an entropy).
    pub fn needle_entropy(&self) -> Metric {
        let mut sums: BTreeMap<(ModelId, i64, Option<i64>), (f64, f64)> = BTreeMap::new();
        for r in &self.needle {
            if let Some(h) = r.row.entropy_mean.filter(|h| h.is_finite()) {
                let e = sums
                    .entry((self.model_of(r), r.row.length, r.seed()))
                    .or_default();
                e.0 += h;
                e.1 += 1.0;
            }
        }
        collect(sums.into_iter().map(|(k, (s, n))| (k, s / n)))
    }

    /// Mean attention entropy by model, length and seed: over layers, heads and query buckets,
    /// weighted by `queries`.
    pub fn attention_entropy_metric(&self) -> Metric {
        let mut sums: BTreeMap<(ModelId, i64, Option<i64>), (f64, f64)> = BTreeMap::new();
        for r in &self.attention_entropy {
            if r.row.queries <= 0 || !r.row.entropy_mean.is_finite() {
                continue;
            }
            let e = sums
                .entry((self.model_of(r), r.row.length, r.seed()))
                .or_default();
            e.0 += r.row.entropy_mean * r.row.queries as f64;
            e.1 += r.row.queries as f64;
        }
        collect(sums.into_iter().map(|(k, (s, n))| (k, s / n)))
    }

    /// JS divergence against the reference by model, length and seed.
    pub fn js_metric(&self) -> Metric {
        collect(
            self.attention_divergence
                .iter()
                .filter(|r| r.row.js_nats.is_finite())
                .map(|r| ((self.model_of(r), r.row.length, r.seed()), r.row.js_nats)),
        )
    }

    /// The attention mass distribution over distance buckets (`mass`: the share of attention in
    /// each bucket, so a bucket weighs by the keys it holds) of every (model, seed, length), per
    /// (layer, head): `(None, None)` all layers, `(Some(l), None)` layer `l`'s heads pooled,
    /// `(Some(l), Some(h))` one head. Bucket `k` at index `k`.
    pub fn mass_profiles(&self) -> MassProfiles {
        let mut out = MassProfiles::new();
        for r in &self.attention_distance {
            let Ok(b) = usize::try_from(r.row.bucket) else {
                continue;
            };
            if !r.row.mass.is_finite() {
                continue;
            }
            let v = out
                .entry((self.model_of(r), r.seed(), r.row.length))
                .or_default()
                .entry((r.row.layer, r.row.head))
                .or_default();
            if v.len() <= b {
                v.resize(b + 1, 0.0);
            }
            v[b] = r.row.mass;
        }
        out
    }

    /// Mean attention probability by distance bucket for a model at a length, averaged over
    /// seeds: the all-layer rows (`layer` null), or the mean of the layers when there are none.
    /// `(bucket, distance_lo, mean_prob)` sorted by bucket.
    pub fn distance_profile(&self, id: &ModelId, length: i64) -> Vec<(i64, i64, f64)> {
        let rows: Vec<&ResultRow<AttentionDistanceRow>> = self
            .attention_distance
            .iter()
            .filter(|r| r.row.length == length && &self.model_of(r) == id)
            .collect();
        let all_layers = rows.iter().any(|r| r.row.layer.is_none());
        let mut sums: BTreeMap<i64, (i64, f64, f64)> = BTreeMap::new();
        for r in rows
            .iter()
            .filter(|r| r.row.layer.is_none() == all_layers && r.row.head.is_none())
        {
            let e = sums
                .entry(r.row.bucket)
                .or_insert((r.row.distance_lo, 0.0, 0.0));
            e.1 += r.row.mean_prob;
            e.2 += 1.0;
        }
        sums.into_iter()
            .map(|(b, (lo, s, n))| (b, lo, s / n))
            .collect()
    }
}

/// Whether a needle trial passed: `exact`, or `substring` where `exact` is not applicable.
pub fn passed(r: &NeedleRow) -> bool {
    r.exact.unwrap_or(r.substring)
}

fn collect(items: impl Iterator<Item = ((ModelId, i64, Option<i64>), f64)>) -> Metric {
    let mut out = Metric::new();
    for ((id, len, seed), v) in items {
        out.entry(id)
            .or_default()
            .entry(len)
            .or_default()
            .insert(seed, v);
    }
    out
}

/// The values of a metric cell (over seeds).
pub fn cell(m: &Metric, id: &ModelId, length: i64) -> Vec<f64> {
    m.get(id)
        .and_then(|l| l.get(&length))
        .map(|s| s.values().copied().collect())
        .unwrap_or_default()
}

/// The lengths of a metric over the given models, sorted.
pub fn lengths_of(m: &Metric, ids: &[&ModelId]) -> Vec<i64> {
    let set: BTreeSet<i64> = ids
        .iter()
        .filter_map(|id| m.get(*id))
        .flat_map(|l| l.keys().copied())
        .collect();
    set.into_iter().collect()
}
