//! The cache key of an instance, and why an old key differs from a new one.
//!
//! The key is a struct with named fields (cargo's `Fingerprint`, just's `CacheKey`): the kind,
//! its version, the canonical JSON of the fully defaulted parameters, the keys of the upstream
//! instances, the content hash of every external input file, the seed and the device. It is
//! hashed with blake3 over canonical JSON (sorted keys), which is stable across releases of this
//! tool; the binary itself is never part of it. A JSON copy is stored beside each cache entry so
//! that `compare` can say what changed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The hashed fields of a key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyFields {
    pub kind: String,
    pub version: u32,
    /// Canonical (sorted keys), fully defaulted parameters.
    pub params: serde_json::Value,
    /// Need name -> keys of its upstream instances, in order.
    pub inputs: BTreeMap<String, Vec<String>>,
    /// External input path as written -> blake3 of its content.
    pub files: BTreeMap<String, String>,
    pub seed: u64,
    /// `None` for kinds whose output cannot depend on the device.
    pub device: Option<String>,
}

impl KeyFields {
    /// The key: hex blake3 of the canonical JSON, 32 characters.
    pub fn hash(&self) -> String {
        let json = canonical(&serde_json::to_value(self).unwrap_or_default());
        let bytes = serde_json::to_vec(&json).unwrap_or_default();
        blake3::hash(&bytes).to_hex()[..32].to_string()
    }
}

/// What is stored beside a cache entry and per instance: the fields plus readable names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub key: String,
    pub pipeline: String,
    pub stage: String,
    pub instance: String,
    pub fields: KeyFields,
    /// Need name -> upstream instance names (same order as `fields.inputs`).
    pub upstream: BTreeMap<String, Vec<String>>,
}

/// Sort object keys recursively so equal values serialize to equal bytes.
pub fn canonical(v: &serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Object(m) => {
            let sorted: BTreeMap<&String, serde_json::Value> =
                m.iter().map(|(k, v)| (k, canonical(v))).collect();
            serde_json::Value::Object(sorted.into_iter().map(|(k, v)| (k.clone(), v)).collect())
        }
        serde_json::Value::Array(a) => a.iter().map(canonical).collect(),
        other => other.clone(),
    }
}

fn short(v: &serde_json::Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 40 {
        format!("{}…", s.chars().take(39).collect::<String>())
    } else {
        s
    }
}

fn diff_json(path: &str, old: &serde_json::Value, new: &serde_json::Value, out: &mut Vec<String>) {
    use serde_json::Value::Object;
    match (old, new) {
        (Object(a), Object(b)) => {
            for (k, va) in a {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match b.get(k) {
                    Some(vb) => diff_json(&p, va, vb, out),
                    None => out.push(format!("`{p}` removed (was {})", short(va))),
                }
            }
            for (k, vb) in b {
                if !a.contains_key(k) {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    out.push(format!("`{p}` added ({})", short(vb)));
                }
            }
        }
        (a, b) if a != b => out.push(format!("`{path}` changed ({} -> {})", short(a), short(b))),
        _ => {}
    }
}

