//! `switchyard worker openai` against real HTTP servers: a second Switchyard stack as the
//! upstream (its answers, errors and usage must come through as the upstream gives them), and
//! a scripted server for what a healthy Switchyard never does: answer 500, answer 429 with
//! `Retry-After`, stop mid-stream, or not be there at all.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use serde_json::{Value, json};
use switchyard_broker::apikeys::{ApiKeys, KeySpec};
use switchyard_tests::openai::{Endpoint, chat_request, check_completion, check_stream, completion_request};
use switchyard_tests::{Proc, Stack, eventually, free_port};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const CHAT: &str = "/v1/chat/completions";
const COMPLETIONS: &str = "/v1/completions";

/// `POST path` on `base` (an api's root URL) with an optional key: status and JSON body.
async fn post(stack: &Stack, base: &str, key: Option<&str>, path: &str, body: &Value) -> (u16, Value) {
    let mut request = stack.http().post(format!("{base}{path}")).json(body);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.unwrap_or_else(|e| panic!("POST {base}{path}: {e}"));
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("POST {path} → {status}, not JSON ({e}): {text}")))
}

/// A streamed answer's JSON chunks (everything before `[DONE]`, which must come last).
async fn post_stream(stack: &Stack, base: &str, key: Option<&str>, path: &str, body: &Value) -> Vec<Value> {
    let mut request = stack.http().post(format!("{base}{path}")).json(body);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200, "POST {path} (stream)");
    let text = response.text().await.unwrap();
    let data: Vec<&str> = text.lines().filter_map(|line| line.strip_prefix("data: ")).collect();
    assert_eq!(data.last(), Some(&"[DONE]"), "the stream ends with [DONE]: {text}");
    data[..data.len() - 1].iter().map(|d| serde_json::from_str(d).unwrap()).collect()
}

/// What a request's answer says, without what differs between two servers by nature (ids,
/// timestamps, the model name the client used).
fn gist(endpoint: Endpoint, body: &Value, model: &str) -> (Vec<String>, Vec<String>, Value) {
    check_completion(endpoint, body, model)
}

struct Upstream {
    stack: Stack,
    key: String,
    _workers: Vec<Proc>,
}

impl Upstream {
    /// A Switchyard stack with keys on, an echo worker (with a tool-calling mode) and a slow one.
    async fn start() -> Upstream {
        let stack = Stack::builder().with_auth().start().await;
        // Its models are listed only to keys: wait for the workers' registration instead.
        let workers = vec![
            stack.worker(&["echo", "--tools-name", "echo-tools"]),
            stack.worker(&["echo", "--name", "slow", "--embedding-name", "slow-embedding", "--delay", "100ms"]),
        ];
        for worker in &workers {
            stack.worker_id(worker).await;
        }
        let keys = ApiKeys::new(switchyard_broker::connect_redis(&stack.redis_url()).await.unwrap());
        let (key, _) = keys.create(KeySpec { user: "downstream".into(), ..Default::default() }).await.unwrap();
        Upstream { stack, key, _workers: workers }
    }

    fn base(&self) -> String {
        self.stack.api_url("")
    }
}

