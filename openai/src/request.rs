//! OpenAI's request bodies, as far as Switchyard serves them, and [`parse`], which reads one
//! and names the offending field when it cannot. Unknown fields are accepted and ignored, as
//! OpenAI's own server does with fields it does not use.

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use utoipa::ToSchema;

use crate::error::Invalid;

#[derive(Debug, Deserialize, ToSchema)]
pub struct ChatCompletionRequest {
    pub model: String,
    pub messages: Vec<ChatMessageIn>,
    #[schema(minimum = 1)]
    #[serde(default)]
    pub max_tokens: Option<u32>,
    #[schema(minimum = 1)]
    #[serde(default)]
    pub max_completion_tokens: Option<u32>,
    #[schema(minimum = 0, maximum = 2)]
    #[serde(default)]
    pub temperature: Option<f32>,
    #[schema(exclusive_minimum = 0, maximum = 1)]
    #[serde(default)]
    pub top_p: Option<f32>,
    /// Not in OpenAI's API; vLLM and others accept it.
    #[schema(minimum = 1)]
    #[serde(default)]
    pub top_k: Option<u32>,
    #[schema(minimum = 1)]
    #[serde(default)]
    pub n: Option<u32>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub stop: Option<StopSequences>,
    #[schema(minimum = -2, maximum = 2)]
    #[serde(default)]
    pub presence_penalty: Option<f32>,
    #[schema(minimum = -2, maximum = 2)]
    #[serde(default)]
    pub frequency_penalty: Option<f32>,
    #[serde(default)]
    pub logprobs: Option<bool>,
    #[schema(maximum = 20)]
    #[serde(default)]
    pub top_logprobs: Option<u8>,
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default)]
    pub user: Option<String>,
    /// Functions the model may call.
    #[serde(default)]
    pub tools: Option<Vec<ToolIn>>,
    /// `none`, `auto`, `required`, or `{"type": "function", "function": {"name": …}}`.
    /// OpenAI's default: `none` without tools, `auto` with them.
    #[serde(default)]
    pub tool_choice: Option<ToolChoiceIn>,
    /// Whether the model may make several calls in one answer (default true).
    #[serde(default)]
    pub parallel_tool_calls: Option<bool>,
    #[serde(default)]
    pub response_format: Option<ResponseFormatIn>,
    /// The deprecated predecessors of `tools` and `tool_choice`: refused by name, never
    /// ignored.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub functions: Option<Value>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub function_call: Option<Value>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct ChatMessageIn {
    pub role: String,
    #[serde(default)]
    pub content: Option<MessageContent>,
    #[serde(default)]
    pub name: Option<String>,
    /// An assistant message's calls.
    #[serde(default)]
    pub tool_calls: Option<Vec<ToolCallIn>>,
    /// A `tool` message: the id of the call it answers.
    #[serde(default)]
    pub tool_call_id: Option<String>,
}

/// One of an assistant message's `tool_calls`, as OpenAI returned it.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ToolCallIn {
    pub id: String,
    /// `function`.
    #[serde(rename = "type")]
    pub kind: FunctionType,
    pub function: FunctionCallIn,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct FunctionCallIn {
    pub name: String,
    /// The arguments as a JSON object's text.
    pub arguments: String,
}

/// The only tool type OpenAI's chat completions have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FunctionType {
    Function,
}

/// One of a request's `tools`: `{"type": "function", "function": {…}}` (OpenAI's), or, a
/// Switchyard extension, `{"type": "hosted", "model": …, "functions": […]}`: functions of a
/// tool model that the api runs itself while the model answers (`/v1/chat/completions` only).
#[derive(Debug, Deserialize, ToSchema)]
pub struct ToolIn {
    /// `function` or `hosted`.
    #[serde(rename = "type")]
    pub kind: ToolType,
    /// A `function` tool's definition (required for `function`).
    #[serde(default)]
    pub function: Option<FunctionDefinition>,
    /// A `hosted` tool's tool model (required for `hosted`).
    #[serde(default)]
    pub model: Option<String>,
    /// A `hosted` tool's functions, by name; all of the model's when absent.
    #[serde(default)]
    pub functions: Option<Vec<String>>,
}

