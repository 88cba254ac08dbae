//! Hosted functions resolved on the server (issue "LLM tool calling", part 4): a chat request's
//! `{"type": "hosted", "model": …}` tools are the tool model's functions, and the api runs the
//! model's calls of them as tool jobs and gives the model their answers, round after round.
//! The "model" is the echo backend in tool-call mode (`echo --tools-name echo-tools`), whose
//! last user message is a script: segment k (split on `---` lines) is its answer after k
//! assistant messages; the functions are the demo tool worker's (`tools-demo`).

use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};
use switchyard_broker::apikeys::{ApiKeys, KeySpec};
use switchyard_schemas::{EventBody, FinishReason, JobEnvelope, JobRequest};
use switchyard_tests::{Stack, assert_openai_error, eventually};

const CHAT: &str = "/v1/chat/completions";
const MODEL: &str = "echo-tools";
const TOOLS: &str = "demo-tools";

fn call(name: &str, arguments: Value) -> String {
    format!(r#"<tool_call>{{"name": "{name}", "arguments": {arguments}}}</tool_call>"#)
}

fn hosted(functions: Option<&[&str]>) -> Value {
    match functions {
        Some(functions) => json!({"type": "hosted", "model": TOOLS, "functions": functions}),
        None => json!({"type": "hosted", "model": TOOLS}),
    }
}

fn weather_tool() -> Value {
    json!({"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}})
}

fn chat(script: &str, tools: Value, extra: Value) -> Value {
    let mut body = json!({"model": MODEL, "messages": [{"role": "user", "content": script}], "tools": tools});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

async fn stack_with(builder: switchyard_tests::StackBuilder) -> (Stack, Vec<switchyard_tests::Proc>) {
    let stack = builder.start().await;
    let (echo, _) = stack.ready_worker(&["echo", "--tools-name", MODEL, "--delay", "1ms"], MODEL).await;
    let (tools, _) = stack.ready_worker(&["tools-demo", "--slots", "4"], TOOLS).await;
    (stack, vec![echo, tools])
}

fn hosted_calls(body: &Value) -> Vec<Value> {
    body["choices"][0]["message"]["hosted_tool_calls"].as_array().cloned().unwrap_or_default()
}

fn usage(body: &Value) -> (u64, u64, u64) {
    let u = &body["usage"];
    (u["prompt_tokens"].as_u64().unwrap(), u["completion_tokens"].as_u64().unwrap(), u["total_tokens"].as_u64().unwrap())
}

#[tokio::test]
async fn hosted_calls_run_on_the_server_round_after_round() {
    let (stack, _workers) = stack_with(Stack::builder()).await;

    // One round: the call's result reaches the model, which then answers in text.
    let one = format!("{}\n---\nThe sum is in.", call("custom_method", json!({"a": 2, "b": 3})));
    let (status, body) = stack.post_json(CHAT, &chat(&one, json!([hosted(Some(&["custom_method"]))]), json!({}))).await;
    assert_eq!(status, 200, "{body}");
    let choice = &body["choices"][0];
    assert_eq!(choice["finish_reason"], "stop", "{body}");
    assert_eq!(choice["message"]["content"], "The sum is in.");
    assert!(choice["message"].get("tool_calls").is_none(), "hosted calls are not the client's to run: {body}");
    let calls = hosted_calls(&body);
    assert_eq!(calls.len(), 1, "{body}");
    assert!(calls[0]["id"].as_str().unwrap().starts_with("call_"), "{body}");
    assert_eq!((&calls[0]["model"], &calls[0]["function"], &calls[0]["result"]), (&json!(TOOLS), &json!("custom_method"), &json!(5)));
    assert_eq!(calls[0]["arguments"], r#"{"a":2,"b":3}"#);
    assert!(calls[0].get("error").is_none(), "{body}");
    // The same first round with the function the client's own: the call comes back to it, and
    // its usage is that round's alone; the hosted answer's sums both rounds.
    let own = json!([{"type": "function", "function": {"name": "custom_method", "parameters": {"type": "object"}}}]);
    let (status, first_round) = stack.post_json(CHAT, &chat(&one, own, json!({}))).await;
    assert_eq!(status, 200, "{first_round}");
    assert_eq!(first_round["choices"][0]["finish_reason"], "tool_calls");
    let ((prompt, completion, total), (prompt_1, completion_1, _)) = (usage(&body), usage(&first_round));
    assert!(completion > completion_1 && prompt > prompt_1, "usage sums both rounds: {body} vs {first_round}");
    assert_eq!(total, prompt + completion);

    // Two rounds, every function of the model offered: calls in sequence, each seeing the last;
    // a streaming function's chunks are collected into one array.
    let two = format!(
        "{}\n---\n{}\n---\nDone.",
        call("custom_method", json!({"a": 1, "b": 1})),
        call("get_stream", json!({"count": 3, "interval_ms": 1}))
    );
    let (status, body) = stack.post_json(CHAT, &chat(&two, json!([hosted(None)]), json!({}))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], "Done.");
    let calls = hosted_calls(&body);
    let made: Vec<_> = calls.iter().map(|c| (c["function"].clone(), c["result"].clone())).collect();
    assert_eq!(made, [(json!("custom_method"), json!(2)), (json!("get_stream"), json!([0, 1, 2]))], "{body}");
    assert_ne!(calls[0]["id"], calls[1]["id"]);

    // Two calls in one round, run together; both answers reach the model.
    let both =
        format!("Two at once.{}\n{}\n---\nBoth in.", call("custom_method", json!({"a": 10, "b": 20})), call("sleep", json!({"ms": 200})));
    let (status, body) = stack.post_json(CHAT, &chat(&both, json!([hosted(None)]), json!({}))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], "Both in.");
    let calls = hosted_calls(&body);
    assert_eq!(calls.len(), 2, "{body}");
    assert_eq!((&calls[0]["function"], &calls[0]["result"]), (&json!("custom_method"), &json!(30)));
    assert_eq!((&calls[1]["function"], &calls[1]["result"]["ms"]), (&json!("sleep"), &json!(200)));

    // A client-defined function among the calls: the answer is the client's, as it is.
    let tools = json!([hosted(Some(&["custom_method"])), weather_tool()]);
    let mixed = format!("{}{}", call("custom_method", json!({})), call("get_weather", json!({"city": "Oslo"})));
    let (status, body) = stack.post_json(CHAT, &chat(&mixed, tools.clone(), json!({}))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["finish_reason"], "tool_calls");
    let names: Vec<_> =
        body["choices"][0]["message"]["tool_calls"].as_array().unwrap().iter().map(|c| c["function"]["name"].clone()).collect();
    assert_eq!(names, [json!("custom_method"), json!("get_weather")], "{body}");
    assert!(hosted_calls(&body).is_empty(), "nothing was run: {body}");
    let (status, body) = stack.post_json(CHAT, &chat(&call("get_weather", json!({"city": "Oslo"})), tools, json!({}))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["tool_calls"][0]["function"]["name"], "get_weather");
}

#[tokio::test]
async fn a_failed_function_is_an_error_the_model_reads() {
    let (stack, _workers) = stack_with(Stack::builder()).await;
    // Every chat job the api publishes, to see what the model was given.
    let nats = stack.nats_client().await;
    let mut jobs = nats.subscribe("sy.job.>").await.unwrap();
    switchyard_broker::sync_with_server(&nats).await.unwrap();

    let script = format!("{}\n---\nIt failed, sorry.", call("fail", json!({"message": "it broke"})));
    let (status, body) = stack.post_json(CHAT, &chat(&script, json!([hosted(Some(&["fail"]))]), json!({}))).await;
    assert_eq!(status, 200, "the request still answers: {body}");
    assert_eq!(body["choices"][0]["message"]["content"], "It failed, sorry.");
    let calls = hosted_calls(&body);
    assert_eq!(calls.len(), 1, "{body}");
    assert_eq!(calls[0]["error"], "it broke", "{body}");
    assert!(calls[0].get("result").is_none(), "{body}");

    let second = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(message) = jobs.next().await {
            let Ok(envelope) = switchyard_schemas::decode::<JobEnvelope>(&message.payload) else {
                continue;
            };
            if let JobRequest::Chat { messages, .. } = envelope.request
                && messages.len() > 1
            {
                return messages;
            }
        }
        panic!("the job subscription ended");
    })
    .await
    .expect("the second round's chat job");
    let roles: Vec<_> = second.iter().map(|m| m.role.as_str()).collect();
    assert_eq!(roles, ["user", "assistant", "tool"]);
    assert_eq!(second[1].tool_calls.len(), 1);
    assert_eq!(second[2].tool_call_id.as_deref(), Some(second[1].tool_calls[0].id.as_str()));
    assert_eq!(serde_json::from_str::<Value>(&second[2].content).unwrap(), json!({"error": "it broke"}));
}

#[tokio::test]
async fn hosted_tools_are_checked_before_anything_runs() {
    let stack = Stack::builder().with_auth().start().await;
    let echo = stack.worker(&["echo", "--tools-name", MODEL]);
    stack.worker_id(&echo).await;
    let tools = stack.worker(&["tools-demo", "--permissions", "users: alice"]);
    stack.worker_id(&tools).await;
    let keys = ApiKeys::new(switchyard_broker::connect_redis(&stack.redis_url()).await.expect("redis"));
    let (alice, _) = keys.create(KeySpec { user: "alice".into(), ..Default::default() }).await.unwrap();
    let (bob, _) = keys.create(KeySpec { user: "bob".into(), ..Default::default() }).await.unwrap();
    let post = |key: String, body: Value| {
        let stack = &stack;
        async move {
            let response = stack.http().post(stack.api_url(CHAT)).bearer_auth(key).json(&body).send().await.unwrap();
            (response.status().as_u16(), response.json::<Value>().await.unwrap())
        }
    };
    let script = format!("{}\n---\nok", call("custom_method", json!({"a": 1, "b": 1})));
    let (status, body) = eventually(Duration::from_secs(30), "alice's hosted call", || async {
        let (status, body) = post(alice.clone(), chat(&script, json!([hosted(None)]), json!({}))).await;
        (status == 200).then_some((status, body))
    })
    .await;
    assert_eq!(status, 200);
    assert_eq!(hosted_calls(&body)[0]["result"], 2, "{body}");

    // A tool model the key may not use reads exactly like one that does not exist.
    let (status, forbidden) = post(bob.clone(), chat(&script, json!([hosted(None)]), json!({}))).await;
    assert_eq!(status, 404, "{forbidden}");
    assert_eq!(assert_openai_error(&forbidden)["code"], "model_not_found");
    let unknown = json!([{"type": "hosted", "model": "no-such-tools"}]);
    let (status, unknown) = post(alice.clone(), chat(&script, unknown, json!({}))).await;
    assert_eq!(status, 404, "{unknown}");
    assert_eq!(unknown["error"]["code"], forbidden["error"]["code"]);
    assert_eq!(unknown["error"]["param"], forbidden["error"]["param"]);

    // 400s naming what is wrong.
    for (tools, extra, param) in [
        (json!([hosted(Some(&["custom_method", "no_such_function"]))]), json!({}), "tools[0].functions[1]"),
        (json!([weather_tool(), {"type": "function", "function": {"name": "custom_method"}}, hosted(None)]), json!({}), "tools[2]"),
        (json!([hosted(Some(&["get_info"])), hosted(Some(&["get_info"]))]), json!({}), "tools[1].functions[0]"),
        (json!([{"type": "hosted"}]), json!({}), "tools[0].model"),
        (json!([hosted(None)]), json!({"n": 2}), "n"),
    ] {
        let (status, body) = post(alice.clone(), chat(&script, tools.clone(), extra)).await;
        assert_eq!(status, 400, "{tools}: {body}");
        assert_eq!(assert_openai_error(&body)["param"], param, "{tools}: {body}");
    }
    // Queued endpoints have nobody to run the calls.
    let line = json!({"endpoint": "/v1/chat/completions", "body": chat(&script, json!([hosted(None)]), json!({}))});
    let response = stack.http().post(stack.api_url("/v1/jobs")).bearer_auth(alice.clone()).json(&line).send().await.unwrap();
    let (status, body) = (response.status().as_u16(), response.json::<Value>().await.unwrap());
    assert_eq!(status, 400, "{body}");
    assert_eq!(assert_openai_error(&body)["param"], "body.tools[0]");
}

#[tokio::test]
async fn streamed_rounds_and_a_client_that_goes_away() {
    let (stack, _workers) = stack_with(Stack::builder().api_arg("--max-tool-rounds").api_arg("2")).await;

    // Content of every round as it comes, a chunk per finished hosted call, never a
    // `tool_calls` delta for them, the last round's finish, the summed usage, [DONE].
    let script = format!("Adding.{}\n---\nThe sum is in.", call("custom_method", json!({"a": 2, "b": 3})));
    let body = chat(&script, json!([hosted(Some(&["custom_method"]))]), json!({"stream": true, "stream_options": {"include_usage": true}}));
    let chunks = stack.post_stream_all(CHAT, &body).await;
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant", "{chunks:?}");
    let mut seen: Vec<(&str, String)> = Vec::new();
    for chunk in &chunks {
        assert_eq!(chunk["object"], "chat.completion.chunk");
        let Some(choice) = chunk["choices"].get(0) else {
            continue;
        };
        let delta = &choice["delta"];
        assert!(delta.get("tool_calls").is_none(), "{chunk}");
        if let Some(text) = delta["content"].as_str().filter(|t| !t.is_empty()) {
            match seen.last_mut() {
                Some(("content", so_far)) => so_far.push_str(text),
                _ => seen.push(("content", text.to_owned())),
            }
        }
        if let Some(call) = delta.get("hosted_tool_call") {
            assert_eq!(
                (&call["function"], &call["model"], &call["result"]),
                (&json!("custom_method"), &json!(TOOLS), &json!(5)),
                "{chunk}"
            );
            seen.push(("hosted", call["id"].as_str().unwrap().to_owned()));
        }
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert_eq!(
        (seen[0].0, seen[0].1.as_str(), seen[1].0, seen[2].0, seen[2].1.as_str()),
        ("content", "Adding.", "hosted", "content", "The sum is in.")
    );
    let finish = chunks.iter().filter_map(|c| c["choices"].get(0)?["finish_reason"].as_str()).collect::<Vec<_>>();
    assert_eq!(finish, ["stop"]);
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    let whole = chat(&script, json!([hosted(Some(&["custom_method"]))]), json!({}));
    let (status, whole) = stack.post_json(CHAT, &whole).await;
    assert_eq!(status, 200, "{whole}");
    assert_eq!(last["usage"], whole["usage"], "streamed usage sums the rounds as the whole answer does");

    // Past --max-tool-rounds the last answer's calls go to the client as they are.
    let three = [1, 2, 3].map(|a| call("custom_method", json!({"a": a}))).join("\n---\n");
    let (status, body) = stack.post_json(CHAT, &chat(&three, json!([hosted(None)]), json!({}))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(body["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"], r#"{"a":3}"#, "{body}");
    assert_eq!(hosted_calls(&body).iter().map(|c| c["result"].clone()).collect::<Vec<_>>(), [json!(3), json!(4)]);

    // A client that goes away mid-round: the running function is cancelled.
    let mut tap = stack.tap_replies().await;
    let script = format!("{}\n---\nnever", call("sleep", json!({"ms": 60000})));
    let mut reader = stack.post_stream(CHAT, &chat(&script, json!([hosted(Some(&["sleep"]))]), json!({"stream": true}))).await;
    assert_eq!(reader.next_json().await.unwrap()["choices"][0]["delta"]["role"], "assistant");
    tap.wait_for(Duration::from_secs(10), |e| matches!(e.body, EventBody::Done { finish_reason: FinishReason::ToolCalls, .. }))
        .await
        .expect("the chat job called sleep");
    let started = tap.wait_for(Duration::from_secs(10), |e| matches!(e.body, EventBody::Started { .. })).await.expect("the call started");
    drop(reader);
    let job = started.job_id.clone();
    let ended = tap
        .wait_for(Duration::from_secs(20), |e| e.job_id == job && matches!(e.body, EventBody::Done { .. } | EventBody::Error { .. }))
        .await
        .expect("the tool job ended long before its 60 s");
    assert!(matches!(ended.body, EventBody::Done { finish_reason: FinishReason::Cancelled, .. }), "{:?}", ended.body);
}
