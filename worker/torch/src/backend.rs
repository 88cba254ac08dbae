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

use switchyard_worker::tool_calls::{ToolCallStream, ToolFormat};

use crate::{
    ChatMessage, Engine, FinishReason, GenerateEvent, GenerateRequest, Matcher, ModelKind, Prompt, SamplingParams,
    TokenLogprob, TorchError, TorchWorkerArgs,
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
        let engine = Engine::load(args.engine_options()?)?;
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
            supports: wire::Supports {
                tools: self.tool_format().is_some(),
                // Constrained decoding works for every decoder.
                json_output: info.kind == ModelKind::Decoder,
            },
            functions: Vec::new(),
            prompt_settings: self.engine.prompt_settings().clone(),
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
        let (prompt, params, tools, response_format) = match &job.envelope.request {
            wire::JobRequest::Chat { messages, params, tools, response_format } => {
                (Prompt::Chat(messages.iter().map(chat_message).collect()), params, tools.as_ref(), response_format)
            }
            wire::JobRequest::Completion { prompt, params } => {
                (Prompt::Text(prompt.clone()), params, None, &wire::ResponseFormat::Text)
            }
            wire::JobRequest::Embedding { input } => return self.embed(input, sink, &cancel).await,
            wire::JobRequest::Tool { .. } => {
                return Err(BackendError::invalid(format!("{} is a language model; it hosts no functions", self.name)));
            }
        };
        if self.engine.info().kind != ModelKind::Decoder {
            return Err(BackendError::invalid(format!("{} is an embedding model; it cannot generate text", self.name)));
        }
        let answer = self.answer(tools, response_format)?;
        // A tool-calling answer is regenerated on redelivery, its delivered part skipped by the
        // tool-call stream; plain text continues after what was delivered.
        let resume = job.resume.as_ref().filter(|r| !r.text.is_empty() && answer.calls.is_none());
        let mut request = GenerateRequest::new(prompt, sampling_params(params));
        request.tools = tools.map(|t| t.tools.iter().map(wire::ToolDefinition::to_openai).collect());
        request.resume_text = resume.map(|r| r.text.clone());
        request.constraint = answer.constraint;
        let mut calls = match answer.calls {
            Some((format, tools)) => {
                let calls = ToolCallStream::with_prefix(format, tools, sink, job.resume.as_ref(), answer.prefix)?;
                request.answer_prefix = calls.forced_prefix().to_owned();
                Some(calls)
            }
            None => None,
        };
        let want_logprobs = params.logprobs || params.top_logprobs > 0;
        let mut events = self.engine.generate(request, cancel.clone());
        let mut resumed_tokens = 0;
        while let Some(event) = events.recv().await {
            match event {
                GenerateEvent::Started { resumed_tokens: n, .. } => resumed_tokens = n,
                GenerateEvent::Delta { text, tokens, logprobs } => match &mut calls {
                    Some(calls) => {
                        calls.push(&text, tokens)?;
                        if !calls.wants_more() {
                            cancel.cancel();
                        }
                    }
                    None if want_logprobs => {
                        sink.delta_with_logprobs(text, logprobs.into_iter().map(wire_logprob).collect())
                    }
                    None => sink.delta(text, tokens),
                },
                GenerateEvent::Finished { reason, prompt_tokens, completion_tokens } => {
                    // The earlier worker's own count of what it generated is the real one; our
                    // re-tokenization of its text is the fallback when it is unknown.
                    let earlier = resume.map(|r| r.completion_tokens).filter(|&n| n > 0).unwrap_or(resumed_tokens);
                    let completion_tokens = completion_tokens - resumed_tokens + earlier;
                    let mut reason = match reason {
                        FinishReason::Stop => wire::FinishReason::Stop,
                        FinishReason::Length => wire::FinishReason::Length,
                        FinishReason::Cancelled => wire::FinishReason::Cancelled,
                    };
                    if let Some(mut calls) = calls.take() {
                        if !calls.wants_more() {
                            // Stopped on purpose after the one call the request allows.
                            reason = wire::FinishReason::Stop;
                        } else if let Some(closing) = answer.closing
                            && reason == wire::FinishReason::Stop
                        {
                            // The constrained call is complete: its closing is ours.
                            calls.push(closing, 0)?;
                        }
                        reason = calls.finish(reason)?;
                    }
                    return Ok(Finish { reason, usage: wire::Usage { prompt_tokens, completion_tokens } });
                }
                GenerateEvent::Error(e) => return Err(BackendError::new(error_code(e.code), e.message)),
            }
        }
        Err(BackendError::new(wire::ErrorCode::BackendError, "the model thread stopped mid-generation"))
    }
}

