//! Stream events: what a worker publishes on a job's reply subject, in order.
//!
//! A job's events are `Started`, any number of `Delta`s (or `Embeddings`, or a tool call's
//! `ToolResult` or `ToolChunk`s), then exactly one `Done` or `Error`. They travel in [`StreamEvent`] messages of one or more events each: a
//! worker sends whatever it has when NATS is ready for more, so a short job is one message
//! and a fast stream is not one message per token. Core NATS has no flow control, so every
//! message carries a sequence number (0, 1, 2, …): the receiver drops duplicates and turns a
//! gap into an error, never into silently wrong text.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::codec::Versioned;

/// Sequence number of an event sent by someone other than the job's worker (the scheduler's
/// dead-letter error): receivers accept it whatever sequence they expect next.
pub const OUT_OF_BAND_SEQ: u64 = u64::MAX;

/// One message on a job's reply subject: one or more of its events, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StreamEvent {
    pub v: u16,
    pub job_id: String,
    /// Number of this message among the job's messages (not of its events).
    pub seq: u64,
    pub events: Vec<EventBody>,
}

impl StreamEvent {
    /// Message `seq` of a job, holding `events` in order.
    pub fn new(job_id: impl Into<String>, seq: u64, events: Vec<EventBody>) -> Self {
        Self { v: crate::WIRE_VERSION, job_id: job_id.into(), seq, events }
    }

    /// A message of a single event.
    pub fn single(job_id: impl Into<String>, seq: u64, body: EventBody) -> Self {
        Self::new(job_id, seq, vec![body])
    }
}

impl Versioned for StreamEvent {
    fn version(&self) -> u16 {
        self.v
    }
}

/// Adjacently tagged (`{"type": "delta", "data": {…}}`): a reader learns the variant before its
/// fields, so decoding never buffers the event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
pub enum EventBody {
    /// A worker took the job. `attempt` is 1 on first delivery.
    Started { worker_id: String, attempt: u32, prompt_tokens: Option<u32> },
    /// Generated text, possibly several tokens coalesced.
    Delta {
        text: String,
        /// How many tokens `text` holds (so a receiver knows how far a stream got).
        tokens: u32,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        logprobs: Vec<TokenLogprob>,
    },
    /// The model began a call of one of the request's tools: OpenAI's first `tool_calls` delta
    /// of call `index` (0, 1, … in the order the model wrote them).
    ToolCallStart { index: u32, id: String, name: String },
    /// More of call `index`'s `arguments`: the pieces, in order, are the arguments' exact text.
    ToolCallArguments {
        index: u32,
        delta: String,
        /// Tokens the piece took (as [`EventBody::Delta`]'s `tokens`).
        tokens: u32,
    },
    /// Embedding vectors for inputs `first_index..first_index + vectors.len()`.
    Embeddings { first_index: u32, vectors: Vec<Vec<f32>> },
    /// What a hosted function returned (any JSON value). At most one per job, never beside
    /// chunks.
    ToolResult { value: serde_json::Value },
    /// One item a streaming hosted function produced, in order.
    ToolChunk { value: serde_json::Value },
    /// The job ended normally.
    Done { finish_reason: FinishReason, usage: Usage },
    /// The job ended with an error.
    Error {
        code: ErrorCode,
        message: String,
        /// With [`ErrorCode::Upstream`]: what the upstream server answered.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        upstream: Option<UpstreamError>,
    },
}

impl EventBody {
    /// An `Error` event of a job that failed here, not upstream.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        EventBody::Error { code, message: message.into(), upstream: None }
    }

    pub fn is_terminal(&self) -> bool {
        matches!(self, EventBody::Done { .. } | EventBody::Error { .. })
    }
}

/// An upstream OpenAI-compatible server's error answer: its HTTP status and the fields of its
/// OpenAI error body, passed on to the client as they came.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct UpstreamError {
    /// 400, 401, 404, 413, 429, 5xx…
    pub status: u16,
    /// The error body's `type` (`invalid_request_error`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub param: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    Stop,
    Length,
    ToolCalls,
    Cancelled,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::ToolCalls => "tool_calls",
            FinishReason::Cancelled => "cancelled",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TokenLogprob {
    pub token: String,
    pub logprob: f32,
    #[serde(default)]
    pub bytes: Vec<u8>,
    #[serde(default)]
    pub top: Vec<TopLogprob>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TopLogprob {
    pub token: String,
    pub logprob: f32,
    #[serde(default)]
    pub bytes: Vec<u8>,
}

/// Why a job failed. The api maps each code to one HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request cannot be served as sent (bad parameter for this model).
    InvalidRequest,
    /// Prompt tokens + max_tokens exceed the model's context length.
    ContextLengthExceeded,
    /// The job was cancelled before it finished.
    Cancelled,
    /// Every delivery attempt failed (worker crashes); the job went to the dead letters.
    MaxDeliveriesExceeded,
    /// The job's deadline passed before a worker could run it.
    DeadlineExceeded,
    /// Events were lost between worker and api.
    StreamGap,
    /// The backend failed.
    BackendError,
    /// A tool call named a function its model does not host.
    UnknownFunction,
    /// A tool call's arguments do not match the function's parameter schema.
    InvalidArguments,
    /// The hosted function raised an error (its worker goes on serving).
    FunctionFailed,
    /// The model wrote a tool call that is not one: broken JSON, an unknown function, arguments
    /// that do not match the function's schema, or no call where one was required.
    MalformedToolCall,
    /// The upstream server behind an `openai` worker refused the job or failed; the event's
    /// `upstream` says how, and the client is answered with the upstream's status.
    Upstream,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::ContextLengthExceeded => "context_length_exceeded",
            ErrorCode::Cancelled => "cancelled",
            ErrorCode::MaxDeliveriesExceeded => "max_deliveries_exceeded",
            ErrorCode::DeadlineExceeded => "deadline_exceeded",
            ErrorCode::StreamGap => "stream_gap",
            ErrorCode::BackendError => "backend_error",
            ErrorCode::UnknownFunction => "unknown_function",
            ErrorCode::InvalidArguments => "invalid_arguments",
            ErrorCode::FunctionFailed => "function_failed",
            ErrorCode::MalformedToolCall => "malformed_tool_call",
            ErrorCode::Upstream => "upstream_error",
        }
    }
}
