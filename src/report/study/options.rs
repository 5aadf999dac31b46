//! The report's parameters and the rules that turn a result row's stage, instance and matrix
//! values into "which model is this" and "what is it called".
//!
//! Every results table row carries the stage and instance that wrote it; the model it measures is
//! not named directly. The rule (documented in docs/report.md): a row belongs to the **base**
//! model when its stage name matches a [`ReportOptions::base`] pattern, to the
//! **fine-tuning-length ablation** when it matches an [`ReportOptions::ablation`] pattern, and
//! otherwise to a **method**. Within a group the model is the instance's matrix label (the part
//! after `@`) with seed labels (`seed-1`) removed, so `ppl@yarn,seed-1`, `needle@yarn,seed-2`
//! and `extend@yarn,seed-1` are all the model `yarn`, seeds 1 and 2.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::eval::ppl::PplModeKind;

/// Parameters of the study report (the `report` stage kind's parameters).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ReportOptions {
    /// Heading of report.md.
    pub title: String,
    /// Glob patterns over stage or instance names: matching rows measure the base model (the
    /// pretrained model before any RoPE extension), e.g. its `train` stage `base` and its eval
    /// stages `ppl_base`, `needle_base`; or an instance such as `ppl@none`.
    pub base: Vec<String>,
    /// Label of the base model in tables and legends.
    pub base_label: String,
    /// Glob patterns over stage or instance names of the fine-tuning-length ablation (one
    /// method fine-tuned at several lengths with the same token budget).
    pub ablation: Vec<String>,
    /// Matrix column holding a model's fine-tuning sequence length (e.g. an ablation's
    /// `matrix.seq_len`); when a model has none, its `train_log.seq_len` is used.
    pub finetune_length_column: String,
    /// The base model's pretrained length in tokens; by default its `train_log.seq_len`.
    pub pretrained_length: Option<i64>,
    /// The methods' fine-tuning length in tokens; by default each model's own (matrix column,
    /// then `train_log.seq_len`).
    pub finetune_length: Option<i64>,
    /// Display labels by model (the instance's matrix label without seeds, e.g. `yarn`) or by
    /// instance name (`ppl@yarn`): `{ yarn = "YaRN x4" }`. Checked before any other rule.
    pub labels: BTreeMap<String, String>,
    /// A label built from matrix columns, e.g. `"{rope_type} x{factor}"`; used when every
    /// placeholder has a value. Without it, labels follow the built-in rule: `rope_type`
    /// (`linear` -> `PI`, `ntk` -> `NTK`, `yarn` -> `YaRN`, `default` -> `RoPE unchanged`, ...)
    /// and ` x<factor>`, or `NTK b=<base or rope_theta>`; else the matrix entry's name.
    pub label_template: Option<String>,
    /// Matrix axes of the evaluation stages themselves (not of the model they evaluate), e.g.
    /// `["task"]` for a needle stage with `matrix.task`: their labels are removed from instance
    /// names, so that `needle@yarn,kv` and `ppl@yarn` are the same model.
    pub ignore_axes: Vec<String>,
    /// The perplexity mode (`truncate` or `sliding`) used by the main plot and the findings;
    /// only `truncate` evaluates whole windows at the stated length.
    pub ppl_mode: PplModeKind,
    /// Significance level of the findings' two-sided tests, after Holm's correction over each
    /// finding's sub-tests: a verdict for or against the claim needs an adjusted p at most
    /// `alpha`.
    pub alpha: f64,
    /// Random within-seed permutations of the rank tests when exact enumeration is too large
    /// (more than 200,000 orderings); bootstrap resamples of the intervals (at most 2000).
    pub resamples: usize,
    /// Seed of the permutation tests and the bootstraps.
    pub bootstrap_seed: u64,
    /// The adaptation gate: a fine-tuned model (per seed) enters the findings' tests only when
    /// its needle accuracy is at least this at the pretrained length and at its fine-tuning
    /// length; the base only when it reaches it at the pretrained length. 0 disables the gate.
    pub adaptation_gate: f64,
    /// Needle accuracy that RULER's effective length asks for: a model's effective length is
    /// the longest tested length up to which its accuracy stays at or above this.
    pub effective_length_threshold: f64,
}

impl Default for ReportOptions {
    fn default() -> Self {
        Self {
            title: "RoPE extension study".into(),
            base: vec![
                "base".into(),
                "base_*".into(),
                "*_base".into(),
                "base-*".into(),
                "*-base".into(),
            ],
            base_label: "base (no fine-tune)".into(),
            ablation: vec!["*ablat*".into()],
            finetune_length_column: "seq_len".into(),
            pretrained_length: None,
            finetune_length: None,
            labels: BTreeMap::new(),
            label_template: None,
            ignore_axes: Vec::new(),
            ppl_mode: PplModeKind::Truncate,
            alpha: 0.05,
            resamples: 10_000,
            bootstrap_seed: 0,
            adaptation_gate: 0.9,
            effective_length_threshold: 0.9,
        }
    }
}

