//! The `eval_ppl` stage: perplexity of the validation documents at each context length, in
//! truncate or sliding mode (`ppl` table). See docs/eval.md.

use anyhow::{Context, bail};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::eval_io::{check_lengths, check_positive, load_model, open_data, write_rows};
use super::{Ctx, NeedDecl, Needs, ParamError, Resources, StageKind};
use crate::eval::ppl::{PplDoc, PplMode, PplOptions, evaluate_ppl};

/// Perplexity across context lengths.
pub struct EvalPpl;

/// How documents are cut into windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PplModeParam {
    /// Each document cut to its first `length` tokens: one window (YaRN's `--truncate`).
    #[default]
    Truncate,
    /// Windows of `length` tokens advancing by `stride`; only new tokens are scored.
    Sliding,
}

/// Parameters of `eval_ppl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EvalPplParams {
    /// Context lengths in tokens. Lengths beyond the model's trained length are evaluated as
    /// they are (no cap).
    pub lengths: Vec<usize>,
    /// `truncate` (default) or `sliding`.
    #[serde(default)]
    pub mode: PplModeParam,
    /// Sliding stride in tokens, `1..length`; default half the length. Only for `sliding`.
    #[serde(default)]
    pub stride: Option<usize>,
    /// At most this many validation documents per length (the first ones, in order, with at
    /// least `length` tokens); set it high to evaluate every one.
    #[serde(default = "default_max_documents")]
    pub max_documents: usize,
    /// Windows per forward.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Positions per output-head chunk (bounds the logits held at once).
    #[serde(default = "default_chunk")]
    pub chunk: usize,
}

fn default_max_documents() -> usize {
    64
}
fn default_batch_size() -> usize {
    1
}
fn default_chunk() -> usize {
    1024
}

impl EvalPplParams {
    fn mode_for(&self, length: usize) -> anyhow::Result<PplMode> {
        match (self.mode, self.stride) {
            (PplModeParam::Truncate, None) => Ok(PplMode::Truncate),
            (PplModeParam::Truncate, Some(_)) => {
                bail!("`stride` is only used with mode = \"sliding\"")
            }
            (PplModeParam::Sliding, stride) => Ok(PplMode::Sliding {
                stride: stride.unwrap_or((length / 2).max(1)),
            }),
        }
    }
}

impl StageKind for EvalPpl {
    const KIND: &'static str = "eval_ppl";
    const VERSION: u32 = 1;
    type Params = EvalPplParams;

    fn needs() -> Needs {
        Needs::Fixed(const { &[NeedDecl::required("model"), NeedDecl::required("data")] })
    }

    fn check(p: &EvalPplParams) -> Result<(), ParamError> {
        check_lengths(&p.lengths, 2, "lengths")?;
        check_positive(&[
            ("batch_size", p.batch_size),
            ("chunk", p.chunk),
            ("max_documents", p.max_documents),
        ])?;
        if p.stride == Some(0) {
            return Err(ParamError::new("stride", "must be at least 1"));
        }
        for &l in &p.lengths {
            p.mode_for(l)
                .map_err(|e| ParamError::new("stride", format!("{e:#}")))?;
            if let Some(s) = p.stride
                && s > l
            {
                return Err(ParamError::new(
                    "stride",
                    format!(
                        "{s} is longer than the length {l}: the tokens between windows would never be scored"
                    ),
                ));
            }
        }
        Ok(())
    }

    fn resources(_: &EvalPplParams, device: &str) -> Resources {
        Resources::for_device(device)
    }

    fn run(p: &EvalPplParams, ctx: &Ctx<'_>) -> anyhow::Result<()> {
        let (model, _) = load_model(ctx, "model")?;
        let data = open_data(ctx, &model)?;
        let split = &data.valid;
        if split.is_empty() {
            bail!(
                "data `{}` has an empty validation split",
                ctx.need("data")?.instance
            );
        }
        // Before any forward: a stage that would evaluate nothing is an error, not an empty
        // table.
        let shortest = p.lengths.iter().min().copied().unwrap_or(0);
        if split.docs_at_least(shortest).is_empty() {
            bail!(
                "`lengths`: no validation document of data `{}` has {shortest} tokens: nothing was evaluated (lower `lengths` or give the data stage longer documents)",
                ctx.need("data")?.instance,
            );
        }
        let mut rows = Vec::new();
        for &length in &p.lengths {
            let mode = p.mode_for(length)?;
            let chosen: Vec<usize> = split
                .docs_at_least(length)
                .into_iter()
                .take(p.max_documents)
                .collect();
            let docs: Vec<(String, Vec<u32>, Option<Vec<u8>>)> = chosen
                .iter()
                .map(|&d| {
                    let range = split.doc_range(d);
                    (
                        d.to_string(),
                        split.tokens(range.clone()),
                        split.marks(range).map(<[u8]>::to_vec),
                    )
                })
                .collect();
            let views: Vec<PplDoc<'_>> = docs
                .iter()
                .map(|(id, tokens, marks)| PplDoc {
                    id,
                    tokens,
                    marks: marks.as_deref(),
                })
                .collect();
            let opts = PplOptions {
                length,
                mode,
                batch_size: p.batch_size,
                chunk: p.chunk,
            };
            let out = evaluate_ppl(&model, &views, &opts, ctx.progress)
                .with_context(|| format!("perplexity at length {length}"))?;
            let total = split.num_docs();
            match out.mean_nll() {
                Some(nll) if !nll.is_finite() => bail!(
                    "perplexity at length {length} is {nll} (mean NLL): the model `{}` has non-finite weights or activations",
                    ctx.need("model")?.instance
                ),
                Some(nll) => ctx.progress.message(&format!(
                    "L={length} {}: ppl {:.3} (nll {nll:.4}) over {} documents ({} of {total} \
                     validation documents are shorter)",
                    mode.name(),
                    nll.exp(),
                    out.rows.len(),
                    total - split.docs_at_least(length).len(),
                )),
                None => ctx.progress.message(&format!(
                    "L={length}: no validation document has {length} tokens; no rows"
                )),
            }
            rows.extend(out.rows);
        }
        write_rows(ctx, &rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_default_and_reject_unknown_keys() {
        let p: EvalPplParams = serde_json::from_str(r#"{"lengths": [128, 256]}"#).unwrap();
        assert_eq!(p.mode, PplModeParam::Truncate);
        assert_eq!(p.max_documents, 64);
        assert_eq!(p.mode_for(256).unwrap(), PplMode::Truncate);
        let p: EvalPplParams =
            serde_json::from_str(r#"{"lengths": [128], "mode": "sliding"}"#).unwrap();
        assert_eq!(p.mode_for(128).unwrap(), PplMode::Sliding { stride: 64 });
        let e = serde_json::from_str::<EvalPplParams>(r#"{"lengths": [1], "strid": 3}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("strid"), "{e}");
        let p: EvalPplParams = serde_json::from_str(r#"{"lengths": [8], "stride": 3}"#).unwrap();
        assert!(p.mode_for(8).unwrap_err().to_string().contains("sliding"));
    }
}
