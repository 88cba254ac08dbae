//! [`TorchBackend`]: the worker runtime's [`Backend`] trait over an [`Engine`].
//!
//! The runtime pulls jobs and publishes events; this adapter turns a job into a
//! [`GenerateRequest`] (or an embedding call), forwards the engine's events to the job's
//! [`EventSink`], and maps the engine's finish reasons, usage and error codes onto the wire
//! types.

use async_trait::async_trait;
use switchyard_schemas as wire;
use switchyard_worker::{Backend, BackendError, EventSink, Finish, Job};
use tokio_util::sync::CancellationToken;

use crate::{
    ChatMessage, Engine, FinishReason, GenerateEvent, GenerateRequest, ModelKind, Prompt, SamplingParams, TokenLogprob,
    TorchError, TorchWorkerArgs,
};

/// One local model served through the worker runtime.
pub struct TorchBackend {
    engine: Engine,
    name: String,
}

impl TorchBackend {
    /// Wraps a loaded engine; `name` defaults to the model folder's name.
    pub fn new(engine: Engine, name: Option<String>) -> TorchBackend {
        let name = name.unwrap_or_else(|| engine.info().name.clone());
        TorchBackend { engine, name }
    }

    /// Loads the model `args` name (blocking: run it in `spawn_blocking` from async code).
    pub fn load(args: &TorchWorkerArgs) -> Result<TorchBackend, TorchError> {
        let engine = Engine::load(args.engine_options())?;
        Ok(TorchBackend::new(engine, args.name.clone()))
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The worker's default slots: as many jobs as the engine batches at once.
    pub fn slots(&self) -> u32 {
        self.engine.concurrency() as u32
    }

    fn card(&self) -> wire::ModelCard {
        let info = self.engine.info();
        wire::ModelCard {
            v: wire::WIRE_VERSION,
            name: self.name.clone(),
            kind: match info.kind {
                ModelKind::Decoder => wire::ModelKind::Chat,
                ModelKind::Encoder => wire::ModelKind::Embedding,
            },
            context_length: Some(info.context_length),
            backend: "torch".into(),
            owned_by: "switchyard".into(),
            // Permissions and limits are the operator's call; the worker runtime sets them.
            permissions: Default::default(),
            limits: Default::default(),
            created: wire::now_ms() / 1000,
            last_seen_ms: 0,
            supports: Default::default(),
            functions: Vec::new(),
        }
    }

    async fn embed(
        &self,
        input: &[String],
        sink: &EventSink,
        cancel: &CancellationToken,
    ) -> Result<Finish, BackendError> {
        if self.engine.info().kind != ModelKind::Encoder {
            return Err(BackendError::invalid(format!(
                "{} is a text generation model, not an embedding model",
                self.name
            )));
        }
        let embeddings = tokio::select! {
            out = self.engine.embed(input.to_vec()) => out.map_err(backend_error)?,
            // The batch in flight finishes on the model thread; nobody waits for it.
            _ = cancel.cancelled() => return Ok(Finish { reason: wire::FinishReason::Cancelled, usage: wire::Usage::default() }),
        };
        sink.embeddings(0, embeddings.vectors);
        Ok(Finish {
            reason: wire::FinishReason::Stop,
            usage: wire::Usage { prompt_tokens: embeddings.prompt_tokens, completion_tokens: 0 },
        })
    }
}

#[async_trait]
impl Backend for TorchBackend {
    fn name(&self) -> &'static str {
        "torch"
    }

    fn models(&self) -> Vec<wire::ModelCard> {
        vec![self.card()]
    }

