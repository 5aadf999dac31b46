//! The JSON schema of pipeline files, generated from the Rust parameter types.
//!
//! Each registered stage kind contributes one stage schema: its parameter struct (from
//! `schemars`) plus the common keys `kind`, `needs`, `matrix` and `seed`; a new kind appears
//! here as soon as it is in the registry. `schemas/pipeline.schema.json` is this output, and a
//! test keeps the two equal. Editors (Taplo, Even Better TOML) read it through a `#:schema` line.

use serde_json::{Value, json};

use super::spec::Header;
use crate::stages::{KINDS, Needs, ResourceRequest};

/// The committed schema's path, relative to the crate root.
pub const SCHEMA_PATH: &str = "schemas/pipeline.schema.json";

fn needs_schema(needs: Needs) -> Value {
    let reference = json!({
        "type": "string",
        "pattern": r"^[^@\[\],]+(\[\*\]|@.+)?$",
        "description": "`stage` (one instance; fans out over a matrix stage), `stage[*]` (gather every instance) or `stage@instance-suffix`."
    });
    match needs {
        Needs::Any => json!({
            "type": "object",
            "description": "Need name -> stage reference.",
            "additionalProperties": reference,
        }),
        Needs::Fixed(decls) => {
            let mut props = serde_json::Map::new();
            for d in decls {
                let mut r = reference.clone();
                let what = match (d.required, d.gather) {
                    (true, false) => "Required; one instance.",
                    (true, true) => "Required; may gather several instances (`stage[*]`).",
                    (false, false) => "Optional; one instance.",
                    (false, true) => "Optional; may gather several instances (`stage[*]`).",
                };
                r["description"] = json!(what);
                props.insert(d.name.to_string(), r);
            }
            let required: Vec<&str> = decls
                .iter()
                .filter(|d| d.required)
                .map(|d| d.name)
                .collect();
            let mut s = json!({
                "type": "object",
                "description": "Need name -> stage reference.",
                "properties": props,
                "additionalProperties": false,
            });
            if !required.is_empty() {
                s["required"] = json!(required);
            }
            s
        }
    }
}

/// The schema of a whole pipeline file.
pub fn pipeline_schema() -> Value {
    let mut generator = schemars::generate::SchemaSettings::draft07().into_generator();
    let header = generator.subschema_for::<Header>();
    let mut variants = Vec::new();
    let mut stage_defs = serde_json::Map::new();
    for kind in KINDS {
        let params = kind.params_schema(&mut generator);
        // Inline the parameter struct so the common keys can join its properties.
        let mut stage = match params.as_value().get("$ref").and_then(Value::as_str) {
            Some(r) => {
                let name = r.rsplit('/').next().unwrap_or_default().to_string();
                generator
                    .definitions()
                    .get(&name)
                    .cloned()
                    .unwrap_or_else(|| json!({}))
            }
            None => params.to_value(),
        };
        let param_names: Vec<String> = stage
            .get("properties")
            .and_then(Value::as_object)
            .map(|p| p.keys().cloned().collect())
            .unwrap_or_default();
        let mut axis_names = param_names.clone();
        axis_names.push("seed".into());
        let obj = stage.as_object_mut();
        let Some(obj) = obj else { continue };
        obj.insert("type".into(), json!("object"));
        obj.insert("additionalProperties".into(), json!(false));
        let props = obj.entry("properties").or_insert_with(|| json!({}));
        props["kind"] = json!({ "const": kind.kind(), "description": "The stage kind." });
        props["needs"] = needs_schema(kind.needs());
        props["matrix"] = json!({
            "type": "object",
            "description": "Parameter (or `seed`) -> list of values; one instance per value, several keys give their product. Table entries (`[[stages.X.matrix.KEY]]`) may carry a `name`.",
            "propertyNames": { "enum": axis_names },
            "additionalProperties": { "type": "array", "minItems": 1 },
        });
        props["resources"] = generator.subschema_for::<ResourceRequest>().to_value();
        props["seed"] = json!({
            "type": "integer",
            "minimum": 0,
            "description": "Seed of this stage's instances (overrides `pipeline.seed`).",
        });
        let mut required: Vec<Value> = obj
            .get("required")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        required.insert(0, json!("kind"));
        obj.insert("required".into(), Value::Array(required));
        let def = format!("stage_{}", kind.kind());
        variants.push(json!({ "$ref": format!("#/definitions/{def}") }));
        stage_defs.insert(def, stage);
    }
    let mut definitions = generator.take_definitions(true);
    definitions.extend(stage_defs);
    json!({
        "$schema": "http://json-schema.org/draft-07/schema#",
        "$id": "https://github.com/ropelens/ropelens/schemas/pipeline.schema.json",
        "title": "ropelens pipeline",
        "description": "A `pipe` pipeline: a [pipeline] header and named stages.",
        "type": "object",
        "additionalProperties": false,
        "required": ["pipeline"],
        "properties": {
            "pipeline": header.to_value(),
            "stages": {
                "type": "object",
                "description": "Stage name -> stage.",
                "additionalProperties": { "oneOf": variants },
            },
        },
        "definitions": definitions,
    })
}

/// The schema as the committed file holds it (pretty JSON and a final newline).
pub fn pipeline_schema_text() -> String {
    let mut s = serde_json::to_string_pretty(&pipeline_schema()).unwrap_or_default();
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_schema_equals_generated() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(SCHEMA_PATH);
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == pipeline_schema_text(),
            "{} is out of date: run `pipe schema > {SCHEMA_PATH}`",
            path.display()
        );
    }

    #[test]
    fn every_kind_has_a_stage_schema() {
        let s = pipeline_schema();
        for k in KINDS {
            let def = &s["definitions"][format!("stage_{}", k.kind())];
            assert_eq!(def["properties"]["kind"]["const"], k.kind());
        }
        let cmd = &s["definitions"]["stage_command"];
        assert_eq!(cmd["required"], json!(["kind", "args"]));
    }
}
