//! The Python SDK (`sdk/python`, issue "Tool-call jobs" part 3) end to end: Python tool workers
//! (`python -m switchyard.worker`, serving `sdk/python/tests/sample_tools.py`) on a real stack —
//! registered in the same registry records the Rust workers write, pulling from the same
//! consumers, answering plain, streamed, invalid and failing calls, cancelled by a client that
//! goes away, redelivered when killed, drained on SIGTERM, two of them sharing one model — and the
//! Python client (`get_worker_sync_functions` / `get_worker_async_functions`) against the api.
//! Also: a drain that times out hands its call back, permissions and the client's key, jobs
//! published straight onto either lane (unknown function, past deadline, not a tool call), and
//! the SDK's own pytest suite. The interpreter is `.switchyard/py-venv/bin/python`,
//! made by `scripts/setup.sh --test-tools`.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use switchyard_schemas::{EventBody, FinishReason, JobKind, Lane, ModelKind, keys, subject};
use switchyard_tests::{Proc, Stack, TapEvent, assert_openai_error, eventually, tail, workspace_root};

const MODEL: &str = "py-tools";

fn call_path(function: &str) -> String {
    format!("/v1/tools/{MODEL}/{function}")
}

/// The SDK's venv; a missing one fails the test (never a silent skip).
fn python() -> PathBuf {
    let python = workspace_root().join(".switchyard/py-venv/bin/python");
    assert!(python.is_file(), "{} does not exist: run scripts/setup.sh --test-tools", python.display());
    python
}

fn sdk_tests_dir() -> PathBuf {
    workspace_root().join("sdk/python/tests")
}

/// A Python command with nothing of the test's own Switchyard or proxy settings.
fn python_command() -> Command {
    let mut command = Command::new(python());
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().to_string();
        if key.starts_with("SWITCHYARD_") || key.to_ascii_lowercase().ends_with("_proxy") || key.starts_with("OPENAI_") {
            command.env_remove(key);
        }
    }
    command.env("PYTHONUNBUFFERED", "1").env("NO_PROXY", "127.0.0.1,localhost").env("PYTHONDONTWRITEBYTECODE", "1");
    command
}

/// Starts `python -m switchyard.worker sample_tools:SampleTools` against `stack`, writing
/// its generator-closed markers into `markers`.
fn python_worker(stack: &Stack, name: &str, markers: &std::path::Path, args: &[&str]) -> Proc {
    std::fs::create_dir_all(markers).expect("marker dir");
    let mut command = python_command();
    command.current_dir(sdk_tests_dir()).env("SAMPLE_MARKER_DIR", markers);
    command.args(["-m", "switchyard.worker", "sample_tools:SampleTools", "--name", MODEL]);
    command.args(["--nats-url", &stack.nats_url(), "--redis-url", &stack.redis_url()]);
    command.args(args);
    stack.servers().spawn(name, command)
}

async fn ready_python_worker(stack: &Stack, name: &str, args: &[&str]) -> (Proc, String) {
    let markers = stack.log_dir().join(format!("{name}-markers"));
    let worker = python_worker(stack, name, &markers, args);
    let id = stack.worker_id(&worker).await;
    stack.wait_for_model(MODEL).await;
    (worker, id)
}

async fn get(stack: &Stack, path: &str) -> (u16, Value) {
    let response = stack.http().get(stack.api_url(path)).send().await.unwrap();
    (response.status().as_u16(), response.json().await.expect("JSON body"))
}

fn listed<'a>(list: &'a Value, name: &str) -> &'a Value {
    list["data"]
        .as_array()
        .expect("data is a list")
        .iter()
        .find(|t| t["function"]["name"] == name)
        .unwrap_or_else(|| panic!("{name} is not listed: {list}"))
}

/// Runs a Python command to its end (at most `limit`), returning stdout; panics with both
/// outputs when it fails.
async fn run_python(mut command: Command, limit: Duration) -> String {
    let output = tokio::time::timeout(limit, tokio::task::spawn_blocking(move || command.output()))
        .await
        .unwrap_or_else(|_| panic!("the Python command did not finish within {limit:?}"))
        .unwrap()
        .expect("running python");
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout).to_string(), String::from_utf8_lossy(&output.stderr).to_string());
    assert!(output.status.success(), "the Python command failed ({}):\n{stdout}\n{stderr}", output.status);
    stdout
}

/// Every job's messages as the tap saw them, checked to be numbered 0, 1, 2, … (once each).
fn messages_by_job(seen: &[(String, TapEvent)]) -> HashMap<String, Vec<&TapEvent>> {
    let mut jobs: HashMap<String, Vec<&TapEvent>> = HashMap::new();
    for (_, event) in seen {
        jobs.entry(event.job_id.clone()).or_default().push(event);
    }
    for (job, events) in &jobs {
        let mut seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
        seqs.dedup();
        assert_eq!(seqs, (0..seqs.len() as u64).collect::<Vec<_>>(), "job {job}: messages numbered 0, 1, 2, …");
    }
    jobs
}

