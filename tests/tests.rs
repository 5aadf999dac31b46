//! The integration test binary: one module per area.

mod analysis;
mod model;
mod train;
mod report;
mod runner;
