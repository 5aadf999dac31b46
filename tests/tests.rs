//! The integration test binary: one module per area.

mod analysis;
mod data;
mod model;
mod report;
mod runner;
mod stages;
mod train;
