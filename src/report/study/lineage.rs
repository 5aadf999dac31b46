//! The runner's record of which instance is which: `runs.parquet` gives every instance's cache
//! key and, from the `needs` column, the keys of the instances it was built from.
//!
//! The report uses it for three things names cannot tell reliably:
//! - **one instance, counted once**: two stages can resolve to the same cache key (the
//!   ablation's 4L arm is the NTK x4 method fine-tuned at 4L); rows with a key already seen are
//!   the same measurement and are not pooled twice;
//! - **the base model**: the train instances that other instances name as `init` and that have
//!   no `init` of their own;
//! - **the base of each fine-tuned instance**: its `init` key, so that its attention profile is
//!   compared with the base it was fine-tuned from.
//!
//! Files written before the `needs` column existed give keys only; the report then falls back
//! to the name patterns for the base and says so.

use crate::results::read_parquet;
use arrow::array::{Array, AsArray};
use arrow::datatypes::DataType;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// One instance of the run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunInfo {
    /// The instance's cache key.
    pub key: String,
    /// Need name -> the keys it resolved to; `None` in files without the `needs` column.
    pub needs: Option<BTreeMap<String, Vec<String>>>,
}

/// Every instance of `runs.parquet` by (stage, instance).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Lineage {
    /// By (stage, instance name).
    pub runs: BTreeMap<(String, String), RunInfo>,
}

impl Lineage {
    /// Reads `runs.parquet`; the error names the file and column.
    pub fn load(path: &Path) -> Result<Self, String> {
        let (_, batches) = read_parquet(path).map_err(|e| e.to_string())?;
        let mut runs = BTreeMap::new();
        for batch in &batches {
            let col = |name: &str| -> Result<Option<Vec<Option<String>>>, String> {
                let Some(a) = batch.column_by_name(name) else {
                    return Ok(None);
                };
                let cast = arrow::compute::cast(a, &DataType::Utf8)
                    .map_err(|e| format!("{}: column `{name}`: {e}", path.display()))?;
                let s = cast.as_string::<i32>();
                Ok(Some(
                    (0..s.len())
                        .map(|i| (!s.is_null(i)).then(|| s.value(i).to_string()))
                        .collect(),
                ))
            };
            let required = |name: &str| {
                col(name)?.ok_or_else(|| format!("{}: no column `{name}`", path.display()))
            };
            let (stages, instances, keys) =
                (required("stage")?, required("instance")?, required("key")?);
            let needs = col("needs")?;
            for i in 0..batch.num_rows() {
                let needs = match needs.as_ref().and_then(|n| n[i].as_ref()) {
                    Some(text) => Some(serde_json::from_str(text).map_err(|e| {
                        format!("{}: row {i}: column `needs`: {e}", path.display())
                    })?),
                    None => None,
                };
                runs.insert(
                    (
                        stages[i].clone().unwrap_or_default(),
                        instances[i].clone().unwrap_or_default(),
                    ),
                    RunInfo {
                        key: keys[i].clone().unwrap_or_default(),
                        needs,
                    },
                );
            }
        }
        Ok(Self { runs })
    }

    /// The cache key of an instance.
    pub fn key(&self, stage: &str, instance: &str) -> Option<&str> {
        self.runs
            .get(&(stage.to_string(), instance.to_string()))
            .map(|r| r.key.as_str())
    }

    /// Whether the file recorded the needs (lineage), not only keys.
    pub fn has_needs(&self) -> bool {
        !self.runs.is_empty() && self.runs.values().all(|r| r.needs.is_some())
    }

    fn by_key(&self) -> BTreeMap<&str, &RunInfo> {
        self.runs.values().map(|r| (r.key.as_str(), r)).collect()
    }

    /// The key of the model an instance measures: its `model` need, or itself when it has no
    /// `model` need (a training instance).
    pub fn model_key(&self, stage: &str, instance: &str) -> Option<String> {
        let run = self.runs.get(&(stage.to_string(), instance.to_string()))?;
        match run.needs.as_ref()?.get("model") {
            Some(keys) if keys.len() == 1 => Some(keys[0].clone()),
            Some(_) => None,
            None => Some(run.key.clone()),
        }
    }

