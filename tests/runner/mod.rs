//! Integration tests of the runner: the built `pipe` binary on temporary pipelines of `command`
//! stages, each test with its own directory and `PIPE_CACHE`.

mod cache;
mod errors;
mod exec;
mod faults;
mod matrix;
mod results;
mod slurm;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A temporary project directory with its own cache.
pub struct Project {
    pub dir: tempfile::TempDir,
}

pub const HEAD: &str = "[pipeline]\nname = \"t\"\n";

impl Project {
    pub fn new() -> Project {
        Project {
            dir: tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}")),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn cache(&self) -> PathBuf {
        self.path().join("cache")
    }

    /// Write a file under the project directory.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path().join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap_or_else(|e| panic!("{e}"));
        }
        std::fs::write(&p, text).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        p
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_pipe"));
        c.args(args)
            .current_dir(self.path())
            .env("PIPE_CACHE", self.cache());
        c
    }

    pub fn pipe(&self, args: &[&str]) -> Output {
        self.command(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run pipe: {e}"))
    }

    /// Run and expect success; stdout and stderr together.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.pipe(args);
        let text = output_text(&out);
        assert!(out.status.success(), "pipe {args:?} failed:\n{text}");
        text
    }

    /// Run and expect failure; stderr.
    pub fn fail(&self, args: &[&str]) -> String {
        let out = self.pipe(args);
        let text = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(
            !out.status.success(),
            "pipe {args:?} succeeded:\n{}{text}",
            String::from_utf8_lossy(&out.stdout)
        );
        text
    }

    /// `pipe run FILE ARGS...`, returning the instances built (sorted).
    pub fn run(&self, file: &str, args: &[&str]) -> Vec<String> {
        let mut all = vec!["run", file];
        all.extend_from_slice(args);
        built(&self.ok(&all))
    }

    /// Build directories (`<key>.partial`) in the cache, sorted.
    pub fn partials(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(self.cache())
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|d| d.to_string_lossy().ends_with(".partial"))
            .collect();
        v.sort();
        v
    }

    /// Complete cache entries (32-hex directories).
    pub fn entries(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.cache())
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().to_string())
                    .filter(|n| n.len() == 32 && n.chars().all(|c| c.is_ascii_hexdigit()))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

/// A finished process's stdout and stderr together.
pub fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Instance names from the `built NAME in ...` log lines.
pub fn built(log: &str) -> Vec<String> {
    let mut v: Vec<String> = log
        .lines()
        .filter_map(|l| l.split("] built ").nth(1))
        .filter_map(|rest| rest.rsplit_once(" in ").map(|(n, _)| n.to_string()))
        .collect();
    v.sort();
    v
}

/// A table as text rows, without the columns that hold wall-clock measurements: what two runs
/// of the same pipeline must agree on, value for value (floats print in their shortest
/// round-trip form, so equal text is equal bits).
fn comparable(path: &Path) -> Vec<String> {
    let (schema, batches) =
        ropelens::results::read_parquet(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let keep: Vec<usize> = schema
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| {
            let n = f.name();
            !(n.contains("seconds")
                || n.ends_with("_s")
                || n.contains("per_s")
                || n.ends_with("_at"))
        })
        .map(|(i, _)| i)
        .collect();
    let mut rows = Vec::new();
    for b in &batches {
        let b = b.project(&keep).unwrap_or_else(|e| panic!("{e}"));
        let text = arrow::util::pretty::pretty_format_batches(&[b])
            .unwrap_or_else(|e| panic!("{e}"))
            .to_string();
        rows.extend(text.lines().map(str::to_string));
    }
    rows
}
