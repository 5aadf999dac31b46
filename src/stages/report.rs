//! The `report` stage kind: the study's plots, tables and findings from the gathered metrics.
//!
//! It gathers the tables of every instance it needs (`ppl = "ppl[*]"`, ...) into the same layout
//! as `results/<pipeline>/`, then writes `report/report.md` and its PNG figures. The runner
//! publishes that `report/` directory into the results directory after the run, and
//! `pipe report FILE` regenerates it from the results directory alone.

use std::collections::BTreeSet;

use anyhow::Context;

use super::{Ctx, Needs, ParamError, StageKind};
use crate::pipeline::results::{InstanceInfo, gather_tables};
use crate::report::study::{ReportOptions, write_report};

/// Where the report stage writes its gathered tables, inside its output directory.
pub const TABLES_DIR: &str = "tables";

/// Writes the study report.
pub struct Report;

impl StageKind for Report {
    const KIND: &'static str = "report";
    const VERSION: u32 = 1;
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
        let infos: Vec<InstanceInfo> = ctx
            .needs
            .values()
            .flatten()
            .filter(|u| seen.insert(u.instance.clone()))
            .map(|u| InstanceInfo {
                stage: u.stage.clone(),
                instance: u.instance.clone(),
                matrix: u.matrix.clone().into_iter().collect(),
                dir: Some(u.dir.clone()),
            })
            .collect();
        let tables = ctx.out_dir.join(TABLES_DIR);
        std::fs::create_dir_all(&tables)
            .with_context(|| format!("cannot create {}", tables.display()))?;
        gather_tables(&tables, &infos)?;
        ctx.progress.advance(1);
        let summary = write_report(&tables, &ctx.out_dir.join(REPORT_DIR), params)?;
        ctx.progress
            .message(&format!("{} figures", summary.figures.len()));
        ctx.progress.advance(1);
        Ok(())
    }
}

/// The directory of its output that a report stage publishes into the results directory.
pub const REPORT_DIR: &str = "report";
