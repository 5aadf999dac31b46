//! PNG figures for report.md: line charts (perplexity, entropy, loss, attention by distance) and
//! the needle heatmap.
//!
//! Built on plotters with its `ab_glyph` text renderer, so the font is shipped inside the binary
//! (DejaVu Sans, `assets/`) and plots look the same on every machine, with no system fonts. Both
//! plot kinds are described by plain structs that a report stage fills from the result tables;
//! rendering owns every layout decision (sizes, margins, legend outside the data, tick choice on
//! log axes), so all figures of a report look alike.

use plotters::coord::Shift;
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The family name the embedded font is registered under.
const FONT: &str = "sans-serif";
static FONT_BYTES: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");

/// Why a plot could not be written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlotError {
    /// The embedded font did not load (a build problem, not an input problem).
    #[error("cannot load the embedded plot font (assets/DejaVuSans.ttf)")]
    Font,
    /// The plot description cannot be drawn.
    #[error("plot {path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    /// plotters or the PNG encoder failed.
    #[error("plot {path}: drawing failed: {message}")]
    Draw { path: PathBuf, message: String },
    /// The output directory could not be created.
    #[error("plot {path}: cannot create its directory: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn ensure_font() -> Result<(), PlotError> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        plotters::style::register_font(FONT, FontStyle::Normal, FONT_BYTES).is_ok()
    });
    if ok { Ok(()) } else { Err(PlotError::Font) }
}

/// A linear axis over `[lo, hi]` whose ticks are chosen here: plotters' own f64 axis picks its
/// ticks itself, which on a transformed (log) axis lands them between powers.
#[derive(Debug, Clone)]
struct TickedAxis {
    lo: f64,
    hi: f64,
    ticks: Vec<f64>,
}

impl Ranged for TickedAxis {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        let t = (value - self.lo) / (self.hi - self.lo);
        limit.0 + (t * (limit.1 - limit.0) as f64).round() as i32
    }

    fn key_points<H: KeyPointHint>(&self, hint: H) -> Vec<f64> {
        // Only bold points: the light mesh is not drawn.
        if hint.weight().allow_light_points() {
            Vec::new()
        } else {
            self.ticks.clone()
        }
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.lo..self.hi
    }
}

fn axis(lo: f64, hi: f64, ticks: &[(f64, String)]) -> TickedAxis {
    TickedAxis {
        lo,
        hi,
        ticks: ticks.iter().map(|t| t.0).collect(),
    }
}

/// How an axis maps data to position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scale {
    /// Evenly spaced values.
    #[default]
    Linear,
    /// Powers of two evenly spaced; ticks at powers of two labelled `128`, `1K`, `2K`, `1M`.
    /// The axis for sequence lengths.
    Log2,
    /// Powers of ten evenly spaced; ticks at 1-2-5 steps when the range is narrow.
    Log10,
}

impl Scale {
    fn forward(self, v: f64) -> f64 {
        match self {
            Scale::Linear => v,
            Scale::Log2 => v.log2(),
            Scale::Log10 => v.log10(),
        }
    }

    fn inverse(self, t: f64) -> f64 {
        match self {
            Scale::Linear => t,
            Scale::Log2 => t.exp2(),
            Scale::Log10 => 10f64.powf(t),
        }
    }

    fn accepts(self, v: f64) -> bool {
        v.is_finite() && (self == Scale::Linear || v > 0.0)
    }
}

/// One named line of a [`LineChart`].
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Legend entry.
    pub name: String,
    /// `(x, y)` in data units, drawn in the given order. Points that an axis cannot show
    /// (non-finite, or `<= 0` on a log axis) are left out and break the line there.
    pub points: Vec<(f64, f64)>,
    /// Palette slot ([`series_color`]); `None`: the series' index. A fixed slot per model keeps
    /// one colour per model across figures that show different subsets.
    pub color: Option<usize>,
    /// Vertical bars `(x, lo, hi)` in data units (e.g. the range over seeds), drawn in the
    /// series' colour with caps; bars an axis cannot show are left out.
    pub whiskers: Vec<(f64, f64, f64)>,
}

impl Series {
    /// A series from a name and points.
    pub fn new(name: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Self {
            name: name.into(),
            points,
            color: None,
            whiskers: Vec::new(),
        }
    }
}

/// A labelled vertical dashed line at `x` (data units), e.g. a training length.
#[derive(Debug, Clone, PartialEq)]
pub struct VLine {
    /// Position in data units (for a [`Heatmap`], in column units: see [`Heatmap::vline`]).
    pub x: f64,
    /// Short text drawn next to the line's top end; may be empty.
    pub label: String,
}

impl VLine {
    /// A line at `x` with a label.
    pub fn new(x: f64, label: impl Into<String>) -> Self {
        Self {
            x,
            label: label.into(),
        }
    }
}

/// A multi-series line chart: perplexity or entropy vs length per method, training loss,
/// attention by distance.
#[derive(Debug, Clone, PartialEq)]
pub struct LineChart {
    /// Drawn above the plot.
    pub title: String,
    /// X axis description.
    pub x_label: String,
    /// Y axis description.
    pub y_label: String,
    /// X axis scale (use [`Scale::Log2`] for lengths).
    pub x_scale: Scale,
    /// Y axis scale (use [`Scale::Log10`] for perplexity).
    pub y_scale: Scale,
    /// The lines; colours follow the order.
    pub series: Vec<Series>,
    /// Vertical dashed lines.
    pub vlines: Vec<VLine>,
    /// Custom x ticks `(x in data units, label)`, replacing the automatic ones; e.g. bucket
    /// indices labelled with [`DistanceBuckets::short_label`](crate::analysis::distance::DistanceBuckets::short_label).
    pub x_ticks: Option<Vec<(f64, String)>>,
    /// Whether to mark each data point with a dot (useful when points are few, e.g. lengths).
    pub markers: bool,
    /// Image size in pixels.
    pub size: (u32, u32),
}

impl LineChart {
    /// An empty linear chart of 1200 x 700 pixels with markers.
    pub fn new(
        title: impl Into<String>,
        x_label: impl Into<String>,
        y_label: impl Into<String>,
    ) -> Self {
        Self {
            title: title.into(),
            x_label: x_label.into(),
            y_label: y_label.into(),
            x_scale: Scale::Linear,
            y_scale: Scale::Linear,
            series: Vec::new(),
            vlines: Vec::new(),
            x_ticks: None,
            markers: true,
            size: (1200, 700),
        }
    }
}

/// Colour-blind-friendly qualitative palette (Okabe-Ito, then Tableau extras).
const PALETTE: [RGBColor; 10] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(230, 159, 0),
    RGBColor(86, 180, 233),
    RGBColor(0, 0, 0),
    RGBColor(140, 86, 75),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
];

/// The colour of the `index`-th series of a [`LineChart`] (the palette repeats after 10).
pub fn series_color(index: usize) -> (u8, u8, u8) {
    let c = PALETTE[index % PALETTE.len()];
    (c.0, c.1, c.2)
}

const TITLE_SIZE: u32 = 30;
const AXIS_DESC_SIZE: u32 = 24;
const TICK_SIZE: u32 = 20;
const LEGEND_SIZE: u32 = 20;
const NOTE_SIZE: u32 = 18;

