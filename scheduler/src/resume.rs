//! Resume answers for jobs whose events go to the events stream (`/v1/jobs`): when such a job's
//! worker dies and JetStream hands the job to another, that worker asks where to continue. No
//! api replica follows these jobs, so a scheduler replica answers from what the stream holds.

use async_nats::jetstream;
use futures::StreamExt;
use switchyard_schemas::{OUT_OF_BAND_SEQ, ResumeState, encode, subject};
use tracing::warn;

/// Answers resume requests until the subscription ends.
pub async fn answer(js: jetstream::Context, nats: async_nats::Client, mut requests: async_nats::Subscriber) {
    while let Some(request) = requests.next().await {
        let Some(reply) = request.reply else { continue };
        let Some(events) = subject::events_of_resume(&request.subject) else { continue };
        let state = match switchyard_broker::jobs::read_events(&js, events).await {
            Ok(messages) => resume_state(messages.into_iter().map(|(_, event)| event)),
            Err(e) => {
                warn!(error = %e, "cannot read a job's events to resume it");
                continue;
            }
        };
        if let Ok(bytes) = encode(&state) {
            let _ = nats.publish(reply, bytes.into()).await;
        }
    }
}

/// Where the next worker continues: after the text already in the stream, with the next
/// sequence number. A job that already ended is not wanted again.
fn resume_state(messages: impl Iterator<Item = switchyard_schemas::StreamEvent>) -> ResumeState {
    let mut state = ResumeState::start();
    for message in messages {
        if message.seq != OUT_OF_BAND_SEQ {
            state.next_seq = message.seq + 1;
        }
        for event in &message.events {
            state.record(event);
        }
    }
    state
}

#[cfg(test)]
mod tests {
    use switchyard_schemas::{EventBody, FinishReason, StreamEvent, Usage};

    use super::*;

    fn delta(text: &str) -> EventBody {
        EventBody::Delta { text: text.into(), tokens: 1, logprobs: Vec::new() }
    }

    #[test]
    fn a_job_resumes_after_its_streamed_text() {
        let started = EventBody::Started { worker_id: "w".into(), attempt: 1, prompt_tokens: None };
        let state =
            resume_state([StreamEvent::new("j", 0, vec![started, delta("a")]), StreamEvent::single("j", 1, delta("b"))].into_iter());
        assert_eq!((state.wanted, state.text.as_str(), state.completion_tokens, state.next_seq), (true, "ab", 2, 2));
        let done = EventBody::Done { finish_reason: FinishReason::Stop, usage: Usage::default() };
        assert!(!resume_state([StreamEvent::single("j", 0, done)].into_iter()).wanted);
    }
}
