//! OpenAI's response bodies, as Switchyard answers them: what the handlers serialize and what
//! the OpenAPI document describes are the same types.
//!
//! Floats reach the wire widened to `f64` (`0.1f32` is written `0.10000000149011612`), as the
//! api has always written them.

use std::borrow::Cow;
use std::collections::BTreeMap;

use base64::Engine;
use serde::{Serialize, Serializer};
use switchyard_schemas::{GenerationDefaults, ModelCard, ModelKind, PromptSettings, TokenLogprob};
use utoipa::ToSchema;

/// `usage` in every response.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, ToSchema)]
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

/// `/v1/models`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelList {
    /// `list`.
    pub object: &'static str,
    pub data: Vec<ModelObject>,
}

impl ModelList {
    pub fn new(data: Vec<ModelObject>) -> Self {
        ModelList { object: "list", data }
    }
}

/// One entry of `/v1/models`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelObject {
    pub id: String,
    /// `model`.
    pub object: &'static str,
    pub created: u64,
    pub owned_by: String,
    /// Switchyard extensions: what the model does and how large its context is.
    pub kind: &'static str,
    pub context_length: Option<u32>,
    pub live_workers: usize,
    /// Switchyard extension: the prompt settings its operator gave a local model
    /// (`switchyard worker torch --system-prompt/--chat-template/--generation-defaults`).
    /// Absent when none are set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_settings: Option<PromptSettingsOut>,
}

/// A local model's prompt settings, as `GET /v1/models/{model}` shows them. A request's own
/// system message and parameters win over them.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct PromptSettingsOut {
    /// The system message of a chat request that has none (`system` or `developer`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system_prompt: Option<String>,
    /// The chat template used in place of the model folder's: its Jinja source.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chat_template: Option<String>,
    /// Decoding defaults for requests that leave a parameter out, over the model folder's
    /// `generation_config.json`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation_defaults: Option<GenerationDefaultsOut>,
}

/// Decoding defaults of a model; each applies to a request that leaves the parameter out (a
/// penalty of 0 counts as left out). Only the ones set are present.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct GenerationDefaultsOut {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_k: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f64>,
}

impl PromptSettingsOut {
    /// `None` when nothing is set.
    pub fn new(settings: PromptSettings) -> Option<Self> {
        if settings.is_empty() {
            return None;
        }
        let d = settings.generation_defaults;
        Some(PromptSettingsOut {
            system_prompt: settings.system_prompt,
            chat_template: settings.chat_template,
            generation_defaults: (!d.is_empty()).then(|| GenerationDefaultsOut::new(d)),
        })
    }
}

impl GenerationDefaultsOut {
    fn new(d: GenerationDefaults) -> Self {
        GenerationDefaultsOut {
            temperature: d.temperature.map(as_written),
            top_p: d.top_p.map(as_written),
            top_k: d.top_k,
            max_tokens: d.max_tokens,
            stop: d.stop,
            presence_penalty: d.presence_penalty.map(as_written),
            frequency_penalty: d.frequency_penalty.map(as_written),
        }
    }
}

/// An operator's `0.7` as `0.7`, not as the f32's widened `0.699999988079071`: the shortest
/// decimal that reads back as the same f32.
fn as_written(x: f32) -> f64 {
    x.to_string().parse().unwrap_or(f64::from(x))
}

impl ModelObject {
    pub fn new(card: ModelCard, live_workers: usize) -> Self {
        ModelObject {
            id: card.name,
            object: "model",
            created: card.created,
            owned_by: card.owned_by,
            kind: match card.kind {
                ModelKind::Chat => "chat",
                ModelKind::Embedding => "embedding",
                ModelKind::Tool => "tool",
            },
            context_length: card.context_length,
            live_workers,
            prompt_settings: PromptSettingsOut::new(card.prompt_settings),
        }
    }
}

/// A non-streamed `/v1/chat/completions` answer (`choices` of [`ChatChoice`]) or
/// `/v1/completions` answer (`choices` of [`TextChoice`]).
#[derive(Debug, Serialize, ToSchema)]
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