#[tokio::test]
async fn python_functions_are_registered_and_listed_with_schemas_from_type_hints() {
    let stack = Stack::start().await;
    let (worker, id) = ready_python_worker(&stack, "py-worker", &[]).await;

    // The registry record decodes as the Rust WorkerRecord, with the tool card and its specs.
    let record = stack.worker_record(&worker).await.expect("a registry record");
    assert_eq!(record.worker_id, id);
    assert_eq!(record.backend, "python");
    assert_eq!(record.pid, worker.pid());
    assert_eq!(record.models.len(), 1);
    let card = &record.models[0];
    assert_eq!((card.name.as_str(), card.kind), (MODEL, ModelKind::Tool));
    let names: Vec<&str> = card.functions.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["acount", "add", "big", "boom", "breaks", "count", "describe", "slow"], "only @remote_callable methods");
    assert_eq!(card.permissions.groups, ["default"]);
    // Heartbeats: the record's TTL is three heartbeats (2 s each), and it is refreshed.
    let mut redis = stack.redis_conn().await;
    let ttl: i64 = redis::cmd("TTL").arg(keys::worker(&id)).query_async(&mut redis).await.unwrap();
    assert!((1..=6).contains(&ttl), "TTL {ttl}");
    let first_beat = record.heartbeat_ms;
    eventually(Duration::from_secs(20), "a later heartbeat", || async {
        stack.worker_record(&worker).await.filter(|r| r.heartbeat_ms > first_beat).map(|_| ())
    })
    .await;

    // Both lanes' consumers are the Rust workers' own: the Rust `ensure_consumer` with the
    // default policy finds them exactly as the Python worker made them.
    let js = async_nats::jetstream::new(stack.nats_client().await);
    for lane in Lane::ALL {
        let name = subject::job_consumer(lane, JobKind::Tool, MODEL);
        let stream = js.get_stream(subject::JOBS_STREAM).await.unwrap();
        let before = stream.consumer_info(&name).await.unwrap_or_else(|e| panic!("{name}: {e}")).config;
        assert_eq!(before.filter_subject, subject::job(lane, JobKind::Tool, MODEL));
        assert_eq!(
            (before.ack_wait, before.max_deliver, before.max_waiting, before.max_ack_pending),
            (Duration::from_secs(10), 3, 4096, 100_000)
        );
        assert_eq!(before.inactive_threshold, Duration::from_secs(24 * 3600));
        let rust = switchyard_broker::jobs::ensure_consumer(&js, lane, JobKind::Tool, MODEL, Default::default()).await.unwrap();
        let mut rust = rust;
        let mut after = rust.info().await.unwrap().config.clone();
        let mut before = before;
        assert_eq!(before.metadata, after.metadata, "{name}");
        before.metadata.clear();
        after.metadata.clear();
        assert_eq!(format!("{before:?}"), format!("{after:?}"), "{name}: the Rust config changes nothing");
    }

    // The REST listing: OpenAI tool definitions with the schemas from the type hints.
    let (status, one) = get(&stack, &format!("/v1/tools/{MODEL}")).await;
    assert_eq!(status, 200, "{one}");
    let add = listed(&one, "add");
    assert_eq!((add["type"].clone(), add["model"].clone(), add["streams"].clone()), (json!("function"), json!(MODEL), json!(false)));
    assert_eq!(add["function"]["description"], "Returns a + b.");
    let parameters = &add["function"]["parameters"];
    assert_eq!(parameters["type"], "object");
    assert_eq!(parameters["required"], json!(["a"]));
    assert_eq!(parameters["additionalProperties"], false);
    assert_eq!(parameters["properties"]["a"], json!({"type": "integer", "description": "The first addend."}));
    assert_eq!(parameters["properties"]["b"], json!({"type": "integer", "default": 2, "description": "The second addend."}));
    assert_eq!(add["result"], json!({"type": "integer"}));
    let describe = &listed(&one, "describe")["function"]["parameters"]["properties"];
    assert_eq!(describe["tag"], json!({"type": ["string", "null"], "default": null}));
    assert_eq!(describe["scale"], json!({"type": "number", "default": 1.5}));
    assert_eq!(describe["flags"], json!({"type": "object", "additionalProperties": {"type": "boolean"}, "default": {}}));
    assert_eq!(describe["items"], json!({"type": "array", "items": {"type": "integer"}, "default": []}));
    assert_eq!(describe["loud"], json!({"type": "boolean", "default": false}));
    assert_eq!(listed(&one, "describe")["result"], json!({"type": "object"}));
    assert_eq!(listed(&one, "count")["streams"], true);
    assert_eq!(listed(&one, "count")["result"], json!({"type": "integer"}));
    assert_eq!(listed(&one, "acount")["streams"], true);
    assert_eq!(listed(&one, "slow")["streams"], false);
    let (status, all) = get(&stack, "/v1/tools").await;
    assert_eq!(status, 200);
    assert_eq!(listed(&all, "boom")["model"], MODEL);
    assert!(stack.models().await.iter().any(|m| m == MODEL));
}

