//! Operating Switchyard: every part's `/metrics` moves with real requests (parsed as Prometheus
//! parses it), a lane's queue depth is read from JetStream as jobs queue and drain, and one
//! request's spans in the api and the worker share a trace (exported over OTLP/HTTP to a
//! collector this test runs).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchyard_telemetry::names;
use switchyard_tests::openai::chat_request;
use switchyard_tests::prometheus::Metrics;
use switchyard_tests::{Stack, Value, eventually, free_port, json};

const WAIT: Duration = Duration::from_secs(20);

/// `switchyard keys create <args…>`'s secret.
fn create_key(stack: &Stack, args: &[&str]) -> String {
    let mut all = vec!["keys", "create"];
    all.extend_from_slice(args);
    let output = stack.run_cli(&all);
    assert!(output.status.success(), "switchyard {all:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

async fn chat(stack: &Stack, key: &str, body: &Value) -> (u16, Value) {
    let response = stack.http().post(stack.api_url("/v1/chat/completions")).bearer_auth(key).json(body).send().await.expect("POST");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_part_s_metrics_move_with_real_requests() {
    let stack = Stack::builder().with_auth().scheduler_arg("--metrics-interval").scheduler_arg("200ms").start().await;
    let worker_metrics = format!("127.0.0.1:{}", free_port());
    let workers = [
        stack.worker(&["echo", "--slots", "8", "--metrics-listen", &worker_metrics]),
        stack.worker(&["echo", "--name", "slow-echo", "--embedding-name", "slow-embedding", "--delay", "100ms"]),
        stack.worker(&["tools-demo"]),
    ];
    let key = create_key(&stack, &["--user", "ops"]);
    let limited = create_key(&stack, &["--user", "limited", "--rpm", "1"]);
    let http = stack.http();
    for worker in &workers {
        stack.worker_id(worker).await;
    }
    eventually(WAIT, "the models to be listed", || async {
        let listed: Value = http.get(stack.api_url("/v1/models")).bearer_auth(&key).send().await.ok()?.json().await.ok()?;
        let ids: Vec<&str> = listed["data"].as_array()?.iter().filter_map(|m| m["id"].as_str()).collect();
        ["echo", "slow-echo", "demo-tools"].iter().all(|m| ids.contains(m)).then_some(())
    })
    .await;
    let api_metrics = stack.api_url("/metrics");

    // Three whole answers and two streams, their usage summed as the client saw it.
    let (mut prompt, mut completion) = (0.0, 0.0);
    for i in 0..3 {
        let (status, body) = chat(&stack, &key, &chat_request("echo", &format!("whole answer number {i} with words"))).await;
        assert_eq!(status, 200, "{body}");
        prompt += body["usage"]["prompt_tokens"].as_f64().unwrap();
        completion += body["usage"]["completion_tokens"].as_f64().unwrap();
    }
    for i in 0..2 {
        let mut body = chat_request("echo", &format!("a streamed answer {i} of several words"));
        body["stream"] = json!(true);
        body["stream_options"] = json!({ "include_usage": true });
        let response = http.post(stack.api_url("/v1/chat/completions")).bearer_auth(&key).json(&body).send().await.unwrap();
        let chunks = switchyard_tests::sse::parse_body(&response.text().await.unwrap());
        let usage = &chunks.last().unwrap()["usage"];
        prompt += usage["prompt_tokens"].as_f64().unwrap();
        completion += usage["completion_tokens"].as_f64().unwrap();
    }
    let embedded = http
        .post(stack.api_url("/v1/embeddings"))
        .bearer_auth(&key)
        .json(&json!({ "model": "echo-embedding", "input": ["one", "two"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(embedded.status(), 200);
    // A function that raises: an error event with its code.
    let failed =
        http.post(stack.api_url("/v1/tools/demo-tools/fail")).bearer_auth(&key).json(&json!({ "message": "boom" })).send().await.unwrap();
    assert!(failed.status().is_server_error() || failed.status().is_client_error(), "{}", failed.status());
    // Tokens 100 ms apart: inter-token latencies.
    assert_eq!(chat(&stack, &key, &chat_request("slow-echo", "one two three")).await.0, 200);
    // A stream the client leaves after its first chunk: a cancellation.
    let mut body = chat_request("slow-echo", &switchyard_tests::openai::words("slow", 40));
    body["stream"] = json!(true);
    let response = http.post(stack.api_url("/v1/chat/completions")).bearer_auth(&key).json(&body).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let mut stream = switchyard_tests::sse::SseReader::new(response);
    assert!(stream.next_json().await.is_some());
    drop(stream);
    // A key with one request a minute: its second is refused.
    assert_eq!(chat(&stack, &limited, &chat_request("echo", "first")).await.0, 200);
    assert_eq!(chat(&stack, &limited, &chat_request("echo", "second")).await.0, 429);

    let echo = [("model", "echo"), ("lane", "interactive")];
    let api = eventually(WAIT, "the cancelled stream to be counted", || async {
        let metrics = Metrics::scrape(http, &api_metrics).await;
        (metrics.value_or_zero(names::REQUESTS_CANCELLED, &[("model", "slow-echo")]) == 1.0).then_some(metrics)
    })
    .await;
    // Six echo chats (five, and the limited key's first), each counted once at its end.
    assert_eq!(api.value(names::REQUESTS_FINISHED, &[("model", "echo"), ("reason", "stop")]), Some(6.0), "{}", api.text());
    assert_eq!(api.count(names::TIME_TO_FIRST_TOKEN, &echo), 6.0);
    assert_eq!(api.count(names::E2E_LATENCY, &echo), 6.0);
    assert_eq!(api.count(names::QUEUE_TIME, &echo), 6.0);
    // Echo without a delay sends its text in one event; with one, word by word.
    assert!(api.count(names::INTER_TOKEN_LATENCY, &[("model", "slow-echo")]) >= 2.0, "{}", api.text());
    let limited_usage = 1.0; // "first": one word, echoed.
    assert_eq!(api.value(names::PROMPT_TOKENS, &echo).unwrap() - limited_usage, prompt);
    assert_eq!(api.value(names::GENERATION_TOKENS, &echo).unwrap() - limited_usage, completion);
    assert_eq!(api.value(names::REQUESTS_WAITING, &echo), Some(0.0));
    assert_eq!(api.value(names::REQUESTS_RUNNING, &echo), Some(0.0));
    assert_eq!(api.value(names::REQUESTS_FINISHED, &[("model", "echo-embedding"), ("reason", "stop")]), Some(1.0));
    assert_eq!(api.value(names::REQUEST_ERRORS, &[("model", "demo-tools"), ("code", "function_failed")]), Some(1.0), "{}", api.text());
    assert_eq!(api.value(names::RATE_LIMITED, &[("model", "echo"), ("limit", "rpm")]), Some(1.0), "{}", api.text());
    assert!(api.is_histogram(names::TIME_TO_FIRST_TOKEN) && api.is_histogram(names::INTER_TOKEN_LATENCY));

    // The echo worker's own endpoint: its slots, and every job it ran.
    let worker = Metrics::scrape(http, &format!("http://{worker_metrics}/metrics")).await;
    assert_eq!(worker.value(names::WORKER_SLOTS, &[]), Some(8.0), "{}", worker.text());
    assert_eq!(worker.value(names::WORKER_SLOTS_IN_USE, &[]), Some(0.0));
    assert_eq!(worker.value(names::WORKER_JOBS, &[("model", "echo"), ("lane", "interactive")]), Some(6.0), "{}", worker.text());
    assert_eq!(worker.value(names::WORKER_JOBS, &[("model", "echo-embedding")]), Some(1.0));
    for probe in ["/health", "/ready"] {
        let response = http.get(format!("http://{worker_metrics}{probe}")).send().await.unwrap();
        assert_eq!(response.status(), 200, "{probe}");
    }

    // The scheduler's view: workers and slots per model from the registry, lanes from JetStream.
    let scheduler = eventually(WAIT, "the scheduler's gauges", || async {
        let metrics = Metrics::scrape(http, &stack.scheduler_url("/metrics")).await;
        (metrics.value(names::MODEL_WORKERS, &[("model", "echo")]) == Some(1.0)).then_some(metrics)
    })
    .await;
    assert_eq!(scheduler.value(names::MODEL_SLOTS, &[("model", "echo")]), Some(8.0), "{}", scheduler.text());
    let lane = [("model", "echo"), ("kind", "chat"), ("lane", "interactive")];
    assert_eq!(scheduler.value(names::LANE_PENDING, &lane), Some(0.0), "{}", scheduler.text());
    assert_eq!(scheduler.value(names::LANE_ACK_PENDING, &lane), Some(0.0));
    assert_eq!(scheduler.value(names::LANE_PENDING, &[("model", "echo"), ("kind", "chat"), ("lane", "batch")]), Some(0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lane_lag_rises_with_queued_jobs_and_falls_when_a_worker_starts() {
    let stack = Stack::builder().scheduler_arg("--metrics-interval").scheduler_arg("200ms").start().await;
    // A worker makes the model and its lanes' consumers known, then leaves.
    let (first, _) = stack.ready_worker(&["echo", "--name", "lagged"], "lagged").await;
    first.sigterm();
    first.wait_exit(WAIT).await.expect("the worker drains and exits");
    let lane = [("model", "lagged"), ("kind", "chat"), ("lane", "interactive")];
    let pending = |expected: f64| {
        let stack = &stack;
        async move {
            eventually(WAIT, &format!("{expected} jobs pending on lagged's interactive lane"), || async {
                let metrics = Metrics::scrape(stack.http(), &stack.scheduler_url("/metrics")).await;
                (metrics.value(names::LANE_PENDING, &lane) == Some(expected)).then_some(metrics)
            })
            .await
        }
    };
    pending(0.0).await;

    let requests: Vec<_> = (0..4)
        .map(|i| {
            let http = stack.http().clone();
            let url = stack.api_url("/v1/chat/completions");
            tokio::spawn(async move { http.post(url).json(&chat_request("lagged", &format!("queued {i}"))).send().await.unwrap().status() })
        })
        .collect();
    let queued = pending(4.0).await;
    assert_eq!(queued.value(names::LANE_ACK_PENDING, &lane), Some(0.0));
    let api = Metrics::scrape(stack.http(), &stack.api_url("/metrics")).await;
    assert_eq!(api.value(names::REQUESTS_WAITING, &[("model", "lagged")]), Some(4.0), "{}", api.text());

    let _second = stack.worker(&["echo", "--name", "lagged"]);
    for request in requests {
        assert_eq!(request.await.unwrap(), 200);
    }
    pending(0.0).await;
    let api = Metrics::scrape(stack.http(), &stack.api_url("/metrics")).await;
    assert_eq!(api.value(names::REQUESTS_WAITING, &[("model", "lagged")]), Some(0.0));
    assert_eq!(api.count(names::QUEUE_TIME, &[("model", "lagged")]), 4.0);
}

/// One span as the collector received it.
#[derive(Debug, Clone)]
struct ExportedSpan {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    job_id: Option<String>,
}

/// An OTLP/HTTP collector (protobuf on `POST /v1/traces`) keeping every span it receives.
async fn collector() -> (String, Arc<Mutex<Vec<ExportedSpan>>>) {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
    use prost::Message;
    let spans = Arc::new(Mutex::new(Vec::new()));
    let kept = spans.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let kept = kept.clone();
            async move {
                let request = ExportTraceServiceRequest::decode(body).expect("an OTLP trace export");
                let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
                for resource in request.resource_spans {
                    let service = resource
                        .resource
                        .iter()
                        .flat_map(|r| &r.attributes)
                        .find(|a| a.key == "service.name")
                        .and_then(|a| match a.value.as_ref()?.value.as_ref()? {
                            Any::StringValue(s) => Some(s.clone()),
                            _ => None,
                        })
                        .unwrap_or_default();
                    for span in resource.scope_spans.into_iter().flat_map(|s| s.spans) {
                        let job_id =
                            span.attributes.iter().find(|a| a.key == "job_id").and_then(|a| match a.value.as_ref()?.value.as_ref()? {
                                Any::StringValue(s) => Some(s.clone()),
                                _ => None,
                            });
                        kept.lock().unwrap().push(ExportedSpan {
                            service: service.clone(),
                            name: span.name,
                            trace_id: hex(&span.trace_id),
                            span_id: hex(&span.span_id),
                            parent_span_id: hex(&span.parent_span_id),
                            job_id,
                        });
                    }
                }
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, spans)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_request_s_api_and_worker_spans_share_a_trace() {
    let (collector_url, spans) = collector().await;
    let stack = Stack::builder()
        .api_arg("--otlp-endpoint")
        .api_arg(collector_url.clone())
        // Export every 200 ms instead of every 5 s.
        .env("OTEL_BSP_SCHEDULE_DELAY", "200")
        .start()
        .await;
    let (_worker, _) = stack.ready_worker(&["echo", "--otlp-endpoint", &collector_url], "echo").await;

    // A caller's own trace continues through the api, the queue and the worker.
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let response = stack
        .http()
        .post(stack.api_url("/v1/chat/completions"))
        .header("traceparent", format!("00-{caller_trace}-00f067aa0ba902b7-01"))
        .json(&chat_request("echo", "follow me"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // And a request without one starts a trace of its own in the api.
    assert_eq!(stack.post_json("/v1/chat/completions", &chat_request("echo", "a fresh trace")).await.0, 200);

    let (api, worker) = eventually(WAIT, "the api's and the worker's spans of the first request", || async {
        let spans = spans.lock().unwrap().clone();
        let api = spans.iter().find(|s| s.service == "switchyard-api" && s.name == "request" && s.trace_id == caller_trace)?.clone();
        let job_id = api.job_id.clone()?;
        let worker =
            spans.iter().find(|s| s.service == "switchyard-worker" && s.name == "job" && s.job_id.as_deref() == Some(&job_id))?.clone();
        Some((api, worker))
    })
    .await;
    assert_eq!(worker.trace_id, api.trace_id, "{worker:?} / {api:?}");
    assert_eq!(worker.parent_span_id, api.span_id, "the worker's span is the api request span's child");
    assert_eq!(api.parent_span_id, "00f067aa0ba902b7", "the api's span continues the caller's");

    let (fresh, fresh_worker) = eventually(WAIT, "the spans of the request without a traceparent", || async {
        let spans = spans.lock().unwrap().clone();
        let fresh = spans
            .iter()
            .find(|s| s.service == "switchyard-api" && s.name == "request" && s.trace_id != caller_trace && s.job_id.is_some())?
            .clone();
        let worker = spans.iter().find(|s| s.name == "job" && s.job_id == fresh.job_id)?.clone();
        Some((fresh, worker))
    })
    .await;
    assert!(fresh.parent_span_id.is_empty() || fresh.parent_span_id.chars().all(|c| c == '0'), "a root span: {fresh:?}");
    assert_eq!(fresh_worker.trace_id, fresh.trace_id);
}
