//! OpenAI's API as Switchyard serves it, with no HTTP server attached: the OpenAI request and
//! response shapes, the validation that turns a request into Switchyard job requests, and the
//! assembly of a job's events into the exact non-streamed response body. The api serves these
//! over HTTP; the scheduler runs batch lines through the same functions, so a batch line's
//! body is byte for byte what the endpoint answers.
//!
//! * [`request`]: request bodies, and [`parse`], which names the offending field.
//! * [`validate`]: the checks of every parameter, against operator [`Limits`] and the model card.
//! * [`plan`]: a request as jobs ([`plan_chat`], [`plan_completion`], [`plan_embeddings`]) and
//!   their outputs as the response ([`Reply::assemble`]).
//! * [`response`]: response bodies, streamed chunks, and OpenAI's error body.
//! * [`endpoint`]: the endpoints a request can be queued for (batch lines, `/v1/jobs`).
//! * [`error`]: [`Invalid`] (a refused request) and [`JobFailure`] (a job's `error` event),
//!   each with its HTTP status and error body.

pub mod endpoint;
pub mod error;
pub mod plan;
pub mod request;
pub mod response;
pub mod validate;

pub use error::{Invalid, JobFailure};
pub use plan::{
    Answer, DEFAULT_COMPLETION_ESTIMATE, Embeddings, Flavor, Generation, JobOutput, MissingVector, Plan, Reply, estimate_tokens, plan_chat,
    plan_completion, plan_embeddings,
};
pub use request::parse;
pub use validate::Limits;
