//! The committed JSON Schema (for publishers and workers in other languages) must match the
//! Rust types. Run with `UPDATE_SCHEMAS=1` to rewrite it after changing the contract.

use std::path::PathBuf;

use schemars::schema_for;
use switchyard_schemas::{JobEnvelope, ModelCard, ResumeState, StreamEvent, WorkerRecord, decode, encode};

fn generated() -> serde_json::Value {
    serde_json::json!({
        "JobEnvelope": schema_for!(JobEnvelope),
        "StreamEvent": schema_for!(StreamEvent),
        "ModelCard": schema_for!(ModelCard),
        "WorkerRecord": schema_for!(WorkerRecord),
        "ResumeState": schema_for!(ResumeState),
    })
}

#[test]
fn committed_json_schema_is_current() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("json/switchyard.schema.json");
    let text = serde_json::to_string_pretty(&generated()).unwrap() + "\n";
    if std::env::var_os("UPDATE_SCHEMAS").is_some() {
        std::fs::write(&path, &text).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    // Compared as JSON, not as text: the key order depends on whether serde_json's
    // `preserve_order` is on in this build, which other crates of the workspace decide.
    let committed: serde_json::Value = serde_json::from_str(&committed).unwrap_or_default();
    assert!(committed == generated(), "{} is stale: run UPDATE_SCHEMAS=1 cargo test -p switchyard-schemas", path.display());
}

#[test]
fn envelopes_round_trip_and_newer_versions_are_rejected() {
    use switchyard_schemas::{JobKind, JobRequest, Lane, SamplingParams, WIRE_VERSION};
    let mut job = JobEnvelope {
        v: WIRE_VERSION,
        id: "01JOB".into(),
        kind: JobKind::Chat,
        model: "Qwen/Qwen2.5-0.5B".into(),
        request: JobRequest::Completion { prompt: "hi".into(), params: SamplingParams::default() },
        lane: Lane::Batch,
        deadline_ms: None,
        reply_to: "sy.reply.a.01JOB".into(),
        resume_to: "sy.resume.a.01JOB".into(),
        traceparent: None,
        created_ms: 1,
    };
    let bytes = encode(&job).unwrap();
    assert_eq!(decode::<JobEnvelope>(&bytes).unwrap(), job);
    job.v = WIRE_VERSION + 1;
    let err = decode::<JobEnvelope>(&encode(&job).unwrap()).unwrap_err();
    assert!(err.to_string().contains("wire version"), "{err}");
    assert!(decode::<JobEnvelope>(b"\x93garbage").is_err());
}
