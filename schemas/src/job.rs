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
    /// `/v1/chat/completions`: the worker renders the model's chat template.
    Chat { messages: Vec<ChatMessage>, params: SamplingParams },
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant`, `developer` or `tool`.
    pub role: String,
    /// Text content; the api flattens OpenAI's content parts into it.
    pub content: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
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
    /// Completion tokens the earlier worker reported producing (0 if unknown).
    pub completion_tokens: u32,
    /// Sequence number the next event must carry.
    pub next_seq: u64,
}

impl Versioned for ResumeState {
    fn version(&self) -> u16 {
        self.v
    }
}
