//! The stage interface: what a stage kind is, what the runner hands it, and the registry.
//!
//! A stage kind is a Rust type implementing [`StageKind`]: a typed, defaulted parameter struct,
//! a name and a version, the needs it accepts, a `check` of its parameter values (run when the
//! pipeline file is parsed, so a bad value fails before anything builds), the external files its
//! parameters point to, the resources it asks for, the folders of its output the runner
//! publishes, and one `run` function writing into an output directory. The runner knows nothing
//! else about it. [`ErasedKind`] is the object-safe form the runner stores in
//! [`KINDS`]; adding a kind is implementing the trait and adding one line there.

pub mod attention;
pub mod command;
pub mod data_prep;
pub mod eval_io;
pub mod eval_needle;
pub mod eval_ppl;
pub mod model;
pub mod report;
pub mod rope;
pub mod train;

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use arrow::record_batch::RecordBatch;
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::progress::Progress;

/// Every stage kind the runner knows. Add a kind here, one line each.
pub static KINDS: &[&dyn ErasedKind] = &[
    &Erased::<command::Command>::NEW,
    &Erased::<data_prep::DataPrep>::NEW,
    &Erased::<model::Model>::NEW,
    &Erased::<report::Report>::NEW,
    &Erased::<train::Train>::NEW,
    &Erased::<eval_ppl::EvalPpl>::NEW,
    &Erased::<eval_needle::EvalNeedle>::NEW,
    &Erased::<attention::Attention>::NEW,
    &Erased::<rope::Rope>::NEW,
];

/// Look a kind up by its `kind = "..."` name.
pub fn kind(name: &str) -> Option<&'static dyn ErasedKind> {
    KINDS.iter().copied().find(|k| k.kind() == name)
}

/// One need a kind accepts (`needs = { data = "data" }`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NeedDecl {
    /// The key in `needs`, e.g. `data`, `model`, `init`.
    pub name: &'static str,
    /// Whether the pipeline must give it.
    pub required: bool,
    /// Whether the kind accepts several upstream instances (`ppl[*]`); otherwise exactly one.
    pub gather: bool,
}

impl NeedDecl {
    /// A need the pipeline must give, one upstream instance.
    pub const fn required(name: &'static str) -> NeedDecl {
        NeedDecl {
            name,
            required: true,
            gather: false,
        }
    }

    /// A need the pipeline may give, one upstream instance.
    pub const fn optional(name: &'static str) -> NeedDecl {
        NeedDecl {
            name,
            required: false,
            gather: false,
        }
    }
}

/// Which needs a kind accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    /// Exactly these names (unknown names are an error in the pipeline file).
    Fixed(&'static [NeedDecl]),
    /// Any names, single or gathered (the `command` kind).
    Any,
}

/// What an instance asks for while it runs: the kind's defaults, overridden per stage by
/// `resources = { ... }`. Part of the plan, never of the cache key (the same work asked for with
/// more memory is the same result). The local executor honours `cpus` (as `-j` slots) and `gpus`
/// (as the machine's GPUs); a cluster executor passes every field to the scheduler.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// CPU cores (`-j` slots locally, `--cpus-per-task` on Slurm).
    pub cpus: u32,
    /// GPUs (locally at most the number of GPUs present; `--gres=gpu:N` on Slurm).
    pub gpus: u32,
    /// Memory, Slurm syntax (`16G`); not enforced locally.
    pub mem: Option<String>,
    /// Wall-time limit, Slurm syntax (`2:00:00`, `1-00:00:00`); not enforced locally.
    pub time: Option<String>,
    /// Slurm partition.
    pub partition: Option<String>,
    /// Slurm account.
    pub account: Option<String>,
    /// Slurm node constraint (`--constraint`).
    pub constraint: Option<String>,
    /// Further `sbatch` arguments, verbatim (`["--qos=high"]`).
    pub extra: Vec<String>,
}

impl Default for Resources {
    fn default() -> Self {
        Resources {
            cpus: 1,
            gpus: 0,
            mem: None,
            time: None,
            partition: None,
            account: None,
            constraint: None,
            extra: Vec::new(),
        }
    }
}

impl Resources {
    /// One CPU, plus one GPU when the pipeline's device is CUDA.
    pub fn for_device(device: &str) -> Resources {
        Resources {
            gpus: u32::from(device.trim().starts_with("cuda")),
            ..Resources::default()
        }
    }
}

