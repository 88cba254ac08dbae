//! `/mcp` end to end (issue "Tool-call jobs", part MCP): the demo tool worker on a real stack,
//! reached with the official Rust SDK's client (`rmcp`, Streamable HTTP) and with the Python
//! `mcp` package — listed, called plain and streamed (progress notifications), failing,
//! forbidden, named apart when two models share a function name, and cancelled.

use std::process::Stdio;
use std::time::Duration;

use rmcp::model::{CallToolRequest, CallToolRequestParams, CallToolResult, ClientRequest, ErrorCode, ProgressNotificationParam};
use rmcp::service::{NotificationContext, PeerRequestOptions, RunningService};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{ClientHandler, RoleClient, ServiceError, ServiceExt};
use serde_json::{Value, json};
use switchyard_broker::apikeys::{ApiKeys, KeySpec};
use switchyard_schemas::{EventBody, FinishReason};
use switchyard_tests::{Stack, assert_openai_error, eventually, tail, workspace_root};
use tokio::sync::mpsc;

const MODEL: &str = "demo-tools";

/// A client that passes on every progress notification it gets.
struct Progress(mpsc::UnboundedSender<ProgressNotificationParam>);

impl ClientHandler for Progress {
    async fn on_progress(&self, params: ProgressNotificationParam, _: NotificationContext<RoleClient>) {
        let _ = self.0.send(params);
    }
}

type Client = RunningService<RoleClient, Progress>;

/// An MCP session with the api's `/mcp`, over a reqwest client of the harness's.
async fn try_connect(stack: &Stack, key: Option<&str>) -> Result<(Client, mpsc::UnboundedReceiver<ProgressNotificationParam>), String> {
    let http = switchyard_tests::http_client().build().expect("reqwest client");
    let mut config = StreamableHttpClientTransportConfig::with_uri(stack.api_url("/mcp"));
    if let Some(key) = key {
        config = config.auth_header(key);
    }
    let transport = StreamableHttpClientTransport::with_client(http, config);
    let (tx, rx) = mpsc::unbounded_channel();
    let client = Progress(tx).serve(transport).await.map_err(|e| format!("{e:?}"))?;
    Ok((client, rx))
}

async fn connect(stack: &Stack, key: Option<&str>) -> (Client, mpsc::UnboundedReceiver<ProgressNotificationParam>) {
    try_connect(stack, key).await.unwrap_or_else(|e| panic!("connecting to /mcp: {e}\n--- api log ---\n{}", tail(&stack.api().log(), 30)))
}

fn params(name: &str, arguments: Value) -> CallToolRequestParams {
    let mut params = CallToolRequestParams::new(name.to_owned());
    params.arguments = arguments.as_object().cloned();
    params
}

async fn call(client: &Client, name: &str, arguments: Value) -> Result<CallToolResult, ServiceError> {
    client.call_tool(params(name, arguments)).await
}

/// The one text content of a result.
fn text(result: &CallToolResult) -> &str {
    assert_eq!(result.content.len(), 1, "one content block: {result:?}");
    &result.content[0].as_text().unwrap_or_else(|| panic!("text content: {result:?}")).text
}

/// The tool names a client sees, after the worker's model is in the api's directory.
async fn tool_names(client: &Client, expect: &str) -> Vec<String> {
    eventually(Duration::from_secs(30), &format!("{expect} in tools/list"), || async {
        let tools = client.list_all_tools().await.expect("tools/list");
        let names: Vec<String> = tools.iter().map(|t| t.name.to_string()).collect();
        names.iter().any(|n| n == expect).then_some(names)
    })
    .await
}

fn mcp_error_code(error: &ServiceError) -> ErrorCode {
    match error {
        ServiceError::McpError(data) => data.code,
        other => panic!("not an MCP error: {other:?}"),
    }
}

