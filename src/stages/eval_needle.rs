//! The `eval_needle` stage: the needle-in-a-haystack grid `tasks x lengths x depths x trials`
//! with greedy decoding, the three scores and the paper's Algorithm 1 entropy (`needle`,
//! `needle_entropy`), and the entropy-vs-error statistics of the same trials
//! (`entropy_vs_error`). Resumable: finished cells are kept in `needle_trials.jsonl` in the
//! build directory and not redone. See docs/eval.md.

use anyhow::Context;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::eval_io::{check_lengths, check_positive, load_model, open_data, out_path, write_rows};
use super::{Ctx, NeedDecl, Needs, ParamError, Resources, StageKind};
use crate::analysis::auroc::BootstrapConfig;
use crate::data::{DataError, NeedleTask};
use crate::eval::EvalError;
use crate::eval::needle::{
    DecodeSettings, EntropySpan, NeedleCell, NeedleGrid, NeedlePrompt, TrialLog, entropy_vs_error,
    run_grid,
};
use crate::tables::{NeedleEntropyRow, NeedleRow};

/// The needle grid.
pub struct EvalNeedle;

/// The trial log's file name in the build directory.
pub const TRIAL_LOG: &str = "needle_trials.jsonl";

/// Parameters of `eval_needle`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EvalNeedleParams {
    /// Tasks of the data stage's haystacks: `passkey`, `niah`, `multikey`.
    #[serde(default = "default_tasks")]
    pub tasks: Vec<NeedleTask>,
    /// Haystack lengths in tokens (prompt plus answer), beyond the trained length included.
    pub lengths: Vec<usize>,
    /// Needle depths in `[0, 1]` (0 = start of the haystack, farthest from the question).
    #[serde(default = "default_depths")]
    pub depths: Vec<f64>,
    /// Trials per (task, length, depth) cell, each with its own haystack and key.
    #[serde(default = "default_trials")]
    pub trials: usize,
    /// Most tokens generated per trial (decoding also stops at EOS or a newline).
    #[serde(default = "default_max_new_tokens")]
    pub max_new_tokens: usize,
    /// Record the attention entropy of each answer token (Algorithm 1).
    #[serde(default = "default_true")]
    pub entropy: bool,
    /// Which generated tokens the entropy averages: `answer` (the expected answer's token
    /// count at most) or `generated` (every token before a stop, the form before version 2).
    #[serde(default)]
    pub entropy_over: EntropySpan,
    /// Bootstrap resamples of the entropy-vs-error intervals.
    #[serde(default = "default_resamples")]
    pub bootstrap_resamples: usize,
}

fn default_tasks() -> Vec<NeedleTask> {
    vec![NeedleTask::Passkey]
}
fn default_depths() -> Vec<f64> {
    vec![0.0, 0.25, 0.5, 0.75, 1.0]
}
fn default_trials() -> usize {
    8
}
fn default_max_new_tokens() -> usize {
    16
}
fn default_true() -> bool {
    true
}
fn default_resamples() -> usize {
    2000
}

/// The haystack seed of a cell: the instance seed and the cell's identity, hashed, so that
/// every cell has its own key and filler and a resumed run rebuilds the same prompts.
pub fn cell_seed(seed: u64, cell: &NeedleCell) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(&seed.to_le_bytes());
    h.update(cell.id().as_bytes());
    let bytes: [u8; 8] = h.finalize().as_bytes()[..8]
        .try_into()
        .expect("a blake3 hash has 32 bytes");
    u64::from_le_bytes(bytes)
}

fn task_of(name: &str) -> Option<NeedleTask> {
    [NeedleTask::Passkey, NeedleTask::Niah, NeedleTask::Multikey]
        .into_iter()
        .find(|t| t.name() == name)
}

impl EvalNeedleParams {
    /// The grid of cells these parameters ask for.
    fn grid(&self) -> NeedleGrid {
        NeedleGrid {
            tasks: self.tasks.iter().map(|t| t.name().to_string()).collect(),
            lengths: self.lengths.clone(),
            depths: self.depths.clone(),
            trials: self.trials,
        }
    }
}

impl StageKind for EvalNeedle {
    const KIND: &'static str = "eval_needle";
    // 2: Algorithm 1's entropy stops at the expected answer's length (`entropy_over`).
    // 3: the forward's fused RMSNorm, SwiGLU and RoPE kernels on the CPU (as `eval_ppl` 2).
    // 4: a tied LM head reads the embedding transposed in place (`linear_transposed`); a
    // decoding step's logits differ from burn's batched one-row product in the last bits.
    const VERSION: u32 = 4;
    type Params = EvalNeedleParams;

    fn needs() -> Needs {
        Needs::Fixed(const { &[NeedDecl::required("model"), NeedDecl::required("data")] })
    }

    fn resources(_: &EvalNeedleParams, device: &str) -> Resources {
        Resources::for_device(device)
    }

    fn resumable(_: &EvalNeedleParams) -> bool {
        true
    }

    fn check(p: &EvalNeedleParams) -> Result<(), ParamError> {
        check_lengths(&p.lengths, 2, "lengths")?;
        check_positive(&[
            ("max_new_tokens", p.max_new_tokens),
            ("trials", p.trials),
            ("bootstrap_resamples", p.bootstrap_resamples),
        ])?;
        for (key, empty) in [
            ("tasks", p.tasks.is_empty()),
            ("depths", p.depths.is_empty()),
        ] {
            if empty {
                return Err(ParamError::new(key, "is empty: give at least one"));
            }
        }
        if let Some(d) = p.depths.iter().find(|d| !(0.0..=1.0).contains(*d)) {
            return Err(ParamError::new(
                "depths",
                format!("holds {d}: depths must be in [0, 1]"),
            ));
        }
        p.grid()
            .cells()
            .map(|_| ())
            .map_err(|e| ParamError::new("", e.to_string()))
    }