#[tokio::test]
async fn plain_streamed_invalid_and_failing_calls() {
    let stack = Stack::start().await;
    let (worker, id) = ready_python_worker(&stack, "py-worker", &[]).await;
    let mut tap = stack.tap_replies().await;

    assert_eq!(stack.post_json(&call_path("add"), &json!({"a": 5, "b": 7})).await, (200, json!(12)));
    assert_eq!(stack.post_json(&call_path("add"), &json!({"a": 5})).await, (200, json!(7)), "the default fills in");
    let (status, described) = stack.post_json(&call_path("describe"), &json!({"tag": "t", "flags": {"x": true}})).await;
    assert_eq!(status, 200, "{described}");
    assert_eq!(described, json!({"pid": worker.pid(), "tag": "t", "scale": 1.5, "flags": {"x": true}, "items": [], "loud": false}));
    // An empty body is no arguments.
    let response = stack.http().post(stack.api_url(&call_path("describe"))).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<Value>().await.unwrap()["tag"], Value::Null);

    // Streams: a generator's items as SSE chunks, or as one array; an async generator too.
    let chunks = stack.post_stream_all(&call_path("count"), &json!({"n": 5, "stream": true})).await;
    assert_eq!(chunks, (0..5).map(|i| json!(i)).collect::<Vec<_>>());
    assert_eq!(stack.post_json(&call_path("count"), &json!({"n": 3})).await, (200, json!([0, 1, 2])));
    let chunks = stack.post_stream_all(&call_path("acount"), &json!({"n": 3, "stream": true})).await;
    assert_eq!(chunks, vec![json!("a0"), json!("a1"), json!("a2")]);
    assert_eq!(stack.post_stream_all(&call_path("add"), &json!({"a": 1, "stream": true})).await, vec![json!(3)]);

    // A stream that fails after its first chunks ends with a frame named `error`; its chunks,
    // whatever they look like, are plain `data:` frames.
    let response = stack.post(&call_path("breaks"), &json!({"n": 2, "stream": true})).await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    let frames: Vec<&str> = text.split("\n\n").filter(|f| !f.is_empty()).collect();
    assert_eq!(frames.len(), 3, "{text}");
    assert!(frames[0].starts_with("data: {\"error\"") && frames[1].starts_with("data: "), "{text}");
    let last = frames[2].strip_prefix("event: error\ndata: ").unwrap_or_else(|| panic!("the last frame is the error: {text}"));
    assert_eq!(serde_json::from_str::<Value>(last).unwrap()["error"]["code"], "function_failed", "{text}");

    // Invalid arguments: 400, naming the argument — wrong type, missing, unknown.
    for (arguments, named) in
        [(json!({"a": "five"}), "`a`"), (json!({}), "`a`"), (json!({"a": 1, "c": 2}), "`c`"), (json!({"n": -1.5}), "`n`")]
    {
        let path = if named == "`n`" { call_path("count") } else { call_path("add") };
        let (status, body) = stack.post_json(&path, &arguments).await;
        assert_eq!(status, 400, "{arguments} → {body}");
        let error = assert_openai_error(&body);
        assert_eq!(error["code"], "invalid_arguments", "{body}");
        assert!(error["message"].as_str().unwrap().contains(named), "{arguments}: the message names {named}: {body}");
    }
    let (status, body) = stack.post_json(&call_path("no_such_function"), &json!({})).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(assert_openai_error(&body)["code"], "unknown_function");

    // A raising function: 500 function_failed with its message, and the worker goes on.
    let (status, body) = stack.post_json(&call_path("boom"), &json!({"message": "it broke"})).await;
    assert_eq!(status, 500, "{body}");
    let error = assert_openai_error(&body);
    assert_eq!((error["code"].clone(), error["message"].clone()), (json!("function_failed"), json!("it broke")));
    assert_eq!(stack.post_json(&call_path("add"), &json!({"a": 2, "b": 2})).await, (200, json!(4)));
    // A result over NATS's max payload (1 MiB) cannot travel: a clean function_failed too.
    let (status, body) = stack.post_json(&call_path("big"), &json!({"size": 2_000_000})).await;
    assert_eq!(status, 500, "{body}");
    let error = assert_openai_error(&body);
    assert_eq!(error["code"], "function_failed");
    assert!(error["message"].as_str().unwrap().contains("max payload"), "{body}");
    assert_eq!(stack.post_json(&call_path("big"), &json!({"size": 3})).await, (200, json!("xxx")));
    assert!(worker.is_running());

    // On the wire: every job started by this worker, its messages numbered from 0, ended
    // by exactly one Done or Error.
    tap.drain(Duration::from_millis(300)).await;
    let jobs = messages_by_job(tap.seen());
    assert!(jobs.len() >= 16, "{} jobs seen", jobs.len());
    for (job, events) in &jobs {
        assert!(
            matches!(&events[0].body, EventBody::Started { worker_id, attempt: 1, .. } if *worker_id == id),
            "job {job}: {:?}",
            events[0].body
        );
        let terminal: Vec<_> = events.iter().filter(|e| e.body.is_terminal()).collect();
        assert_eq!(terminal.len(), 1, "job {job}: {events:?}");
        assert!(events.last().unwrap().body.is_terminal(), "job {job}: the terminal event is last");
    }
    let failed = jobs.values().filter_map(|events| match &events.last().unwrap().body {
        EventBody::Error { code, .. } => Some(code.as_str()),
        _ => None,
    });
    let codes: HashSet<&str> = failed.collect();
    // (An unknown function never reaches a worker: the api answers it from the card.)
    assert_eq!(codes, HashSet::from(["invalid_arguments", "function_failed"]));
}