impl ReportOptions {
    /// Values the report cannot use: `Err((key, message))`, checked when the pipeline is read.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if !(self.alpha > 0.0 && self.alpha < 1.0) {
            return Err(("alpha", format!("must be in (0, 1), got {}", self.alpha)));
        }
        if !(0.0..=1.0).contains(&self.adaptation_gate) {
            return Err((
                "adaptation_gate",
                format!("must be in [0, 1], got {}", self.adaptation_gate),
            ));
        }
        if !(0.0..=1.0).contains(&self.effective_length_threshold) {
            return Err((
                "effective_length_threshold",
                format!("must be in [0, 1], got {}", self.effective_length_threshold),
            ));
        }
        if self.resamples == 0 {
            return Err(("resamples", "must be at least 1".into()));
        }
        for (key, v) in [
            ("pretrained_length", self.pretrained_length),
            ("finetune_length", self.finetune_length),
        ] {
            if let Some(v) = v
                && v < 1
            {
                return Err((key, format!("must be at least 1, got {v}")));
            }
        }
        compile("base", &self.base).map_err(|e| ("base", e))?;
        compile("ablation", &self.ablation).map_err(|e| ("ablation", e))?;
        if let Some(t) = &self.label_template {
            let mut open = false;
            for c in t.chars() {
                match (c, open) {
                    ('{', false) => open = true,
                    ('}', true) => open = false,
                    ('{', true) => {
                        return Err((
                            "label_template",
                            format!("`{t}` opens a `{{` inside a `{{...}}`: write `{{column}}`"),
                        ));
                    }
                    _ => {}
                }
            }
            if open {
                return Err(("label_template", format!("`{t}` has an unclosed `{{`")));
            }
        }
        Ok(())
    }
}

/// Which part of the study a model belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Group {
    /// The pretrained model, not extended.
    Base,
    /// A RoPE extension method (or the RoPE-unchanged control), fine-tuned.
    Method,
    /// An arm of the fine-tuning-length ablation.
    Ablation,
}

/// A model of the study: its group and its matrix label without seeds (`""` without a matrix).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ModelId {
    /// Base, method or ablation arm.
    pub group: Group,
    /// The instance's matrix label after `@`, seed parts removed (`yarn`).
    pub variant: String,
}

/// Compiled stage patterns.
#[derive(Debug, Clone)]
pub struct Classifier {
    base: Vec<glob::Pattern>,
    ablation: Vec<glob::Pattern>,
    ignore_axes: Vec<String>,
}

fn compile(key: &str, patterns: &[String]) -> Result<Vec<glob::Pattern>, String> {
    patterns
        .iter()
        .map(|p| glob::Pattern::new(p).map_err(|e| format!("{key}: bad pattern {p:?}: {e}")))
        .collect()
}

impl Classifier {
    /// Compiles the options' patterns; the error names the key and the pattern.
    pub fn new(opts: &ReportOptions) -> Result<Self, String> {
        Ok(Self {
            base: compile("base", &opts.base)?,
            ablation: compile("ablation", &opts.ablation)?,
            ignore_axes: opts.ignore_axes.clone(),
        })
    }

    /// The model a row of `stage`/`instance` measures. Patterns match the stage or the
    /// instance name; everything matching `base` is the one base model (variant `""`).
    pub fn model(
        &self,
        stage: &str,
        instance: &str,
        matrix: &[(String, serde_json::Value)],
    ) -> ModelId {
        let hit = |ps: &[glob::Pattern]| ps.iter().any(|p| p.matches(stage) || p.matches(instance));
        let group = if hit(&self.base) {
            Group::Base
        } else if hit(&self.ablation) {
            Group::Ablation
        } else {
            Group::Method
        };
        ModelId {
            group,
            variant: if group == Group::Base {
                String::new()
            } else {
                self.variant(instance, matrix)
            },
        }
    }
}

impl Classifier {
    /// The model of a row that lineage shows is not the base: an ablation arm when the
    /// `ablation` patterns match, else a method.
    pub fn non_base(
        &self,
        stage: &str,
        instance: &str,
        matrix: &[(String, serde_json::Value)],
    ) -> ModelId {
        let hit = self
            .ablation
            .iter()
            .any(|p| p.matches(stage) || p.matches(instance));
        ModelId {
            group: if hit { Group::Ablation } else { Group::Method },
            variant: self.variant(instance, matrix),
        }
    }

