//! Pipeline TOML to checked stage specs, with every error mapped to file, line, column and key.
//!
//! This is the pure half of loading a pipeline (ripgrep's `LowArgs`): it reads the file, applies
//! `--set` overrides, deserializes each stage's parameters into its kind's typed struct, expands
//! `matrix` entries into named variants and checks the stage-level graph (unknown needs, cycles).
//! The toml crate's spanned document (`DeTable`) keeps a byte span on every key and value, so a
//! serde error anywhere, even inside a kind's parameter struct, points at a line.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::IntoDeserializer;
use toml::Spanned;
use toml::de::{DeArray, DeString, DeTable, DeValue};

use crate::error::{Error, Location, Result, SpecError};
use crate::stages::{self, ErasedKind, Needs, ParamError, ResourceRequest};

/// `[pipeline]`: the header of a pipeline file.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Header {
    /// Name of the pipeline; results go to `results/<name>/`.
    pub name: String,
    /// Seed of every instance that sets none of its own (`seed` or `matrix.seed`).
    #[serde(default)]
    pub seed: u64,
    /// `cpu`, `cuda` or `cuda:N`.
    #[serde(default = "default_device")]
    pub device: String,
    /// Results directory (relative to the pipeline file); default `results/<name>` under the
    /// current directory.
    #[serde(default)]
    pub results: Option<PathBuf>,
    /// Where instances run: `local` (threads of `pipe run`) or `slurm` (one `sbatch` job per
    /// instance; see docs/cluster.md). `pipe run --executor` overrides it.
    #[serde(default)]
    pub executor: crate::pipeline::executor::ExecutorName,
}

fn default_device() -> String {
    "cpu".to_string()
}

/// The longest pipeline or stage name, in bytes: names become file names (255 bytes at most on
/// common filesystems), an instance name adds its matrix labels.
const MAX_NAME: usize = 100;

/// Stage keys the runner reads itself; every other key is a parameter of the kind.
pub const COMMON_KEYS: [&str; 5] = ["kind", "needs", "matrix", "seed", "resources"];

/// How a need selects upstream instances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Select {
    /// `"stage"`: one upstream instance; fans out over a matrix stage.
    Each,
    /// `"stage[*]"`: every (consistent) instance, gathered into one need.
    Gather,
    /// `"stage@instance-suffix"`: exactly that instance.
    Instance(String),
}

/// One entry of `needs`.
#[derive(Debug, Clone)]
pub struct NeedRef {
    pub name: String,
    pub stage: String,
    pub select: Select,
    pub location: Location,
}

/// A matrix coordinate: which stage's axis took which value.
#[derive(Debug, Clone, PartialEq)]
pub struct Coord {
    pub origin: String,
    pub axis: String,
    pub label: String,
    /// Flattened values for the results tables (axis name or entry fields -> value).
    pub values: Vec<(String, serde_json::Value)>,
}

/// One matrix combination of a stage, before fan-out over its needs.
#[derive(Debug, Clone)]
pub struct Variant {
    pub coords: Vec<Coord>,
    /// Fully defaulted parameters.
    pub params: serde_json::Value,
    /// The seed from `matrix.seed` or the stage's `seed`, if either is given.
    pub seed: Option<u64>,
}

/// A checked stage.
#[derive(Clone)]
pub struct Stage {
    pub name: String,
    pub kind: &'static dyn ErasedKind,
    pub needs: Vec<NeedRef>,
    pub variants: Vec<Variant>,
    /// `resources = { ... }`: overrides of the kind's default resources.
    pub resources: ResourceRequest,
    pub location: Location,
}

/// A checked pipeline file; stages are in a topological order.
#[derive(Clone)]
pub struct Pipeline {
    pub file: PathBuf,
    pub dir: PathBuf,
    /// blake3 of the file's bytes.
    pub file_hash: String,
    pub header: Header,
    pub results_dir: PathBuf,
    pub stages: Vec<Stage>,
}

impl Pipeline {
    pub fn stage(&self, name: &str) -> Option<&Stage> {
        self.stages.iter().find(|s| s.name == name)
    }
}

/// The text errors point into: the file, then each `--set` argument after it.
struct Source {
    file: PathBuf,
    text: String,
    file_len: usize,
}

impl Source {
    fn location(&self, span: Range<usize>, key: &str) -> Location {
        let start = span.start.min(self.text.len());
        let (file, segment_start) = if start < self.file_len {
            (self.file.clone(), 0)
        } else {
            let seg = self.text[..start].rfind('\n').map_or(0, |i| i + 1);
            (PathBuf::from("--set"), seg)
        };
        let before = &self.text[segment_start..start];
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        // In the file, the line; in the `--set` arguments, which one (`--set:2:` is the second):
        // each is appended after a newline.
        let line = if segment_start == 0 {
            before.matches('\n').count() + 1
        } else {
            self.text[self.file_len..start].matches('\n').count()
        };
        let column = before[line_start..].chars().count() + 1;
        let abs_line_start = segment_start + line_start;
        let line_end = self.text[abs_line_start..]
            .find('\n')
            .map_or(self.text.len(), |i| abs_line_start + i);
        Location {
            file,
            line,
            column,
            key: key.to_string(),
            source_line: self.text[abs_line_start..line_end].to_string(),
        }
    }

    fn error(&self, span: Range<usize>, key: &str, message: impl Into<String>) -> SpecError {
        SpecError {
            location: self.location(span, key),
            message: message.into(),
        }
    }
}

type Value<'i> = Spanned<DeValue<'i>>;

