//! LLM tool calling in chat completions (issue "LLM tool calling"), through the api with the
//! echo backend's debugging tool-call mode (`switchyard worker echo --tools-name echo-tools`): the echo
//! reflects the last user message, and that text is read as a model's Hermes-format output,
//! so these tests choose the "model's" calls and check what the api makes of them — OpenAI's
//! shapes, streamed and not, `tool_choice`, validation, and the 400s of backends without tools.

use serde_json::{Value, json};
use switchyard_tests::{Stack, assert_openai_error};

const CHAT: &str = "/v1/chat/completions";
const TOOLS_MODEL: &str = "echo-tools";

fn weather_tool() -> Value {
    json!({"type": "function", "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}, "required": ["city"]}
    }})
}

fn time_tool() -> Value {
    json!({"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}})
}

fn request(say: &str, extra: Value) -> Value {
    let mut body = json!({"model": TOOLS_MODEL, "messages": [{"role": "user", "content": say}], "tools": [weather_tool(), time_tool()]});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

async fn tools_stack() -> (Stack, switchyard_tests::Proc) {
    let stack = Stack::start().await;
    let (worker, _) = stack.ready_worker(&["echo", "--tools-name", TOOLS_MODEL, "--delay", "1ms"], TOOLS_MODEL).await;
    (stack, worker)
}

/// The calls of a streamed answer, put together the way the OpenAI SDKs accumulate deltas:
/// (content, [(id, name, arguments)], finish_reason).
fn accumulate(chunks: &[Value]) -> (String, Vec<(String, String, String)>, String) {
    let mut content = String::new();
    let mut calls: Vec<(String, String, String)> = Vec::new();
    let mut finish = String::new();
    for chunk in chunks {
        assert_eq!(chunk["object"], "chat.completion.chunk", "{chunk}");
        let Some(choice) = chunk["choices"].get(0) else { continue };
        let delta = &choice["delta"];
        content.push_str(delta["content"].as_str().unwrap_or(""));
        for call in delta["tool_calls"].as_array().into_iter().flatten() {
            let index = call["index"].as_u64().unwrap() as usize;
            if index == calls.len() {
                assert_eq!(call["type"], "function", "a call's first delta says its type: {call}");
                let id = call["id"].as_str().expect("a call's first delta has its id");
                let name = call["function"]["name"].as_str().expect("a call's first delta has its name");
                calls.push((id.into(), name.into(), String::new()));
            } else {
                assert!(call.get("id").is_none() && call["function"].get("name").is_none(), "only the first delta names the call: {call}");
            }
            calls[index].2.push_str(call["function"]["arguments"].as_str().unwrap());
        }
        if let Some(reason) = choice["finish_reason"].as_str() {
            finish = reason.into();
        }
    }
    (content, calls, finish)
}

fn calls_of(body: &Value) -> Vec<(String, String, String)> {
    body["choices"][0]["message"]["tool_calls"]
        .as_array()
        .map(|calls| {
            calls
                .iter()
                .map(|c| {
                    assert_eq!(c["type"], "function");
                    (
                        c["id"].as_str().unwrap().into(),
                        c["function"]["name"].as_str().unwrap().into(),
                        c["function"]["arguments"].as_str().unwrap().into(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn calls_come_back_as_tool_calls_streamed_or_not() {
    let (stack, _worker) = tools_stack().await;
    let one = r#"<tool_call>
{"name": "get_weather", "arguments": {"city": "Zürich \"old town\"", "days": 3}}
</tool_call>"#;
    let (status, body) = stack.post_json(CHAT, &request(one, json!({}))).await;
    assert_eq!(status, 200, "{body}");
    let choice = &body["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(choice["message"]["content"], Value::Null, "nothing of the call is left in content: {body}");
    let calls = calls_of(&body);
    assert_eq!(calls.len(), 1);
    assert!(calls[0].0.starts_with("call_"), "{calls:?}");
    assert_eq!(calls[0].1, "get_weather");
    assert_eq!(calls[0].2, r#"{"city": "Zürich \"old town\"", "days": 3}"#);
    assert!(body["usage"]["completion_tokens"].as_u64().unwrap() > 0);

    let chunks = stack.post_stream_all(CHAT, &request(one, json!({"stream": true}))).await;
    let (content, streamed, finish) = accumulate(&chunks);
    assert_eq!((content.as_str(), finish.as_str()), ("", "tool_calls"));
    assert_eq!(streamed.len(), 1);
    assert_eq!((&streamed[0].1, &streamed[0].2), (&calls[0].1, &calls[0].2), "streamed arguments are the same bytes");
    // The echo streams token by token, 1 ms apart: the arguments arrive in more than one piece.
    let pieces = chunks
        .iter()
        .filter(|c| c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str().is_some_and(|a| !a.is_empty()))
        .count();
    assert!(pieces > 1, "arguments streamed in pieces: {chunks:?}");

    // Text before parallel calls: the text is content, the calls are calls, in order.
    let two = r#"Let me look.<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>
<tool_call>{"name": "get_time", "arguments": {}}</tool_call>"#;
    let (status, body) = stack.post_json(CHAT, &request(two, json!({}))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], "Let me look.");
    let calls = calls_of(&body);
    assert_eq!(
        calls.iter().map(|c| (c.1.as_str(), c.2.as_str())).collect::<Vec<_>>(),
        [("get_weather", r#"{"city": "Oslo"}"#), ("get_time", "{}")]
    );
    assert_ne!(calls[0].0, calls[1].0, "call ids differ");
    let (content, streamed, finish) = accumulate(&stack.post_stream_all(CHAT, &request(two, json!({"stream": true}))).await);
    assert_eq!((content.as_str(), finish.as_str()), ("Let me look.", "tool_calls"));
    assert_eq!(
        streamed.iter().map(|c| (c.1.as_str(), c.2.as_str())).collect::<Vec<_>>(),
        calls.iter().map(|c| (c.1.as_str(), c.2.as_str())).collect::<Vec<_>>()
    );

    // parallel_tool_calls: false keeps the first call only.
    let (status, body) = stack.post_json(CHAT, &request(two, json!({"parallel_tool_calls": false}))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(calls_of(&body).len(), 1);

    // Plain text with tools offered is a plain answer.
    let (status, body) = stack.post_json(CHAT, &request("just words", json!({}))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], "just words");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert!(body["choices"][0]["message"].get("tool_calls").is_none(), "{body}");
}

#[tokio::test]
async fn tool_choice_forces_and_forbids() {
    let (stack, _worker) = tools_stack().await;
    // A named choice opens the call and names the function: the "model" writes only the
    // arguments and the close.
    let rest = r#"{"city": "Lima"}}</tool_call>"#;
    let named = json!({"tool_choice": {"type": "function", "function": {"name": "get_weather"}}});
    let (status, body) = stack.post_json(CHAT, &request(rest, named.clone())).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(calls_of(&body).iter().map(|c| (c.1.as_str(), c.2.as_str())).collect::<Vec<_>>(), [("get_weather", r#"{"city": "Lima"}"#)]);
    let mut streamed = named.clone();
    streamed["stream"] = json!(true);
    let (_, calls, finish) = accumulate(&stack.post_stream_all(CHAT, &request(rest, streamed)).await);
    assert_eq!(finish, "tool_calls");
    assert_eq!((calls[0].1.as_str(), calls[0].2.as_str()), ("get_weather", r#"{"city": "Lima"}"#));

    // `required`: the call is opened, the model names the function.
    let (status, body) =
        stack.post_json(CHAT, &request(r#"get_time", "arguments": {}}</tool_call>"#, json!({"tool_choice": "required"}))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(calls_of(&body)[0].1, "get_time");

    // `none`: the model's text stays text, even when it looks like a call.
    let call = r#"<tool_call>{"name": "get_time", "arguments": {}}</tool_call>"#;
    let (status, body) = stack.post_json(CHAT, &request(call, json!({"tool_choice": "none"}))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], call);
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn a_call_that_is_not_one_is_an_error_never_a_call() {
    let (stack, _worker) = tools_stack().await;
    for (said, why) in [
        (r#"<tool_call>{"name": "get_weather", "arguments": {"city": }}</tool_call>"#, "broken JSON"),
        (r#"<tool_call>{"name": "launch_rockets", "arguments": {}}</tool_call>"#, "not one of the tools"),
        (r#"<tool_call>{"name": "get_weather", "arguments": {"days": 2}}</tool_call>"#, "missing a required argument"),
        (r#"<tool_call>{"name": "get_weather", "arguments": {"city": 5}}</tool_call>"#, "wrong type"),
        (r#"<tool_call>{"name": "get_weather", "arguments": {"city": "Rome"}"#, "unterminated"),
    ] {
        let (status, body) = stack.post_json(CHAT, &request(said, json!({}))).await;
        assert_eq!(status, 500, "{why}: {body}");
        assert_eq!(assert_openai_error(&body)["code"], "malformed_tool_call", "{why}: {body}");
        // Streamed: an error before anything went out is the HTTP answer; after the call's
        // first pieces went out, the stream ends in an error event, never a finish.
        let response = stack.post(CHAT, &request(said, json!({"stream": true}))).await;
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        if status == 200 {
            let chunks = switchyard_tests::sse::parse_body(&text);
            let last = chunks.last().unwrap();
            assert_eq!(last["error"]["code"], "malformed_tool_call", "{why}: {chunks:?}");
            assert!(!chunks.iter().any(|c| c["choices"][0]["finish_reason"] == "tool_calls"), "{why}: {chunks:?}");
        } else {
            assert_eq!(status, 500, "{why}: {text}");
            let body: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(assert_openai_error(&body)["code"], "malformed_tool_call", "{why}: {body}");
        }
    }
    // A required call that the model does not make.
    let (status, body) = stack.post_json(CHAT, &request("no call here", json!({"tool_choice": "required"}))).await;
    assert_eq!(status, 500, "{body}");
    assert_eq!(assert_openai_error(&body)["code"], "malformed_tool_call");
}

#[tokio::test]
async fn tool_requests_are_validated_by_name() {
    let (stack, _worker) = tools_stack().await;
    let user = json!([{"role": "user", "content": "hi"}]);
    let cases = [
        (json!({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}), "tools[0].function.name"),
        (json!({"tools": [weather_tool(), weather_tool()]}), "tools[1].function.name"),
        (json!({"tools": [{"type": "retrieval"}]}), "tools[0].type"),
        (
            json!({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]}),
            "tools[0].function.parameters",
        ),
        (json!({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": 12}}}]}), "tools[0].function.parameters"),
        (json!({"tools": [weather_tool()], "tool_choice": {"type": "function", "function": {"name": "nope"}}}), "tool_choice"),
        (json!({"tools": [weather_tool()], "tool_choice": "sometimes"}), "tool_choice"),
        (json!({"tool_choice": "auto"}), "tool_choice"),
        (json!({"functions": [{"name": "f"}]}), "functions"),
        (json!({"function_call": "auto"}), "function_call"),
        (json!({"response_format": {"type": "json_object"}}), "response_format"),
        (json!({"response_format": {"type": "yaml"}}), "response_format.type"),
    ];
    for (extra, param) in cases {
        let mut body = json!({"model": TOOLS_MODEL, "messages": user});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (status, answer) = stack.post_json(CHAT, &body).await;
        assert_eq!(status, 400, "{extra}: {answer}");
        assert_eq!(assert_openai_error(&answer)["param"], param, "{extra}: {answer}");
    }

    // The history of a tool conversation: calls answered by tool messages.
    let call = json!({"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}});
    let history = |messages: Value| json!({"model": TOOLS_MODEL, "messages": messages, "tools": [weather_tool()]});
    let good = history(json!([
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": null, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "user", "content": "thanks"},
    ]));
    let (status, body) = stack.post_json(CHAT, &good).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], "thanks");
    for (messages, param) in [
        (
            json!([{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [call]}, {"role": "user", "content": "y"}]),
            "messages",
        ),
        (json!([{"role": "user", "content": "x"}, {"role": "tool", "tool_call_id": "call_9", "content": "z"}]), "messages[1].role"),
        (
            json!([{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [call]}, {"role": "tool", "content": "z"}]),
            "messages[2].tool_call_id",
        ),
        (json!([{"role": "user", "content": "x", "tool_calls": [call]}]), "messages[0].tool_calls"),
        (
            json!([{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "[1]"}}]}]),
            "messages[1].tool_calls[0].function.arguments",
        ),
    ] {
        let (status, body) = stack.post_json(CHAT, &history(messages.clone())).await;
        assert_eq!(status, 400, "{messages}: {body}");
        assert_eq!(assert_openai_error(&body)["param"], param, "{messages}: {body}");
    }
}

#[tokio::test]
async fn models_without_tools_refuse_them_by_name() {
    // The plain echo model beside the tool-call one: same backend, no tools on its card.
    let (stack, _worker) = tools_stack().await;
    let base = json!({"model": "echo", "messages": [{"role": "user", "content": "hi"}], "tools": [weather_tool()]});
    for choice in [json!("auto"), json!("required"), json!({"type": "function", "function": {"name": "get_weather"}}), Value::Null] {
        let mut body = base.clone();
        if !choice.is_null() {
            body["tool_choice"] = choice.clone();
        }
        let (status, answer) = stack.post_json(CHAT, &body).await;
        assert_eq!(status, 400, "{choice}: {answer}");
        let error = assert_openai_error(&answer);
        assert_eq!(error["param"], "tools", "{answer}");
        assert!(error["message"].as_str().unwrap().contains("does not support tools"), "{answer}");
    }
    // `none`: the model is not to call them, so it answers.
    let mut body = base.clone();
    body["tool_choice"] = json!("none");
    let (status, answer) = stack.post_json(CHAT, &body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["choices"][0]["message"]["content"], "hi");

    for format in
        [json!({"type": "json_object"}), json!({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}})]
    {
        let body = json!({"model": "echo", "messages": [{"role": "user", "content": "hi"}], "response_format": format});
        let (status, answer) = stack.post_json(CHAT, &body).await;
        assert_eq!(status, 400, "{format}: {answer}");
        assert_eq!(assert_openai_error(&answer)["param"], "response_format");
    }
    let body = json!({"model": "echo", "messages": [{"role": "user", "content": "hi"}], "response_format": {"type": "text"}});
    assert_eq!(stack.post_json(CHAT, &body).await.0, 200);
}
