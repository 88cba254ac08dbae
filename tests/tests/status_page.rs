//! The status page (`GET /status`, `GET /status/data`) and `switchyard status` against a running
//! stack: admin keys only; every model, worker and lane of the stack; a new worker shows up in an
//! open page without a reload, in headless Chromium driven over the DevTools protocol; a
//! screenshot of the page is kept under `<target>/test-artifacts/status-page.png`.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use switchyard_tests::batch::{BatchClient, chat_input};
use switchyard_tests::openai::chat_request;
use switchyard_tests::{Proc, Stack, assert_openai_error, eventually, profile_dir};
use tokio_websockets::{ClientBuilder, MaybeTlsStream, Message, WebSocketStream};

/// `switchyard keys create --user <user> [extra…]`: the secret it prints.
fn create_key(stack: &Stack, user: &str, extra: &[&str]) -> String {
    let mut args = vec!["keys", "create", "--user", user];
    args.extend_from_slice(extra);
    let output = stack.run_cli(&args);
    assert!(output.status.success(), "switchyard {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).expect("utf-8 secret").trim().to_string()
}

/// `GET <path>` with `key` as Bearer token: status and body text.
async fn get(stack: &Stack, path: &str, key: Option<&str>) -> (u16, String) {
    let mut request = stack.http().get(stack.api_url(path));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.unwrap_or_else(|e| panic!("GET {path}: {e}"));
    (response.status().as_u16(), response.text().await.expect("reading the body"))
}

/// `GET /status/data` as JSON, expecting 200.
async fn status_data(stack: &Stack, key: Option<&str>) -> Value {
    let (status, body) = get(stack, "/status/data", key).await;
    assert_eq!(status, 200, "GET /status/data: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET /status/data is not JSON ({e}): {body}"))
}

fn model<'a>(data: &'a Value, name: &str) -> Option<&'a Value> {
    data["models"].as_array()?.iter().find(|m| m["name"] == name)
}

fn worker<'a>(data: &'a Value, id: &str) -> Option<&'a Value> {
    data["workers"].as_array()?.iter().find(|w| w["id"] == id)
}

fn lane<'a>(data: &'a Value, model: &str, lane: &str) -> Option<&'a Value> {
    data["lanes"].as_array()?.iter().find(|l| l["model"] == model && l["lane"] == lane)
}

fn has_lane(data: &Value, model: &str, name: &str) -> bool {
    lane(data, model, name).is_some()
}

