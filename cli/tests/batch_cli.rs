//! `switchyard batch` driven as a user would, against a local HTTP server.
//!
//! The server here is a stand-in for a third-party HTTP API shape — OpenAI's Files and Batch
//! endpoints, which this CLI must speak to on api.openai.com as well as on Switchyard's api — and
//! serves only the CLI's tests. It is not a mock of NATS or Redis (the project's tests never mock
//! those); Switchyard's own batch endpoints are tested against the real stack in `tests/`.

use std::process::Output;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

#[derive(Clone, Copy, PartialEq)]
enum Scenario {
    /// validating → in_progress → completed with an output and an error file.
    Complete,
    /// validating → failed, with line errors.
    Fail,
    /// in_progress for ever.
    Never,
    /// `POST /batches` answers 400 with OpenAI's error body.
    RejectCreate,
}

struct Fake {
    scenario: Scenario,
    key: String,
    uploaded: Option<Vec<u8>>,
    created: Option<Value>,
    polls: usize,
    cancels: usize,
}

type Shared = Arc<Mutex<Fake>>;

/// The output file's bytes: big enough to arrive in many chunks.
fn output_bytes() -> Vec<u8> {
    (0..5000)
        .map(|i| format!("{{\"id\":\"batch_req_{i}\",\"custom_id\":\"r{i}\",\"response\":{{\"status_code\":200}},\"error\":null}}\n"))
        .collect::<String>()
        .into_bytes()
}

const ERROR_BYTES: &[u8] = b"{\"id\":\"batch_req_x\",\"custom_id\":\"r2\",\"response\":null,\"error\":{\"code\":\"model_not_found\",\"message\":\"no such model\"}}\n";

fn openai_error(status: StatusCode, message: &str, param: Option<&str>) -> Response {
    (status, axum::Json(json!({"error": {"message": message, "type": "invalid_request_error", "param": param, "code": null}})))
        .into_response()
}

fn authorized(fake: &Fake, headers: &HeaderMap) -> bool {
    headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(format!("Bearer {}", fake.key).as_str())
}

fn batch_object(status: &str, counts: (u64, u64, u64), extra: Value) -> Value {
    let mut batch = json!({
        "id": "batch_test1", "object": "batch", "endpoint": "/v1/chat/completions", "errors": null,
        "input_file_id": "file-in", "completion_window": "24h", "status": status,
        "output_file_id": null, "error_file_id": null, "created_at": 1_714_500_000, "in_progress_at": null,
        "expires_at": 1_714_586_400, "finalizing_at": null, "completed_at": null, "failed_at": null,
        "expired_at": null, "cancelling_at": null, "cancelled_at": null,
        "request_counts": {"total": counts.0, "completed": counts.1, "failed": counts.2},
        "metadata": {"run": "test"}
    });
    for (key, value) in extra.as_object().unwrap() {
        batch[key] = value.clone();
    }
    batch
}

async fn upload(State(fake): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let mut fake = fake.lock().unwrap();
    if !authorized(&fake, &headers) {
        return openai_error(StatusCode::UNAUTHORIZED, "Incorrect API key provided", None);
    }
    let content_type = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default();
    let Some(boundary) = content_type.strip_prefix("multipart/form-data; boundary=") else {
        return openai_error(StatusCode::BAD_REQUEST, "expected multipart/form-data", None);
    };
    // Just enough multipart parsing for a test: the `purpose` field, then the `file` part.
    let text = String::from_utf8_lossy(&body).into_owned();
    if !text.contains("name=\"purpose\"\r\n\r\nbatch\r\n") {
        return openai_error(StatusCode::BAD_REQUEST, "purpose must be batch", Some("purpose"));
    }
    let Some(file_start) =
        text.find("name=\"file\"; filename=\"requests.jsonl\"").and_then(|at| text[at..].find("\r\n\r\n").map(|h| at + h + 4))
    else {
        return openai_error(StatusCode::BAD_REQUEST, "no file part", Some("file"));
    };
    let file_end = text[file_start..].find(&format!("\r\n--{boundary}--")).map(|e| file_start + e).unwrap_or(text.len());
    let file = body[file_start..file_end].to_vec();
    let bytes = file.len();
    fake.uploaded = Some(file);
    axum::Json(json!({"id": "file-in", "object": "file", "bytes": bytes, "created_at": 1_714_500_000, "filename": "requests.jsonl", "purpose": "batch", "status": "processed"}))
        .into_response()
}