/// The dotted key whose key or value span holds `pos` (deepest match), under `prefix`.
fn key_at(table: &DeTable<'_>, pos: usize, prefix: &str) -> Option<String> {
    for (k, v) in table.iter() {
        let path = if prefix.is_empty() {
            k.get_ref().to_string()
        } else {
            format!("{prefix}.{}", k.get_ref())
        };
        let in_key = k.span().contains(&pos);
        let in_value = v.span().contains(&pos);
        if let Some(deeper) = value_key_at(v.get_ref(), pos, &path) {
            return Some(deeper);
        }
        if in_key || in_value {
            return Some(path);
        }
    }
    None
}

fn value_key_at(value: &DeValue<'_>, pos: usize, path: &str) -> Option<String> {
    match value {
        DeValue::Table(t) => key_at(t, pos, path),
        DeValue::Array(a) => a.iter().enumerate().find_map(|(i, v)| {
            let p = format!("{path}[{i}]");
            value_key_at(v.get_ref(), pos, &p).or_else(|| v.span().contains(&pos).then_some(p))
        }),
        _ => None,
    }
}

/// Shift every span in `v` by `by` bytes (a `--set` value parsed on its own).
fn shift<'i>(v: Value<'i>, by: usize) -> Value<'i> {
    let span = v.span();
    let span = span.start + by..span.end + by;
    let inner = match v.into_inner() {
        DeValue::Table(t) => {
            let mut out = DeTable::new();
            for (k, v) in t {
                let ks = k.span();
                out.insert(
                    Spanned::new(ks.start + by..ks.end + by, k.into_inner()),
                    shift(v, by),
                );
            }
            DeValue::Table(out)
        }
        DeValue::Array(a) => {
            let mut out = DeArray::new();
            for v in a.iter().cloned() {
                out.push(shift(v, by));
            }
            DeValue::Array(out)
        }
        other => other,
    };
    Spanned::new(span, inner)
}

/// Load and check a pipeline file with `--set KEY=VALUE` overrides.
pub fn load(path: &Path, sets: &[String]) -> Result<Pipeline> {
    let bytes = std::fs::read(path).map_err(|e| Error::io("cannot read", path, e))?;
    let file_text = String::from_utf8(bytes.clone())
        .map_err(|_| Error::Usage(format!("{}: the file is not valid UTF-8", path.display())))?;
    let file_hash = blake3::hash(&bytes).to_hex().to_string();
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut text = file_text.clone();
    let file_len = text.len();
    let mut set_offsets = Vec::new();
    for set in sets {
        text.push('\n');
        set_offsets.push(text.len());
        text.push_str(set);
    }
    let source = Source {
        file: path.to_path_buf(),
        text,
        file_len,
    };
    let mut pipeline = parse(&source, &set_offsets, sets)?;
    pipeline.file_hash = file_hash;
    pipeline.results_dir = match &pipeline.header.results {
        Some(r) => dir.join(r),
        None => Path::new("results").join(&pipeline.header.name),
    };
    pipeline.dir = dir;
    Ok(pipeline)
}

/// Parse the pipeline text (not touching the file system).
fn parse(source: &Source, set_offsets: &[usize], sets: &[String]) -> Result<Pipeline> {
    let doc = DeTable::parse(&source.text[..source.file_len]).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        source.error(span, "", format!("TOML syntax: {}", e.message()))
    })?;
    let doc_span = doc.span();
    let mut root = doc.into_inner();
    for (set, &offset) in sets.iter().zip(set_offsets) {
        apply_set(source, &mut root, set, offset)?;
    }
    let mut errors = Vec::new();
    required_keys(source, &root, "", &mut errors);
    for (k, _) in root.iter() {
        if !["pipeline", "stages"].contains(&k.get_ref().as_ref()) {
            errors.push(source.error(
                k.span(),
                k.get_ref(),
                format!(
                    "unknown key `{}`, expected `pipeline` or `stages`",
                    k.get_ref()
                ),
            ));
        }
    }
    let header = match root.get("pipeline") {
        None => {
            errors.push(source.error(
                doc_span.start..doc_span.start,
                "pipeline",
                "missing `[pipeline]` table (with at least `name`)",
            ));
            None
        }
        Some(v) => match Header::deserialize(v.clone().into_deserializer()) {
            Ok(h) => check_header(source, v, h).map_err(|e| errors.push(e)).ok(),
            Err(e) => {
                errors.push(serde_error(source, &root, &e, v.span(), "pipeline"));
                None
            }
        },
    };
    let mut stages = Vec::new();
    match root.get("stages").map(|v| (v, v.get_ref())) {
        None => {}
        Some((_, DeValue::Table(table))) => {
            for (k, v) in table.iter() {
                match parse_stage(source, &root, k, v) {
                    Ok(s) => stages.push(s),
                    Err(mut e) => errors.append(&mut e),
                }
            }
        }
        Some((v, _)) => {
            errors.push(source.error(v.span(), "stages", "`stages` must be a table of stages"))
        }
    }
    if errors.is_empty() {
        stages = check_graph(source, stages).unwrap_or_else(|e| {
            errors = e;
            Vec::new()
        });
    }
    match (errors.len(), header) {
        (0, Some(header)) => Ok(Pipeline {
            file: source.file.clone(),
            dir: PathBuf::new(),
            file_hash: String::new(),
            header,
            results_dir: PathBuf::new(),
            stages,
        }),
        (1, _) => Err(errors
            .pop()
            .map(Error::from)
            .unwrap_or_else(|| Error::Usage(String::new()))),
        _ => Err(Error::Specs(errors)),
    }
}