/// Why `new` differs from `old`, one sentence per changed field (empty when equal).
pub fn compare(old: &KeyRecord, new: &KeyRecord) -> Vec<String> {
    let (o, n) = (&old.fields, &new.fields);
    let mut out = Vec::new();
    if o.kind != n.kind {
        out.push(format!("kind changed ({} -> {})", o.kind, n.kind));
    } else if o.version != n.version {
        out.push(format!(
            "kind `{}` version changed ({} -> {})",
            n.kind, o.version, n.version
        ));
    }
    diff_json("", &o.params, &n.params, &mut out);
    for (need, keys) in &n.inputs {
        match o.inputs.get(need) {
            None => out.push(format!("need `{need}` added")),
            Some(old_keys) if old_keys != keys => {
                let names = new.upstream.get(need).cloned().unwrap_or_default();
                let old_names = old.upstream.get(need).cloned().unwrap_or_default();
                if names != old_names {
                    out.push(format!(
                        "need `{need}` now `{}` (was `{}`)",
                        names.join(", "),
                        old_names.join(", ")
                    ));
                } else {
                    let changed: Vec<&str> = names
                        .iter()
                        .zip(keys.iter().zip(old_keys))
                        .filter(|(_, (a, b))| a != b)
                        .map(|(n, _)| n.as_str())
                        .collect();
                    out.push(format!("upstream `{}` changed", changed.join("`, `")));
                }
            }
            Some(_) => {}
        }
    }
    for need in o.inputs.keys().filter(|k| !n.inputs.contains_key(*k)) {
        out.push(format!("need `{need}` removed"));
    }
    for (file, hash) in &n.files {
        match o.files.get(file) {
            None => out.push(format!("input file `{file}` added")),
            Some(h) if h != hash => out.push(format!("input file `{file}` changed")),
            Some(_) => {}
        }
    }
    for file in o.files.keys().filter(|k| !n.files.contains_key(*k)) {
        out.push(format!("input file `{file}` removed"));
    }
    if o.seed != n.seed {
        out.push(format!("seed changed ({} -> {})", o.seed, n.seed));
    }
    if o.device != n.device {
        let show = |d: &Option<String>| d.clone().unwrap_or_else(|| "any".into());
        out.push(format!(
            "device changed ({} -> {})",
            show(&o.device),
            show(&n.device)
        ));
    }
    out
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Memo {
    size: u64,
    mtime_ns: u128,
    hash: String,
}

/// Content hashes of external files, memoised by path, size and mtime in `<cache>/files.json`.
pub struct FileHasher {
    memo_path: PathBuf,
    memo: Mutex<(BTreeMap<PathBuf, Memo>, bool)>,
}

impl FileHasher {
    pub fn new(cache_root: &Path) -> Self {
        let memo_path = cache_root.join("files.json");
        let memo = std::fs::read(&memo_path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        FileHasher {
            memo_path,
            memo: Mutex::new((memo, false)),
        }
    }

    /// blake3 of a file, or of a directory's sorted (relative path, file hash) pairs.
    pub fn hash(&self, path: &Path) -> Result<String> {
        let meta = std::fs::metadata(path).map_err(|e| Error::io("cannot read input", path, e))?;
        if meta.is_dir() {
            let mut files = Vec::new();
            walk(path, path, &mut files)?;
            files.sort();
            let mut h = blake3::Hasher::new();
            for rel in files {
                let fh = self.hash(&path.join(&rel))?;
                h.update(rel.to_string_lossy().as_bytes());
                h.update(&[0]);
                h.update(fh.as_bytes());
            }
            return Ok(h.finalize().to_hex().to_string());
        }
        let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        let mtime_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        let size = meta.len();
        {
            let memo = self.memo.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(m) = memo.0.get(&abs)
                && m.size == size
                && m.mtime_ns == mtime_ns
            {
                return Ok(m.hash.clone());
            }
        }
        let mut h = blake3::Hasher::new();
        std::fs::File::open(path)
            .and_then(|f| h.update_reader(f).map(|_| ()))
            .map_err(|e| Error::io("cannot read input", path, e))?;
        let hash = h.finalize().to_hex().to_string();
        let mut memo = self.memo.lock().unwrap_or_else(|e| e.into_inner());
        memo.0.insert(
            abs,
            Memo {
                size,
                mtime_ns,
                hash: hash.clone(),
            },
        );
        memo.1 = true;
        Ok(hash)
    }

    /// Write the memo back if it changed (best effort: it is only a memo).
    pub fn save(&self) {
        let memo = self.memo.lock().unwrap_or_else(|e| e.into_inner());
        if memo.1
            && let Ok(bytes) = serde_json::to_vec(&memo.0)
        {
            let _ = crate::results::write_atomic(&self.memo_path, &bytes);
        }
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io("cannot read input", dir, e))?;
    for entry in rd {
        let entry = entry.map_err(|e| Error::io("cannot read input", dir, e))?;
        let path = entry.path();
        if path.is_dir() {
            walk(root, &path, out)?;
        } else {
            out.push(path.strip_prefix(root).unwrap_or(&path).to_path_buf());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(params: serde_json::Value) -> KeyRecord {
        let fields = KeyFields {
            kind: "train".into(),
            version: 1,
            params: canonical(&params),
            inputs: BTreeMap::new(),
            files: BTreeMap::new(),
            seed: 1,
            device: Some("cpu".into()),
        };
        KeyRecord {
            key: fields.hash(),
            pipeline: "p".into(),
            stage: "s".into(),
            instance: "s".into(),
            fields,
            upstream: BTreeMap::new(),
        }
    }

    #[test]
    fn key_ignores_object_key_order() {
        let a = record(json!({"a": 1, "b": {"x": 1, "y": 2}}));
        let b = record(json!({"b": {"y": 2, "x": 1}, "a": 1}));
        assert_eq!(a.key, b.key);
        assert_eq!(a.key.len(), 32);
    }

    #[test]
    fn compare_names_the_changed_param_with_old_and_new_values() {
        let a = record(json!({"rope": {"factor": 4}}));
        let mut b = record(json!({"rope": {"factor": 8}, "lr": 0.1}));
        b.fields.seed = 2;
        let reasons = compare(&a, &b);
        assert_eq!(
            reasons,
            [
                "`rope.factor` changed (4 -> 8)",
                "`lr` added (0.1)",
                "seed changed (1 -> 2)"
            ]
        );
    }

    #[test]
    fn compare_names_version_upstream_file_and_device_changes() {
        let mut a = record(json!({}));
        a.fields.inputs.insert("model".into(), vec!["k1".into()]);
        a.upstream
            .insert("model".into(), vec!["extend@yarn".into()]);
        a.fields.files.insert("data.txt".into(), "h1".into());
        let mut b = a.clone();
        b.fields.version = 2;
        b.fields.inputs.insert("model".into(), vec!["k2".into()]);
        b.fields.files.insert("data.txt".into(), "h2".into());
        b.fields.files.insert("extra.txt".into(), "h3".into());
        b.fields.device = Some("cuda".into());
        assert_eq!(
            compare(&a, &b),
            [
                "kind `train` version changed (1 -> 2)",
                "upstream `extend@yarn` changed",
                "input file `data.txt` changed",
                "input file `extra.txt` added",
                "device changed (cpu -> cuda)",
            ]
        );
        assert!(compare(&a, &a).is_empty());
        assert_ne!(a.fields.hash(), b.fields.hash());
    }

    #[test]
    fn file_hash_is_memoised_and_follows_content() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let f = dir.path().join("x.txt");
        std::fs::write(&f, "one").unwrap_or_else(|e| panic!("{e}"));
        let h = FileHasher::new(dir.path());
        let a = h.hash(&f).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a, blake3::hash(b"one").to_hex().to_string());
        std::fs::write(&f, "three").unwrap_or_else(|e| panic!("{e}"));
        let b = h.hash(&f).unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(a, b);
        let d = h.hash(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(d.len(), 64);
    }
}
