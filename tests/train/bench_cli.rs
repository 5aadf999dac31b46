//! `pipe bench train`: its flags are checked before anything runs, and it runs on a tiny shape
//! (no time is asserted: the figures depend on the machine).

use crate::runner::Project;

#[test]
fn bench_train_refuses_bad_shapes_naming_the_flag() {
    let p = Project::new();
    for (args, expected) in [
        (&["--batch", "0"][..], "--batch must be at least 1"),
        (&["--shards", "0"][..], "--shards must be at least 1"),
        (&["--steps", "0"][..], "--steps must be at least 1"),
        (&["--ffn", "0"][..], "--ffn must be at least 1"),
        (
            &["--hidden", "100", "--heads", "3"][..],
            "--hidden 100 must be --heads 3 times an even head width",
        ),
        (
            &["--hidden", "12", "--heads", "4"][..],
            "--hidden 12 must be --heads 4 times an even head width",
        ),
        (&["--device", "tpu"][..], "unknown device `tpu`"),
    ] {
        let mut full = vec!["bench", "train"];
        full.extend_from_slice(args);
        let err = p.fail(&full);
        assert!(err.contains(expected), "{args:?}: {err}");
    }
    // clap's own checks: a value that is not a number.
    let err = p.fail(&["bench", "train", "--hidden", "wide"]);
    assert!(err.contains("invalid value 'wide' for '--hidden"), "{err}");
}

#[test]
fn bench_train_runs_a_tiny_shape_and_reports_it() {
    let p = Project::new();
    let out = p.ok(&[
        "bench",
        "train",
        "--hidden",
        "16",
        "--layers",
        "1",
        "--heads",
        "2",
        "--vocab",
        "64",
        "--seq-len",
        "8",
        "--batch",
        "4",
        "--steps",
        "2",
    ]);
    let line = out
        .lines()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON line in:\n{out}"));
    let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    for (key, want) in [
        ("hidden", 16),
        ("layers", 1),
        ("heads", 2),
        ("ffn", 64),
        ("vocab", 64),
        ("batch", 4),
        ("seq_len", 8),
        ("shards", 2),
        ("steps", 2),
    ] {
        assert_eq!(v[key], want, "{key} in {line}");
    }
    // 64 x 16 embeddings and head, per layer 4 x 16 x 16 attention + 3 x 16 x 64 MLP + 2 x 16
    // norms, and the final norm.
    let params = 2 * 64 * 16 + (4 * 16 * 16 + 3 * 16 * 64 + 2 * 16) + 16;
    assert_eq!(v["params"], params, "{line}");
    for key in ["step_s", "tokens_per_s", "peak_rss_mib"] {
        let x = v[key].as_f64().unwrap_or_else(|| panic!("{key} in {line}"));
        assert!(x > 0.0 && x.is_finite(), "{key} = {x} in {line}");
    }
    // Timed between the loop's own step reports: a step costs CPU, and tokens/s is the step's
    // tokens over its wall time (printed to whole tokens).
    let cpu = v["step_cpu_s"].as_f64().unwrap_or(-1.0);
    assert!(cpu > 0.0 && cpu.is_finite(), "{line}");
    let step_s = v["step_s"].as_f64().unwrap_or(0.0);
    let tps = v["tokens_per_s"].as_f64().unwrap_or(0.0);
    assert!((tps - 4.0 * 8.0 / step_s).abs() <= 0.5, "{line}");
}

/// `pipe bench eval` on a tiny checkpoint: one JSON line per length for each work, a decode
/// time only for `generate`, and a clear error for a window too short to score.
#[test]
fn bench_eval_runs_each_work_on_a_tiny_checkpoint() {
    let p = Project::new();
    let model = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf/default");
    let model = model.to_str().expect("utf-8 path");
    for (work, decodes) in [("ppl", false), ("attention", false), ("generate", true)] {
        let out = p.ok(&[
            "bench",
            "eval",
            "--model",
            model,
            "--lengths",
            "8",
            "12",
            "--work",
            work,
            "--new-tokens",
            "3",
        ]);
        let lines: Vec<serde_json::Value> = out
            .lines()
            .filter(|l| l.starts_with("{\"impl\""))
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        assert_eq!(lines.len(), 2, "{work}: {out}");
        for (v, length) in lines.iter().zip([8, 12]) {
            assert_eq!(v["length"], length, "{work}: {v}");
            // `seconds` is rounded to milliseconds; `all_s` holds the raw times.
            assert!(
                v["all_s"][0].as_f64().is_some_and(|s| s > 0.0),
                "{work}: {v}"
            );
            assert_eq!(v["decode_token_s"].is_number(), decodes, "{work}: {v}");
        }
    }
    let err = p.fail(&["bench", "eval", "--model", model, "--lengths", "1"]);
    assert!(err.contains("bench length 1: at least 2 tokens"), "{err}");
}
