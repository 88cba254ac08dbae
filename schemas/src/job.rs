//! The job envelope: one request for one model, as the api publishes it on
//! [`crate::subject::job`] and a worker pulls it.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::codec::Versioned;

/// Which family of consumer a job goes to. Chat and legacy completions share `Chat`: both are
/// served by the same text-generation workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    Chat,
    Embedding,
    Tool,
}

impl JobKind {
    pub const ALL: [JobKind; 3] = [JobKind::Chat, JobKind::Embedding, JobKind::Tool];

    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Chat => "chat",
            JobKind::Embedding => "embedding",
            JobKind::Tool => "tool",
        }
    }
}

/// Which queue of its model a job waits in. Each lane has its own subject and durable consumer
/// ([`crate::subject::job`], [`crate::subject::job_consumer`]); a worker fills its slots from
/// `Interactive` first and gives `Batch` jobs only the slots it can spare, so queued batch work
/// never delays a request someone is waiting for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Lane {
    /// A client is waiting on the answer (the synchronous HTTP routes, direct publishers).
    #[default]
    Interactive,
    /// Nobody is waiting right now: batch lines and `/v1/jobs`.
    Batch,
}

impl Lane {
    pub const ALL: [Lane; 2] = [Lane::Interactive, Lane::Batch];

    pub fn as_str(self) -> &'static str {
        match self {
            Lane::Interactive => "interactive",
            Lane::Batch => "batch",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct JobEnvelope {
    /// Wire version ([`crate::WIRE_VERSION`]).
    pub v: u16,
    /// Unique job id (a ULID); also the JetStream de-duplication id.
    pub id: String,
    pub kind: JobKind,
    /// The model name as the client spelled it (not the subject token).
    pub model: String,
    pub request: JobRequest,
    /// The lane it was published on; the subject says the same.
    #[serde(default)]
    pub lane: Lane,
    /// Unix ms after which nobody waits for the answer: a worker skips the job.
    #[serde(default)]
    pub deadline_ms: Option<u64>,
    /// Subject the worker publishes [`crate::StreamEvent`]s on.
    pub reply_to: String,
    /// Subject a worker that picks up a redelivered job asks for [`ResumeState`] on.
    pub resume_to: String,
    /// W3C trace context of the request, for spans that cross the queue.
    #[serde(default)]
    pub traceparent: Option<String>,
    /// Unix ms when the api accepted the request.
    pub created_ms: u64,
}

impl Versioned for JobEnvelope {
    fn version(&self) -> u16 {
        self.v
    }
}

/// What to run. One job is always one sequence: the api fans `n > 1` out into `n` jobs.
/// Adjacently tagged like [`crate::EventBody`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
pub enum JobRequest {
    /// `/v1/chat/completions`: the worker renders the model's chat template (with `tools`, if
    /// any) and, when `tools` lets the model call them, reads its calls out of the text into
    /// [`crate::EventBody::ToolCallStart`] / [`crate::EventBody::ToolCallArguments`] events.
    Chat {
        messages: Vec<ChatMessage>,
        params: SamplingParams,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tools: Option<ToolUse>,
        #[serde(default, skip_serializing_if = "ResponseFormat::is_text")]
        response_format: ResponseFormat,
    },
    /// `/v1/completions`: the prompt is used as is.
    Completion { prompt: String, params: SamplingParams },
    /// `/v1/embeddings`: one vector per input, in order.
    Embedding { input: Vec<String> },
    /// A call of a hosted function (`POST /v1/tools/{model}/{function}`, MCP `tools/call`):
    /// the worker validates `arguments` against the function's parameter schema, runs it, and
    /// answers with one [`crate::EventBody::ToolResult`] — or, for a function that streams,
    /// [`crate::EventBody::ToolChunk`]s — then `Done`.
    Tool {
        function: String,
        /// A JSON object: the function's arguments by name.
        arguments: serde_json::Value,
    },
}

impl JobRequest {
    pub fn kind(&self) -> JobKind {
        match self {
            JobRequest::Chat { .. } | JobRequest::Completion { .. } => JobKind::Chat,
            JobRequest::Embedding { .. } => JobKind::Embedding,
            JobRequest::Tool { .. } => JobKind::Tool,
        }
    }

    pub fn params(&self) -> Option<&SamplingParams> {
        match self {
            JobRequest::Chat { params, .. } | JobRequest::Completion { params, .. } => Some(params),
            JobRequest::Embedding { .. } | JobRequest::Tool { .. } => None,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant`, `developer` or `tool`.
    pub role: String,
    /// Text content; the api flattens OpenAI's content parts into it. Empty for an assistant
    /// message that only calls tools.
    pub content: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The calls an assistant message made.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// A `tool` message: the call it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> ChatMessage {
        ChatMessage { role: role.into(), content: content.into(), ..Default::default() }
    }
}

/// One function call a model made, as OpenAI's `tool_calls[]` holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ToolCall {
    /// `call_…`, unique within the conversation; a `tool` message answers it by this id.
    pub id: String,
    pub name: String,
    /// The arguments as the model wrote them: the text of a JSON object.
    pub arguments: String,
}

/// The functions a chat request offers its model, and whether it must call one (OpenAI's
/// `tools`, `tool_choice`, `parallel_tool_calls`). Validated by the api: names are unique and
/// valid, a named choice names one of `tools`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ToolUse {
    pub tools: Vec<ToolDefinition>,
    pub choice: ToolChoice,
    /// May the model make more than one call in its answer.
    pub parallel: bool,
}

/// One of a request's `tools` (`{"type": "function", "function": {…}}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ToolDefinition {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// JSON Schema of the arguments object, as the client sent it (key order kept: the chat
    /// template renders it into the prompt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
}

impl ToolDefinition {
    /// The OpenAI tool object, the shape chat templates are written for.
    pub fn to_openai(&self) -> serde_json::Value {
        let mut function = serde_json::Map::new();
        function.insert("name".into(), self.name.clone().into());
        if let Some(description) = &self.description {
            function.insert("description".into(), description.clone().into());
        }
        if let Some(parameters) = &self.parameters {
            function.insert("parameters".into(), parameters.clone());
        }
        if let Some(strict) = self.strict {
            function.insert("strict".into(), strict.into());
        }
        serde_json::json!({"type": "function", "function": function})
    }
}

/// Whether and how the model calls tools (OpenAI's `tool_choice`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", content = "name", rename_all = "snake_case")]
pub enum ToolChoice {
    /// The model sees the tools but answers in text.
    None,
    /// The model decides.
    Auto,
    /// The model must call at least one tool.
    Required,
    /// The model must call this function.
    Function(String),
}

/// The shape of the answer's text (OpenAI's `response_format`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ResponseFormat {
    #[default]
    Text,
    /// Any JSON object.
    JsonObject,
    /// JSON matching `schema`.
    JsonSchema {
        name: String,
        schema: serde_json::Value,
        #[serde(default)]
        strict: bool,
    },
}

impl ResponseFormat {
    pub fn is_text(&self) -> bool {
        matches!(self, ResponseFormat::Text)
    }
}

/// Decoding parameters, already validated by the api. `None` means "the model's default"
/// (its `generation_config.json`, else greedy-free sampling at temperature 1).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SamplingParams {
    #[serde(default)]
    pub max_tokens: Option<u32>,
    #[serde(default)]
    pub temperature: Option<f32>,
    #[serde(default)]
    pub top_p: Option<f32>,
    #[serde(default)]
    pub top_k: Option<u32>,
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default)]
    pub stop: Vec<String>,
    #[serde(default)]
    pub stop_token_ids: Vec<u32>,
    #[serde(default)]
    pub presence_penalty: f32,
    #[serde(default)]
    pub frequency_penalty: f32,
    /// Return the log-probability of each sampled token.
    #[serde(default)]
    pub logprobs: bool,
    /// How many alternatives to return per position (0 = none).
    #[serde(default)]
    pub top_logprobs: u8,
}

/// What the api's receiver had already streamed when a job's first worker died; the api
/// answers a resume request with it so the next worker continues instead of repeating.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ResumeState {
    pub v: u16,
    /// False when the api no longer waits for this job (client gone): skip it.
    pub wanted: bool,
    /// Text already delivered to the client.
    pub text: String,
    /// Tool calls already delivered (the last one possibly with part of its arguments).
    #[serde(default)]
    pub tool_calls: Vec<ToolCall>,
    /// A streaming tool call: chunks already delivered, for the next worker to skip.
    #[serde(default)]
    pub chunks: u32,
    /// Completion tokens the earlier worker reported producing (0 if unknown).
    pub completion_tokens: u32,
    /// Sequence number the next event must carry.
    pub next_seq: u64,
}

