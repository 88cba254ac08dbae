//! The api against its own OpenAPI document: schemathesis (installed by
//! `scripts/setup.sh --test-tools` into `.switchyard/fuzz-venv`) generates valid and invalid
//! requests for every operation in `/openapi.json` and checks that nothing answers 5xx, and
//! that every status, content type and body is one the document declares. Beside it, every
//! 4xx that can be provoked on each route is checked here for OpenAI's error shape.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchyard_broker::apikeys::{ApiKeys, KeySpec};
use switchyard_schemas::RateLimits;
use switchyard_tests::{Stack, assert_openai_error, eventually, tail, workspace_root};

/// How long schemathesis may run before the test fails.
const FUZZ_TIMEOUT: Duration = Duration::from_secs(100);

fn schemathesis_bin() -> PathBuf {
    let bin = workspace_root().join(".switchyard/fuzz-venv/bin/schemathesis");
    assert!(
        bin.is_file(),
        "schemathesis is not installed at {}: run `scripts/setup.sh --test-tools` (it installs schemathesis from PyPI into .switchyard/fuzz-venv)",
        bin.display()
    );
    bin
}

async fn create_key(stack: &Stack, spec: KeySpec) -> String {
    let keys = ApiKeys::new(switchyard_broker::connect_redis(&stack.redis_url()).await.expect("redis"));
    keys.create(spec).await.expect("creating a key").0
}

/// A stack with keys on, an echo worker, and a small body limit (for the 413).
async fn stack_with_echo() -> (Stack, switchyard_tests::Proc, String) {
    let stack = Stack::builder().with_auth().body_limit(64 * 1024).start().await;
    let worker = stack.worker(&["echo"]);
    stack.worker_id(&worker).await;
    let key = create_key(&stack, KeySpec { user: "fuzzer".into(), ..Default::default() }).await;
    let url = stack.api_url("/v1/models");
    eventually(Duration::from_secs(60), "echo listed", || async {
        let body: Value = stack.http().get(&url).bearer_auth(&key).send().await.ok()?.json().await.ok()?;
        body["data"].as_array()?.iter().any(|m| m["id"] == "echo").then_some(())
    })
    .await;
    (stack, worker, key)
}

/// Hypothesis (under schemathesis's worker threads on Python 3.11) sometimes fails to read a
/// lambda's source with this error: a fault of the tool (its lambda-source cache is shared by
/// the threads), not of the api. Such a run is repeated once, on one worker thread, where the
/// race cannot happen.
const TOOL_FAULT: &str = "AST constructor recursion depth mismatch";

/// Runs schemathesis on `schema` (a URL, or a file with `--url base`) and returns its exit
/// status and output; fails the test if it runs past [`FUZZ_TIMEOUT`].
async fn schemathesis(stack: &Stack, key: &str, schema: &str, base_url: Option<&str>) -> (bool, String) {
    let (ok, text) = schemathesis_once(stack, key, schema, base_url, 2).await;
    if !ok && text.contains(TOOL_FAULT) {
        eprintln!("schemathesis hit {TOOL_FAULT:?} (a Hypothesis fault); running it again on one thread");
        return schemathesis_once(stack, key, schema, base_url, 1).await;
    }
    (ok, text)
}

async fn schemathesis_once(stack: &Stack, key: &str, schema: &str, base_url: Option<&str>, workers: u32) -> (bool, String) {
    let bin = schemathesis_bin();
    let work = tempfile::tempdir().expect("temp dir");
    let started = Instant::now();
    let mut command = tokio::process::Command::new(&bin);
    command.arg("run").arg(schema);
    if let Some(base) = base_url {
        command.args(["--url", base]);
    }
    command
        .args(["-H", &format!("Authorization: Bearer {key}")])
        .args(["--checks", "not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance"])
        .args(["--max-examples", "30", "--request-timeout", "10", "--seed", "1", "--workers", &workers.to_string()])
        .arg("--no-color")
        // Its reports and Hypothesis's example database go to a scratch directory.
        .current_dir(work.path())
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let child = command.spawn().unwrap_or_else(|e| panic!("running {}: {e}", bin.display()));
    let pid = child.id().expect("schemathesis pid");
    let output = match tokio::time::timeout(FUZZ_TIMEOUT, child.wait_with_output()).await {
        Ok(output) => output.expect("waiting for schemathesis"),
        Err(_) => {
            // SAFETY: kill(2) on the process group this test started.
            unsafe {
                libc::kill(-(pid as libc::pid_t), libc::SIGKILL);
            }
            panic!("schemathesis did not finish within {FUZZ_TIMEOUT:?}\n--- api log ---\n{}", tail(&stack.api().log(), 40));
        }
    };
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    eprintln!("schemathesis {schema} ran {:.1?}:\n{}", started.elapsed(), tail(&text, 30));
    (output.status.success(), text)
}

