//! The report's frequency view (issue 12's item 4): for each model's RoPE, per frequency pair
//! its wavelength, the rotations it completes within the pretrained length L, and the
//! interpolation ratio the method applies. It is the picture that explains why a method keeps
//! or loses local order: the pairs that rotate many times within L resolve neighbouring tokens,
//! and a method that slows them down blurs them.
//!
//! The models' `config.json` files come from the `model_config` table that the report stage
//! publishes; the view itself is [`crate::report::frequencies`], the same as `pipe rope`.

use super::data::Study;
use super::figures::Figures;
use super::options::{Group, ModelId};
use crate::model::LlamaConfig;
use crate::report::frequencies::{PairRow, Zone, frequency_view, yarn_betas};
use crate::report::plots::{LineChart, Scale, Series};
use crate::report::tables::{Align, markdown_table};
use std::fmt::Write as _;

/// One model's view.
struct ModelView {
    id: ModelId,
    label: String,
    rope_text: String,
    theta: f64,
    head_dim: usize,
    rows: Vec<PairRow>,
}

/// The views of the base and the methods (ablation arms share a method's RoPE), one per model,
/// from the first seed's `config.json`; models whose config cannot be read are named in
/// `problems`.
fn views(study: &Study, length: usize, problems: &mut Vec<String>) -> Vec<ModelView> {
    let mut out: Vec<ModelView> = Vec::new();
    for m in study
        .models
        .iter()
        .filter(|m| m.id.group != Group::Ablation)
    {
        let Some(row) = study
            .model_config
            .iter()
            .find(|r| study.model_of(r) == m.id)
        else {
            continue;
        };
        let source = format!("model_config of {}", row.instance);
        let config = match LlamaConfig::from_hf_json_str(&row.row.config, &source) {
            Ok(c) => c,
            Err(e) => {
                problems.push(e.to_string());
                continue;
            }
        };
        let rope = config.rope;
        let seq_len = rope
            .scaling
            .kind()
            .extended_length(length)
            .or(m.ft_length.map(|l| l as usize))
            .unwrap_or(length);
        let rows = frequency_view(&rope, config.head_dim, length, seq_len);
        out.push(ModelView {
            id: m.id.clone(),
            label: m.label.clone(),
            rope_text: format!("{}, theta {}", rope.rope_type(), rope.theta),
            theta: rope.theta,
            head_dim: config.head_dim,
            rows,
        });
    }
    out
}

fn zone_count(rows: &[PairRow], zone: Zone) -> usize {
    rows.iter().filter(|r| r.zone == zone).count()
}

/// `## RoPE frequencies`: a summary per model, the per-pair table and the ratio figure.
pub fn frequency_section(md: &mut String, study: &Study, figs: &mut Figures) {
    let _ = writeln!(md, "## RoPE frequencies\n");
    if study.model_config.is_empty() {
        let _ = writeln!(
            md,
            "Not shown: no `model_config` table (the report stage writes it from the models' \
             config.json; results written before report v2 lack it).\n"
        );
        return;
    }
    let Some((length, _)) = study.pretrained_length else {
        let _ = writeln!(md, "Not shown: the pretrained length L is unknown.\n");
        return;
    };
    let length = length as usize;
    let views = views(study, length, &mut figs.problems);
    let Some(first) = views.first() else {
        let _ = writeln!(md, "Not shown: no model of the study has a config.json.\n");
        return;
    };
    let plain = &first.rows;
    let rotating = plain.iter().filter(|r| r.rotations_in_l >= 1.0).count();
    let _ = write!(
        md,
        "Per RoPE frequency pair `i` (dimensions 2i, 2i+1; pair 0 turns fastest): its wavelength \
         `2 pi / inv_freq` in tokens, the rotations it completes within the pretrained length \
         L = {length} ({rotating} of {} pairs rotate at least once; LLaMA-2 at 4K: 46 of 64), and \
         the interpolation ratio each method applies (the plain inverse frequency over the \
         method's: 1 = kept as pretrained, the factor = fully interpolated as PI does, in \
         between = ramped). Pairs that rotate many times within L resolve the order of \
         neighbouring tokens; slowing them down blurs it.",
        plain.len()
    );
    let (bf, bs) = yarn_betas(first.theta, length);
    let _ = write!(
        md,
        " YaRN's beta_fast / beta_slow that put the ramp where LLaMA-2 at 4K has it \
         (docs/study.md): {bf:.2} / {bs:.2}."
    );
    md.push_str("\n\n");
    let summary: Vec<Vec<String>> = views
        .iter()
        .map(|v| {
            let max = v.rows.iter().map(|r| r.ratio).fold(1.0, f64::max);
            vec![
                v.label.clone(),
                v.rope_text.clone(),
                v.head_dim.to_string(),
                zone_count(&v.rows, Zone::Kept).to_string(),
                zone_count(&v.rows, Zone::Ramped).to_string(),
                zone_count(&v.rows, Zone::Interpolated).to_string(),
                format!("{max:.2}"),
            ]
        })
        .collect();
    md.push_str(&markdown_table(
        &[
            "model",
            "RoPE",
            "head_dim",
            "pairs kept",
            "ramped",
            "interpolated",
            "largest ratio",
        ]
        .map(String::from),
        &summary,
        &[
            Align::Left,
            Align::Left,
            Align::Right,
            Align::Right,
            Align::Right,
            Align::Right,
            Align::Right,
        ],
    ));
    md.push('\n');
    // Per pair: the plain model's geometry, then each method's ratio.
    let methods: Vec<&ModelView> = views.iter().filter(|v| v.id.group != Group::Base).collect();
    let header: Vec<String> = ["pair", "wavelength", "rotations in L"]
        .map(String::from)
        .into_iter()
        .chain(methods.iter().map(|v| v.label.clone()))
        .collect();
    let rows: Vec<Vec<String>> = plain
        .iter()
        .enumerate()
        .map(|(i, p)| {
            [
                p.pair.to_string(),
                format!("{:.1}", p.wavelength),
                format!("{:.2}", p.rotations_in_l),
            ]
            .into_iter()
            .chain(methods.iter().map(|v| {
                v.rows
                    .get(i)
                    .map(|r| format!("{:.2}", r.ratio))
                    .unwrap_or_default()
            }))
            .collect()
        })
        .collect();
    let align = vec![Align::Right; header.len()];
    let _ = writeln!(md, "Interpolation ratio per pair and method:\n");
    md.push_str(&markdown_table(&header, &rows, &align));
    md.push('\n');
    let mut chart = LineChart::new(
        format!("Interpolation ratio per RoPE frequency pair (L = {length})"),
        "frequency pair (0 = fastest)",
        "interpolation ratio (1 = kept)",
    );
    chart.y_scale = Scale::Log2;
    for v in &methods {
        let mut s = Series::new(
            v.label.clone(),
            v.rows.iter().map(|r| (r.pair as f64, r.ratio)).collect(),
        );
        s.color = study.models.iter().position(|m| m.id == v.id);
        chart.series.push(s);
    }
    if let Some(img) = figs.line_chart(&chart, "rope_frequencies") {
        md.push_str(&img);
        md.push('\n');
    }
}