fn draw_err<E: std::fmt::Display>(path: &Path) -> impl Fn(E) -> PlotError + '_ {
    move |e| PlotError::Draw {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

fn prepare(path: &Path, size: (u32, u32)) -> Result<(), PlotError> {
    ensure_font()?;
    if size.0 < 200 || size.1 < 150 || size.0 > 10_000 || size.1 > 10_000 {
        return Err(PlotError::Invalid {
            path: path.to_path_buf(),
            reason: format!(
                "image size {}x{} is outside 200x150..10000x10000",
                size.0, size.1
            ),
        });
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|source| PlotError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    }
    Ok(())
}

/// Draws the title centred at the top and returns the area below it.
fn titled<'a>(
    root: &DrawingArea<BitMapBackend<'a>, Shift>,
    title: &str,
    path: &Path,
) -> Result<DrawingArea<BitMapBackend<'a>, Shift>, PlotError> {
    if title.is_empty() {
        return Ok(root.clone());
    }
    let style = TextStyle::from((FONT, TITLE_SIZE).into_font())
        .pos(Pos::new(HPos::Center, VPos::Top))
        .color(&BLACK);
    let (w, _) = root.dim_in_pixel();
    root.draw_text(title, &style, (w as i32 / 2, 14))
        .map_err(draw_err(path))?;
    let (_, below) = root.split_vertically(TITLE_SIZE as i32 + 28);
    Ok(below)
}

/// Renders a [`LineChart`] to a PNG file at `path` (its directory is created if missing).
///
/// The legend sits in its own column right of the plot, so it never covers data. Errors: no
/// drawable point in any series, a bad tick or line position, an image size outside
/// 200x150..10000x10000, or a drawing/encoding failure.
pub fn render_line_chart(chart: &LineChart, path: &Path) -> Result<(), PlotError> {
    prepare(path, chart.size)?;
    let invalid = |reason: String| PlotError::Invalid {
        path: path.to_path_buf(),
        reason,
    };

    // Data extent in transformed units, over drawable points only.
    let drawable = |&(x, y): &(f64, f64)| chart.x_scale.accepts(x) && chart.y_scale.accepts(y);
    let (mut x_min, mut x_max, mut y_min, mut y_max) = (
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::INFINITY,
        f64::NEG_INFINITY,
    );
    let whisker_ends = chart.series.iter().flat_map(|s| {
        s.whiskers
            .iter()
            .flat_map(|&(x, lo, hi)| [(x, lo), (x, hi)])
    });
    for (x, y) in chart
        .series
        .iter()
        .flat_map(|s| s.points.iter().copied())
        .chain(whisker_ends)
        .filter(drawable)
    {
        let (tx, ty) = (chart.x_scale.forward(x), chart.y_scale.forward(y));
        x_min = x_min.min(tx);
        x_max = x_max.max(tx);
        y_min = y_min.min(ty);
        y_max = y_max.max(ty);
    }
    if !x_min.is_finite() {
        return Err(invalid(format!(
            "no drawable points in {} series (non-finite values, or <= 0 on a log axis)",
            chart.series.len()
        )));
    }
    for line in &chart.vlines {
        if !chart.x_scale.accepts(line.x) {
            return Err(invalid(format!(
                "vertical line {:?} at x = {} cannot be drawn on this x axis",
                line.label, line.x
            )));
        }
        let t = chart.x_scale.forward(line.x);
        x_min = x_min.min(t);
        x_max = x_max.max(t);
    }
    if let Some(ticks) = &chart.x_ticks
        && let Some((x, label)) = ticks.iter().find(|(x, _)| !chart.x_scale.accepts(*x))
    {
        return Err(invalid(format!(
            "x tick {label:?} at x = {x} cannot be drawn on this x axis"
        )));
    }
    let (x_lo, x_hi) = padded(x_min, x_max, 0.03);
    let (y_lo, y_hi) = padded(y_min, y_max, 0.06);

    let x_tick_list: Vec<(f64, String)> = match &chart.x_ticks {
        Some(ticks) => ticks
            .iter()
            .map(|(x, l)| (chart.x_scale.forward(*x), l.clone()))
            .filter(|(t, _)| *t >= x_lo && *t <= x_hi)
            .collect(),
        None => ticks(chart.x_scale, x_lo, x_hi),
    };
    let y_tick_list = ticks(chart.y_scale, y_lo, y_hi);

    let root = BitMapBackend::new(path, chart.size).into_drawing_area();
    root.fill(&WHITE).map_err(draw_err(path))?;
    let body = titled(&root, &chart.title, path)?;

    // Legend column: as wide as the longest name plus the colour sample.
    let legend_font = (FONT, LEGEND_SIZE).into_font();
    let mut legend_w = 0;
    for s in &chart.series {
        let (w, _) = root
            .estimate_text_size(&s.name, &TextStyle::from(legend_font.clone()))
            .map_err(draw_err(path))?;
        legend_w = legend_w.max(w);
    }
    let legend_w = if chart.series.is_empty() {
        0
    } else {
        (legend_w + 80).min(chart.size.0 / 3)
    };
    let (plot_area, legend_area) = body.split_horizontally(chart.size.0 as i32 - legend_w as i32);

    let x_labels = x_tick_list.clone();
    let y_labels = y_tick_list.clone();
    let x_fmt = move |v: &f64| label_at(&x_labels, *v);
    let y_fmt = move |v: &f64| label_at(&y_labels, *v);

    let mut ctx = ChartBuilder::on(&plot_area)
        .margin_left(10)
        .margin_right(20)
        .margin_top(10)
        .margin_bottom(10)
        .x_label_area_size(70)
        .y_label_area_size(y_label_area_width(&root, &y_tick_list, path)?)
        .build_cartesian_2d(
            axis(x_lo, x_hi, &x_tick_list),
            axis(y_lo, y_hi, &y_tick_list),
        )
        .map_err(draw_err(path))?;
    let x_tick_px: Vec<i32> = x_tick_list
        .iter()
        .map(|t| ctx.backend_coord(&(t.0, y_lo)).0)
        .collect();
    let spacing = x_tick_px.windows(2).map(|w| (w[1] - w[0]).abs()).min();
    let x_tick_size = fit_tick_size(&root, &x_tick_list, spacing, path)?;
    ctx.configure_mesh()
        .x_desc(chart.x_label.as_str())
        .y_desc(chart.y_label.as_str())
        .x_label_formatter(&x_fmt)
        .y_label_formatter(&y_fmt)
        .x_label_style((FONT, x_tick_size))
        .y_label_style((FONT, TICK_SIZE))
        .axis_desc_style((FONT, AXIS_DESC_SIZE))
        .bold_line_style(RGBColor(225, 225, 225))
        .light_line_style(TRANSPARENT)
        .axis_style(RGBColor(90, 90, 90))
        .draw()
        .map_err(draw_err(path))?;

    // Vertical lines under the data, labels stacked so that neighbours do not collide.
    for (i, line) in chart.vlines.iter().enumerate() {
        let t = chart.x_scale.forward(line.x);
        ctx.draw_series(DashedLineSeries::new(
            [(t, y_lo), (t, y_hi)],
            9,
            6,
            RGBColor(70, 70, 70).stroke_width(2),
        ))
        .map_err(draw_err(path))?;
        if !line.label.is_empty() {
            let (px, py) = ctx.backend_coord(&(t, y_hi));
            let style = TextStyle::from((FONT, NOTE_SIZE).into_font())
                .color(&RGBColor(50, 50, 50))
                .pos(Pos::new(HPos::Left, VPos::Top));
            let row = (i % 3) as i32 * (NOTE_SIZE as i32 + 6);
            root.draw_text(&line.label, &style, (px + 6, py + 6 + row))
                .map_err(draw_err(path))?;
        }
    }

    for (i, s) in chart.series.iter().enumerate() {
        let color = PALETTE[s.color.unwrap_or(i) % PALETTE.len()];
        for &(x, lo, hi) in &s.whiskers {
            if !(drawable(&(x, lo)) && drawable(&(x, hi))) {
                continue;
            }
            let (tx, tlo, thi) = (
                chart.x_scale.forward(x),
                chart.y_scale.forward(lo),
                chart.y_scale.forward(hi),
            );
            let ((px, plo), (_, phi)) =
                (ctx.backend_coord(&(tx, tlo)), ctx.backend_coord(&(tx, thi)));
            let style = color.stroke_width(2);
            for seg in [
                vec![(px, plo), (px, phi)],
                vec![(px - 5, plo), (px + 5, plo)],
                vec![(px - 5, phi), (px + 5, phi)],
            ] {
                root.draw(&PathElement::new(seg, style))
                    .map_err(draw_err(path))?;
            }
        }
        // Split at undrawable points so that a gap shows instead of a misleading segment.
        let mut runs: Vec<Vec<(f64, f64)>> = vec![Vec::new()];
        for p in &s.points {
            if drawable(p) {
                runs.last_mut()
                    .expect("non-empty")
                    .push((chart.x_scale.forward(p.0), chart.y_scale.forward(p.1)));
            } else if !runs.last().expect("non-empty").is_empty() {
                runs.push(Vec::new());
            }
        }
        for run in runs.iter().filter(|r| !r.is_empty()) {
            ctx.draw_series(LineSeries::new(run.iter().copied(), color.stroke_width(3)))
                .map_err(draw_err(path))?;
            if chart.markers {
                ctx.draw_series(run.iter().map(|&p| Circle::new(p, 5, color.filled())))
                    .map_err(draw_err(path))?;
            }
        }
    }

    // Legend, top-aligned with the plotting area.
    let top = ctx.plotting_area().get_pixel_range().1.start - legend_area.get_base_pixel().1;
    let row_h = LEGEND_SIZE as i32 + 14;
    for (i, s) in chart.series.iter().enumerate() {
        let color = PALETTE[s.color.unwrap_or(i) % PALETTE.len()];
        let y = top + 8 + i as i32 * row_h;
        legend_area
            .draw(&PathElement::new(
                vec![(8, y + row_h / 2 - 6), (48, y + row_h / 2 - 6)],
                color.stroke_width(4),
            ))
            .map_err(draw_err(path))?;
        if chart.markers {
            legend_area
                .draw(&Circle::new((28, y + row_h / 2 - 6), 5, color.filled()))
                .map_err(draw_err(path))?;
        }
        let style = TextStyle::from(legend_font.clone())
            .color(&BLACK)
            .pos(Pos::new(HPos::Left, VPos::Center));
        legend_area
            .draw_text(&s.name, &style, (58, y + row_h / 2 - 6))
            .map_err(draw_err(path))?;
    }
    root.present().map_err(draw_err(path))?;
    Ok(())
}

