//! Fault injection: `pipe run` killed with SIGKILL (`PIPE_FAILPOINT`, src/failpoint.rs) at each
//! step of writing a cache entry, then run again. After every kill the committed entries hold
//! nothing but what their kind writes; the re-run resumes training from the newest checkpoint
//! and the needle grid from its trial log, and ends with results identical to an uninterrupted
//! run's, value for value (the logs included), and `pipe status` explains every instance.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::sync::OnceLock;

use super::Project;

/// Data, a train stage checkpointing every 2 of its 6 steps, a resumable needle grid, and one
/// instance of every other kind that writes an entry (perplexity, attention, a command, the
/// report), so that every kind's outputs pass through the kills.
const PIPELINE: &str = r#"[pipeline]
name = "faults"
seed = 7

[stages.data]
kind = "data_prep"
source = { synthetic = { documents = 80, max_tokens = 300 } }
split = { valid_documents = 4, valid_min_tokens = 260 }

[stages.base]
kind = "train"
needs = { data = "data" }
model = { hidden_size = 32, num_hidden_layers = 2, num_attention_heads = 2 }
train = { seq_len = 32, batch_size = 4, steps = 6, lr = 3e-3, val_every = 3, checkpoint_every = 2, log_every = 1, val_batches = 2 }

[stages.needle]
kind = "eval_needle"
needs = { model = "base", data = "data" }
tasks = ["passkey"]
lengths = [64, 256]
depths = [0.0, 1.0]
trials = 2

[stages.ppl]
kind = "eval_ppl"
needs = { model = "base", data = "data" }
lengths = [32, 64]
max_documents = 2

[stages.attn]
kind = "attention"
needs = { model = "base", data = "data", reference = "base" }
lengths = [32]
windows = 1

[stages.copy]
kind = "command"
needs = { m = "base" }
args = ["sh", "-c", "cp \"$PIPE_NEED_M/config.json\" out.json"]

[stages.report]
kind = "report"
needs = { ppl = "ppl", needle = "needle", attn = "attn", base = "base" }
title = "faults"
"#;

/// What an uninterrupted run leaves: every results table (as comparable rows), the trained
/// weights, the cache keys.
struct Outcome {
    tables: BTreeMap<String, Vec<String>>,
    /// The bits of every float of every table (wall-clock columns aside): "identical" means
    /// bit for bit, which text alone would not prove.
    floats: BTreeMap<String, Vec<u64>>,
    weights: Vec<u8>,
    entries: Vec<String>,
}

fn outcome(p: &Project) -> Outcome {
    let results = p.path().join("results/faults");
    let (mut tables, mut floats) = (BTreeMap::new(), BTreeMap::new());
    for e in std::fs::read_dir(&results).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name.ends_with(".parquet") && name != "runs.parquet" {
            tables.insert(name.clone(), super::comparable(&e.path()));
            floats.extend(float_bits(&e.path(), &name));
        }
    }
    let base = entry_of(p, "base");
    let weights = std::fs::read(p.cache().join(base).join("model.safetensors"))
        .unwrap_or_else(|e| panic!("base weights: {e}"));
    Outcome {
        tables,
        floats,
        weights,
        entries: p.entries(),
    }
}