#[tokio::test]
async fn a_client_that_goes_away_cancels_the_python_generator() {
    let stack = Stack::start().await;
    let (worker, _) = ready_python_worker(&stack, "py-worker", &[]).await;
    let markers = stack.log_dir().join("py-worker-markers");
    let mut tap = stack.tap_replies().await;
    let mut reader = stack.post_stream(&call_path("count"), &json!({"n": 100000, "interval": 0.02, "stream": true})).await;
    for i in 0..3 {
        assert_eq!(reader.next_json().await, Some(json!(i)));
    }
    drop(reader);
    // On the worker's side: the call ends cancelled, long before its 2,000 s of numbers, and
    // the generator itself is closed (its `finally` writes the marker).
    let done = tap.wait_for(Duration::from_secs(30), |e| e.body.is_terminal()).await.expect("the worker ended the call");
    assert!(matches!(done.body, EventBody::Done { finish_reason: FinishReason::Cancelled, .. }), "{:?}", done.body);
    let chunks = tap.seen().iter().filter(|(_, e)| matches!(e.body, EventBody::ToolChunk { .. })).count();
    assert!(chunks < 1500, "the function stopped soon after the client left ({chunks} chunks)");
    let marker = markers.join("count-closed-100000");
    eventually(Duration::from_secs(30), "the generator to be closed", || async { marker.is_file().then_some(()) }).await;
    assert!(worker.log().contains("cancelled while running"), "{}", tail(&worker.log(), 20));
    // It goes on serving.
    assert_eq!(stack.post_json(&call_path("add"), &json!({"a": 1})).await, (200, json!(3)));
}

#[tokio::test]
async fn two_python_workers_of_one_model_share_the_calls() {
    let stack = Stack::start().await;
    let (a, _) = ready_python_worker(&stack, "py-worker-a", &["--slots", "2"]).await;
    let (b, _) = ready_python_worker(&stack, "py-worker-b", &["--slots", "2"]).await;
    let (path, arguments) = (call_path("slow"), json!({"seconds": 0.3}));
    let calls = (0..16).map(|_| stack.post_json(&path, &arguments));
    let answers = futures::future::join_all(calls).await;
    let mut pids = HashSet::new();
    for (status, body) in answers {
        assert_eq!(status, 200, "{body}");
        pids.insert(body["pid"].as_u64().unwrap() as u32);
    }
    assert_eq!(pids, HashSet::from([a.pid(), b.pid()]), "both workers served calls");
}

#[tokio::test]
async fn a_call_of_a_killed_python_worker_is_redelivered_and_resumes_numbering() {
    let stack = Stack::start().await;
    let args = ["--ack-wait", "1s"];
    let (a, a_id) = ready_python_worker(&stack, "py-worker-a", &args).await;
    let mut tap = stack.tap_replies().await;
    let (path, arguments) = (call_path("slow"), json!({"seconds": 1.5}));
    let ((status, body), (b, b_id)) = tokio::join!(stack.post_json(&path, &arguments), async {
        tap.wait_for(Duration::from_secs(20), |e| matches!(e.body, EventBody::Started { .. })).await.expect("the call started");
        let b = python_worker(&stack, "py-worker-b", &stack.log_dir().join("b-markers"), &args);
        let b_id = stack.worker_id(&b).await;
        a.sigkill();
        (b, b_id)
    });
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["pid"], b.pid(), "the second worker ran it again: {body}");
    tap.drain(Duration::from_millis(300)).await;
    let jobs = messages_by_job(tap.seen());
    let events = jobs.values().next().expect("one job");
    let started: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::Started { worker_id, attempt, .. } => Some((worker_id.clone(), *attempt, e.seq)),
            _ => None,
        })
        .collect();
    assert_eq!(started, vec![(a_id, 1, 0), (b_id, 2, 1)], "the second worker numbered on from the resume state's next_seq");
}