/// The kinds of `tools`: OpenAI's `function`, and Switchyard's `hosted`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ToolType {
    Function,
    Hosted,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct FunctionDefinition {
    /// `^[a-zA-Z0-9_-]{1,64}$`.
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    /// JSON Schema of the arguments object.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<Value>,
    #[serde(default)]
    pub strict: Option<bool>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum ToolChoiceIn {
    /// `none`, `auto` or `required`.
    Mode(ToolChoiceMode),
    Named(NamedToolChoice),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ToolChoiceMode {
    None,
    Auto,
    Required,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct NamedToolChoice {
    #[serde(rename = "type")]
    pub kind: FunctionType,
    pub function: NamedFunction,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct NamedFunction {
    pub name: String,
}

/// The answer's shape: `{"type": "text"}`, `{"type": "json_object"}`, or
/// `{"type": "json_schema", "json_schema": {"name", "schema", "strict"}}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ResponseFormatIn {
    Text,
    JsonObject,
    JsonSchema { json_schema: JsonSchemaFormat },
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct JsonSchemaFormat {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub schema: Option<Value>,
    #[serde(default)]
    pub strict: Option<bool>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum StopSequences {
    One(String),
    Many(Vec<String>),
}

impl StopSequences {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            StopSequences::One(stop) => vec![stop],
            StopSequences::Many(stops) => stops,
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct CompletionRequest {
    pub model: String,
    pub prompt: Prompt,
    /// OpenAI's legacy default is 16; a local model's `generation_defaults.max_tokens` (see
    /// `prompt_settings` in `GET /v1/models/{model}`) replaces it.
    #[schema(minimum = 1)]
    #[serde(default)]
    pub max_tokens: Option<u32>,
    #[schema(minimum = 0, maximum = 2)]
    #[serde(default)]
    pub temperature: Option<f32>,
    #[schema(exclusive_minimum = 0, maximum = 1)]
    #[serde(default)]
    pub top_p: Option<f32>,
    #[schema(minimum = 1)]
    #[serde(default)]
    pub top_k: Option<u32>,
    #[schema(minimum = 1)]
    #[serde(default)]
    pub n: Option<u32>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub stop: Option<StopSequences>,
    #[schema(minimum = -2, maximum = 2)]
    #[serde(default)]
    pub presence_penalty: Option<f32>,
    #[schema(minimum = -2, maximum = 2)]
    #[serde(default)]
    pub frequency_penalty: Option<f32>,
    /// Legacy completions: how many top alternatives per token (0–5).
    #[schema(maximum = 5)]
    #[serde(default)]
    pub logprobs: Option<u8>,
    #[serde(default)]
    pub echo: Option<bool>,
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default)]
    pub user: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Prompt {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct EmbeddingRequest {
    pub model: String,
    pub input: EmbeddingInput,
    #[serde(default)]
    pub encoding_format: Option<EncodingFormat>,
    #[serde(default)]
    pub dimensions: Option<u32>,
    #[serde(default)]
    pub user: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum EmbeddingInput {
    One(String),
    Many(Vec<String>),
    /// Token ids: accepted by OpenAI, not served here (the api has no tokenizer).
    #[schema(value_type = Vec<Vec<u32>>)]
    Tokens(Value),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EncodingFormat {
    Float,
    Base64,
}

/// Reads a JSON request body as OpenAI answers a bad one: missing fields and values of the
/// wrong type name their path in `param` (`messages[0].content`); broken JSON names none.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Invalid> {
    let deserializer = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        let reason = inner.to_string();
        if let Some(field) = reason.strip_prefix("missing field `").and_then(|rest| rest.split('`').next()) {
            let field = if path == "." { field.to_string() } else { format!("{path}.{field}") };
            return Invalid::new(field.clone(), format!("Missing required parameter: '{field}'."));
        }
        // A value of the wrong kind for an enum field is reported as a syntax error at that
        // field's path; only errors without a path, or at the end of input, are broken JSON.
        if inner.is_eof() || path == "." {
            let detail = if path == "." { inner.to_string() } else { format!("{inner} (at {path})") };
            Invalid::unnamed(format!("We could not parse the JSON body of your request: {detail}"))
        } else {
            // serde's messages carry a line/column suffix that means nothing to a client.
            let reason = reason.split(" at line ").next().unwrap_or(&reason).to_string();
            Invalid::new(path.clone(), format!("Invalid value for '{path}': {reason}"))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Body {
        model: String,
        messages: Vec<Message>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Message {
        content: String,
    }

    fn param_of(json: &str) -> Option<String> {
        parse::<Body>(json.as_bytes()).unwrap_err().param
    }

    #[test]
    fn wrong_types_name_the_field() {
        assert_eq!(param_of(r#"{"model": 5, "messages": []}"#).as_deref(), Some("model"));
        assert_eq!(param_of(r#"{"model": "m", "messages": [{"content": 1}]}"#).as_deref(), Some("messages[0].content"));
    }

    #[test]
    fn missing_fields_and_syntax_errors_are_400s() {
        assert_eq!(param_of(r#"{"model": "m"}"#).as_deref(), Some("messages"));
        assert_eq!(param_of(r#"{"model": "#), None);
    }
}