/// `table.column` -> the bits of its values, for every float column that is not a wall-clock
/// measurement.
fn float_bits(path: &Path, table: &str) -> BTreeMap<String, Vec<u64>> {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{DataType, Float64Type};
    let (schema, batches) =
        ropelens::results::read_parquet(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut out = BTreeMap::new();
    for (i, f) in schema.fields().iter().enumerate() {
        let n = f.name();
        let clock = n.ends_with("_s") || n.contains("per_s") || n.contains("seconds");
        if f.data_type() != &DataType::Float64 || clock {
            continue;
        }
        let bits: Vec<u64> = batches
            .iter()
            .flat_map(|b| {
                let a = b.column(i).as_primitive::<Float64Type>();
                (0..a.len())
                    // A null as a value no float has here (a NaN payload).
                    .map(|r| {
                        if a.is_valid(r) {
                            a.value(r).to_bits()
                        } else {
                            u64::MAX
                        }
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        out.insert(format!("{table}.{n}"), bits);
    }
    out
}

/// The uninterrupted run, made once for every test here.
fn reference() -> &'static Outcome {
    static REFERENCE: OnceLock<Outcome> = OnceLock::new();
    REFERENCE.get_or_init(|| {
        let p = project();
        p.ok(&["run", "p.toml", "-j1"]);
        outcome(&p)
    })
}

fn project() -> Project {
    let p = Project::new();
    p.write("p.toml", PIPELINE);
    p
}

/// The cache key of `instance`, from its committed entry's key file.
fn entry_of(p: &Project, instance: &str) -> String {
    p.entries()
        .into_iter()
        .find(|k| {
            std::fs::read_to_string(p.cache().join(k).join(".pipe-key.json"))
                .is_ok_and(|t| t.contains(&format!("\"instance\": \"{instance}\"")))
        })
        .unwrap_or_else(|| panic!("no committed entry of `{instance}`"))
}

/// `pipe run` with failpoint `point` (`NAME:N`): `true` when it was killed there, `false` when
/// it ran to a successful end without reaching the point N times.
fn run_until(p: &Project, point: &str) -> bool {
    let out = p
        .command(&["run", "p.toml", "-j1"])
        .env("PIPE_FAILPOINT", point)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let text = super::output_text(&out);
    if out.status.success() {
        return false;
    }
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGKILL),
        "{point}: pipe failed without being killed ({}):\n{text}",
        out.status
    );
    let name = point.split(':').next().unwrap_or_default();
    assert!(text.contains(&format!("failpoint {name}")), "{text}");
    true
}

/// `pipe run` killed at `point` (`NAME:N`).
fn killed_at(p: &Project, point: &str) {
    assert!(run_until(p, point), "{point}: pipe was not killed");
}

/// Files a committed entry must never hold: temporaries of unfinished writes, the commit's own
/// bookkeeping, checkpoints (a train kind's scratch) and work locks.
fn assert_entries_clean(p: &Project, when: &str) {
    fn walk(dir: &Path, bad: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if name.starts_with(".tmp")
                || name == ".pipe-scratch.json"
                || name == ".pipe-work.lock"
                || name == "checkpoints"
            {
                bad.push(e.path().display().to_string());
            }
            if e.path().is_dir() {
                walk(&e.path(), bad);
            }
        }
    }
    let mut bad = Vec::new();
    for k in p.entries() {
        walk(&p.cache().join(k), &mut bad);
    }
    assert!(
        bad.is_empty(),
        "{when}: stray files in committed entries: {bad:?}"
    );
}

/// Run to the end after a kill; checks what every re-run must give. Returns the log.
fn resume(p: &Project, point: &str) -> String {
    // Between the rename and the removal of the scratch folders the entry still holds them:
    // that is what the next run finishes.
    if !point.starts_with("entry-scratch") {
        assert_entries_clean(p, &format!("after the kill at {point}"));
    }
    let text = p.ok(&["run", "p.toml", "-j1"]);
    assert_entries_clean(p, &format!("after the re-run of {point}"));
    let partials = p.partials();
    assert!(partials.is_empty(), "{point}: partials left: {partials:?}");
    let got = outcome(p);
    let want = reference();
    assert_eq!(got.entries, want.entries, "{point}: other keys");
    assert!(got.weights == want.weights, "{point}: the weights differ");
    for (name, rows) in &want.tables {
        assert_eq!(
            got.tables.get(name),
            Some(rows),
            "{point}: {name} differs from the uninterrupted run's"
        );
    }
    assert_eq!(got.tables.len(), want.tables.len(), "{point}: other tables");
    for (column, bits) in &want.floats {
        assert!(
            got.floats.get(column) == Some(bits),
            "{point}: {column} is not bit-identical to the uninterrupted run's"
        );
    }
    assert!(want.floats.contains_key("train_log.parquet.loss"));
    assert!(want.floats.contains_key("val_log.parquet.val_loss"));
    let status = p.ok(&["status", "p.toml"]);
    assert!(
        status.contains("7 cached, 0 to run, 0 stale"),
        "{point}: {status}"
    );
    text
}

/// The `resumed_from` of the base's train.json.
fn resumed_from(p: &Project) -> Option<u64> {
    let summary = p.cache().join(entry_of(p, "base")).join("train.json");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&summary).unwrap_or_default())
        .unwrap_or_else(|e| panic!("{}: {e}", summary.display()));
    v["resumed_from"].as_u64()
}

