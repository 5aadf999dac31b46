//! The report's PNG figures, built from the study's per-model numbers with `report::plots`.
//!
//! Each function draws one kind of figure and returns the Markdown that embeds it; a figure
//! that cannot be drawn (no data) is skipped, and a drawing error is recorded in
//! [`Figures::problems`] for the report to show, never raised.

use super::data::{Metric, Study, cell};
use super::options::{Group, ModelId};
use super::stats::mean;
use crate::report::plots::{
    Heatmap, LineChart, Scale, Series, VLine, render_heatmap, render_line_chart, token_count_label,
};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Collects written figures and drawing problems.
pub struct Figures<'a> {
    /// Where PNGs go.
    pub dir: &'a Path,
    /// Files written, in order.
    pub written: Vec<PathBuf>,
    /// Figures that failed to draw, with the reason.
    pub problems: Vec<String>,
    used: BTreeSet<String>,
}

/// A file-name-safe slug of a label: `YaRN x4` -> `yarn-x4`.
pub fn slug(label: &str) -> String {
    let mut s: String = label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    while s.contains("--") {
        s = s.replace("--", "-");
    }
    s.trim_matches('-').to_string()
}

/// The palette slot of a model: its place in the report's model order, the same in every
/// figure.
fn model_color(study: &Study, id: &ModelId) -> Option<usize> {
    study.models.iter().position(|m| &m.id == id)
}

/// `1024` -> `1K` for tick labels.
fn compact(n: i64) -> String {
    if n >= 1024 && n % 1024 == 0 {
        format!("{}K", n / 1024)
    } else {
        n.to_string()
    }
}

impl<'a> Figures<'a> {
    /// Figures into `dir`.
    pub fn new(dir: &'a Path) -> Self {
        Self {
            dir,
            written: Vec::new(),
            problems: Vec::new(),
            used: BTreeSet::new(),
        }
    }

    fn name(&mut self, stem: &str) -> String {
        let mut name = format!("{stem}.png");
        let mut k = 2;
        while !self.used.insert(name.clone()) {
            name = format!("{stem}-{k}.png");
            k += 1;
        }
        name
    }

    /// Draws a prepared line chart as `<stem>.png`: the Markdown image line, or `None` (the
    /// reason in `problems`) when it has no points or cannot be drawn.
    pub fn line_chart(&mut self, chart: &LineChart, stem: &str) -> Option<String> {
        self.line(chart, stem)
    }

    fn line(&mut self, chart: &LineChart, stem: &str) -> Option<String> {
        if chart.series.iter().all(|s| s.points.is_empty()) {
            return None;
        }
        let name = self.name(stem);
        let path = self.dir.join(&name);
        match render_line_chart(chart, &path) {
            Ok(()) => {
                self.written.push(path);
                Some(format!("![{}]({name})\n", chart.title))
            }
            Err(e) => {
                self.problems.push(e.to_string());
                None
            }
        }
    }

    /// A metric against context length, one line per model (seed means), with dashed lines at
    /// the given lengths.
    #[allow(clippy::too_many_arguments)]
    pub fn metric_vs_length(
        &mut self,
        study: &Study,
        metric: &Metric,
        ids: &[&ModelId],
        title: &str,
        y_label: &str,
        y_scale: Scale,
        vlines: &[VLine],
        stem: &str,
    ) -> Option<String> {
        let mut chart = LineChart::new(title, "context length (tokens)", y_label);
        chart.x_scale = Scale::Log2;
        chart.y_scale = y_scale;
        // A tick at every measured length: a 12K point between the 8K and 16K powers of two
        // would otherwise be drawn unlabeled.
        let measured: BTreeSet<i64> = ids
            .iter()
            .filter_map(|id| metric.get(*id))
            .flat_map(|by_len| by_len.keys().copied())
            .collect();
        if (2..=12).contains(&measured.len()) {
            chart.x_ticks = Some(
                measured
                    .iter()
                    .map(|&l| (l as f64, token_count_label(l as u64)))
                    .collect(),
            );
        }
        for id in ids {
            let Some(by_len) = metric.get(*id) else {
                continue;
            };
            let points: Vec<(f64, f64)> = by_len
                .keys()
                .map(|l| (*l as f64, mean(&cell(metric, id, *l))))
                .collect();
            let mut series = Series::new(study.label(id), points);
            // One colour per model across figures; bars span the seeds' range.
            series.color = model_color(study, id);
            series.whiskers = by_len
                .keys()
                .filter_map(|l| {
                    let v = cell(metric, id, *l);
                    (v.len() > 1).then(|| {
                        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
                        let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                        (*l as f64, lo, hi)
                    })
                })
                .collect();
            chart.series.push(series);
        }
        chart.vlines = vlines.to_vec();
        self.line(&chart, stem)
    }

