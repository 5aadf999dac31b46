//! The bad-input corpus: every case in `cases.toml` is a pipeline file (and/or `--set`
//! arguments) that `pipe` must refuse with a clear message. For each case the test asserts:
//!
//! - a non-zero exit, and not a crash: no exit 101 (a Rust panic), no signal (an abort is 134,
//!   SIGABRT), no `panicked` or backtrace in the output;
//! - no silent success: the command fails;
//! - the message names the key (`` `stages.x.y` ``) or the file the case declares, and the
//!   line where the value comes from the pipeline file (the line marked `# <-`) or from a
//!   `--set` argument (`--set:N:`);
//! - for parse-time cases, that `pipe validate` and `pipe run --dry-run` both refuse it, and
//!   that nothing ran (no cache directory was created).
//!
//! Run-time cases (`on = "run"`) build real instances on tiny fixtures (the checkpoint of
//! tests/fixtures/hf/default with a word-level tokenizer, a small text corpus).
//!
//! The cases live in a data file so that adding one is adding a table; the file is read when the
//! test runs. Every failing case is listed together at the end.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;

use serde::Deserialize;

use crate::runner::Project;

/// The corpus file.
const CASES: &str = "tests/bad_input/cases.toml";

/// Marks the line of a case's text whose line number the message must name.
const LINE_MARK: &str = "# <-";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Corpus {
    /// Named pipeline prefixes a case can start from (`base = "train"`).
    templates: BTreeMap<String, String>,
    case: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    /// What the case is about (unique).
    name: String,
    /// A template the text is appended to; default `head` (the `[pipeline]` table).
    #[serde(default = "head")]
    base: String,
    /// Pipeline text appended to the template. A line ending in `# <-` is the line the message
    /// must name.
    #[serde(default)]
    text: String,
    /// `--set` arguments.
    #[serde(default)]
    set: Vec<String>,
    /// `validate` (default: `pipe validate` and `pipe run --dry-run`), `dry_run` (only
    /// `pipe run --dry-run`: the files a pipeline reads are checked when it is planned, not by
    /// `pipe validate`) or `run` (`pipe run`).
    #[serde(default)]
    on: On,
    /// The dotted key the message must name in backticks.
    #[serde(default)]
    key: Option<String>,
    /// A file name (or path fragment) the message must name instead of, or beside, a key.
    #[serde(default)]
    file: Option<String>,
    /// Further fragments the message must hold.
    #[serde(default)]
    expect: Vec<String>,
    /// Fragments the message must not hold (e.g. the cache's path).
    #[serde(default)]
    reject: Vec<String>,
    /// Fixtures to change after the project gets tiny-llama/ (a checkpoint with tokenizer.json)
    /// and corpus/ (24 text files): `nan-weights` (tiny-llama/ with NaN weights),
    /// `bad-tokenizer` (tiny-llama/ whose tokenizer.json is not JSON), `latin1`
    /// (bad/latin1.txt, not UTF-8).
    #[serde(default)]
    setup: Vec<String>,
    /// Extra files, name -> content.
    #[serde(default)]
    files: BTreeMap<String, String>,
}

fn head() -> String {
    "head".into()
}

#[derive(Debug, Default, Deserialize, PartialEq, Eq, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum On {
    #[default]
    Validate,
    DryRun,
    Run,
}

fn load() -> Corpus {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(CASES);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{CASES}: {e}"));
    toml::from_str(&text).unwrap_or_else(|e| panic!("{CASES}: {e}"))
}

