//! The `report` stage kind: the study's plots, tables and findings from the gathered metrics.
//!
//! It gathers the tables of every instance it needs (`ppl = "ppl[*]"`, ...) into the same layout
//! as `results/<pipeline>/`, then writes `report/report.md` and its PNG figures. The runner
//! publishes that `report/` directory into the results directory after the run, and
//! `pipe report FILE` regenerates it from the results directory alone.

use std::collections::BTreeSet;

use anyhow::Context;

use super::train::{SUMMARY_FILE as TRAIN_SUMMARY, Train, TrainSummary};
use super::{Ctx, Needs, ParamError, StageKind, Upstream};
use crate::report::study::{ReportOptions, write_report};
use crate::results::{InstanceInfo, RunRow, RunStatus, gather_tables, write_runs};
use crate::tables::{ModelConfigRow, ResultRow, Table, WarningRow, write_results};
use std::path::Path;

/// Where the report stage writes its gathered tables, inside its output directory.
pub const TABLES_DIR: &str = "tables";

/// Writes the study report.
pub struct Report;

impl StageKind for Report {
    const KIND: &'static str = "report";
    // 2: publishes `model_config.parquet` for the frequency view; effective length.
    // 3: publishes `warnings.parquet` and shows the gathered instances' warnings.
    // 4: training-free models (lineage) labelled and not gated; a tick at each measured length.
    // 5: the heatmaps' dashed line is mentioned only where a model has a fine-tuning length.
    // 6: each perplexity table says what its mode scores.
    // 7: the ablation's "not testable" / "Not shown" messages name the rule that decided.
    const VERSION: u32 = 7;
    type Params = ReportOptions;

    fn needs() -> Needs {
        // Any names: a report gathers whatever evaluation stages the pipeline has.
        Needs::Any
    }

    fn check(params: &ReportOptions) -> Result<(), ParamError> {
        params
            .check()
            .map_err(|(key, message)| ParamError::new(key, message))
    }

    fn device_sensitive(_params: &ReportOptions) -> bool {
        false
    }

    fn publishes() -> &'static [&'static str] {
        &[REPORT_DIR]
    }

    fn run(params: &ReportOptions, ctx: &Ctx<'_>) -> anyhow::Result<()> {
        ctx.progress.start("report", 2);
        // The same instance may be reached through two needs: gather it once.
        let mut seen = BTreeSet::new();
        let upstreams: Vec<&Upstream> = ctx
            .needs
            .values()
            .flatten()
            .filter(|u| seen.insert(u.instance.clone()))
            .collect();
        let infos: Vec<InstanceInfo> = upstreams.iter().map(|u| instance_info(u)).collect();
        let tables = ctx.out_dir.join(TABLES_DIR);
        std::fs::create_dir_all(&tables)
            .with_context(|| format!("cannot create {}", tables.display()))?;
        gather_tables(&tables, &infos)?;
        // The whole lineage, not only the gathered instances: whether a model was trained in
        // this run is told by its ancestors (a `rope` stage's model may be an import or a
        // train instance).
        let mut known: BTreeSet<&str> = upstreams.iter().map(|u| u.instance.as_str()).collect();
        let lineage: Vec<&Upstream> = upstreams
            .iter()
            .copied()
            .chain(ctx.ancestors.iter().filter(|u| known.insert(&u.instance)))
            .collect();
        write_lineage(&tables, &lineage)?;
        // Tables the report stage makes itself from the gathered entries (no stage publishes
        // them), copied into the report so that `pipe report` finds them in results/.
        let mut own_tables = Vec::new();
        let configs = model_configs(&infos)?;
        if !configs.is_empty() {
            let name = format!("{}.parquet", ModelConfigRow::NAME);
            write_results(&tables.join(&name), &configs)?;
            own_tables.push(name);
        }
        let warnings = instance_warnings(&upstreams)?;
        if !warnings.is_empty() {
            let name = format!("{}.parquet", WarningRow::NAME);
            write_results(&tables.join(&name), &warnings)?;
            own_tables.push(name);
        }
        ctx.progress.advance(1);
        let report_dir = ctx.out_dir.join(REPORT_DIR);
        let summary = write_report(&tables, &report_dir, params)?;
        for name in &own_tables {
            std::fs::copy(tables.join(name), report_dir.join(name))
                .with_context(|| format!("cannot copy {name} into the report"))?;
        }
        ctx.progress
            .message(&format!("{} figures", summary.figures.len()));
        ctx.progress.advance(1);
        Ok(())
    }
}

/// Writes `runs.parquet` beside the gathered tables with the lineage of the gathered instances
/// and their ancestors (each one's cache key and the keys of its needs, as the runner hands
/// them over), so that the report follows keys, not names, inside a run too: the runner writes
/// its own `runs.parquet` only after every stage, this one included. Every such instance is a
/// committed entry, hence `cached`; times are not known here and stay empty.
fn write_lineage(tables: &Path, upstreams: &[&Upstream]) -> anyhow::Result<()> {
    let rows: Vec<(InstanceInfo, RunRow)> = upstreams
        .iter()
        .map(|u| {
            (
                instance_info(u),
                RunRow {
                    key: u.key.clone(),
                    cached: true,
                    status: RunStatus::Cached,
                    seconds: 0.0,
                    started_at: None,
                    finished_at: None,
                    error: None,
                    needs: u.inputs.clone(),
                },
            )
        })
        .collect();
    Ok(write_runs(tables, &rows)?)
}

/// A gathered upstream as the results module names it.
fn instance_info(u: &Upstream) -> InstanceInfo {
    InstanceInfo {
        stage: u.stage.clone(),
        instance: u.instance.clone(),
        matrix: u.matrix.clone().into_iter().collect(),
        dir: Some(u.dir.clone()),
    }
}

/// The `config.json` of every gathered instance that has one (the models), in gather order.
fn model_configs(infos: &[InstanceInfo]) -> anyhow::Result<Vec<ResultRow<ModelConfigRow>>> {
    let mut rows = Vec::new();
    for info in infos {
        let Some(dir) = &info.dir else { continue };
        let path = dir.join("config.json");
        if !path.is_file() {
            continue;
        }
        let config = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        rows.push(ResultRow {
            stage: info.stage.clone(),
            instance: info.instance.clone(),
            matrix: info.matrix.clone(),
            row: ModelConfigRow { config },
        });
    }
    Ok(rows)
}

/// The warnings of every gathered train instance (its [`TrainSummary`]'s), in gather order.
fn instance_warnings(upstreams: &[&Upstream]) -> anyhow::Result<Vec<ResultRow<WarningRow>>> {
    let mut rows = Vec::new();
    for u in upstreams
        .iter()
        .filter(|u| u.kind == <Train as StageKind>::KIND)
    {
        let path = u.dir.join(TRAIN_SUMMARY);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let summary: TrainSummary = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a train summary", path.display()))?;
        for message in summary.warnings {
            rows.push(ResultRow {
                stage: u.stage.clone(),
                instance: u.instance.clone(),
                matrix: u.matrix.clone().into_iter().collect(),
                row: WarningRow { message },
            });
        }
    }
    Ok(rows)
}

/// The directory of its output that a report stage publishes into the results directory.
pub const REPORT_DIR: &str = "report";
