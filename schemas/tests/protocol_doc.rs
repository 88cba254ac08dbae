//! `docs/protocol.md`, the protocol for direct NATS publishers, cannot drift from the wire
//! contract:
//!
//! * its field tables are generated from the committed JSON Schema
//!   (`schemas/json/switchyard.schema.json`, itself checked against the Rust types by
//!   `json_schema.rs`) between two markers, and this test fails when they are stale
//!   (`UPDATE_SCHEMAS=1 cargo test -p switchyard-schemas` rewrites them, beside the schema);
//! * every NATS name `schemas/src/subject.rs` defines (each public string constant, each subject
//!   pattern it formats, each lane and kind of job subject), the cancel flag's Redis key, the
//!   wire version, the out-of-band sequence number and the broker's payload limit appear in it.
//!
//! Everything outside the markers is written by hand.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde_json::Value;
use switchyard_schemas::{JobKind, Lane, OUT_OF_BAND_SEQ, WIRE_VERSION, keys, subject};

const BEGIN: &str = "<!-- BEGIN GENERATED: wire types. Do not edit: UPDATE_SCHEMAS=1 cargo test -p switchyard-schemas rewrites it from schemas/json/switchyard.schema.json -->";
const END: &str = "<!-- END GENERATED: wire types -->";

/// The top-level messages, in the order the document presents them.
const MESSAGES: [&str; 5] = ["JobEnvelope", "StreamEvent", "ResumeState", "ModelCard", "WorkerRecord"];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("schemas/ sits in the workspace").to_path_buf()
}

fn doc_path() -> PathBuf {
    root().join("docs/protocol.md")
}

