//! OpenAI's Files and Batch APIs end to end: real nats-server and redis-server, the real api,
//! scheduler and workers, with workers, schedulers and api replicas killed mid-batch.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};
use switchyard_tests::batch::{BatchClient, chat_input};
use switchyard_tests::{Stack, eventually};

const CHAT: &str = "/v1/chat/completions";

fn client(stack: &Stack) -> BatchClient {
    BatchClient::new(stack.http(), stack.api_url(""), None)
}

/// Every `custom_id` of `0..n` exactly once across both files; returns the output lines by id.
fn one_line_per_custom_id(n: usize, output: &[Value], errors: &[Value]) -> HashMap<String, Value> {
    let mut seen = HashMap::new();
    for line in output.iter().chain(errors) {
        let id = line["custom_id"].as_str().expect("custom_id").to_string();
        assert!(seen.insert(id.clone(), line.clone()).is_none(), "custom_id {id} answered twice");
    }
    assert_eq!(seen.len(), n, "every line answered once");
    for i in 0..n {
        assert!(seen.contains_key(&format!("req-{i}")), "req-{i} missing");
    }
    seen
}

/// The echo worker answers each line with its own prompt, in a chat.completion body.
fn assert_echoed(lines: &HashMap<String, Value>) {
    for (id, line) in lines {
        let i: usize = id.strip_prefix("req-").unwrap().parse().unwrap();
        assert_eq!(line["error"], Value::Null, "{line}");
        assert_eq!(line["response"]["status_code"], 200, "{line}");
        let body = &line["response"]["body"];
        assert_eq!(body["object"], "chat.completion", "{line}");
        assert_eq!(body["choices"][0]["message"]["content"], format!("line {i} says hello"), "{line}");
        assert!(line["id"].as_str().unwrap().starts_with("batch_req_"), "{line}");
    }
}

#[tokio::test]
async fn a_chat_batch_runs_every_line_once_and_matches_the_interactive_answer() {
    let stack = Stack::start().await;
    let (_worker, _) = stack.ready_worker(&["echo", "--slots", "16"], "echo").await;
    let api = client(&stack);
    let file = api.upload_input(chat_input(1000, "echo", &json!({ "max_tokens": 64 }))).await;
    let (status, info) = api.get(&format!("/v1/files/{file}")).await;
    assert_eq!(status, 200);
    assert_eq!(
        (info["object"].as_str(), info["purpose"].as_str(), info["status"].as_str()),
        (Some("file"), Some("batch"), Some("processed"))
    );

    let batch = api.create(&file, CHAT, "24h").await;
    let id = batch["id"].as_str().unwrap();
    assert!(id.starts_with("batch_"), "{batch}");
    let done = api.wait(id, Duration::from_secs(120)).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["request_counts"], json!({ "total": 1000, "completed": 1000, "failed": 0 }), "{done}");
    for field in ["in_progress_at", "finalizing_at", "completed_at"] {
        assert!(done[field].as_u64().is_some(), "{field} set: {done}");
    }
    assert_eq!(done["error_file_id"], Value::Null, "no errors, no error file: {done}");
    let (output, errors) = api.results(&done).await;
    let lines = one_line_per_custom_id(1000, &output, &errors);
    assert_echoed(&lines);

    // The body is exactly what the synchronous endpoint answers, apart from its id and time.
    let (status, mut interactive) = stack
        .post_json(CHAT, &json!({ "model": "echo", "max_tokens": 64, "messages": [{ "role": "user", "content": "line 7 says hello" }] }))
        .await;
    assert_eq!(status, 200);
    let mut from_batch = lines["req-7"]["response"]["body"].clone();
    for body in [&mut interactive, &mut from_batch] {
        body["id"] = Value::Null;
        body["created"] = Value::Null;
    }
    assert_eq!(from_batch, interactive);

    let (status, listed) = api.get("/v1/batches?limit=5").await;
    assert_eq!(status, 200);
    assert_eq!(listed["data"][0]["id"], id, "{listed}");
    let (status, files) = api.get("/v1/files?purpose=batch_output").await;
    assert_eq!(status, 200);
    assert_eq!(files["data"][0]["id"], done["output_file_id"], "{files}");
}

