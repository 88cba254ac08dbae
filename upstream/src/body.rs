//! A job as the upstream's request: which endpoint, and the JSON body OpenAI's API takes.
//!
//! Every field the job carries goes upstream; fields left at their "model default" stay out,
//! so the upstream applies its own. Chat and completions are always streamed from the
//! upstream, with `stream_options.include_usage`, whether or not the client streams: the
//! events go out as the tokens come, and the usage is the upstream's own count.

use serde_json::{Map, Value, json};
use switchyard_schemas::{ChatMessage, JobRequest, ResponseFormat, SamplingParams, ToolChoice, ToolUse};

/// The endpoint of a request, under the upstream's base URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completions,
    Embeddings,
}

impl Endpoint {
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Chat => "/chat/completions",
            Endpoint::Completions => "/completions",
            Endpoint::Embeddings => "/embeddings",
        }
    }
}

/// The upstream request for `request`, asking for the upstream's model `model`. `None` for a
/// tool call, which no OpenAI-compatible server runs.
pub fn build(request: &JobRequest, model: &str) -> Option<(Endpoint, Value)> {
    let mut body = Map::new();
    body.insert("model".into(), model.into());
    let endpoint = match request {
        JobRequest::Chat { messages, params, tools, response_format } => {
            body.insert("messages".into(), messages.iter().map(message).collect());
            sampling(&mut body, params, Endpoint::Chat);
            if let Some(tools) = tools {
                tool_use(&mut body, tools);
            }
            match response_format {
                ResponseFormat::Text => {}
                ResponseFormat::JsonObject => {
                    body.insert("response_format".into(), json!({"type": "json_object"}));
                }
                ResponseFormat::JsonSchema { name, schema, strict } => {
                    body.insert(
                        "response_format".into(),
                        json!({"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": strict}}),
                    );
                }
            }
            Endpoint::Chat
        }
        JobRequest::Completion { prompt, params } => {
            body.insert("prompt".into(), prompt.clone().into());
            sampling(&mut body, params, Endpoint::Completions);
            Endpoint::Completions
        }
        JobRequest::Embedding { input } => {
            body.insert("input".into(), input.clone().into());
            body.insert("encoding_format".into(), "float".into());
            Endpoint::Embeddings
        }
        JobRequest::Tool { .. } => return None,
    };
    if endpoint != Endpoint::Embeddings {
        body.insert("stream".into(), true.into());
        body.insert("stream_options".into(), json!({"include_usage": true}));
    }
    Some((endpoint, Value::Object(body)))
}