/// A stage's `resources = { ... }`: the fields given override the kind's defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResourceRequest {
    /// CPU cores (`-j` slots locally, `--cpus-per-task` on Slurm); at least 1.
    pub cpus: Option<u32>,
    /// GPUs (locally at most the number present; `--gres=gpu:N` on Slurm).
    pub gpus: Option<u32>,
    /// Memory, Slurm syntax (`16G`).
    pub mem: Option<String>,
    /// Wall-time limit, Slurm syntax (`2:00:00`).
    pub time: Option<String>,
    /// Slurm partition.
    pub partition: Option<String>,
    /// Slurm account.
    pub account: Option<String>,
    /// Slurm node constraint.
    pub constraint: Option<String>,
    /// Further `sbatch` arguments, verbatim.
    pub extra: Option<Vec<String>>,
}

impl ResourceRequest {
    /// `base` with the fields given here replaced.
    pub fn apply(&self, base: Resources) -> Resources {
        Resources {
            cpus: self.cpus.unwrap_or(base.cpus),
            gpus: self.gpus.unwrap_or(base.gpus),
            mem: self.mem.clone().or(base.mem),
            time: self.time.clone().or(base.time),
            partition: self.partition.clone().or(base.partition),
            account: self.account.clone().or(base.account),
            constraint: self.constraint.clone().or(base.constraint),
            extra: self.extra.clone().unwrap_or(base.extra),
        }
    }

    /// Values Slurm or the local executor could never honour.
    pub fn check(&self) -> Result<(), ParamError> {
        if self.cpus == Some(0) {
            return Err(ParamError::new("cpus", "must be at least 1"));
        }
        for (key, v) in [
            ("mem", &self.mem),
            ("time", &self.time),
            ("partition", &self.partition),
            ("account", &self.account),
            ("constraint", &self.constraint),
        ] {
            if let Some(v) = v
                && (v.is_empty() || v.chars().any(|c| c.is_whitespace() || c.is_control()))
            {
                return Err(ParamError::new(
                    key,
                    format!("`{v}` is empty or holds white space"),
                ));
            }
        }
        Ok(())
    }
}

/// A parameter value a kind refuses (see [`StageKind::check`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamError {
    /// The dotted parameter name inside the stage (`train.steps`, `depths`); empty when the
    /// error is about the parameters as a whole.
    pub key: String,
    /// What is wrong, e.g. `must be at least 1`.
    pub message: String,
}

impl ParamError {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> ParamError {
        ParamError {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for ParamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "`{}`: {}", self.key, self.message)
        }
    }
}

impl std::error::Error for ParamError {}

/// A typed stage kind. Implement this, then add `&Erased::<YourKind>::NEW` to [`KINDS`].
pub trait StageKind: Send + Sync + 'static {
    /// The name used in `kind = "..."`.
    const KIND: &'static str;
    /// Bump when the kind's output for the same inputs would change: it is part of every key.
    const VERSION: u32;
    /// Parameters: every key of `[stages.X]` other than `kind`, `needs`, `matrix` and `seed`.
    /// Use `#[serde(deny_unknown_fields)]` and defaults; doc comments become the JSON schema.
    type Params: Serialize + DeserializeOwned + JsonSchema + Send + Sync;

    /// The needs this kind accepts.
    fn needs() -> Needs;

    /// External files or directories the parameters point to, relative to the pipeline file's
    /// directory `pipeline_dir` where they are under it (the key records these names, so a
    /// project that moves keeps its cache); `pipeline_dir` is there for kinds that must look at
    /// the disk to list them (globs). Their content is hashed into the key, so editing them
    /// rebuilds the instance and touching them does not.
    fn inputs(_params: &Self::Params, _pipeline_dir: &Path) -> Vec<PathBuf> {
        Vec::new()
    }

    /// Check parameter values that serde cannot (ranges, combinations). Called when the
    /// pipeline file is parsed, for every instance, so `pipe validate` and `--dry-run` catch a
    /// bad value with its file, line and key before anything runs. Keep `run` free of such
    /// checks: by the time it runs, upstream stages may have taken hours.
    fn check(_params: &Self::Params) -> Result<(), ParamError> {
        Ok(())
    }

    /// Check parameter values against the needs the stage gives (`given`: their names), e.g. a
    /// parameter that only means something with a need. Called beside [`StageKind::check`].
    fn check_needs(_params: &Self::Params, _given: &[&str]) -> Result<(), ParamError> {
        Ok(())
    }

    /// Resources asked for by default; a stage's `resources = { ... }` overrides them field by
    /// field. E.g. one GPU when `device` starts with `cuda` ([`Resources::for_device`]).
    fn resources(_params: &Self::Params, _device: &str) -> Resources {
        Resources::default()
    }

    /// Folders of the build directory that are not part of the result (checkpoints): kept
    /// while the instance is built, so that a kill at any moment can resume, and removed only
    /// once the entry is committed.
    fn scratch(_params: &Self::Params) -> Vec<&'static str> {
        Vec::new()
    }

    /// Folders of the output that the runner copies into `results/<pipeline>/` after a run
    /// (straight in when one instance has them, into `<instance>/` when several do).
    fn publishes() -> &'static [&'static str] {
        &[]
    }

    /// Whether a retried run keeps what a killed or failed run left in the build directory
    /// (checkpoints). Otherwise the runner empties it before each attempt.
    fn resumable(_params: &Self::Params) -> bool {
        false
    }

    /// Whether the device is part of the key (false for kinds whose output cannot depend on it).
    fn device_sensitive(_params: &Self::Params) -> bool {
        true
    }

    /// Build the instance's output in `ctx.out_dir`. Tables go to `metrics/<table>.parquet`
    /// (see [`Ctx::write_table`]). An error fails this instance only.
    fn run(params: &Self::Params, ctx: &Ctx<'_>) -> anyhow::Result<()>;
}