fn check_header(source: &Source, v: &Value<'_>, h: Header) -> Result<Header, SpecError> {
    let span_of = |key: &str| {
        v.get_ref()
            .as_table()
            .and_then(|t| t.get(key))
            .map_or(v.span(), |x| x.span())
    };
    let valid_device = h.device == "cpu"
        || h.device == "cuda"
        || h.device
            .strip_prefix("cuda:")
            .is_some_and(|n| n.parse::<u32>().is_ok());
    if !valid_device {
        return Err(source.error(
            span_of("device"),
            "pipeline.device",
            format!(
                "unknown device `{}`, expected `cpu`, `cuda` or `cuda:N`",
                h.device
            ),
        ));
    }
    if h.name.is_empty()
        || h.name.contains(['/', '\\'])
        || h.name.starts_with('.')
        || h.name.chars().any(char::is_control)
        || h.name.len() > MAX_NAME
    {
        return Err(source.error(
            span_of("name"),
            "pipeline.name",
            format!(
                "`{}` cannot be a directory name under results/ (no `/`, `\\`, leading `.` or control characters, at most {MAX_NAME} bytes)",
                h.name.escape_debug()
            ),
        ));
    }
    if let Some(r) = &h.results
        && (r.as_os_str().is_empty() || r.to_string_lossy().chars().any(char::is_control))
    {
        return Err(source.error(
            span_of("results"),
            "pipeline.results",
            format!(
                "`{}` cannot be a results directory (empty, or holding control characters)",
                r.display().to_string().escape_debug()
            ),
        ));
    }
    Ok(h)
}

/// Map a serde error from deserializing part of the document to its location and key.
fn serde_error(
    source: &Source,
    root: &DeTable<'_>,
    e: &toml::de::Error,
    fallback: Range<usize>,
    fallback_key: &str,
) -> SpecError {
    let span = e.span().unwrap_or(fallback);
    let key = key_at(root, span.start, "").unwrap_or_else(|| fallback_key.to_string());
    // serde says "missing field `path`" at the table that lacks it: name the full key, and how
    // to give it without editing the file (a pipeline may leave a machine-specific path out).
    let missing = e
        .message()
        .strip_prefix("missing field `")
        .and_then(|rest| rest.strip_suffix('`'));
    match missing {
        Some(field) => required_error(source, span, &format!("{key}.{field}")),
        None => source.error(span, &key, e.message().to_string()),
    }
}

/// The value a shipped pipeline file gives a key the user must set (a machine-specific path):
/// a string, so that the file is valid against the schema and editors check the rest, while
/// running it without `--set` is still the error naming the key, before anything runs.
pub const REQUIRED: &str = "<required>";

/// "required but not given" for the dotted key `full`, with its `--set` form.
fn required_error(source: &Source, span: Range<usize>, full: &str) -> SpecError {
    let field = full.rsplit('.').next().unwrap_or(full);
    let hint = if full.contains('[') {
        String::new()
    } else {
        format!(" or with `--set {full}=VALUE`")
    };
    source.error(
        span,
        full,
        format!("required but not given: set `{field}` in the file{hint}"),
    )
}

/// An error for every key under `table` still holding [`REQUIRED`] (after `--set`).
fn required_keys(source: &Source, table: &DeTable<'_>, prefix: &str, errors: &mut Vec<SpecError>) {
    for (k, v) in table.iter() {
        let key = if prefix.is_empty() {
            k.get_ref().to_string()
        } else {
            format!("{prefix}.{}", k.get_ref())
        };
        match v.get_ref() {
            DeValue::String(s) if s.as_ref() == REQUIRED => {
                errors.push(required_error(source, v.span(), &key))
            }
            DeValue::Table(t) => required_keys(source, t, &key, errors),
            _ => {}
        }
    }
}

/// Apply `--set a.b.c=VALUE` to the document. VALUE is a TOML value, or else a bare string.
fn apply_set<'i>(
    source: &'i Source,
    root: &mut DeTable<'i>,
    set: &str,
    offset: usize,
) -> Result<(), SpecError> {
    let text: &'i str = &source.text[offset..offset + set.len()];
    let Some(eq) = text.find('=') else {
        return Err(source.error(
            offset..offset + set.len(),
            text,
            "expected `--set KEY=VALUE`",
        ));
    };
    let raw_key = text[..eq].trim();
    let raw_value = text[eq + 1..].trim();
    let value_offset = offset + eq + 1 + (text[eq + 1..].len() - text[eq + 1..].trim_start().len());
    let value = match DeValue::parse(raw_value) {
        Ok(v) => shift(v, value_offset),
        Err(_) => Spanned::new(
            value_offset..value_offset + raw_value.len(),
            DeValue::String(DeString::Borrowed(raw_value)),
        ),
    };
    let parts: Vec<&str> = raw_key.split('.').map(str::trim).collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(source.error(offset..offset + eq, raw_key, "empty part in the key"));
    }
    let key_span = offset..offset + eq;
    let mut table = root;
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        if last {
            table.insert(
                Spanned::new(key_span.clone(), DeString::Borrowed(part)),
                value,
            );
            return Ok(());
        }
        if table.get(*part).is_none() {
            table.insert(
                Spanned::new(key_span.clone(), DeString::Borrowed(part)),
                Spanned::new(key_span.clone(), DeValue::Table(DeTable::new())),
            );
        }
        let next = table.get_mut(*part).map(|v| v.get_mut());
        match next {
            Some(DeValue::Table(t)) => table = t,
            _ => {
                return Err(source.error(
                    key_span,
                    &parts[..=i].join("."),
                    "cannot set a key inside a value that is not a table",
                ));
            }
        }
    }
    Ok(())
}