    async fn run(&self, job: Job, sink: &EventSink, cancel: CancellationToken) -> Result<Finish, BackendError> {
        let (prompt, params) = match &job.envelope.request {
            wire::JobRequest::Chat { messages, params, tools, response_format } => {
                switchyard_worker::backends::plain_text_only(tools.as_ref(), response_format)?;
                (
                    Prompt::Chat(
                        messages
                            .iter()
                            .map(|m| ChatMessage {
                                tool_calls: m
                                    .tool_calls
                                    .iter()
                                    .map(|c| crate::ToolCall::new(c.id.clone(), c.name.clone(), c.arguments.clone()))
                                    .collect(),
                                tool_call_id: m.tool_call_id.clone(),
                                name: m.name.clone(),
                                ..ChatMessage::new(m.role.clone(), m.content.clone())
                            })
                            .collect(),
                    ),
                    params,
                )
            }
            wire::JobRequest::Completion { prompt, params } => (Prompt::Text(prompt.clone()), params),
            wire::JobRequest::Embedding { input } => return self.embed(input, sink, &cancel).await,
            wire::JobRequest::Tool { .. } => {
                return Err(BackendError::invalid(format!("{} is a language model; it hosts no functions", self.name)));
            }
        };
        if self.engine.info().kind != ModelKind::Decoder {
            return Err(BackendError::invalid(format!("{} is an embedding model; it cannot generate text", self.name)));
        }
        let resume = job.resume.as_ref().filter(|r| !r.text.is_empty());
        let request =
            GenerateRequest { prompt, params: sampling_params(params), resume_text: resume.map(|r| r.text.clone()) };
        let want_logprobs = params.logprobs || params.top_logprobs > 0;
        let mut events = self.engine.generate(request, cancel);
        let mut resumed_tokens = 0;
        while let Some(event) = events.recv().await {
            match event {
                GenerateEvent::Started { resumed_tokens: n, .. } => resumed_tokens = n,
                GenerateEvent::Delta { text, tokens, logprobs } => {
                    if want_logprobs {
                        sink.delta_with_logprobs(text, logprobs.into_iter().map(wire_logprob).collect());
                    } else {
                        sink.delta(text, tokens);
                    }
                }
                GenerateEvent::Finished { reason, prompt_tokens, completion_tokens } => {
                    // The earlier worker's own count of what it generated is the real one; our
                    // re-tokenization of its text is the fallback when it is unknown.
                    let earlier = resume.map(|r| r.completion_tokens).filter(|&n| n > 0).unwrap_or(resumed_tokens);
                    let completion_tokens = completion_tokens - resumed_tokens + earlier;
                    return Ok(Finish {
                        reason: match reason {
                            FinishReason::Stop => wire::FinishReason::Stop,
                            FinishReason::Length => wire::FinishReason::Length,
                            FinishReason::Cancelled => wire::FinishReason::Cancelled,
                        },
                        usage: wire::Usage { prompt_tokens, completion_tokens },
                    });
                }
                GenerateEvent::Error(e) => return Err(BackendError::new(error_code(e.code), e.message)),
            }
        }
        Err(BackendError::new(wire::ErrorCode::BackendError, "the model thread stopped mid-generation"))
    }
}

fn sampling_params(p: &wire::SamplingParams) -> SamplingParams {
    SamplingParams {
        max_tokens: p.max_tokens,
        temperature: p.temperature,
        top_p: p.top_p,
        top_k: p.top_k,
        seed: p.seed,
        stop: p.stop.clone(),
        stop_token_ids: p.stop_token_ids.clone(),
        ignore_eos: false,
        presence_penalty: p.presence_penalty,
        frequency_penalty: p.frequency_penalty,
        logprobs: p.logprobs,
        top_logprobs: p.top_logprobs.into(),
    }
}

fn wire_logprob(l: TokenLogprob) -> wire::TokenLogprob {
    wire::TokenLogprob {
        token: l.token,
        logprob: l.logprob,
        bytes: l.bytes,
        top: l
            .top_logprobs
            .into_iter()
            .map(|t| wire::TopLogprob { token: t.token, logprob: t.logprob, bytes: t.bytes })
            .collect(),
    }
}

fn error_code(code: &str) -> wire::ErrorCode {
    match code {
        "context_length_exceeded" => wire::ErrorCode::ContextLengthExceeded,
        "invalid_request" | "unsupported" => wire::ErrorCode::InvalidRequest,
        _ => wire::ErrorCode::BackendError,
    }
}

fn backend_error(e: TorchError) -> BackendError {
    BackendError::new(error_code(e.code()), e.to_string())
}
