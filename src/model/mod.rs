//! The LLaMA-family model with every RoPE extension, numerically matching Hugging Face
//! transformers: config (config.json both layouts), RoPE frequencies, the burn module and its
//! forwards (logits, NLL, attention entropy, distance profile, KV cache), greedy decoding,
//! safetensors checkpoints, and a benchmark. See docs/model.md.

pub mod attention;
pub mod bench;
pub mod checkpoint;
pub mod config;
pub mod error;
pub mod flash;
pub mod flash_grad;
pub mod fused;
pub mod generate;
pub mod gguf;
pub mod host_op;
pub mod kv_cache;
pub mod llama;
pub mod memory;
pub mod rope;

pub use attention::AttentionBlocks;
pub use checkpoint::{
    CheckpointInfo, checkpoint_files, import_checkpoint, inspect_checkpoint, load_llama, save_llama,
};
pub use config::{HfLayout, LlamaConfig};
pub use error::{ModelError, Result};
pub use generate::{GreedyOptions, GreedyOutput, greedy_decode};
pub use gguf::{import_gguf, is_gguf};
pub use llama::{DistanceProfile, EntropyOutput, KvCache, Llama, ids_tensor};
pub use rope::{RopeConfig, RopeFrequencies, RopeKind, RopeScaling};