/// The tick font size (at most the default, at least 11) at which the widest label fits in
/// 90% of the space between neighbouring ticks.
fn fit_tick_size(
    root: &DrawingArea<BitMapBackend<'_>, Shift>,
    ticks: &[(f64, String)],
    spacing_px: Option<i32>,
    path: &Path,
) -> Result<u32, PlotError> {
    let Some(spacing) = spacing_px else {
        return Ok(TICK_SIZE);
    };
    let style = TextStyle::from((FONT, TICK_SIZE).into_font());
    let mut widest = 1;
    for (_, label) in ticks {
        widest = widest.max(
            root.estimate_text_size(label, &style)
                .map_err(draw_err(path))?
                .0,
        );
    }
    let fit = (TICK_SIZE as f64 * 0.9 * spacing as f64 / widest as f64).floor() as u32;
    Ok(fit.clamp(11, TICK_SIZE))
}

fn y_label_area_width(
    root: &DrawingArea<BitMapBackend<'_>, Shift>,
    ticks: &[(f64, String)],
    path: &Path,
) -> Result<u32, PlotError> {
    let style = TextStyle::from((FONT, TICK_SIZE).into_font());
    let mut widest = 0;
    for (_, label) in ticks {
        widest = widest.max(
            root.estimate_text_size(label, &style)
                .map_err(draw_err(path))?
                .0,
        );
    }
    // Tick text, tick marks, gap, rotated axis description.
    Ok(widest + 20 + AXIS_DESC_SIZE + 26)
}

fn padded(lo: f64, hi: f64, fraction: f64) -> (f64, f64) {
    if hi > lo {
        let pad = (hi - lo) * fraction;
        (lo - pad, hi + pad)
    } else {
        let pad = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
        (lo - pad, hi + pad)
    }
}

fn label_at(ticks: &[(f64, String)], v: f64) -> String {
    ticks
        .iter()
        .find(|(t, _)| (t - v).abs() <= 1e-9 * t.abs().max(1.0))
        .map(|(_, l)| l.clone())
        .unwrap_or_default()
}

/// Tick positions (transformed units) and labels for an axis spanning `[lo, hi]` (transformed).
fn ticks(scale: Scale, lo: f64, hi: f64) -> Vec<(f64, String)> {
    match scale {
        Scale::Linear => linear_ticks(lo, hi, 6)
            .into_iter()
            .map(|(v, step)| (v, format_number(v, step)))
            .collect(),
        Scale::Log2 => {
            let (a, b) = (lo.ceil() as i64, hi.floor() as i64);
            if b < a {
                // Narrower than one octave: linear ticks in data units.
                return data_ticks(scale, lo, hi);
            }
            let count = (b - a + 1) as usize;
            let stride = count.div_ceil(12).max(1) as i64;
            (a..=b)
                .filter(|e| (e - a) % stride == 0)
                .map(|e| (e as f64, format_power_of_two(e)))
                .collect()
        }
        Scale::Log10 => {
            let (a, b) = (lo.floor() as i64, hi.ceil() as i64);
            let fine = [1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0];
            for mantissas in [&[1.0][..], &[1.0, 2.0, 5.0], &fine] {
                let mut out = Vec::new();
                for e in a..=b {
                    for &m in mantissas {
                        let v = m * 10f64.powi(e as i32);
                        let t = v.log10();
                        if t >= lo - 1e-12 && t <= hi + 1e-12 {
                            // 1.5 needs one more decimal than 1 or 2.
                            let e = if m.fract() > 0.0 { e - 1 } else { e };
                            out.push((t, format_number(v, 10f64.powi(e as i32))));
                        }
                    }
                }
                if out.len() >= 4 {
                    if out.len() > 14 {
                        let stride = out.len().div_ceil(12);
                        return out.into_iter().step_by(stride).collect();
                    }
                    return out;
                }
            }
            data_ticks(scale, lo, hi)
        }
    }
}