#[tokio::test]
async fn an_embeddings_batch_answers_with_vectors() {
    let stack = Stack::start().await;
    let (_worker, _) = stack.ready_worker(&["echo"], "echo-embedding").await;
    let api = client(&stack);
    let mut input = String::new();
    for i in 0..50 {
        let body = json!({ "model": "echo-embedding", "input": [format!("sentence {i}"), "another"] });
        input += &format!("{}\n", json!({ "custom_id": format!("req-{i}"), "method": "POST", "url": "/v1/embeddings", "body": body }));
    }
    let file = api.upload_input(input.into_bytes()).await;
    let batch = api.create(&file, "/v1/embeddings", "24h").await;
    let done = api.wait(batch["id"].as_str().unwrap(), Duration::from_secs(60)).await;
    assert_eq!(done["status"], "completed", "{done}");
    let (output, errors) = api.results(&done).await;
    let lines = one_line_per_custom_id(50, &output, &errors);
    let body = &lines["req-3"]["response"]["body"];
    assert_eq!(body["object"], "list", "{body}");
    assert_eq!(body["data"].as_array().unwrap().len(), 2, "{body}");
    assert_eq!(body["data"][0]["embedding"].as_array().unwrap().len(), 16, "{body}");
}

#[tokio::test]
async fn a_malformed_file_fails_validation_with_its_line_numbers() {
    let stack = Stack::start().await;
    let (_worker, _) = stack.ready_worker(&["echo"], "echo").await;
    let api = client(&stack);
    let good = |id: &str| {
        json!({ "custom_id": id, "method": "POST", "url": CHAT, "body": { "model": "echo", "messages": [{ "role": "user", "content": "hi" }] } }).to_string()
    };
    let lines = [
        good("a"),
        "{not json".to_string(),
        good("a"),
        json!({ "custom_id": "b", "method": "GET", "url": CHAT, "body": {} }).to_string(),
        json!({ "custom_id": "c", "method": "POST", "url": "/v1/embeddings", "body": {} }).to_string(),
        json!({ "custom_id": "d", "method": "POST", "url": CHAT, "body": { "model": "echo", "messages": [], "stream": true } }).to_string(),
        json!({ "custom_id": "e", "method": "POST", "url": CHAT, "body": { "model": "echo", "messages": [{ "role": "user", "content": "hi" }], "temperature": 9 } }).to_string(),
        json!({ "custom_id": "f", "method": "POST", "url": CHAT, "body": { "model": "nope", "messages": [{ "role": "user", "content": "hi" }] } }).to_string(),
    ];
    let file = api.upload_input(lines.join("\n").into_bytes()).await;
    let batch = api.create(&file, CHAT, "24h").await;
    let done = api.wait(batch["id"].as_str().unwrap(), Duration::from_secs(30)).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert!(done["failed_at"].as_u64().is_some());
    let errors: Vec<(u64, String, Value)> = done["errors"]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["line"].as_u64().unwrap(), e["code"].as_str().unwrap().to_string(), e["param"].clone()))
        .collect();
    assert_eq!(
        errors,
        vec![
            (2, "invalid_json_line".into(), Value::Null),
            (3, "duplicate_custom_id".into(), json!("custom_id")),
            (4, "invalid_method".into(), json!("method")),
            (5, "mismatched_endpoint".into(), json!("url")),
            (6, "invalid_request".into(), json!("body.stream")),
            (7, "invalid_request".into(), json!("body.temperature")),
            (8, "model_not_found".into(), json!("body.model")),
        ],
        "{done}"
    );
    assert_eq!(done["output_file_id"], Value::Null);
}