#[tokio::test]
async fn sigterm_drains_a_python_worker() {
    let stack = Stack::start().await;
    let (worker, id) = ready_python_worker(&stack, "py-worker", &[]).await;
    let mut tap = stack.tap_replies().await;
    let (path, arguments) = (call_path("slow"), json!({"seconds": 1.0}));
    let ((status, body), ()) = tokio::join!(stack.post_json(&path, &arguments), async {
        tap.wait_for(Duration::from_secs(20), |e| matches!(e.body, EventBody::Started { .. })).await.expect("the call started");
        worker.sigterm();
    });
    assert_eq!(status, 200, "the running call finished during the drain: {body}");
    assert_eq!(body["pid"], worker.pid());
    let exit = worker.wait_exit(Duration::from_secs(30)).await.expect("the worker exits after the drain");
    assert!(exit.success(), "{}: {}", Proc::describe_exit(exit), tail(&worker.log(), 20));
    assert!(!stack.registered_worker_ids().await.contains(&id), "it left the registry");
}

#[tokio::test]
async fn the_python_client_calls_functions_sync_and_async() {
    let stack = Stack::start().await;
    let (_worker, _) = ready_python_worker(&stack, "py-worker", &[]).await;
    let mut tap = stack.tap_replies().await;
    let mut command = python_command();
    command.arg(sdk_tests_dir().join("client_check.py")).arg(stack.api_url("/v1")).arg(MODEL);
    let stdout = run_python(command, Duration::from_secs(120)).await;
    let checks: HashMap<String, Value> = stdout
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .map(|v| (v["check"].as_str().unwrap().to_owned(), v["value"].clone()))
        .collect();
    let check = |name: &str| checks.get(name).unwrap_or_else(|| panic!("no {name:?} in:\n{stdout}")).clone();
    assert_eq!(check("names"), json!(["acount", "add", "big", "boom", "breaks", "count", "describe", "slow"]));
    assert_eq!(check("signature"), json!("(a, b=2)"));
    assert_eq!(check("doc"), json!("Returns a + b."));
    assert_eq!(check("sync add"), json!(12));
    assert_eq!(check("sync add default"), json!(3));
    assert_eq!(check("sync describe"), json!({"tag": "t", "scale": 1.5, "flags": {}, "items": [1, 2], "loud": false}));
    assert_eq!(check("sync count"), json!([0, 1, 2, 3]));
    assert_eq!(check("sync acount"), json!(["a0", "a1"]));
    let invalid = check("sync invalid");
    assert_eq!((invalid["status"].clone(), invalid["code"].clone()), (json!(400), json!("invalid_arguments")));
    assert!(invalid["message"].as_str().unwrap().contains("`a`"), "{invalid}");
    assert_eq!(check("sync boom"), json!({"status": 500, "code": "function_failed", "message": "it broke"}));
    let chunk = |i: u32| json!({"error": {"message": format!("chunk {i}"), "type": "not_an_error"}});
    assert_eq!(
        check("sync breaks"),
        json!({"error": {"status": 500, "code": "function_failed", "message": "broke after 2 chunks"}, "chunks": [chunk(0), chunk(1)]}),
        "chunks shaped like errors are chunks; the stream's error is its `event: error` frame"
    );
    assert_eq!(check("sync count closed early"), json!([0, 1]));
    assert_eq!(check("async is coroutine"), json!(true));
    assert_eq!(check("async add"), json!(5));
    assert_eq!(check("async gather"), json!([2, 3, 4, 5, 6]));
    assert_eq!(check("async count"), json!([0, 1, 2]));
    assert_eq!(check("async acount awaited"), json!(["a0", "a1"]));
    assert_eq!(check("async invalid")["code"], "invalid_arguments");
    assert_eq!(check("async boom"), json!({"status": 500, "code": "function_failed", "message": "async broke"}));
    assert_eq!(check("async stream invalid"), json!({"status": 400, "code": "invalid_arguments"}));
    assert_eq!(check("done"), json!(true));
    // The stream the script closed early was cancelled on the worker.
    let cancelled =
        tap.wait_for(Duration::from_secs(30), |e| matches!(e.body, EventBody::Done { finish_reason: FinishReason::Cancelled, .. })).await;
    assert!(cancelled.is_some(), "closing the iterator cancelled the call");
}

