//! `pipe bench runner`: the cost of a no-op re-run of a fully cached pipeline.
//!
//! A researcher re-runs `pipe run` constantly; when nothing changed it must answer at once. The
//! benchmark writes a pipeline of `command` stages (a matrix stage and a stage fanning out over
//! it), builds it once, then times re-runs both in process (load, plan, results) and as a fresh
//! `pipe` process (what a user waits for).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::error::{Error, Result};
use crate::pipeline::cache::Cache;
use crate::pipeline::exec::{ExecOptions, Selection};
use crate::pipeline::executor::local::{LocalExecutor, gpu_count};

fn pipeline_text(instances: usize) -> String {
    let half = instances.div_ceil(2).max(1);
    let values: Vec<String> = (0..half).map(|i| format!("{{ i = {i} }}")).collect();
    format!(
        "[pipeline]\nname = \"bench\"\n\n[stages.a]\nkind = \"command\"\nargs = [\"true\"]\nmatrix.vars = [{}]\n\n[stages.b]\nkind = \"command\"\nneeds = {{ a = \"a\" }}\nargs = [\"true\"]\n",
        values.join(", ")
    )
}

fn stats(mut ms: Vec<f64>) -> (f64, f64) {
    ms.sort_by(f64::total_cmp);
    (ms[ms.len() / 2], ms[0])
}

/// Run the benchmark and print the figures.
pub fn runner(instances: usize, reps: usize) -> Result<()> {
    let tmp =
        tempfile::tempdir().map_err(|e| Error::io("cannot create", std::env::temp_dir(), e))?;
    let file = tmp.path().join("bench.toml");
    std::fs::write(&file, pipeline_text(instances))
        .map_err(|e| Error::io("cannot write", &file, e))?;
    let cache = Cache {
        root: tmp.path().join("cache"),
    };
    let quiet = ExecOptions {
        jobs: std::thread::available_parallelism().map_or(1, |n| n.get()),
        keep_going: false,
        quiet: true,
    };
    let cwd = std::env::current_dir().map_err(|e| Error::io("cannot read", ".", e))?;
    std::env::set_current_dir(tmp.path()).map_err(|e| Error::io("cannot enter", tmp.path(), e))?;
    let result = (|| {
        let t0 = Instant::now();
        let plan = crate::pipeline::plan(&file, &[], &cache, &Selection::default())?;
        let n = plan.graph.instances.len();
        let mut local = LocalExecutor::new(quiet.jobs, gpu_count());
        crate::pipeline::run(&plan, &cache, &quiet, &mut local)?;
        println!(
            "cold build of {n} instances: {:.0} ms",
            t0.elapsed().as_secs_f64() * 1e3
        );
        let mut in_process = Vec::new();
        for _ in 0..reps.max(1) {
            let t = Instant::now();
            let plan = crate::pipeline::plan(&file, &[], &cache, &Selection::default())?;
            let s = crate::pipeline::run(&plan, &cache, &quiet, &mut local)?;
            in_process.push(t.elapsed().as_secs_f64() * 1e3);
            if s.built != 0 {
                return Err(Error::Usage(format!(
                    "the re-run built {} instances",
                    s.built
                )));
            }
        }
        let (median, min) = stats(in_process);
        println!("no-op re-run, in process: median {median:.1} ms, min {min:.1} ms ({reps} reps)");
        let exe = std::env::current_exe().map_err(|e| Error::io("cannot find", "pipe", e))?;
        let mut process = Vec::new();
        for _ in 0..reps.max(1) {
            let t = Instant::now();
            let status = Command::new(&exe)
                .args(["run", "-q"])
                .arg(&file)
                .env("PIPE_CACHE", &cache.root)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map_err(|e| Error::io("cannot run", &exe, e))?;
            process.push(t.elapsed().as_secs_f64() * 1e3);
            if !status.success() {
                return Err(Error::Usage("`pipe run` failed in the benchmark".into()));
            }
        }
        let (median, min) = stats(process);
        println!(
            "no-op re-run, `pipe run` process: median {median:.1} ms, min {min:.1} ms ({reps} reps)"
        );
        Ok(())
    })();
    std::env::set_current_dir(&cwd).map_err(|e| Error::io("cannot enter", Path::new(&cwd), e))?;
    result
}

#[cfg(test)]
mod tests {
    #[test]
    fn generated_pipeline_has_the_requested_instances() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let f = dir.path().join("b.toml");
        std::fs::write(&f, super::pipeline_text(100)).unwrap_or_else(|e| panic!("{e}"));
        let (_, g) = crate::pipeline::load(&f, &[]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(g.instances.len(), 100);
    }
}
