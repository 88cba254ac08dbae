//! Checks every request before anything is queued, and turns OpenAI parameters into the
//! job's [`SamplingParams`]. Each error names the offending `param`.

use std::collections::HashSet;

use serde_json::Value;
use switchyard_schemas::{
    ChatMessage, FunctionSpec, ModelCard, ModelKind, ResponseFormat, SamplingParams, ToolCall, ToolChoice, ToolDefinition, ToolUse,
};

use crate::error::Invalid;
use crate::request::{
    ChatCompletionRequest, ChatMessageIn, CompletionRequest, EmbeddingInput, MessageContent, Prompt, ResponseFormatIn, ToolChoiceIn,
    ToolChoiceMode, ToolIn, ToolType,
};

/// Limits an operator can set. Serializable: a batch keeps the limits of the api that
/// accepted it, so its lines are held to what its interactive requests would be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Limits {
    /// Largest `n` (choices per request).
    pub max_n: u32,
    /// Largest number of embedding inputs per request.
    pub max_embedding_inputs: usize,
}

/// Refuses a model (named `name` in the request) that does not serve `kind`, the kind of the
/// endpoint asked.
pub fn serves(name: &str, card: &ModelCard, kind: ModelKind) -> Result<(), Invalid> {
    if card.kind == kind {
        return Ok(());
    }
    let served = match card.kind {
        ModelKind::Chat => "text generation (/v1/chat/completions, /v1/completions)",
        ModelKind::Embedding => "embeddings (/v1/embeddings)",
        ModelKind::Tool => "tool calls",
    };
    Err(Invalid::new("model", format!("The model `{name}` serves {served}, not this endpoint.")))
}

const ROLES: [&str; 5] = ["system", "developer", "user", "assistant", "tool"];

/// Parameters shared by chat and completions, checked once.
struct Common {
    max_tokens: Option<u32>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<u32>,
    n: Option<u32>,
    stop: Vec<String>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    seed: Option<u64>,
    max_tokens_param: &'static str,
}

fn check_common(common: Common, limits: &Limits, card: &ModelCard) -> Result<(SamplingParams, u32), Invalid> {
    if let Some(max_tokens) = common.max_tokens {
        if max_tokens < 1 {
            return Err(Invalid::new(
                common.max_tokens_param,
                format!("Invalid '{}': {max_tokens} is less than the minimum of 1.", common.max_tokens_param),
            ));
        }
        if let Some(context) = card.context_length
            && max_tokens > context
        {
            return Err(Invalid {
                message: format!(
                    "This model's maximum context length is {context} tokens. However, you requested {max_tokens} tokens for the completion alone. Please reduce the length of the messages or completion."
                ),
                param: Some(common.max_tokens_param.into()),
                code: Some("context_length_exceeded"),
            });
        }
    }
    in_range("temperature", common.temperature, 0.0, 2.0)?;
    if let Some(top_p) = common.top_p
        && !(top_p > 0.0 && top_p <= 1.0)
    {
        return Err(Invalid::new("top_p", format!("Invalid 'top_p': {top_p} is not in (0, 1].")));
    }
    if common.top_k == Some(0) {
        return Err(Invalid::new("top_k", "Invalid 'top_k': must be at least 1."));
    }
    in_range("presence_penalty", common.presence_penalty, -2.0, 2.0)?;
    in_range("frequency_penalty", common.frequency_penalty, -2.0, 2.0)?;
    let n = common.n.unwrap_or(1);
    if n < 1 || n > limits.max_n {
        return Err(Invalid::new("n", format!("Invalid 'n': {n} is not between 1 and {}.", limits.max_n)));
    }
    if common.stop.len() > 4 {
        return Err(Invalid::new("stop", format!("Invalid 'stop': at most 4 sequences are allowed, got {}.", common.stop.len())));
    }
    if common.stop.iter().any(String::is_empty) {
        return Err(Invalid::new("stop", "Invalid 'stop': stop sequences must not be empty."));
    }
    let params = SamplingParams {
        max_tokens: common.max_tokens,
        temperature: common.temperature,
        top_p: common.top_p,
        top_k: common.top_k,
        seed: common.seed,
        stop: common.stop,
        stop_token_ids: Vec::new(),
        presence_penalty: common.presence_penalty.unwrap_or(0.0),
        frequency_penalty: common.frequency_penalty.unwrap_or(0.0),
        logprobs: false,
        top_logprobs: 0,
    };
    Ok((params, n))
}

