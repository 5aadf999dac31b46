//! The integration test binary: one module per area.

mod analysis;
mod bad_input;
mod data;
mod eval;
mod model;
mod report;
mod runner;
mod stages;
mod train;