#[test]
fn a_kill_during_training_resumes_from_the_newest_checkpoint_with_identical_logs() {
    // Killed after step 3 (checkpoint 2 in place), while checkpoint 4 is written but not renamed
    // (the 2nd checkpoint), and after the final checkpoint is in place but checkpoint 4 is not
    // yet removed. train_log and val_log restored from state.json must be bit-identical to an
    // uninterrupted run's: `resume` compares every value.
    for (point, from) in [
        ("train-step:3", 2),
        ("checkpoint-rename:2", 2),
        ("checkpoint-prune:3", 6),
    ] {
        let p = project();
        killed_at(&p, point);
        resume(&p, point);
        assert_eq!(resumed_from(&p), Some(from), "{point}");
    }
}

/// The re-run built the needle grid again (it was killed during or before it) and nothing the
/// model depends on: the evaluations that had not committed yet may follow it, in any order.
fn assert_only_evaluations_rebuilt(text: &str) {
    let built = super::built(text);
    assert!(built.iter().any(|b| b == "needle"), "{text}");
    assert!(
        built
            .iter()
            .all(|b| ["needle", "ppl", "attn", "copy", "report"].contains(&b.as_str())),
        "{text}"
    );
}

#[test]
fn a_kill_during_the_needle_grid_resumes_from_its_trial_log_with_identical_rows() {
    let p = project();
    killed_at(&p, "needle-trial:3");
    let partial = p
        .partials()
        .pop()
        .unwrap_or_else(|| panic!("no partial needle build"));
    let log = std::fs::read_to_string(partial.join("needle_trials.jsonl")).unwrap_or_default();
    assert_eq!(log.lines().count(), 3, "{log}");
    let text = resume(&p, "needle-trial:3");
    assert_only_evaluations_rebuilt(&text);
}

#[test]
fn a_kill_around_the_entry_rename_loses_nothing_and_leaves_nothing() {
    // Entries commit in order data, base, needle: the 2nd of each point is the base's.
    // Before the rename: the base's build had finished, and the re-run commits it as it is
    // (before, it trained again from its final checkpoint).
    let p = project();
    killed_at(&p, "entry-rename:2");
    assert_eq!(p.entries().len(), 1, "only data is committed");
    let text = resume(&p, "entry-rename:2");
    assert_only_evaluations_rebuilt(&text);
    assert!(
        text.contains("committed base (built by an earlier run, stopped before committing it)"),
        "{text}"
    );
    assert_eq!(
        resumed_from(&p),
        None,
        "the finished build was not run again"
    );

    // In place, its checkpoints not yet removed: `status` leaves them (planning changes no
    // entry), the next run finishes the commit.
    let p = project();
    killed_at(&p, "entry-scratch:2");
    let base = p.cache().join(entry_of(&p, "base"));
    assert!(base.join("checkpoints").is_dir());
    p.ok(&["status", "p.toml"]);
    p.ok(&["run", "p.toml", "--dry-run"]);
    assert!(
        base.join("checkpoints").is_dir() && base.join(".pipe-scratch.json").is_file(),
        "status changed the cache"
    );
    let text = resume(&p, "entry-scratch:2");
    assert_only_evaluations_rebuilt(&text);
}

/// The `status` line of instance `name`.
fn status_line(status: &str, name: &str) -> String {
    status
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(name))
        .unwrap_or_else(|| panic!("no `{name}` in\n{status}"))
        .to_string()
}

