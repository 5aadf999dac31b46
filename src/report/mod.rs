//! The report stage: PNG figures ([`plots`]), Markdown tables ([`tables`]) and the study report
//! that combines them with the findings' verdicts ([`study`]).
//!
//! `plots` and `tables` take plain data (names, numbers, grids) rather than result tables, so
//! `study` decides what to show and they only decide how it looks.

pub mod plots;
pub mod study;
pub mod tables;