#[tokio::test]
async fn the_sdk_unit_tests_pass() {
    let mut command = python_command();
    command.current_dir(workspace_root()).args(["-m", "pytest", "sdk/python/tests", "-q", "-p", "no:cacheprovider", "-rs"]);
    let stdout = run_python(command, Duration::from_secs(120)).await;
    let summary = stdout.lines().last().unwrap_or_default();
    assert!(summary.contains(" passed") && !summary.contains("skipped") && !summary.contains("failed"), "{stdout}");
}

#[tokio::test]
async fn a_drain_that_times_out_hands_the_call_back_to_another_worker() {
    let stack = Stack::start().await;
    let (a, a_id) = ready_python_worker(&stack, "py-worker-a", &["--drain-timeout", "300ms"]).await;
    let mut tap = stack.tap_replies().await;
    let (path, arguments) = (call_path("slow"), json!({"seconds": 3.0}));
    let ((status, body), (b, b_id)) = tokio::join!(stack.post_json(&path, &arguments), async {
        // The call runs on a (the only worker); then b comes, and a is told to stop: its drain
        // times out with the call still running, so a hands it back to the queue.
        tap.wait_for(Duration::from_secs(20), |e| matches!(e.body, EventBody::Started { .. })).await.expect("the call started");
        let b = python_worker(&stack, "py-worker-b", &stack.log_dir().join("b-markers"), &[]);
        let b_id = stack.worker_id(&b).await;
        a.sigterm();
        (b, b_id)
    });
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["pid"], b.pid(), "the call a handed back ran again on b: {body}");
    let exit = a.wait_exit(Duration::from_secs(30)).await.expect("a exits after its drain");
    assert!(exit.success(), "{}", tail(&a.log(), 20));
    assert!(a.log().contains("handed back to the queue"), "{}", tail(&a.log(), 20));
    tap.drain(Duration::from_millis(300)).await;
    let started: Vec<(String, u32)> = tap.started_by().into_iter().map(|(_, worker, attempt)| (worker, attempt)).collect();
    assert_eq!(started, vec![(a_id, 1), (b_id, 2)]);
    // a sent no terminal event for the call it handed back: the client saw one answer.
    let terminal = tap.seen().iter().filter(|(_, e)| e.body.is_terminal()).count();
    assert_eq!(terminal, 1);
}

#[tokio::test]
async fn permissions_apply_to_python_workers_and_the_client_sends_its_key() {
    use switchyard_broker::apikeys::{ApiKeys, KeySpec};
    let stack = Stack::builder().with_auth().start().await;
    let markers = stack.log_dir().join("markers");
    let worker = python_worker(&stack, "py-worker", &markers, &["--permissions", "users: alice"]);
    stack.worker_id(&worker).await;
    let keys = ApiKeys::new(switchyard_broker::connect_redis(&stack.redis_url()).await.expect("redis"));
    let (alice, _) = keys.create(KeySpec { user: "alice".into(), ..Default::default() }).await.unwrap();
    let (bob, _) = keys.create(KeySpec { user: "bob".into(), ..Default::default() }).await.unwrap();
    let script = r#"
import json, sys
from switchyard import SwitchyardError, get_worker_sync_functions
base_url, model, key = sys.argv[1:4]
try:
    funcs = get_worker_sync_functions(model, api_key=key, base_url=base_url)
    print(json.dumps({"add": funcs["add"](a=40)}))
except SwitchyardError as e:
    print(json.dumps({"status": e.status, "code": e.code}))
"#;
    let run = |key: String| {
        let mut command = python_command();
        command.arg("-c").arg(script).arg(stack.api_url("/v1")).arg(MODEL).arg(key);
        run_python(command, Duration::from_secs(60))
    };
    let answer = eventually(Duration::from_secs(30), "alice to reach the model", || {
        let run = run(alice.clone());
        async move { Some(run.await).filter(|out| out.contains("add")) }
    })
    .await;
    assert_eq!(serde_json::from_str::<Value>(answer.trim()).unwrap(), json!({"add": 42}));
    let answer = run(bob.clone()).await;
    assert_eq!(
        serde_json::from_str::<Value>(answer.trim()).unwrap(),
        json!({"status": 404, "code": "model_not_found"}),
        "bob sees no such model"
    );
    // No key at all: 401.
    let answer = run(String::new()).await;
    assert_eq!(serde_json::from_str::<Value>(answer.trim()).unwrap()["status"], 401);
}