#[tokio::test]
async fn files_and_batches_of_another_user_do_not_exist_for_a_key_and_forbidden_models_fail_validation() {
    let stack = Stack::builder().with_auth().start().await;
    let open = stack.worker(&["echo"]);
    let private = stack.worker(&["echo", "--name", "private-echo", "--embedding-name", "private-emb", "--permissions", "groups: research"]);
    stack.worker_id(&open).await;
    stack.worker_id(&private).await;
    let key = |user: &str, group: Option<&str>| {
        let mut args = vec!["keys", "create", "--user", user];
        if let Some(group) = group {
            args.extend(["--group", group]);
        }
        let output = stack.run_cli(&args);
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let text = String::from_utf8(output.stdout).unwrap();
        text.split_whitespace().find(|w| w.starts_with("sy-")).expect("printed secret").to_string()
    };
    let (alice, bob) = (key("alice", None), key("bob", None));
    let alice_api = BatchClient::new(stack.http(), stack.api_url(""), Some(&alice));
    let bob_api = BatchClient::new(stack.http(), stack.api_url(""), Some(&bob));

    let file = alice_api.upload_input(chat_input(3, "echo", &json!({}))).await;
    let batch = alice_api.create(&file, CHAT, "24h").await;
    let id = batch["id"].as_str().unwrap();
    for path in [format!("/v1/files/{file}"), format!("/v1/files/{file}/content"), format!("/v1/batches/{id}")] {
        let (status, body) = bob_api.get(&path).await;
        assert_eq!(status, 404, "{path}: {body}");
        assert_eq!(body["error"]["type"], "invalid_request_error");
    }
    assert_eq!(bob_api.get("/v1/files").await.1["data"], json!([]));
    assert_eq!(bob_api.get("/v1/batches").await.1["data"], json!([]));
    let (status, _) = bob_api.post(&format!("/v1/batches/{id}/cancel"), &json!({})).await;
    assert_eq!(status, 404);
    let (status, body) = bob_api.post("/v1/batches", &json!({ "input_file_id": file, "endpoint": CHAT, "completion_window": "24h" })).await;
    assert_eq!((status, body["error"]["param"].as_str()), (400, Some("input_file_id")), "{body}");
    assert_eq!(alice_api.wait(id, Duration::from_secs(30)).await["status"], "completed");

    // A model the key may not use is, for its batch lines too, a model that does not exist.
    let file = alice_api.upload_input(chat_input(2, "private-echo", &json!({}))).await;
    let batch = alice_api.create(&file, CHAT, "24h").await;
    let done = alice_api.wait(batch["id"].as_str().unwrap(), Duration::from_secs(30)).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["errors"]["data"][0]["code"], "model_not_found", "{done}");
    assert_eq!(done["errors"]["data"][0]["line"], 1, "{done}");
}

#[tokio::test]
async fn a_batch_survives_a_worker_killed_mid_batch() {
    let stack = Stack::start().await;
    let worker_args = ["echo", "--slots", "8", "--delay", "5ms", "--ack-wait", "1s"];
    let (doomed, _) = stack.ready_worker(&worker_args, "echo").await;
    let (_survivor, _) = stack.ready_worker(&worker_args, "echo").await;
    let api = client(&stack);
    let file = api.upload_input(chat_input(300, "echo", &json!({}))).await;
    let id = api.create(&file, CHAT, "24h").await["id"].as_str().unwrap().to_string();
    api.wait_for(&id, Duration::from_secs(60), |b| b["request_counts"]["completed"].as_u64() >= Some(30)).await;
    doomed.sigkill();
    let done = api.wait(&id, Duration::from_secs(120)).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["request_counts"]["completed"], 300, "{done}");
    let (output, errors) = api.results(&done).await;
    assert_echoed(&one_line_per_custom_id(300, &output, &errors));
}

#[tokio::test]
async fn a_batch_survives_its_scheduler_killed_and_started_again() {
    let stack = Stack::builder().scheduler_arg("--batch-lease").scheduler_arg("2s").start().await;
    let (_worker, _) = stack.ready_worker(&["echo", "--slots", "4", "--delay", "10ms"], "echo").await;
    let api = client(&stack);
    let file = api.upload_input(chat_input(300, "echo", &json!({}))).await;
    let id = api.create(&file, CHAT, "24h").await["id"].as_str().unwrap().to_string();
    api.wait_for(&id, Duration::from_secs(60), |b| b["request_counts"]["completed"].as_u64() >= Some(20)).await;
    stack.scheduler().unwrap().sigkill();
    let _restarted = stack.scheduler_replica().await;
    let done = api.wait(&id, Duration::from_secs(120)).await;
    assert_eq!(done["status"], "completed", "{done}");
    let (output, errors) = api.results(&done).await;
    assert_echoed(&one_line_per_custom_id(300, &output, &errors));
    assert_eq!(done["request_counts"], json!({ "total": 300, "completed": 300, "failed": 0 }), "{done}");
}

