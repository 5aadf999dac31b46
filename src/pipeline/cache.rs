//! The content-addressed cache: `<root>/<key>/` entries, built in `<key>.partial/`, locked per key.
//!
//! An entry exists only once complete: an instance is built in `<key>.partial/` (kept on failure
//! so resumable kinds can pick up their checkpoints) and renamed to `<key>/` on success, with a
//! JSON copy of its key (`.pipe-key.json`) inside. A file lock per key (`locks/<key>.lock`, std's
//! `File::lock`) makes two concurrent runs build a key once. Per-instance records
//! (`instances/<pipeline>/<instance>.json`) hold the last key built for each instance so that
//! `status` can explain what changed since; a record is written as part of the commit, before
//! the entry appears. docs/runner.md ("Faults") says what a kill at each step of a commit leaves;
//! tests/runner/faults.rs kills `pipe` at each (src/failpoint.rs).

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::key::KeyRecord;
use crate::error::{Error, Result};
use crate::results::write_atomic;

/// File name of the key copy inside an entry.
pub const KEY_FILE: &str = ".pipe-key.json";

/// A cache directory.
#[derive(Debug, Clone)]
pub struct Cache {
    pub root: PathBuf,
}

/// A held per-key lock; released on drop.
pub struct KeyLock {
    _file: File,
}

/// A run's pin on every entry it uses (`leases/<pid>-<n>.json`, listing the keys, locked by the
/// run): `pipe cache gc` keeps the keys of every live lease, so cleaning the cache for another
/// pipeline never removes an upstream entry a running stage still reads. Released on drop; a
/// lease whose run died is unlocked, and gc removes it.
pub struct Lease {
    path: PathBuf,
    _file: File,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
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
        let path = self.lock_path(key);
        let dir = path.parent().unwrap_or(&self.root);
        fs::create_dir_all(dir).map_err(|e| Error::io("cannot create", dir, e))?;
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

    /// Pin `keys` until the lease is dropped (see [`Lease`]).
    pub fn lease(&self, keys: &[&str]) -> Result<Lease> {
        let dir = self.root.join("leases");
        fs::create_dir_all(&dir).map_err(|e| Error::io("cannot create", &dir, e))?;
        // Locked and written under a temporary name, then renamed: gc never sees a lease
        // file that is not yet locked (it would take it for a dead run's).
        let mut tmp = tempfile::NamedTempFile::new_in(&dir)
            .map_err(|e| Error::io("cannot write in", &dir, e))?;
        tmp.as_file()
            .lock()
            .map_err(|e| Error::io("cannot lock", tmp.path(), e))?;
        let bytes = serde_json::to_vec(keys).unwrap_or_default();
        tmp.write_all(&bytes)
            .map_err(|e| Error::io("cannot write", tmp.path(), e))?;
        let stamp = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let path = dir.join(format!("{}-{stamp}.json", std::process::id()));
        let file = tmp
            .persist(&path)
            .map_err(|e| Error::io("cannot write", &path, e.error))?;
        Ok(Lease { path, _file: file })
    }