#[test]
fn the_instance_record_is_part_of_the_commit() {
    // Killed before the record: nothing of the base is committed, `status` says its finished
    // build awaits its commit (not `new`), and the re-run commits it without training again.
    let p = project();
    killed_at(&p, "instance-record:2");
    assert!(!p.cache().join("instances/faults/base.json").exists());
    assert_eq!(p.entries().len(), 1, "only data is committed");
    let line = status_line(&p.ok(&["status", "p.toml"]), "base");
    assert!(
        line.contains("(uncommitted: a run was stopped while committing it)"),
        "{line}"
    );
    let text = resume(&p, "instance-record:2");
    assert_only_evaluations_rebuilt(&text);

    // Killed at any later moment of the commit, the record names the base's entry: with a
    // changed parameter `status` says what changed (never `new`), and without one it says
    // why the base must be committed (or that it is cached).
    for (point, unchanged) in [
        (
            "entry-rename:2",
            "(uncommitted: a run was stopped while committing it)",
        ),
        ("entry-scratch:2", "cached"),
    ] {
        let p = project();
        killed_at(&p, point);
        assert!(
            p.cache().join("instances/faults/base.json").is_file(),
            "{point}"
        );
        let changed = p.ok(&["status", "p.toml", "--set", "stages.base.train.lr=0.001"]);
        let line = status_line(&changed, "base");
        assert!(
            line.starts_with("stale") && line.contains("lr"),
            "{point}: {line}"
        );
        let line = status_line(&p.ok(&["status", "p.toml"]), "base");
        assert!(line.contains(unchanged), "{point}: {line}");
    }
}

#[test]
fn a_kill_at_any_atomic_write_or_while_publishing_results_loses_nothing() {
    // Every third atomic write (stage outputs, per-instance tables, key files, instance
    // records, the gathered tables, runs.parquet, run.json) until a run reaches its end
    // without being killed, which must then equal the uninterrupted run too.
    let mut kills = 0;
    for n in (1..).step_by(3) {
        let point = format!("atomic-write:{n}");
        let p = project();
        let killed = run_until(&p, &point);
        resume(&p, &point);
        if !killed {
            break;
        }
        kills += 1;
    }
    assert!(kills >= 5, "only {kills} atomic writes were killed");
    // Between gathered tables: the report stage gathers its inputs the same way (inside its
    // build, so a kill there rebuilds only the report), then the runner gathers the results.
    // Every second point until a run is no longer killed.
    let mut kills = 0;
    for n in (1..).step_by(2) {
        let point = format!("results-publish:{n}");
        let p = project();
        let killed = run_until(&p, &point);
        let text = resume(&p, &point);
        let built = super::built(&text);
        assert!(built.iter().all(|b| b == "report"), "{point}: {text}");
        if !killed {
            break;
        }
        kills += 1;
    }
    assert!(kills >= 5, "only {kills} kills while publishing");
}

#[test]
fn a_model_keeps_its_tokenizer_when_the_data_entry_loses_it_during_training() {
    // Before: the train stage copied the data's tokenizer.json after training, and skipped the
    // copy silently when the file had gone meanwhile, committing a model without a tokenizer.
    let p = project();
    let mut child = p
        .command(&["run", "p.toml", "-j1", "--stage", "base"])
        .env("PIPE_FAILPOINT", "train-step:sleep=500")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let t0 = std::time::Instant::now();
    let training = || p.partials().iter().any(|d| d.join("checkpoints").is_dir());
    while !training() {
        assert!(t0.elapsed().as_secs() < 60, "training never started");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let tok = p.cache().join(entry_of(&p, "data")).join("tokenizer.json");
    let bytes = std::fs::read(&tok).unwrap_or_else(|e| panic!("{e}"));
    std::fs::remove_file(&tok).unwrap_or_else(|e| panic!("{e}"));
    let status = child.wait().unwrap_or_else(|e| panic!("{e}"));
    assert!(status.success());
    let copied = std::fs::read(p.cache().join(entry_of(&p, "base")).join("tokenizer.json"));
    assert!(
        copied.is_ok_and(|c| c == bytes),
        "the base lost its tokenizer"
    );
}
