//! The `attention` stage: attention entropy by query position (`attention_entropy`), mean
//! attention by relative distance (`attention_distance`) on validation windows at each length,
//! and, with a `reference` model (the base model), the Jensen-Shannon divergence of the
//! distance profile from the reference's at its pretrained length (`attention_divergence`, in
//! nats). Entropy vs error is computed by `eval_needle`, which holds the trials. See
//! docs/eval.md.

use anyhow::{Context, bail};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::eval_io::{check_lengths, check_positive, load_model, open_data, write_rows};
use super::{Ctx, NeedDecl, Needs, ParamError, Resources, StageKind};
use crate::data::PreparedData;
use crate::eval::attention::{attention_analysis, distance_rows, divergence_row};
use crate::model::AttentionBlocks;

/// Attention entropy, distance profile and divergence.
pub struct Attention;

/// Parameters of `attention`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AttentionParams {
    /// Context lengths in tokens.
    pub lengths: Vec<usize>,
    /// Validation windows per length: the first `length` tokens of the first documents that
    /// have that many.
    #[serde(default = "default_windows")]
    pub windows: usize,
    /// Windows per forward.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Queries per attention block (memory per block is batch x heads x query x key floats).
    #[serde(default = "default_query_block")]
    pub query_block: usize,
    /// Keys per attention block.
    #[serde(default = "default_key_block")]
    pub key_block: usize,
    /// Length at which the reference model's profile is measured; default its
    /// `max_position_embeddings` (its pretrained length). Only with a `reference` need.
    #[serde(default)]
    pub reference_length: Option<usize>,
}

fn default_windows() -> usize {
    8
}
fn default_batch_size() -> usize {
    1
}
fn default_query_block() -> usize {
    256
}
fn default_key_block() -> usize {
    1024
}

/// Validation windows of `length` tokens, at most `count`.
fn windows(data: &PreparedData, length: usize, count: usize) -> Vec<Vec<u32>> {
    data.valid
        .eval_windows(length, Some(count))
        .into_iter()
        .map(|w| w.tokens)
        .collect()
}

impl StageKind for Attention {
    const KIND: &'static str = "attention";
    // 2: `attention_distance` has per-head rows (`head` column).
    // 3: entropy and distance from one forward, with the fused RMSNorm, SwiGLU and RoPE kernels
    // (last bits move; no `chunk` key).
    const VERSION: u32 = 3;
    type Params = AttentionParams;

    fn needs() -> Needs {
        Needs::Fixed(
            const {
                &[
                    NeedDecl::required("model"),
                    NeedDecl::required("data"),
                    NeedDecl::optional("reference"),
                ]
            },
        )
    }

    fn check(p: &AttentionParams) -> Result<(), ParamError> {
        check_lengths(&p.lengths, 2, "lengths")?;
        check_positive(&[
            ("windows", p.windows),
            ("batch_size", p.batch_size),
            ("query_block", p.query_block),
            ("key_block", p.key_block),
        ])?;
        if let Some(l) = p.reference_length {
            check_lengths(&[l], 2, "reference_length")?;
        }
        Ok(())
    }

    fn check_needs(p: &AttentionParams, given: &[&str]) -> Result<(), ParamError> {
        if p.reference_length.is_some() && !given.contains(&"reference") {
            return Err(ParamError::new(
                "reference_length",
                "is set but the stage has no `reference` need (add `needs.reference`, or remove it)",
            ));
        }
        Ok(())
    }

    fn resources(_: &AttentionParams, device: &str) -> Resources {
        Resources::for_device(device)
    }

    fn run(p: &AttentionParams, ctx: &Ctx<'_>) -> anyhow::Result<()> {
        let has_reference = !ctx.need_all("reference").is_empty();
        if p.reference_length.is_some() && !has_reference {
            bail!("`reference_length` is set but the stage has no `reference` need");
        }
        let blocks = AttentionBlocks {
            query: p.query_block,
            key: p.key_block,
        };
        let (model, _) = load_model(ctx, "model")?;
        let data = open_data(ctx, &model)?;

        let reference = if has_reference {
            let (reference, name) = load_model(ctx, "reference")?;
            let length = p
                .reference_length
                .unwrap_or(reference.config().max_position_embeddings);
            let w = windows(&data, length, p.windows);
            if w.is_empty() {
                bail!(
                    "no validation document has {length} tokens for the reference profile \
                     (set `reference_length`)"
                );
            }
            let profile = attention_analysis(&reference, &w, blocks, p.batch_size, ctx.progress)
                .with_context(|| format!("reference `{name}` at length {length}"))?
                .distance;
            Some((profile, name))
        } else {
            None
        };

        let mut entropy_rows = Vec::new();
        let mut distance = Vec::new();
        let mut divergence = Vec::new();
        for &length in &p.lengths {
            let w = windows(&data, length, p.windows);
            if w.is_empty() {
                ctx.progress.message(&format!(
                    "L={length}: no validation document has {length} tokens; skipped"
                ));
                continue;
            }
            let a = attention_analysis(&model, &w, blocks, p.batch_size, ctx.progress)
                .with_context(|| format!("attention analysis at length {length}"))?;
            entropy_rows.extend(a.entropy);
            let d = a.distance;
            distance.extend(distance_rows(&d)?);
            if let Some((r, name)) = &reference {
                let row = divergence_row(&d, r, name)?;
                ctx.progress.message(&format!(
                    "L={length}: JS divergence from `{name}` at {} = {:.4} nats",
                    r.length, row.js_nats
                ));
                divergence.push(row);
            }
        }
        write_rows(ctx, &entropy_rows)?;
        write_rows(ctx, &distance)?;
        if reference.is_some() {
            write_rows(ctx, &divergence)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_default_and_reject_unknown_keys() {
        let p: AttentionParams = serde_json::from_str(r#"{"lengths": [64, 128]}"#).unwrap();
        assert_eq!((p.windows, p.query_block, p.key_block), (8, 256, 1024));
        assert_eq!(p.reference_length, None);
        let e = serde_json::from_str::<AttentionParams>(r#"{"lengths": [64], "window": 2}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("window"), "{e}");
    }
}