/// How a chat job's answer is generated beyond plain text.
struct Answer<'j> {
    /// The model's tool-call format and the request's tools, when the model may call them.
    calls: Option<(ToolFormat, &'j wire::ToolUse)>,
    /// What the answer is made to begin with (a forced call's opening).
    prefix: Option<String>,
    /// Constrained decoding: a forced call, or a JSON `response_format`.
    constraint: Option<Matcher>,
    /// The text that closes a forced call once the constrained part is complete: it is not
    /// generated but added.
    closing: Option<&'static str>,
}

impl TorchBackend {
    /// The model's tool-call format, if its chat template teaches one this worker reads.
    fn tool_format(&self) -> Option<ToolFormat> {
        let info = self.engine.info();
        if !info.chat_template_supports_tools {
            return None;
        }
        self.engine.chat_template_source().and_then(ToolFormat::detect)
    }

    fn answer<'j>(
        &self,
        tools: Option<&'j wire::ToolUse>,
        response_format: &wire::ResponseFormat,
    ) -> Result<Answer<'j>, BackendError> {
        let tools = tools.filter(|t| t.choice != wire::ToolChoice::None);
        let calls = match tools {
            Some(tools) => match self.tool_format() {
                Some(format) => Some((format, tools)),
                None => return Err(BackendError::invalid(format!("tools: {} does not support tools", self.name))),
            },
            None => None,
        };
        let json = match response_format {
            wire::ResponseFormat::Text => None,
            wire::ResponseFormat::JsonObject => Some(None),
            wire::ResponseFormat::JsonSchema { schema, .. } => Some(Some(schema)),
        };
        if let Some((format, tools)) = calls {
            match &tools.choice {
                wire::ToolChoice::Function(name) => {
                    // The call is opened and named for the model: its arguments are constrained
                    // to the function's schema (any JSON object without one). A schema the
                    // matcher cannot represent leaves them free; they are still checked against
                    // it when the call ends. So for `required` below.
                    let schema = tools.tools.iter().find(|t| t.name == *name).and_then(|t| t.parameters.as_ref());
                    let constraint = Matcher::new(Some(schema.unwrap_or(&serde_json::json!({"type": "object"})))).ok();
                    let closing = constraint.is_some().then(|| format.call_closing());
                    return Ok(Answer { calls, prefix: Some(format.forced_call(name)), constraint, closing });
                }
                wire::ToolChoice::Required => {
                    // The call's tag is opened and its whole object constrained to a call of one
                    // of the tools: the model chooses which, and writes valid arguments for it.
                    let schema =
                        format.call_schema(tools.tools.iter().map(|t| (t.name.as_str(), t.parameters.as_ref())));
                    let constraint = Matcher::new(Some(&schema)).ok();
                    let (open, close) = format.call_tags();
                    let (prefix, closing) = match constraint {
                        Some(_) => (open.to_owned(), Some(close)),
                        None => (format.forced_opening().to_owned(), None),
                    };
                    return Ok(Answer { calls, prefix: Some(prefix), constraint, closing });
                }
                wire::ToolChoice::Auto | wire::ToolChoice::None => {}
            }
        }
        let constraint = match json {
            None => None,
            Some(_) if calls.is_some() => {
                return Err(BackendError::invalid(
                    "response_format: a JSON response_format cannot be combined with tools the model may call",
                ));
            }
            Some(schema) => Some(Matcher::new(schema).map_err(|e| {
                BackendError::invalid(format!(
                    "response_format: this schema cannot be used for constrained decoding: {e}"
                ))
            })?),
        };
        Ok(Answer { calls, prefix: None, constraint, closing: None })
    }
}

fn chat_message(m: &wire::ChatMessage) -> ChatMessage {
    ChatMessage {
        tool_calls: m
            .tool_calls
            .iter()
            .map(|c| crate::ToolCall::new(c.id.clone(), c.name.clone(), c.arguments.clone()))
            .collect(),
        tool_call_id: m.tool_call_id.clone(),
        name: m.name.clone(),
        ..ChatMessage::new(m.role.clone(), m.content.clone())
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
