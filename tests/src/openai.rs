//! What an OpenAI client relies on in a response, checked once here for every test: the
//! shape of completion objects, stream chunks and `usage`.

use std::collections::BTreeMap;

use serde_json::{Value, json};

/// `{"model", "messages": [{"role": "user", "content": text}]}`.
pub fn chat_request(model: &str, text: &str) -> Value {
    json!({ "model": model, "messages": [{ "role": "user", "content": text }] })
}

/// `{"model", "prompt": text}`.
pub fn completion_request(model: &str, text: &str) -> Value {
    json!({ "model": model, "prompt": text })
}

/// `count` distinct words joined by single spaces (`alpha01 alpha02 …`).
pub fn words(prefix: &str, count: usize) -> String {
    (1..=count).map(|i| format!("{prefix}{i:02}")).collect::<Vec<_>>().join(" ")
}

/// How many tokens the echo backend counts in `text`: one per word, for text with single spaces
/// and no leading or trailing whitespace.
pub fn echo_token_count(text: &str) -> u32 {
    text.split_whitespace().count() as u32
}

/// Asserts `usage == {prompt_tokens, completion_tokens, total_tokens: sum}`.
pub fn assert_usage(usage: &Value, prompt_tokens: u32, completion_tokens: u32) {
    assert_eq!(
        usage,
        &json!({
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }),
        "usage"
    );
}

/// Which endpoint a response came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completions,
}

impl Endpoint {
    fn object(self) -> &'static str {
        match self {
            Endpoint::Chat => "chat.completion",
            Endpoint::Completions => "text_completion",
        }
    }

    fn chunk_object(self) -> &'static str {
        match self {
            Endpoint::Chat => "chat.completion.chunk",
            Endpoint::Completions => "text_completion",
        }
    }
}

fn assert_common(body: &Value, object: &str, model: &str) {
    assert_eq!(body["object"], object, "object in {body}");
    assert!(body["id"].as_str().is_some_and(|id| !id.is_empty()), "id must be a non-empty string: {body}");
    assert_eq!(body["model"], model, "model in {body}");
    let created = body["created"].as_u64().unwrap_or_else(|| panic!("created must be an integer (Unix seconds): {body}"));
    let now = switchyard_schemas::now_ms() / 1000;
    assert!(created.abs_diff(now) < 24 * 3600, "created {created} is not a Unix time in seconds near {now}");
}

/// A non-streamed chat or completion response, checked: `(texts by choice index, finish
/// reasons by index, usage)`.
pub fn check_completion(endpoint: Endpoint, body: &Value, model: &str) -> (Vec<String>, Vec<String>, Value) {
    assert_common(body, endpoint.object(), model);
    let choices = body["choices"].as_array().unwrap_or_else(|| panic!("choices must be an array: {body}"));
    let mut texts = Vec::new();
    let mut finishes = Vec::new();
    for (i, choice) in choices.iter().enumerate() {
        assert_eq!(choice["index"], i, "choices must be in index order: {body}");
        let text = match endpoint {
            Endpoint::Chat => {
                assert_eq!(choice["message"]["role"], "assistant", "message.role: {body}");
                choice["message"]["content"].as_str()
            }
            Endpoint::Completions => choice["text"].as_str(),
        };
        texts.push(text.unwrap_or_else(|| panic!("choice {i} has no text: {body}")).to_string());
        finishes.push(choice["finish_reason"].as_str().unwrap_or_else(|| panic!("choice {i} has no finish_reason: {body}")).to_string());
    }
    let usage = body.get("usage").cloned().unwrap_or_else(|| panic!("usage missing: {body}"));
    (texts, finishes, usage)
}

/// A checked stream.
#[derive(Debug, Default)]
pub struct StreamSummary {
    /// Concatenated text per choice index.
    pub texts: BTreeMap<u64, String>,
    /// The one finish reason per choice index.
    pub finishes: BTreeMap<u64, String>,
    /// Chunks that carried text, per choice index.
    pub text_chunks: BTreeMap<u64, usize>,
    /// The final usage chunk's `usage`, when `include_usage` was asked for.
    pub usage: Option<Value>,
}

