//! Integration tests of the study's stage kinds driven through `pipe run`, on tiny fixtures.

mod model_stage;
mod quickstart;
mod real_model;
mod report_stage;
mod train_stage;