#[tokio::test]
async fn the_status_page_shows_the_stack_to_admin_keys_and_updates_live() {
    let stack = Stack::builder().with_auth().start().await;
    let first = stack.worker(&["echo", "--slots", "3"]);
    let first_id = stack.worker_id(&first).await;
    let admin = create_key(&stack, "ops", &["--admin"]);
    let user = create_key(&stack, "alice", &[]);

    // `keys list` tells the admin key apart.
    let list = stack.run_cli(&["keys", "list"]);
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(list.lines().next().is_some_and(|header| header.contains("ADMIN")), "{list}");
    let flag = |user: &str| list.lines().find(|l| l.split_whitespace().nth(1) == Some(user)).map(|l| l.contains(" yes "));
    assert_eq!((flag("ops"), flag("alice")), (Some(true), Some(false)), "{list}");

    // No key: 401. A valid key without the admin flag: 403 with OpenAI's error body, also for a
    // browser's `?key=`.
    for path in ["/status/data", "/status", "/status/data?format=html"] {
        let (status, body) = get(&stack, path, None).await;
        assert_eq!(status, 401, "{path} without a key: {body}");
        let (status, body) = get(&stack, path, Some(&user)).await;
        assert_eq!(status, 403, "{path} with a non-admin key: {body}");
        let body: Value = serde_json::from_str(&body).expect("an error body");
        assert_eq!(assert_openai_error(&body)["code"], "insufficient_permissions", "{body}");
    }
    let (status, body) = get(&stack, &format!("/status?key={user}"), None).await;
    assert_eq!(status, 403, "/status?key=<non-admin>: {body}");

    // A batch for a model whose only worker has gone stays in progress, its lines queued.
    let gone = stack.worker(&["echo", "--name", "status-batch-model", "--embedding-name", "status-batch-embedding"]);
    stack.worker_id(&gone).await;
    gone.sigterm();
    assert!(gone.wait_exit(Duration::from_secs(15)).await.is_some(), "the worker did not stop:\n{}", gone.log());
    let batches = BatchClient::new(stack.http(), stack.api_url(""), Some(&user));
    let input = batches.upload_input(chat_input(3, "status-batch-model", &json!({}))).await;
    let batch = batches.create(&input, "/v1/chat/completions", "24h").await;
    let batch_id = batch["id"].as_str().expect("a batch id").to_string();

    // A request through this replica shows in its last minute.
    let response = stack.http().post(stack.api_url("/v1/chat/completions")).bearer_auth(&user).json(&chat_request("echo", "hi")).send();
    assert_eq!(response.await.unwrap().status(), 200);

    // The admin key sees the stack: models with their kind and workers, the worker, both lanes.
    let data = eventually(Duration::from_secs(20), "echo's lanes and last minute in /status/data", || async {
        let data = status_data(&stack, Some(&admin)).await;
        let ready = has_lane(&data, "echo", "interactive")
            && has_lane(&data, "echo", "batch")
            && model(&data, "echo").is_some_and(|m| m["last_minute"]["finished"] == 1)
            && lane(&data, "status-batch-model", "batch").is_some_and(|l| l["pending"] == 3)
            && data["batches"].as_array().is_some_and(|b| b.iter().any(|b| b["id"] == batch_id && b["status"] == "in_progress"));
        ready.then_some(data)
    })
    .await;
    let echo = model(&data, "echo").unwrap_or_else(|| panic!("no echo model: {data:#}"));
    assert_eq!(echo["kind"], "chat", "{echo}");
    assert_eq!(echo["workers"], json!([first_id]), "{echo}");
    assert_eq!(echo["slots"], 3, "{echo}");
    assert_eq!(echo["last_minute"]["errors"], 0, "{echo}");
    assert!(echo["last_minute"]["ttft_p50_s"].is_number(), "{echo}");
    assert_eq!(model(&data, "echo-embedding").map(|m| m["kind"].clone()), Some(json!("embedding")), "{data:#}");
    let record = worker(&data, &first_id).unwrap_or_else(|| panic!("no worker {first_id}: {data:#}"));
    assert_eq!((&record["backend"], &record["slots"], &record["busy"]), (&json!("echo"), &json!(3), &json!(0)), "{record}");
    assert_eq!(record["pid"], first.pid(), "{record}");
    assert!(record["heartbeat_age_ms"].as_u64().is_some_and(|age| age < 30_000), "{record}");
    assert_eq!(data["errors"], json!([]), "{data:#}");
    let queued = model(&data, "status-batch-model").unwrap_or_else(|| panic!("the gone worker's model is still known: {data:#}"));
    assert_eq!((&queued["kind"], &queued["workers"]), (&json!("chat"), &json!([])), "{queued}");
    let summary = data["batches"].as_array().unwrap().iter().find(|b| b["id"] == batch_id).unwrap();
    assert_eq!(summary["request_counts"], json!({"total": 3, "completed": 0, "failed": 0}), "{summary}");
    assert_eq!((&summary["user"], &summary["endpoint"]), (&json!("alice"), &json!("/v1/chat/completions")), "{summary}");

    // The page in a browser: the key once in the URL, then kept in a cookie.
    let chromium = Chromium::start(&stack).await;
    let mut page = chromium.page().await;
    page.call("Page.navigate", json!({"url": stack.api_url(&format!("/status?key={admin}"))})).await;
    let text =
        page.wait_for_text(&["echo-embedding", &first_id, "Workers", "Queues", "Batches in progress"], Duration::from_secs(15)).await;
    assert!(text.contains("interactive") && text.contains("batch"), "the lanes are on the page:\n{text}");
    assert_eq!(page.eval("location.pathname + location.search").await, "/status", "the key left the address bar");
    // A marker that a reload would wipe.
    page.eval("window.__not_reloaded = 'yes'").await;

    // A new worker with a model of its own appears without a reload.
    let second = stack.worker(&["echo", "--name", "status-new-model", "--embedding-name", "status-new-embedding"]);
    let second_id = stack.worker_id(&second).await;
    let text = page.wait_for_text(&["status-new-model", "status-new-embedding", &second_id], Duration::from_secs(15)).await;
    assert!(text.contains(&first_id), "{text}");
    assert_eq!(page.eval("window.__not_reloaded").await, "yes", "the page was reloaded");
    let shot = page.screenshot("status-page.png").await;
    println!("status page screenshot: {}", shot.display());

    // `switchyard status` prints the same.
    let url = stack.api_url("");
    let output = stack.run_cli(&["status", "--url", &url, "--api-key", &admin]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "switchyard status: {}\n{stdout}", String::from_utf8_lossy(&output.stderr));
    println!("switchyard status:\n{stdout}");
    for expected in
        ["MODELS", "WORKERS", "QUEUES", "BATCHES IN PROGRESS", "echo-embedding", "status-new-model", &first_id, &second_id, &batch_id]
    {
        assert!(stdout.contains(expected), "switchyard status lacks {expected:?}:\n{stdout}");
    }
    let echo_row = stdout.lines().find(|l| l.split_whitespace().next() == Some("echo")).unwrap_or_else(|| panic!("no echo row:\n{stdout}"));
    assert!(echo_row.contains("chat") && echo_row.contains("0 / 3"), "{echo_row}");
    let queued_row = stdout.lines().find(|l| l.starts_with("status-batch-model ")).unwrap_or_else(|| panic!("no queued row:\n{stdout}"));
    assert!(queued_row.contains("3 / 0"), "the batch lane's 3 pending jobs: {queued_row}");
    let output = stack.run_cli(&["status", "--url", &url, "--api-key", &user]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("403"), "a non-admin key fails: {stderr}");
    let output = stack.run_cli(&["status", "--url", &url, "--api-key", &admin, "--json"]);
    let json: Value = serde_json::from_slice(&output.stdout).expect("--json prints JSON");
    assert!(worker(&json, &second_id).is_some(), "{json:#}");
}

