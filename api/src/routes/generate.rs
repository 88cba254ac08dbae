//! `/v1/chat/completions` and `/v1/completions`: validate, fan `n` choices (and several
//! prompts) out into one job each, then answer with one JSON body or with SSE chunks exactly
//! as OpenAI frames them, ending in `data: [DONE]`.

use std::borrow::Cow;
use std::pin::Pin;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::stream::{BoxStream, SelectAll};
use futures::{Stream, StreamExt};
use serde::Serialize;
use serde_json::{Value, json};
use switchyard_schemas::{EventBody, FinishReason, JobRequest, ModelCard, ModelKind, TokenLogprob, Usage};

use super::{AppState, estimate_tokens};
use crate::policy::{Admission, Caller};
use crate::error::ApiError;
use crate::openai::{AssistantMessage, ChatChoice, Completion, StreamEvent, TextChoice};
use crate::openapi::ErrorResponses;
use crate::extract::OpenAiJson;
use crate::jobs::JobHandle;
use crate::openai::{ChatCompletionRequest, CompletionRequest, UsageOut};
use crate::validate;

/// What differs between the two endpoints once the jobs are running.
#[derive(Clone)]
enum Flavor {
    Chat,
    /// Legacy completions; `echo` holds each prompt when the client asked for it back.
    Completion { echo: Option<Vec<String>> },
}

impl Flavor {
    fn prompt_param(&self) -> &'static str {
        match self {
            Flavor::Chat => "messages",
            Flavor::Completion { .. } => "prompt",
        }
    }
}

/// The response being built, shared by both shapes of answer.
struct Reply {
    id: String,
    model: String,
    created: u64,
    flavor: Flavor,
    /// Choices per prompt.
    n: usize,
    logprobs: bool,
}

#[utoipa::path(post, path = "/v1/chat/completions", tag = "generation", request_body = ChatCompletionRequest,
    responses((status = 200, description = "One JSON body, or with `stream: true` SSE `chat.completion.chunk`s ending in `data: [DONE]`",
        content((Completion<ChatChoice> = "application/json"), (StreamEvent = "text/event-stream"))), ErrorResponses))]
pub async fn chat_completions(
    caller: Caller,
    State(state): State<AppState>,
    OpenAiJson(request): OpenAiJson<ChatCompletionRequest>,
) -> Result<Response, ApiError> {
    let model = state.model_for(&caller, &request.model, ModelKind::Chat).await?;
    let stream = request.stream.unwrap_or(false);
    let include_usage = request.stream_options.as_ref().is_some_and(|o| o.include_usage);
    let model_name = request.model.clone();
    let (messages, params, n) = validate::chat(request, &state.limits, &model)?;
    let reply = Reply { id: format!("chatcmpl-{}", ulid::Ulid::new()), model: model_name, created: now_secs(), flavor: Flavor::Chat, n: n as usize, logprobs: params.logprobs };
    let prompt_chars: usize = messages.iter().map(|m| m.content.len()).sum();
    let estimate = estimate_tokens(prompt_chars, params.max_tokens.unwrap_or(DEFAULT_COMPLETION_ESTIMATE)).saturating_mul(n);
    let jobs = (0..n).map(|i| JobRequest::Chat { messages: messages.clone(), params: choice_params(&params, i) }).collect();
    let to_admit = ToAdmit { caller, card: model.card, estimate };
    run(state, reply, jobs, stream, include_usage, to_admit).await
}

#[utoipa::path(post, path = "/v1/completions", tag = "generation", request_body = CompletionRequest,
    responses((status = 200, description = "One JSON body, or with `stream: true` SSE `text_completion` chunks ending in `data: [DONE]`",
        content((Completion<TextChoice> = "application/json"), (StreamEvent = "text/event-stream"))), ErrorResponses))]