#[derive(Debug, Serialize, ToSchema)]
pub struct ChatChoice {
    pub index: usize,
    pub message: AssistantMessage,
    /// Present (not null) when the request set `logprobs: true`.
    pub logprobs: Option<ChatLogprobs>,
    /// `stop`, `length`, `tool_calls`, `cancelled`.
    pub finish_reason: Option<&'static str>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AssistantMessage {
    /// `assistant`.
    pub role: &'static str,
    /// Null when the model only called tools.
    pub content: Option<String>,
    #[schema(value_type = Option<String>)]
    pub refusal: Option<()>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCallOut>,
    /// Switchyard extension: the calls of hosted functions (`tools` of type `hosted`) the api
    /// ran while answering, in the order the model made them. Absent when there were none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hosted_tool_calls: Vec<HostedToolCallOut>,
}

/// Switchyard extension: one call of a hosted function that the api ran for the model, and
/// what the model was told it answered (`result`, or `error` when it failed).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct HostedToolCallOut {
    /// The call's id (`call_…`), as in the `tool` message that gave the model its answer.
    pub id: String,
    /// The tool model hosting the function.
    pub model: String,
    pub function: String,
    /// The arguments the model wrote, as the text of a JSON object.
    pub arguments: String,
    /// The function's result (a streaming function's chunks as one array); absent on error.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub result: Option<serde_json::Value>,
    /// Why the call failed; the model was given `{"error": <this>}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl AssistantMessage {
    pub fn new(content: String, tool_calls: Vec<switchyard_schemas::ToolCall>) -> AssistantMessage {
        AssistantMessage {
            role: "assistant",
            content: (!content.is_empty() || tool_calls.is_empty()).then_some(content),
            refusal: None,
            tool_calls: tool_calls.into_iter().map(ToolCallOut::from).collect(),
            hosted_tool_calls: Vec::new(),
        }
    }
}

/// One of an answer's `tool_calls`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ToolCallOut {
    pub id: String,
    /// `function`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub function: FunctionCallOut,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FunctionCallOut {
    pub name: String,
    /// The arguments, as the text of a JSON object.
    pub arguments: String,
}

