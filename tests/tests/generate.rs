//! `/v1/chat/completions` and `/v1/completions` end to end with the echo worker: exact text,
//! finish reasons, usage, and SSE exactly as OpenAI frames it.
//!
//! The echo backend reflects the last user message (chat) or the prompt (completions), one
//! word token per step; prompt tokens are the word tokens of all messages.

use serde_json::{Value, json};
use switchyard_tests::openai::{
    Endpoint, assert_usage, chat_request, check_completion, check_stream, completion_request, echo_token_count, words,
};
use switchyard_tests::{Proc, Stack};

const CHAT: &str = "/v1/chat/completions";
const COMPLETIONS: &str = "/v1/completions";

/// A stack with one echo worker serving `echo`.
async fn stack_with_echo(args: &[&str]) -> (Stack, Proc) {
    let stack = Stack::start().await;
    let mut all = vec!["echo"];
    all.extend_from_slice(args);
    let (worker, _) = stack.ready_worker(&all, "echo").await;
    (stack, worker)
}

fn with(mut body: Value, extra: Value) -> Value {
    for (key, value) in extra.as_object().unwrap() {
        body[key] = value.clone();
    }
    body
}

#[tokio::test]
async fn chat_non_stream_echoes_the_last_user_message() {
    let (stack, _worker) = stack_with_echo(&[]).await;
    let messages = json!([
        { "role": "system", "content": "You are very terse." },
        { "role": "user", "content": "first question here" },
        { "role": "assistant", "content": "an answer" },
        { "role": "user", "content": "hello there brave new world" },
    ]);
    let (status, body) = stack.post_json(CHAT, &json!({ "model": "echo", "messages": messages })).await;
    assert_eq!(status, 200, "{body}");
    let (texts, finishes, usage) = check_completion(Endpoint::Chat, &body, "echo");
    assert_eq!(texts, ["hello there brave new world"]);
    assert_eq!(finishes, ["stop"]);
    assert_usage(&usage, 4 + 3 + 2 + 5, 5);
}

#[tokio::test]
async fn chat_stream_is_framed_like_openai() {
    let (stack, _worker) = stack_with_echo(&["--delay", "50ms"]).await;
    let prompt = "streaming tokens arrive one by one";
    let chunks = stack.post_stream_all(CHAT, &with(chat_request("echo", prompt), json!({ "stream": true }))).await;
    let summary = check_stream(Endpoint::Chat, &chunks, "echo", false);
    assert_eq!(summary.text(), prompt);
    assert_eq!(summary.finish(), "stop");
    // The finish_reason sits in the last chunk, and the text really streamed (50 ms a token).
    assert_eq!(chunks.last().unwrap()["choices"][0]["finish_reason"], "stop");
    assert!(summary.text_chunks[&0] >= 2, "the text came in {} chunk(s): {chunks:?}", summary.text_chunks[&0]);
}

#[tokio::test]
async fn chat_stream_include_usage_ends_with_a_usage_chunk() {
    let (stack, _worker) = stack_with_echo(&[]).await;
    let prompt = "count these five words";
    let request = with(
        json!({ "model": "echo", "messages": [
            { "role": "system", "content": "two words" },
            { "role": "user", "content": prompt },
        ]}),
        json!({ "stream": true, "stream_options": { "include_usage": true } }),
    );
    let chunks = stack.post_stream_all(CHAT, &request).await;
    let summary = check_stream(Endpoint::Chat, &chunks, "echo", true);
    assert_eq!(summary.text(), prompt);
    assert_eq!(summary.finish(), "stop");
    assert_usage(summary.usage.as_ref().unwrap(), 2 + 4, 4);
}

#[tokio::test]
async fn completions_non_stream_echoes_the_prompt() {
    let (stack, _worker) = stack_with_echo(&[]).await;
    let prompt = "the quick brown fox jumps over the lazy dog";
    let (status, body) = stack.post_json(COMPLETIONS, &completion_request("echo", prompt)).await;
    assert_eq!(status, 200, "{body}");
    let (texts, finishes, usage) = check_completion(Endpoint::Completions, &body, "echo");
    assert_eq!(texts, [prompt]);
    assert_eq!(finishes, ["stop"]);
    assert_usage(&usage, 9, 9);
}