#[tokio::test]
async fn tools_are_listed_and_called_plain_and_streamed() {
    let stack = Stack::start().await;
    let _worker = stack.ready_worker(&["tools-demo"], MODEL).await;
    let (client, mut progress) = connect(&stack, None).await;

    // The same functions as /v1/tools, under their own names, with their input schemas.
    tool_names(&client, "custom_method").await;
    let tools = client.list_all_tools().await.unwrap();
    let rest: Value = stack.http().get(stack.api_url("/v1/tools")).send().await.unwrap().json().await.unwrap();
    let mut rest_names: Vec<&str> = rest["data"].as_array().unwrap().iter().map(|t| t["function"]["name"].as_str().unwrap()).collect();
    let mut names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    rest_names.sort();
    names.sort();
    assert_eq!(names, rest_names);
    let add = tools.iter().find(|t| t.name == "custom_method").unwrap();
    assert_eq!(add.description.as_deref(), Some("Returns a + b."));
    assert_eq!(add.input_schema["type"], "object");
    assert_eq!(add.input_schema["properties"]["a"]["type"], "integer");
    assert_eq!(add.input_schema["properties"]["b"]["default"], 2);

    // A plain function: its JSON as text; an object also as structuredContent.
    let result = call(&client, "custom_method", json!({"a": 5, "b": 7})).await.unwrap();
    assert_eq!(result.is_error, Some(false), "{result:?}");
    assert_eq!(text(&result), "12");
    assert_eq!(result.structured_content, None);
    assert_eq!(text(&call(&client, "custom_method", json!({})).await.unwrap()), "3", "defaults fill in");
    let info = call(&client, "get_info", json!({})).await.unwrap();
    let structured = info.structured_content.clone().expect("an object result is structured content");
    assert_eq!(structured["model"], MODEL);
    assert_eq!(serde_json::from_str::<Value>(text(&info)).unwrap(), structured);

    // A stream: each chunk a progress notification (in order, with the call's token), and all
    // of them the result.
    let result = call(&client, "get_stream", json!({"count": 5, "interval_ms": 10})).await.unwrap();
    assert_eq!(result.is_error, Some(false), "{result:?}");
    assert_eq!(serde_json::from_str::<Value>(text(&result)).unwrap(), json!([0, 1, 2, 3, 4]));
    let mut seen = Vec::new();
    while let Ok(Some(p)) = tokio::time::timeout(Duration::from_secs(2), progress.recv()).await {
        seen.push(p);
        if seen.len() == 5 {
            break;
        }
    }
    let messages: Vec<Value> = seen.iter().map(|p| serde_json::from_str(p.message.as_deref().expect("a message")).unwrap()).collect();
    assert_eq!(messages, (0..5).map(|i| json!(i)).collect::<Vec<_>>());
    assert_eq!(seen.iter().map(|p| p.progress).collect::<Vec<_>>(), vec![1.0, 2.0, 3.0, 4.0, 5.0]);
    assert!(seen.windows(2).all(|w| w[0].progress_token == w[1].progress_token), "one call's token: {seen:?}");

    // Failures are the tool's (isError, the message); an unknown tool is the protocol's.
    let failed = call(&client, "fail", json!({"message": "it broke"})).await.unwrap();
    assert_eq!(failed.is_error, Some(true), "{failed:?}");
    assert_eq!(text(&failed), "it broke");
    let bad = call(&client, "custom_method", json!({"a": "five"})).await.unwrap();
    assert_eq!(bad.is_error, Some(true), "{bad:?}");
    assert!(text(&bad).contains("`a`"), "the message names the argument: {bad:?}");
    let unknown = call(&client, "no_such_tool", json!({})).await.unwrap_err();
    assert_eq!(mcp_error_code(&unknown), ErrorCode::INVALID_PARAMS, "{unknown:?}");
    // The worker goes on serving, and the prefixed name always works.
    assert_eq!(text(&call(&client, "demo-tools.custom_method", json!({"a": 2, "b": 2})).await.unwrap()), "4");
    client.cancel().await.unwrap();

    // /openapi.json says where MCP is.
    let doc: Value = stack.http().get(stack.api_url("/openapi.json")).send().await.unwrap().json().await.unwrap();
    assert!(doc["info"]["description"].as_str().unwrap().contains("`/mcp`"), "{}", doc["info"]);
    let tag = doc["tags"].as_array().unwrap().iter().find(|t| t["name"] == "mcp").expect("an mcp tag");
    assert!(tag["description"].as_str().unwrap().contains("Authorization: Bearer"), "{tag}");
}