impl From<switchyard_schemas::ToolCall> for ToolCallOut {
    fn from(call: switchyard_schemas::ToolCall) -> ToolCallOut {
        ToolCallOut { id: call.id, kind: "function", function: FunctionCallOut { name: call.name, arguments: call.arguments } }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TextChoice {
    pub text: String,
    pub index: usize,
    /// Present (not null) when the request set `logprobs`.
    pub logprobs: Option<CompletionLogprobs>,
    pub finish_reason: Option<&'static str>,
}

/// A chat choice's `logprobs`: one entry per generated token.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChatLogprobs {
    pub content: Vec<ChatTokenLogprob>,
    /// Always null.
    #[schema(value_type = Option<Vec<ChatTokenLogprob>>)]
    pub refusal: Option<()>,
}

impl ChatLogprobs {
    pub fn new(logprobs: &[TokenLogprob]) -> Self {
        let content = logprobs
            .iter()
            .map(|lp| ChatTokenLogprob {
                token: lp.token.clone(),
                logprob: lp.logprob.into(),
                bytes: lp.bytes.clone(),
                top_logprobs: lp
                    .top
                    .iter()
                    .map(|t| TopLogprobOut { token: t.token.clone(), logprob: t.logprob.into(), bytes: t.bytes.clone() })
                    .collect(),
            })
            .collect();
        ChatLogprobs { content, refusal: None }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ChatTokenLogprob {
    pub token: String,
    pub logprob: f64,
    /// The token's UTF-8 bytes.
    pub bytes: Vec<u8>,
    /// The most likely tokens at this position, as many as `top_logprobs` asked for.
    pub top_logprobs: Vec<TopLogprobOut>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TopLogprobOut {
    pub token: String,
    pub logprob: f64,
    pub bytes: Vec<u8>,
}

/// A legacy completion choice's `logprobs`: parallel lists, one entry per token.
#[derive(Debug, Serialize, ToSchema)]
pub struct CompletionLogprobs {
    pub tokens: Vec<String>,
    pub token_logprobs: Vec<f64>,
    /// The most likely alternatives at each position, token to logprob.
    pub top_logprobs: Vec<BTreeMap<String, f64>>,
    /// Where each token starts in the choice's `text`.
    pub text_offset: Vec<usize>,
}

impl CompletionLogprobs {
    /// `first_offset`: where the first token starts in `text` (after an echoed prompt).
    pub fn new(logprobs: &[TokenLogprob], first_offset: usize) -> Self {
        let text_offset = logprobs
            .iter()
            .scan(first_offset, |offset, lp| {
                let start = *offset;
                *offset += lp.token.len();
                Some(start)
            })
            .collect();
        CompletionLogprobs {
            tokens: logprobs.iter().map(|lp| lp.token.clone()).collect(),
            token_logprobs: logprobs.iter().map(|lp| lp.logprob.into()).collect(),
            top_logprobs: logprobs.iter().map(|lp| lp.top.iter().map(|t| (t.token.clone(), t.logprob.into())).collect()).collect(),
            text_offset,
        }
    }
}

/// One server-sent event of a streamed response: `data` is a JSON [`Chunk`]
/// (`chat.completion.chunk` / `text_completion`), an [`ErrorResponse`], or `[DONE]`.
#[derive(Debug, Serialize, ToSchema)]
pub struct StreamEvent {
    pub data: String,
    #[serde(default)]
    pub event: Option<String>,
}

/// A streamed `chat.completion.chunk` (`choices` of [`ChatChunkChoice`]) or `text_completion`
/// chunk (`choices` of [`TextChunkChoice`]).
#[derive(Debug, Serialize)]
pub struct Chunk<'a, C> {
    pub id: &'a str,
    pub object: &'static str,
    pub created: u64,
    pub model: &'a str,
    pub system_fingerprint: Option<()>,
    pub choices: &'a [C],
    /// Present only with `stream_options.include_usage`: null, then the totals in the last chunk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Option<UsageOut>>,
}

#[derive(Debug, Serialize)]
pub struct ChatChunkChoice<'a> {
    pub index: usize,
    pub delta: ChatDelta<'a>,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: Option<&'static str>,
}

/// What a chat chunk adds: the role (first chunk), text, a piece of a tool call, or nothing
/// (the finishing chunk).
#[derive(Debug, Default, Serialize)]
pub struct ChatDelta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refusal: Option<Option<()>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<[ToolCallDelta<'a>; 1]>,
    /// Switchyard extension: a hosted function's call, once it has answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hosted_tool_call: Option<&'a HostedToolCallOut>,
}

/// A piece of one tool call: its first carries the id, type and name (and empty arguments),
/// the next ones more of the arguments.
#[derive(Debug, Serialize)]
pub struct ToolCallDelta<'a> {
    pub index: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<&'a str>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    pub function: FunctionDelta<'a>,
}

#[derive(Debug, Serialize)]
pub struct FunctionDelta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<&'a str>,
    pub arguments: &'a str,
}

#[derive(Debug, Serialize)]
pub struct TextChunkChoice<'a> {
    pub text: &'a str,
    pub index: usize,
    pub logprobs: Option<CompletionLogprobs>,
    pub finish_reason: Option<&'static str>,
}