async fn create(State(fake): State<Shared>, headers: HeaderMap, axum::Json(body): axum::Json<Value>) -> Response {
    let mut fake = fake.lock().unwrap();
    if !authorized(&fake, &headers) {
        return openai_error(StatusCode::UNAUTHORIZED, "Incorrect API key provided", None);
    }
    if fake.scenario == Scenario::RejectCreate {
        return openai_error(StatusCode::BAD_REQUEST, "The endpoint is not supported for this model.", Some("endpoint"));
    }
    fake.created = Some(body);
    axum::Json(batch_object("validating", (0, 0, 0), json!({}))).into_response()
}

async fn retrieve(State(fake): State<Shared>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let mut fake = fake.lock().unwrap();
    if !authorized(&fake, &headers) {
        return openai_error(StatusCode::UNAUTHORIZED, "Incorrect API key provided", None);
    }
    if id != "batch_test1" {
        return openai_error(StatusCode::NOT_FOUND, &format!("No batch found with id '{id}'."), None);
    }
    fake.polls += 1;
    let batch = match (fake.scenario, fake.polls) {
        (Scenario::Complete, 1) => batch_object("validating", (0, 0, 0), json!({})),
        (Scenario::Complete, 2) => batch_object("in_progress", (3, 1, 0), json!({"in_progress_at": 1_714_500_010})),
        (Scenario::Complete, _) => batch_object(
            "completed",
            (3, 2, 1),
            json!({"in_progress_at": 1_714_500_010, "finalizing_at": 1_714_500_100, "completed_at": 1_714_500_192,
                   "output_file_id": "file-out", "error_file_id": "file-err"}),
        ),
        (Scenario::Fail, 1) => batch_object("validating", (0, 0, 0), json!({})),
        (Scenario::Fail, _) => batch_object(
            "failed",
            (0, 0, 0),
            json!({"failed_at": 1_714_500_005, "errors": {"object": "list", "data": [
                {"code": "invalid_json", "line": 2, "message": "This line is not parseable as valid JSON.", "param": null},
                {"code": "mismatched_endpoint", "line": 3, "message": "The url does not match the batch endpoint.", "param": "url"}
            ]}}),
        ),
        (Scenario::Never | Scenario::RejectCreate, _) => batch_object("in_progress", (100, 7, 0), json!({})),
    };
    axum::Json(batch).into_response()
}

async fn cancel(State(fake): State<Shared>) -> Response {
    fake.lock().unwrap().cancels += 1;
    axum::Json(batch_object("cancelling", (100, 7, 0), json!({"cancelling_at": 1_714_500_050}))).into_response()
}

async fn list(State(_fake): State<Shared>) -> Response {
    let batch = batch_object("in_progress", (100, 7, 0), json!({}));
    axum::Json(json!({"object": "list", "data": [batch], "first_id": "batch_test1", "last_id": "batch_test1", "has_more": true}))
        .into_response()
}

async fn content(Path(id): Path<String>) -> Response {
    match id.as_str() {
        "file-out" => output_bytes().into_response(),
        "file-err" => ERROR_BYTES.into_response(),
        _ => openai_error(StatusCode::NOT_FOUND, "No such File object", Some("id")),
    }
}

/// Starts the stand-in api on 127.0.0.1:0; returns its `/v1` URL and its state.
async fn serve(scenario: Scenario) -> (String, Shared) {
    let fake = Arc::new(Mutex::new(Fake { scenario, key: "sk-test".into(), uploaded: None, created: None, polls: 0, cancels: 0 }));
    let app = Router::new()
        .route("/v1/files", post(upload))
        .route("/v1/files/{id}/content", get(content))
        .route("/v1/batches", post(create).get(list))
        .route("/v1/batches/{id}", get(retrieve))
        .route("/v1/batches/{id}/cancel", post(cancel))
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, fake)
}