#[tokio::test]
async fn a_function_name_two_models_share_is_prefixed_with_the_model() {
    let stack = Stack::start().await;
    let _a = stack.ready_worker(&["tools-demo"], MODEL).await;
    let _b = stack.ready_worker(&["tools-demo", "--name", "team/other-tools"], "team/other-tools").await;
    let (client, _) = connect(&stack, None).await;
    let names = tool_names(&client, "team_other-tools.get_info").await;
    for function in ["custom_method", "get_stream", "get_info", "fail", "sleep"] {
        assert!(names.contains(&format!("demo-tools.{function}")), "{names:?}");
        assert!(names.contains(&format!("team_other-tools.{function}")), "{names:?}");
        assert!(!names.contains(&function.to_owned()), "{names:?}");
    }
    for (name, model) in [("demo-tools.get_info", MODEL), ("team_other-tools.get_info", "team/other-tools")] {
        let info = call(&client, name, json!({})).await.unwrap();
        assert_eq!(info.structured_content.as_ref().unwrap()["model"], model, "{info:?}");
    }
    let ambiguous = call(&client, "get_info", json!({})).await.unwrap_err();
    assert_eq!(mcp_error_code(&ambiguous), ErrorCode::INVALID_PARAMS, "{ambiguous:?}");
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn keys_and_permissions_apply_as_on_rest() {
    let stack = Stack::builder().with_auth().start().await;
    let worker = stack.worker(&["tools-demo", "--permissions", "users: alice"]);
    stack.worker_id(&worker).await;
    let keys = ApiKeys::new(switchyard_broker::connect_redis(&stack.redis_url()).await.expect("redis"));
    let (alice, _) = keys.create(KeySpec { user: "alice".into(), ..Default::default() }).await.unwrap();
    let (bob, _) = keys.create(KeySpec { user: "bob".into(), ..Default::default() }).await.unwrap();

    // No key, or a wrong one: HTTP 401 in OpenAI's body, before any MCP.
    let initialize = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "curl", "version": "1"}}});
    for key in [None, Some("sk-wrong")] {
        let mut request =
            stack.http().post(stack.api_url("/mcp")).header("accept", "application/json, text/event-stream").json(&initialize);
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401);
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
        let body: Value = response.json().await.unwrap();
        assert_eq!(assert_openai_error(&body)["code"], "invalid_api_key");
    }
    assert!(try_connect(&stack, None).await.is_err(), "an MCP client without a key is refused");

    let (as_alice, _) = connect(&stack, Some(&alice)).await;
    tool_names(&as_alice, "custom_method").await;
    assert_eq!(text(&call(&as_alice, "custom_method", json!({"a": 1, "b": 1})).await.unwrap()), "2");

    let (as_bob, _) = connect(&stack, Some(&bob)).await;
    assert!(as_bob.list_all_tools().await.unwrap().is_empty(), "bob sees no tools");
    for name in ["custom_method", "demo-tools.custom_method"] {
        let refused = call(&as_bob, name, json!({"a": 1, "b": 1})).await.unwrap_err();
        assert_eq!(mcp_error_code(&refused), ErrorCode::INVALID_PARAMS, "a forbidden tool reads like an unknown one: {refused:?}");
    }
    as_alice.cancel().await.unwrap();
    as_bob.cancel().await.unwrap();

    // The key's limits apply as on REST: a refusal is a JSON-RPC error carrying the 429.
    let limits = switchyard_schemas::RateLimits { rpm: Some(1), tpm: None };
    let (limited, _) = keys.create(KeySpec { user: "alice".into(), limits, ..Default::default() }).await.unwrap();
    let (client, _) = connect(&stack, Some(&limited)).await;
    tool_names(&client, "custom_method").await;
    assert_eq!(text(&call(&client, "custom_method", json!({})).await.unwrap()), "3");
    let refused = call(&client, "custom_method", json!({})).await.unwrap_err();
    let ServiceError::McpError(data) = &refused else { panic!("not an MCP error: {refused:?}") };
    assert_eq!(data.code, ErrorCode::INTERNAL_ERROR, "{refused:?}");
    let data = data.data.as_ref().expect("error data");
    assert_eq!(data["status"], 429, "{data}");
    assert_eq!(data["error"]["code"], "rate_limit_exceeded", "{data}");
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn open_sessions_do_not_hold_up_the_apis_shutdown() {
    let stack = Stack::start().await;
    let _worker = stack.ready_worker(&["tools-demo"], MODEL).await;
    let (client, _) = connect(&stack, None).await;
    tool_names(&client, "custom_method").await;
    stack.api().sigterm();
    let status = stack.api().wait_exit(Duration::from_secs(10)).await;
    assert!(status.is_some_and(|s| s.success()), "the api exited at once, cleanly: {status:?}\n{}", tail(&stack.api().log(), 20));
    drop(client);
}

#[tokio::test]
async fn a_cancelled_call_cancels_its_job() {
    let stack = Stack::start().await;
    let _worker = stack.ready_worker(&["tools-demo"], MODEL).await;
    let (client, mut progress) = connect(&stack, None).await;
    tool_names(&client, "get_stream").await;
    let mut tap = stack.tap_replies().await;
    let request = ClientRequest::CallToolRequest(CallToolRequest::new(params("get_stream", json!({"count": 10000, "interval_ms": 20}))));
    let handle = client.send_cancellable_request(request, PeerRequestOptions::no_options()).await.unwrap();
    for i in 0..3 {
        let p = tokio::time::timeout(Duration::from_secs(20), progress.recv()).await.expect("progress").unwrap();
        assert_eq!(p.message.as_deref(), Some(i.to_string().as_str()));
    }
    handle.cancel(Some("enough".into())).await.unwrap();
    // On the worker's side: the job ends cancelled, long before its 200 s of numbers.
    let done = tap
        .wait_for(Duration::from_secs(20), |e| matches!(e.body, EventBody::Done { .. } | EventBody::Error { .. }))
        .await
        .expect("the worker ended the call");
    assert!(matches!(done.body, EventBody::Done { finish_reason: FinishReason::Cancelled, .. }), "{:?}", done.body);
    let chunks = tap.seen().iter().filter(|(_, e)| matches!(e.body, EventBody::ToolChunk { .. })).count();
    assert!(chunks < 1000, "the function stopped soon after the cancellation ({chunks} chunks)");
    // The session goes on.
    assert_eq!(text(&call(&client, "custom_method", json!({"a": 1, "b": 2})).await.unwrap()), "3");
    client.cancel().await.unwrap();
}

