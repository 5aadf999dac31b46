//! ropelens: pipelines for studying RoPE extensions of long-context LLMs.

pub mod analysis;
pub mod device;
pub mod eval;
pub mod model;
pub mod progress;
pub mod report;
pub mod tables;
