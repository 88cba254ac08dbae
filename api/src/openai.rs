//! OpenAI's request and response bodies, as far as Switchyard serves them. Unknown request
//! fields are accepted and ignored, as OpenAI's own server does with fields it does not use.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

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
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct ChatMessageIn {
    pub role: String,
    #[serde(default)]
    pub content: Option<MessageContent>,
    #[serde(default)]
    pub name: Option<String>,
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
    /// OpenAI's legacy default is 16.
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

/// `usage` in every response.
#[derive(Debug, Clone, Copy, Default, Serialize, ToSchema)]
pub struct UsageOut {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub total_tokens: u32,
}

impl UsageOut {
    pub fn new(prompt_tokens: u32, completion_tokens: u32) -> Self {
        Self { prompt_tokens, completion_tokens, total_tokens: prompt_tokens + completion_tokens }
    }
}

/// One entry of `/v1/models`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelObject {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub owned_by: String,
    /// Switchyard extensions: what the model does and how large its context is.
    pub kind: &'static str,
    pub context_length: Option<u32>,
    pub live_workers: usize,
}

// Response shapes, for the OpenAPI document. The handlers build the same JSON; the
// integration tests check the bodies against these fields.

/// `/v1/models`.
#[derive(Serialize, ToSchema)]
pub struct ModelList {
    pub object: String,
    pub data: Vec<ModelObject>,
}

/// A non-streamed `/v1/chat/completions` answer (`choices` of [`ChatChoice`]) or
/// `/v1/completions` answer (`choices` of [`TextChoice`]).
#[derive(Serialize, ToSchema)]
pub struct Completion<C> {
    pub id: String,
    /// `chat.completion` (streamed chunks: `chat.completion.chunk`) or `text_completion`.
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    /// Always null; present because OpenAI's clients expect the field.
    #[schema(value_type = Option<String>)]
    pub system_fingerprint: Option<()>,
    pub choices: Vec<C>,
    pub usage: UsageOut,
}

#[derive(Serialize, ToSchema)]
pub struct ChatChoice {
    pub index: usize,
    pub message: AssistantMessage,
    #[schema(value_type = Option<Object>)]
    pub logprobs: Option<Value>,
    /// `stop`, `length`, `cancelled`.
    pub finish_reason: Option<&'static str>,
}

#[derive(Serialize, ToSchema)]
pub struct AssistantMessage {
    pub role: &'static str,
    pub content: String,
    #[schema(value_type = Option<String>)]
    pub refusal: Option<()>,
}

#[derive(Serialize, ToSchema)]
pub struct TextChoice {
    pub text: String,
    pub index: usize,
    #[schema(value_type = Option<Object>)]
    pub logprobs: Option<Value>,
    pub finish_reason: Option<&'static str>,
}

/// One server-sent event of a streamed response: `data` is a JSON chunk
/// (`chat.completion.chunk` / `text_completion`), an `{"error": …}` object, or `[DONE]`.
#[derive(Serialize, ToSchema)]
pub struct StreamEvent {
    pub data: String,
    #[serde(default)]
    pub event: Option<String>,
}

/// `/v1/embeddings`.
#[derive(Serialize, ToSchema)]
pub struct EmbeddingList {
    pub object: String,
    pub data: Vec<EmbeddingObject>,
    pub model: String,
    pub usage: EmbeddingUsage,
}

#[derive(Serialize, ToSchema)]
pub struct EmbeddingObject {
    pub object: String,
    pub index: u32,
    /// A list of floats, or base64 of little-endian f32 with `encoding_format: base64`.
    pub embedding: EmbeddingVector,
}

#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum EmbeddingVector {
    Float(Vec<f32>),
    Base64(String),
}

#[derive(Serialize, ToSchema)]
pub struct EmbeddingUsage {
    pub prompt_tokens: u32,
    pub total_tokens: u32,
}

/// Every error, whatever the status.
#[derive(Serialize, ToSchema)]
pub struct ErrorResponse {
    pub error: ErrorObject,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorObject {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub param: Option<String>,
    pub code: Option<String>,
}
