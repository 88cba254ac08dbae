//! Where a backend writes a job's output.
//!
//! Events go through a per-job publisher task that numbers them and, when the backend produces
//! text faster than NATS takes it, merges the deltas waiting in its queue into one message.
//! The first token is never held back: the publisher sends whatever is there the moment it
//! wakes, so merging only happens under backlog.

use switchyard_schemas::{EventBody, StreamEvent, TokenLogprob, WIRE_VERSION, encode};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub struct EventSink {
    tx: mpsc::UnboundedSender<EventBody>,
}

/// The publishing half, owned by the runtime.
pub(crate) struct Publisher {
    task: JoinHandle<()>,
}

impl EventSink {
    /// Starts the publisher for one job; events are numbered from `first_seq`.
    pub(crate) fn start(nats: async_nats::Client, job_id: String, reply_to: String, first_seq: u64) -> (EventSink, Publisher) {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(publish_events(nats, job_id, reply_to, first_seq, rx));
        (EventSink { tx }, Publisher { task })
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
        // Keep each message well below NATS's payload limit.
        const PER_EVENT: usize = 64;
        for (i, chunk) in vectors.chunks(PER_EVENT).enumerate() {
            self.send(EventBody::Embeddings { first_index: first_index + (i * PER_EVENT) as u32, vectors: chunk.to_vec() });
        }
    }

    pub(crate) fn send(&self, body: EventBody) {
        // The receiver lives until the runtime closes the sink; a send after that is a bug in
        // the runtime, not something a backend can cause.
        let _ = self.tx.send(body);
    }
}

impl Publisher {
    /// Waits until every event sent through `sink` is handed to NATS.
    pub(crate) async fn finish(self, sink: EventSink) {
        drop(sink);
        let _ = self.task.await;
    }
}

async fn publish_events(
    nats: async_nats::Client,
    job_id: String,
    reply_to: String,
    mut seq: u64,
    mut rx: mpsc::UnboundedReceiver<EventBody>,
) {
    let mut held: Option<EventBody> = None;
    loop {
        let body = match held.take() {
            Some(body) => body,
            None => match rx.recv().await {
                Some(body) => body,
                None => break,
            },
        };
        let body = match body {
            EventBody::Delta { mut text, mut tokens, mut logprobs } => {
                // Merge the deltas already waiting; stop at the first event of another kind.
                while let Ok(next) = rx.try_recv() {
                    match next {
                        EventBody::Delta { text: more, tokens: more_tokens, logprobs: more_logprobs } => {
                            text.push_str(&more);
                            tokens += more_tokens;
                            logprobs.extend(more_logprobs);
                        }
                        other => {
                            held = Some(other);
                            break;
                        }
                    }
                }
                EventBody::Delta { text, tokens, logprobs }
            }
            other => other,
        };
        let event = StreamEvent { v: WIRE_VERSION, job_id: job_id.clone(), seq, body };
        seq += 1;
        match encode(&event) {
            Ok(bytes) => {
                if let Err(e) = nats.publish(reply_to.clone(), bytes.into()).await {
                    tracing::warn!(job_id, error = %e, "publishing event failed");
                }
            }
            Err(e) => tracing::error!(job_id, error = %e, "encoding event failed"),
        }
    }
}
