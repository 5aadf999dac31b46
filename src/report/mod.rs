//! Helpers for the report stage: PNG figures ([`plots`]) and Markdown tables ([`tables`]).
//!
//! They take plain data (names, numbers, grids) rather than result tables, so the report stage
//! decides what to show and these modules only decide how it looks.

pub mod plots;
pub mod tables;