#[tokio::test]
async fn two_schedulers_share_batches_and_one_killed_loses_nothing() {
    let stack = Stack::builder().scheduler_arg("--batch-lease").scheduler_arg("2s").start().await;
    let second = stack.scheduler_replica().await;
    let (_worker, _) = stack.ready_worker(&["echo", "--slots", "8", "--delay", "5ms"], "echo").await;
    let api = client(&stack);
    let mut ids = Vec::new();
    for _ in 0..3 {
        let file = api.upload_input(chat_input(200, "echo", &json!({}))).await;
        ids.push(api.create(&file, CHAT, "24h").await["id"].as_str().unwrap().to_string());
    }
    api.wait_for(&ids[0], Duration::from_secs(60), |b| b["request_counts"]["completed"].as_u64() >= Some(10)).await;
    second.sigkill();
    for id in &ids {
        let done = api.wait(id, Duration::from_secs(120)).await;
        assert_eq!(done["status"], "completed", "{done}");
        let (output, errors) = api.results(&done).await;
        assert_echoed(&one_line_per_custom_id(200, &output, &errors));
    }
}

#[tokio::test]
async fn a_batch_outlives_the_api_replica_that_took_it() {
    let stack = Stack::start().await;
    let (_worker, _) = stack.ready_worker(&["echo", "--slots", "4", "--delay", "5ms"], "echo").await;
    let replica = stack.api_replica().await;
    let through_replica = BatchClient::new(stack.http(), replica.url(""), None);
    let file = through_replica.upload_input(chat_input(200, "echo", &json!({}))).await;
    let id = through_replica.create(&file, CHAT, "24h").await["id"].as_str().unwrap().to_string();
    replica.proc().sigkill();
    let api = client(&stack);
    let done = api.wait(&id, Duration::from_secs(120)).await;
    assert_eq!(done["status"], "completed", "{done}");
    let (output, errors) = api.results(&done).await;
    assert_echoed(&one_line_per_custom_id(200, &output, &errors));
}

#[tokio::test]
async fn a_cancelled_batch_keeps_its_finished_lines_and_reports_the_rest_cancelled() {
    let stack = Stack::start().await;
    let (_worker, _) = stack.ready_worker(&["echo", "--slots", "2", "--delay", "20ms"], "echo").await;
    let api = client(&stack);
    let file = api.upload_input(chat_input(200, "echo", &json!({}))).await;
    let id = api.create(&file, CHAT, "24h").await["id"].as_str().unwrap().to_string();
    api.wait_for(&id, Duration::from_secs(60), |b| b["request_counts"]["completed"].as_u64() >= Some(5)).await;
    let (status, cancelling) = api.post(&format!("/v1/batches/{id}/cancel"), &json!({})).await;
    assert_eq!(status, 200, "{cancelling}");
    assert!(["cancelling", "cancelled"].contains(&cancelling["status"].as_str().unwrap()), "{cancelling}");
    let done = api.wait(&id, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "cancelled", "{done}");
    assert!(done["cancelled_at"].as_u64().is_some() && done["cancelling_at"].as_u64().is_some(), "{done}");
    let (output, errors) = api.results(&done).await;
    let lines = one_line_per_custom_id(200, &output, &errors);
    assert!(output.len() >= 5 && output.len() < 200, "{} finished before the cancel", output.len());
    for line in &errors {
        assert_eq!(line["error"]["code"], "batch_cancelled", "{line}");
        assert_eq!(line["response"], Value::Null, "{line}");
    }
    assert_echoed(&lines.into_iter().filter(|(_, line)| line["error"].is_null()).collect());
    assert_eq!(done["request_counts"]["completed"].as_u64(), Some(output.len() as u64), "{done}");
    assert_eq!(done["request_counts"]["failed"].as_u64(), Some(errors.len() as u64), "{done}");
    let (status, again) = api.post(&format!("/v1/batches/{id}/cancel"), &json!({})).await;
    assert_eq!((status, again["status"].as_str()), (200, Some("cancelled")));
}