/// One upstream instance handed to a need.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Upstream {
    /// The upstream stage's name, e.g. `extend`.
    pub stage: String,
    /// The upstream instance's name, e.g. `extend@yarn`.
    pub instance: String,
    /// The upstream's kind.
    pub kind: String,
    /// Its finished output directory (read-only by convention).
    pub dir: PathBuf,
    /// Its matrix values, flattened (`rope`, `rope_type`, `factor`, `seed`, ...).
    pub matrix: BTreeMap<String, serde_json::Value>,
    /// Its fully defaulted parameters.
    pub params: serde_json::Value,
    /// Its cache key.
    pub key: String,
    /// Its own needs' cache keys, by need name (its lineage, as `runs.parquet` records it).
    pub inputs: BTreeMap<String, Vec<String>>,
}

/// File name, inside a build directory, of its work lock (see [`WorkLock`]); removed before the
/// entry is committed.
pub const WORK_LOCK: &str = ".pipe-work.lock";

/// A build directory's work lock. A stage that starts processes holds it, and they inherit it
/// (an `flock` lives while any process holds its descriptor): a process that outlives a killed
/// `pipe` keeps it held, and the scheduler does not hand the directory to a new build while it
/// is ([`WorkLock::held`]), so two copies of a program never write one directory.
pub struct WorkLock {
    file: std::fs::File,
}

impl WorkLock {
    /// Take the work lock of `out_dir`; an error when a process still holds it.
    pub fn hold(out_dir: &Path) -> anyhow::Result<WorkLock> {
        let path = out_dir.join(WORK_LOCK);
        let file = std::fs::File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", path.display()))?;
        match file.try_lock() {
            Ok(()) => Ok(WorkLock { file }),
            Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
                "{}: a process an earlier run started still writes this build directory; wait for it to end",
                out_dir.display()
            ),
            Err(std::fs::TryLockError::Error(e)) => {
                anyhow::bail!("cannot lock {}: {e}", path.display())
            }
        }
    }

    /// The descriptor to hand down to child processes.
    pub fn fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.file.as_raw_fd()
    }

    /// Start `cmd` (whose `pre_exec` hands down this lock). A child between its fork and its
    /// exec holds a copy of every descriptor of `pipe`, other build directories' work locks
    /// included; spawning under [`SPAWNING`] (shared) and looking under it (exclusive) keeps
    /// [`WorkLock::held`] from mistaking such a copy for a process the stage left running.
    /// `spawn` returns only once the child has exec'd (or failed to).
    pub fn spawn(cmd: &mut std::process::Command) -> std::io::Result<std::process::Child> {
        let _spawning = SPAWNING.read().unwrap_or_else(|e| e.into_inner());
        cmd.spawn()
    }

    /// Whether some process holds the work lock of `out_dir`.
    pub fn held(out_dir: &Path) -> bool {
        let _no_fork_in_flight = SPAWNING.write().unwrap_or_else(|e| e.into_inner());
        std::fs::File::options()
            .write(true)
            .open(out_dir.join(WORK_LOCK))
            .is_ok_and(|f| f.try_lock().is_err())
    }
}

