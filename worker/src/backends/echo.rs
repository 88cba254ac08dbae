//! `echo`: reflects the last user message (or the completion prompt) token by token, and
//! answers embedding requests with a deterministic debug vector. For testing transport.

use std::time::Duration;

use async_trait::async_trait;
use switchyard_schemas::{JobRequest, ModelCard, ModelKind};
use tokio_util::sync::CancellationToken;

use super::{debug_card, debug_tokens, stream_text};
use crate::runtime::parse_duration;
use crate::{Backend, BackendError, EventSink, Finish, Job};

#[derive(Debug, Clone, clap::Args)]
pub struct EchoArgs {
    /// Chat/completions model name to serve.
    #[arg(long, default_value = "echo")]
    pub name: String,
    /// Embedding model name to serve.
    #[arg(long, default_value = "echo-embedding")]
    pub embedding_name: String,
    /// Pause between tokens (e.g. 20ms), to watch streaming and test cancellation.
    #[arg(long, default_value = "0ms", value_parser = parse_duration)]
    pub delay: Duration,
    /// Dimensions of the debug embedding vectors.
    #[arg(long, default_value_t = 16)]
    pub dimensions: usize,
}

pub struct Echo {
    args: EchoArgs,
}

impl Echo {
    pub fn new(args: EchoArgs) -> Self {
        Self { args }
    }
}

#[async_trait]
impl Backend for Echo {
    fn name(&self) -> &'static str {
        "echo"
    }

    fn models(&self) -> Vec<ModelCard> {
        vec![
            debug_card(&self.args.name, ModelKind::Chat, "echo"),
            debug_card(&self.args.embedding_name, ModelKind::Embedding, "echo"),
        ]
    }

    async fn run(&self, job: Job, sink: &EventSink, cancel: CancellationToken) -> Result<Finish, BackendError> {
        let (text, params, prompt_tokens) = match &job.envelope.request {
            JobRequest::Chat { messages, params } => {
                let last_user = messages.iter().rev().find(|m| m.role == "user").map_or("", |m| m.content.as_str());
                let prompt_tokens = messages.iter().map(|m| debug_tokens(&m.content).len()).sum::<usize>();
                (last_user, params, prompt_tokens)
            }
            JobRequest::Completion { prompt, params } => (prompt.as_str(), params, debug_tokens(prompt).len()),
            JobRequest::Embedding { input } => {
                let vectors: Vec<Vec<f32>> = input.iter().map(|text| debug_vector(text, self.args.dimensions)).collect();
                let prompt_tokens = input.iter().map(|text| debug_tokens(text).len()).sum::<usize>() as u32;
                sink.embeddings(0, vectors);
                return Ok(Finish {
                    reason: switchyard_schemas::FinishReason::Stop,
                    usage: switchyard_schemas::Usage { prompt_tokens, completion_tokens: 0 },
                });
            }
            JobRequest::Tool { .. } => return Err(BackendError::invalid("the echo backend hosts no functions")),
        };
        Ok(stream_text(text, params, job.resume.as_ref(), prompt_tokens as u32, self.args.delay, sink, &cancel).await)
    }
}

/// A unit vector that depends only on the text (FNV-1a seeded xorshift), so tests can
/// recompute it. It carries no meaning.
pub fn debug_vector(text: &str, dimensions: usize) -> Vec<f32> {
    let mut state = text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3)) | 1;
    let mut vector: Vec<f32> = (0..dimensions)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect();
    let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt().max(f32::EPSILON);
    vector.iter_mut().for_each(|x| *x /= norm);
    vector
}