pub async fn completions(
    caller: Caller,
    State(state): State<AppState>,
    OpenAiJson(request): OpenAiJson<CompletionRequest>,
) -> Result<Response, ApiError> {
    let model = state.model_for(&caller, &request.model, ModelKind::Chat).await?;
    let stream = request.stream.unwrap_or(false);
    let include_usage = request.stream_options.as_ref().is_some_and(|o| o.include_usage);
    let echo = request.echo.unwrap_or(false);
    let model_name = request.model.clone();
    let (prompts, params, n) = validate::completion(request, &state.limits, &model)?;
    let estimate = prompts
        .iter()
        .map(|prompt| estimate_tokens(prompt.len(), params.max_tokens.unwrap_or(DEFAULT_COMPLETION_ESTIMATE)).saturating_mul(n))
        .fold(0u32, u32::saturating_add);
    let jobs = prompts
        .iter()
        .flat_map(|prompt| (0..n).map(|i| JobRequest::Completion { prompt: prompt.clone(), params: choice_params(&params, i) }))
        .collect();
    let flavor = Flavor::Completion { echo: echo.then_some(prompts) };
    let reply = Reply { id: format!("cmpl-{}", ulid::Ulid::new()), model: model_name, created: now_secs(), flavor, n: n as usize, logprobs: params.logprobs };
    let to_admit = ToAdmit { caller, card: model.card, estimate };
    run(state, reply, jobs, stream, include_usage, to_admit).await
}

/// Completion tokens charged up front when a request sets no `max_tokens` (corrected to the
/// real count when the job ends).
const DEFAULT_COMPLETION_ESTIMATE: u32 = 256;

/// Choice `i` of `n` gets its own seed, so `n` seeded choices differ from each other but are
/// reproducible.
fn choice_params(params: &switchyard_schemas::SamplingParams, i: u32) -> switchyard_schemas::SamplingParams {
    let mut params = params.clone();
    params.seed = params.seed.map(|seed| seed.wrapping_add(i as u64));
    params
}

/// Who asks, for which model, at what estimated token cost: what admission needs.
struct ToAdmit {
    caller: Caller,
    card: ModelCard,
    estimate: u32,
}

async fn run(
    state: AppState,
    reply: Reply,
    jobs: Vec<JobRequest>,
    stream: bool,
    include_usage: bool,
    to_admit: ToAdmit,
) -> Result<Response, ApiError> {
    let submit = futures::future::try_join_all(jobs.into_iter().map(|job| state.jobs.submit(&reply.model, job)));
    let (admission, handles) = state.gate.admit_and_dispatch(&to_admit.caller, &to_admit.card, to_admit.estimate, submit).await?;
    let headers = admission.headers().clone();
    let response = if stream {
        respond_stream(reply, handles, include_usage, admission).await?
    } else {
        match respond_whole(reply, handles).await {
            Ok((response, usage)) => {
                admission.settle(usage.total_tokens);
                response
            }
            // A request refused by its worker (context too long, …) produced nothing: no charge.
            Err(error) => {
                admission.settle(0);
                return Err(error);
            }
        }
    };
    Ok((headers, response).into_response())
}

/// One choice's output, gathered.
#[derive(Default)]
struct Choice {
    text: String,
    logprobs: Vec<TokenLogprob>,
    finish_reason: Option<FinishReason>,
    usage: Usage,
}

async fn collect(mut handle: JobHandle, prompt_param: &str) -> Result<Choice, ApiError> {
    let mut choice = Choice::default();
    loop {
        match handle.next_output().await? {
            EventBody::Delta { text, logprobs, .. } => {
                choice.text.push_str(&text);
                choice.logprobs.extend(logprobs);
            }
            EventBody::Done { finish_reason, usage } => {
                choice.finish_reason = Some(finish_reason);
                choice.usage = usage;
                return Ok(choice);
            }
            EventBody::Error { code, message } => return Err(ApiError::from_job(code, message, prompt_param)),
            EventBody::Started { .. } | EventBody::Embeddings { .. } => {}
        }
    }
}