/// Held shared by [`WorkLock::spawn`] and exclusively by [`WorkLock::held`].
static SPAWNING: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// What a running instance gets from the runner.
pub struct Ctx<'a> {
    /// The stage's name (`extend`).
    pub stage: &'a str,
    /// The instance's name (`extend@yarn`).
    pub instance: &'a str,
    /// Where to write the output. For a retried run of a resumable kind it is the same directory
    /// the killed run wrote into (`<cache>/<key>.partial/`); it is renamed into the cache only
    /// when `run` returns `Ok`.
    pub out_dir: &'a Path,
    /// Needs by name; a single need has one element, a gathered need (`x[*]`) several.
    pub needs: &'a BTreeMap<String, Vec<Upstream>>,
    /// Every instance this one depends on, transitively (the needs included).
    pub ancestors: &'a [Upstream],
    /// The instance's seed (pipeline seed, or the stage's `seed`, or a `matrix.seed` value).
    pub seed: u64,
    /// The pipeline's device: `cpu`, `cuda` or `cuda:N`.
    pub device: &'a str,
    /// The pipeline file's directory, for resolving relative paths in parameters.
    pub pipeline_dir: &'a Path,
    /// Step progress, drawn by the runner.
    pub progress: &'a dyn Progress,
}

impl Ctx<'_> {
    /// The single upstream instance of need `name`.
    pub fn need(&self, name: &str) -> anyhow::Result<&Upstream> {
        match self.needs.get(name).map(Vec::as_slice) {
            Some([one]) => Ok(one),
            Some(many) if !many.is_empty() => anyhow::bail!(
                "need `{name}` has {} instances where one was expected",
                many.len()
            ),
            _ => anyhow::bail!("instance `{}` has no need `{name}`", self.instance),
        }
    }

    /// Every upstream instance of need `name` (empty when the need is absent).
    pub fn need_all(&self, name: &str) -> &[Upstream] {
        self.needs.get(name).map(Vec::as_slice).unwrap_or(&[])
    }

    /// A path from the parameters, resolved against the pipeline file's directory.
    pub fn resolve(&self, path: impl AsRef<Path>) -> PathBuf {
        self.pipeline_dir.join(path)
    }

    /// `out_dir/metrics`, where tables go.
    pub fn metrics_dir(&self) -> PathBuf {
        self.out_dir.join(crate::results::METRICS_DIR)
    }

    /// Write `batch` as table `table` (`metrics/<table>.parquet`, zstd, atomically).
    pub fn write_table(&self, table: &str, batch: &RecordBatch) -> crate::Result<()> {
        crate::results::write_table(self.out_dir, table, batch)
    }
}

/// The object-safe form of a [`StageKind`], with parameters as canonical JSON.
pub trait ErasedKind: Send + Sync {
    fn kind(&self) -> &'static str;
    fn version(&self) -> u32;
    fn needs(&self) -> Needs;
    /// Deserialize the stage's parameter table (errors keep the TOML spans) and return the
    /// fully defaulted parameters as JSON.
    fn parse_params(
        &self,
        value: toml::Spanned<toml::de::DeValue<'_>>,
    ) -> Result<serde_json::Value, toml::de::Error>;
    /// The JSON schema of the parameters (a `$ref` into the generator's definitions).
    fn params_schema(&self, generator: &mut schemars::SchemaGenerator) -> schemars::Schema;
    /// Top-level parameter names, for checking `matrix.<key>`; `None` when unknown.
    fn param_names(&self) -> Option<Vec<String>>;
    /// [`StageKind::check`], then [`StageKind::check_needs`] with the names of the needs given.
    fn check(&self, params: &serde_json::Value, given: &[&str]) -> Result<(), ParamError>;
    fn publishes(&self) -> &'static [&'static str];
    fn scratch(&self, params: &serde_json::Value) -> anyhow::Result<Vec<&'static str>>;
    fn inputs(
        &self,
        params: &serde_json::Value,
        pipeline_dir: &Path,
    ) -> anyhow::Result<Vec<PathBuf>>;
    fn resources(&self, params: &serde_json::Value, device: &str) -> anyhow::Result<Resources>;
    fn resumable(&self, params: &serde_json::Value) -> anyhow::Result<bool>;
    fn device_sensitive(&self, params: &serde_json::Value) -> anyhow::Result<bool>;
    fn run(&self, params: &serde_json::Value, ctx: &Ctx<'_>) -> anyhow::Result<()>;
}

