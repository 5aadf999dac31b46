//! ropelens: pipelines for studying RoPE extensions of long-context LLMs.

pub mod device;
pub mod model;
pub mod progress;