#[tokio::test]
async fn completions_stream_is_framed_like_openai() {
    let (stack, _worker) = stack_with_echo(&["--delay", "20ms"]).await;
    let prompt = "legacy completions stream text chunks";
    let request = with(completion_request("echo", prompt), json!({ "stream": true }));
    let chunks = stack.post_stream_all(COMPLETIONS, &request).await;
    let summary = check_stream(Endpoint::Completions, &chunks, "echo", false);
    assert_eq!(summary.text(), prompt);
    assert_eq!(summary.finish(), "stop");

    let request = with(completion_request("echo", prompt), json!({ "stream": true, "stream_options": { "include_usage": true } }));
    let chunks = stack.post_stream_all(COMPLETIONS, &request).await;
    let summary = check_stream(Endpoint::Completions, &chunks, "echo", true);
    assert_eq!(summary.text(), prompt);
    assert_usage(summary.usage.as_ref().unwrap(), 5, 5);
}

#[tokio::test]
async fn n_two_gives_two_choices() {
    let (stack, _worker) = stack_with_echo(&[]).await;
    let prompt = "two choices of this";

    let (status, body) = stack.post_json(CHAT, &with(chat_request("echo", prompt), json!({ "n": 2 }))).await;
    assert_eq!(status, 200, "{body}");
    let (texts, finishes, usage) = check_completion(Endpoint::Chat, &body, "echo");
    assert_eq!(texts, [prompt, prompt]);
    assert_eq!(finishes, ["stop", "stop"]);
    // As OpenAI counts it: the prompt once, the completion tokens of every choice.
    assert_usage(&usage, 4, 8);

    let request = with(chat_request("echo", prompt), json!({ "n": 2, "stream": true, "stream_options": { "include_usage": true } }));
    let chunks = stack.post_stream_all(CHAT, &request).await;
    let summary = check_stream(Endpoint::Chat, &chunks, "echo", true);
    assert_eq!(summary.texts.keys().copied().collect::<Vec<_>>(), [0, 1], "choice indices");
    assert_eq!(summary.texts[&0], prompt);
    assert_eq!(summary.texts[&1], prompt);
    assert_eq!(summary.finishes[&0], "stop");
    assert_eq!(summary.finishes[&1], "stop");
    assert_usage(summary.usage.as_ref().unwrap(), 4, 8);

    let (status, body) = stack.post_json(COMPLETIONS, &with(completion_request("echo", prompt), json!({ "n": 2 }))).await;
    assert_eq!(status, 200, "{body}");
    let (texts, finishes, usage) = check_completion(Endpoint::Completions, &body, "echo");
    assert_eq!(texts, [prompt, prompt]);
    assert_eq!(finishes, ["stop", "stop"]);
    assert_usage(&usage, 4, 8);
}

#[tokio::test]
async fn stop_cuts_the_text_before_the_stop_string() {
    let (stack, _worker) = stack_with_echo(&[]).await;
    let prompt = "alpha beta gamma STOP delta epsilon";
    let expected = "alpha beta gamma ";

    // `stop` as a list, non-streamed.
    let (status, body) = stack.post_json(CHAT, &with(chat_request("echo", prompt), json!({ "stop": ["STOP", "never"] }))).await;
    assert_eq!(status, 200, "{body}");
    let (texts, finishes, _) = check_completion(Endpoint::Chat, &body, "echo");
    assert_eq!(texts, [expected]);
    assert_eq!(finishes, ["stop"]);

    // `stop` as one string, streamed.
    let chunks = stack.post_stream_all(CHAT, &with(chat_request("echo", prompt), json!({ "stop": "STOP", "stream": true }))).await;
    let summary = check_stream(Endpoint::Chat, &chunks, "echo", false);
    assert_eq!(summary.text(), expected);
    assert_eq!(summary.finish(), "stop");

    // A stop string inside a word, on the legacy endpoint.
    let (status, body) = stack.post_json(COMPLETIONS, &with(completion_request("echo", prompt), json!({ "stop": "mma" }))).await;
    assert_eq!(status, 200, "{body}");
    let (texts, finishes, _) = check_completion(Endpoint::Completions, &body, "echo");
    assert_eq!(texts, ["alpha beta ga"]);
    assert_eq!(finishes, ["stop"]);
}