fn json_of(v: &DeValue<'_>) -> serde_json::Value {
    match v {
        DeValue::String(s) => serde_json::Value::String(s.to_string()),
        DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix())
            .map(serde_json::Value::from)
            .unwrap_or_else(|_| serde_json::Value::String(i.as_str().to_string())),
        DeValue::Float(f) => f
            .as_str()
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map_or_else(
                || serde_json::Value::String(f.as_str().to_string()),
                serde_json::Value::Number,
            ),
        DeValue::Boolean(b) => serde_json::Value::Bool(*b),
        DeValue::Datetime(d) => serde_json::Value::String(d.to_string()),
        DeValue::Array(a) => a.iter().map(|v| json_of(v.get_ref())).collect(),
        DeValue::Table(t) => t
            .iter()
            .map(|(k, v)| (k.get_ref().to_string(), json_of(v.get_ref())))
            .collect::<serde_json::Map<_, _>>()
            .into(),
    }
}

/// Replace the non-string value spanning exactly `span` by its source text as a string.
fn stringify_at(table: &mut DeTable<'_>, span: &Range<usize>, text: &str) -> bool {
    fn visit(v: &mut Value<'_>, span: &Range<usize>, text: &str) -> bool {
        if v.span() == *span
            && !v.get_ref().is_str()
            && !v.get_ref().is_table()
            && !v.get_ref().is_array()
        {
            let raw = text.get(span.clone()).unwrap_or_default().to_string();
            *v = Spanned::new(span.clone(), DeValue::String(DeString::Owned(raw)));
            return true;
        }
        match v.get_mut() {
            DeValue::Table(t) => stringify_at(t, span, text),
            DeValue::Array(a) => a.iter_mut().any(|x| visit(x, span, text)),
            _ => false,
        }
    }
    table.iter_mut().any(|(_, v)| visit(v, span, text))
}

/// A readable label for a scalar: `4.0` -> `4`, `1e5` -> `100000`, strings as they are.
pub fn scalar_label(v: &serde_json::Value) -> String {
    let raw = match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() && f.fract() == 0.0 && f.abs() < 1e15 => format!("{}", f as i64),
            _ => n.to_string(),
        },
        other => other.to_string(),
    };
    raw.chars()
        .map(|c| {
            if c.is_whitespace() || ",@[]".contains(c) {
                '_'
            } else {
                c
            }
        })
        .collect()
}

/// One value of one matrix axis.
struct AxisValue<'i> {
    value: Value<'i>,
    label: String,
    flat: Vec<(String, serde_json::Value)>,
}

fn axis_values<'i>(
    source: &Source,
    stage: &str,
    axis: &str,
    v: &Value<'i>,
) -> Result<Vec<AxisValue<'i>>, SpecError> {
    let key = format!("stages.{stage}.matrix.{axis}");
    let Some(items) = v.get_ref().as_array() else {
        return Err(source.error(
            v.span(),
            &key,
            "a matrix entry must be a list of values or `[[...]]` tables",
        ));
    };
    if items.is_empty() {
        return Err(source.error(v.span(), &key, "a matrix entry must not be empty"));
    }
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, item) in items.iter().enumerate() {
        let mut label_span = item.span();
        let (label, value, flat) = match item.get_ref() {
            DeValue::Table(t) => {
                let mut t = t.clone();
                let label = match t.remove("name") {
                    Some(n) => match n.get_ref().as_str() {
                        Some(s) => {
                            label_span = n.span();
                            scalar_label(&serde_json::Value::String(s.to_string()))
                        }
                        None => {
                            return Err(source.error(
                                n.span(),
                                &format!("{key}[{i}].name"),
                                "`name` must be a string",
                            ));
                        }
                    },
                    None => table_label(&t, axis, i),
                };
                let mut flat = vec![(axis.to_string(), serde_json::Value::String(label.clone()))];
                for (k, v) in t.iter() {
                    let j = json_of(v.get_ref());
                    let j = if j.is_object() || j.is_array() {
                        serde_json::Value::String(j.to_string())
                    } else {
                        j
                    };
                    flat.push((k.get_ref().to_string(), j));
                }
                (label, Spanned::new(item.span(), DeValue::Table(t)), flat)
            }
            other => {
                let j = json_of(other);
                let label = match &j {
                    serde_json::Value::String(_) => scalar_label(&j),
                    _ => format!("{axis}-{}", scalar_label(&j)),
                };
                (label, item.clone(), vec![(axis.to_string(), j)])
            }
        };
        if !seen.insert(label.clone()) {
            return Err(source.error(
                label_span,
                &format!("{key}[{i}]"),
                format!("duplicate instance name `{stage}@{label}` (give the entries distinct values or a distinct `name`)"),
            ));
        }
        out.push(AxisValue { value, label, flat });
    }
    Ok(out)
}

/// Label of a matrix table entry without `name`: its string values, then `key-value` pairs.
fn table_label(t: &DeTable<'_>, axis: &str, index: usize) -> String {
    let mut parts = Vec::new();
    for (k, v) in t.iter() {
        let j = json_of(v.get_ref());
        match &j {
            serde_json::Value::String(_) => parts.push(scalar_label(&j)),
            serde_json::Value::Object(_) | serde_json::Value::Array(_) => {
                return format!("{axis}-{index}");
            }
            _ => parts.push(format!("{}-{}", k.get_ref(), scalar_label(&j))),
        }
    }
    if parts.is_empty() {
        format!("{axis}-{index}")
    } else {
        parts.join("-")
    }
}