#[tokio::test]
async fn lines_left_when_the_window_ends_are_reported_expired() {
    let stack = Stack::builder().api_arg("--batch-completion-windows").api_arg("24h,3s").start().await;
    let (_worker, _) = stack.ready_worker(&["echo", "--slots", "1", "--delay", "50ms"], "echo").await;
    let api = client(&stack);
    let (status, body) = api.post("/v1/batches", &json!({ "input_file_id": "file-x", "endpoint": CHAT, "completion_window": "1h" })).await;
    assert_eq!((status, body["error"]["param"].as_str()), (400, Some("completion_window")), "{body}");
    let file = api.upload_input(chat_input(500, "echo", &json!({}))).await;
    let id = api.create(&file, CHAT, "3s").await["id"].as_str().unwrap().to_string();
    let done = api.wait(&id, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "expired", "{done}");
    assert!(done["expired_at"].as_u64().is_some(), "{done}");
    let (output, errors) = api.results(&done).await;
    one_line_per_custom_id(500, &output, &errors);
    assert!(!output.is_empty() && output.len() < 500, "{} lines ran in the window", output.len());
    assert!(errors.iter().all(|line| line["error"]["code"] == "batch_expired"), "{errors:?}");
}

#[tokio::test]
async fn an_interactive_request_is_served_ahead_of_a_queued_batch() {
    let stack = Stack::start().await;
    let (_worker, _) = stack.ready_worker(&["echo", "--slots", "2", "--delay", "10ms"], "echo").await;
    let api = client(&stack);
    let file = api.upload_input(chat_input(10_000, "echo", &json!({}))).await;
    let id = api.create(&file, CHAT, "24h").await["id"].as_str().unwrap().to_string();
    // The batch's window of lines is queued in its lane once lines start finishing.
    api.wait_for(&id, Duration::from_secs(60), |b| b["request_counts"]["completed"].as_u64() >= Some(10)).await;
    let started = std::time::Instant::now();
    let (status, body) = stack.post_json(CHAT, &json!({ "model": "echo", "messages": [{ "role": "user", "content": "me first" }] })).await;
    let waited = started.elapsed();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], "me first");
    let progress = api.batch(&id).await;
    let completed = progress["request_counts"]["completed"].as_u64().unwrap();
    // Behind the queued batch jobs it would have waited for hundreds of them (seconds).
    assert!(completed < 9_000, "the batch was nearly done: {progress}");
    assert!(waited < Duration::from_secs(2), "the interactive request waited {waited:?} behind the batch");
    let (status, _) = api.post(&format!("/v1/batches/{id}/cancel"), &json!({})).await;
    assert_eq!(status, 200);
    eventually(Duration::from_secs(60), "the batch to end", || async { (api.batch(&id).await["status"] == "cancelled").then_some(()) })
        .await;
}

#[tokio::test]
async fn files_can_be_listed_paged_downloaded_and_deleted() {
    let stack = Stack::builder().api_arg("--max-file-bytes").api_arg("1000").start().await;
    let api = client(&stack);
    let mut ids = Vec::new();
    for i in 0..3 {
        let (status, file) = api.upload(&format!("f{i}.jsonl"), format!("{{\"n\": {i}}}\n").into_bytes(), "batch").await;
        assert_eq!(status, 200, "{file}");
        assert_eq!(file["bytes"], 9);
        ids.push(file["id"].as_str().unwrap().to_string());
    }
    let (status, page) = api.get("/v1/files?limit=2").await;
    assert_eq!(status, 200);
    assert_eq!(page["data"].as_array().unwrap().len(), 2);
    assert_eq!(page["has_more"], true);
    assert_eq!(page["data"][0]["id"], ids[2], "newest first");
    let (_, rest) = api.get(&format!("/v1/files?limit=2&after={}", page["last_id"].as_str().unwrap())).await;
    assert_eq!(rest["data"][0]["id"], ids[0]);
    assert_eq!(rest["has_more"], false);
    let (status, bytes) = api.bytes(&format!("/v1/files/{}/content", ids[1])).await;
    assert_eq!((status, bytes), (200, b"{\"n\": 1}\n".to_vec()));
    let (status, deleted) = api.delete(&format!("/v1/files/{}", ids[1])).await;
    assert_eq!((status, deleted["deleted"].as_bool()), (200, Some(true)), "{deleted}");
    assert_eq!(api.get(&format!("/v1/files/{}", ids[1])).await.0, 404);

    let (status, body) = api.upload("big.jsonl", vec![b'x'; 1001], "batch").await;
    assert_eq!(status, 413, "{body}");
    let (status, body) = api.upload("x.jsonl", b"{}".to_vec(), "nonsense").await;
    assert_eq!((status, body["error"]["param"].as_str()), (400, Some("purpose")), "{body}");
}