impl ResumeState {
    /// Where a job stands before any of its events: wanted, nothing delivered.
    pub fn start() -> ResumeState {
        ResumeState { v: crate::WIRE_VERSION, wanted: true, ..Default::default() }
    }

    /// Counts one delivered event of the job (sequence numbers are the caller's: they belong
    /// to messages, not events). A terminal event means nobody wants the job run again.
    pub fn record(&mut self, event: &crate::EventBody) {
        use crate::EventBody;
        match event {
            EventBody::Delta { text, tokens, .. } => {
                self.text.push_str(text);
                self.completion_tokens += tokens;
            }
            EventBody::ToolCallStart { id, name, .. } => {
                self.tool_calls.push(ToolCall { id: id.clone(), name: name.clone(), arguments: String::new() })
            }
            EventBody::ToolCallArguments { index, delta, tokens } => {
                if let Some(call) = self.tool_calls.get_mut(*index as usize) {
                    call.arguments.push_str(delta);
                }
                self.completion_tokens += tokens;
            }
            EventBody::ToolChunk { .. } => self.chunks += 1,
            EventBody::Done { .. } | EventBody::Error { .. } => self.wanted = false,
            EventBody::Started { .. } | EventBody::Embeddings { .. } | EventBody::ToolResult { .. } => {}
        }
    }
}

impl Versioned for ResumeState {
    fn version(&self) -> u16 {
        self.v
    }
}