fn in_range(param: &'static str, value: Option<f32>, min: f32, max: f32) -> Result<(), Invalid> {
    match value {
        Some(v) if !(min..=max).contains(&v) => Err(Invalid::new(param, format!("Invalid '{param}': {v} is not between {min} and {max}."))),
        _ => Ok(()),
    }
}

/// A chat request, checked: what its jobs carry.
#[derive(Debug)]
pub struct Chat {
    pub messages: Vec<ChatMessage>,
    pub params: SamplingParams,
    pub n: u32,
    /// `None` when the request has no tools, or only tools its model is told not to call and
    /// cannot read.
    pub tools: Option<ToolUse>,
    pub response_format: ResponseFormat,
}

/// A chat request's messages, sampling parameters, `n`, tools and response format, checked
/// against `card`.
pub fn chat(request: ChatCompletionRequest, limits: &Limits, card: &ModelCard) -> Result<Chat, Invalid> {
    if request.max_tokens.is_some() && request.max_completion_tokens.is_some() {
        return Err(Invalid::new("max_tokens", "Set either 'max_tokens' or 'max_completion_tokens', not both."));
    }
    for (param, value) in [("functions", &request.functions), ("function_call", &request.function_call)] {
        if value.is_some() {
            return Err(Invalid::new(param, format!("'{param}' is deprecated and not supported; use 'tools' and 'tool_choice'.")));
        }
    }
    let messages = messages(request.messages)?;
    let tools = tool_use(request.tools, request.tool_choice, request.parallel_tool_calls, &request.model, card)?;
    let response_format = response_format(request.response_format, &request.model, card)?;
    let (mut params, n) = check_common(
        Common {
            max_tokens_param: if request.max_completion_tokens.is_some() { "max_completion_tokens" } else { "max_tokens" },
            max_tokens: request.max_completion_tokens.or(request.max_tokens),
            temperature: request.temperature,
            top_p: request.top_p,
            top_k: request.top_k,
            n: request.n,
            stop: request.stop.map(|s| s.into_vec()).unwrap_or_default(),
            presence_penalty: request.presence_penalty,
            frequency_penalty: request.frequency_penalty,
            seed: request.seed,
        },
        limits,
        card,
    )?;
    params.logprobs = request.logprobs.unwrap_or(false);
    if let Some(top) = request.top_logprobs {
        if top > 20 {
            return Err(Invalid::new("top_logprobs", format!("Invalid 'top_logprobs': {top} is greater than the maximum of 20.")));
        }
        if !params.logprobs {
            return Err(Invalid::new("top_logprobs", "'top_logprobs' requires 'logprobs' to be true."));
        }
        params.top_logprobs = top;
    }
    Ok(Chat { messages, params, n, tools, response_format })
}

