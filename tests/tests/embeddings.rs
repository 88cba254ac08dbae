//! `/v1/embeddings` with the echo worker, whose vectors are recomputable
//! (`switchyard_worker::backends::echo::debug_vector`).

use base64::Engine;
use serde_json::{Value, json};
use switchyard_tests::Stack;
use switchyard_tests::openai::echo_token_count;
use switchyard_worker::backends::echo::debug_vector;

const EMBEDDINGS: &str = "/v1/embeddings";

async fn stack_with_echo(args: &[&str]) -> (Stack, switchyard_tests::Proc) {
    let stack = Stack::start().await;
    let mut all = vec!["echo"];
    all.extend_from_slice(args);
    let (worker, _) = stack.ready_worker(&all, "echo-embedding").await;
    (stack, worker)
}

/// Checks the list envelope and returns the `data` entries in order.
fn check_list<'a>(body: &'a Value, model: &str, inputs: usize) -> &'a [Value] {
    assert_eq!(body["object"], "list", "{body}");
    assert_eq!(body["model"], model, "{body}");
    let data = body["data"].as_array().unwrap_or_else(|| panic!("data must be an array: {body}"));
    assert_eq!(data.len(), inputs, "one embedding per input: {body}");
    for (i, item) in data.iter().enumerate() {
        assert_eq!(item["object"], "embedding", "{item}");
        assert_eq!(item["index"], i, "data must be in input order: {body}");
    }
    data
}

fn float_vector(item: &Value) -> Vec<f32> {
    item["embedding"]
        .as_array()
        .unwrap_or_else(|| panic!("embedding must be an array of floats: {item}"))
        .iter()
        .map(|x| x.as_f64().unwrap_or_else(|| panic!("not a number: {x}")) as f32)
        .collect()
}

fn assert_close(actual: &[f32], expected: &[f32], what: &str) {
    assert_eq!(actual.len(), expected.len(), "{what}: dimensions");
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        assert!((a - e).abs() <= 1e-6, "{what}: component {i} is {a}, expected {e}");
    }
}

fn assert_usage(body: &Value, inputs: &[&str]) {
    let tokens: u32 = inputs.iter().map(|text| echo_token_count(text)).sum();
    assert_eq!(body["usage"]["prompt_tokens"], tokens, "usage.prompt_tokens: {body}");
    assert_eq!(body["usage"]["total_tokens"], tokens, "usage.total_tokens: {body}");
}

#[tokio::test]
async fn string_input_gives_the_debug_vector() {
    let (stack, _worker) = stack_with_echo(&[]).await;
    let text = "embed this short sentence";
    let (status, body) = stack.post_json(EMBEDDINGS, &json!({ "model": "echo-embedding", "input": text })).await;
    assert_eq!(status, 200, "{body}");
    let data = check_list(&body, "echo-embedding", 1);
    let vector = float_vector(&data[0]);
    assert_close(&vector, &debug_vector(text, 16), "embedding of a string");
    let norm: f32 = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-4, "debug vectors are unit vectors, norm {norm}");
    assert_usage(&body, &[text]);

    // `encoding_format: "float"` is the same as leaving it out.
    let (status, body) =
        stack.post_json(EMBEDDINGS, &json!({ "model": "echo-embedding", "input": text, "encoding_format": "float" })).await;
    assert_eq!(status, 200, "{body}");
    assert_close(&float_vector(&check_list(&body, "echo-embedding", 1)[0]), &debug_vector(text, 16), "encoding_format float");
}

#[tokio::test]
async fn list_input_keeps_order() {
    let (stack, _worker) = stack_with_echo(&[]).await;
    let inputs = ["first input", "the second one is longer", "third", "first input"];
    let (status, body) = stack.post_json(EMBEDDINGS, &json!({ "model": "echo-embedding", "input": inputs })).await;
    assert_eq!(status, 200, "{body}");
    let data = check_list(&body, "echo-embedding", inputs.len());
    for (i, text) in inputs.iter().enumerate() {
        assert_close(&float_vector(&data[i]), &debug_vector(text, 16), &format!("input {i} ({text:?})"));
    }
    assert_eq!(data[0]["embedding"], data[3]["embedding"], "equal inputs, equal vectors");
    assert_ne!(data[0]["embedding"], data[1]["embedding"]);
    assert_usage(&body, &inputs);

    // More inputs than one worker event holds (the worker splits them into chunks of 64).
    let many: Vec<String> = (0..150).map(|i| format!("input number {i}")).collect();
    let (status, body) = stack.post_json(EMBEDDINGS, &json!({ "model": "echo-embedding", "input": many })).await;
    assert_eq!(status, 200, "{body}");
    let data = check_list(&body, "echo-embedding", many.len());
    for (i, text) in many.iter().enumerate() {
        assert_close(&float_vector(&data[i]), &debug_vector(text, 16), &format!("input {i}"));
    }
}

#[tokio::test]
async fn base64_is_little_endian_f32() {
    let (stack, _worker) = stack_with_echo(&["--dimensions", "24"]).await;
    let inputs = ["base64 please", "and another"];
    let (status, body) =
        stack.post_json(EMBEDDINGS, &json!({ "model": "echo-embedding", "input": inputs, "encoding_format": "base64" })).await;
    assert_eq!(status, 200, "{body}");
    let data = check_list(&body, "echo-embedding", inputs.len());
    for (i, text) in inputs.iter().enumerate() {
        let encoded = data[i]["embedding"].as_str().unwrap_or_else(|| panic!("base64 embedding must be a string: {}", data[i]));
        let bytes = base64::engine::general_purpose::STANDARD.decode(encoded).expect("standard base64");
        assert_eq!(bytes.len(), 24 * 4, "24 little-endian f32s");
        let decoded: Vec<f32> = bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
        let expected = debug_vector(text, 24);
        assert_eq!(
            decoded.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            expected.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            "input {i}: base64 must carry the exact f32 bits"
        );
    }
    assert_usage(&body, &inputs);
}
