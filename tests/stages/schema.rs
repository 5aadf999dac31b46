//! Every shipped pipeline file is valid against the shipped JSON schema
//! (schemas/pipeline.schema.json, what an editor with Taplo checks it against), by a JSON Schema
//! validator independent of `pipe` (boon). `pipe validate` is the other half
//! (`every_pipeline_in_the_repository_validates`): the schema cannot see the `"<required>"`
//! marker, which keeps a file schema-valid while `pipe` still refuses it until the value is set.

use std::path::Path;

/// The compiled schema and its index.
fn schema() -> (boon::Schemas, boon::SchemaIndex) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/pipeline.schema.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut schemas = boon::Schemas::new();
    let mut compiler = boon::Compiler::new();
    let url = "file:///pipeline.schema.json";
    compiler.add_resource(url, json).unwrap();
    let index = compiler
        .compile(url, &mut schemas)
        .unwrap_or_else(|e| panic!("{e:#}"));
    (schemas, index)
}

/// The schema's complaints about a pipeline file's text; empty when it is valid.
fn schema_errors(schemas: &boon::Schemas, index: boon::SchemaIndex, toml_text: &str) -> String {
    let value: serde_json::Value = toml::from_str(toml_text).unwrap();
    match schemas.validate(&value, index) {
        Ok(()) => String::new(),
        Err(e) => format!("{e}"),
    }
}

#[test]
fn every_shipped_pipeline_is_valid_against_the_schema() {
    let (schemas, index) = schema();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap().flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let errors = schema_errors(&schemas, index, &text);
        assert!(errors.is_empty(), "{}: {errors}", path.display());
        seen += 1;
    }
    assert_eq!(
        seen, 4,
        "the pipelines/ directory changed: update this count"
    );
}

#[test]
fn the_schema_check_refuses_a_bad_copy() {
    let (schemas, index) = schema();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/real-model.toml");
    let text = std::fs::read_to_string(path).unwrap();
    assert_eq!(schema_errors(&schemas, index, &text), "");
    // A required key left out (the text source's `path`), a value of the wrong type and an
    // unknown key: each is a schema error.
    let missing = text.replacen(
        "path = \"<required>\"                 # --set stages.data.source.text.path=/path/to/corpus",
        "separator = \"\\n\"",
        1,
    );
    assert_ne!(missing, text);
    let e = schema_errors(&schemas, index, &missing);
    assert!(e.contains("path"), "{e}");
    let wrong_type = text.replacen("max_documents = 4", "max_documents = \"four\"", 1);
    assert_ne!(wrong_type, text);
    assert!(!schema_errors(&schemas, index, &wrong_type).is_empty());
    let unknown = text.replacen("trials = 2", "trials = 2\ntrails = 2", 1);
    assert_ne!(unknown, text);
    assert!(!schema_errors(&schemas, index, &unknown).is_empty());
}