/// Linear "nice" ticks in data units, placed on a log axis (for ranges narrower than a decade).
fn data_ticks(scale: Scale, lo: f64, hi: f64) -> Vec<(f64, String)> {
    linear_ticks(scale.inverse(lo), scale.inverse(hi), 5)
        .into_iter()
        .filter(|(v, _)| *v > 0.0)
        .map(|(v, step)| (scale.forward(v), format_number(v, step)))
        .collect()
}

/// Ticks at multiples of 1, 2 or 5 times a power of ten, the step giving the count of
/// intervals closest to `target`; returns (value, step).
fn linear_ticks(lo: f64, hi: f64, target: usize) -> Vec<(f64, f64)> {
    let span = hi - lo;
    if span.is_nan() || span <= 0.0 || !span.is_finite() {
        return vec![(lo, 1.0)];
    }
    let mag = 10f64.powf((span / target as f64).log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0, 20.0]
        .iter()
        .map(|m| m * mag)
        .min_by(|a, b| {
            let da = (span / a - target as f64).abs();
            let db = (span / b - target as f64).abs();
            da.total_cmp(&db)
        })
        .unwrap_or(mag);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    (first..=last)
        .map(|k| {
            let v = k as f64 * step;
            (if v.abs() < step * 1e-9 { 0.0 } else { v }, step)
        })
        .collect()
}

/// A number for a tick label, with as many decimals as the tick step needs.
fn format_number(v: f64, step: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let a = v.abs();
    if !(1e-4..1e6).contains(&a) {
        let s = format!("{v:.1e}");
        return s.replace(".0e", "e");
    }
    let decimals = if step >= 1.0 {
        0
    } else {
        (-step.log10().floor()) as usize
    };
    format!("{v:.decimals$}")
}

/// 2^e as `0.5`, `1`, `512`, `1K`, `64K`, `1M`, `1G`.
/// A token count as an axis label: `12288` -> `12K`, `1536` -> `1.5K`, `1048576` -> `1M`,
/// `300` -> `300` (counts that are no multiple of 512 keep their digits).
pub fn token_count_label(n: u64) -> String {
    for (unit, suffix) in [(1u64 << 20, "M"), (1 << 10, "K")] {
        if n >= unit && n.is_multiple_of(unit / 2) {
            let whole = n / unit;
            return match n % unit {
                0 => format!("{whole}{suffix}"),
                _ => format!("{whole}.5{suffix}"),
            };
        }
    }
    n.to_string()
}

fn format_power_of_two(e: i64) -> String {
    match e {
        e if e < 0 => format_number(2f64.powi(e as i32), 2f64.powi(e as i32)),
        0..=9 => (1u64 << e).to_string(),
        10..=19 => format!("{}K", 1u64 << (e - 10)),
        20..=29 => format!("{}M", 1u64 << (e - 20)),
        30..=62 => format!("{}G", 1u64 << (e - 30)),
        _ => format!("2^{e}"),
    }
}

/// The needle-in-a-haystack grid: x = context length, y = needle depth, colour = score on
/// viridis from dark purple (0, fail) to yellow (1, pass), each cell optionally annotated with a number
/// (the mean attention entropy), a dashed line at the fine-tuning length, and a colour bar.
#[derive(Debug, Clone, PartialEq)]
pub struct Heatmap {
    /// Drawn above the plot.
    pub title: String,
    /// X axis description (e.g. "context length (tokens)").
    pub x_label: String,
    /// Y axis description (e.g. "needle depth (%)").
    pub y_label: String,
    /// Column labels, left to right.
    pub x_categories: Vec<String>,
    /// Row labels; row 0 is drawn at the top (depth 0% at the top, as usual for these plots).
    pub y_categories: Vec<String>,
    /// `values[row][column]`, the score in `[0, 1]` (clamped); `None` for a cell not run,
    /// drawn grey.
    pub values: Vec<Vec<Option<f64>>>,
    /// `annotations[row][column]`, printed in the cell with
    /// [`annotation_decimals`](Self::annotation_decimals); `None` (the whole grid or a cell)
    /// prints nothing.
    pub annotations: Option<Vec<Vec<Option<f64>>>>,
    /// Decimals of the annotations.
    pub annotation_decimals: usize,
    /// Vertical dashed line in column units: `x = k` is the boundary between column `k - 1`
    /// and column `k` (0 = left edge, `columns` = right edge); see [`Heatmap::boundary_after`].
    pub vline: Option<VLine>,
    /// Title of the colour bar (e.g. "exact match").
    pub colorbar_label: String,
    /// Image size in pixels.
    pub size: (u32, u32),
}

impl Heatmap {
    /// A heatmap of 1200 x 700 pixels without annotations or line.
    pub fn new(
        title: impl Into<String>,
        x_categories: Vec<String>,
        y_categories: Vec<String>,
        values: Vec<Vec<Option<f64>>>,
    ) -> Self {
        Self {
            title: title.into(),
            x_label: "context length (tokens)".into(),
            y_label: "needle depth (%)".into(),
            x_categories,
            y_categories,
            values,
            annotations: None,
            annotation_decimals: 2,
            vline: None,
            colorbar_label: "score".into(),
            size: (1200, 700),
        }
    }

    /// The column boundary after the last column whose value is `<= limit`: for sorted
    /// lengths `[128, 256, 512, 1024]` and a fine-tuning length of 512 it is 3, a line
    /// between the 512 and 1024 columns.
    pub fn boundary_after(column_values: &[f64], limit: f64) -> f64 {
        column_values.iter().filter(|&&v| v <= limit).count() as f64
    }
}

/// Pixel geometry of a rendered [`Heatmap`], for checking or overlaying.
#[derive(Debug, Clone, PartialEq)]
pub struct HeatmapLayout {
    /// Left, top, right, bottom pixel of the grid (right and bottom exclusive).
    pub grid: (i32, i32, i32, i32),
    /// Number of columns and rows.
    pub columns: usize,
    /// Number of rows.
    pub rows: usize,
}

impl HeatmapLayout {
    /// Pixel rectangle `(left, top, right, bottom)` of cell `(row, column)`.
    pub fn cell(&self, row: usize, column: usize) -> (i32, i32, i32, i32) {
        let (l, t, r, b) = self.grid;
        let x = |c: usize| l + ((r - l) as f64 * c as f64 / self.columns as f64).round() as i32;
        let y = |k: usize| t + ((b - t) as f64 * k as f64 / self.rows as f64).round() as i32;
        (x(column), y(row), x(column + 1), y(row + 1))
    }
}

/// The heatmap colour of a score: viridis (colour-blind safe and monotone in lightness, so
/// it also reads in grey), dark purple `(68, 1, 84)` at 0 through blue, teal `(33, 145, 140)` at
/// 0.5 and green to yellow `(253, 231, 37)` at 1, linear between five of its stops; clamped to
/// `[0, 1]`; NaN is grey.
pub fn score_color(score: f64) -> (u8, u8, u8) {
    const STOPS: [[f64; 3]; 5] = [
        [68.0, 1.0, 84.0],
        [59.0, 82.0, 139.0],
        [33.0, 145.0, 140.0],
        [94.0, 201.0, 98.0],
        [253.0, 231.0, 37.0],
    ];
    if score.is_nan() {
        return MISSING;
    }
    let x = score.clamp(0.0, 1.0) * (STOPS.len() - 1) as f64;
    let k = (x.floor() as usize).min(STOPS.len() - 2);
    let t = x - k as f64;
    let (a, b) = (STOPS[k], STOPS[k + 1]);
    let mix = |i: usize| (a[i] + (b[i] - a[i]) * t).round() as u8;
    (mix(0), mix(1), mix(2))
}

