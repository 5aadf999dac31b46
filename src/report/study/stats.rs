//! Mean and spread over seeds for the report's tables. The findings' tests live in
//! `crate::analysis::inference`.

/// Mean of a non-empty slice (NaN for an empty one).
pub fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len() as f64
}

/// Sample standard deviation (n - 1); `None` below two values.
pub fn sd(values: &[f64]) -> Option<f64> {
    if values.len() < 2 {
        return None;
    }
    let m = mean(values);
    let ss: f64 = values.iter().map(|v| (v - m) * (v - m)).sum();
    Some((ss / (values.len() - 1) as f64).sqrt())
}

/// `mean ± sd` with `decimals` decimals, the sd only with two or more values; `–` for none.
pub fn format_spread(values: &[f64], decimals: usize) -> String {
    if values.is_empty() {
        return crate::report::tables::MISSING.to_string();
    }
    let m = crate::report::tables::format_value(Some(mean(values)), decimals);
    match sd(values) {
        Some(s) => format!(
            "{m} ± {}",
            crate::report::tables::format_value(Some(s), decimals)
        ),
        None => m,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_and_ranks() {
        assert_eq!(mean(&[1.0, 2.0, 3.0]), 2.0);
        assert_eq!(sd(&[1.0, 2.0, 3.0]), Some(1.0));
        assert_eq!(sd(&[1.0]), None);
        assert_eq!(format_spread(&[1.0, 2.0, 3.0], 2), "2.00 ± 1.00");
        assert_eq!(format_spread(&[1.234], 1), "1.2");
        assert_eq!(format_spread(&[], 1), "–");
    }
}
