//! The `eval_ppl` stage: perplexity of the validation documents at each context length, in
//! truncate or sliding mode (`ppl` table). See docs/eval.md.

use anyhow::{Context, bail};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::eval_io::{check_lengths, check_positive, load_model, open_data, write_rows};
use super::{Ctx, NeedDecl, Needs, ParamError, Resources, StageKind};
use crate::eval::ppl::{PplDoc, PplMode, PplModeKind, PplOptions, evaluate_ppl};

/// Perplexity across context lengths.
pub struct EvalPpl;

/// Parameters of `eval_ppl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EvalPplParams {
    /// Context lengths in tokens. Lengths beyond the model's trained length are evaluated as
    /// they are (no cap).
    pub lengths: Vec<usize>,
    /// `truncate` (default) or `sliding`.
    #[serde(default)]
    pub mode: PplModeKind,
    /// Sliding stride in tokens, `1..length`; default half the length. Only for `sliding`.
    #[serde(default)]
    pub stride: Option<usize>,
    /// Sliding only: evaluate each document's first `document_tokens` tokens, and only
    /// documents that have that many, so that every length scores the same tokens and only
    /// their context differs; every length must be at most this. Without it, sliding covers
    /// whole documents (about `length / stride` forwards per document token).
    // Omitted from the serialised params when unset, so that the cache keys of stages
    // written before this key existed do not move.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub document_tokens: Option<usize>,
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
            (PplModeKind::Truncate, None) => Ok(PplMode::Truncate),
            (PplModeKind::Truncate, Some(_)) => {
                bail!("`stride` is only used with mode = \"sliding\"")
            }
            (PplModeKind::Sliding, stride) => Ok(PplMode::Sliding {
                stride: stride.unwrap_or((length / 2).max(1)),
            }),
        }
    }
}

impl StageKind for EvalPpl {
    const KIND: &'static str = "eval_ppl";
    // 2: on the CPU the forward runs the fused RMSNorm, SwiGLU and RoPE kernels (forward only,
    // `host_op::HostPath::Forward`), whose last bits differ from burn's decomposed forms.
    const VERSION: u32 = 2;
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
        if let Some(cap) = p.document_tokens {
            if p.mode != PplModeKind::Sliding {
                return Err(ParamError::new(
                    "document_tokens",
                    "is only used with mode = \"sliding\" (truncate reads each document's first `length` tokens already)",
                ));
            }
            if let Some(&l) = p.lengths.iter().find(|&&l| l > cap) {
                return Err(ParamError::new(
                    "document_tokens",
                    format!(
                        "{cap} is shorter than the length {l}: every length must fit in the evaluated prefix"
                    ),
                ));
            }
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
        let (key, needed) = match p.document_tokens {
            Some(cap) => ("document_tokens", cap),
            None => ("lengths", shortest),
        };
        if split.docs_at_least(needed).is_empty() {
            bail!(
                "`{key}`: no validation document of data `{}` has {needed} tokens: nothing was evaluated (lower `{key}` or give the data stage longer documents)",
                ctx.need("data")?.instance,
            );
        }
        let mut rows = Vec::new();
        for &length in &p.lengths {
            let mode = p.mode_for(length)?;
            let needed = p.document_tokens.unwrap_or(length);
            let chosen: Vec<usize> = split
                .docs_at_least(needed)
                .into_iter()
                .take(p.max_documents)
                .collect();
            let docs: Vec<(String, Vec<u32>, Option<Vec<u8>>)> = chosen
                .iter()
                .map(|&d| {
                    let mut range = split.doc_range(d);
                    if let Some(cap) = p.document_tokens {
                        range.end = range.start + cap;
                    }
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
                    total - split.docs_at_least(needed).len(),
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
        assert_eq!(p.mode, PplModeKind::Truncate);
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

    #[test]
    fn document_tokens_is_sliding_only_fits_every_length_and_keeps_old_keys() {
        let parse = |json: &str| serde_json::from_str::<EvalPplParams>(json).unwrap();
        let ok = parse(r#"{"lengths": [64, 128], "mode": "sliding", "document_tokens": 128}"#);
        assert!(EvalPpl::check(&ok).is_ok());
        let e = EvalPpl::check(&parse(r#"{"lengths": [64], "document_tokens": 128}"#)).unwrap_err();
        assert_eq!(e.key, "document_tokens");
        assert!(e.message.contains("sliding"), "{}", e.message);
        let e = EvalPpl::check(&parse(
            r#"{"lengths": [64, 256], "mode": "sliding", "document_tokens": 128}"#,
        ))
        .unwrap_err();
        assert_eq!(e.key, "document_tokens");
        assert!(e.message.contains("256"), "{}", e.message);
        // Unset, the key is not serialised: the params (and so the cache keys) of pipelines
        // written before it existed are unchanged.
        let old = parse(r#"{"lengths": [64]}"#);
        let json = serde_json::to_string(&old).unwrap();
        assert!(!json.contains("document_tokens"), "{json}");
    }
}