    /// The model variant of a row: [`variant_of`] without the ignored axes' labels.
    pub fn model_variant(&self, instance: &str, matrix: &[(String, serde_json::Value)]) -> String {
        self.variant(instance, matrix)
    }

    /// [`variant_of`], also without the labels of the ignored axes' values.
    fn variant(&self, instance: &str, matrix: &[(String, serde_json::Value)]) -> String {
        let ignored: Vec<String> = self
            .ignore_axes
            .iter()
            .filter_map(|a| matrix.iter().find(|(k, _)| k == a))
            .flat_map(|(a, v)| {
                let text = match v {
                    serde_json::Value::String(s) => s
                        .chars()
                        .map(|c| {
                            if c.is_whitespace() || ",@[]".contains(c) {
                                '_'
                            } else {
                                c
                            }
                        })
                        .collect(),
                    other => other.to_string(),
                };
                [text.clone(), format!("{a}-{text}")]
            })
            .collect();
        variant_of(instance)
            .split(',')
            .filter(|p| !ignored.iter().any(|i| i == p))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Whether a matrix label part is a seed label (`seed-3`, or `extend.seed-3`).
fn is_seed_label(part: &str) -> bool {
    part.rsplit_once("seed-").is_some_and(|(head, n)| {
        (head.is_empty() || head.ends_with('.')) && n.parse::<i64>().is_ok()
    })
}

/// The instance's matrix label without seed parts: `ppl@yarn,seed-1` -> `yarn`.
pub fn variant_of(instance: &str) -> String {
    match instance.split_once('@') {
        None => String::new(),
        Some((_, labels)) => labels
            .split(',')
            .filter(|p| !is_seed_label(p))
            .collect::<Vec<_>>()
            .join(","),
    }
}

/// A number as a person writes it in a label: `4`, `0.5`, `1e5`, `1.5e5`.
pub fn compact_number(v: f64) -> String {
    if v.abs() >= 1e4 {
        format!("{v:e}")
    } else if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v}")
    }
}

fn value_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Number(n) => n.as_f64().map(compact_number).unwrap_or_default(),
        other => other.to_string(),
    }
}

fn fill_template(template: &str, matrix: &[(String, serde_json::Value)]) -> Option<String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}')? + start;
        let key = &rest[start + 1..end];
        let value = matrix.iter().find(|(k, _)| k == key)?;
        out.push_str(&value_text(&value.1));
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    Some(out)
}

/// The built-in method name of a `rope_type`.
fn rope_type_name(t: &str) -> String {
    match t {
        "linear" | "pi" => "PI",
        "ntk" => "NTK",
        "dynamic" => "Dynamic NTK",
        "yarn" => "YaRN",
        "llama3" => "Llama 3",
        "longrope" => "LongRoPE",
        "default" | "none" => "RoPE unchanged",
        other => other,
    }
    .to_string()
}