    fn run(p: &EvalNeedleParams, ctx: &Ctx<'_>) -> anyhow::Result<()> {
        let grid = p.grid();
        let (model, _) = load_model(ctx, "model")?;
        let data = open_data(ctx, &model)?;
        let builder = data.haystacks().context("building the haystack builder")?;
        let tokenizer = &data.tokenizer;
        let seed = ctx.seed;

        // Every cell's haystack is built once before the first trial, so that a length too
        // short for the task's text fails now, naming the parameter, rather than after the
        // trials of every shorter-running cell. The tokenizer decides the text's length, so
        // this cannot be checked when the pipeline is read.
        ctx.progress.message("checking every haystack");
        for cell in grid.cells()? {
            let Some(task) = task_of(&cell.task) else {
                anyhow::bail!("unknown needle task `{}`", cell.task);
            };
            match builder.build(task, cell.length, cell.depth, cell_seed(seed, &cell)) {
                Ok(_) => {}
                Err(DataError::HaystackTooShort {
                    task,
                    length,
                    fixed,
                }) => anyhow::bail!(
                    "`lengths`: {length} is shorter than the {task} needle text: with this tokenizer the instruction, needle, question and answer take {fixed} tokens before any filler; give lengths of at least {fixed}"
                ),
                Err(e) => return Err(e).with_context(|| format!("haystack for {}", cell.id())),
            }
        }

        // EOS and every token whose text holds a newline end a reply.
        ctx.progress.message("finding stop tokens");
        let mut stop_tokens: Vec<u32> = data.special().eos_id.into_iter().collect();
        for id in 0..tokenizer.get_vocab_size(true) as u32 {
            if tokenizer
                .decode(&[id], false)
                .is_ok_and(|text| text.contains('\n'))
                && !stop_tokens.contains(&id)
            {
                stop_tokens.push(id);
            }
        }
        let settings = DecodeSettings {
            max_new_tokens: p.max_new_tokens,
            stop_tokens,
            record_entropy: p.entropy,
            entropy_span: p.entropy_over,
        };
        let decode = |ids: &[u32]| tokenizer.decode(ids, true).map_err(|e| e.to_string());
        let mut prompt_for = |cell: &NeedleCell| -> crate::eval::Result<NeedlePrompt> {
            let task = task_of(&cell.task)
                .ok_or_else(|| EvalError::Input(format!("unknown needle task `{}`", cell.task)))?;
            let h = builder
                .build(task, cell.length, cell.depth, cell_seed(seed, cell))
                .map_err(|e| EvalError::Input(format!("haystack for {}: {e}", cell.id())))?;
            Ok(NeedlePrompt {
                input_ids: h.input_ids,
                needle_pos: h.needle_pos,
                answer_tokens: h.answer_ids.len(),
                expected: h.answer,
            })
        };
        let mut log = TrialLog::open(&out_path(ctx, TRIAL_LOG))?;
        let records = run_grid(
            &model,
            &grid,
            &mut prompt_for,
            &settings,
            &decode,
            &mut log,
            ctx.progress,
        )?;

        let rows: Vec<NeedleRow> = records.iter().map(|r| r.row()).collect();
        let entropy: Vec<NeedleEntropyRow> =
            records.iter().flat_map(|r| r.entropy_rows()).collect();
        let bootstrap = BootstrapConfig {
            resamples: p.bootstrap_resamples.max(1),
            level: 0.95,
            seed,
        };
        let vs_error = entropy_vs_error(&rows, &bootstrap)?;
        for task in &p.tasks {
            let cells: Vec<&NeedleRow> = rows.iter().filter(|r| r.task == task.name()).collect();
            let passed = cells
                .iter()
                .filter(|r| !crate::eval::needle::failed(r))
                .count();
            ctx.progress.message(&format!(
                "{}: {passed} of {} trials passed",
                task.name(),
                cells.len()
            ));
        }
        write_rows(ctx, &rows)?;
        write_rows(ctx, &entropy)?;
        write_rows(ctx, &vs_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_default_and_cell_seeds_differ() {
        let p: EvalNeedleParams = serde_json::from_str(r#"{"lengths": [64]}"#).unwrap();
        assert_eq!(p.tasks, vec![NeedleTask::Passkey]);
        assert_eq!((p.trials, p.max_new_tokens, p.entropy), (8, 16, true));
        assert_eq!(p.entropy_over, EntropySpan::Answer);
        let old: EvalNeedleParams =
            serde_json::from_str(r#"{"lengths": [64], "entropy_over": "generated"}"#).unwrap();
        assert_eq!(old.entropy_over, EntropySpan::Generated);
        let e = serde_json::from_str::<EvalNeedleParams>(r#"{"lengths": [64], "task": []}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("task"), "{e}");
        let cell = |trial| NeedleCell {
            task: "passkey".into(),
            length: 64,
            depth: 0.5,
            trial,
        };
        assert_eq!(cell_seed(1, &cell(0)), cell_seed(1, &cell(0)));
        assert_ne!(cell_seed(1, &cell(0)), cell_seed(1, &cell(1)));
        assert_ne!(cell_seed(1, &cell(0)), cell_seed(2, &cell(0)));
        assert_eq!(task_of("multikey"), Some(NeedleTask::Multikey));
    }
}