fn message(message: &ChatMessage) -> Value {
    let mut out = Map::new();
    out.insert("role".into(), message.role.clone().into());
    // An assistant turn that only calls tools has no content, as OpenAI writes it.
    let content = if message.content.is_empty() && !message.tool_calls.is_empty() { Value::Null } else { message.content.clone().into() };
    out.insert("content".into(), content);
    if let Some(name) = &message.name {
        out.insert("name".into(), name.clone().into());
    }
    if !message.tool_calls.is_empty() {
        let calls = message
            .tool_calls
            .iter()
            .map(|call| json!({"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}))
            .collect();
        out.insert("tool_calls".into(), Value::Array(calls));
    }
    if let Some(id) = &message.tool_call_id {
        out.insert("tool_call_id".into(), id.clone().into());
    }
    Value::Object(out)
}

fn sampling(body: &mut Map<String, Value>, params: &SamplingParams, endpoint: Endpoint) {
    let mut set = |key: &str, value: Value| {
        body.insert(key.into(), value);
    };
    if let Some(max_tokens) = params.max_tokens {
        set("max_tokens", max_tokens.into());
    }
    if let Some(temperature) = params.temperature {
        set("temperature", float(temperature));
    }
    if let Some(top_p) = params.top_p {
        set("top_p", float(top_p));
    }
    // Not OpenAI's, but vLLM's, SGLang's and Switchyard's; sent only when asked for.
    if let Some(top_k) = params.top_k {
        set("top_k", top_k.into());
    }
    if let Some(seed) = params.seed {
        set("seed", seed.into());
    }
    if !params.stop.is_empty() {
        set("stop", params.stop.clone().into());
    }
    if !params.stop_token_ids.is_empty() {
        set("stop_token_ids", params.stop_token_ids.clone().into());
    }
    if params.presence_penalty != 0.0 {
        set("presence_penalty", float(params.presence_penalty));
    }
    if params.frequency_penalty != 0.0 {
        set("frequency_penalty", float(params.frequency_penalty));
    }
    if params.logprobs || params.top_logprobs > 0 {
        match endpoint {
            Endpoint::Chat => {
                set("logprobs", true.into());
                if params.top_logprobs > 0 {
                    set("top_logprobs", params.top_logprobs.into());
                }
            }
            // The legacy endpoint's `logprobs` is the number of alternatives.
            _ => set("logprobs", params.top_logprobs.into()),
        }
    }
}

/// An `f32` as the JSON number it was written as (`0.7`, not `0.699999988079071`).
fn float(value: f32) -> Value {
    value.to_string().parse::<f64>().map_or(Value::Null, Value::from)
}

fn tool_use(body: &mut Map<String, Value>, tools: &ToolUse) {
    body.insert("tools".into(), tools.tools.iter().map(|tool| tool.to_openai()).collect());
    let choice = match &tools.choice {
        ToolChoice::None => json!("none"),
        ToolChoice::Auto => json!("auto"),
        ToolChoice::Required => json!("required"),
        ToolChoice::Function(name) => json!({"type": "function", "function": {"name": name}}),
    };
    body.insert("tool_choice".into(), choice);
    body.insert("parallel_tool_calls".into(), tools.parallel.into());
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_schemas::{ToolCall, ToolDefinition};

    #[test]
    fn a_chat_job_becomes_openais_request_with_only_the_fields_it_sets() {
        let mut assistant = ChatMessage::new("assistant", "");
        assistant.tool_calls = vec![ToolCall { id: "call_1".into(), name: "add".into(), arguments: "{\"a\":1}".into() }];
        let mut tool = ChatMessage::new("tool", "2");
        tool.tool_call_id = Some("call_1".into());
        let request = JobRequest::Chat {
            messages: vec![ChatMessage::new("user", "hi"), assistant, tool],
            params: SamplingParams { max_tokens: Some(5), temperature: Some(0.7), stop: vec!["\n".into()], ..Default::default() },
            tools: Some(ToolUse {
                tools: vec![ToolDefinition {
                    name: "add".into(),
                    description: None,
                    parameters: Some(json!({"type": "object"})),
                    strict: None,
                }],
                choice: ToolChoice::Function("add".into()),
                parallel: false,
            }),
            response_format: ResponseFormat::Text,
        };
        let (endpoint, body) = build(&request, "up").unwrap();
        assert_eq!(endpoint, Endpoint::Chat);
        assert_eq!(
            body,
            json!({
                "model": "up",
                "messages": [
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "add", "arguments": "{\"a\":1}"}}]},
                    {"role": "tool", "content": "2", "tool_call_id": "call_1"},
                ],
                "max_tokens": 5,
                "temperature": 0.7,
                "stop": ["\n"],
                "tools": [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}],
                "tool_choice": {"type": "function", "function": {"name": "add"}},
                "parallel_tool_calls": false,
                "stream": true,
                "stream_options": {"include_usage": true},
            })
        );
    }

    #[test]
    fn embeddings_are_not_streamed_and_completions_ask_for_alternatives_by_count() {
        let (endpoint, body) = build(&JobRequest::Embedding { input: vec!["a".into()] }, "e").unwrap();
        assert_eq!(endpoint, Endpoint::Embeddings);
        assert_eq!(body, json!({"model": "e", "input": ["a"], "encoding_format": "float"}));
        let params = SamplingParams { logprobs: true, top_logprobs: 2, ..Default::default() };
        let (_, body) = build(&JobRequest::Completion { prompt: "p".into(), params }, "c").unwrap();
        assert_eq!(body["logprobs"], 2);
    }
}
