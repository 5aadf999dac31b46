//! Markdown tables for report.md: method x length grids of numbers and plain tables.
//!
//! Output is padded so that the raw Markdown lines up in a terminal or a diff as well as when
//! rendered; numbers are right-aligned with a fixed number of decimals, and a missing cell is an
//! en dash (`–`) so that "not run" never reads as zero.

use std::collections::HashMap;

/// The text of a missing or undefined cell.
pub const MISSING: &str = "–";

/// Column alignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    /// `:--`, for labels.
    Left,
    /// `--:`, for numbers.
    Right,
}

/// A number with `decimals` decimals; `None` and NaN give [`MISSING`], infinities `∞`/`-∞`,
/// and a value that rounds to zero never shows a minus sign.
pub fn format_value(value: Option<f64>, decimals: usize) -> String {
    match value {
        None => MISSING.to_string(),
        Some(v) if v.is_nan() => MISSING.to_string(),
        Some(v) if v == f64::INFINITY => "∞".to_string(),
        Some(v) if v == f64::NEG_INFINITY => "-∞".to_string(),
        Some(v) => {
            let s = format!("{v:.decimals$}");
            if s.starts_with('-') && s[1..].chars().all(|c| c == '0' || c == '.') {
                s[1..].to_string()
            } else {
                s
            }
        }
    }
}

fn escape(cell: &str) -> String {
    cell.replace('|', "\\|").replace('\n', " ")
}

/// A Markdown table with padded columns. Rows shorter than the header are filled with
/// [`MISSING`]; longer rows are cut to the header's width. `align` gives each column's
/// alignment (missing entries are left-aligned). Pipes in cells are escaped.
pub fn markdown_table(header: &[String], rows: &[Vec<String>], align: &[Align]) -> String {
    let n = header.len();
    let cells: Vec<Vec<String>> = std::iter::once(header.to_vec())
        .chain(rows.iter().map(|r| {
            (0..n)
                .map(|i| r.get(i).cloned().unwrap_or_else(|| MISSING.to_string()))
                .collect()
        }))
        .map(|r| r.iter().map(|c| escape(c)).collect())
        .collect();
    let width: Vec<usize> = (0..n)
        .map(|i| {
            cells
                .iter()
                .map(|r| r[i].chars().count())
                .max()
                .unwrap_or(0)
                .max(3)
        })
        .collect();
    let align_of = |i: usize| align.get(i).copied().unwrap_or(Align::Left);
    let line = |row: &[String]| {
        let padded: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let pad = " ".repeat(width[i] - c.chars().count());
                match align_of(i) {
                    Align::Left => format!("{c}{pad}"),
                    Align::Right => format!("{pad}{c}"),
                }
            })
            .collect();
        format!("| {} |", padded.join(" | "))
    };
    let rule: Vec<String> = (0..n)
        .map(|i| match align_of(i) {
            Align::Left => format!(":{}", "-".repeat(width[i] - 1)),
            Align::Right => format!("{}:", "-".repeat(width[i] - 1)),
        })
        .collect();
    let mut out = line(&cells[0]);
    out.push('\n');
    out.push_str(&format!("| {} |\n", rule.join(" | ")));
    for row in &cells[1..] {
        out.push_str(&line(row));
        out.push('\n');
    }
    out
}

/// Which cell of each column to mark in bold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Highlight {
    /// Nothing in bold.
    #[default]
    None,
    /// The smallest value of each column (perplexity, entropy).
    MinPerColumn,
    /// The largest value of each column (accuracy).
    MaxPerColumn,
}

/// A grid of numbers keyed by row and column names (e.g. method x length), filled cell by
/// cell in any order and printed as Markdown.
///
/// Rows and columns appear in the order they were first mentioned (by [`set`](Self::set),
/// [`add_row`](Self::add_row) or [`add_column`](Self::add_column)); cells never set print as
/// [`MISSING`].
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MatrixTable {
    corner: String,
    rows: Vec<String>,
    columns: Vec<String>,
    cells: HashMap<(usize, usize), f64>,
}

impl MatrixTable {
    /// An empty table whose top-left header cell reads `corner` (e.g. "method \\ length").
    pub fn new(corner: impl Into<String>) -> Self {
        Self {
            corner: corner.into(),
            ..Default::default()
        }
    }

    fn index(list: &mut Vec<String>, name: &str) -> usize {
        match list.iter().position(|n| n == name) {
            Some(i) => i,
            None => {
                list.push(name.to_string());
                list.len() - 1
            }
        }
    }

    /// Adds a row name (to fix the order before filling).
    pub fn add_row(&mut self, name: &str) -> &mut Self {
        Self::index(&mut self.rows, name);
        self
    }

    /// Adds a column name (to fix the order before filling, or show an all-missing column).
    pub fn add_column(&mut self, name: &str) -> &mut Self {
        Self::index(&mut self.columns, name);
        self
    }

