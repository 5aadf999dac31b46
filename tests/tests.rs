//! The integration test binary: one module per area.

mod analysis;
mod eval;
mod model;
mod report;
mod runner;
