//! Errors come back as OpenAI sends them: the right status and
//! `{"error": {"message", "type", "param", "code"}}`, whatever went wrong.

use serde_json::{Value, json};
use switchyard_tests::openai::{Endpoint, chat_request, check_completion};
use switchyard_tests::{Stack, assert_openai_error};

const CHAT: &str = "/v1/chat/completions";

/// Sends a raw body with `content-type: application/json`.
async fn post_raw(stack: &Stack, path: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
    let response = stack.http().post(stack.api_url(path)).header("content-type", "application/json").body(body).send().await.expect("POST");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path} → {status}: not JSON ({e}): {text:?}"));
    (status, body)
}

#[tokio::test]
async fn unknown_model_is_404_model_not_found() {
    let stack = Stack::start().await;
    for (path, body) in [
        (CHAT, chat_request("no-such-model", "hi")),
        ("/v1/completions", json!({ "model": "no-such-model", "prompt": "hi" })),
        ("/v1/embeddings", json!({ "model": "no-such-model", "input": "hi" })),
    ] {
        let (status, body) = stack.post_json(path, &body).await;
        assert_eq!(status, 404, "{path}: {body}");
        let error = assert_openai_error(&body);
        assert_eq!(error["code"], "model_not_found", "{path}: {body}");
        assert_eq!(error["type"], "invalid_request_error", "{path}: {body}");
        assert!(error["message"].as_str().unwrap().contains("no-such-model"), "the message names the model: {body}");
    }
    let response = stack.http().get(stack.api_url("/v1/models/no-such-model")).send().await.unwrap();
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    assert_eq!(assert_openai_error(&body)["code"], "model_not_found");
}

#[tokio::test]
async fn malformed_json_is_400_not_422() {
    let stack = Stack::start().await;
    for raw in [r#"{"model": "echo", "messages": ["#, "not json at all", ""] {
        let (status, body) = post_raw(&stack, CHAT, raw).await;
        assert_eq!(status, 400, "body {raw:?} → {body}");
        assert_eq!(assert_openai_error(&body)["type"], "invalid_request_error", "{body}");
    }
}

#[tokio::test]
async fn wrong_field_types_are_400_naming_the_field() {
    let stack = Stack::start().await;
    let cases = [
        (CHAT, json!({ "model": "echo", "messages": 5 }), "messages"),
        (CHAT, json!({ "model": "echo", "messages": [{ "role": "user", "content": "hi" }], "max_tokens": "x" }), "max_tokens"),
        (CHAT, json!({ "model": "echo", "messages": [{ "role": "user", "content": "hi" }], "temperature": "hot" }), "temperature"),
        (CHAT, json!({ "model": "echo", "messages": [{ "role": "user", "content": "hi" }], "stream": "yes" }), "stream"),
        (CHAT, json!({ "messages": [{ "role": "user", "content": "hi" }] }), "model"),
        ("/v1/completions", json!({ "model": "echo", "prompt": "hi", "max_tokens": -3 }), "max_tokens"),
    ];
    check_param_errors(&stack, &cases).await;
}

/// A wrong type for an enum-valued field is a wrong field type too, not unparseable JSON.
#[tokio::test]
async fn wrong_enum_field_type_is_400_naming_the_field() {
    let stack = Stack::start().await;
    let cases = [
        ("/v1/embeddings", json!({ "model": "echo-embedding", "input": "hi", "encoding_format": 7 }), "encoding_format"),
        ("/v1/embeddings", json!({ "model": "echo-embedding", "input": "hi", "encoding_format": "hex" }), "encoding_format"),
    ];
    check_param_errors(&stack, &cases).await;
}

async fn check_param_errors(stack: &Stack, cases: &[(&str, Value, &str)]) {
    let mut failures = Vec::new();
    for (path, request, param) in cases {
        let (status, body) = stack.post_json(path, request).await;
        let named = body["error"]["param"].as_str().unwrap_or_default();
        let names_it = named == *param || named.starts_with(&format!("{param}.")) || named.starts_with(&format!("{param}["));
        if status != 400 || !names_it || body["error"]["type"] != "invalid_request_error" {
            failures
                .push(format!("{path} {request}: expected 400 invalid_request_error with error.param = `{param}`, got {status} {body}"));
        } else {
            assert_openai_error(&body);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn unknown_route_is_404_in_openai_shape() {
    let stack = Stack::start().await;
    for (method, path) in [("GET", "/v1/nothing-here"), ("POST", "/v2/chat/completions"), ("GET", "/")] {
        let request = stack.http().request(method.parse().unwrap(), stack.api_url(path));
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        assert_eq!(status, 404, "{method} {path}: {text}");
        let body: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {text:?}"));
        assert_openai_error(&body);
    }
}

#[tokio::test]
async fn body_over_the_limit_is_413() {
    let stack = Stack::builder().body_limit(4096).start().await;
    let big = "x ".repeat(4096);
    let (status, body) = post_raw(&stack, CHAT, serde_json::to_vec(&chat_request("echo", &big)).unwrap()).await;
    assert_eq!(status, 413, "{body}");
    assert_openai_error(&body);
    // Just under the limit the body is read (and the unknown model reported).
    let (status, body) = post_raw(&stack, CHAT, serde_json::to_vec(&chat_request("nobody-serves-this", "small")).unwrap()).await;
    assert_eq!(status, 404, "{body}");
}

#[tokio::test]
async fn unknown_extra_fields_are_accepted() {
    let stack = Stack::start().await;
    let (_worker, _) = stack.ready_worker(&["echo"], "echo").await;
    let request = json!({
        "model": "echo",
        "messages": [{ "role": "user", "content": "extra fields are fine", "x_custom": true }],
        "metadata": { "team": "tests" },
        "store": false,
        "some_future_parameter": [1, 2, 3],
        "parallel_tool_calls": true,
    });
    let (status, body) = stack.post_json(CHAT, &request).await;
    assert_eq!(status, 200, "{body}");
    let (texts, _, _) = check_completion(Endpoint::Chat, &body, "echo");
    assert_eq!(texts, ["extra fields are fine"]);
}
