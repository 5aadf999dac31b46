//! The report stage: PNG figures ([`plots`]), Markdown tables ([`tables`]) and the study report
//! that combines them with the findings' verdicts ([`study`]); the frequency view of a RoPE
//! setting ([`frequencies`], `pipe rope`).
//!
//! `plots` and `tables` take plain data (names, numbers, grids) rather than result tables, so
//! `study` decides what to show and they only decide how it looks.

pub mod frequencies;
pub mod plots;
pub mod study;
pub mod tables;
