//! ropelens: pipelines for studying RoPE extensions of long-context LLMs.

pub mod bench;
pub mod cli;
pub mod error;
pub mod pipeline;
pub mod progress;
pub mod stages;

pub use error::{Error, Result};