    /// The keys of every live lease; removes the leases of runs that died.
    fn leased(&self) -> BTreeSet<String> {
        let mut keys = BTreeSet::new();
        let Ok(rd) = fs::read_dir(self.root.join("leases")) else {
            return keys;
        };
        for entry in rd.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let Ok(file) = File::options().read(true).write(true).open(&path) else {
                continue;
            };
            match file.try_lock() {
                Ok(()) => {
                    let _ = fs::remove_file(&path);
                }
                Err(_) => {
                    let listed: Vec<String> = fs::read(&path)
                        .ok()
                        .and_then(|b| serde_json::from_slice(&b).ok())
                        .unwrap_or_default();
                    keys.extend(listed);
                }
            }
        }
        keys
    }

    /// Prepare the build directory of `key`: the kept partial of a failed or killed attempt for
    /// resumable kinds, an empty one otherwise. Call with the key's lock held.
    pub fn begin(&self, key: &str, resumable: bool) -> Result<PathBuf> {
        let dir = self.partial(key);
        if !resumable && dir.exists() {
            fs::remove_dir_all(&dir).map_err(|e| Error::io("cannot clear", &dir, e))?;
        }
        fs::create_dir_all(&dir).map_err(|e| Error::io("cannot create", &dir, e))?;
        // A kept partial is built into again (forced, or re-attached): its key file no longer
        // vouches for its outputs, and must not make a later run commit a half-rewritten build.
        remove_if_present(&dir.join(KEY_FILE))?;
        Ok(dir)
    }

    /// Whether `<key>.partial/` is a finished build whose commit was interrupted: its key file
    /// (written only once the stage succeeded, its temporaries and work lock gone) names `key`.
    /// [`Cache::commit`] commits it as it is, without running the stage again.
    pub fn uncommitted(&self, key: &str) -> bool {
        fs::read(self.partial(key).join(KEY_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice::<KeyRecord>(&b).ok())
            .is_some_and(|r| r.key == key)
    }

    /// Commit a finished build: write its key file and the instance's record, move it into place
    /// (replacing an existing entry when forced), then remove its `scratch` folders
    /// (checkpoints): they stay until the entry is in place, so a kill at any moment leaves
    /// something to resume from or a complete entry. Temporary files of writes a killed attempt
    /// never finished, and the work lock, are removed first; a build directory whose work lock
    /// a process still holds (one the stage started, which outlived it) is refused, since that
    /// process may still be writing it. Call with the key's lock held.
    pub fn commit(&self, record: &KeyRecord, scratch: &[&str]) -> Result<PathBuf> {
        let partial = self.partial(&record.key);
        let work_lock = partial.join(crate::stages::WORK_LOCK);
        // A program another stage starts meanwhile holds every open descriptor, this lock's
        // too, between its fork and its exec: that lets go within moments. A process the
        // stage left running does not.
        let deadline = std::time::Instant::now() + WORK_LOCK_GRACE;
        while crate::stages::WorkLock::held(&partial) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        if crate::stages::WorkLock::held(&partial) {
            return Err(Error::Usage(format!(
                "not committing {}: a process the stage started is still running and holds its work lock {} (`fuser -v` on that file shows it); the build directory is kept, and the next run builds it once that process has ended",
                partial.display(),
                work_lock.display()
            )));
        }
        remove_temporaries(&partial)?;
        remove_if_present(&work_lock)?;
        if !scratch.is_empty() {
            // Left behind by a kill between the rename and the removal below: finished by
            // `Cache::finish_commit` (run, gc, ls).
            let listed = serde_json::to_vec(scratch).unwrap_or_default();
            write_atomic(&partial.join(SCRATCH_FILE), &listed)?;
        }
        let bytes = serde_json::to_vec_pretty(record).unwrap_or_default();
        // From here on the build is finished ([`Cache::uncommitted`]): a kill leaves it to be
        // committed by the next run as it is.
        write_atomic(&partial.join(KEY_FILE), &bytes)?;
        // The instance's record before the entry appears: a kill at any later moment leaves a
        // record that names the entry (or its build, committed by the next run), so `status`
        // always explains a change against what was built last.
        crate::failpoint::hit("instance-record");
        self.write_record(record)?;
        let entry = self.entry(&record.key);
        if entry.exists() {
            let old = self
                .root
                .join(format!("{}.old-{}", record.key, std::process::id()));
            fs::rename(&entry, &old).map_err(|e| Error::io("cannot replace", &entry, e))?;
            fs::remove_dir_all(&old).map_err(|e| Error::io("cannot remove", &old, e))?;
        }
        crate::failpoint::hit("entry-rename");
        fs::rename(&partial, &entry).map_err(|e| Error::io("cannot move into place", &entry, e))?;
        crate::failpoint::hit("entry-scratch");
        finish_commit(&entry)?;
        Ok(entry)
    }

    /// Finish the commit of entry `key` if a kill interrupted it (its scratch folders are still
    /// there; see [`Cache::commit`]), under the key's lock: when another process holds it (it
    /// is committing or rebuilding the key), that process finishes it, and this does nothing.
    pub fn finish_commit(&self, key: &str) -> Result<()> {
        let entry = self.entry(key);
        // Most entries have nothing to finish: no lock file is made for them.
        if !entry.join(SCRATCH_FILE).is_file() {
            return Ok(());
        }
        let Some(_lock) = self.try_lock(key)? else {
            return Ok(());
        };
        finish_commit(&entry)
    }

    fn lock_path(&self, key: &str) -> PathBuf {
        self.root.join("locks").join(format!("{key}.lock"))
    }

    /// Whether another process (or this one) holds `key`'s build lock.
    fn is_locked(&self, key: &str) -> bool {
        File::options()
            .write(true)
            .open(self.lock_path(key))
            .is_ok_and(|f| f.try_lock().is_err())
    }

    /// Build directories (`<key>.partial/`): each key, its size and whether a run is building
    /// it now (its lock is held); the others are what a failed or killed attempt left.
    pub fn partials(&self) -> Vec<(String, u64, bool)> {
        let mut out = Vec::new();
        let Ok(rd) = fs::read_dir(&self.root) else {
            return out;
        };
        for entry in rd.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            let Some(key) = name.strip_suffix(".partial") else {
                continue;
            };
            out.push((
                key.to_string(),
                dir_size(&entry.path()),
                self.is_locked(key),
            ));
        }
        out.sort();
        out
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
            self.finish_commit(&name)?;
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
    /// dry run, would be) removed with its size. Entries whose lock is held, entries a running
    /// `pipe run` uses (its [`Lease`]) and partial builds a process still writes (their
    /// [`WorkLock`](crate::stages::WorkLock) is held: an orphan of a killed run) are left alone;
    /// so are the builds of live Slurm jobs, which the caller puts in `keep` (their submitter
    /// may have died, and a job holds no lock here). Kept entries whose commit a kill
    /// interrupted are finished.
    pub fn gc(&self, keep: &BTreeSet<String>, dry_run: bool) -> Result<Vec<(PathBuf, u64)>> {
        let mut keep = keep.clone();
        keep.extend(self.leased());
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
            if !is_entry || key.len() != 32 {
                continue;
            }
            if keep.contains(&key) {
                if !dry_run && name == key {
                    self.finish_commit(&key)?;
                }
                continue;
            }
            let writing = name.ends_with(".partial") && crate::stages::WorkLock::held(&path);
            if writing || self.is_locked(&key) {
                continue;
            }
            let size = dir_size(&path);
            if !dry_run {
                fs::remove_dir_all(&path).map_err(|e| Error::io("cannot remove", &path, e))?;
                let _ = fs::remove_file(self.lock_path(&key));
            }
            removed.push((path, size));
        }
        removed.sort();
        Ok(removed)
    }
}