#[tokio::test]
async fn a_switchyard_upstream_answers_through_the_worker_as_it_answers_directly() {
    let up = Upstream::start().await;
    // The keys reach the workers through their environment, never their command line.
    let down = Stack::builder().env("UPSTREAM_KEY", up.key.clone()).env("WRONG_KEY", "sy-wrong").start().await;
    let base_url = up.stack.api_url("/v1");
    let worker = |args: &[&str]| {
        let mut all = vec!["openai", "--base-url", &base_url];
        all.extend_from_slice(args);
        all.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    let args = worker(&[
        "--api-key-env",
        "UPSTREAM_KEY",
        "--model",
        "echo",
        "--model",
        "alias=echo",
        "--model",
        "echo-tools",
        "--model",
        "slow",
        "--model",
        "ghost=no-such-model",
        "--embedding-model",
        "echo-embedding",
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let _worker = down.ready_worker(&args, "echo").await;
    let wrong = worker(&["--api-key-env", "WRONG_KEY", "--model", "locked=echo"]);
    let _wrong = down.ready_worker(&wrong.iter().map(String::as_str).collect::<Vec<_>>(), "locked").await;
    let (up_base, down_base, key) = (up.base(), down.api_url(""), Some(up.key.as_str()));

    // Whole answers: the same text, finish reason and usage as the upstream's own.
    let chat = json!({"model": "echo", "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "one two three four five"}], "max_tokens": 3});
    let (status, direct) = post(&down, &up_base, key, CHAT, &chat).await;
    assert_eq!(status, 200, "{direct}");
    let (status, relayed) = post(&down, &down_base, None, CHAT, &chat).await;
    assert_eq!(status, 200, "{relayed}");
    assert_eq!(gist(Endpoint::Chat, &relayed, "echo"), gist(Endpoint::Chat, &direct, "echo"));
    assert_eq!(relayed["usage"], direct["usage"]);
    assert_eq!(direct["choices"][0]["finish_reason"], "length");
    // Under another name, the upstream's model all the same.
    let (status, aliased) =
        post(&down, &down_base, None, CHAT, &json!({"model": "alias", "messages": chat["messages"], "max_tokens": 3})).await;
    assert_eq!(status, 200, "{aliased}");
    assert_eq!(gist(Endpoint::Chat, &aliased, "alias").0, gist(Endpoint::Chat, &direct, "echo").0);

    // Streamed: the same text and the upstream's usage, chunk by chunk.
    let streamed =
        json!({"model": "echo", "messages": chat["messages"], "stream": true, "stream_options": {"include_usage": true}, "stop": ["four"]});
    let direct = post_stream(&down, &up_base, key, CHAT, &streamed).await;
    let relayed = post_stream(&down, &down_base, None, CHAT, &streamed).await;
    let (direct, relayed) = (check_stream(Endpoint::Chat, &direct, "echo", true), check_stream(Endpoint::Chat, &relayed, "echo", true));
    assert_eq!((relayed.text(), relayed.finish(), &relayed.usage), (direct.text(), direct.finish(), &direct.usage));
    assert_eq!(relayed.text(), "one two three ");

    // Completions, streamed and not.
    let completion = completion_request("echo", "alpha beta gamma");
    let (_, direct) = post(&down, &up_base, key, COMPLETIONS, &completion).await;
    let (status, relayed) = post(&down, &down_base, None, COMPLETIONS, &completion).await;
    assert_eq!(status, 200, "{relayed}");
    assert_eq!(gist(Endpoint::Completions, &relayed, "echo"), gist(Endpoint::Completions, &direct, "echo"));
    assert_eq!(relayed["usage"], direct["usage"]);
    let streamed = json!({"model": "echo", "prompt": "alpha beta gamma", "stream": true});
    let relayed = post_stream(&down, &down_base, None, COMPLETIONS, &streamed).await;
    assert_eq!(check_stream(Endpoint::Completions, &relayed, "echo", false).text(), "alpha beta gamma");

    // Embeddings: the upstream's vectors and usage.
    let embed = json!({"model": "echo-embedding", "input": ["a b", "c"]});
    let (_, direct) = post(&down, &up_base, key, "/v1/embeddings", &embed).await;
    let (status, relayed) = post(&down, &down_base, None, "/v1/embeddings", &embed).await;
    assert_eq!(status, 200, "{relayed}");
    assert_eq!(relayed["data"], direct["data"]);
    assert_eq!(relayed["usage"], direct["usage"]);

    // Tools pass through, and the upstream's calls come back as calls.
    let tools = json!([{"type": "function", "function": {"name": "add", "parameters": {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}}}]);
    let calling = json!({"model": "echo-tools", "tools": tools, "messages": [{"role": "user", "content": "<tool_call>{\"name\": \"add\", \"arguments\": {\"a\": 2}}</tool_call>"}]});
    let (_, direct) = post(&down, &up_base, key, CHAT, &calling).await;
    let (status, relayed) = post(&down, &down_base, None, CHAT, &calling).await;
    assert_eq!(status, 200, "{relayed}");
    let calls = |body: &Value| {
        let message = &body["choices"][0]["message"];
        let calls = message["tool_calls"].as_array().unwrap_or_else(|| panic!("no tool_calls: {body}")).clone();
        calls.iter().map(|c| (c["function"]["name"].clone(), c["function"]["arguments"].clone())).collect::<Vec<_>>()
    };
    assert_eq!(calls(&relayed), calls(&direct));
    assert_eq!(calls(&relayed), [(json!("add"), json!("{\"a\": 2}"))]);
    assert_eq!(relayed["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(relayed["usage"], direct["usage"]);

    // The upstream's errors, with their status and fields, as it gave them.
    let refused = json!({"model": "echo", "tools": tools, "messages": [{"role": "user", "content": "hi"}]});
    let unknown = chat_request("ghost", "hi");
    for (what, body, upstream_body, status) in [
        ("a field the upstream's model refuses", &refused, &refused, 400),
        ("a model the upstream does not have", &unknown, &chat_request("no-such-model", "hi"), 404),
    ] {
        let (direct_status, direct) = post(&down, &up_base, key, CHAT, upstream_body).await;
        let (relayed_status, relayed) = post(&down, &down_base, None, CHAT, body).await;
        assert_eq!((direct_status, relayed_status), (status, status), "{what}: {direct} / {relayed}");
        let fields = |body: &Value| (body["error"]["message"].clone(), body["error"]["type"].clone(), body["error"]["param"].clone());
        assert_eq!(fields(&relayed), fields(&direct), "{what}");
    }
    let (status, relayed) = post(&down, &down_base, None, CHAT, &chat_request("locked", "hi")).await;
    assert_eq!(status, 401, "a key the upstream refuses: {relayed}");
    assert_eq!(relayed["error"]["code"], "invalid_api_key", "{relayed}");

    // Cancelling closes the upstream request: the upstream's api sees its client go and
    // cancels its own job (a flag in the upstream's Redis).
    let mut redis = up.stack.redis_conn().await;
    let flags = |keys: Vec<String>| keys.len();
    let before = flags(redis.keys("sy:cancel:*").await.unwrap());
    let slow =
        json!({"model": "slow", "stream": true, "messages": [{"role": "user", "content": switchyard_tests::openai::words("w", 100)}]});
    let response = down.http().post(down.api_url(CHAT)).json(&slow).send().await.unwrap();
    let mut body = response.bytes_stream();
    use futures::StreamExt;
    let first = tokio::time::timeout(Duration::from_secs(20), body.next()).await.expect("the stream starts");
    assert!(first.is_some());
    drop(body);
    eventually(Duration::from_secs(20), "the upstream job to be cancelled", || {
        let mut redis = redis.clone();
        async move { (flags(redis.keys("sy:cancel:*").await.unwrap()) > before).then_some(()) }
    })
    .await;
}

/// How the scripted server answers one request.
#[derive(Clone)]
enum Reply {
    /// An error status, with extra headers and a body.
    Status(u16, Vec<(&'static str, String)>, String),
    /// A 200 event stream of these texts as chat chunks; `complete`: then a finish, usage and
    /// `[DONE]`, else the connection just closes.
    Stream { texts: Vec<&'static str>, complete: bool },
}

fn error_body(message: &str, kind: &str) -> String {
    json!({"error": {"message": message, "type": kind, "param": null, "code": null}}).to_string()
}

/// A real HTTP server on `port` that answers requests with `replies` in order (the last one
/// again and again), and records each request's arrival and body.
struct Scripted {
    requests: Arc<Mutex<Vec<(Instant, Value)>>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Scripted {
    async fn start(port: u16, replies: Vec<Reply>) -> Scripted {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let replies = Arc::new(Mutex::new(VecDeque::from(replies)));
        let seen = requests.clone();
        let task = tokio::spawn(async move {
            loop {
                let (socket, _) = listener.accept().await.unwrap();
                let (seen, replies) = (seen.clone(), replies.clone());
                tokio::spawn(async move { serve(socket, seen, replies).await });
            }
        });
        Scripted { requests, task: Some(task) }
    }

    /// Stops listening (dropping the server only asks its task to stop).
    async fn stop(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    fn bodies(&self) -> Vec<Value> {
        self.requests.lock().unwrap().iter().map(|(_, body)| body.clone()).collect()
    }

    fn arrivals(&self) -> Vec<Instant> {
        self.requests.lock().unwrap().iter().map(|(at, _)| *at).collect()
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// One request per connection: read it, answer the next reply, close.
async fn serve(mut socket: TcpStream, seen: Arc<Mutex<Vec<(Instant, Value)>>>, replies: Arc<Mutex<VecDeque<Reply>>>) {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 8192];
    let (head_end, length) = loop {
        let n = socket.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            return;
        }
        buffer.extend_from_slice(&chunk[..n]);
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buffer[..end]).to_lowercase();
            let length = head.lines().find_map(|l| l.strip_prefix("content-length:")).map_or(0, |v| v.trim().parse().unwrap());
            break (end + 4, length);
        }
    };
    while buffer.len() < head_end + length {
        let n = socket.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            return;
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
    let body = serde_json::from_slice(&buffer[head_end..head_end + length]).unwrap_or(Value::Null);
    seen.lock().unwrap().push((Instant::now(), body));
    let reply = {
        let mut replies = replies.lock().unwrap();
        if replies.len() > 1 { replies.pop_front().unwrap() } else { replies.front().cloned().unwrap() }
    };
    match reply {
        Reply::Status(status, headers, body) => {
            let mut head = format!(
                "HTTP/1.1 {status} Scripted\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
                body.len()
            );
            for (name, value) in headers {
                head.push_str(&format!("{name}: {value}\r\n"));
            }
            let _ = socket.write_all(format!("{head}\r\n{body}").as_bytes()).await;
        }
        Reply::Stream { texts, complete } => {
            let _ = socket.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n").await;
            let chunk = |choices: Value, usage: Value| {
                format!("data: {}\n\n", json!({"id": "x", "object": "chat.completion.chunk", "choices": choices, "usage": usage}))
            };
            let _ =
                socket.write_all(chunk(json!([{"index": 0, "delta": {"role": "assistant", "content": ""}}]), Value::Null).as_bytes()).await;
            for text in &texts {
                let _ = socket.write_all(chunk(json!([{"index": 0, "delta": {"content": text}}]), Value::Null).as_bytes()).await;
                let _ = socket.flush().await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if complete {
                let finish = chunk(json!([{"index": 0, "delta": {}, "finish_reason": "stop"}]), Value::Null);
                let usage =
                    chunk(json!([]), json!({"prompt_tokens": 11, "completion_tokens": texts.len(), "total_tokens": 11 + texts.len()}));
                let _ = socket.write_all(format!("{finish}{usage}data: [DONE]\n\n").as_bytes()).await;
            }
        }
    }
    let _ = socket.shutdown().await;
}

/// A stack with one `openai` worker serving `scripted` from the server on `port` (no model
/// listing there: the worker starts regardless), with quick retries.
async fn downstream(port: u16, extra: &[&str]) -> (Stack, Proc) {
    let stack = Stack::start().await;
    let base = format!("http://127.0.0.1:{port}/v1");
    let mut args = vec!["openai", "--base-url", &base, "--model", "scripted", "--retry-backoff", "50ms"];
    args.extend_from_slice(extra);
    let (worker, _) = stack.ready_worker(&args, "scripted").await;
    (stack, worker)
}

fn ok(texts: Vec<&'static str>) -> Reply {
    Reply::Stream { texts, complete: true }
}

#[tokio::test]
async fn failures_before_the_first_output_are_retried_and_never_after() {
    let port = free_port();
    // No cooldown here: each case's request count is its own.
    let (stack, _worker) = downstream(port, &["--cooldown-failures", "0"]).await;
    let request = json!({"model": "scripted", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 9, "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "none"});

    // Two 500s, then an answer: the client sees only the answer, and the upstream's usage.
    let five_hundred = Reply::Status(500, vec![], error_body("boom", "server_error"));
    let server = Scripted::start(port, vec![five_hundred.clone(), five_hundred, ok(vec!["fine", " now"])]).await;
    let (status, body) = stack.post_json(CHAT, &request).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], "fine now");
    assert_eq!((body["usage"]["prompt_tokens"].clone(), body["usage"]["completion_tokens"].clone()), (json!(11), json!(2)));
    assert_eq!(server.count(), 3);
    // What went upstream: the request's fields, streamed, with the usage asked for.
    let sent = &server.bodies()[0];
    assert_eq!((sent["stream"].clone(), sent["stream_options"].clone()), (json!(true), json!({"include_usage": true})));
    assert_eq!(
        (sent["max_tokens"].clone(), sent["tool_choice"].clone(), sent["tools"][0]["function"]["name"].clone()),
        (json!(9), json!("none"), json!("f"))
    );
    server.stop().await;

    // A 429 with Retry-After: the next try waits that long.
    let limited = Reply::Status(429, vec![("retry-after", "1".into())], error_body("slow down", "rate_limit_error"));
    let server = Scripted::start(port, vec![limited.clone(), ok(vec!["waited"])]).await;
    let (status, body) = stack.post_json(CHAT, &request).await;
    assert_eq!(status, 200, "{body}");
    let arrivals = server.arrivals();
    assert_eq!(arrivals.len(), 2);
    let waited = arrivals[1] - arrivals[0];
    assert!(waited >= Duration::from_millis(950), "Retry-After: 1 honoured, waited {waited:?}");
    server.stop().await;

    // Still 429 after every try: the client gets the upstream's 429, as it came.
    let server =
        Scripted::start(port, vec![Reply::Status(429, vec![("retry-after-ms", "10".into())], error_body("slow down", "rate_limit_error"))])
            .await;
    let (status, body) = stack.post_json(CHAT, &request).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!((body["error"]["message"].clone(), body["error"]["type"].clone()), (json!("slow down"), json!("rate_limit_error")));
    assert_eq!(server.count(), 3, "the first try and two retries");
    server.stop().await;

    // A client error is not retried.
    let server = Scripted::start(port, vec![Reply::Status(400, vec![], error_body("no", "invalid_request_error"))]).await;
    let (status, _) = stack.post_json(CHAT, &request).await;
    assert_eq!((status, server.count()), (400, 1));
    server.stop().await;

    // A stream that stops mid-way: the text so far, then an error event and [DONE]; no retry,
    // which would send the client its text twice.
    let server = Scripted::start(port, vec![Reply::Stream { texts: vec!["half", " of"], complete: false }, ok(vec!["never"])]).await;
    let response = stack.post(CHAT, &json!({"model": "scripted", "stream": true, "messages": [{"role": "user", "content": "hi"}]})).await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    let data: Vec<Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let said: String = data.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(said, "half of", "{text}");
    let error = data.last().unwrap();
    assert!(error["error"]["message"].as_str().unwrap().contains("broke off"), "{text}");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    assert_eq!(server.count(), 1);
    // Whole, the same failure is the answer's status.
    let (status, body) = stack.post_json(CHAT, &json!({"model": "scripted", "messages": [{"role": "user", "content": "hi"}]})).await;
    assert_eq!((status, body["choices"][0]["message"]["content"].clone()), (200, json!("never")), "the next request is served: {body}");
}

#[tokio::test]
async fn a_stopped_upstream_fails_honestly_and_cools_down_so_jobs_wait_for_it() {
    let port = free_port();
    let (stack, _worker) = downstream(port, &["--cooldown", "1s"]).await;
    let request = chat_request("scripted", "anyone there?");

    // Nothing listens: every delivery tries and fails, then the client hears why.
    let started = Instant::now();
    let (status, body) = stack.post_json(CHAT, &request).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"]["code"], "upstream_error", "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("could not be reached"), "{body}");
    // Three failures cooled it down, so the job was given back and delivered again.
    assert!(started.elapsed() >= Duration::from_secs(1), "the job waited out a cooldown: {:?}", started.elapsed());

    // The upstream comes back while a job waits: the job is served, not failed.
    let waiting = tokio::spawn({
        let http = stack.http().clone();
        let url = stack.api_url(CHAT);
        async move { http.post(url).json(&request).send().await.unwrap().json::<Value>().await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let server = Scripted::start(port, vec![ok(vec!["back"])]).await;
    let body = waiting.await.unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], "back", "{body}");
    assert!(server.count() >= 1);
}
