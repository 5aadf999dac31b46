//! The content-addressed cache: `<root>/<key>/` entries, built in `<key>.partial/`, locked per key.
//!
//! An entry exists only once complete: an instance is built in `<key>.partial/` (kept on failure
//! so resumable kinds can pick up their checkpoints) and renamed to `<key>/` on success, with a
//! JSON copy of its key (`.pipe-key.json`) inside. A file lock per key (`locks/<key>.lock`, std's
//! `File::lock`) makes two concurrent runs build a key once. Per-instance records
//! (`instances/<pipeline>/<instance>.json`) hold the last key built for each instance so that
//! `status` can explain what changed since.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::key::KeyRecord;
use crate::error::{Error, Result};

/// File name of the key copy inside an entry.
pub const KEY_FILE: &str = ".pipe-key.json";

/// Write `bytes` to `path` through a temporary file and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(|e| Error::io("cannot create", dir, e))?;
    let mut tmp =
        tempfile::NamedTempFile::new_in(dir).map_err(|e| Error::io("cannot write in", dir, e))?;
    tmp.write_all(bytes)
        .map_err(|e| Error::io("cannot write", path, e))?;
    tmp.persist(path)
        .map_err(|e| Error::io("cannot write", path, e.error))?;
    Ok(())
}

/// A cache directory.
#[derive(Debug, Clone)]
pub struct Cache {
    pub root: PathBuf,
}

/// A held per-key lock; released on drop.
pub struct KeyLock {
    _file: File,
}

/// One entry as `pipe cache ls` shows it.
#[derive(Debug, Clone)]
pub struct EntryInfo {
    pub key: String,
    pub bytes: u64,
    pub modified: Option<SystemTime>,
    pub record: Option<KeyRecord>,
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "@,.-_=+".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl Cache {
    /// `$PIPE_CACHE`, or `.pipe/cache` in the current directory.
    pub fn from_env() -> Cache {
        let root = std::env::var_os("PIPE_CACHE")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(".pipe/cache"));
        Cache { root }
    }

    pub fn entry(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    pub fn partial(&self, key: &str) -> PathBuf {
        self.root.join(format!("{key}.partial"))
    }

    pub fn has(&self, key: &str) -> bool {
        self.entry(key).join(KEY_FILE).is_file()
    }

    fn record_path(&self, pipeline: &str, instance: &str) -> PathBuf {
        self.root
            .join("instances")
            .join(sanitize(pipeline))
            .join(format!("{}.json", sanitize(instance)))
    }

    /// The key last built for this instance of this pipeline.
    pub fn last_record(&self, pipeline: &str, instance: &str) -> Option<KeyRecord> {
        let bytes = fs::read(self.record_path(pipeline, instance)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    pub fn write_record(&self, record: &KeyRecord) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(record).unwrap_or_default();
        write_atomic(
            &self.record_path(&record.pipeline, &record.instance),
            &bytes,
        )
    }

    /// Take the lock of `key` if no other process holds it; `None` when one does.
    pub fn try_lock(&self, key: &str) -> Result<Option<KeyLock>> {
        let dir = self.root.join("locks");
        fs::create_dir_all(&dir).map_err(|e| Error::io("cannot create", &dir, e))?;
        let path = dir.join(format!("{key}.lock"));
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io("cannot open lock", &path, e))?;
        match file.try_lock() {
            Ok(()) => Ok(Some(KeyLock { _file: file })),
            Err(fs::TryLockError::WouldBlock) => Ok(None),
            Err(fs::TryLockError::Error(e)) => Err(Error::io("cannot lock", &path, e)),
        }
    }

    /// Prepare the build directory of `key`: the kept partial of a failed or killed attempt for
    /// resumable kinds, an empty one otherwise. Call with the key's lock held.
    pub fn begin(&self, key: &str, resumable: bool) -> Result<PathBuf> {
        let dir = self.partial(key);
        if !resumable && dir.exists() {
            fs::remove_dir_all(&dir).map_err(|e| Error::io("cannot clear", &dir, e))?;
        }
        fs::create_dir_all(&dir).map_err(|e| Error::io("cannot create", &dir, e))?;
        Ok(dir)
    }

    /// Move a finished build into place (replacing an existing entry when forced). Call with the
    /// key's lock held.
    pub fn commit(&self, record: &KeyRecord) -> Result<PathBuf> {
        let partial = self.partial(&record.key);
        let bytes = serde_json::to_vec_pretty(record).unwrap_or_default();
        write_atomic(&partial.join(KEY_FILE), &bytes)?;
        let entry = self.entry(&record.key);
        if entry.exists() {
            let old = self
                .root
                .join(format!("{}.old-{}", record.key, std::process::id()));
            fs::rename(&entry, &old).map_err(|e| Error::io("cannot replace", &entry, e))?;
            fs::remove_dir_all(&old).map_err(|e| Error::io("cannot remove", &old, e))?;
        }
        fs::rename(&partial, &entry).map_err(|e| Error::io("cannot move into place", &entry, e))?;
        Ok(entry)
    }

    /// Every complete entry, sorted by key.
    pub fn list(&self) -> Result<Vec<EntryInfo>> {
        let mut out = Vec::new();
        let rd = match fs::read_dir(&self.root) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(Error::io("cannot read", &self.root, e)),
        };
        for entry in rd.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().to_string();
            let key_file = path.join(KEY_FILE);
            if !key_file.is_file() {
                continue;
            }
            let record = fs::read(&key_file)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            out.push(EntryInfo {
                key: name,
                bytes: dir_size(&path),
                modified: fs::metadata(&key_file).and_then(|m| m.modified()).ok(),
                record,
            });
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    /// Remove entries (and partial builds) whose key is not in `keep`; returns what was (or, on a
    /// dry run, would be) removed with its size. Entries whose lock is held are left alone.
    pub fn gc(&self, keep: &BTreeSet<String>, dry_run: bool) -> Result<Vec<(PathBuf, u64)>> {
        let mut removed = Vec::new();
        let rd = match fs::read_dir(&self.root) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(removed),
            Err(e) => return Err(Error::io("cannot read", &self.root, e)),
        };
        for entry in rd.flatten() {
            let path = entry.path();
            if !path.is_dir() {
                continue;
            }
            let name = entry.file_name().to_string_lossy().to_string();
            let key = name.split('.').next().unwrap_or_default().to_string();
            let is_entry = path.join(KEY_FILE).is_file()
                || name.contains(".partial")
                || name.contains(".old-");
            if !is_entry || keep.contains(&key) || key.len() != 32 {
                continue;
            }
            let lock_path = self.root.join("locks").join(format!("{key}.lock"));
            let busy = File::options()
                .write(true)
                .open(&lock_path)
                .is_ok_and(|f| f.try_lock().is_err());
            if busy {
                continue;
            }
            let size = dir_size(&path);
            if !dry_run {
                fs::remove_dir_all(&path).map_err(|e| Error::io("cannot remove", &path, e))?;
                let _ = fs::remove_file(&lock_path);
            }
            removed.push((path, size));
        }
        removed.sort();
        Ok(removed)
    }
}

/// Total size of the files under `path`.
pub fn dir_size(path: &Path) -> u64 {
    let Ok(rd) = fs::read_dir(path) else {
        return fs::metadata(path).map_or(0, |m| m.len());
    };
    rd.flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_size(&e.path()),
            _ => e.metadata().map_or(0, |m| m.len()),
        })
        .sum()
}