impl StreamSummary {
    /// The text of choice 0.
    pub fn text(&self) -> &str {
        self.texts.get(&0).map_or("", String::as_str)
    }

    /// The finish reason of choice 0.
    pub fn finish(&self) -> &str {
        self.finishes.get(&0).map_or("", String::as_str)
    }
}

/// Checks the JSON chunks of a stream (everything before `data: [DONE]`) as OpenAI sends them:
/// one `id`, `created` and `model` throughout; chat chunks open each choice with
/// `delta.role = "assistant"`; each choice ends with exactly one chunk carrying its
/// `finish_reason` and nothing after it; with `include_usage` the last chunk has `choices: []`
/// and `usage`, and every other chunk's `usage` is null.
pub fn check_stream(endpoint: Endpoint, chunks: &[Value], model: &str, include_usage: bool) -> StreamSummary {
    assert!(!chunks.is_empty(), "empty stream");
    let first = &chunks[0];
    let mut summary = StreamSummary::default();
    let mut opened: BTreeMap<u64, bool> = BTreeMap::new();
    for (n, chunk) in chunks.iter().enumerate() {
        assert_common(chunk, endpoint.chunk_object(), model);
        assert_eq!(chunk["id"], first["id"], "every chunk of a stream has the same id");
        assert_eq!(chunk["created"], first["created"], "every chunk of a stream has the same created");
        let usage = chunk.get("usage").unwrap_or(&Value::Null);
        let choices = chunk["choices"].as_array().unwrap_or_else(|| panic!("chunk {n} has no choices array: {chunk}"));
        if include_usage && n == chunks.len() - 1 {
            assert!(choices.is_empty(), "the usage chunk must have choices: [] — got {chunk}");
            assert!(usage.is_object(), "the last chunk must carry usage with include_usage: {chunk}");
            summary.usage = Some(usage.clone());
            continue;
        }
        assert!(usage.is_null(), "chunk {n} carries usage ({usage}); only the final chunk may, and only with include_usage");
        assert!(!choices.is_empty(), "chunk {n} has no choice: {chunk}");
        for choice in choices {
            let index = choice["index"].as_u64().unwrap_or_else(|| panic!("choice without index: {chunk}"));
            assert!(!summary.finishes.contains_key(&index), "chunk {n} continues choice {index} after its finish_reason: {chunk}");
            let text = match endpoint {
                Endpoint::Chat => {
                    let delta = choice["delta"].as_object().unwrap_or_else(|| panic!("chat chunk without delta: {chunk}"));
                    if !opened.contains_key(&index) {
                        assert_eq!(
                            delta.get("role").and_then(Value::as_str),
                            Some("assistant"),
                            "the first chunk of choice {index} must have delta.role = assistant: {chunk}"
                        );
                    } else if let Some(role) = delta.get("role") {
                        assert!(role.is_null() || role == "assistant", "delta.role changed: {chunk}");
                    }
                    match delta.get("content") {
                        None | Some(Value::Null) => String::new(),
                        Some(Value::String(text)) => text.clone(),
                        Some(other) => panic!("delta.content must be a string or null, got {other}"),
                    }
                }
                Endpoint::Completions => {
                    choice["text"].as_str().unwrap_or_else(|| panic!("completion chunk without text: {chunk}")).to_string()
                }
            };
            opened.insert(index, true);
            if !text.is_empty() {
                *summary.text_chunks.entry(index).or_default() += 1;
            }
            summary.texts.entry(index).or_default().push_str(&text);
            match &choice["finish_reason"] {
                Value::Null => {}
                Value::String(reason) => {
                    summary.finishes.insert(index, reason.clone());
                }
                other => panic!("finish_reason must be a string or null, got {other}"),
            }
        }
    }
    for index in opened.keys() {
        assert!(summary.finishes.contains_key(index), "choice {index} never got a finish_reason: {chunks:?}");
    }
    if include_usage {
        assert!(summary.usage.is_some(), "include_usage asked, no usage chunk");
    }
    summary
}
