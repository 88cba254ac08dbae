//! Hosted functions end to end (issue "Tool-call jobs"): the demo tool worker
//! (`switchyard worker tools-demo`, HepAI's example functions) on a real stack, listed and
//! called over REST — plain, streamed, with bad arguments, failing, forbidden, killed
//! mid-call, cancelled by a client that goes away, and shared by two workers.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{Value, json};
use switchyard_broker::apikeys::{ApiKeys, KeySpec};
use switchyard_schemas::{EventBody, FinishReason};
use switchyard_tests::{Stack, assert_openai_error, eventually};

const MODEL: &str = "demo-tools";

fn call_path(function: &str) -> String {
    format!("/v1/tools/{MODEL}/{function}")
}

async fn get(stack: &Stack, path: &str, key: Option<&str>) -> (u16, Value) {
    let mut request = stack.http().get(stack.api_url(path));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.json().await.expect("JSON body"))
}

fn listed<'a>(list: &'a Value, name: &str) -> Option<&'a Value> {
    list["data"].as_array().expect("data is a list").iter().find(|t| t["function"]["name"] == name)
}

#[tokio::test]
async fn tools_are_listed_with_their_schemas() {
    let stack = Stack::start().await;
    let _worker = stack.ready_worker(&["tools-demo"], MODEL).await;

    let (status, all) = get(&stack, "/v1/tools", None).await;
    assert_eq!(status, 200, "{all}");
    assert_eq!(all["object"], "list");
    let add = listed(&all, "custom_method").expect("custom_method is listed");
    assert_eq!(add["type"], "function");
    assert_eq!(add["model"], MODEL);
    assert_eq!(add["streams"], false);
    assert_eq!(add["function"]["description"], "Returns a + b.");
    let parameters = &add["function"]["parameters"];
    assert_eq!(parameters["type"], "object");
    assert_eq!(parameters["properties"]["a"]["type"], "integer");
    assert_eq!(parameters["properties"]["a"]["default"], 1);
    assert_eq!(parameters["properties"]["b"]["default"], 2);
    assert_eq!(add["result"]["type"], "integer");
    assert_eq!(listed(&all, "get_stream").expect("get_stream is listed")["streams"], true);
    assert!(listed(&all, "get_info").is_some());
    let name = regex_lite(r"^[a-zA-Z0-9_-]{1,64}$");
    for tool in all["data"].as_array().unwrap() {
        assert!(name(tool["function"]["name"].as_str().unwrap()), "{tool}");
    }

    let (status, one) = get(&stack, &format!("/v1/tools/{MODEL}"), None).await;
    assert_eq!(status, 200, "{one}");
    assert_eq!(one["data"].as_array().unwrap().len(), all["data"].as_array().unwrap().len());
    // A tool model is a model like any other in /v1/models.
    assert!(stack.models().await.iter().any(|m| m == MODEL));
    let (status, body) = get(&stack, "/v1/tools/no-such-model", None).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(assert_openai_error(&body)["code"], "model_not_found");
}