/// Adapter from a typed [`StageKind`] to [`ErasedKind`].
pub struct Erased<K>(PhantomData<fn() -> K>);

impl<K> Erased<K> {
    pub const NEW: Self = Erased(PhantomData);
}

fn typed<K: StageKind>(params: &serde_json::Value) -> anyhow::Result<K::Params> {
    serde_json::from_value(params.clone())
        .map_err(|e| anyhow::anyhow!("parameters of kind `{}`: {e}", K::KIND))
}

impl<K: StageKind> ErasedKind for Erased<K> {
    fn kind(&self) -> &'static str {
        K::KIND
    }
    fn version(&self) -> u32 {
        K::VERSION
    }
    fn needs(&self) -> Needs {
        K::needs()
    }
    fn parse_params(
        &self,
        value: toml::Spanned<toml::de::DeValue<'_>>,
    ) -> Result<serde_json::Value, toml::de::Error> {
        use serde::Deserialize;
        use serde::de::IntoDeserializer;
        let params = K::Params::deserialize(value.into_deserializer())?;
        serde_json::to_value(&params).map_err(|e| {
            serde::de::Error::custom(format!("parameters do not serialize to JSON: {e}"))
        })
    }
    fn params_schema(&self, generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        generator.subschema_for::<K::Params>()
    }
    fn param_names(&self) -> Option<Vec<String>> {
        let schema = schemars::SchemaGenerator::default().into_root_schema_for::<K::Params>();
        let props = schema.as_object()?.get("properties")?.as_object()?;
        Some(props.keys().cloned().collect())
    }
    fn check(&self, params: &serde_json::Value, given: &[&str]) -> Result<(), ParamError> {
        let params = typed::<K>(params).map_err(|e| ParamError::new("", format!("{e:#}")))?;
        K::check(&params)?;
        K::check_needs(&params, given)
    }
    fn publishes(&self) -> &'static [&'static str] {
        K::publishes()
    }
    fn scratch(&self, params: &serde_json::Value) -> anyhow::Result<Vec<&'static str>> {
        Ok(K::scratch(&typed::<K>(params)?))
    }
    fn inputs(
        &self,
        params: &serde_json::Value,
        pipeline_dir: &Path,
    ) -> anyhow::Result<Vec<PathBuf>> {
        Ok(K::inputs(&typed::<K>(params)?, pipeline_dir))
    }
    fn resources(&self, params: &serde_json::Value, device: &str) -> anyhow::Result<Resources> {
        Ok(K::resources(&typed::<K>(params)?, device))
    }
    fn resumable(&self, params: &serde_json::Value) -> anyhow::Result<bool> {
        Ok(K::resumable(&typed::<K>(params)?))
    }
    fn device_sensitive(&self, params: &serde_json::Value) -> anyhow::Result<bool> {
        Ok(K::device_sensitive(&typed::<K>(params)?))
    }
    fn run(&self, params: &serde_json::Value, ctx: &Ctx<'_>) -> anyhow::Result<()> {
        K::run(&typed::<K>(params)?, ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_unique_and_use_no_reserved_parameter_names() {
        let mut names: Vec<&str> = KINDS.iter().map(|k| k.kind()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), KINDS.len(), "two kinds share a name");
        for k in KINDS {
            let params = k.param_names().unwrap_or_default();
            for reserved in crate::pipeline::spec::COMMON_KEYS {
                assert!(
                    !params.iter().any(|p| p == reserved),
                    "kind `{}` has a parameter named `{reserved}`, which is a stage key",
                    k.kind()
                );
            }
        }
        assert_eq!(kind("command").map(|k| k.version()), Some(1));
        assert!(kind("nope").is_none());
    }

    #[test]
    fn erased_params_are_defaulted_json() {
        let text = "args = [\"true\"]";
        let table = toml::de::DeTable::parse(text).unwrap_or_else(|e| panic!("{e}"));
        let span = table.span();
        let value = toml::Spanned::new(span, toml::de::DeValue::Table(table.into_inner()));
        let params = kind("command")
            .map(|k| k.parse_params(value))
            .unwrap_or_else(|| panic!("no command kind"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            params,
            serde_json::json!({"args": ["true"], "env": {}, "inputs": [], "gpu": 0, "resumable": false, "vars": {}})
        );
    }
}
