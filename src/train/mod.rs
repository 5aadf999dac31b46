//! Training: short-context pretraining of a base model and the paper's RoPE-extension
//! continual pretraining, as one library the `train` stage wraps.
//!
//! - [`params`]: what the user writes (`model`, `train`, `rope` tables) and how it becomes a
//!   model config;
//! - [`schedule`]: learning rate per step (warmup, then constant/linear/cosine);
//! - [`optim`]: AdamW by parameter path, global-norm clipping, frozen groups, seeded init;
//! - [`source`]: the batch source trait and an in-memory source;
//! - [`checkpoint`]: atomic, resumable checkpoints;
//! - [`run`]: the loop.
//!
//! See docs/train.md.

pub mod bench;
pub mod checkpoint;
pub mod error;
pub mod optim;
pub mod params;
pub mod run;
pub mod schedule;
pub mod shards;
pub mod source;

pub use error::{Result, TrainError};
pub use optim::{AdamW, Grads, freeze, seeded_init};
pub use params::{
    ModelParams, ParamGroup, RopeParams, Sampling, Schedule, ScheduleOrigin, TrainParams,
    TrainStageParams,
};
pub use run::{TrainJob, TrainOutput, train, validation_loss};
pub use schedule::LrSchedule;
pub use shards::Shards;
pub use source::{BatchSource, TokenWindows};