/// `tools`, `tool_choice` and `parallel_tool_calls`, checked as OpenAI checks them, and
/// refused when the model cannot call tools but would be asked to.
fn tool_use(
    tools: Option<Vec<ToolIn>>,
    choice: Option<ToolChoiceIn>,
    parallel: Option<bool>,
    model: &str,
    card: &ModelCard,
) -> Result<Option<ToolUse>, Invalid> {
    let tools = tools.unwrap_or_default();
    if tools.is_empty() {
        if matches!(choice, Some(ToolChoiceIn::Named(_)) | Some(ToolChoiceIn::Mode(ToolChoiceMode::Auto | ToolChoiceMode::Required))) {
            return Err(Invalid::new(
                "tool_choice",
                "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are specified.",
            ));
        }
        // `parallel_tool_calls` without tools changes nothing: accepted, as clients that
        // always send it expect.
        return Ok(None);
    }
    if tools.len() > 128 {
        return Err(Invalid::new("tools", format!("Invalid 'tools': array too long. Expected at most 128 tools, got {}.", tools.len())));
    }
    let mut names = HashSet::new();
    let mut definitions = Vec::with_capacity(tools.len());
    for (i, tool) in tools.into_iter().enumerate() {
        // The api resolves hosted tools into function tools before planning; anywhere else
        // (batch lines, `/v1/jobs`) nothing would run their calls.
        if tool.kind == ToolType::Hosted {
            return Err(Invalid::new(
                format!("tools[{i}]"),
                format!("Invalid 'tools[{i}]': 'hosted' tools are served by /v1/chat/completions only."),
            ));
        }
        let Some(function) = tool.function else {
            return Err(Invalid::new(format!("tools[{i}].function"), format!("Missing required parameter: 'tools[{i}].function'.")));
        };
        if !FunctionSpec::valid_name(&function.name) {
            return Err(Invalid::new(
                format!("tools[{i}].function.name"),
                format!("Invalid 'tools[{i}].function.name': '{}' does not match '^[a-zA-Z0-9_-]{{1,64}}$'.", function.name),
            ));
        }
        if !names.insert(function.name.clone()) {
            return Err(Invalid::new(
                format!("tools[{i}].function.name"),
                format!("Duplicate function name '{}' in 'tools'.", function.name),
            ));
        }
        if let Some(parameters) = &function.parameters {
            check_schema(&format!("tools[{i}].function.parameters"), parameters, true)?;
        }
        definitions.push(ToolDefinition {
            name: function.name,
            description: function.description,
            parameters: function.parameters,
            strict: function.strict,
        });
    }
    let choice = match choice {
        None | Some(ToolChoiceIn::Mode(ToolChoiceMode::Auto)) => ToolChoice::Auto,
        Some(ToolChoiceIn::Mode(ToolChoiceMode::None)) => ToolChoice::None,
        Some(ToolChoiceIn::Mode(ToolChoiceMode::Required)) => ToolChoice::Required,
        Some(ToolChoiceIn::Named(named)) => {
            if !names.contains(&named.function.name) {
                return Err(Invalid::new(
                    "tool_choice",
                    format!("Invalid value for 'tool_choice': no function named '{}' was specified in 'tools'.", named.function.name),
                ));
            }
            ToolChoice::Function(named.function.name)
        }
    };
    if !card.supports.tools {
        // A model told not to call tools it cannot read loses nothing by not seeing them.
        if choice == ToolChoice::None {
            return Ok(None);
        }
        return Err(Invalid::new("tools", format!("The model `{model}` does not support tools (function calling).")));
    }
    Ok(Some(ToolUse { tools: definitions, choice, parallel: parallel.unwrap_or(true) }))
}

fn response_format(format: Option<ResponseFormatIn>, model: &str, card: &ModelCard) -> Result<ResponseFormat, Invalid> {
    let format = match format {
        None | Some(ResponseFormatIn::Text) => return Ok(ResponseFormat::Text),
        Some(ResponseFormatIn::JsonObject) => ResponseFormat::JsonObject,
        Some(ResponseFormatIn::JsonSchema { json_schema }) => {
            if !FunctionSpec::valid_name(&json_schema.name) {
                return Err(Invalid::new(
                    "response_format.json_schema.name",
                    format!("Invalid 'response_format.json_schema.name': '{}' does not match '^[a-zA-Z0-9_-]{{1,64}}$'.", json_schema.name),
                ));
            }
            let schema = json_schema.schema.unwrap_or_else(|| Value::Object(Default::default()));
            check_schema("response_format.json_schema.schema", &schema, false)?;
            ResponseFormat::JsonSchema { name: json_schema.name, schema, strict: json_schema.strict.unwrap_or(false) }
        }
    };
    if !card.supports.json_output {
        return Err(Invalid::new("response_format", format!("The model `{model}` supports only the 'text' response format.")));
    }
    Ok(format)
}

