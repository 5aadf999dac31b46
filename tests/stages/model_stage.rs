//! `kind = "model"`: importing a Hugging Face checkpoint directory into the cache.

use std::path::{Path, PathBuf};

use crate::runner::{HEAD, Project};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hf")
        .join(name)
}

/// Copy the fixture checkpoint (config.json, model.safetensors) into the project as `ckpt/`.
fn checkpoint_in(p: &Project) -> PathBuf {
    let dst = p.path().join("ckpt");
    std::fs::create_dir_all(&dst).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture("yarn").join(f), dst.join(f)).unwrap();
    }
    dst
}

fn cache_entries(p: &Project) -> Vec<PathBuf> {
    std::fs::read_dir(p.cache())
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.join("model.safetensors").is_file())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_checkpoint_imports_loads_and_is_cached_by_content() {
    let p = Project::new();
    let ckpt = checkpoint_in(&p);
    let file = p.write(
        "m.toml",
        &format!("{HEAD}[stages.m]\nkind = \"model\"\npath = \"ckpt\"\n"),
    );
    let file = file.to_str().unwrap();
    p.ok(&["run", file]);
    let entries = cache_entries(&p);
    assert_eq!(entries.len(), 1, "{entries:?}");
    // The imported copy loads through the same loader as the original, with the same config.
    let dev = ropelens::device::device("cpu").unwrap();
    let orig = ropelens::model::load_llama(&ckpt, &dev).unwrap();
    let copy = ropelens::model::load_llama(&entries[0], &dev).unwrap();
    assert_eq!(orig.config(), copy.config());

    // Touching the checkpoint rebuilds nothing; changing a weight file re-imports.
    let status = p.ok(&["status", file]);
    assert!(status.contains("cached"), "{status}");
    let weights = ckpt.join("model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes).unwrap();
    assert!(p.ok(&["status", file]).contains("cached"));
    let mut changed = bytes.clone();
    let last = changed.len() - 1;
    changed[last] ^= 1;
    std::fs::write(&weights, &changed).unwrap();
    let status = p.ok(&["status", file]);
    assert!(status.contains("stale"), "{status}");
}

#[test]
fn a_missing_or_broken_checkpoint_fails_naming_the_directory() {
    let p = Project::new();
    let file = p.write(
        "m.toml",
        &format!("{HEAD}[stages.m]\nkind = \"model\"\npath = \"nowhere\"\n"),
    );
    let err = p.fail(&["run", file.to_str().unwrap()]);
    assert!(err.contains("nowhere"), "{err}");

    // A config that does not fit the weights: the message names the tensor and both shapes.
    let ckpt = checkpoint_in(&p);
    let cfg = std::fs::read_to_string(ckpt.join("config.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&cfg).unwrap();
    v["intermediate_size"] = serde_json::json!(999);
    std::fs::write(ckpt.join("config.json"), v.to_string()).unwrap();
    let file = p.write(
        "m2.toml",
        &format!("{HEAD}[stages.m]\nkind = \"model\"\npath = \"ckpt\"\n"),
    );
    let err = p.fail(&["run", file.to_str().unwrap()]);
    assert!(err.contains("999"), "{err}");
    assert!(err.contains("mlp"), "{err}");
    assert!(
        cache_entries(&p).is_empty(),
        "a failed import left a cache entry"
    );
}

#[test]
fn only_the_checkpoint_files_are_part_of_the_key() {
    let p = Project::new();
    let ckpt = checkpoint_in(&p);
    std::fs::write(ckpt.join("tokenizer.json"), r#"{"v": 1}"#).unwrap();
    let file = p.write(
        "m.toml",
        &format!("{HEAD}[stages.m]\nkind = \"model\"\npath = \"ckpt\"\n"),
    );
    let file = file.to_str().unwrap();
    p.ok(&["run", file]);
    // What a hub download or clone holds besides the model is not part of the key.
    std::fs::create_dir_all(ckpt.join(".git")).unwrap();
    std::fs::write(ckpt.join(".git/index"), "x").unwrap();
    std::fs::write(ckpt.join("pytorch_model.bin"), "the weights again").unwrap();
    std::fs::write(ckpt.join("README.md"), "# a model").unwrap();
    let status = p.ok(&["status", file]);
    assert!(status.contains("cached"), "{status}");
    std::fs::write(ckpt.join(".git/index"), "y").unwrap();
    assert!(p.ok(&["status", file]).contains("cached"));
    // The tokenizer is imported with the model: editing it is a change, named by its file.
    std::fs::write(ckpt.join("tokenizer.json"), r#"{"v": 2}"#).unwrap();
    let status = p.ok(&["status", file]);
    assert!(status.contains("stale"), "{status}");
    assert!(status.contains("ckpt/tokenizer.json"), "{status}");
}