    /// The base models: instances that some instance names as its `init` and that have no
    /// `init` themselves. Empty without recorded needs.
    pub fn base_keys(&self) -> BTreeSet<String> {
        if !self.has_needs() {
            return BTreeSet::new();
        }
        let by_key = self.by_key();
        self.runs
            .values()
            .filter_map(|r| r.needs.as_ref()?.get("init"))
            .flatten()
            .filter(|k| {
                by_key
                    .get(k.as_str())
                    .and_then(|r| r.needs.as_ref())
                    .is_some_and(|n| !n.contains_key("init"))
            })
            .cloned()
            .collect()
    }

    /// The instances whose own cache key is `key` (one model can be trained under two stage
    /// names with the same settings), in (stage, instance) order.
    pub fn instances_with_key(&self, key: &str) -> Vec<(&str, &str)> {
        self.runs
            .iter()
            .filter(|(_, r)| r.key == key)
            .map(|((s, i), _)| (s.as_str(), i.as_str()))
            .collect()
    }

    /// The stages that are a **fine-tuning-length ablation**: train stages some of whose
    /// instances start from the same `init` and were trained at different sequence lengths
    /// (`seq_len` gives the trained length of a train instance, e.g. from `train_log`).
    /// Empty without recorded needs.
    pub fn ablation_stages(&self, seq_len: &BTreeMap<(String, String), i64>) -> BTreeSet<String> {
        let mut lengths: BTreeMap<(&str, &str), BTreeSet<i64>> = BTreeMap::new();
        for ((stage, instance), run) in &self.runs {
            let Some(init) = run.needs.as_ref().and_then(|n| n.get("init")) else {
                continue;
            };
            let (Some(init), Some(len)) = (
                init.first(),
                seq_len.get(&(stage.clone(), instance.clone())),
            ) else {
                continue;
            };
            lengths
                .entry((stage.as_str(), init.as_str()))
                .or_default()
                .insert(*len);
        }
        lengths
            .into_iter()
            .filter(|(_, l)| l.len() >= 2)
            .map(|((stage, _), _)| stage.to_string())
            .collect()
    }

    /// Whether the model an instance measures was trained in this run: its `model` chain (a
    /// `rope` instance's model, that model's model, ...) reaches an instance built from `data`
    /// (a train instance). `Some(false)` for a training-free model: an imported checkpoint,
    /// possibly with its RoPE changed. `None` without recorded needs.
    pub fn measures_trained_model(&self, stage: &str, instance: &str) -> Option<bool> {
        let by_key = self.by_key();
        let mut key = self.model_key(stage, instance)?;
        // A chain longer than the run has instances would be a cycle: no answer.
        for _ in 0..=self.runs.len() {
            let needs = by_key.get(key.as_str())?.needs.as_ref()?;
            if needs.contains_key("data") {
                return Some(true);
            }
            match needs.get("model") {
                Some(keys) if keys.len() == 1 => key = keys[0].clone(),
                Some(_) => return None,
                None => return Some(false),
            }
        }
        None
    }