/// The binary, run in `dir` with no key or api URL from this process's environment.
fn switchyard(dir: &std::path::Path, api_url: &str, key: Option<&str>) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard"));
    command.current_dir(dir).env_remove("OPENAI_API_KEY").env_remove("SWITCHYARD_API_URL").env("SWITCHYARD_API_URL", api_url);
    if let Some(key) = key {
        command.env("OPENAI_API_KEY", key);
    }
    command.kill_on_drop(true);
    command.arg("batch");
    command
}

fn requests_file(dir: &std::path::Path) -> (std::path::PathBuf, Vec<u8>) {
    let bytes: Vec<u8> = (0..3)
        .map(|i| format!("{{\"custom_id\":\"r{i}\",\"method\":\"POST\",\"url\":\"/v1/chat/completions\",\"body\":{{\"model\":\"echo\",\"messages\":[{{\"role\":\"user\",\"content\":\"hi {i}\"}}]}}}}\n"))
        .collect::<String>()
        .into_bytes();
    let path = dir.join("requests.jsonl");
    std::fs::write(&path, &bytes).unwrap();
    (path, bytes)
}

async fn run(command: &mut tokio::process::Command) -> Output {
    tokio::time::timeout(Duration::from_secs(60), command.output()).await.expect("switchyard batch finished within 60 s").unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_wait_uploads_follows_and_downloads() {
    let (url, fake) = serve(Scenario::Complete).await;
    let dir = tempfile::tempdir().unwrap();
    let (input, input_bytes) = requests_file(dir.path());
    let output = run(switchyard(dir.path(), &url, Some("sk-test")).args([
        "submit",
        input.to_str().unwrap(),
        "--endpoint",
        "/v1/chat/completions",
        "--metadata",
        "run=test",
        "--wait",
    ]))
    .await;
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    assert!(output.status.success(), "exit {:?}\nstdout: {stdout}\nstderr: {stderr}", output.status);
    let fake = fake.lock().unwrap();
    assert_eq!(fake.uploaded.as_deref(), Some(input_bytes.as_slice()), "the uploaded file is the input, byte for byte");
    assert_eq!(
        fake.created,
        Some(
            json!({"input_file_id": "file-in", "endpoint": "/v1/chat/completions", "completion_window": "24h", "metadata": {"run": "test"}})
        )
    );
    assert_eq!(fake.polls, 3, "validating, in_progress, completed");
    assert_eq!(std::fs::read(dir.path().join("requests.output.jsonl")).unwrap(), output_bytes());
    assert_eq!(std::fs::read(dir.path().join("requests.errors.jsonl")).unwrap(), ERROR_BYTES);
    assert!(!dir.path().join("requests.output.jsonl.part").exists());
    let mut lines = stdout.lines();
    assert_eq!(lines.next(), Some("batch_test1"), "{stdout}");
    let summary = lines.next().unwrap_or_default();
    assert!(summary.starts_with("batch_test1 completed: 2 done, 1 failed of 3 in 3m12s; output → "), "{summary}");
    assert!(summary.contains("requests.errors.jsonl"), "{summary}");
    // Not a terminal: progress comes as plain lines, one per status.
    assert!(stderr.contains("batch_test1: in_progress 1 done, 0 failed of 3"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_wait_to_chosen_paths_with_the_dev_key_file() {
    let (url, fake) = serve(Scenario::Complete).await;
    let dir = tempfile::tempdir().unwrap();
    let (input, _) = requests_file(dir.path());
    std::fs::create_dir(dir.path().join(".switchyard")).unwrap();
    std::fs::write(dir.path().join(".switchyard/dev-api-key"), "sk-test\n").unwrap();
    let output = run(switchyard(dir.path(), &url, None).args([
        "submit",
        input.to_str().unwrap(),
        "--endpoint=/v1/chat/completions",
        "--wait",
        "--output",
        "out/o.jsonl",
        "--errors",
        "e.jsonl",
    ]))
    .await;
    assert!(output.status.success(), "stderr: {}", text(&output.stderr));
    assert_eq!(std::fs::read(dir.path().join("out/o.jsonl")).unwrap(), output_bytes(), "the missing folder is created");
    assert_eq!(std::fs::read(dir.path().join("e.jsonl")).unwrap(), ERROR_BYTES);
    assert!(!dir.path().join("requests.output.jsonl").exists());
    // `download` fetches the same files again, by default as <ID>.output.jsonl here.
    let output = run(switchyard(dir.path(), &url, None).args(["download", "batch_test1"])).await;
    assert!(output.status.success(), "stderr: {}", text(&output.stderr));
    assert_eq!(std::fs::read(dir.path().join("batch_test1.output.jsonl")).unwrap(), output_bytes());
    assert_eq!(std::fs::read(dir.path().join("batch_test1.errors.jsonl")).unwrap(), ERROR_BYTES);
    assert_eq!(fake.lock().unwrap().cancels, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_batch_exits_non_zero_with_its_line_errors() {
    let (url, _fake) = serve(Scenario::Fail).await;
    let dir = tempfile::tempdir().unwrap();
    let (input, _) = requests_file(dir.path());
    let output = run(switchyard(dir.path(), &url, Some("sk-test")).args([
        "submit",
        input.to_str().unwrap(),
        "--endpoint",
        "/v1/chat/completions",
        "--wait",
    ]))
    .await;
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "stderr: {stderr}");
    assert!(stderr.contains("line 2: invalid_json: This line is not parseable as valid JSON."), "{stderr}");
    assert!(stderr.contains("line 3: mismatched_endpoint: The url does not match the batch endpoint. (param: url)"), "{stderr}");
    assert!(stderr.contains("batch batch_test1 failed"), "{stderr}");
    assert!(!dir.path().join("requests.output.jsonl").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_errors_show_openai_s_message_and_status() {
    let (url, _fake) = serve(Scenario::RejectCreate).await;
    let dir = tempfile::tempdir().unwrap();
    let (input, _) = requests_file(dir.path());
    let output =
        run(switchyard(dir.path(), &url, Some("sk-test")).args(["submit", input.to_str().unwrap(), "--endpoint", "/v1/embeddings"])).await;
    let stderr = text(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains(&format!("POST {url}/batches failed: HTTP 400 Bad Request: The endpoint is not supported for this model. (type: invalid_request_error, param: endpoint)")), "{stderr}");
    // A wrong key: 401 and the api's message.
    let output = run(switchyard(dir.path(), &url, Some("sk-wrong")).args(["status", "batch_test1"])).await;
    let stderr = text(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("HTTP 401 Unauthorized: Incorrect API key provided"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_refused_names_the_url() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("http://127.0.0.1:{port}/v1");
    let dir = tempfile::tempdir().unwrap();
    let output = run(switchyard(dir.path(), &url, None).args(["status", "batch_x"])).await;
    let stderr = text(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains(&format!("could not connect to {url}/batches/batch_x")), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_list_and_cancel() {
    let (url, fake) = serve(Scenario::Never).await;
    let dir = tempfile::tempdir().unwrap();
    let output = run(switchyard(dir.path(), &url, Some("sk-test")).args(["status", "batch_test1"])).await;
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(stdout.contains("status:       in_progress\n"), "{stdout}");
    assert!(stdout.contains("requests:     7 completed, 0 failed, 100 total\n"), "{stdout}");
    assert!(stdout.contains("created:      2024-04-30 18:00:00 UTC\n"), "{stdout}");
    assert!(stdout.contains("metadata:     run=test\n"), "{stdout}");

    let output = run(switchyard(dir.path(), &url, Some("sk-test")).args(["status", "batch_test1", "--json"])).await;
    let raw: Value = serde_json::from_slice(&output.stdout).expect("--json prints the object");
    assert_eq!(raw["request_counts"]["total"], 100);

    let output = run(switchyard(dir.path(), &url, Some("sk-test")).args(["list", "--limit", "1"])).await;
    let stdout = text(&output.stdout);
    assert!(output.status.success());
    assert!(stdout.starts_with("ID           STATUS       ENDPOINT              DONE/FAILED/TOTAL  CREATED\n"), "{stdout}");
    assert!(stdout.contains("batch_test1  in_progress  /v1/chat/completions  7/0/100"), "{stdout}");
    assert!(text(&output.stderr).contains("switchyard batch list --after batch_test1"));

    let output = run(switchyard(dir.path(), &url, Some("sk-test")).args(["cancel", "batch_test1"])).await;
    assert_eq!(text(&output.stdout), "batch_test1 cancelling\n");
    assert_eq!(fake.lock().unwrap().cancels, 1);

    let output = run(switchyard(dir.path(), &url, Some("sk-test")).args(["download", "batch_test1"])).await;
    assert!(!output.status.success());
    assert!(text(&output.stderr).contains("batch batch_test1 has no output or error file yet (status: in_progress)"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_stops_waiting_without_cancelling() {
    let (url, fake) = serve(Scenario::Never).await;
    let dir = tempfile::tempdir().unwrap();
    let child = switchyard(dir.path(), &url, Some("sk-test"))
        .args(["status", "batch_test1", "--wait"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while fake.lock().unwrap().polls < 3 {
        assert!(tokio::time::Instant::now() < deadline, "the CLI never polled three times");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // SAFETY: kill(2) on the pid of a child this test started and has not reaped.
    assert_eq!(unsafe { libc::kill(child.id().unwrap() as i32, libc::SIGINT) }, 0);
    let output =
        tokio::time::timeout(Duration::from_secs(10), child.wait_with_output()).await.expect("it stops waiting on Ctrl-C").unwrap();
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("stopped waiting; batch batch_test1 goes on (in_progress, not cancelled)"), "{stderr}");
    assert!(stderr.contains("switchyard batch status batch_test1 --wait"), "{stderr}");
    assert_eq!(fake.lock().unwrap().cancels, 0, "Ctrl-C never cancels the batch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dev_key_file_goes_to_a_local_api_only() {
    let (url, _fake) = serve(Scenario::Never).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join(".switchyard")).unwrap();
    std::fs::write(dir.path().join(".switchyard/dev-api-key"), "sk-test\n").unwrap();
    // `localhost` is this machine: the dev key is sent.
    let localhost = url.replace("127.0.0.1", "localhost");
    let output = run(switchyard(dir.path(), &localhost, None).args(["status", "batch_test1"])).await;
    assert!(output.status.success(), "stderr: {}", text(&output.stderr));

    // A remote name, reached here through an HTTP proxy that is the stand-in itself: the dev key
    // stays home (the stand-in answers 401), and the CLI says why.
    let proxy = url.trim_end_matches("/v1").to_string();
    let remote = "http://batches.example.invalid/v1";
    let through_proxy = |key: Option<&str>| {
        let mut command = switchyard(dir.path(), remote, key);
        for name in ["NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"] {
            command.env_remove(name);
        }
        command.env("http_proxy", &proxy).env("HTTP_PROXY", &proxy);
        command
    };
    let output = run(through_proxy(None).args(["status", "batch_test1"])).await;
    let stderr = text(&output.stderr);
    assert!(!output.status.success(), "the dev key must not reach {remote}: {stderr}");
    assert!(stderr.contains(&format!("GET {remote}/batches/batch_test1 failed: HTTP 401 Unauthorized")), "{stderr}");
    assert!(stderr.contains("not sending .switchyard/dev-api-key to http://batches.example.invalid/v1"), "{stderr}");
    // A key given explicitly goes wherever --api-url points.
    let output = run(through_proxy(Some("sk-test")).args(["status", "batch_test1"])).await;
    assert!(output.status.success(), "stderr: {}", text(&output.stderr));
    assert!(text(&output.stdout).contains("status:       in_progress\n"));
}