/// A JSON Schema a client sent: it must compile, and a function's parameters must describe an
/// object.
fn check_schema(param: &str, schema: &Value, object: bool) -> Result<(), Invalid> {
    if !schema.is_object() {
        return Err(Invalid::new(param, format!("Invalid '{param}': a JSON Schema object is expected.")));
    }
    if object && schema.get("type").is_some_and(|t| t != "object") {
        return Err(Invalid::new(param, format!("Invalid '{param}': the schema must be of type 'object'.")));
    }
    jsonschema::validator_for(schema).map(drop).map_err(|e| Invalid::new(param, format!("Invalid '{param}': {e}")))
}
fn messages(messages: Vec<ChatMessageIn>) -> Result<Vec<ChatMessage>, Invalid> {
    if messages.is_empty() {
        return Err(Invalid::new("messages", "'messages' must contain at least one message."));
    }
    let messages = messages
        .into_iter()
        .enumerate()
        .map(|(i, message)| {
            if !ROLES.contains(&message.role.as_str()) {
                return Err(Invalid::new(
                    format!("messages[{i}].role"),
                    format!("Invalid 'messages[{i}].role': '{}' is not one of {}.", message.role, ROLES.join(", ")),
                ));
            }
            let content = match message.content {
                Some(MessageContent::Text(text)) => text,
                Some(MessageContent::Parts(parts)) => {
                    let mut text = String::new();
                    for (j, part) in parts.into_iter().enumerate() {
                        match (part.kind.as_str(), part.text) {
                            ("text", Some(part)) => text.push_str(&part),
                            (kind, _) => {
                                return Err(Invalid::new(
                                    format!("messages[{i}].content[{j}]"),
                                    format!("Content part type '{kind}' is not supported here; only 'text' parts with a 'text' field are."),
                                ));
                            }
                        }
                    }
                    text
                }
                None if message.role == "assistant" => String::new(),
                None => {
                    return Err(Invalid::new(
                        format!("messages[{i}].content"),
                        format!("Missing required parameter: 'messages[{i}].content'."),
                    ));
                }
            };
            let tool_calls = message.tool_calls.unwrap_or_default();
            if !tool_calls.is_empty() && message.role != "assistant" {
                return Err(Invalid::new(
                    format!("messages[{i}].tool_calls"),
                    format!("Invalid parameter: only 'assistant' messages may have 'tool_calls', not '{}'.", message.role),
                ));
            }
            let tool_calls = tool_calls
                .into_iter()
                .enumerate()
                .map(|(j, call)| {
                    let param = format!("messages[{i}].tool_calls[{j}].function.arguments");
                    if !serde_json::from_str::<Value>(&call.function.arguments).is_ok_and(|v| v.is_object()) {
                        return Err(Invalid::new(param.clone(), format!("Invalid '{param}': not the text of a JSON object.")));
                    }
                    Ok(ToolCall { id: call.id, name: call.function.name, arguments: call.function.arguments })
                })
                .collect::<Result<Vec<_>, _>>()?;
            if message.role == "tool" && message.tool_call_id.is_none() {
                return Err(Invalid::new(
                    format!("messages[{i}].tool_call_id"),
                    format!("Missing required parameter: 'messages[{i}].tool_call_id'."),
                ));
            }
            let tool_call_id = if message.role == "tool" { message.tool_call_id } else { None };
            Ok(ChatMessage { role: message.role, content, name: message.name, tool_calls, tool_call_id })
        })
        .collect::<Result<Vec<_>, _>>()?;
    check_tool_turns(&messages)?;
    Ok(messages)
}

