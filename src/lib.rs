//! ropelens: pipelines for studying RoPE extensions of long-context LLMs.

pub mod analysis;
pub mod progress;
pub mod report;
pub mod tables;
