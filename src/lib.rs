//! ropelens: pipelines for studying RoPE extensions of long-context LLMs.

pub mod analysis;
pub mod bench;
pub mod cli;
pub mod data;
pub mod device;
pub mod error;
pub mod eval;
pub mod failpoint;
pub mod model;
pub mod paths;
pub mod pipeline;
pub mod progress;
pub mod report;
pub mod results;
pub mod signals;
pub mod stages;
pub mod tables;
pub mod train;

pub use error::{Error, Result};