fn read(path: &PathBuf) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn committed_schema() -> Value {
    let path = root().join("schemas/json/switchyard.schema.json");
    serde_json::from_str(&read(&path)).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

// -- the generated tables --------------------------------------------------------------------

/// A description on one line, rustdoc links as plain code, safe inside a table cell.
fn prose(text: &str) -> String {
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    text.replace("[`", "`").replace("`]", "`").replace("`crate::", "`").replace('|', "\\|")
}

fn description(schema: &Value) -> String {
    schema.get("description").and_then(Value::as_str).map(prose).unwrap_or_default()
}

fn sorted_keys(map: &serde_json::Map<String, Value>) -> Vec<&String> {
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort();
    keys
}

fn ref_name(schema: &Value) -> Option<&str> {
    schema.get("$ref")?.as_str()?.strip_prefix("#/$defs/")
}

fn link(name: &str) -> String {
    format!("[{name}](#{})", name.to_lowercase())
}

/// A field's type in words: `uint32`, `string or null`, `array of [ChatMessage](#chatmessage)`, …
fn type_of(schema: &Value) -> String {
    if let Some(name) = ref_name(schema) {
        return link(name);
    }
    if let Some(value) = schema.get("const") {
        return format!("`{value}`");
    }
    for alternatives in ["anyOf", "oneOf"] {
        if let Some(options) = schema.get(alternatives).and_then(Value::as_array) {
            return options.iter().map(type_of).collect::<Vec<_>>().join(" or ");
        }
    }
    let one = |name: &str| -> String {
        match name {
            "integer" | "number" => schema.get("format").and_then(Value::as_str).map_or(name.to_string(), |f| match f {
                "float" => "float32".into(),
                "double" => "float64".into(),
                other => other.into(),
            }),
            "array" => format!("array of {}", schema.get("items").map_or("any".into(), type_of)),
            "object" => match schema.get("additionalProperties") {
                Some(values) if values.is_object() => format!("map of string to {}", type_of(values)),
                _ => "object".into(),
            },
            other => other.into(),
        }
    };
    match schema.get("type") {
        Some(Value::String(name)) => one(name),
        Some(Value::Array(names)) => names.iter().filter_map(Value::as_str).map(one).collect::<Vec<_>>().join(" or "),
        _ => "any JSON value".into(),
    }
}

/// One row per property: name, type, whether a writer must send it (and what a reader assumes
/// when it is left out), meaning.
fn fields_table(out: &mut String, schema: &Value) {
    let Some(properties) = schema.get("properties").and_then(Value::as_object) else { return };
    let required: BTreeSet<&str> =
        schema.get("required").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect();
    out.push_str("| field | type | required | meaning |\n|---|---|---|---|\n");
    for name in sorted_keys(properties) {
        let field = &properties[name];
        let required = if required.contains(name.as_str()) {
            "yes".to_string()
        } else {
            match field.get("default") {
                Some(default) => format!("no (default `{default}`)"),
                None => "no".into(),
            }
        };
        out.push_str(&format!("| `{name}` | {} | {required} | {} |\n", type_of(field), description(field)));
    }
}

/// The variants of a string enum (`"a"`, `"b"`, each perhaps with a description), if `schema` is one.
fn string_values(schema: &Value) -> Option<Vec<(String, String)>> {
    if let Some(values) = schema.get("enum").and_then(Value::as_array) {
        return Some(values.iter().map(|v| (v.as_str().unwrap_or_default().to_string(), String::new())).collect());
    }
    let variants = schema.get("oneOf")?.as_array()?;
    variants.iter().map(|variant| Some((variant.get("const")?.as_str()?.to_string(), description(variant)))).collect()
}

/// A tagged variant: the tag's field and value, and the schema of its fields (the adjacently
/// tagged `data` object, or the variant itself without the tag).
fn tagged(variant: &Value) -> Option<(String, String, Option<String>)> {
    let properties = variant.get("properties")?.as_object()?;
    let tag = sorted_keys(properties).into_iter().find(|name| properties[name.as_str()].get("const").is_some())?;
    let value = properties[tag.as_str()]["const"].as_str()?.to_string();
    let others: Vec<&String> = sorted_keys(properties).into_iter().filter(|name| *name != tag).collect();
    let content = match others.as_slice() {
        [only] if properties[only.as_str()].get("properties").is_some() => Some(only.to_string()),
        _ => None,
    };
    Some((tag.clone(), value, content))
}

fn render_type(out: &mut String, name: &str, schema: &Value) {
    out.push_str(&format!("#### {name}\n\n"));
    let about = description(schema);
    if !about.is_empty() {
        out.push_str(&format!("{about}\n\n"));
    }
    if schema.get("properties").is_some() {
        fields_table(out, schema);
    } else if let Some(values) = string_values(schema) {
        out.push_str("A string, one of:\n\n| value | meaning |\n|---|---|\n");
        for (value, meaning) in values {
            out.push_str(&format!("| `\"{value}\"` | {meaning} |\n"));
        }
    } else if let Some(variants) = schema.get("oneOf").and_then(Value::as_array) {
        let (tag, _, content) = tagged(&variants[0]).unwrap_or_else(|| panic!("{name}: a oneOf that is not tagged"));
        match &content {
            Some(content) => out.push_str(&format!("A map `{{\"{tag}\": <variant>, \"{content}\": {{<its fields>}}}}`, one of:\n\n")),
            None => out.push_str(&format!("A map with `\"{tag}\": <variant>` beside the variant's own fields, one of:\n\n")),
        }
        for variant in variants {
            let (_, value, content) = tagged(variant).unwrap_or_else(|| panic!("{name}: a variant that is not tagged: {variant}"));
            out.push_str(&format!("##### {name} `{value}`\n\n"));
            let about = description(variant);
            if !about.is_empty() {
                out.push_str(&format!("{about}\n\n"));
            }
            let fields = match &content {
                Some(content) => variant["properties"][content.as_str()].clone(),
                None => {
                    let mut rest = variant.clone();
                    rest["properties"].as_object_mut().unwrap().remove(&tag);
                    if let Some(required) = rest.get_mut("required").and_then(Value::as_array_mut) {
                        required.retain(|field| field != tag.as_str());
                    }
                    rest
                }
            };
            if fields["properties"].as_object().is_some_and(|p| !p.is_empty()) {
                fields_table(out, &fields);
            } else {
                out.push_str("No fields.\n");
            }
            out.push('\n');
        }
        return;
    } else {
        panic!("{name}: no rendering for {schema}");
    }
    out.push('\n');
}

/// The generated part of the document: every message, then every type they use.
fn generated_tables(schema: &Value) -> String {
    let mut out = String::new();
    out.push_str("### Messages\n\n");
    out.push_str("Each is one NATS message payload (or, for the model card and worker record, one Redis value).\n\n");
    let mut defs: BTreeMap<String, Value> = BTreeMap::new();
    let top = schema.as_object().expect("the schema file is a map of messages");
    assert_eq!(
        sorted_keys(top).into_iter().cloned().collect::<BTreeSet<_>>(),
        MESSAGES.iter().map(|m| m.to_string()).collect(),
        "the messages the document presents"
    );
    for message in MESSAGES {
        let message_schema = &schema[message];
        render_type(&mut out, message, message_schema);
        for (name, def) in message_schema.get("$defs").and_then(Value::as_object).into_iter().flatten() {
            if let Some(seen) = defs.get(name) {
                assert_eq!(seen, def, "two definitions of {name} in the JSON Schema");
            }
            defs.insert(name.clone(), def.clone());
        }
    }
    out.push_str("### Types they use\n\n");
    for (name, def) in &defs {
        render_type(&mut out, name, def);
    }
    out.trim_end().to_string()
}

/// The document as the tests check it: as committed, or, while `UPDATE_SCHEMAS` rewrites it
/// (the tests of this file run in parallel), as it is being rewritten.
fn current_doc() -> String {
    let doc = read(&doc_path());
    if std::env::var_os("UPDATE_SCHEMAS").is_none() {
        return doc;
    }
    let (start, end) = generated_part(&doc);
    format!("{}\n\n{}\n\n{}", &doc[..start], generated_tables(&committed_schema()), &doc[end..])
}

fn generated_part(doc: &str) -> (usize, usize) {
    let start = doc.find(BEGIN).unwrap_or_else(|| panic!("docs/protocol.md has no line {BEGIN}")) + BEGIN.len();
    let end = doc[start..].find(END).unwrap_or_else(|| panic!("docs/protocol.md has no line {END}")) + start;
    (start, end)
}

#[test]
fn field_tables_are_generated_from_the_json_schema() {
    let path = doc_path();
    let doc = read(&path);
    let (start, end) = generated_part(&doc);
    let tables = format!("\n\n{}\n\n", generated_tables(&committed_schema()));
    if std::env::var_os("UPDATE_SCHEMAS").is_some() && doc[start..end] != tables {
        let updated = format!("{}{tables}{}", &doc[..start], &doc[end..]);
        std::fs::write(&path, updated).unwrap();
        return;
    }
    assert!(
        doc[start..end] == tables,
        "the wire types in {} are stale: run UPDATE_SCHEMAS=1 cargo test -p switchyard-schemas",
        path.display()
    );
}

#[test]
fn every_definition_and_field_of_the_json_schema_has_a_table() {
    // Redundant with the generated part while it is current; this one says what is missing.
    let doc = current_doc();
    let schema = committed_schema();
    let mut missing = Vec::new();
    let mut check = |name: &str, def: &Value| {
        if !doc.contains(&format!("#### {name}\n")) {
            missing.push(format!("type {name}"));
        }
        let mut objects = vec![def.clone()];
        for variant in def.get("oneOf").and_then(Value::as_array).into_iter().flatten() {
            objects.push(variant.clone());
            objects.extend(variant.get("properties").and_then(Value::as_object).into_iter().flat_map(|p| p.values().cloned()));
        }
        for object in objects {
            for (field, schema) in object.get("properties").and_then(Value::as_object).into_iter().flatten() {
                // A variant's tag and its adjacently tagged content are no rows of their own.
                let tag_or_content = schema.get("const").is_some() || schema.get("properties").is_some();
                if !tag_or_content && !doc.contains(&format!("| `{field}` |")) {
                    missing.push(format!("field {name}.{field}"));
                }
            }
        }
    };
    for message in MESSAGES {
        check(message, &schema[message]);
        for (name, def) in schema[message].get("$defs").and_then(Value::as_object).into_iter().flatten() {
            check(name, def);
        }
    }
    assert!(missing.is_empty(), "docs/protocol.md does not describe: {missing:?}");
}

// -- names, numbers and limits the prose must give -------------------------------------------

/// Every inline code span of the document, and every word of its code blocks.
fn code_spans(doc: &str) -> BTreeSet<String> {
    let mut spans = BTreeSet::new();
    let mut in_block = false;
    for line in doc.lines() {
        if line.trim_start().starts_with("```") {
            in_block = !in_block;
            continue;
        }
        if in_block {
            spans.extend(line.split(|c: char| c.is_whitespace() || "\"'(),;=".contains(c)).filter(|w| !w.is_empty()).map(String::from));
        } else {
            spans.extend(line.split('`').skip(1).step_by(2).map(String::from));
        }
    }
    spans
}

/// Whether `text` is `pattern` with each `{…}` replaced by a `<placeholder>` (which may hold
/// dots: `sy.events.{rest}` is documented as `sy.events.<job>.<index>`).
fn matches_pattern(pattern: &str, text: &str) -> bool {
    match pattern.find('{') {
        None => pattern == text,
        Some(open) => {
            let close = open + pattern[open..].find('}').expect("format strings close their braces");
            let (literal, rest) = (&pattern[..open], &pattern[close + 1..]);
            let Some(text) = text.strip_prefix(literal) else { return false };
            if !text.starts_with('<') {
                return false;
            }
            // Try every end of the placeholder at a `>`.
            text.match_indices('>').any(|(at, _)| matches_pattern(rest, &text[at + 1..]))
        }
    }
}

#[test]
fn every_subject_and_name_of_subject_rs_is_documented() {
    let doc = current_doc();
    let spans = code_spans(&doc);
    let source = read(&root().join("schemas/src/subject.rs"));
    let mut missing = Vec::new();

    // Every public string constant: streams, buckets, wildcards, advisories, queue groups.
    for line in source.lines().map(str::trim).filter(|line| line.starts_with("pub const ") && line.contains(": &str = \"")) {
        let value = line.split('"').nth(1).expect("a string constant");
        if !spans.contains(value) {
            missing.push(format!("constant {value}"));
        }
    }
    // Every subject or consumer name a function formats, with `<placeholders>` for its parts.
    for piece in source.split("format!(\"").skip(1) {
        let pattern = piece.split('"').next().unwrap();
        if pattern.starts_with("sy") && !spans.iter().any(|span| matches_pattern(pattern, span)) {
            missing.push(format!("pattern {pattern}"));
        }
    }
    // The job subject and consumer of every lane and kind.
    for lane in Lane::ALL {
        for kind in JobKind::ALL {
            let job = subject::job(lane, kind, "MODEL").replace("MODEL", "<model>");
            let consumer = subject::job_consumer(lane, kind, "MODEL").replace("MODEL", "<model>");
            for name in [job, consumer] {
                if !spans.contains(&name) {
                    missing.push(name);
                }
            }
        }
    }
    // What a direct publisher formats itself, with the placeholders the document uses.
    for name in [
        subject::reply("INSTANCE", "JOB"),
        subject::replies_of("INSTANCE"),
        subject::resume("INSTANCE", "JOB"),
        subject::resumes_of("INSTANCE"),
        subject::cancel("JOB"),
        keys::cancel("JOB"),
    ] {
        let name = name.replace("INSTANCE", "<instance>").replace("JOB", "<job>");
        if !spans.contains(&name) {
            missing.push(name);
        }
    }
    assert!(missing.is_empty(), "docs/protocol.md does not name: {missing:?}");
}

#[test]
fn versions_sequence_numbers_and_limits_are_the_current_ones() {
    let doc = current_doc();
    let version = format!("The current wire version is **{WIRE_VERSION}**");
    assert!(doc.contains(&version), "docs/protocol.md must say {version:?}");
    assert!(doc.contains(&format!("`{OUT_OF_BAND_SEQ}`")), "docs/protocol.md must give OUT_OF_BAND_SEQ ({OUT_OF_BAND_SEQ})");
    for config in ["broker-config/nats-server.conf", "broker-config/secure/server.conf"] {
        let Ok(text) = std::fs::read_to_string(root().join(config)) else { continue };
        if let Some(limit) = text.lines().find_map(|line| line.trim().strip_prefix("max_payload:")) {
            let limit = limit.trim();
            assert!(doc.contains(&format!("`max_payload: {limit}`")), "docs/protocol.md must give {config}'s `max_payload: {limit}`");
        }
    }
}

#[test]
fn placeholders_match_only_what_they_should() {
    assert!(matches_pattern("sy.job.{}.{}.{}", "sy.job.<lane>.<kind>.<model>"));
    assert!(matches_pattern("sy.events.{rest}", "sy.events.<job>.<index>"));
    assert!(matches_pattern("sy.result.{}.*", "sy.result.<batch>.*"));
    assert!(!matches_pattern("sy.job.{}.{}.{}", "sy.job.interactive.chat.<model>"));
    assert!(!matches_pattern("sy.reply.{}.*", "sy.reply.<instance>.<job>"));
    assert!(!matches_pattern("sy.dead.{}.{}", "sy.dead.<kind>"));
}