const MISSING: (u8, u8, u8) = (215, 215, 215);
const MISSING_TEXT: &str = "–";

fn rgb(c: (u8, u8, u8)) -> RGBColor {
    RGBColor(c.0, c.1, c.2)
}

/// Black or white, whichever reads better on `c`.
fn text_on(c: (u8, u8, u8)) -> RGBColor {
    let lum = 0.2126 * c.0 as f64 + 0.7152 * c.1 as f64 + 0.0722 * c.2 as f64;
    if lum > 120.0 { BLACK } else { WHITE }
}

/// Renders a [`Heatmap`] to a PNG file at `path` (its directory is created if missing) and
/// returns where the cells were drawn.
///
/// Errors: no rows or columns, a `values` or `annotations` grid whose shape differs from the
/// categories, a non-finite value or a line outside `[0, columns]`, an image size outside
/// 200x150..10000x10000, or a drawing/encoding failure.
pub fn render_heatmap(map: &Heatmap, path: &Path) -> Result<HeatmapLayout, PlotError> {
    prepare(path, map.size)?;
    let invalid = |reason: String| PlotError::Invalid {
        path: path.to_path_buf(),
        reason,
    };
    let (nx, ny) = (map.x_categories.len(), map.y_categories.len());
    if nx == 0 || ny == 0 {
        return Err(invalid(format!(
            "heatmap needs at least one column and one row, got {nx} x {ny}"
        )));
    }
    let check_grid = |name: &str, grid: &[Vec<Option<f64>>], finite: bool| {
        if grid.len() != ny {
            return Err(invalid(format!(
                "{name} has {} rows, expected {ny} (one per y category)",
                grid.len()
            )));
        }
        for (r, row) in grid.iter().enumerate() {
            if row.len() != nx {
                return Err(invalid(format!(
                    "{name} row {r} has {} cells, expected {nx} (one per x category)",
                    row.len()
                )));
            }
            if finite && let Some(c) = row.iter().position(|v| v.is_some_and(|v| !v.is_finite())) {
                return Err(invalid(format!(
                    "{name}[{r}][{c}] is {:?}, expected a finite number or None",
                    row[c]
                )));
            }
        }
        Ok(())
    };
    check_grid("values", &map.values, true)?;
    if let Some(ann) = &map.annotations {
        check_grid("annotations", ann, false)?;
    }
    if let Some(line) = &map.vline
        && !(0.0..=nx as f64).contains(&line.x)
    {
        return Err(invalid(format!(
            "vertical line {:?} at column boundary {} is outside 0..={nx}",
            line.label, line.x
        )));
    }

    let root = BitMapBackend::new(path, map.size).into_drawing_area();
    root.fill(&WHITE).map_err(draw_err(path))?;
    let body = titled(&root, &map.title, path)?;
    let colorbar_w = 150;
    let (plot_area, bar_area) = body.split_horizontally(map.size.0 as i32 - colorbar_w);

    let x_ticks: Vec<(f64, String)> = map
        .x_categories
        .iter()
        .enumerate()
        .map(|(i, l)| (i as f64 + 0.5, l.clone()))
        .collect();
    // Row 0 at the top: row r spans y in [ny - r - 1, ny - r].
    let y_ticks: Vec<(f64, String)> = map
        .y_categories
        .iter()
        .enumerate()
        .map(|(r, l)| ((ny - r) as f64 - 0.5, l.clone()))
        .collect();
    let (xt, yt) = (x_ticks.clone(), y_ticks.clone());
    let x_fmt = move |v: &f64| label_at(&xt, *v);
    let y_fmt = move |v: &f64| label_at(&yt, *v);

    // Leave room above the grid for the line's label.
    let top_margin = if map.vline.as_ref().is_some_and(|l| !l.label.is_empty()) {
        NOTE_SIZE as i32 + 14
    } else {
        10
    };
    let mut ctx = ChartBuilder::on(&plot_area)
        .margin_left(10)
        .margin_right(10)
        .margin_top(top_margin)
        .margin_bottom(10)
        .x_label_area_size(70)
        .y_label_area_size(y_label_area_width(&root, &y_ticks, path)?)
        .build_cartesian_2d(
            axis(0.0, nx as f64, &x_ticks),
            axis(0.0, ny as f64, &y_ticks),
        )
        .map_err(draw_err(path))?;
    let cell_px = {
        let (xr, _) = ctx.plotting_area().get_pixel_range();
        (xr.end - xr.start) / nx as i32
    };
    let x_tick_size = fit_tick_size(&root, &x_ticks, Some(cell_px), path)?;
    ctx.configure_mesh()
        .disable_mesh()
        .x_desc(map.x_label.as_str())
        .y_desc(map.y_label.as_str())
        .x_label_formatter(&x_fmt)
        .y_label_formatter(&y_fmt)
        .x_label_style((FONT, x_tick_size))
        .y_label_style((FONT, TICK_SIZE))
        .axis_desc_style((FONT, AXIS_DESC_SIZE))
        .axis_style(RGBColor(90, 90, 90))
        .draw()
        .map_err(draw_err(path))?;

    let (px_range, py_range) = ctx.plotting_area().get_pixel_range();
    let layout = HeatmapLayout {
        grid: (px_range.start, py_range.start, px_range.end, py_range.end),
        columns: nx,
        rows: ny,
    };

    // Cells in pixel coordinates, so that they tile exactly without gaps or overlaps.
    let cell_w = (px_range.end - px_range.start) / nx as i32;
    let cell_h = (py_range.end - py_range.start) / ny as i32;
    // Annotation size: the widest text fills at most 55% of a cell's width, 38% of its height.
    let mut widest = 1;
    if let Some(ann) = &map.annotations {
        let probe = TextStyle::from((FONT, 20).into_font());
        for v in ann.iter().flatten().flatten() {
            let text = format!("{v:.*}", map.annotation_decimals);
            widest = widest.max(
                root.estimate_text_size(&text, &probe)
                    .map_err(draw_err(path))?
                    .0,
            );
        }
    }
    let ann_size = (20.0 * 0.55 * cell_w as f64 / widest as f64)
        .min(0.38 * cell_h as f64)
        .clamp(10.0, 22.0) as u32;
    for r in 0..ny {
        for c in 0..nx {
            let color = map.values[r][c].map_or(MISSING, score_color);
            let (l, t, rr, b) = layout.cell(r, c);
            root.draw(&Rectangle::new([(l, t), (rr, b)], rgb(color).filled()))
                .map_err(draw_err(path))?;
            root.draw(&Rectangle::new([(l, t), (rr, b)], WHITE.stroke_width(1)))
                .map_err(draw_err(path))?;
            let annotation = map.annotations.as_ref().and_then(|a| a[r][c]);
            let text = match (annotation, map.values[r][c]) {
                (Some(v), _) => Some(format!("{v:.*}", map.annotation_decimals)),
                (None, None) => Some(MISSING_TEXT.to_string()),
                (None, Some(_)) => None,
            };
            if let Some(text) = text {
                let ink = text_on(color);
                let style = TextStyle::from((FONT, ann_size).into_font())
                    .color(&ink)
                    .pos(Pos::new(HPos::Center, VPos::Center));
                root.draw_text(&text, &style, ((l + rr) / 2, (t + b) / 2))
                    .map_err(draw_err(path))?;
            }
        }
    }

    if let Some(line) = &map.vline {
        let (x, _) = ctx.backend_coord(&(line.x, 0.0));
        let (t, b) = (py_range.start, py_range.end);
        root.draw(&DashedPathElement::new(
            vec![(x, t - 6), (x, b)],
            10,
            6,
            BLACK.stroke_width(3),
        ))
        .map_err(draw_err(path))?;
        if !line.label.is_empty() {
            let style = TextStyle::from((FONT, NOTE_SIZE).into_font())
                .color(&BLACK)
                .pos(Pos::new(
                    if line.x >= nx as f64 * 0.75 {
                        HPos::Right
                    } else {
                        HPos::Left
                    },
                    VPos::Bottom,
                ));
            let dx = if line.x >= nx as f64 * 0.75 { -6 } else { 6 };
            root.draw_text(&line.label, &style, (x + dx, t - 6))
                .map_err(draw_err(path))?;
        }
    }

    draw_colorbar(
        &root,
        &bar_area,
        &map.colorbar_label,
        (py_range.start, py_range.end),
        path,
    )?;
    root.present().map_err(draw_err(path))?;
    Ok(layout)
}