/// A job published straight onto the batch lane, as a direct publisher (or the scheduler)
/// would: the Python worker answers on the envelope's reply subject in the wire format the
/// Rust schemas decode — including what the api never lets through (an unknown function, a
/// deadline already past, a job that is not a tool call).
#[tokio::test]
async fn direct_publishers_get_wire_events_on_both_lanes() {
    use switchyard_schemas::{ErrorCode, JobEnvelope, JobRequest, StreamEvent, WIRE_VERSION, decode, encode, now_ms};
    let stack = Stack::start().await;
    let (_worker, worker_id) = ready_python_worker(&stack, "py-worker", &[]).await;
    let nats = stack.nats_client().await;
    let js = async_nats::jetstream::new(nats.clone());
    let mut replies = nats.subscribe("test.reply.>").await.unwrap();
    switchyard_broker::sync_with_server(&nats).await.unwrap();
    let cases: Vec<(Lane, &str, JobRequest, Option<u64>)> = vec![
        (Lane::Batch, "batch-add", JobRequest::Tool { function: "add".into(), arguments: json!({"a": 1, "b": 41}) }, None),
        (Lane::Interactive, "unknown", JobRequest::Tool { function: "nope".into(), arguments: json!({}) }, None),
        (Lane::Batch, "late", JobRequest::Tool { function: "add".into(), arguments: json!({"a": 1}) }, Some(now_ms() - 1000)),
        (Lane::Interactive, "not-a-tool", JobRequest::Embedding { input: vec!["x".into()] }, None),
        (Lane::Batch, "batch-stream", JobRequest::Tool { function: "count".into(), arguments: json!({"n": 3}) }, None),
    ];
    for (lane, id, request, deadline_ms) in &cases {
        let envelope = JobEnvelope {
            v: WIRE_VERSION,
            id: (*id).into(),
            kind: JobKind::Tool,
            model: MODEL.into(),
            request: request.clone(),
            lane: *lane,
            deadline_ms: *deadline_ms,
            reply_to: format!("test.reply.{id}"),
            resume_to: format!("test.resume.{id}"),
            traceparent: None,
            created_ms: now_ms(),
        };
        js.publish(subject::job(*lane, JobKind::Tool, MODEL), encode(&envelope).unwrap().into()).await.unwrap().await.unwrap();
    }
    let mut events: HashMap<String, Vec<(u64, EventBody)>> = HashMap::new();
    while events.values().filter(|e| e.last().is_some_and(|(_, b)| b.is_terminal())).count() < cases.len() {
        let message = tokio::time::timeout(Duration::from_secs(30), futures::StreamExt::next(&mut replies))
            .await
            .unwrap_or_else(|_| panic!("every job answered; so far {events:?}"))
            .unwrap();
        let message: StreamEvent = decode(&message.payload).expect("a StreamEvent the Rust schemas decode");
        let job = events.entry(message.job_id.clone()).or_default();
        job.extend(message.events.into_iter().map(|e| (message.seq, e)));
    }
    let bodies = |id: &str| events[id].iter().map(|(_, b)| b.clone()).collect::<Vec<_>>();
    let started = EventBody::Started { worker_id: worker_id.clone(), attempt: 1, prompt_tokens: None };
    let done = EventBody::Done { finish_reason: FinishReason::Stop, usage: Default::default() };
    assert_eq!(bodies("batch-add"), vec![started.clone(), EventBody::ToolResult { value: json!(42) }, done.clone()]);
    let chunks = (0..3).map(|i| EventBody::ToolChunk { value: json!(i) });
    assert_eq!(bodies("batch-stream"), [started.clone()].into_iter().chain(chunks).chain([done]).collect::<Vec<_>>());
    assert!(
        matches!(&bodies("unknown")[..], [s, EventBody::Error { code: ErrorCode::UnknownFunction, message, .. }] if *s == started && message.contains("nope")),
        "{:?}",
        bodies("unknown")
    );
    assert!(matches!(&bodies("late")[..], [EventBody::Error { code: ErrorCode::DeadlineExceeded, .. }]), "{:?}", bodies("late"));
    assert!(
        matches!(&bodies("not-a-tool")[..], [_, EventBody::Error { code: ErrorCode::InvalidRequest, .. }]),
        "{:?}",
        bodies("not-a-tool")
    );
    for (id, job) in &events {
        let mut seqs: Vec<u64> = job.iter().map(|(seq, _)| *seq).collect();
        seqs.dedup();
        assert_eq!(seqs, (0..seqs.len() as u64).collect::<Vec<_>>(), "job {id}");
    }
    // Every job was acknowledged: nothing is left on either lane's consumer.
    let stream = js.get_stream(subject::JOBS_STREAM).await.unwrap();
    eventually(Duration::from_secs(20), "both lanes to be empty and acknowledged", || async {
        let mut idle = true;
        for lane in Lane::ALL {
            let info = stream.consumer_info(subject::job_consumer(lane, JobKind::Tool, MODEL)).await.unwrap();
            idle &= info.num_pending == 0 && info.num_ack_pending == 0;
        }
        idle.then_some(())
    })
    .await;
}