    /// The `init` (base) key of the model an instance measures, when recorded.
    pub fn init_of(&self, stage: &str, instance: &str) -> Option<String> {
        let model = self.model_key(stage, instance)?;
        let by_key = self.by_key();
        let run = by_key.get(model.as_str())?;
        run.needs.as_ref()?.get("init")?.first().cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(key: &str, needs: &[(&str, &[&str])]) -> RunInfo {
        RunInfo {
            key: key.into(),
            needs: Some(
                needs
                    .iter()
                    .map(|(n, ks)| (n.to_string(), ks.iter().map(|k| k.to_string()).collect()))
                    .collect(),
            ),
        }
    }

    #[test]
    fn base_and_model_keys_follow_the_needs() {
        let mut l = Lineage::default();
        let mut put = |s: &str, i: &str, r: RunInfo| {
            l.runs.insert((s.into(), i.into()), r);
        };
        put("data", "data", info("d", &[]));
        put("base", "base@seed-1", info("b1", &[("data", &["d"])]));
        put(
            "extend",
            "extend@seed-1,ntk4",
            info("e1", &[("data", &["d"]), ("init", &["b1"])]),
        );
        put(
            "ablation",
            "ablation@seed-1,ft256",
            info("e1", &[("data", &["d"]), ("init", &["b1"])]),
        );
        put(
            "needle",
            "needle@seed-1,ntk4",
            info("n1", &[("data", &["d"]), ("model", &["e1"])]),
        );
        put(
            "needle_base",
            "needle_base@seed-1",
            info("nb", &[("data", &["d"]), ("model", &["b1"])]),
        );
        assert!(l.has_needs());
        assert_eq!(l.base_keys(), BTreeSet::from(["b1".to_string()]));
        assert_eq!(
            l.model_key("needle", "needle@seed-1,ntk4").as_deref(),
            Some("e1")
        );
        assert_eq!(
            l.model_key("ablation", "ablation@seed-1,ft256").as_deref(),
            Some("e1")
        );
        assert_eq!(
            l.init_of("needle", "needle@seed-1,ntk4").as_deref(),
            Some("b1")
        );
        assert_eq!(l.init_of("needle_base", "needle_base@seed-1"), None);
        assert_eq!(
            l.measures_trained_model("needle", "needle@seed-1,ntk4"),
            Some(true)
        );
        // An imported checkpoint with its RoPE changed: measured, never trained here.
        for (s, i, r) in [
            ("import", "import", info("m", &[])),
            ("ext", "ext@pi-x2", info("x", &[("model", &["m"])])),
            (
                "ppl",
                "ppl@pi-x2",
                info("p", &[("data", &["d"]), ("model", &["x"])]),
            ),
            // A RoPE change of a model trained here is a trained model.
            ("ext2", "ext2@yarn", info("y", &[("model", &["e1"])])),
            (
                "ppl2",
                "ppl2@yarn",
                info("q", &[("data", &["d"]), ("model", &["y"])]),
            ),
        ] {
            l.runs.insert((s.into(), i.into()), r);
        }
        assert_eq!(l.measures_trained_model("ppl", "ppl@pi-x2"), Some(false));
        assert_eq!(l.measures_trained_model("ppl2", "ppl2@yarn"), Some(true));
        assert_eq!(l.key("needle", "needle@seed-1,ntk4"), Some("n1"));
        assert_eq!(
            l.instances_with_key("e1"),
            vec![
                ("ablation", "ablation@seed-1,ft256"),
                ("extend", "extend@seed-1,ntk4")
            ]
        );
        // The ablation is the stage whose instances from one init train at several lengths.
        put_len_check(&l);
        // Keys only (older files): no lineage, no base.
        let mut old = l.clone();
        for r in old.runs.values_mut() {
            r.needs = None;
        }
        assert!(!old.has_needs() && old.base_keys().is_empty());
    }

    fn put_len_check(l: &Lineage) {
        let mut l = l.clone();
        l.runs.insert(
            ("ablation".into(), "ablation@seed-1,ft1024".into()),
            info("a2", &[("data", &["d"]), ("init", &["b1"])]),
        );
        let len = |pairs: &[(&str, &str, i64)]| -> BTreeMap<(String, String), i64> {
            pairs
                .iter()
                .map(|(s, i, n)| ((s.to_string(), i.to_string()), *n))
                .collect()
        };
        let seq = len(&[
            ("base", "base@seed-1", 64),
            ("extend", "extend@seed-1,ntk4", 256),
            ("ablation", "ablation@seed-1,ft256", 256),
            ("ablation", "ablation@seed-1,ft1024", 1024),
        ]);
        assert_eq!(
            l.ablation_stages(&seq),
            BTreeSet::from(["ablation".to_string()])
        );
        // One length per init: no ablation, whatever the stage is called.
        let one = len(&[
            ("ablation", "ablation@seed-1,ft256", 256),
            ("ablation", "ablation@seed-1,ft1024", 256),
        ]);
        assert!(l.ablation_stages(&one).is_empty());
    }
}