    /// One needle heatmap per model (and task, when there are several): pass rate by length and
    /// depth, each cell annotated with its mean answer entropy, a dashed line after the model's
    /// fine-tuning (or, for the base, pretrained) length.
    pub fn needle_heatmaps(&mut self, study: &Study) -> Vec<String> {
        let tasks: BTreeSet<&str> = study.needle.iter().map(|r| r.row.task.as_str()).collect();
        let per_task = tasks.len() > 1;
        let mut out = Vec::new();
        // An instance shared with an earlier model is drawn once, under that model.
        for m in study.models.iter().filter(|m| m.shared_with.is_none()) {
            for task in tasks
                .iter()
                .map(|t| Some(*t))
                .filter(|_| per_task)
                .chain(std::iter::once(None).filter(|_| !per_task))
            {
                // (length, depth in basis points) -> (passes, n, entropy sum, entropy n)
                let mut cells: BTreeMap<(i64, i64), (f64, f64, f64, f64)> = BTreeMap::new();
                for r in &study.needle {
                    if task.is_some_and(|t| r.row.task != t) || study.model_of(r) != m.id {
                        continue;
                    }
                    let depth = (r.row.depth * 10_000.0).round() as i64;
                    let e = cells.entry((r.row.length, depth)).or_default();
                    e.0 += f64::from(u8::from(super::data::passed(&r.row)));
                    e.1 += 1.0;
                    if let Some(h) = r.row.entropy_mean.filter(|h| h.is_finite()) {
                        e.2 += h;
                        e.3 += 1.0;
                    }
                }
                if cells.is_empty() {
                    continue;
                }
                let lengths: Vec<i64> = cells
                    .keys()
                    .map(|k| k.0)
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect();
                let depths: Vec<i64> = cells
                    .keys()
                    .map(|k| k.1)
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect();
                let values = depths
                    .iter()
                    .map(|d| {
                        lengths
                            .iter()
                            .map(|l| cells.get(&(*l, *d)).map(|c| c.0 / c.1))
                            .collect()
                    })
                    .collect();
                let annotations = depths
                    .iter()
                    .map(|d| {
                        lengths
                            .iter()
                            .map(|l| {
                                cells
                                    .get(&(*l, *d))
                                    .filter(|c| c.3 > 0.0)
                                    .map(|c| c.2 / c.3)
                            })
                            .collect()
                    })
                    .collect();
                // Trials per cell (seeds pooled), so the pass rate's resolution is visible.
                let counts: BTreeSet<i64> = cells.values().map(|c| c.1 as i64).collect();
                let trials = match (counts.first(), counts.last()) {
                    (Some(1), Some(1)) => "1 trial per cell".into(),
                    (Some(a), Some(b)) if a == b => format!("{a} trials per cell"),
                    (Some(a), Some(b)) => format!("{a}-{b} trials per cell"),
                    _ => String::new(),
                };
                let title = match task {
                    Some(t) => format!(
                        "Needle ({t}): {} — {trials}; cell text: mean entropy (nats)",
                        m.label
                    ),
                    None => format!(
                        "Needle retrieval: {} — {trials}; cell text: mean entropy (nats)",
                        m.label
                    ),
                };
                let mut map = Heatmap::new(
                    title.clone(),
                    lengths.iter().map(|l| compact(*l)).collect(),
                    depths
                        .iter()
                        .map(|d| format!("{}", (*d as f64 / 100.0).round()))
                        .collect(),
                    values,
                );
                map.annotations = Some(annotations);
                map.y_label = "needle depth (%; 0 = farthest from the question)".into();
                map.colorbar_label = "pass rate".into();
                let line_at = match m.id.group {
                    Group::Base => study
                        .pretrained_length
                        .as_ref()
                        .map(|p| (p.0, format!("pretrained {}", p.0))),
                    _ => m.ft_length.map(|l| (l, format!("fine-tuned {l}"))),
                };
                if let Some((len, label)) = line_at {
                    let xs: Vec<f64> = lengths.iter().map(|l| *l as f64).collect();
                    let b = Heatmap::boundary_after(&xs, len as f64);
                    if b > 0.0 && (b as usize) < lengths.len() {
                        map.vline = Some(VLine::new(b, label));
                    }
                }
                let stem = match task {
                    Some(t) => format!("needle_{}_{}", slug(&m.label), slug(t)),
                    None => format!("needle_{}", slug(&m.label)),
                };
                let name = self.name(&stem);
                let path = self.dir.join(&name);
                match render_heatmap(&map, &path) {
                    Ok(_) => {
                        self.written.push(path);
                        out.push(format!("![{title}]({name})\n"));
                    }
                    Err(e) => self.problems.push(e.to_string()),
                }
            }
        }
        out
    }