/// A vertical [`score_color`] bar from 0 (bottom) to 1 (top) spanning the grid's height.
fn draw_colorbar(
    root: &DrawingArea<BitMapBackend<'_>, Shift>,
    area: &DrawingArea<BitMapBackend<'_>, Shift>,
    label: &str,
    (top, bottom): (i32, i32),
    path: &Path,
) -> Result<(), PlotError> {
    let left = area.get_base_pixel().0 + 20;
    let width = 28;
    let height = bottom - top;
    for y in top..bottom {
        let score = 1.0 - (y - top) as f64 / (height - 1).max(1) as f64;
        root.draw(&Rectangle::new(
            [(left, y), (left + width, y + 1)],
            rgb(score_color(score)).filled(),
        ))
        .map_err(draw_err(path))?;
    }
    root.draw(&Rectangle::new(
        [(left, top), (left + width, bottom)],
        RGBColor(90, 90, 90).stroke_width(1),
    ))
    .map_err(draw_err(path))?;
    let tick_style = TextStyle::from((FONT, TICK_SIZE).into_font())
        .color(&BLACK)
        .pos(Pos::new(HPos::Left, VPos::Center));
    for (v, text) in [
        (0.0, "0"),
        (0.25, "0.25"),
        (0.5, "0.5"),
        (0.75, "0.75"),
        (1.0, "1"),
    ] {
        let y = bottom - ((bottom - top) as f64 * v).round() as i32;
        root.draw(&PathElement::new(
            vec![(left + width, y), (left + width + 6, y)],
            RGBColor(90, 90, 90).stroke_width(1),
        ))
        .map_err(draw_err(path))?;
        root.draw_text(text, &tick_style, (left + width + 10, y))
            .map_err(draw_err(path))?;
    }
    if !label.is_empty() {
        let style = TextStyle::from((FONT, NOTE_SIZE).into_font())
            .color(&BLACK)
            .pos(Pos::new(HPos::Left, VPos::Bottom));
        root.draw_text(label, &style, (left - 8, top - 8))
            .map_err(draw_err(path))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where sample plots go: `ROPELENS_PLOT_DIR` to keep and look at them, else a temp dir.
    fn out_dir() -> (Option<tempfile::TempDir>, PathBuf) {
        match std::env::var_os("ROPELENS_PLOT_DIR") {
            Some(dir) => (None, PathBuf::from(dir)),
            None => {
                let tmp = tempfile::tempdir().expect("temp dir");
                let path = tmp.path().to_path_buf();
                (Some(tmp), path)
            }
        }
    }

    struct Image {
        width: u32,
        height: u32,
        rgb: Vec<u8>,
    }

    impl Image {
        fn pixel(&self, x: i32, y: i32) -> (u8, u8, u8) {
            let i = (y as usize * self.width as usize + x as usize) * 3;
            (self.rgb[i], self.rgb[i + 1], self.rgb[i + 2])
        }

        fn count(&self, color: (u8, u8, u8)) -> usize {
            self.rgb
                .chunks_exact(3)
                .filter(|p| (p[0], p[1], p[2]) == color)
                .count()
        }
    }

    fn decode(path: &Path) -> Image {
        let file = std::fs::File::open(path).expect("plot written");
        let mut reader = png::Decoder::new(file).read_info().expect("a PNG");
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).expect("a frame");
        assert_eq!(info.color_type, png::ColorType::Rgb);
        assert_eq!(info.bit_depth, png::BitDepth::Eight);
        buf.truncate(info.buffer_size());
        Image {
            width: info.width,
            height: info.height,
            rgb: buf,
        }
    }

    const LENGTHS: [f64; 5] = [128.0, 256.0, 512.0, 1024.0, 2048.0];

    fn ppl_chart() -> LineChart {
        let mut chart = LineChart::new(
            "Perplexity vs context length",
            "context length (tokens)",
            "perplexity",
        );
        chart.x_scale = Scale::Log2;
        chart.y_scale = Scale::Log10;
        let rows: [(&str, [f64; 5]); 5] = [
            ("base (no fine-tune)", [33.7, 33.0, 32.3, 40.1, 144.2]),
            ("RoPE unchanged @512", [33.3, 31.3, 26.4, 26.6, 28.3]),
            ("PI x4", [34.1, 31.4, 26.8, 30.3, 40.1]),
            ("NTK x4", [33.7, 31.1, 26.3, 27.5, 30.3]),
            ("YaRN x4", [33.6, 31.2, 26.4, 29.3, 35.5]),
        ];
        chart.series = rows
            .iter()
            .map(|(name, ys)| {
                Series::new(
                    *name,
                    LENGTHS.iter().copied().zip(ys.iter().copied()).collect(),
                )
            })
            .collect();
        chart.vlines = vec![
            VLine::new(128.0, "pretrained 128"),
            VLine::new(512.0, "fine-tuned 512"),
        ];
        chart
    }

    #[test]
    fn line_chart_png_has_the_size_and_series_colours() {
        let (_guard, dir) = out_dir();
        let path = dir.join("ppl_vs_length.png");
        render_line_chart(&ppl_chart(), &path).unwrap();
        let img = decode(&path);
        assert_eq!((img.width, img.height), (1200, 700));
        assert_eq!(img.pixel(2, 2), (255, 255, 255), "white background");
        for i in 0..5 {
            let n = img.count(series_color(i));
            assert!(
                n > 300,
                "series {i} colour {:?} has only {n} pixels",
                series_color(i)
            );
        }
        assert_eq!(img.count(series_color(5)), 0, "no sixth series");
    }

    #[test]
    fn fixed_colour_slots_and_whiskers() {
        let (_guard, dir) = out_dir();
        let path = dir.join("whiskers.png");
        // One series in slot 7 (not its index 0), with a tall range bar at x = 256.
        let mut chart = LineChart::new("Seed spread", "context length (tokens)", "ppl");
        chart.x_scale = Scale::Log2;
        let mut s = Series::new("PI x4", vec![(128.0, 10.0), (256.0, 11.0), (512.0, 12.0)]);
        s.color = Some(7);
        s.whiskers = vec![(256.0, 5.0, 20.0)];
        // A second series in slot 2 fixes the y range in both renders.
        let mut other = Series::new("NTK x4", vec![(128.0, 5.0), (512.0, 20.0)]);
        other.color = Some(2);
        chart.series = vec![s.clone(), other.clone()];
        render_line_chart(&chart, &path).unwrap();
        let img = decode(&path);
        assert_eq!(img.count(series_color(0)), 0, "slot 0 unused");
        assert!(img.count(series_color(2)) > 100);
        let with = img.count(series_color(7));
        // Without the bar, fewer pixels of the colour.
        s.whiskers.clear();
        chart.series = vec![s, other];
        render_line_chart(&chart, &path).unwrap();
        let without = decode(&path).count(series_color(7));
        assert!(with > without + 100, "{with} vs {without}");
    }

    #[test]
    fn other_line_charts_render() {
        let (_guard, dir) = out_dir();
        // Entropy vs length, linear y.
        let mut chart = LineChart::new(
            "Attention entropy at the answer vs context length",
            "context length (tokens)",
            "entropy (nats)",
        );
        chart.x_scale = Scale::Log2;
        chart.series = vec![
            Series::new(
                "base",
                LENGTHS
                    .iter()
                    .zip([2.55, 3.09, 3.68, 4.29, 4.9])
                    .map(|(a, b)| (*a, b))
                    .collect(),
            ),
            Series::new(
                "YaRN x4",
                LENGTHS
                    .iter()
                    .zip([2.33, 2.75, 3.25, 3.73, 4.2])
                    .map(|(a, b)| (*a, b))
                    .collect(),
            ),
        ];
        chart.vlines = vec![VLine::new(512.0, "fine-tuned 512")];
        render_line_chart(&chart, &dir.join("entropy_vs_length.png")).unwrap();

        // Training loss: many points, no markers, log y.
        let mut chart = LineChart::new("Training loss", "step", "loss (nats/token)");
        chart.y_scale = Scale::Log10;
        chart.markers = false;
        chart.series = ["pretrain", "PI x4", "YaRN x4"]
            .iter()
            .enumerate()
            .map(|(k, name)| {
                let pts = (0..=800)
                    .map(|s| {
                        let s = s as f64;
                        let noise = 0.08 * ((s * 0.37 + k as f64).sin());
                        (
                            s,
                            1.2 + 6.0 * (-s / (120.0 + 60.0 * k as f64)).exp() + noise,
                        )
                    })
                    .collect();
                Series::new(*name, pts)
            })
            .collect();
        render_line_chart(&chart, &dir.join("train_loss.png")).unwrap();

        // Attention by distance: bucket index on x with distance labels, log y.
        use crate::analysis::distance::DistanceBuckets;
        let buckets = DistanceBuckets::default();
        let mut chart = LineChart::new(
            "Mean attention by relative distance",
            "relative distance (tokens, log-spaced buckets)",
            "mean attention probability",
        );
        chart.y_scale = Scale::Log10;
        let n = buckets.count_for_len(2048);
        chart.x_ticks = Some((0..n).map(|b| (b as f64, buckets.short_label(b))).collect());
        chart.series = [
            ("base @128", 8usize, 1.0),
            ("PI x4 @512", 10, 0.6),
            ("YaRN x4 @512", 10, 0.9),
            ("YaRN x4 @2048", 12, 0.9),
        ]
        .iter()
        .map(|(name, nb, decay)| {
            let pts = (0..*nb)
                .map(|b| {
                    (
                        b as f64,
                        0.3 * (-(b as f64) * decay).exp() + 1e-3 / (1.0 + b as f64),
                    )
                })
                .collect();
            Series::new(*name, pts)
        })
        .collect();
        chart.vlines = vec![VLine::new(7.0, "pretrained range ends")];
        render_line_chart(&chart, &dir.join("attention_by_distance.png")).unwrap();
        for f in [
            "entropy_vs_length.png",
            "train_loss.png",
            "attention_by_distance.png",
        ] {
            let img = decode(&dir.join(f));
            assert_eq!((img.width, img.height), (1200, 700), "{f}");
            assert!(img.count(series_color(0)) > 300, "{f}");
        }
    }

    fn needle_heatmap() -> Heatmap {
        let xs: Vec<String> = LENGTHS.iter().map(|l| format!("{l}")).collect();
        let depths = [0, 25, 50, 75, 100];
        let ys: Vec<String> = depths.iter().map(|d| d.to_string()).collect();
        let mut values = Vec::new();
        let mut entropy = Vec::new();
        for (r, _) in depths.iter().enumerate() {
            let mut vrow = Vec::new();
            let mut erow = Vec::new();
            for c in 0..LENGTHS.len() {
                let score = match (r, c) {
                    (_, 0..=2) => 1.0,
                    (0, 3) => 0.5,
                    (_, 3) => 0.875,
                    (0, 4) => 0.0,
                    (1, 4) => 0.25,
                    _ => 0.625,
                };
                vrow.push(Some(score));
                erow.push(Some(2.3 + 0.45 * c as f64 + 0.3 * (1.0 - score)));
            }
            values.push(vrow);
            entropy.push(erow);
        }
        values[4][4] = None; // a cell not run
        entropy[4][4] = None;
        let mut map = Heatmap::new(
            "Needle retrieval, YaRN x4 (cell text: mean entropy, nats)",
            xs,
            ys,
            values,
        );
        map.annotations = Some(entropy);
        map.colorbar_label = "exact match".into();
        map.vline = Some(VLine::new(
            Heatmap::boundary_after(&LENGTHS, 512.0),
            "fine-tuned 512",
        ));
        map
    }

    #[test]
    fn heatmap_cells_have_the_score_colours() {
        let (_guard, dir) = out_dir();
        let path = dir.join("needle_heatmap.png");
        let map = needle_heatmap();
        let layout = render_heatmap(&map, &path).unwrap();
        let img = decode(&path);
        assert_eq!((img.width, img.height), (1200, 700));
        assert_eq!((layout.columns, layout.rows), (5, 5));
        // Sample near each cell's top-left corner, clear of the border and the centred text.
        let at = |r: usize, c: usize| {
            let (l, t, _, _) = layout.cell(r, c);
            img.pixel(l + 6, t + 6)
        };
        assert_eq!(at(0, 0), score_color(1.0));
        assert_eq!(at(0, 0), (253, 231, 37), "viridis yellow for a pass");
        assert_eq!(at(0, 4), (68, 1, 84), "viridis purple for a fail");
        assert_eq!(at(0, 3), (33, 145, 140), "viridis teal for one half");
        assert_eq!(at(1, 4), score_color(0.25));
        assert_eq!(at(4, 4), MISSING, "grey for a cell not run");
        // The dashed line sits on the boundary after the 512 column.
        let (l, t, _, b) = layout.cell(0, 3);
        let dark = (t..b).filter(|&y| img.pixel(l, y) == (0, 0, 0)).count();
        assert!(
            dark > (b - t) as usize / 3,
            "dashed line at x = {l}: {dark} dark pixels"
        );
    }

    #[test]
    fn dense_heatmap_stays_legible() {
        let (_guard, dir) = out_dir();
        let lengths: Vec<u64> = (0..16)
            .map(|i| 128u64 << (i / 2) | ((i % 2) as u64 * (64u64 << (i / 2))))
            .collect();
        let xs: Vec<String> = lengths.iter().map(|l| l.to_string()).collect();
        let ys: Vec<String> = (0..=10).map(|d| format!("{}%", d * 10)).collect();
        let values: Vec<Vec<Option<f64>>> = (0..11)
            .map(|r| {
                (0..16)
                    .map(|c| Some(((16 - c) as f64 / 10.0 - r as f64 * 0.02).clamp(0.0, 1.0)))
                    .collect()
            })
            .collect();
        let ann: Vec<Vec<Option<f64>>> = (0..11)
            .map(|r| {
                (0..16)
                    .map(|c| Some(2.0 + c as f64 * 0.21 + r as f64 * 0.013))
                    .collect()
            })
            .collect();
        let mut map = Heatmap::new(
            "Needle retrieval, PI x4: 16 lengths x 11 depths",
            xs,
            ys,
            values,
        );
        map.annotations = Some(ann);
        map.annotation_decimals = 1;
        let train: Vec<f64> = lengths.iter().map(|&l| l as f64).collect();
        map.vline = Some(VLine::new(
            Heatmap::boundary_after(&train, 4096.0),
            "fine-tuned 4096",
        ));
        let layout = render_heatmap(&map, &dir.join("needle_heatmap_dense.png")).unwrap();
        let img = decode(&dir.join("needle_heatmap_dense.png"));
        let (l, t, _, _) = layout.cell(10, 15);
        assert_eq!(img.pixel(l + 3, t + 3), score_color(0.0));
        let (l, t, _, _) = layout.cell(0, 0);
        assert_eq!(img.pixel(l + 3, t + 3), score_color(1.0));
    }

    #[test]
    fn score_colour_scale() {
        assert_eq!(score_color(0.0), (68, 1, 84));
        assert_eq!(score_color(-1.0), (68, 1, 84));
        assert_eq!(score_color(0.5), (33, 145, 140));
        assert_eq!(score_color(1.0), (253, 231, 37));
        assert_eq!(score_color(7.0), (253, 231, 37));
        assert_eq!(score_color(f64::NAN), MISSING);
        assert_eq!(score_color(0.25), (59, 82, 139));
        assert_eq!(
            score_color(0.125),
            (64, 42, 112),
            "halfway between two stops"
        );
        // Lightness rises monotonically, so the scale also reads in grey.
        let luma = |c: (u8, u8, u8)| 0.299 * c.0 as f64 + 0.587 * c.1 as f64 + 0.114 * c.2 as f64;
        let l: Vec<f64> = (0..=20)
            .map(|i| luma(score_color(i as f64 / 20.0)))
            .collect();
        assert!(l.windows(2).all(|w| w[1] > w[0]), "{l:?}");
        assert_eq!(Heatmap::boundary_after(&LENGTHS, 512.0), 3.0);
        assert_eq!(Heatmap::boundary_after(&LENGTHS, 100.0), 0.0);
    }

    #[test]
    fn bad_descriptions_are_errors() {
        let (_guard, dir) = out_dir();
        let mut chart = ppl_chart();
        for s in &mut chart.series {
            s.points.iter_mut().for_each(|p| p.1 = -1.0);
        }
        let err = render_line_chart(&chart, &dir.join("bad.png")).unwrap_err();
        assert!(
            err.to_string().contains("no drawable points in 5 series"),
            "{err}"
        );

        let mut chart = ppl_chart();
        chart.vlines.push(VLine::new(0.0, "zero"));
        let err = render_line_chart(&chart, &dir.join("bad.png")).unwrap_err();
        assert!(
            err.to_string().contains("vertical line \"zero\" at x = 0"),
            "{err}"
        );

        let mut chart = ppl_chart();
        chart.size = (10, 10);
        assert!(render_line_chart(&chart, &dir.join("bad.png")).is_err());

        let mut map = needle_heatmap();
        map.values.pop();
        let err = render_heatmap(&map, &dir.join("bad.png")).unwrap_err();
        assert!(
            err.to_string().contains("values has 4 rows, expected 5"),
            "{err}"
        );
        let mut map = needle_heatmap();
        map.values[1][2] = Some(f64::NAN);
        let err = render_heatmap(&map, &dir.join("bad.png")).unwrap_err();
        assert!(
            err.to_string().contains("values[1][2] is Some(NaN)"),
            "{err}"
        );
        let mut map = needle_heatmap();
        map.vline = Some(VLine::new(6.0, "late"));
        assert!(render_heatmap(&map, &dir.join("bad.png")).is_err());
        assert!(
            !dir.join("bad.png").exists(),
            "nothing written for a bad description"
        );
    }

    #[test]
    fn tick_choice() {
        let labels: Vec<String> = [300, 512, 1536, 4096, 12288, 1 << 20, 3 << 19]
            .map(token_count_label)
            .into();
        assert_eq!(labels, ["300", "512", "1.5K", "4K", "12K", "1M", "1.5M"]);
        let t = ticks(Scale::Log2, 7.0f64 - 0.1, 11.1);
        let labels: Vec<&str> = t.iter().map(|x| x.1.as_str()).collect();
        assert_eq!(labels, ["128", "256", "512", "1K", "2K"]);
        let t = ticks(Scale::Log10, 25f64.log10(), 150f64.log10());
        let labels: Vec<&str> = t.iter().map(|x| x.1.as_str()).collect();
        assert_eq!(
            labels,
            ["30", "40", "50", "60", "70", "80", "90", "100", "150"]
        );
        let t = ticks(Scale::Log10, 1.1f64.log10(), 8.0f64.log10());
        let labels: Vec<&str> = t.iter().map(|x| x.1.as_str()).collect();
        assert_eq!(labels, ["1.5", "2", "3", "4", "5", "6", "7", "8"]);
        let t = ticks(Scale::Log10, 1f64.log10(), 1e4f64.log10());
        let labels: Vec<&str> = t.iter().map(|x| x.1.as_str()).collect();
        assert_eq!(labels, ["1", "10", "100", "1000", "10000"]);
        let t = ticks(Scale::Linear, -0.3, 4.2);
        let labels: Vec<&str> = t.iter().map(|x| x.1.as_str()).collect();
        assert_eq!(labels, ["0", "1", "2", "3", "4"]);
        let t = ticks(Scale::Linear, -24.0, 824.0);
        let labels: Vec<&str> = t.iter().map(|x| x.1.as_str()).collect();
        assert_eq!(labels, ["0", "200", "400", "600", "800"]);
        let t = ticks(Scale::Linear, 2.31, 2.69);
        let labels: Vec<&str> = t.iter().map(|x| x.1.as_str()).collect();
        assert_eq!(
            labels,
            ["2.35", "2.40", "2.45", "2.50", "2.55", "2.60", "2.65"]
        );
        assert_eq!(format_power_of_two(20), "1M");
        assert_eq!(format_power_of_two(-1), "0.5");
    }
}