/// `/v1/embeddings`.
#[derive(Debug, Serialize, ToSchema)]
pub struct EmbeddingList {
    /// `list`.
    pub object: &'static str,
    pub data: Vec<EmbeddingObject>,
    pub model: String,
    pub usage: EmbeddingUsage,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EmbeddingObject {
    /// `embedding`.
    pub object: &'static str,
    pub index: usize,
    /// A list of floats, or base64 of little-endian f32 with `encoding_format: base64`.
    pub embedding: EmbeddingVector,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum EmbeddingVector {
    Float(#[serde(serialize_with = "widened")] Vec<f32>),
    Base64(String),
}

impl EmbeddingVector {
    /// Base64 of the vector's little-endian f32s, what the OpenAI SDKs ask for by default.
    pub fn base64(vector: &[f32]) -> Self {
        let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
        EmbeddingVector::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
    }
}

fn widened<S: Serializer>(vector: &[f32], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(vector.iter().map(|&x| f64::from(x)))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EmbeddingUsage {
    pub prompt_tokens: u32,
    pub total_tokens: u32,
}

/// Every error, whatever the status.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorResponse {
    pub error: ErrorObject,
}

impl ErrorResponse {
    /// `kind` and `code` are fixed words of ours, or an upstream server's own (owned).
    pub fn new(
        message: String,
        kind: impl Into<Cow<'static, str>>,
        param: Option<String>,
        code: Option<impl Into<Cow<'static, str>>>,
    ) -> Self {
        ErrorResponse { error: ErrorObject { message, kind: kind.into(), param, code: code.map(Into::into) } }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorObject {
    pub message: String,
    /// `invalid_request_error`, `server_error`, or the rate limit's kind.
    #[serde(rename = "type")]
    #[schema(value_type = String)]
    pub kind: Cow<'static, str>,
    pub param: Option<String>,
    #[schema(value_type = Option<String>)]
    pub code: Option<Cow<'static, str>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_are_written_as_a_json_value_of_them_writes_them() {
        let vector = vec![0.1f32, -1.5, 3.3e-7, f32::NAN];
        let typed = serde_json::to_string(&EmbeddingVector::Float(vector.clone())).unwrap();
        assert_eq!(typed, serde_json::json!(vector).to_string());
        let logprob = TokenLogprob { token: "a".into(), logprob: -0.1, bytes: vec![97], top: vec![] };
        let typed = serde_json::to_value(ChatLogprobs::new(std::slice::from_ref(&logprob))).unwrap();
        assert_eq!(typed["content"][0]["logprob"], serde_json::json!(logprob.logprob));
    }

    fn card(prompt_settings: PromptSettings) -> ModelCard {
        ModelCard {
            v: switchyard_schemas::WIRE_VERSION,
            name: "m".into(),
            kind: ModelKind::Chat,
            context_length: Some(256),
            backend: "torch".into(),
            owned_by: "switchyard".into(),
            permissions: Default::default(),
            limits: Default::default(),
            created: 1,
            last_seen_ms: 0,
            supports: Default::default(),
            functions: Vec::new(),
            prompt_settings,
        }
    }

    #[test]
    fn a_model_shows_its_prompt_settings_only_when_it_has_some() {
        let plain = serde_json::to_value(ModelObject::new(card(PromptSettings::default()), 1)).unwrap();
        assert!(plain.get("prompt_settings").is_none(), "{plain}");

        let settings = PromptSettings {
            system_prompt: Some("Be brief.".into()),
            chat_template: None,
            generation_defaults: GenerationDefaults {
                temperature: Some(0.7),
                max_tokens: Some(3),
                stop: Some(vec!["\n".into()]),
                presence_penalty: Some(-0.1),
                ..Default::default()
            },
        };
        let shown = serde_json::to_value(ModelObject::new(card(settings), 1)).unwrap();
        assert_eq!(
            shown["prompt_settings"],
            serde_json::json!({
                "system_prompt": "Be brief.",
                "generation_defaults": {"temperature": 0.7, "max_tokens": 3, "stop": ["\n"], "presence_penalty": -0.1},
            }),
            "{shown}"
        );

        // A system prompt alone: no empty generation_defaults object.
        let settings = PromptSettings { chat_template: Some("{{ x }}".into()), ..Default::default() };
        let shown = serde_json::to_value(ModelObject::new(card(settings), 1)).unwrap();
        assert_eq!(shown["prompt_settings"], serde_json::json!({"chat_template": "{{ x }}"}), "{shown}");
    }

    #[test]
    fn the_openapi_schema_of_a_model_names_its_prompt_settings() {
        use utoipa::PartialSchema;
        let schema = serde_json::to_value(ModelObject::schema()).unwrap();
        assert!(schema["properties"].get("prompt_settings").is_some(), "{schema}");
        let required = schema["required"].as_array().cloned().unwrap_or_default();
        assert!(!required.contains(&"prompt_settings".into()), "prompt_settings is optional: {schema}");
        let mut nested = Vec::new();
        <ModelObject as ToSchema>::schemas(&mut nested);
        let names: Vec<String> = nested.iter().map(|(name, _)| name.clone()).collect();
        assert!(names.contains(&"PromptSettingsOut".to_string()), "{names:?}");
        assert!(names.contains(&"GenerationDefaultsOut".to_string()), "{names:?}");
    }
}
