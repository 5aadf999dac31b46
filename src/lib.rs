//! ropelens: pipelines for studying RoPE extensions of long-context LLMs.

pub mod data;
pub mod progress;
