//! Streamed answers of `/v1/chat/completions` and `/v1/completions`: the jobs' events framed as
//! SSE chunks exactly as OpenAI frames them, ending in `data: [DONE]`.

use std::borrow::Cow;
use std::pin::Pin;

use axum::body::{Body, Bytes};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use futures::stream::{BoxStream, SelectAll};
use futures::{Stream, StreamExt};
use serde::Serialize;
use switchyard_openai::response::{
    ChatChunkChoice, ChatDelta, ChatLogprobs, CompletionLogprobs, FunctionDelta, TextChunkChoice, ToolCallDelta, UsageOut,
};
use switchyard_openai::{Flavor, Generation, JobFailure};
use switchyard_schemas::{EventBody, FinishReason, TokenLogprob, Usage};

use crate::error::ApiError;
use crate::policy::Admission;
use switchyard_client::JobHandle;

type Events = SelectAll<BoxStream<'static, (usize, Result<EventBody, ApiError>)>>;

pub(crate) async fn respond(
    reply: Generation,
    handles: Vec<JobHandle>,
    include_usage: bool,
    admission: Admission,
) -> Result<Response, ApiError> {
    let choices = handles.len();
    let mut events: Events = futures::stream::select_all(
        handles
            .into_iter()
            .enumerate()
            .map(|(index, handle)| handle.into_stream().map(move |event| (index, event.map_err(ApiError::from))).boxed()),
    );
    let (index, first) = match events.next().await {
        Some((index, event)) => (index, Some(event)),
        None => (0, None),
    };
    let (first, admission) = first_output(first, reply.prompt_param(), admission)?;
    let first = (index, Ok(first));
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

/// A streamed answer's first output event. The status line waits for it, so an error before
/// any output (queue timeout, context too long, bad arguments) is still an ordinary HTTP
/// error, not a broken stream — and, refused before any output, it costs nothing: the
/// admission settles at 0.
pub(crate) fn first_output(
    event: Option<Result<EventBody, ApiError>>,
    prompt_param: &str,
    admission: Admission,
) -> Result<(EventBody, Admission), ApiError> {
    let first = match event {
        Some(Ok(EventBody::Error { code, message, upstream })) => Err(JobFailure::new(code, message, upstream, prompt_param).into()),
        Some(Err(error)) => Err(error),
        Some(Ok(first)) => Ok(first),
        None => Err(ApiError::Internal("the job ended without output".into())),
    };
    match first {
        Ok(first) => Ok((first, admission)),
        Err(error) => {
            admission.settle(0);
            Err(error)
        }
    }
}

struct SseState {
    reply: Generation,
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
        // Consecutive pieces of one choice's text (or of one tool call's arguments) in a batch
        // go out as one chunk.
        let mut pending: Option<Pending> = None;
        for (index, event) in batch {
            if let Some(open) = &mut pending {
                if open.absorb(index, &event) {
                    continue;
                }
                let open = pending.take().unwrap();
                self.frame_pending(open, out);
            }
            match event {
                Ok(EventBody::Delta { text, logprobs, .. }) => pending = Some(Pending::Text { index, text, logprobs }),
                Ok(EventBody::ToolCallArguments { index: call, delta, .. }) => pending = Some(Pending::Arguments { index, call, delta }),
                Ok(EventBody::ToolCallStart { index: call, id, name }) => {
                    let start = ToolCallDelta {
                        index: call,
                        id: Some(&id),
                        kind: Some("function"),
                        function: FunctionDelta { name: Some(&name), arguments: "" },
                    };
                    self.frame_tool_call(index, start, out);
                }
                Ok(EventBody::Done { finish_reason, usage }) => {
                    self.usages[index] = usage;
                    self.frame_finish(index, finish_reason, out);
                    self.open -= 1;
                    if self.open == 0 {
                        self.finish(out);
                        return;
                    }
                }
                Ok(EventBody::Error { code, message, upstream }) => {
                    self.fail(JobFailure::new(code, message, upstream, self.reply.prompt_param()).into(), out);
                    return;
                }
                Err(error) => {
                    self.fail(error, out);
                    return;
                }
                // Not events of a text generation.
                Ok(
                    EventBody::Started { .. } | EventBody::Embeddings { .. } | EventBody::ToolResult { .. } | EventBody::ToolChunk { .. },
                ) => {}
            }
        }
        if let Some(open) = pending {
            self.frame_pending(open, out);
        }
    }

    fn frame_pending(&mut self, pending: Pending, out: &mut String) {
        match pending {
            Pending::Text { index, text, logprobs } => self.frame_delta(index, &text, &logprobs, out),
            Pending::Arguments { index, call, delta } => {
                let more = ToolCallDelta { index: call, id: None, kind: None, function: FunctionDelta { name: None, arguments: &delta } };
                self.frame_tool_call(index, more, out);
            }
        }
    }

    /// A chunk with a piece of choice `index`'s tool call (only chat streams have them).
    fn frame_tool_call(&mut self, index: usize, call: ToolCallDelta<'_>, out: &mut String) {
        if !self.role_sent[index] {
            self.frame_delta(index, "", &[], out);
        }
        let delta = ChatDelta { tool_calls: Some([call]), ..Default::default() };
        self.write_chunk(&[ChatChunkChoice { index, delta, logprobs: None, finish_reason: None }], None, out);
    }

    /// One SSE chunk of this response holding `choices` (and, with `include_usage`, a
    /// `usage` that is null until the last chunk).
    fn write_chunk<C: Serialize>(&self, choices: &[C], usage: Option<UsageOut>, out: &mut String) {
        write_event(out, &self.reply.chunk(choices, self.include_usage.then_some(usage)));
    }

    fn frame_delta(&mut self, index: usize, text: &str, logprobs: &[TokenLogprob], out: &mut String) {
        let first = !std::mem::replace(&mut self.role_sent[index], true);
        match &self.reply.flavor {
            Flavor::Chat => {
                if first {
                    let role = ChatDelta {
                        role: Some("assistant"),
                        content: Some(""),
                        refusal: Some(None),
                        tool_calls: None,
                        hosted_tool_call: None,
                    };
                    self.write_chunk(&[ChatChunkChoice { index, delta: role, logprobs: None, finish_reason: None }], None, out);
                }
                let logprobs = self.reply.logprobs.then(|| ChatLogprobs::new(logprobs));
                let delta = ChatDelta { content: Some(text), ..Default::default() };
                self.write_chunk(&[ChatChunkChoice { index, delta, logprobs, finish_reason: None }], None, out);
            }
            Flavor::Completion { .. } => {
                let logprobs = self.reply.logprobs.then(|| CompletionLogprobs::new(logprobs, 0));
                let text = match self.reply.echo(index) {
                    Some(prompt) if first => Cow::Owned(format!("{prompt}{text}")),
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
                let delta = ChatDelta::default();
                self.write_chunk(&[ChatChunkChoice { index, delta, logprobs: None, finish_reason }], None, out);
            }
            Flavor::Completion { .. } => self.write_chunk(&[TextChunkChoice { text: "", index, logprobs: None, finish_reason }], None, out),
        }
    }

    fn finish(&mut self, out: &mut String) {
        let usage = self.reply.usage(self.usages.iter().copied());
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

/// Events of one choice waiting to go out together.
enum Pending {
    Text { index: usize, text: String, logprobs: Vec<TokenLogprob> },
    Arguments { index: usize, call: u32, delta: String },
}

impl Pending {
    /// Takes `event` in when it continues what is pending.
    fn absorb(&mut self, event_index: usize, event: &Result<EventBody, ApiError>) -> bool {
        match (self, event) {
            (Pending::Text { index, text, logprobs }, Ok(EventBody::Delta { text: more, logprobs: more_logprobs, .. }))
                if *index == event_index =>
            {
                text.push_str(more);
                logprobs.extend(more_logprobs.iter().cloned());
                true
            }
            (Pending::Arguments { index, call, delta }, Ok(EventBody::ToolCallArguments { index: more_call, delta: more, .. }))
                if *index == event_index && call == more_call =>
            {
                delta.push_str(more);
                true
            }
            _ => false,
        }
    }
}

pub(crate) fn write_event(out: &mut String, value: &impl Serialize) {
    out.push_str("data: ");
    out.push_str(&serde_json::to_string(value).expect("response chunks serialize"));
    out.push_str("\n\n");
}