async fn respond_whole(reply: Reply, handles: Vec<JobHandle>) -> Result<(Response, UsageOut), ApiError> {
    let prompt_param = reply.flavor.prompt_param();
    let choices = futures::future::try_join_all(handles.into_iter().map(|handle| collect(handle, prompt_param))).await?;
    let usage = total_usage(&reply, choices.iter().map(|c| c.usage));
    let response = match &reply.flavor {
        Flavor::Chat => {
            let choices = choices
                .into_iter()
                .enumerate()
                .map(|(index, choice)| ChatChoice {
                    index,
                    logprobs: reply.logprobs.then(|| chat_logprobs(&choice.logprobs)),
                    finish_reason: choice.finish_reason.map(FinishReason::as_str),
                    message: AssistantMessage { role: "assistant", content: choice.text, refusal: None },
                })
                .collect();
            Json(reply.completion("chat.completion", choices, usage)).into_response()
        }
        Flavor::Completion { echo } => {
            let choices = choices
                .into_iter()
                .enumerate()
                .map(|(index, choice)| {
                    let prefix = echo.as_ref().map_or("", |prompts| prompts[index / reply.n].as_str());
                    TextChoice {
                        text: if prefix.is_empty() { choice.text } else { format!("{prefix}{}", choice.text) },
                        index,
                        logprobs: reply.logprobs.then(|| completion_logprobs(&choice.logprobs, prefix.len())),
                        finish_reason: choice.finish_reason.map(FinishReason::as_str),
                    }
                })
                .collect();
            Json(reply.completion("text_completion", choices, usage)).into_response()
        }
    };
    Ok((response, usage))
}

impl Reply {
    fn completion<C>(&self, object: &'static str, choices: Vec<C>, usage: UsageOut) -> Completion<C> {
        Completion { id: self.id.clone(), object, created: self.created, model: self.model.clone(), system_fingerprint: None, choices, usage }
    }
}

/// Prompt tokens once per prompt (not once per choice), completion tokens of every choice.
fn total_usage(reply: &Reply, usages: impl Iterator<Item = Usage>) -> UsageOut {
    let (mut prompt, mut completion) = (0, 0);
    for (i, usage) in usages.enumerate() {
        if i % reply.n == 0 {
            prompt += usage.prompt_tokens;
        }
        completion += usage.completion_tokens;
    }
    UsageOut::new(prompt, completion)
}

