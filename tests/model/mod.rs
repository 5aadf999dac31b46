//! Model tests against Hugging Face transformers (fixtures from
//! tests/fixtures/make_hf_fixtures.py), checkpoints and training.

mod attention_grad;
mod checkpoint;
pub(crate) mod fixture;
mod fused_ops;
mod gguf;
mod kv_cache;
mod parity;
mod train;