#[tokio::test]
async fn without_auth_the_status_page_is_open() {
    let stack = Stack::start().await;
    let (_worker, id) = stack.ready_worker(&["echo"], "echo").await;
    let data = status_data(&stack, None).await;
    assert!(worker(&data, &id).is_some() && model(&data, "echo").is_some(), "{data:#}");
    let (status, page) = get(&stack, "/status", None).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("<title>Switchyard status</title>") && page.contains(&id), "{page}");
    let (status, fragment) = get(&stack, "/status/data?format=html", None).await;
    assert!(status == 200 && fragment.contains("<table>") && !fragment.contains("<html"), "{fragment}");
}

/// Headless Chromium (`$SWITCHYARD_CHROMIUM`, else Debian's `/usr/bin/chromium`) with the
/// DevTools protocol on a port of its choosing, killed with its process group on drop.
struct Chromium {
    _proc: Proc,
    port: u16,
    http: reqwest::Client,
    _profile: tempfile::TempDir,
}

impl Chromium {
    async fn start(stack: &Stack) -> Chromium {
        let bin = std::env::var_os("SWITCHYARD_CHROMIUM").map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from);
        assert!(bin.is_file(), "{} does not exist: install Chromium with `scripts/setup.sh --test-tools`", bin.display());
        let profile = tempfile::tempdir().expect("a profile directory");
        let mut command = Command::new(&bin);
        command.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--remote-debugging-port=0",
            "--window-size=1400,900",
            "about:blank",
        ]);
        command.arg(format!("--user-data-dir={}", profile.path().display()));
        let proc = stack.servers().spawn("chromium", command);
        let port_file = profile.path().join("DevToolsActivePort");
        let port = eventually(Duration::from_secs(30), "Chromium's DevToolsActivePort", || async {
            if let Some(status) = proc.try_status() {
                panic!("chromium exited ({}):\n{}", Proc::describe_exit(status), proc.log());
            }
            std::fs::read_to_string(&port_file).ok()?.lines().next()?.trim().parse::<u16>().ok()
        })
        .await;
        let http = switchyard_tests::http_client().no_proxy().timeout(Duration::from_secs(10)).build().unwrap();
        Chromium { _proc: proc, port, http, _profile: profile }
    }

    /// The DevTools connection of the browser's page.
    async fn page(&self) -> Page {
        let list_url = format!("http://127.0.0.1:{}/json/list", self.port);
        let ws_url = eventually(Duration::from_secs(15), "Chromium's page target", || async {
            let targets: Value = self.http.get(&list_url).send().await.ok()?.json().await.ok()?;
            let page = targets.as_array()?.iter().find(|t| t["type"] == "page")?;
            page["webSocketDebuggerUrl"].as_str().map(str::to_string)
        })
        .await;
        let builder = ClientBuilder::new().uri(&ws_url).expect("a DevTools websocket URL");
        let (ws, _) = builder.connect().await.unwrap_or_else(|e| panic!("connecting to {ws_url}: {e}"));
        Page { ws, next_id: 0 }
    }
}