fn chat_logprobs(logprobs: &[TokenLogprob]) -> Value {
    let content: Vec<Value> = logprobs
        .iter()
        .map(|lp| {
            json!({
                "token": lp.token,
                "logprob": lp.logprob,
                "bytes": lp.bytes,
                "top_logprobs": lp.top.iter().map(|t| json!({ "token": t.token, "logprob": t.logprob, "bytes": t.bytes })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({ "content": content, "refusal": null })
}

fn completion_logprobs(logprobs: &[TokenLogprob], first_offset: usize) -> Value {
    let mut offset = first_offset;
    let mut text_offset = Vec::with_capacity(logprobs.len());
    for lp in logprobs {
        text_offset.push(offset);
        offset += lp.token.len();
    }
    json!({
        "tokens": logprobs.iter().map(|lp| &lp.token).collect::<Vec<_>>(),
        "token_logprobs": logprobs.iter().map(|lp| lp.logprob).collect::<Vec<_>>(),
        "top_logprobs": logprobs.iter().map(|lp| lp.top.iter().map(|t| (t.token.clone(), json!(t.logprob))).collect::<serde_json::Map<_, _>>()).collect::<Vec<_>>(),
        "text_offset": text_offset,
    })
}

type Events = SelectAll<BoxStream<'static, (usize, Result<EventBody, ApiError>)>>;

async fn respond_stream(reply: Reply, handles: Vec<JobHandle>, include_usage: bool, admission: Admission) -> Result<Response, ApiError> {
    let choices = handles.len();
    let mut events: Events = futures::stream::select_all(
        handles.into_iter().enumerate().map(|(index, handle)| handle.into_stream().map(move |event| (index, event)).boxed()),
    );
    // Hold the status line until the first output: an error before any text (queue timeout,
    // context too long) is still an ordinary HTTP error, not a broken stream.
    let first = match events.next().await {
        Some((_, Ok(EventBody::Error { code, message }))) => Err(ApiError::from_job(code, message, reply.flavor.prompt_param())),
        Some((_, Err(error))) => Err(error),
        Some(first) => Ok(first),
        None => Err(ApiError::Internal("the job ended without output".into())),
    };
    let first = match first {
        Ok(first) => first,
        // Refused before any output: nothing to charge.
        Err(error) => {
            admission.settle(0);
            return Err(error);
        }
    };
    let state = SseState {
        reply,
        include_usage,
        role_sent: vec![false; choices],
        usages: vec![Usage::default(); choices],
        open: choices,
        done: false,
        admission: Some(admission),
    };
    let pending = futures::stream::iter(std::iter::once(first)).chain(events);
    let body = sse_body(state, pending.ready_chunks(256));
    Ok(([(header::CONTENT_TYPE, "text/event-stream"), (header::CACHE_CONTROL, "no-cache")], Body::from_stream(body)).into_response())
}

struct SseState {
    reply: Reply,
    include_usage: bool,
    role_sent: Vec<bool>,
    usages: Vec<Usage>,
    /// Choices still generating.
    open: usize,
    done: bool,
    /// Settled with the real usage when the stream completes.
    admission: Option<Admission>,
}

/// Frames events as SSE. Events that are already waiting are written together, and adjacent
/// deltas of one choice become one chunk, so a slow client costs fewer, larger writes.
fn sse_body(
    state: SseState,
    batches: impl Stream<Item = Vec<(usize, Result<EventBody, ApiError>)>> + Send + 'static,
) -> impl Stream<Item = Result<Bytes, std::convert::Infallible>> + Send {
    let batches: Pin<Box<dyn Stream<Item = _> + Send>> = Box::pin(batches);
    futures::stream::unfold((state, batches), |(mut state, mut batches)| async move {
        if state.done {
            return None;
        }
        let mut out = String::new();
        match batches.next().await {
            Some(batch) => state.frame_batch(batch, &mut out),
            None => state.finish(&mut out),
        }
        Some((Ok(Bytes::from(out)), (state, batches)))
    })
}

impl SseState {
    fn frame_batch(&mut self, batch: Vec<(usize, Result<EventBody, ApiError>)>, out: &mut String) {
        let mut pending: Option<(usize, String, Vec<TokenLogprob>)> = None;
        for (index, event) in batch {
            if let Some((open_index, text, logprobs)) = &mut pending {
                match &event {
                    Ok(EventBody::Delta { text: more, logprobs: more_logprobs, .. }) if *open_index == index => {
                        text.push_str(more);
                        logprobs.extend(more_logprobs.iter().cloned());
                        continue;
                    }
                    _ => {
                        let (i, text, logprobs) = pending.take().unwrap();
                        self.frame_delta(i, &text, &logprobs, out);
                    }
                }
            }
            match event {
                Ok(EventBody::Delta { text, logprobs, .. }) => pending = Some((index, text, logprobs)),
                Ok(EventBody::Done { finish_reason, usage }) => {
                    self.usages[index] = usage;
                    self.frame_finish(index, finish_reason, out);
                    self.open -= 1;
                    if self.open == 0 {
                        self.finish(out);
                        return;
                    }
                }
                Ok(EventBody::Error { code, message }) => {
                    self.fail(ApiError::from_job(code, message, self.reply.flavor.prompt_param()), out);
                    return;
                }
                Err(error) => {
                    self.fail(error, out);
                    return;
                }
                Ok(EventBody::Started { .. } | EventBody::Embeddings { .. }) => {}
            }
        }
        if let Some((i, text, logprobs)) = pending {
            self.frame_delta(i, &text, &logprobs, out);
        }
    }

    /// One SSE chunk of this response holding `choices` (and, with `include_usage`, a
    /// `usage` that is null until the last chunk).
    fn write_chunk<C: Serialize>(&self, choices: &[C], usage: Option<UsageOut>, out: &mut String) {
        let object = match self.reply.flavor {
            Flavor::Chat => "chat.completion.chunk",
            Flavor::Completion { .. } => "text_completion",
        };
        let chunk = Chunk {
            id: &self.reply.id,
            object,
            created: self.reply.created,
            model: &self.reply.model,
            system_fingerprint: None,
            choices,
            usage: self.include_usage.then_some(usage),
        };
        write_event(out, &chunk);
    }

    fn frame_delta(&mut self, index: usize, text: &str, logprobs: &[TokenLogprob], out: &mut String) {
        let first = !std::mem::replace(&mut self.role_sent[index], true);
        match &self.reply.flavor {
            Flavor::Chat => {
                if first {
                    let role = ChatDelta { role: Some("assistant"), content: Some(""), refusal: Some(None) };
                    self.write_chunk(&[ChatChunkChoice { index, delta: role, logprobs: None, finish_reason: None }], None, out);
                }
                let logprobs = self.reply.logprobs.then(|| chat_logprobs(logprobs));
                let delta = ChatDelta { role: None, content: Some(text), refusal: None };
                self.write_chunk(&[ChatChunkChoice { index, delta, logprobs, finish_reason: None }], None, out);
            }
            Flavor::Completion { echo } => {
                let logprobs = self.reply.logprobs.then(|| completion_logprobs(logprobs, 0));
                let text = match echo {
                    Some(prompts) if first => Cow::Owned(format!("{}{text}", prompts[index / self.reply.n])),
                    _ => Cow::Borrowed(text),
                };
                self.write_chunk(&[TextChunkChoice { text: &text, index, logprobs, finish_reason: None }], None, out);
            }
        }
    }

    fn frame_finish(&mut self, index: usize, reason: FinishReason, out: &mut String) {
        if !self.role_sent[index] {
            // A choice that produced no text still opens with its role (or echoed prompt).
            self.frame_delta(index, "", &[], out);
        }
        let finish_reason = Some(reason.as_str());
        match self.reply.flavor {
            Flavor::Chat => {
                let delta = ChatDelta { role: None, content: None, refusal: None };
                self.write_chunk(&[ChatChunkChoice { index, delta, logprobs: None, finish_reason }], None, out);
            }
            Flavor::Completion { .. } => self.write_chunk(&[TextChunkChoice { text: "", index, logprobs: None, finish_reason }], None, out),
        }
    }

    fn finish(&mut self, out: &mut String) {
        let usage = total_usage(&self.reply, self.usages.iter().copied());
        if let Some(admission) = self.admission.take() {
            admission.settle(usage.total_tokens);
        }
        if self.include_usage {
            self.write_chunk::<ChatChunkChoice>(&[], Some(usage), out);
        }
        out.push_str("data: [DONE]\n\n");
        self.done = true;
    }

    fn fail(&mut self, error: ApiError, out: &mut String) {
        tracing::warn!(error = %error, "stream ended with an error");
        write_event(out, &error.body());
        out.push_str("data: [DONE]\n\n");
        self.done = true;
    }
}

/// A streamed `chat.completion.chunk` or `text_completion` chunk.
#[derive(Serialize)]
struct Chunk<'a, C> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    system_fingerprint: Option<()>,
    choices: &'a [C],
    /// Present only with `stream_options.include_usage`: null, then the totals in the last chunk.
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Option<UsageOut>>,
}

#[derive(Serialize)]
struct ChatChunkChoice<'a> {
    index: usize,
    delta: ChatDelta<'a>,
    logprobs: Option<Value>,
    finish_reason: Option<&'static str>,
}

/// What a chat chunk adds: the role (first chunk), text, or nothing (the finishing chunk).
#[derive(Serialize)]
struct ChatDelta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    refusal: Option<Option<()>>,
}

#[derive(Serialize)]
struct TextChunkChoice<'a> {
    text: &'a str,
    index: usize,
    logprobs: Option<Value>,
    finish_reason: Option<&'static str>,
}

fn write_event(out: &mut String, value: &impl Serialize) {
    out.push_str("data: ");
    out.push_str(&serde_json::to_string(value).expect("response chunks serialize"));
    out.push_str("\n\n");
}

fn now_secs() -> u64 {
    switchyard_schemas::now_ms() / 1000
}
