//! The wire contract between Switchyard's parts, and nothing else: no I/O lives here.
//!
//! * [`job`]: what the api publishes for a worker to run ([`JobEnvelope`]).
//! * [`event`]: what a worker streams back on the job's reply subject ([`StreamEvent`]).
//! * [`model`]: the model cards and worker records kept in the registry.
//! * [`subject`]: every NATS subject, stream and consumer name, and the one encoding that
//!   turns model names into subject tokens.
//! * [`keys`]: every Redis key.
//! * [`codec`]: MessagePack with named fields, and the version check.
//!
//! Every top-level message carries [`WIRE_VERSION`] in its `v` field so that old and new parts
//! can tell each other apart; a receiver rejects messages from a newer major version.

pub mod codec;
pub mod event;
pub mod job;
pub mod keys;
pub mod model;
pub mod subject;

pub use codec::{CodecError, decode, encode};
pub use event::{ErrorCode, EventBody, FinishReason, OUT_OF_BAND_SEQ, StreamEvent, TokenLogprob, TopLogprob, UpstreamError, Usage};
pub use job::{
    ChatMessage, JobEnvelope, JobKind, JobRequest, Lane, ResponseFormat, ResumeState, SamplingParams, ToolCall, ToolChoice, ToolDefinition,
    ToolUse,
};
pub use model::{
    ApiKeyRecord, FunctionSpec, GenerationDefaults, ModelCard, ModelKind, Permissions, PromptSettings, RateLimits, Supports, WorkerRecord,
};

/// Version of the wire format. Bump on any change a previous reader would misread.
pub const WIRE_VERSION: u16 = 6;

/// Milliseconds since the Unix epoch: the one clock format on the wire.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
