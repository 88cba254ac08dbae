//! `/v1/jobs`: one request run without a client waiting on the connection, its result and its
//! events readable from any api replica, also after the replica that took it is gone.

use std::time::Duration;

use serde_json::{Value, json};
use switchyard_tests::batch::BatchClient;
use switchyard_tests::{Stack, eventually};

fn chat(content: &str) -> Value {
    json!({ "model": "echo", "messages": [{ "role": "user", "content": content }] })
}

async fn wait_status(api: &BatchClient, id: &str, status: &str) -> Value {
    eventually(Duration::from_secs(60), &format!("job {id} to be {status}"), || async {
        let (code, job) = api.get(&format!("/v1/jobs/{id}")).await;
        assert_eq!(code, 200, "{job}");
        (job["status"] == status).then_some(job)
    })
    .await
}

/// The `id:` and `data:` of every SSE event of a finished stream, and whether it ended in `[DONE]`.
fn sse_events(text: &str) -> (Vec<(u64, Value)>, bool) {
    let mut events = Vec::new();
    let mut done = false;
    for block in text.split("\n\n").filter(|b| !b.trim().is_empty()) {
        let mut id = None;
        for line in block.lines() {
            if let Some(value) = line.strip_prefix("id: ") {
                id = Some(value.parse::<u64>().expect("numeric event id"));
            } else if let Some(data) = line.strip_prefix("data: ") {
                if data == "[DONE]" {
                    done = true;
                } else {
                    events.push((id.expect("every event has an id"), serde_json::from_str(data).expect("JSON event")));
                }
            }
        }
    }
    (events, done)
}

/// The text an event stream carries.
fn streamed_text(events: &[(u64, Value)]) -> String {
    events
        .iter()
        .flat_map(|(_, frame)| frame["events"].as_array().unwrap().clone())
        .filter(|event| event["type"] == "delta")
        .map(|event| event["data"]["text"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn a_job_is_submitted_followed_and_read_back_from_any_replica() {
    let stack = Stack::start().await;
    let (_worker, _) = stack.ready_worker(&["echo", "--delay", "20ms"], "echo").await;
    let replica = stack.api_replica().await;
    let through_replica = BatchClient::new(stack.http(), replica.url(""), None);
    let api = BatchClient::new(stack.http(), stack.api_url(""), None);

    let prompt = "one two three four five six seven eight";
    let (status, job) = through_replica.post("/v1/jobs", &json!({ "endpoint": "/v1/chat/completions", "body": chat(prompt) })).await;
    assert_eq!(status, 202, "{job}");
    assert_eq!((job["object"].as_str(), job["status"].as_str()), (Some("job"), Some("queued")), "{job}");
    let id = job["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("job_"), "{job}");
    // The replica that took it goes away; any other answers for the job.
    replica.proc().sigkill();

    let done = wait_status(&api, &id, "completed").await;
    let result = &done["result"];
    assert_eq!(result["object"], "chat.completion", "{done}");
    assert_eq!(result["choices"][0]["message"]["content"], prompt, "{done}");
    assert_eq!(api.get(&format!("/v1/jobs/{id}")).await.1["result"], *result, "the result is the same at every read");

    // Exactly the body the synchronous endpoint answers, apart from its id and time.
    let (status, mut interactive) = stack.post_json("/v1/chat/completions", &chat(prompt)).await;
    assert_eq!(status, 200);
    let mut from_job = result.clone();
    for body in [&mut interactive, &mut from_job] {
        body["id"] = Value::Null;
        body["created"] = Value::Null;
    }
    assert_eq!(from_job, interactive);

    // Its events, then the same stream resumed after the first event.
    let (status, bytes) = api.bytes(&format!("/v1/jobs/{id}/events")).await;
    assert_eq!(status, 200);
    let (events, done_marker) = sse_events(&String::from_utf8(bytes).unwrap());
    assert!(done_marker, "the stream ends with [DONE]");
    assert!(events.len() >= 2, "{events:?}");
    assert_eq!(streamed_text(&events), prompt);
    assert_eq!(events[0].1["events"][0]["type"], "started", "{events:?}");
    let first = events[0].0;
    let response =
        stack.http().get(stack.api_url(&format!("/v1/jobs/{id}/events"))).header("Last-Event-ID", first.to_string()).send().await.unwrap();
    let (resumed, done_marker) = sse_events(&response.text().await.unwrap());
    assert!(done_marker);
    assert_eq!(resumed, events[1..].to_vec(), "resumed right after event {first}");
}

#[tokio::test]
async fn a_job_can_be_cancelled_and_bad_jobs_are_refused() {
    let stack = Stack::start().await;
    let (_worker, _) = stack.ready_worker(&["echo", "--delay", "100ms"], "echo").await;
    let api = BatchClient::new(stack.http(), stack.api_url(""), None);
    let long = (0..200).map(|i| format!("w{i}")).collect::<Vec<_>>().join(" ");
    let (status, job) = api.post("/v1/jobs", &json!({ "endpoint": "/v1/chat/completions", "body": chat(&long) })).await;
    assert_eq!(status, 202, "{job}");
    let id = job["id"].as_str().unwrap().to_string();
    wait_status(&api, &id, "in_progress").await;
    let (status, cancelled) = api.delete(&format!("/v1/jobs/{id}")).await;
    assert_eq!(status, 200, "{cancelled}");
    assert!(cancelled["cancelled_at"].as_u64().is_some(), "{cancelled}");
    let job = wait_status(&api, &id, "cancelled").await;
    assert_eq!(job["result"], Value::Null, "{job}");

    let refused = [
        (json!({ "endpoint": "/v1/images", "body": chat("x") }), 400, "endpoint"),
        (json!({ "endpoint": "/v1/chat/completions", "body": { "model": "echo", "messages": [], "stream": true } }), 400, "body.stream"),
        (
            json!({ "endpoint": "/v1/chat/completions", "body": { "model": "echo", "messages": [{ "role": "user", "content": "x" }], "temperature": 7 } }),
            400,
            "body.temperature",
        ),
        (
            json!({ "endpoint": "/v1/chat/completions", "body": chat("x").as_object().map(|b| { let mut b = b.clone(); b.insert("model".into(), json!("nope")); b }) }),
            404,
            "model",
        ),
    ];
    for (body, want, param) in refused {
        let (status, error) = api.post("/v1/jobs", &body).await;
        assert_eq!((status, error["error"]["param"].as_str()), (want, Some(param)), "{body} → {error}");
    }
    let (status, _) = api.get("/v1/jobs/job_unknown").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn an_embeddings_job_answers_with_vectors() {
    let stack = Stack::start().await;
    let (_worker, _) = stack.ready_worker(&["echo"], "echo-embedding").await;
    let api = BatchClient::new(stack.http(), stack.api_url(""), None);
    let body = json!({ "model": "echo-embedding", "input": ["a", "b", "c"] });
    let (status, job) = api.post("/v1/jobs", &json!({ "endpoint": "/v1/embeddings", "body": body })).await;
    assert_eq!(status, 202, "{job}");
    let done = wait_status(&api, job["id"].as_str().unwrap(), "completed").await;
    assert_eq!(done["result"]["data"].as_array().map(Vec::len), Some(3), "{done}");
    let (status, interactive) = stack.post_json("/v1/embeddings", &body).await;
    assert_eq!(status, 200);
    assert_eq!(done["result"], interactive, "the same body as the synchronous endpoint");
}