#[tokio::test]
async fn in_progress_acks_keep_a_long_call_with_its_worker() {
    let stack = Stack::start().await;
    // An ack wait of 1 s and a call of 3.5 s: without in-progress acks JetStream would hand
    // the call to the other worker (a second Started, attempt 2) before it ends.
    let args = ["--ack-wait", "1s"];
    let (_a, _) = ready_python_worker(&stack, "py-worker-a", &args).await;
    let (_b, _) = ready_python_worker(&stack, "py-worker-b", &args).await;
    let mut tap = stack.tap_replies().await;
    let (status, body) = stack.post_json(&call_path("slow"), &json!({"seconds": 3.5})).await;
    assert_eq!(status, 200, "{body}");
    tap.drain(Duration::from_millis(1500)).await;
    let started = tap.started_by();
    assert_eq!(started.len(), 1, "delivered once: {started:?}");
    assert_eq!(started[0].2, 1);
}

/// Waits until some job's cancel flag is in Redis (the api set it when its client left).
async fn wait_for_a_cancel_flag(stack: &Stack) {
    let redis = stack.redis_conn().await;
    eventually(Duration::from_secs(20), "a cancel flag in Redis", || {
        let mut redis = redis.clone();
        async move {
            let flags: Vec<String> = redis::cmd("KEYS").arg(keys::CANCEL_FLAGS).query_async(&mut redis).await.unwrap();
            (!flags.is_empty()).then_some(())
        }
    })
    .await;
}

/// A call whose client gives up after `after` while it is still queued.
async fn abandoned_call(stack: &Stack, after: Duration) {
    let impatient = switchyard_tests::http_client().no_proxy().timeout(after).build().unwrap();
    let result = impatient.post(stack.api_url(&call_path("slow"))).json(&json!({"seconds": 0.1})).send().await;
    assert!(result.is_err(), "the call was still queued when its client left: {result:?}");
}

#[tokio::test]
async fn a_call_cancelled_while_queued_is_skipped() {
    let stack = Stack::start().await;
    let (_worker, _) = ready_python_worker(&stack, "py-worker", &["--slots", "1"]).await;
    let mut tap = stack.tap_replies().await;
    let (path, arguments) = (call_path("slow"), json!({"seconds": 5.0}));
    let ((status, body), ()) = tokio::join!(stack.post_json(&path, &arguments), async {
        // While the one slot is busy, a second call waits in the queue; its client leaves.
        tap.wait_for(Duration::from_secs(20), |e| matches!(e.body, EventBody::Started { .. })).await.expect("the first call started");
        abandoned_call(&stack, Duration::from_millis(500)).await;
        wait_for_a_cancel_flag(&stack).await;
    });
    assert_eq!(status, 200, "{body}");
    // A call queued after it is served, so the worker has pulled (and skipped) the cancelled one.
    assert_eq!(stack.post_json(&call_path("add"), &json!({"a": 1})).await, (200, json!(3)));
    tap.drain(Duration::from_millis(300)).await;
    assert_eq!(tap.started_by().len(), 2, "the cancelled call never started: {:?}", tap.started_by());
}

#[tokio::test]
async fn a_call_cancelled_before_its_worker_listened_is_skipped_by_its_redis_flag() {
    let stack = Stack::start().await;
    let (_a, _) = ready_python_worker(&stack, "py-worker-a", &["--slots", "1"]).await;
    let mut tap = stack.tap_replies().await;
    // (Long enough that b is up and has pulled the cancelled call before a's slot frees.)
    let (path, arguments) = (call_path("slow"), json!({"seconds": 10.0}));
    let ((status, body), b) = tokio::join!(stack.post_json(&path, &arguments), async {
        // a's one slot is busy; a second call waits in the queue and its client leaves. Then b
        // starts: it never heard that cancellation (it was announced before b listened), so
        // when b pulls the call it asks the Redis flag, and skips it.
        tap.wait_for(Duration::from_secs(20), |e| matches!(e.body, EventBody::Started { .. })).await.expect("the first call started");
        abandoned_call(&stack, Duration::from_millis(500)).await;
        wait_for_a_cancel_flag(&stack).await;
        let b = python_worker(&stack, "py-worker-b", &stack.log_dir().join("b-markers"), &[]);
        stack.worker_id(&b).await;
        eventually(Duration::from_secs(20), "b to skip the cancelled call", || async {
            b.log().contains("cancelled while queued").then_some(())
        })
        .await;
        b
    });
    assert_eq!(status, 200, "{body}");
    assert!(b.is_running());
    tap.drain(Duration::from_millis(300)).await;
    assert_eq!(tap.started_by().len(), 1, "the cancelled call never started: {:?}", tap.started_by());
}