/// One page over the DevTools protocol: commands answered in order, events skipped.
struct Page {
    ws: WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>,
    next_id: u64,
}

impl Page {
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let command = json!({"id": id, "method": method, "params": params}).to_string();
        self.ws.send(Message::text(command)).await.unwrap_or_else(|e| panic!("sending {method}: {e}"));
        let answer = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(message) = self.ws.next().await {
                let message = message.unwrap_or_else(|e| panic!("reading the DevTools socket: {e}"));
                let Some(text) = message.as_text() else { continue };
                let value: Value = serde_json::from_str(text).expect("DevTools sends JSON");
                if value["id"] == id {
                    return value;
                }
            }
            panic!("the DevTools socket closed during {method}");
        })
        .await
        .unwrap_or_else(|_| panic!("{method} got no answer in 30 s"));
        assert!(answer.get("error").is_none(), "{method}: {answer}");
        answer["result"].clone()
    }

    /// Evaluates `expression` in the page; its value as a string.
    async fn eval(&mut self, expression: &str) -> String {
        let result = self.call("Runtime.evaluate", json!({"expression": expression, "returnByValue": true})).await;
        assert!(result.get("exceptionDetails").is_none(), "{expression}: {result}");
        match &result["result"]["value"] {
            Value::String(text) => text.clone(),
            other => other.to_string(),
        }
    }

    /// Polls `document.body.innerText` until it holds every one of `needles`.
    async fn wait_for_text(&mut self, needles: &[&str], timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.eval("document.body ? document.body.innerText : ''").await;
            if needles.iter().all(|needle| text.contains(needle)) {
                return text;
            }
            if Instant::now() >= deadline {
                let missing: Vec<_> = needles.iter().filter(|n| !text.contains(*n)).collect();
                panic!("after {timeout:?} the page still lacks {missing:?}:\n{text}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// A PNG of the whole page under `<target>/test-artifacts/`; its path.
    async fn screenshot(&mut self, name: &str) -> PathBuf {
        let shot = self.call("Page.captureScreenshot", json!({"format": "png", "captureBeyondViewport": true})).await;
        let png = base64::engine::general_purpose::STANDARD.decode(shot["data"].as_str().expect("screenshot data")).expect("base64 PNG");
        let dir = profile_dir().parent().expect("a target directory").join("test-artifacts");
        std::fs::create_dir_all(&dir).expect("creating test-artifacts");
        let path = dir.join(name);
        std::fs::write(&path, png).expect("writing the screenshot");
        path
    }
}