/// The text of an output, both streams.
fn text_of(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// What is wrong with `pipe`'s answer to a case; empty when it is right.
fn judge(case: &Case, what: &str, out: &Output, line: Option<usize>) -> Vec<String> {
    let msg = text_of(out);
    let mut wrong = Vec::new();
    match out.status.code() {
        None => wrong.push(format!("{what}: killed by a signal ({:?})", out.status)),
        Some(0) => wrong.push(format!("{what}: silent success (exit 0)")),
        Some(101) => wrong.push(format!("{what}: exit 101 (a panic)")),
        Some(134) => wrong.push(format!("{what}: exit 134 (abort)")),
        Some(_) => {}
    }
    for crash in ["panicked", "stack backtrace", "RUST_BACKTRACE"] {
        if msg.contains(crash) {
            wrong.push(format!("{what}: output holds `{crash}`"));
        }
    }
    if let Some(key) = &case.key
        && !msg.contains(&format!("`{key}`"))
    {
        wrong.push(format!("{what}: does not name the key `{key}`"));
    }
    if let Some(file) = &case.file
        && !msg.contains(file.as_str())
    {
        wrong.push(format!("{what}: does not name the file {file}"));
    }
    if let Some(line) = line
        && !msg.contains(&format!("p.toml:{line}:"))
    {
        wrong.push(format!("{what}: does not name p.toml:{line}"));
    }
    for e in &case.expect {
        if !msg.contains(e.as_str()) {
            wrong.push(format!("{what}: lacks `{e}`"));
        }
    }
    for r in &case.reject {
        if msg.contains(r.as_str()) {
            wrong.push(format!("{what}: holds `{r}`"));
        }
    }
    if !wrong.is_empty() {
        wrong.push(format!("--- output ---\n{}", msg.trim_end()));
    }
    wrong
}

fn setup(p: &Project, what: &str) {
    match what {
        "checkpoint" => {
            crate::stages::real_model::checkpoint_in(p);
        }
        "corpus" => {
            crate::stages::real_model::corpus_in(p);
        }
        "nan-weights" => {
            let dir = crate::stages::real_model::checkpoint_in(p);
            poison_weights(&dir.join("model.safetensors"));
        }
        "latin1" => {
            p.write("bad/latin1.txt", "");
            std::fs::write(p.path().join("bad/latin1.txt"), b"caf\xe9 au lait").unwrap();
        }
        "bad-tokenizer" => {
            let dir = crate::stages::real_model::checkpoint_in(p);
            std::fs::write(dir.join("tokenizer.json"), "{ not json").unwrap();
        }
        other => panic!("unknown setup `{other}`"),
    }
}

/// Rewrites every f32 of the final norm's weight to NaN: the checkpoint still loads (shapes
/// and dtypes are right) and every logit becomes NaN.
fn poison_weights(path: &Path) {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let entry = &header["model.norm.weight"];
    assert_eq!(entry["dtype"], "F32", "{header}");
    let begin = 8 + n + entry["data_offsets"][0].as_u64().unwrap() as usize;
    let end = 8 + n + entry["data_offsets"][1].as_u64().unwrap() as usize;
    let mut bytes = bytes;
    for chunk in bytes[begin..end].chunks_exact_mut(4) {
        chunk.copy_from_slice(&f32::NAN.to_le_bytes());
    }
    std::fs::write(path, bytes).unwrap();
}

/// Runs one case; what is wrong with the answers.
fn check(corpus: &Corpus, case: &Case) -> Vec<String> {
    let Some(template) = corpus.templates.get(&case.base) else {
        return vec![format!("unknown template `{}`", case.base)];
    };
    let file = format!("{template}{}", case.text);
    let line = file
        .lines()
        .position(|l| l.trim_end().ends_with(LINE_MARK))
        .map(|i| i + 1);
    let p = Project::new();
    p.write("p.toml", &file);
    for s in ["checkpoint", "corpus"]
        .into_iter()
        .chain(case.setup.iter().map(String::as_str))
    {
        setup(&p, s);
    }
    for (name, content) in &case.files {
        p.write(name, content);
    }
    let sets: Vec<&str> = case
        .set
        .iter()
        .flat_map(|s| ["--set", s.as_str()])
        .collect();
    let mut wrong = Vec::new();
    let commands: Vec<(&str, Vec<&str>)> = match case.on {
        On::Validate => vec![
            ("validate", vec!["validate", "p.toml"]),
            ("run --dry-run", vec!["run", "p.toml", "--dry-run"]),
        ],
        On::DryRun => vec![("run --dry-run", vec!["run", "p.toml", "--dry-run"])],
        On::Run => vec![("run", vec!["run", "p.toml", "-j", "1"])],
    };
    for (what, mut args) in commands {
        args.extend_from_slice(&sets);
        let out = p.pipe(&args);
        wrong.extend(judge(case, what, &out, line));
        if case.on != On::Run && p.cache().exists() {
            wrong.push(format!("{what}: created the cache: something ran"));
        }
    }
    wrong
}

#[test]
fn every_bad_input_is_refused_clearly() {
    let corpus = load();
    let mut names = std::collections::BTreeSet::new();
    for case in &corpus.case {
        assert!(names.insert(&case.name), "two cases named `{}`", case.name);
        assert!(
            case.key.is_some() || case.file.is_some(),
            "case `{}` names neither a key nor a file",
            case.name
        );
    }
    assert!(
        corpus.case.len() >= 150,
        "the corpus has {} cases",
        corpus.case.len()
    );
    // Every template is valid by itself, so that each case fails for its own reason.
    for (name, text) in &corpus.templates {
        let p = Project::new();
        crate::stages::real_model::checkpoint_in(&p);
        crate::stages::real_model::corpus_in(&p);
        p.write("p.toml", text);
        let out = p.pipe(&["validate", "p.toml"]);
        assert!(
            out.status.success(),
            "template `{name}`:\n{}",
            text_of(&out)
        );
    }
    // Cases are independent processes in their own directories: run them on a few threads.
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failures = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(case) = corpus.case.get(i) else {
                        break;
                    };
                    let wrong = check(&corpus, case);
                    if !wrong.is_empty() {
                        failures.lock().unwrap().push(format!(
                            "case `{}`:\n{}",
                            case.name,
                            wrong.join("\n")
                        ));
                    }
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    assert!(
        failures.is_empty(),
        "{} of {} cases are wrong:\n\n{}",
        failures.len(),
        corpus.case.len(),
        failures.join("\n\n")
    );
}

/// The harness itself can fail: a case `pipe` accepts, and one whose message lacks the key it
/// declares, are both reported.
#[test]
fn the_corpus_harness_catches_success_and_a_missing_key() {
    let corpus: Corpus = toml::from_str(
        r#"
        [templates]
        head = "[pipeline]\nname = \"t\"\n"
        [[case]]
        name = "fine"
        text = "[stages.a]\nkind = \"command\"\nargs = [\"true\"]\n"
        key = "stages.a.args"
        [[case]]
        name = "wrong key"
        text = "[stages.a]\nkind = \"command\"\nargs = []  # <-\n"
        key = "stages.a.argz"
        "#,
    )
    .unwrap();
    let fine = check(&corpus, &corpus.case[0]);
    assert!(
        fine.iter().any(|w| w.contains("silent success")),
        "{fine:?}"
    );
    let wrong = check(&corpus, &corpus.case[1]);
    assert!(
        wrong.iter().any(|w| w.contains("does not name the key")),
        "{wrong:?}"
    );
    assert!(
        !wrong.iter().any(|w| w.contains("does not name p.toml")),
        "{wrong:?}"
    );
}