/// How long [`Cache::commit`] waits for a build directory's work lock to be let go.
const WORK_LOCK_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// File name, inside a committing entry, of the list of its scratch folders still to remove.
const SCRATCH_FILE: &str = ".pipe-scratch.json";

/// Remove the scratch folders an entry's commit listed, then the list. What is already gone
/// (removed by the process that finished this commit first) counts as done.
fn finish_commit(entry: &Path) -> Result<()> {
    let list = entry.join(SCRATCH_FILE);
    let Ok(bytes) = fs::read(&list) else {
        return Ok(());
    };
    let folders: Vec<String> = serde_json::from_slice(&bytes).unwrap_or_default();
    for f in folders {
        let dir = entry.join(&f);
        // Only plain relative names: the list is ours, but never follow it out of the entry.
        if f.contains(['/', '\\']) || f.starts_with('.') {
            continue;
        }
        if let Err(e) = fs::remove_dir_all(&dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            return Err(Error::io("cannot remove", &dir, e));
        }
    }
    remove_if_present(&list)
}

/// Remove file `path`; one that is not there is not an error.
fn remove_if_present(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(Error::io("cannot remove", path, e))
        }
        _ => Ok(()),
    }
}

/// Whether `name` is a temporary file of an atomic write (`tempfile`'s `.tmpXXXXXX`).
fn is_temporary(name: &str) -> bool {
    name.strip_prefix(".tmp")
        .is_some_and(|rest| rest.len() == 6 && rest.chars().all(|c| c.is_ascii_alphanumeric()))
}

/// Remove the temporary files of unfinished atomic writes under `dir` (a killed attempt's).
fn remove_temporaries(dir: &Path) -> Result<()> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Ok(());
    };
    for e in rd.flatten() {
        let path = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() => remove_temporaries(&path)?,
            Ok(_) if is_temporary(&e.file_name().to_string_lossy()) => {
                fs::remove_file(&path).map_err(|err| Error::io("cannot remove", &path, err))?
            }
            _ => {}
        }
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interrupted_commit_is_finished_only_under_the_keys_lock() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let cache = Cache {
            root: dir.path().to_path_buf(),
        };
        let key = "0".repeat(32);
        let entry = cache.entry(&key);
        fs::create_dir_all(entry.join("checkpoints")).unwrap_or_else(|e| panic!("{e}"));
        // `gone`: removed meanwhile by whoever finished first; not an error.
        fs::write(entry.join(SCRATCH_FILE), br#"["checkpoints","gone"]"#)
            .unwrap_or_else(|e| panic!("{e}"));
        // Another process commits (or rebuilds) the key: it finishes the commit itself.
        let held = cache.try_lock(&key).ok().flatten();
        assert!(held.is_some());
        cache.finish_commit(&key).unwrap_or_else(|e| panic!("{e}"));
        assert!(entry.join("checkpoints").is_dir() && entry.join(SCRATCH_FILE).is_file());
        drop(held);
        cache.finish_commit(&key).unwrap_or_else(|e| panic!("{e}"));
        assert!(!entry.join("checkpoints").exists() && !entry.join(SCRATCH_FILE).exists());
        cache.finish_commit(&key).unwrap_or_else(|e| panic!("{e}"));
    }
}
