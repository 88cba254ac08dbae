//! The registry and readiness: dead workers leave `/v1/models` and Redis, a model without a
//! live worker answers 503 after the queue timeout, and `/ready` follows NATS and Redis.

use std::time::{Duration, Instant};

use redis::AsyncCommands;
use switchyard_schemas::keys;
use switchyard_tests::openai::chat_request;
use switchyard_tests::{Stack, assert_openai_error, eventually};

const CHAT: &str = "/v1/chat/completions";

#[tokio::test]
async fn a_killed_worker_leaves_the_models_list_and_redis() {
    let stack = Stack::start().await;
    let (worker, worker_id) = stack.ready_worker(&["echo", "--heartbeat", "500ms"], "echo").await;
    let models = stack.models().await;
    assert!(models.contains(&"echo".to_string()) && models.contains(&"echo-embedding".to_string()), "{models:?}");
    let mut redis = stack.redis_conn().await;
    let score: Option<f64> = redis.zscore(keys::WORKERS, &worker_id).await.unwrap();
    assert!(score.is_some(), "the live worker is in {}", keys::WORKERS);
    let exists: bool = redis.exists(keys::worker(&worker_id)).await.unwrap();
    assert!(exists, "the live worker has its {} key", keys::worker(&worker_id));

    worker.sigkill();
    eventually(Duration::from_secs(15), "echo models to leave /v1/models", || async {
        let models = stack.models().await;
        (!models.iter().any(|m| m == "echo" || m == "echo-embedding")).then_some(())
    })
    .await;
    eventually(Duration::from_secs(15), "the scheduler to reap the dead worker from Redis", || async {
        let mut redis = stack.redis_conn().await;
        let score: Option<f64> = redis.zscore(keys::WORKERS, &worker_id).await.unwrap();
        let exists: bool = redis.exists(keys::worker(&worker_id)).await.unwrap();
        (score.is_none() && !exists).then_some(())
    })
    .await;
    // A model without a live worker is not retrievable either.
    let response = stack.http().get(stack.api_url("/v1/models/echo")).send().await.unwrap();
    assert_eq!(response.status(), 404);
}

#[tokio::test]
async fn a_model_without_live_workers_is_503_after_the_queue_timeout() {
    let stack = Stack::builder().queue_timeout(Duration::from_secs(1)).start().await;
    let (worker, _) = stack.ready_worker(&["echo", "--heartbeat", "500ms"], "echo").await;
    worker.sigkill();
    eventually(Duration::from_secs(15), "echo to leave /v1/models", || async {
        (!stack.models().await.iter().any(|m| m == "echo")).then_some(())
    })
    .await;

    let sent = Instant::now();
    let (status, body) = stack.post_json(CHAT, &chat_request("echo", "anybody there")).await;
    let elapsed = sent.elapsed();
    assert_eq!(status, 503, "{body}");
    let error = assert_openai_error(&body);
    let message = error["message"].as_str().unwrap().to_lowercase();
    assert!(["worker", "available", "capacity", "echo"].iter().any(|word| message.contains(word)), "the message should say why: {body}");
    assert!(elapsed >= Duration::from_millis(900), "503 came before the 1 s queue timeout: {elapsed:?}");
    assert!(elapsed < Duration::from_secs(10), "503 took {elapsed:?}");

    // Streaming requests fail the same way, before any SSE is sent.
    let mut request = chat_request("echo", "anybody there");
    request["stream"] = true.into();
    let response = stack.post(CHAT, &request).await;
    assert_eq!(response.status(), 503);
    let body: serde_json::Value = response.json().await.expect("a JSON error body, not an event stream");
    assert_openai_error(&body);
}

/// A known model whose workers are all gone queues its jobs instead of calling it unknown:
/// a worker that starts within the queue timeout serves the waiting request.
#[tokio::test]
async fn a_queued_job_waits_for_a_worker_that_starts_later() {
    let stack = Stack::start().await;
    let (worker, _) = stack.ready_worker(&["echo", "--heartbeat", "500ms"], "echo").await;
    worker.sigkill();
    eventually(Duration::from_secs(15), "echo to leave /v1/models", || async {
        (!stack.models().await.iter().any(|m| m == "echo")).then_some(())
    })
    .await;

    let body = chat_request("echo", "worth the wait");
    let request = stack.post_json(CHAT, &body);
    let late_worker = async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        stack.worker(&["echo"])
    };
    let ((status, body), _late) = tokio::join!(request, late_worker);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], "worth the wait", "{body}");
}

#[tokio::test]
async fn ready_follows_redis() {
    let stack = Stack::start().await;
    let get = |path: &'static str| {
        let url = stack.api_url(path);
        let http = stack.http().clone();
        async move { http.get(url).timeout(Duration::from_secs(10)).send().await.map(|r| r.status().as_u16()).unwrap_or(0) }
    };
    assert_eq!(get("/ready").await, 200);
    assert_eq!(get("/health").await, 200);
    let scheduler = stack.http().get(stack.scheduler_url("/health")).send().await.unwrap();
    assert_eq!(scheduler.status(), 200);

    stack.redis().sigkill();
    eventually(Duration::from_secs(20), "/ready to turn 503 without Redis", || async { (get("/ready").await == 503).then_some(()) }).await;
    assert_eq!(get("/health").await, 200, "/health stays 200: the process is up");
}

#[tokio::test]
async fn ready_follows_nats() {
    let stack = Stack::start().await;
    let status = |path: &'static str| {
        let url = stack.api_url(path);
        let http = stack.http().clone();
        async move { http.get(url).timeout(Duration::from_secs(10)).send().await.map(|r| r.status().as_u16()).unwrap_or(0) }
    };
    assert_eq!(status("/ready").await, 200);
    stack.nats().sigkill();
    eventually(Duration::from_secs(20), "/ready to turn 503 without NATS", || async { (status("/ready").await == 503).then_some(()) })
        .await;
    assert_eq!(status("/health").await, 200);
}