/// The Python SDK's client (`mcp`, in `.switchyard/py-venv` from `scripts/setup.sh --test-tools`)
/// lists and calls the tools with a key.
#[tokio::test]
async fn the_python_mcp_client_lists_and_calls() {
    let python = workspace_root().join(".switchyard/py-venv/bin/python");
    assert!(
        python.is_file(),
        "no Python venv with `mcp` at {}: run `scripts/setup.sh --test-tools` (it installs the `mcp` package there)",
        python.display()
    );
    let stack = Stack::builder().with_auth().start().await;
    let worker = stack.worker(&["tools-demo"]);
    stack.worker_id(&worker).await;
    let keys = ApiKeys::new(switchyard_broker::connect_redis(&stack.redis_url()).await.expect("redis"));
    let (key, _) = keys.create(KeySpec { user: "py".into(), ..Default::default() }).await.unwrap();
    let (client, _) = connect(&stack, Some(&key)).await;
    tool_names(&client, "custom_method").await;
    client.cancel().await.unwrap();

    let script = workspace_root().join("tests/tests/mcp_client.py");
    let output = tokio::process::Command::new(&python)
        .arg(&script)
        .arg(stack.api_url("/mcp"))
        .env("SWITCHYARD_KEY", &key)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), output).await.expect("the script finished in 60 s").expect("running python");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{} failed:\n{stdout}\n{stderr}\n--- api log ---\n{}", script.display(), tail(&stack.api().log(), 30));
    let report: Value = serde_json::from_str(stdout.trim().lines().last().unwrap_or_default()).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert!(report["tools"].as_array().unwrap().iter().any(|t| t == "custom_method"), "{report}");
    assert_eq!(report["sum"], json!({"text": "12", "is_error": false}));
    assert_eq!(report["stream"]["result"], json!([0, 1, 2]));
    assert_eq!(report["stream"]["progress"], json!(["0", "1", "2"]));
    assert_eq!(report["fail"], json!({"text": "it broke", "is_error": true}));
    assert_eq!(report["no_key"], "refused");
}

/// What is not MCP gets a 4xx from the transport, never a 5xx.
#[tokio::test]
async fn malformed_requests_are_refused_with_4xx() {
    let stack = Stack::builder().with_auth().body_limit(64 * 1024).start().await;
    let keys = ApiKeys::new(switchyard_broker::connect_redis(&stack.redis_url()).await.expect("redis"));
    let (key, _) = keys.create(KeySpec { user: "alice".into(), ..Default::default() }).await.unwrap();
    let url = stack.api_url("/mcp");
    let both = "application/json, text/event-stream";
    let big = format!("{{\"jsonrpc\": \"2.0\", \"id\": 1, \"method\": \"ping\", \"params\": {{\"x\": \"{}\"}}}}", "x".repeat(100 * 1024));
    let cases: Vec<(&str, reqwest::RequestBuilder)> = vec![
        ("not JSON", stack.http().post(&url).header("accept", both).header("content-type", "application/json").body("{oops")),
        ("not JSON-RPC", stack.http().post(&url).header("accept", both).json(&json!({"hello": 1}))),
        ("no Accept", stack.http().post(&url).json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))),
        ("a form", stack.http().post(&url).header("accept", both).header("content-type", "text/plain").body("a=1")),
        (
            "an unknown session",
            stack
                .http()
                .post(&url)
                .header("accept", both)
                .header("mcp-session-id", "nope")
                .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})),
        ),
        ("GET without a session", stack.http().get(&url).header("accept", "text/event-stream")),
        ("DELETE without a session", stack.http().delete(&url)),
        ("PUT", stack.http().put(&url).body("x")),
        ("over the body limit", stack.http().post(&url).header("accept", both).header("content-type", "application/json").body(big)),
    ];
    for (what, request) in cases {
        let response = request.bearer_auth(&key).send().await.unwrap();
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        assert!(status.is_client_error(), "{what}: {status} {body}");
    }
}