#[tokio::test]
async fn max_tokens_and_max_completion_tokens_end_with_length() {
    let (stack, _worker) = stack_with_echo(&[]).await;
    let prompt = "one two three four five six";

    let (status, body) = stack.post_json(CHAT, &with(chat_request("echo", prompt), json!({ "max_tokens": 3 }))).await;
    assert_eq!(status, 200, "{body}");
    let (texts, finishes, usage) = check_completion(Endpoint::Chat, &body, "echo");
    assert_eq!(texts, ["one two three"]);
    assert_eq!(finishes, ["length"]);
    assert_usage(&usage, 6, 3);

    let (status, body) = stack.post_json(CHAT, &with(chat_request("echo", prompt), json!({ "max_completion_tokens": 2 }))).await;
    assert_eq!(status, 200, "{body}");
    let (texts, finishes, usage) = check_completion(Endpoint::Chat, &body, "echo");
    assert_eq!(texts, ["one two"]);
    assert_eq!(finishes, ["length"]);
    assert_usage(&usage, 6, 2);

    let request =
        with(chat_request("echo", prompt), json!({ "max_tokens": 4, "stream": true, "stream_options": { "include_usage": true } }));
    let chunks = stack.post_stream_all(CHAT, &request).await;
    let summary = check_stream(Endpoint::Chat, &chunks, "echo", true);
    assert_eq!(summary.text(), "one two three four");
    assert_eq!(summary.finish(), "length");
    assert_usage(summary.usage.as_ref().unwrap(), 6, 4);

    let (status, body) = stack.post_json(COMPLETIONS, &with(completion_request("echo", prompt), json!({ "max_tokens": 2 }))).await;
    assert_eq!(status, 200, "{body}");
    let (texts, finishes, usage) = check_completion(Endpoint::Completions, &body, "echo");
    assert_eq!(texts, ["one two"]);
    assert_eq!(finishes, ["length"]);
    assert_usage(&usage, 6, 2);

    // A limit the text does not reach changes nothing.
    let (status, body) = stack.post_json(CHAT, &with(chat_request("echo", prompt), json!({ "max_tokens": 100 }))).await;
    assert_eq!(status, 200, "{body}");
    let (texts, finishes, _) = check_completion(Endpoint::Chat, &body, "echo");
    assert_eq!(texts, [prompt]);
    assert_eq!(finishes, ["stop"]);
}

#[tokio::test]
async fn content_parts_and_long_prompts_round_trip() {
    let (stack, _worker) = stack_with_echo(&[]).await;
    // OpenAI's content-part form of a user message is flattened to its text.
    let request = json!({ "model": "echo", "messages": [
        { "role": "user", "content": [{ "type": "text", "text": "parts are flattened" }] },
    ]});
    let (status, body) = stack.post_json(CHAT, &request).await;
    assert_eq!(status, 200, "{body}");
    let (texts, _, _) = check_completion(Endpoint::Chat, &body, "echo");
    assert_eq!(texts, ["parts are flattened"]);

    // Unicode and a long prompt come back byte for byte.
    let prompt = format!("日本語 テキスト é ü {}", words("token", 200));
    let (status, body) = stack.post_json(CHAT, &chat_request("echo", &prompt)).await;
    assert_eq!(status, 200, "{body}");
    let (texts, finishes, usage) = check_completion(Endpoint::Chat, &body, "echo");
    assert_eq!(texts, std::slice::from_ref(&prompt));
    assert_eq!(finishes, ["stop"]);
    assert_usage(&usage, echo_token_count(&prompt), echo_token_count(&prompt));

    let chunks = stack.post_stream_all(CHAT, &with(chat_request("echo", &prompt), json!({ "stream": true }))).await;
    let summary = check_stream(Endpoint::Chat, &chunks, "echo", false);
    assert_eq!(summary.text(), prompt);
}

/// The dummy backend answers every request with its fixed reply.
#[tokio::test]
async fn dummy_worker_gives_its_fixed_reply() {
    let stack = Stack::start().await;
    let (_worker, _) = stack.ready_worker(&["dummy", "--name", "fixed", "--reply", "always the same answer"], "fixed").await;
    let (status, body) = stack.post_json(CHAT, &chat_request("fixed", "whatever you say")).await;
    assert_eq!(status, 200, "{body}");
    let (texts, finishes, usage) = check_completion(Endpoint::Chat, &body, "fixed");
    assert_eq!(texts, ["always the same answer"]);
    assert_eq!(finishes, ["stop"]);
    assert_usage(&usage, 3, 4);
}
