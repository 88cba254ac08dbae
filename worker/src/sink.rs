//! Where a backend writes a job's output, and how it reaches the job's reply subject.
//!
//! A backend writes to an [`EventSink`] without waiting; the runtime runs [`publish`] beside
//! the backend in the job's own task. Each time it is polled it sends everything waiting as
//! one message: a short job (started, its text, done) is a single NATS message, a backend
//! that produces text faster than NATS takes it has its deltas merged, and the first token
//! is never held back, because nothing waits for more to arrive.

use async_nats::Subject;
use switchyard_schemas::{EventBody, StreamEvent, TokenLogprob, encode};
use tokio::sync::mpsc;

/// A message stops taking further events at about this size, well below NATS's default
/// 1 MiB payload limit. A single event may be bigger (it is never split).
const MESSAGE_BUDGET: usize = 256 * 1024;

pub struct EventSink {
    tx: mpsc::UnboundedSender<EventBody>,
}

/// The receiving half of an [`EventSink`], drained by [`publish`].
pub(crate) struct EventQueue {
    rx: mpsc::UnboundedReceiver<EventBody>,
}

impl EventSink {
    pub(crate) fn new() -> (EventSink, EventQueue) {
        let (tx, rx) = mpsc::unbounded_channel();
        (EventSink { tx }, EventQueue { rx })
    }

    /// Streams generated text that holds `tokens` tokens (0 for text held back earlier by
    /// stop-string or UTF-8 handling and released now).
    pub fn delta(&self, text: impl Into<String>, tokens: u32) {
        self.send(EventBody::Delta { text: text.into(), tokens, logprobs: Vec::new() });
    }

    /// Streams generated text with the log-probabilities of its tokens (one entry per token).
    pub fn delta_with_logprobs(&self, text: impl Into<String>, logprobs: Vec<TokenLogprob>) {
        self.send(EventBody::Delta { text: text.into(), tokens: logprobs.len() as u32, logprobs });
    }

    /// Sends embedding vectors for inputs starting at `first_index`.
    pub fn embeddings(&self, first_index: u32, vectors: Vec<Vec<f32>>) {
        // Keep each event well below NATS's payload limit.
        const PER_EVENT: usize = 64;
        for (i, chunk) in vectors.chunks(PER_EVENT).enumerate() {
            self.send(EventBody::Embeddings { first_index: first_index + (i * PER_EVENT) as u32, vectors: chunk.to_vec() });
        }
    }

    /// The model began tool call `index` (see [`crate::tool_calls`]).
    pub fn tool_call_start(&self, index: u32, id: String, name: String) {
        self.send(EventBody::ToolCallStart { index, id, name });
    }

    /// More of tool call `index`'s arguments text, `tokens` tokens long.
    pub fn tool_call_arguments(&self, index: u32, delta: impl Into<String>, tokens: u32) {
        self.send(EventBody::ToolCallArguments { index, delta: delta.into(), tokens });
    }

    /// Sends what a hosted function returned.
    pub fn tool_result(&self, value: serde_json::Value) {
        self.send(EventBody::ToolResult { value });
    }

    /// Sends one item a streaming hosted function produced.
    pub fn tool_chunk(&self, value: serde_json::Value) {
        self.send(EventBody::ToolChunk { value });
    }

    pub(crate) fn send(&self, body: EventBody) {
        // The queue lives until the runtime has published the job's last event; a send after
        // that is a bug in the runtime, not something a backend can cause.
        let _ = self.tx.send(body);
    }
}

/// Publishes a job's events until every [`EventSink`] of `queue` is dropped and the queue is
/// empty. Messages are numbered from `first_seq`.
pub(crate) async fn publish(nats: &async_nats::Client, job_id: &str, reply_to: Subject, first_seq: u64, mut queue: EventQueue) {
    let mut seq = first_seq;
    while let Some(first) = queue.rx.recv().await {
        let mut size = approximate_size(&first);
        let mut events = vec![first];
        while size < MESSAGE_BUDGET {
            let Ok(next) = queue.rx.try_recv() else { break };
            size += approximate_size(&next);
            if let Some(unmerged) = merge_delta(events.last_mut().expect("never empty"), next) {
                events.push(unmerged);
            }
        }
        let message = StreamEvent::new(job_id, seq, events);
        seq += 1;
        match encode(&message) {
            Ok(bytes) => {
                if let Err(e) = nats.publish(reply_to.clone(), bytes.into()).await {
                    tracing::warn!(job_id, error = %e, "publishing events failed");
                }
            }
            Err(e) => tracing::error!(job_id, error = %e, "encoding events failed"),
        }
    }
}

/// Appends `next` to `last` when both are text, or both pieces of one tool call's arguments;
/// otherwise gives `next` back.
fn merge_delta(last: &mut EventBody, next: EventBody) -> Option<EventBody> {
    match (last, next) {
        (
            EventBody::Delta { text, tokens, logprobs },
            EventBody::Delta { text: more_text, tokens: more_tokens, logprobs: more_logprobs },
        ) => {
            text.push_str(&more_text);
            *tokens += more_tokens;
            logprobs.extend(more_logprobs);
            None
        }
        (
            EventBody::ToolCallArguments { index, delta, tokens },
            EventBody::ToolCallArguments { index: more_index, delta: more_delta, tokens: more_tokens },
        ) if *index == more_index => {
            delta.push_str(&more_delta);
            *tokens += more_tokens;
            None
        }
        (_, next) => Some(next),
    }
}

/// Bytes of `value` as compact JSON (about its MessagePack size), counted without building
/// the text.
fn json_size(value: &serde_json::Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

/// Roughly the encoded size of an event, to keep messages bounded.
fn approximate_size(event: &EventBody) -> usize {
    match event {
        EventBody::Delta { text, logprobs, .. } => 16 + text.len() + logprobs.len() * 48,
        EventBody::Embeddings { vectors, .. } => 16 + vectors.iter().map(|v| 4 + v.len() * 5).sum::<usize>(),
        EventBody::Error { message, .. } => 32 + message.len(),
        EventBody::ToolResult { value } | EventBody::ToolChunk { value } => 16 + json_size(value),
        EventBody::ToolCallStart { id, name, .. } => 32 + id.len() + name.len(),
        EventBody::ToolCallArguments { delta, .. } => 24 + delta.len(),
        EventBody::Started { .. } | EventBody::Done { .. } => 64,
    }
}

#[cfg(test)]
mod tests {
    use switchyard_schemas::{FinishReason, Usage};

    use super::*;

    fn delta(text: &str) -> EventBody {
        EventBody::Delta { text: text.into(), tokens: 1, logprobs: Vec::new() }
    }

    #[test]
    fn consecutive_deltas_merge_and_other_events_do_not() {
        let mut last = delta("a");
        assert_eq!(merge_delta(&mut last, delta("b")), None);
        assert_eq!(last, EventBody::Delta { text: "ab".into(), tokens: 2, logprobs: Vec::new() });
        let done = EventBody::Done { finish_reason: FinishReason::Stop, usage: Usage::default() };
        assert_eq!(merge_delta(&mut last, done.clone()), Some(done.clone()));
        let mut last = done.clone();
        assert_eq!(merge_delta(&mut last, delta("c")), Some(delta("c")));
    }
}