/// OpenAI's rules for a conversation with tool calls: a `tool` message answers a call of the
/// assistant message before it, and every such call is answered before the next other message.
fn check_tool_turns(messages: &[ChatMessage]) -> Result<(), Invalid> {
    let mut open: Vec<&str> = Vec::new();
    for (i, message) in messages.iter().enumerate() {
        if message.role == "tool" {
            let id = message.tool_call_id.as_deref().unwrap_or_default();
            let Some(at) = open.iter().position(|call| *call == id) else {
                return Err(Invalid::new(
                    format!("messages[{i}].role"),
                    "Invalid parameter: messages with role 'tool' must be a response to a preceding message with 'tool_calls'.",
                ));
            };
            open.remove(at);
            continue;
        }
        unanswered(&open)?;
        open = message.tool_calls.iter().map(|call| call.id.as_str()).collect();
    }
    unanswered(&open)
}

fn unanswered(calls: &[&str]) -> Result<(), Invalid> {
    if calls.is_empty() {
        return Ok(());
    }
    Err(Invalid::new(
        "messages",
        format!(
            "An assistant message with 'tool_calls' must be followed by tool messages responding to each 'tool_call_id'. The following tool_call_ids did not have response messages: {}",
            calls.join(", ")
        ),
    ))
}

/// A completion request's prompts, sampling parameters and `n`, checked against `card`.
pub fn completion(request: CompletionRequest, limits: &Limits, card: &ModelCard) -> Result<(Vec<String>, SamplingParams, u32), Invalid> {
    let prompts = match request.prompt {
        Prompt::One(prompt) => vec![prompt],
        Prompt::Many(prompts) if prompts.is_empty() => return Err(Invalid::new("prompt", "'prompt' must not be an empty list.")),
        Prompt::Many(prompts) => prompts,
    };
    let (mut params, n) = check_common(
        Common {
            max_tokens_param: "max_tokens",
            // OpenAI's legacy completions default to 16 tokens, unless the model's operator set
            // a default of its own: the worker applies that one (capped at the prompt's room).
            max_tokens: match request.max_tokens {
                None if card.prompt_settings.generation_defaults.max_tokens.is_some() => None,
                asked => Some(asked.unwrap_or(16)),
            },
            temperature: request.temperature,
            top_p: request.top_p,
            top_k: request.top_k,
            n: request.n,
            stop: request.stop.map(|s| s.into_vec()).unwrap_or_default(),
            presence_penalty: request.presence_penalty,
            frequency_penalty: request.frequency_penalty,
            seed: request.seed,
        },
        limits,
        card,
    )?;
    if prompts.len() as u32 * n > limits.max_n * 16 {
        return Err(Invalid::new("prompt", "Too many prompts × n in one request."));
    }
    if let Some(top) = request.logprobs {
        if top > 5 {
            return Err(Invalid::new("logprobs", format!("Invalid 'logprobs': {top} is greater than the maximum of 5.")));
        }
        params.logprobs = true;
        params.top_logprobs = top;
    }
    Ok((prompts, params, n))
}

/// An embeddings request's inputs, checked.
pub fn embedding(input: EmbeddingInput, dimensions: Option<u32>, limits: &Limits) -> Result<Vec<String>, Invalid> {
    let input = match input {
        EmbeddingInput::One(text) => vec![text],
        EmbeddingInput::Many(texts) => texts,
        EmbeddingInput::Tokens(_) => {
            return Err(Invalid::new("input", "'input' must be a string or a list of strings; token arrays are not supported."));
        }
    };
    if input.is_empty() {
        return Err(Invalid::new("input", "'input' must not be empty."));
    }
    if input.len() > limits.max_embedding_inputs {
        return Err(Invalid::new("input", format!("'input' holds {} items; the maximum is {}.", input.len(), limits.max_embedding_inputs)));
    }
    if let Some(i) = input.iter().position(String::is_empty) {
        return Err(Invalid::new("input", format!("'input[{i}]' is an empty string.")));
    }
    if dimensions.is_some() {
        return Err(Invalid::new("dimensions", "This model does not support specifying dimensions."));
    }
    Ok(input)
}