/// The display label of a method model (see [`ReportOptions::labels`] and
/// [`ReportOptions::label_template`] for the rule).
pub fn method_label(
    opts: &ReportOptions,
    variant: &str,
    instance: &str,
    matrix: &[(String, serde_json::Value)],
) -> String {
    if let Some(l) = opts
        .labels
        .get(variant)
        .or_else(|| opts.labels.get(instance))
    {
        return l.clone();
    }
    if let Some(l) = opts
        .label_template
        .as_deref()
        .and_then(|t| fill_template(t, matrix))
    {
        return l;
    }
    let get = |k: &str| matrix.iter().find(|(n, _)| n == k).map(|(_, v)| v);
    if let Some(t) = get("rope_type").and_then(|v| v.as_str()) {
        let name = rope_type_name(t);
        if name == "RoPE unchanged" {
            return name;
        }
        // An NTK entry names its enlarged base as `base` (ropelens) or `rope_theta`/`theta`.
        let theta = get("base")
            .or_else(|| get("rope_theta"))
            .or_else(|| get("theta"));
        if t == "ntk"
            && let Some(b) = theta.and_then(|v| v.as_f64())
        {
            return format!("NTK b={}", compact_number(b));
        }
        return match get("factor").and_then(|v| v.as_f64()) {
            Some(f) => format!("{name} x{}", compact_number(f)),
            None => name,
        };
    }
    if let Some(name) = get("rope").and_then(|v| v.as_str()) {
        return name.to_string();
    }
    if variant.is_empty() {
        "model".to_string()
    } else {
        variant.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn instances_map_to_models_without_seeds() {
        let c = Classifier::new(&ReportOptions::default()).unwrap();
        let m = c.model("ppl", "ppl@yarn,seed-1", &[]);
        assert_eq!((m.group, m.variant.as_str()), (Group::Method, "yarn"));
        assert_eq!(c.model("extend", "extend@yarn,seed-2", &[]), m);
        assert_eq!(c.model("base", "base", &[]).group, Group::Base);
        assert_eq!(
            c.model("needle_base", "needle_base@seed-1", &[]).variant,
            ""
        );
        assert_eq!(
            c.model("ppl_ablation", "ppl_ablation@seq_len-256", &[])
                .group,
            Group::Ablation
        );
        assert_eq!(variant_of("x@a,extend.seed-4,b"), "a,b");
        // An eval stage's own axis is ignored when asked.
        let opts = ReportOptions {
            ignore_axes: vec!["task".into(), "window".into()],
            ..Default::default()
        };
        let c2 = Classifier::new(&opts).unwrap();
        let matrix = [
            ("rope".to_string(), json!("yarn")),
            ("task".to_string(), json!("kv")),
            ("window".to_string(), json!(512)),
        ];
        assert_eq!(
            c2.model("needle", "needle@yarn,kv,window-512,seed-1", &matrix),
            m
        );
        // Instance patterns: a matrix entry can be the base model.
        let opts = ReportOptions {
            base: vec!["*@none*".into()],
            ..Default::default()
        };
        let c = Classifier::new(&opts).unwrap();
        assert_eq!(
            c.model("ppl", "ppl@none,seed-1", &[]),
            ModelId {
                group: Group::Base,
                variant: String::new()
            }
        );
        assert_eq!(c.model("ppl", "ppl@yarn", &[]).group, Group::Method);
        let bad = ReportOptions {
            ablation: vec!["[".into()],
            ..Default::default()
        };
        let err = Classifier::new(&bad).unwrap_err();
        assert!(err.starts_with("ablation: bad pattern \"[\""), "{err}");
        assert_eq!(variant_of("x@seedless"), "seedless");
    }

    #[test]
    fn labels_follow_the_documented_rule() {
        let mut opts = ReportOptions::default();
        let m = |pairs: &[(&str, serde_json::Value)]| -> Vec<(String, serde_json::Value)> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect()
        };
        let yarn = m(&[
            ("rope", json!("yarn")),
            ("rope_type", json!("yarn")),
            ("factor", json!(4.0)),
        ]);
        assert_eq!(method_label(&opts, "yarn", "ppl@yarn", &yarn), "YaRN x4");
        let pi = m(&[("rope_type", json!("linear")), ("factor", json!(8))]);
        assert_eq!(method_label(&opts, "pi", "ppl@pi", &pi), "PI x8");
        let ntk = m(&[("rope_type", json!("ntk")), ("rope_theta", json!(100000.0))]);
        assert_eq!(method_label(&opts, "ntk", "ppl@ntk", &ntk), "NTK b=1e5");
        // ropelens' own key for an explicit NTK base.
        let ntk_base = m(&[("rope_type", json!("ntk")), ("base", json!(160000.0))]);
        assert_eq!(
            method_label(&opts, "ntk_b", "ppl@ntk_b", &ntk_base),
            "NTK b=1.6e5"
        );
        let plain = m(&[("rope_type", json!("default"))]);
        assert_eq!(
            method_label(&opts, "plain", "ppl@plain", &plain),
            "RoPE unchanged"
        );
        assert_eq!(method_label(&opts, "foo", "ppl@foo", &m(&[])), "foo");
        assert_eq!(method_label(&opts, "", "ppl", &m(&[])), "model");
        opts.label_template = Some("{rope_type}/{factor}".into());
        assert_eq!(method_label(&opts, "yarn", "ppl@yarn", &yarn), "yarn/4");
        assert_eq!(
            method_label(&opts, "ntk", "ppl@ntk", &ntk),
            "NTK b=1e5",
            "missing key"
        );
        opts.labels.insert("yarn".into(), "YaRN (s=4)".into());
        assert_eq!(method_label(&opts, "yarn", "ppl@yarn", &yarn), "YaRN (s=4)");
        assert_eq!(compact_number(150000.0), "1.5e5");
        assert_eq!(compact_number(0.5), "0.5");
    }

    #[test]
    fn options_deny_unknown_keys_and_default_the_rest() {
        let o: ReportOptions = toml::from_str("alpha = 0.1\nlabels = { yarn = \"YaRN\" }").unwrap();
        assert_eq!(o.alpha, 0.1);
        assert_eq!(o.ppl_mode, PplModeKind::Truncate);
        assert_eq!(o.labels["yarn"], "YaRN");
        let err = toml::from_str::<ReportOptions>("alhpa = 0.1").unwrap_err();
        assert!(err.to_string().contains("unknown field `alhpa`"), "{err}");
        let schema = schemars::schema_for!(ReportOptions);
        let text = serde_json::to_string(&schema).unwrap();
        assert!(text.contains("finetune_length_column"), "{text}");
    }
}