#[tokio::test]
async fn schemathesis_finds_no_server_errors_or_schema_violations() {
    schemathesis_bin();
    let (stack, _worker, key) = stack_with_echo().await;
    let (ok, text) = schemathesis(&stack, &key, &stack.api_url("/openapi.json"), None).await;
    assert!(ok, "schemathesis failed:\n{text}\n--- api log ---\n{}", tail(&stack.api().log(), 40));
}

/// The same run with the `model` of each generating route pinned to a served model, so the
/// generated parameters reach validation, the queue and the worker instead of stopping at 404.
#[tokio::test]
async fn schemathesis_with_served_models_finds_no_server_errors_or_schema_violations() {
    schemathesis_bin();
    let (stack, _worker, key) = stack_with_echo().await;
    let mut schema: Value = stack.http().get(stack.api_url("/openapi.json")).send().await.unwrap().json().await.unwrap();
    for (request, model) in [("ChatCompletionRequest", "echo"), ("CompletionRequest", "echo"), ("EmbeddingRequest", "echo-embedding")] {
        let property = &mut schema["components"]["schemas"][request]["properties"]["model"];
        assert!(property.is_object(), "{request}.model is in the OpenAPI document: {schema}");
        *property = json!({ "type": "string", "enum": [model] });
    }
    // Roles the api serves (the document says only "string"), so chat requests get past them.
    let role = &mut schema["components"]["schemas"]["ChatMessageIn"]["properties"]["role"];
    assert!(role.is_object(), "ChatMessageIn.role is in the OpenAPI document");
    *role = json!({ "type": "string", "enum": ["system", "developer", "user", "assistant", "tool"] });
    // One ordinary request per route as the document's examples (schemathesis's examples phase
    // sends them first), so every run exercises a successful answer of each shape.
    let user = json!([{ "role": "user", "content": "fuzz me" }]);
    for (path, examples) in [
        (
            "/v1/chat/completions",
            json!({
                "plain": { "value": { "model": "echo", "messages": user, "max_tokens": 8 } },
                "streamed": { "value": { "model": "echo", "messages": user, "stream": true, "stream_options": { "include_usage": true } } },
            }),
        ),
        (
            "/v1/completions",
            json!({
                "plain": { "value": { "model": "echo", "prompt": "fuzz me", "n": 2 } },
                "streamed": { "value": { "model": "echo", "prompt": "fuzz me", "stream": true } },
            }),
        ),
        (
            "/v1/embeddings",
            json!({
                "floats": { "value": { "model": "echo-embedding", "input": ["fuzz", "me"] } },
                "base64": { "value": { "model": "echo-embedding", "input": "fuzz me", "encoding_format": "base64" } },
            }),
        ),
    ] {
        let media = &mut schema["paths"][path]["post"]["requestBody"]["content"]["application/json"];
        assert!(media.is_object(), "POST {path} has a JSON request body in the OpenAPI document");
        media["examples"] = examples;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, serde_json::to_vec_pretty(&schema).unwrap()).unwrap();
    let (ok, text) = schemathesis(&stack, &key, file.to_str().unwrap(), Some(&stack.api_url(""))).await;
    assert!(ok, "schemathesis failed:\n{text}\n--- api log ---\n{}", tail(&stack.api().log(), 40));
}

/// One answer: status, content type and body (JSON, or the raw text as a string).
async fn send(request: reqwest::RequestBuilder) -> (u16, String, Value) {
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let content_type = response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let text = response.text().await.expect("body");
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, content_type, body)
}