fn parse_stage<'i>(
    source: &Source,
    root: &DeTable<'i>,
    name_key: &Spanned<DeString<'i>>,
    value: &Value<'i>,
) -> Result<Stage, Vec<SpecError>> {
    let name = name_key.get_ref().to_string();
    let key = format!("stages.{name}");
    let err1 = |span: Range<usize>, key: &str, msg: String| vec![source.error(span, key, msg)];
    if name.is_empty()
        || name.contains(['@', '[', ']', ',', '/'])
        || name.chars().any(char::is_control)
        || name.len() > MAX_NAME
    {
        return Err(err1(
            name_key.span(),
            &key,
            format!(
                "stage name `{}` may not be empty, contain `@ [ ] , /` or control characters, or be longer than {MAX_NAME} bytes",
                name.escape_debug()
            ),
        ));
    }
    let Some(table) = value.get_ref().as_table() else {
        return Err(err1(value.span(), &key, "a stage must be a table".into()));
    };
    if let Some((span, at)) = non_finite(table, &key) {
        return Err(err1(
            span,
            &at,
            "not a finite number: `nan` and `inf` are not valid parameter values".into(),
        ));
    }
    let location = source.location(name_key.span(), &key);
    let kind = match table.get("kind") {
        None => return Err(err1(name_key.span(), &key, "missing `kind`".into())),
        Some(k) => match k.get_ref().as_str() {
            None => {
                return Err(err1(
                    k.span(),
                    &format!("{key}.kind"),
                    "`kind` must be a string".into(),
                ));
            }
            Some(kname) => stages::kind(kname).ok_or_else(|| {
                let known: Vec<_> = stages::KINDS.iter().map(|k| k.kind()).collect();
                err1(
                    k.span(),
                    &format!("{key}.kind"),
                    format!(
                        "unknown stage kind `{kname}` (known kinds: {})",
                        known.join(", ")
                    ),
                )
            })?,
        },
    };
    let needs = parse_needs(source, &name, name_key.span(), table.get("needs"), kind)?;
    let seed = match table.get("seed") {
        None => None,
        Some(s) => match s
            .get_ref()
            .as_integer()
            .and_then(|i| u64::from_str_radix(i.as_str(), i.radix()).ok())
        {
            Some(v) => Some(v),
            None => {
                return Err(err1(
                    s.span(),
                    &format!("{key}.seed"),
                    "`seed` must be a non-negative integer".into(),
                ));
            }
        },
    };
    let resources = match table.get("resources") {
        None => ResourceRequest::default(),
        Some(v) => {
            use serde::Deserialize;
            use serde::de::IntoDeserializer;
            let request =
                ResourceRequest::deserialize(v.clone().into_deserializer()).map_err(|e| {
                    vec![serde_error(
                        source,
                        root,
                        &e,
                        v.span(),
                        &format!("{key}.resources"),
                    )]
                })?;
            request.check().map_err(|e| {
                let span = v
                    .get_ref()
                    .as_table()
                    .and_then(|t| t.get(e.key.as_str()))
                    .map_or(v.span(), |x| x.span());
                err1(span, &format!("{key}.resources.{}", e.key), e.message)
            })?;
            request
        }
    };
    let mut params = DeTable::new();
    for (k, v) in table.iter() {
        if !COMMON_KEYS.contains(&k.get_ref().as_ref()) {
            params.insert(k.clone(), v.clone());
        }
    }
    // Matrix axes, each a list of values.
    let mut axes: Vec<(String, Vec<AxisValue<'i>>)> = Vec::new();
    if let Some(m) = table.get("matrix") {
        let Some(mt) = m.get_ref().as_table() else {
            return Err(err1(
                m.span(),
                &format!("{key}.matrix"),
                "`matrix` must be a table of lists".into(),
            ));
        };
        let names = kind.param_names();
        for (axis, values) in mt.iter() {
            let axis_name = axis.get_ref().to_string();
            let known =
                axis_name == "seed" || names.as_ref().is_none_or(|n| n.contains(&axis_name));
            if !known {
                let list = names.clone().unwrap_or_default().join(", ");
                return Err(err1(
                    axis.span(),
                    &format!("{key}.matrix.{axis_name}"),
                    format!(
                        "matrix over `{axis_name}`, which stage kind `{}` does not have (parameters: {list}; or `seed`)",
                        kind.kind()
                    ),
                ));
            }
            axes.push((
                axis_name.clone(),
                axis_values(source, &name, &axis_name, values).map_err(|e| vec![e])?,
            ));
        }
    }
    // The product of the axes, first axis slowest.
    let mut combos: Vec<Vec<usize>> = vec![Vec::new()];
    for (_, values) in &axes {
        combos = combos
            .into_iter()
            .flat_map(|c| {
                (0..values.len()).map(move |i| {
                    let mut c = c.clone();
                    c.push(i);
                    c
                })
            })
            .collect();
    }
    let given: Vec<&str> = needs.iter().map(|n| n.name.as_str()).collect();
    let mut variants = Vec::new();
    let mut errors: Vec<SpecError> = Vec::new();
    for combo in combos {
        let mut p = params.clone();
        let mut coords: Vec<Coord> = Vec::new();
        let mut vseed = seed;
        for ((axis, values), &i) in axes.iter().zip(&combo) {
            let av = &values[i];
            coords.push(Coord {
                origin: name.clone(),
                axis: axis.clone(),
                label: av.label.clone(),
                values: av.flat.clone(),
            });
            if axis == "seed" {
                match av
                    .value
                    .get_ref()
                    .as_integer()
                    .and_then(|i| u64::from_str_radix(i.as_str(), i.radix()).ok())
                {
                    Some(s) => vseed = Some(s),
                    None => {
                        errors.push(source.error(
                            av.value.span(),
                            &format!("{key}.matrix.seed"),
                            "seeds must be non-negative integers",
                        ));
                        continue;
                    }
                }
                continue;
            }
            let merged = match (
                p.get(axis.as_str()).map(|v| v.get_ref()),
                av.value.get_ref(),
            ) {
                (Some(DeValue::Table(base)), DeValue::Table(over)) => {
                    let mut t = base.clone();
                    for (k, v) in over.iter() {
                        t.insert(k.clone(), v.clone());
                    }
                    Spanned::new(av.value.span(), DeValue::Table(t))
                }
                _ => av.value.clone(),
            };
            let axis_key = Spanned::new(av.value.span(), DeString::Owned(axis.clone()));
            p.remove(axis.as_str());
            p.insert(axis_key, merged);
        }
        // A `--set` value that parsed as a number or bool where the parameter is a string is
        // retried as the string the user typed: overrides are typed by the schema.
        let parsed = loop {
            match kind.parse_params(Spanned::new(value.span(), DeValue::Table(p.clone()))) {
                Ok(params) => break Ok(params),
                Err(e) => match e.span() {
                    Some(sp)
                        if sp.start >= source.file_len
                            && stringify_at(&mut p, &sp, &source.text) => {}
                    _ => break Err(e),
                },
            }
        };
        match parsed {
            Ok(params) => match kind.check(&params, &given) {
                Ok(()) => variants.push(Variant {
                    coords,
                    params,
                    seed: vseed,
                }),
                Err(e) => {
                    let err = check_error(source, &p, name_key.span(), &key, e);
                    if !errors.contains(&err) {
                        errors.push(err);
                    }
                }
            },
            Err(e) => {
                let err = serde_error(source, root, &e, name_key.span(), &key);
                if !errors.contains(&err) {
                    errors.push(err);
                }
            }
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Stage {
        name,
        kind,
        needs,
        variants,
        resources,
        location,
    })
}

/// The first `nan` or `inf` under `table` (whose key is `prefix`): its span and dotted key.
fn non_finite(table: &DeTable<'_>, prefix: &str) -> Option<(Range<usize>, String)> {
    fn visit(v: &Value<'_>, key: &str) -> Option<(Range<usize>, String)> {
        match v.get_ref() {
            DeValue::Float(f) => (!f.as_str().parse::<f64>().is_ok_and(f64::is_finite))
                .then(|| (v.span(), key.to_string())),
            DeValue::Array(a) => a.iter().find_map(|x| visit(x, key)),
            DeValue::Table(t) => non_finite(t, key),
            _ => None,
        }
    }
    table
        .iter()
        .find_map(|(k, v)| visit(v, &format!("{prefix}.{}", k.get_ref())))
}

/// A kind's `check` error at the value it names (the deepest part of its dotted key written in
/// the file, or the stage's name when the value is a default).
fn check_error(
    source: &Source,
    params: &DeTable<'_>,
    stage_span: Range<usize>,
    stage_key: &str,
    e: ParamError,
) -> SpecError {
    let mut span = stage_span;
    let mut table = Some(params);
    for part in e.key.split('.').filter(|p| !p.is_empty()) {
        let Some(v) = table.and_then(|t| t.get(part)) else {
            break;
        };
        span = v.span();
        table = v.get_ref().as_table();
    }
    let key = if e.key.is_empty() {
        stage_key.to_string()
    } else {
        format!("{stage_key}.{}", e.key)
    };
    source.error(span, &key, e.message)
}

fn parse_needs(
    source: &Source,
    stage: &str,
    stage_span: Range<usize>,
    needs: Option<&Value<'_>>,
    kind: &dyn ErasedKind,
) -> Result<Vec<NeedRef>, Vec<SpecError>> {
    let key = format!("stages.{stage}.needs");
    let mut out = Vec::new();
    let mut errors = Vec::new();
    let table = match needs {
        None => DeTable::new(),
        Some(v) => match v.get_ref().as_table() {
            Some(t) => t.clone(),
            None => {
                return Err(vec![source.error(
                    v.span(),
                    &key,
                    "`needs` must be a table: `{ name = \"stage\" }`",
                )]);
            }
        },
    };
    for (k, v) in table.iter() {
        let nkey = format!("{key}.{}", k.get_ref());
        let Some(target) = v.get_ref().as_str() else {
            errors.push(source.error(
                v.span(),
                &nkey,
                "a need must be a string: `\"stage\"`, `\"stage[*]\"` or `\"stage@instance\"`",
            ));
            continue;
        };
        let (stage_name, select) = if let Some(s) = target.strip_suffix("[*]") {
            (s.to_string(), Select::Gather)
        } else if let Some((s, i)) = target.split_once('@') {
            (s.to_string(), Select::Instance(i.to_string()))
        } else {
            (target.to_string(), Select::Each)
        };
        if let Needs::Fixed(decls) = kind.needs() {
            match decls.iter().find(|d| d.name == k.get_ref().as_ref()) {
                None => {
                    let names: Vec<_> = decls.iter().map(|d| d.name).collect();
                    errors.push(source.error(
                        k.span(),
                        &nkey,
                        format!(
                            "stage kind `{}` has no need `{}` (needs: {})",
                            kind.kind(),
                            k.get_ref(),
                            names.join(", ")
                        ),
                    ));
                    continue;
                }
                Some(d) if !d.gather && select == Select::Gather => {
                    errors.push(source.error(
                        v.span(),
                        &nkey,
                        format!(
                            "need `{}` of kind `{}` takes one instance, not a gather `[*]`",
                            d.name,
                            kind.kind()
                        ),
                    ));
                    continue;
                }
                Some(_) => {}
            }
        }
        out.push(NeedRef {
            name: k.get_ref().to_string(),
            stage: stage_name,
            select,
            location: source.location(v.span(), &nkey),
        });
    }
    if let Needs::Fixed(decls) = kind.needs() {
        for d in decls.iter().filter(|d| d.required) {
            if !table.contains_key(d.name) {
                // At the `needs` table, or at the stage's name when it has none.
                let span = needs.map_or(stage_span.clone(), |n| n.span());
                errors.push(source.error(
                    span,
                    &format!("{key}.{}", d.name),
                    format!(
                        "stage `{stage}` of kind `{}` requires need `{}`",
                        kind.kind(),
                        d.name
                    ),
                ));
            }
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// Check that needs name stages and form no cycle; return the stages in topological order.
fn check_graph(_source: &Source, stages: Vec<Stage>) -> Result<Vec<Stage>, Vec<SpecError>> {
    let index: BTreeMap<&str, usize> = stages
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), i))
        .collect();
    let mut errors = Vec::new();
    let mut graph = petgraph::graph::DiGraph::<usize, usize>::new();
    let nodes: Vec<_> = (0..stages.len()).map(|i| graph.add_node(i)).collect();
    for (i, s) in stages.iter().enumerate() {
        for (ni, n) in s.needs.iter().enumerate() {
            match index.get(n.stage.as_str()) {
                None => {
                    let names: Vec<_> = index.keys().copied().collect();
                    errors.push(SpecError {
                        location: n.location.clone(),
                        message: format!(
                            "need `{}` names no stage `{}` (stages: {})",
                            n.name,
                            n.stage,
                            names.join(", ")
                        ),
                    });
                }
                Some(&j) => {
                    graph.update_edge(nodes[j], nodes[i], ni);
                }
            }
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    match petgraph::algo::toposort(&graph, None) {
        Ok(_) => {
            // Kahn's algorithm taking the earliest ready stage: a topological order that keeps
            // the file's order wherever the needs allow (petgraph's is arbitrary among equals).
            let mut indegree: Vec<usize> = (0..stages.len())
                .map(|i| {
                    graph
                        .neighbors_directed(nodes[i], petgraph::Direction::Incoming)
                        .count()
                })
                .collect();
            let mut ready: BTreeSet<usize> =
                (0..stages.len()).filter(|&i| indegree[i] == 0).collect();
            let mut order = Vec::with_capacity(stages.len());
            while let Some(i) = ready.pop_first() {
                order.push(i);
                for next in graph.neighbors_directed(nodes[i], petgraph::Direction::Outgoing) {
                    let j = graph[next];
                    indegree[j] -= 1;
                    if indegree[j] == 0 {
                        ready.insert(j);
                    }
                }
            }
            let mut slots: Vec<Option<Stage>> = stages.into_iter().map(Some).collect();
            Ok(order.into_iter().filter_map(|i| slots[i].take()).collect())
        }
        Err(cycle) => {
            let start = graph[cycle.node_id()];
            let path = find_cycle(&stages, &index, start);
            let names: Vec<&str> = path.iter().map(|&i| stages[i].name.as_str()).collect();
            // Point at the need that closes the cycle at its first stage.
            let first = path[0];
            let next = path.get(1).copied().unwrap_or(first);
            let location = stages[next]
                .needs
                .iter()
                .find(|n| n.stage == stages[first].name)
                .map_or(stages[first].location.clone(), |n| n.location.clone());
            let mut shown: Vec<&str> = names.clone();
            shown.push(names[0]);
            Err(vec![SpecError {
                location,
                message: format!("the needs form a cycle: {}", shown.join(" -> ")),
            }])
        }
    }
}

/// A cycle through `start` as stage indices in data-flow order (`a -> b` means b needs a).
fn find_cycle(stages: &[Stage], index: &BTreeMap<&str, usize>, start: usize) -> Vec<usize> {
    // Depth-first search over "is needed by" edges until we come back to `start`.
    let downstream = |i: usize| -> Vec<usize> {
        stages
            .iter()
            .enumerate()
            .filter(|(_, s)| {
                s.needs
                    .iter()
                    .any(|n| index.get(n.stage.as_str()) == Some(&i))
            })
            .map(|(j, _)| j)
            .collect()
    };
    let mut stack = vec![(start, vec![start])];
    let mut seen = BTreeSet::new();
    while let Some((node, path)) = stack.pop() {
        for next in downstream(node) {
            if next == start {
                return path;
            }
            if seen.insert(next) {
                let mut p = path.clone();
                p.push(next);
                stack.push((next, p));
            }
        }
    }
    // toposort reported a node on a cycle through itself only through another cycle: fall back.
    vec![start]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(text: &str, sets: &[&str]) -> Result<Pipeline> {
        let mut full = text.to_string();
        let file_len = full.len();
        let mut offsets = Vec::new();
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        for s in &sets {
            full.push('\n');
            offsets.push(full.len());
            full.push_str(s);
        }
        let source = Source {
            file: PathBuf::from("p.toml"),
            text: full,
            file_len,
        };
        parse(&source, &offsets, &sets)
    }

    const HEAD: &str = "[pipeline]\nname = \"t\"\n";

    #[test]
    fn scalar_labels_are_readable() {
        assert_eq!(scalar_label(&serde_json::json!(4.0)), "4");
        assert_eq!(scalar_label(&serde_json::json!(1e5)), "100000");
        assert_eq!(scalar_label(&serde_json::json!(0.5)), "0.5");
        assert_eq!(scalar_label(&serde_json::json!("a b")), "a_b");
    }

    #[test]
    fn matrix_product_names_and_params() {
        let p = parse_str(
            &format!("{HEAD}[stages.x]\nkind = \"command\"\nargs = [\"true\"]\nmatrix.gpu = [0, 1]\nmatrix.seed = [1, 2]\n"),
            &[],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let s = &p.stages[0];
        let labels: Vec<String> = s
            .variants
            .iter()
            .map(|v| {
                v.coords
                    .iter()
                    .map(|c| c.label.clone())
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .collect();
        assert_eq!(
            labels,
            [
                "gpu-0,seed-1",
                "gpu-0,seed-2",
                "gpu-1,seed-1",
                "gpu-1,seed-2"
            ]
        );
        assert_eq!(s.variants[3].seed, Some(2));
        assert_eq!(s.variants[3].params["gpu"], 1);
    }

    #[test]
    fn set_overrides_are_typed_and_located() {
        let p = parse_str(
            &format!("{HEAD}[stages.x]\nkind = \"command\"\nargs = [\"true\"]\n"),
            &["stages.x.gpu=2", "pipeline.device=cuda:1"],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.stages[0].variants[0].params["gpu"], 2);
        assert_eq!(p.header.device, "cuda:1");
        let e = parse_str(
            &format!("{HEAD}[stages.x]\nkind = \"command\"\nargs = [\"true\"]\n"),
            &["stages.x.gpu=many"],
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(e.starts_with("--set:1:"), "{e}");
        assert!(e.contains("stages.x.gpu"), "{e}");
    }

    #[test]
    fn the_required_marker_is_an_error_until_set() {
        let file = format!("{HEAD}[stages.m]\nkind = \"model\"\npath = \"{REQUIRED}\"\n");
        let e = parse_str(&file, &[])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.contains(
                "p.toml:5:8: `stages.m.path`: required but not given: set `path` in the file or with `--set stages.m.path=VALUE`"
            ),
            "{e}"
        );
        let p = parse_str(&file, &["stages.m.path=ckpt"]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.stages[0].variants[0].params["path"], "ckpt");
    }

    #[test]
    fn a_missing_required_key_is_named_in_full_with_its_set_form() {
        let file = format!("{HEAD}[stages.x]\nkind = \"command\"\n");
        let e = parse_str(&file, &[])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("p.toml:3:1: `stages.x.args`"), "{e}");
        assert!(e.contains("`--set stages.x.args=VALUE`"), "{e}");
        // Given with --set, it parses.
        let p = parse_str(&file, &["stages.x.args=[\"true\"]"]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.stages[0].variants[0].params["args"][0], "true");
        // Inside a matrix entry there is no `--set` form to suggest.
        let e = parse_str(
            &format!(
                "{HEAD}[stages.x]\nkind = \"data_prep\"\n[[stages.x.matrix.source]]\ntext = {{ separator = \"\\n\" }}\n"
            ),
            &[],
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(e.contains("required but not given"), "{e}");
        assert!(!e.contains("--set"), "{e}");
    }

    struct Fixed;
    #[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
    #[serde(deny_unknown_fields)]
    struct NoParams {}
    impl stages::StageKind for Fixed {
        const KIND: &'static str = "fixed";
        const VERSION: u32 = 1;
        type Params = NoParams;
        fn needs() -> Needs {
            Needs::Fixed(
                const {
                    &[
                        stages::NeedDecl::required("model"),
                        stages::NeedDecl {
                            name: "evals",
                            required: false,
                            gather: true,
                        },
                    ]
                },
            )
        }
        fn run(_: &NoParams, _: &stages::Ctx<'_>) -> anyhow::Result<()> {
            Ok(())
        }
    }

    fn needs_errors(needs: &str) -> Vec<String> {
        let text = format!("needs = {needs}\n");
        let source = Source {
            file: PathBuf::from("p.toml"),
            text: text.clone(),
            file_len: text.len(),
        };
        let doc = DeTable::parse(&source.text).unwrap_or_else(|e| panic!("{e}"));
        let kind = stages::Erased::<Fixed>::NEW;
        match parse_needs(&source, "s", 0..0, doc.get_ref().get("needs"), &kind) {
            Ok(refs) => {
                assert!(
                    refs.iter()
                        .any(|r| r.name == "model" && r.select == Select::Each)
                );
                Vec::new()
            }
            Err(errors) => errors.iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn declared_needs_are_checked() {
        assert!(needs_errors("{ model = \"m\", evals = \"e[*]\" }").is_empty());
        let e = needs_errors("{ model = \"m\", modle = \"m\" }");
        assert!(
            e[0].starts_with("p.toml:1:") && e[0].contains("`stages.s.needs.modle`"),
            "{e:?}"
        );
        assert!(
            e[0].contains("has no need `modle` (needs: model, evals)"),
            "{e:?}"
        );
        let e = needs_errors("{ model = \"m[*]\" }");
        assert!(e[0].contains("takes one instance, not a gather"), "{e:?}");
        let e = needs_errors("{ evals = \"e[*]\" }");
        assert!(e[0].contains("requires need `model`"), "{e:?}");
    }
}