/// `^[a-zA-Z0-9_-]{1,64}$` without a regex crate.
fn regex_lite(_: &str) -> impl Fn(&str) -> bool {
    |s: &str| (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[tokio::test]
async fn plain_and_streamed_calls() {
    let stack = Stack::start().await;
    let _worker = stack.ready_worker(&["tools-demo"], MODEL).await;

    assert_eq!(stack.post_json(&call_path("custom_method"), &json!({"a": 5, "b": 7})).await, (200, json!(12)));
    // Defaults fill in what is left out; an empty body is no arguments.
    assert_eq!(stack.post_json(&call_path("custom_method"), &json!({"b": 10})).await, (200, json!(11)));
    let response = stack.http().post(stack.api_url(&call_path("custom_method"))).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<Value>().await.unwrap(), json!(3));
    let (status, info) = stack.post_json(&call_path("get_info"), &json!({})).await;
    assert_eq!(status, 200, "{info}");
    assert_eq!(info["model"], MODEL);
    assert!(info["functions"].as_array().unwrap().iter().any(|f| f == "get_stream"), "{info}");

    // A stream: its chunks as SSE, in order, then [DONE]; or all of them as one array.
    let chunks = stack.post_stream_all(&call_path("get_stream"), &json!({"count": 5, "stream": true})).await;
    assert_eq!(chunks, (0..5).map(|i| json!(i)).collect::<Vec<_>>());
    assert_eq!(stack.post_json(&call_path("get_stream"), &json!({"count": 3})).await, (200, json!([0, 1, 2])));
    let response = stack
        .http()
        .post(stack.api_url(&call_path("get_stream")))
        .header("accept", "text/event-stream")
        .json(&json!({"count": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    assert_eq!(response.text().await.unwrap(), "data: 0\n\ndata: 1\n\ndata: [DONE]\n\n");
    // A plain function asked to stream sends its one result as the one chunk.
    let chunks = stack.post_stream_all(&call_path("custom_method"), &json!({"a": 1, "b": 1, "stream": true})).await;
    assert_eq!(chunks, vec![json!(2)]);
}

#[tokio::test]
async fn bad_calls_get_clear_errors_and_the_worker_goes_on() {
    let stack = Stack::start().await;
    let _worker = stack.ready_worker(&["tools-demo"], MODEL).await;

    let (status, body) = stack.post_json(&call_path("custom_method"), &json!({"a": "five"})).await;
    assert_eq!(status, 400, "{body}");
    let error = assert_openai_error(&body);
    assert_eq!(error["code"], "invalid_arguments");
    assert!(error["message"].as_str().unwrap().contains("`a`"), "the message names the argument: {body}");

    let (status, body) = stack.post_json(&call_path("fail"), &json!({})).await;
    assert_eq!(status, 400, "a missing argument: {body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("message"), "{body}");

    let (status, body) = stack.post_json(&call_path("no_such_function"), &json!({})).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(assert_openai_error(&body)["code"], "unknown_function");

    let (status, body) = stack.post_json("/v1/tools/no-such-model/custom_method", &json!({})).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(assert_openai_error(&body)["code"], "model_not_found");

    for not_an_object in [json!([1, 2]), json!("a")] {
        let (status, body) = stack.post_json(&call_path("custom_method"), &not_an_object).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(assert_openai_error(&body)["param"], "arguments");
    }

    // The function raises: a clean error, and the worker keeps serving.
    let (status, body) = stack.post_json(&call_path("fail"), &json!({"message": "it broke"})).await;
    assert_eq!(status, 500, "{body}");
    let error = assert_openai_error(&body);
    assert_eq!(error["code"], "function_failed");
    assert_eq!(error["message"], "it broke");
    assert_eq!(stack.post_json(&call_path("custom_method"), &json!({"a": 2, "b": 2})).await, (200, json!(4)));
}

#[tokio::test]
async fn forbidden_tool_models_are_hidden_like_unknown_ones() {
    let stack = Stack::builder().with_auth().start().await;
    let worker = stack.worker(&["tools-demo", "--permissions", "users: alice"]);
    stack.worker_id(&worker).await;
    let keys = ApiKeys::new(switchyard_broker::connect_redis(&stack.redis_url()).await.expect("redis"));
    let (alice, _) = keys.create(KeySpec { user: "alice".into(), ..Default::default() }).await.unwrap();
    let (bob, _) = keys.create(KeySpec { user: "bob".into(), ..Default::default() }).await.unwrap();

    let (status, list) = eventually(Duration::from_secs(30), "alice to see the tools", || async {
        let (status, list) = get(&stack, "/v1/tools", Some(&alice)).await;
        listed(&list, "custom_method").is_some().then_some((status, list))
    })
    .await;
    assert_eq!(status, 200, "{list}");
    let (_, list) = get(&stack, "/v1/tools", Some(&bob)).await;
    assert!(list["data"].as_array().unwrap().is_empty(), "bob sees nothing: {list}");

    let call = |key: String| {
        let stack = &stack;
        async move {
            let response = stack
                .http()
                .post(stack.api_url(&call_path("custom_method")))
                .bearer_auth(key)
                .json(&json!({"a": 1, "b": 1}))
                .send()
                .await
                .unwrap();
            (response.status().as_u16(), response.json::<Value>().await.unwrap())
        }
    };
    assert_eq!(call(alice.clone()).await, (200, json!(2)));
    let (status, forbidden) = call(bob.clone()).await;
    assert_eq!(status, 404, "{forbidden}");
    let (status, unknown) = get(&stack, "/v1/tools/no-such-model", Some(&bob)).await;
    assert_eq!(status, 404);
    assert_eq!(forbidden["error"]["code"], unknown["error"]["code"], "forbidden reads exactly like unknown");
    let (status, _) = get(&stack, &format!("/v1/tools/{MODEL}"), Some(&bob)).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_call_of_a_killed_worker_is_redelivered_and_completes() {
    let stack = Stack::start().await;
    let args = ["tools-demo", "--ack-wait", "1s"];
    let (a, _) = stack.ready_worker(&args, MODEL).await;
    let mut tap = stack.tap_replies().await;
    let (path, arguments) = (call_path("sleep"), json!({"ms": 1500}));
    let ((status, body), b) = tokio::join!(stack.post_json(&path, &arguments), async {
        tap.wait_for(Duration::from_secs(10), |e| matches!(e.body, EventBody::Started { .. })).await.expect("the call started");
        let b = stack.worker(&args);
        stack.worker_id(&b).await;
        a.sigkill();
        b
    });
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["ms"], 1500);
    assert_eq!(body["pid"], b.pid(), "the second worker ran it again: {body}");
}

#[tokio::test]
async fn a_streamed_call_of_a_killed_worker_goes_on_without_repeating_chunks() {
    let stack = Stack::start().await;
    let args = ["tools-demo", "--ack-wait", "1s"];
    let (a, _) = stack.ready_worker(&args, MODEL).await;
    let mut reader = stack.post_stream(&call_path("get_stream"), &json!({"count": 40, "interval_ms": 50, "stream": true})).await;
    for i in 0..5 {
        assert_eq!(reader.next_json().await, Some(json!(i)));
    }
    let b = stack.worker(&args);
    stack.worker_id(&b).await;
    a.sigkill();
    // The second worker runs the function again from the start and sends only what the client
    // does not have yet: every number once, in order.
    let rest = reader.rest().await;
    assert_eq!(rest, (5..40).map(|i| json!(i)).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_client_that_goes_away_cancels_its_streamed_call() {
    let stack = Stack::start().await;
    let _worker = stack.ready_worker(&["tools-demo"], MODEL).await;
    let mut tap = stack.tap_replies().await;
    let mut reader = stack.post_stream(&call_path("get_stream"), &json!({"count": 10000, "interval_ms": 20, "stream": true})).await;
    for i in 0..3 {
        assert_eq!(reader.next_json().await, Some(json!(i)));
    }
    drop(reader);
    // On the worker's side: the job ends cancelled, long before its 200 s of numbers.
    let done = tap
        .wait_for(Duration::from_secs(20), |e| matches!(e.body, EventBody::Done { .. } | EventBody::Error { .. }))
        .await
        .expect("the worker ended the call");
    assert!(matches!(done.body, EventBody::Done { finish_reason: FinishReason::Cancelled, .. }), "{:?}", done.body);
    let chunks = tap.seen().iter().filter(|(_, e)| matches!(e.body, EventBody::ToolChunk { .. })).count();
    assert!(chunks < 1000, "the function stopped soon after the client left ({chunks} chunks)");
}

#[tokio::test]
async fn two_workers_of_one_tool_model_share_the_calls() {
    let stack = Stack::start().await;
    let args = ["tools-demo", "--slots", "4"];
    let (a, _) = stack.ready_worker(&args, MODEL).await;
    let b = stack.worker(&args);
    stack.worker_id(&b).await;
    let (path, arguments) = (call_path("sleep"), json!({"ms": 300}));
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
async fn calls_of_a_tool_model_without_a_live_worker_wait_in_the_queue() {
    let stack = Stack::builder().queue_timeout(Duration::from_secs(20)).start().await;
    let (first, _) = stack.ready_worker(&["tools-demo"], MODEL).await;
    first.sigterm();
    first.wait_exit(Duration::from_secs(30)).await.expect("the worker drained and left");
    eventually(Duration::from_secs(30), "the tool model to leave /v1/tools", || async {
        let (_, list) = get(&stack, "/v1/tools", None).await;
        listed(&list, "custom_method").is_none().then_some(())
    })
    .await;
    // Still known: the call waits for a worker instead of being told the model does not exist.
    let (path, arguments) = (call_path("custom_method"), json!({"a": 1, "b": 2}));
    let ((status, body), _second) = tokio::join!(stack.post_json(&path, &arguments), async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        stack.worker(&["tools-demo"])
    });
    assert_eq!((status, body), (200, json!(3)), "a worker that started later took the queued call");
}