    /// Mean attention by relative distance at `length`, one line per model.
    pub fn distance_at(&mut self, study: &Study, ids: &[&ModelId], length: i64) -> Option<String> {
        let mut chart = LineChart::new(
            format!("Mean attention by relative distance at length {length}"),
            "relative distance (tokens, log-spaced buckets)",
            "mean attention probability",
        );
        chart.y_scale = Scale::Log10;
        let mut ticks: BTreeMap<i64, i64> = BTreeMap::new();
        for id in ids {
            let profile = study.distance_profile(id, length);
            if profile.is_empty() {
                continue;
            }
            for (b, lo, _) in &profile {
                ticks.insert(*b, *lo);
            }
            let mut series = Series::new(
                study.label(id),
                profile.iter().map(|(b, _, p)| (*b as f64, *p)).collect(),
            );
            series.color = model_color(study, id);
            chart.series.push(series);
        }
        // At most about 14 labelled ticks keep the axis readable.
        let step = ticks.len().div_ceil(14).max(1);
        chart.x_ticks = Some(
            ticks
                .iter()
                .enumerate()
                .filter(|(i, _)| i % step == 0)
                .map(|(_, (b, lo))| (*b as f64, compact(*lo)))
                .collect(),
        );
        self.line(&chart, &format!("attention_distance_{length}"))
    }

    /// Training loss against step, one line per model (mean over seeds at each step, then a
    /// centred moving average so that the trend is visible).
    pub fn loss_curves(
        &mut self,
        study: &Study,
        ids: &[&ModelId],
        title: &str,
        stem: &str,
        validation: bool,
    ) -> Option<String> {
        let mut chart = LineChart::new(title, "step", "loss (nats/token)");
        chart.y_scale = Scale::Log10;
        chart.markers = validation;
        let mut window_used = 1;
        for id in ids {
            let mut by_step: BTreeMap<i64, (f64, f64)> = BTreeMap::new();
            if validation {
                for r in study.val_log.iter().filter(|r| &study.model_of(r) == *id) {
                    let e = by_step.entry(r.row.step).or_default();
                    e.0 += r.row.val_loss;
                    e.1 += 1.0;
                }
            } else {
                for r in study.train_log.iter().filter(|r| &study.model_of(r) == *id) {
                    let e = by_step.entry(r.row.step).or_default();
                    e.0 += r.row.loss;
                    e.1 += 1.0;
                }
            }
            if by_step.is_empty() {
                continue;
            }
            let raw: Vec<(f64, f64)> = by_step
                .iter()
                .map(|(s, (sum, n))| (*s as f64, sum / n))
                .collect();
            let window = if validation {
                1
            } else {
                (raw.len() / 60).max(1)
            };
            window_used = window_used.max(window);
            let half = window / 2;
            let points = (0..raw.len())
                .map(|i| {
                    let lo = i.saturating_sub(half);
                    let hi = (i + half + 1).min(raw.len());
                    let ys: Vec<f64> = raw[lo..hi].iter().map(|p| p.1).collect();
                    (raw[i].0, mean(&ys))
                })
                .collect();
            let mut series = Series::new(study.label(id), points);
            series.color = model_color(study, id);
            chart.series.push(series);
        }
        if window_used > 1 {
            chart.title = format!("{title} (moving average over {window_used} logged steps)");
        }
        self.line(&chart, stem)
    }
}

/// The lengths at which attention by distance is drawn: the pretrained length, each method's
/// fine-tuning length, and the longest measured length, where measured.
pub fn distance_lengths(study: &Study) -> Vec<i64> {
    let measured: BTreeSet<i64> = study
        .attention_distance
        .iter()
        .map(|r| r.row.length)
        .collect();
    let mut want: BTreeSet<i64> = BTreeSet::new();
    if let Some((l, _)) = &study.pretrained_length {
        want.insert(*l);
    }
    for m in study.group(Group::Method) {
        if let Some(l) = m.ft_length {
            want.insert(l);
        }
    }
    if let Some(l) = measured.iter().next_back() {
        want.insert(*l);
    }
    want.into_iter().filter(|l| measured.contains(l)).collect()
}
