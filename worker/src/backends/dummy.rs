//! `dummy`: answers every chat or completion with the same fixed reply. For testing transport.

use async_trait::async_trait;
use switchyard_schemas::{JobRequest, ModelCard, ModelKind};
use tokio_util::sync::CancellationToken;

use super::{debug_card, debug_tokens, plain_text_only, stream_text};
use crate::{Backend, BackendError, EventSink, Finish, Job};

#[derive(Debug, Clone, clap::Args)]
pub struct DummyArgs {
    /// Model name to serve.
    #[arg(long, default_value = "dummy")]
    pub name: String,
    /// The reply to every request.
    #[arg(long, default_value = "This is a fixed reply from Switchyard's dummy backend.")]
    pub reply: String,
}

pub struct Dummy {
    args: DummyArgs,
}

impl Dummy {
    pub fn new(args: DummyArgs) -> Self {
        Self { args }
    }
}

#[async_trait]
impl Backend for Dummy {
    fn name(&self) -> &'static str {
        "dummy"
    }

    fn models(&self) -> Vec<ModelCard> {
        vec![debug_card(&self.args.name, ModelKind::Chat, "dummy")]
    }

    async fn run(&self, job: Job, sink: &EventSink, cancel: CancellationToken) -> Result<Finish, BackendError> {
        let (params, prompt_tokens) = match &job.envelope.request {
            JobRequest::Chat { messages, params, tools, response_format } => {
                plain_text_only(tools.as_ref(), response_format)?;
                (params, messages.iter().map(|m| debug_tokens(&m.content).len()).sum())
            }
            JobRequest::Completion { prompt, params } => (params, debug_tokens(prompt).len()),
            JobRequest::Embedding { .. } => return Err(BackendError::invalid("the dummy backend serves no embeddings")),
            JobRequest::Tool { .. } => return Err(BackendError::invalid("the dummy backend hosts no functions")),
        };
        Ok(stream_text(&self.args.reply, params, job.resume.as_ref(), prompt_tokens as u32, std::time::Duration::ZERO, sink, &cancel).await)
    }
}