    /// Sets a cell, replacing any previous value.
    pub fn set(&mut self, row: &str, column: &str, value: f64) -> &mut Self {
        let r = Self::index(&mut self.rows, row);
        let c = Self::index(&mut self.columns, column);
        self.cells.insert((r, c), value);
        self
    }

    /// The value of a cell, if set.
    pub fn get(&self, row: &str, column: &str) -> Option<f64> {
        let r = self.rows.iter().position(|n| n == row)?;
        let c = self.columns.iter().position(|n| n == column)?;
        self.cells.get(&(r, c)).copied()
    }

    /// Row names in order.
    pub fn rows(&self) -> &[String] {
        &self.rows
    }

    /// Column names in order.
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// The Markdown table: row names left-aligned, values right-aligned with `decimals`
    /// decimals, the best value of each column in bold when `highlight` asks (ties all bold;
    /// NaN and missing cells never).
    pub fn to_markdown(&self, decimals: usize, highlight: Highlight) -> String {
        let best: Vec<Option<f64>> = (0..self.columns.len())
            .map(|c| {
                let values = (0..self.rows.len())
                    .filter_map(|r| self.cells.get(&(r, c)).copied())
                    .filter(|v| !v.is_nan());
                match highlight {
                    Highlight::None => None,
                    Highlight::MinPerColumn => values.reduce(f64::min),
                    Highlight::MaxPerColumn => values.reduce(f64::max),
                }
            })
            .collect();
        let header: Vec<String> = std::iter::once(self.corner.clone())
            .chain(self.columns.iter().cloned())
            .collect();
        let rows: Vec<Vec<String>> = self
            .rows
            .iter()
            .enumerate()
            .map(|(r, name)| {
                std::iter::once(name.clone())
                    .chain((0..self.columns.len()).map(|c| {
                        let v = self.cells.get(&(r, c)).copied();
                        let text = format_value(v, decimals);
                        // Compare printed text so that values equal at this precision tie.
                        let is_best = matches!((v, best[c]), (Some(_), Some(b))
                            if format_value(Some(b), decimals) == text);
                        if is_best { format!("**{text}**") } else { text }
                    }))
                    .collect()
            })
            .collect();
        let align: Vec<Align> = std::iter::once(Align::Left)
            .chain(std::iter::repeat_n(Align::Right, self.columns.len()))
            .collect();
        markdown_table(&header, &rows, &align)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_format_with_fixed_decimals_and_dashes() {
        assert_eq!(format_value(Some(33.456), 2), "33.46");
        assert_eq!(format_value(Some(2.0), 0), "2");
        assert_eq!(format_value(Some(-0.0001), 2), "0.00");
        assert_eq!(format_value(Some(-1.5), 1), "-1.5");
        assert_eq!(format_value(None, 2), "–");
        assert_eq!(format_value(Some(f64::NAN), 2), "–");
        assert_eq!(format_value(Some(f64::INFINITY), 2), "∞");
        assert_eq!(format_value(Some(f64::NEG_INFINITY), 2), "-∞");
    }

    #[test]
    fn method_by_length_table_is_aligned_with_missing_cells() {
        let mut t = MatrixTable::new("method");
        for len in ["128", "256", "512"] {
            t.add_column(len);
        }
        t.set("base", "128", 33.71)
            .set("base", "256", 33.04)
            .set("base", "512", 132.3)
            .set("yarn", "128", 33.6)
            .set("yarn", "512", 26.44);
        let md = t.to_markdown(2, Highlight::None);
        let expected = "\
| method |   128 |   256 |    512 |
| :----- | ----: | ----: | -----: |
| base   | 33.71 | 33.04 | 132.30 |
| yarn   | 33.60 |     – |  26.44 |
";
        assert_eq!(md, expected);
        assert_eq!(t.get("yarn", "256"), None);
        assert_eq!(t.get("yarn", "512"), Some(26.44));
        assert_eq!(t.rows(), ["base", "yarn"]);
    }

    #[test]
    fn best_value_per_column_in_bold() {
        let mut t = MatrixTable::new("m");
        t.set("a", "x", 1.0).set("b", "x", 0.5).set("a", "y", 2.0);
        t.set("b", "y", 2.0004);
        let md = t.to_markdown(2, Highlight::MinPerColumn);
        assert!(md.contains("| a   |     1.00 | **2.00** |"), "{md}");
        assert!(
            md.contains("| b   | **0.50** | **2.00** |"),
            "ties at the printed precision: {md}"
        );
        let md = t.to_markdown(1, Highlight::MaxPerColumn);
        assert!(md.contains("| a   | **1.0** | **2.0** |"), "{md}");
    }

    #[test]
    fn plain_table_pads_escapes_and_fills() {
        let header = vec!["name".to_string(), "value".to_string()];
        let rows = vec![
            vec!["a|b".to_string(), "1".to_string()],
            vec!["long name".to_string()],
        ];
        let md = markdown_table(&header, &rows, &[Align::Left, Align::Right]);
        let expected = "\
| name      | value |
| :-------- | ----: |
| a\\|b      |     1 |
| long name |     – |
";
        assert_eq!(md, expected);
    }
}