#[tokio::test]
async fn every_provokable_4xx_has_the_openai_error_shape() {
    let (stack, _worker, key) = stack_with_echo().await;
    let http = stack.http();
    let url = |path: &str| stack.api_url(path);
    let too_big = "x".repeat(70 * 1024);
    let chat = json!({ "model": "echo", "messages": [{ "role": "user", "content": "hi" }] });
    let completion = json!({ "model": "echo", "prompt": "hi" });
    let embedding = json!({ "model": "echo-embedding", "input": "hi" });

    // (what, request, expected status)
    let mut cases: Vec<(String, reqwest::RequestBuilder, u16)> = Vec::new();
    for (path, valid, invalid_value) in [
        ("/v1/chat/completions", &chat, json!({ "model": "echo", "messages": [{ "role": "user", "content": "hi" }], "temperature": 9 })),
        ("/v1/completions", &completion, json!({ "model": "echo", "prompt": "hi", "top_p": 7 })),
        ("/v1/embeddings", &embedding, json!({ "model": "echo-embedding", "input": [] })),
    ] {
        let post = || http.post(url(path));
        cases.push((format!("POST {path} without a key"), post().json(valid), 401));
        cases.push((format!("POST {path} with an unknown key"), post().bearer_auth("sy-unknown").json(valid), 401));
        cases.push((format!("POST {path} with a malformed Authorization"), post().header("authorization", "Basic abc").json(valid), 401));
        cases.push((
            format!("POST {path} malformed JSON"),
            post().bearer_auth(&key).header("content-type", "application/json").body("{\"model\": "),
            400,
        ));
        cases.push((format!("POST {path} empty body"), post().bearer_auth(&key).header("content-type", "application/json").body(""), 400));
        cases.push((format!("POST {path} JSON array"), post().bearer_auth(&key).json(&json!([1, 2])), 400));
        cases.push((format!("POST {path} missing model"), post().bearer_auth(&key).json(&json!({})), 400));
        cases.push((format!("POST {path} wrong model type"), post().bearer_auth(&key).json(&json!({ "model": 5 })), 400));
        cases.push((format!("POST {path} out-of-range parameter"), post().bearer_auth(&key).json(&invalid_value), 400));
        let mut unknown = valid.clone();
        unknown["model"] = "no-such-model".into();
        cases.push((format!("POST {path} unknown model"), post().bearer_auth(&key).json(&unknown), 404));
        let mut wrong_kind = valid.clone();
        wrong_kind["model"] = if path == "/v1/embeddings" { "echo" } else { "echo-embedding" }.into();
        cases.push((format!("POST {path} model of the wrong kind"), post().bearer_auth(&key).json(&wrong_kind), 400));
        let mut big = valid.clone();
        big["user"] = too_big.clone().into();
        cases.push((format!("POST {path} body over the limit"), post().bearer_auth(&key).json(&big), 413));
        cases.push((format!("GET {path}"), http.get(url(path)).bearer_auth(&key), 405));
        cases.push((format!("PUT {path}"), http.put(url(path)).bearer_auth(&key).json(valid), 405));
    }
    for path in ["/v1/models", "/v1/models/echo"] {
        cases.push((format!("GET {path} without a key"), http.get(url(path)), 401));
        cases.push((format!("GET {path} with an unknown key"), http.get(url(path)).bearer_auth("sy-unknown"), 401));
        cases.push((format!("POST {path}"), http.post(url(path)).bearer_auth(&key).json(&json!({})), 405));
        cases.push((format!("DELETE {path}"), http.delete(url(path)).bearer_auth(&key), 405));
    }
    cases.push(("GET /v1/models/<unknown>".into(), http.get(url("/v1/models/no-such-model")).bearer_auth(&key), 404));
    cases.push(("GET /v1/models/<with slashes>".into(), http.get(url("/v1/models/org/no-such-model")).bearer_auth(&key), 404));
    for path in ["/health", "/ready", "/openapi.json"] {
        cases.push((format!("POST {path}"), http.post(url(path)), 405));
    }
    for path in ["/", "/v1", "/v1/nothing-here", "/v2/chat/completions", "/v1/chat/completions/extra"] {
        cases.push((format!("GET {path}"), http.get(url(path)).bearer_auth(&key), 404));
        cases.push((format!("POST {path}"), http.post(url(path)).bearer_auth(&key).json(&chat), 404));
    }

    let mut failures = Vec::new();
    for (what, request, expected) in cases {
        let (status, content_type, body) = send(request).await;
        let shaped = std::panic::catch_unwind(|| {
            assert_openai_error(&body);
        })
        .is_ok();
        if status != expected || !shaped || !content_type.starts_with("application/json") {
            failures.push(format!("{what}: expected {expected} with an OpenAI error body, got {status} ({content_type:?}) {body}"));
        }
    }

    // 429 from each generating route (a key allowed one request per minute).
    for (path, body) in [("/v1/chat/completions", &chat), ("/v1/completions", &completion), ("/v1/embeddings", &embedding)] {
        let limited_key =
            create_key(&stack, KeySpec { user: "one-rpm".into(), limits: RateLimits { rpm: Some(1), tpm: None }, ..Default::default() })
                .await;
        let (first, _, first_body) = send(http.post(url(path)).bearer_auth(&limited_key).json(body)).await;
        assert_eq!(first, 200, "POST {path} within the limit: {first_body}");
        let (status, content_type, body) = send(http.post(url(path)).bearer_auth(&limited_key).json(body)).await;
        let shaped = std::panic::catch_unwind(|| {
            assert_openai_error(&body);
        })
        .is_ok();
        if status != 429 || !shaped || !content_type.starts_with("application/json") || body["error"]["code"] != "rate_limit_exceeded" {
            failures
                .push(format!("POST {path} over the rate limit: expected 429 rate_limit_exceeded, got {status} ({content_type:?}) {body}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} responses lack the right status or OpenAI's error shape:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
}
