//! Every NATS name Switchyard uses. Nobody else formats a subject, stream or consumer name.
//!
//! Model names contain characters that subject tokens and consumer names cannot hold
//! (`Qwen/Qwen2.5-0.5B`), so [`encode_token`] maps any string to a token made of
//! `[A-Za-z0-9_-]` and `~XX` escapes (UTF-8 bytes in upper-case hex); [`decode_token`]
//! reverses it. The mapping is injective because `~` itself is escaped.

use crate::job::{JobKind, Lane};

/// The work-queue stream that holds every job until a worker acknowledges it.
pub const JOBS_STREAM: &str = "SY_JOBS";
/// Subjects the jobs stream captures.
pub const JOBS_SUBJECTS: &str = "sy.job.>";
/// Stream of jobs that failed every delivery, kept for inspection.
pub const DEAD_LETTER_STREAM: &str = "SY_DEAD";
/// Subjects the dead-letter stream captures.
pub const DEAD_LETTER_SUBJECTS: &str = "sy.dead.>";
/// Announced when an API key is revoked, so every api replica drops it from its cache.
pub const API_KEY_REVOKED: &str = "sy.apikey.revoked";
/// Cancellation announcements, one subject per job.
pub const CANCEL_ALL: &str = "sy.cancel.*";
/// Object store bucket of uploaded and generated files (`/v1/files`); the object name is the file id.
pub const FILES_BUCKET: &str = "SY_FILES";
/// Key-value bucket of batch records (`/v1/batches`), keyed by batch id.
pub const BATCHES_BUCKET: &str = "SY_BATCHES";
/// Stream of batch line results: one message per line on [`batch_result`], written once (a
/// second write of a line is refused by the stream), read back in bulk to write the output files.
pub const BATCH_RESULTS_STREAM: &str = "SY_BATCH_RESULTS";
/// Subjects the batch results stream captures.
pub const BATCH_RESULTS_SUBJECTS: &str = "sy.result.>";

/// Turns any string into a valid subject token / consumer-name fragment.
pub fn encode_token(name: &str) -> String {
    let mut token = String::with_capacity(name.len());
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_' {
            token.push(byte as char);
        } else {
            token.push_str(&format!("~{byte:02X}"));
        }
    }
    token
}

/// Inverse of [`encode_token`]; `None` for strings it could not have produced.
pub fn decode_token(token: &str) -> Option<String> {
    let bytes = token.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'~' => {
                let hex = token.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' => {
                out.push(b);
                i += 1;
            }
            _ => return None,
        }
    }
    String::from_utf8(out).ok()
}

/// Subject a job for `model` of `kind` waits on in `lane`: `sy.job.<lane>.<kind>.<model token>`.
pub fn job(lane: Lane, kind: JobKind, model: &str) -> String {
    format!("sy.job.{}.{}.{}", lane.as_str(), kind.as_str(), encode_token(model))
}

/// Durable pull consumer of one lane of (`kind`, `model`), shared by every worker of the model:
/// `sy-<lane>-<kind>-<model token>`. These names are stable: an autoscaler (KEDA's NATS
/// JetStream scaler) watches a lane's lag through them.
pub fn job_consumer(lane: Lane, kind: JobKind, model: &str) -> String {
    format!("sy-{}-{}-{}", lane.as_str(), kind.as_str(), encode_token(model))
}

/// The lane, kind and model of a [`job_consumer`] name; `None` for any other name.
pub fn parse_job_consumer(name: &str) -> Option<(Lane, JobKind, String)> {
    let mut parts = name.splitn(4, '-');
    (parts.next()? == "sy").then_some(())?;
    let lane = parts.next()?;
    let lane = Lane::ALL.into_iter().find(|l| l.as_str() == lane)?;
    let kind = parts.next()?;
    let kind = JobKind::ALL.into_iter().find(|k| k.as_str() == kind)?;
    Some((lane, kind, decode_token(parts.next()?)?))
}

/// Subject a dead job is kept under: `sy.dead.<kind>.<model token>`.
pub fn dead_letter(kind: JobKind, model: &str) -> String {
    format!("sy.dead.{}.{}", kind.as_str(), encode_token(model))
}

/// Subject of the result of line `line` (0-based) of batch `batch_id`: `sy.result.<batch>.<line>`.
pub fn batch_result(batch_id: &str, line: u64) -> String {
    format!("sy.result.{}.{line}", encode_token(batch_id))
}

/// Every result subject of one batch.
pub fn batch_results_of(batch_id: &str) -> String {
    format!("sy.result.{}.*", encode_token(batch_id))
}

/// The line number at the end of a [`batch_result`] subject.
pub fn batch_line_of(subject: &str) -> Option<u64> {
    subject.rsplit('.').next()?.parse().ok()
}

/// Stream of the events of jobs that outlive their request (`/v1/jobs`): a worker's events for
/// such a job land here instead of on an api's reply subject, so any api replica can read them,
/// also after the replica that took the job is gone.
pub const EVENTS_STREAM: &str = "SY_EVENTS";
/// Subjects the events stream captures.
pub const EVENTS_SUBJECTS: &str = "sy.events.>";
/// Key-value bucket of async job records (`/v1/jobs`), keyed by job id.
pub const ASYNC_JOBS_BUCKET: &str = "SY_ASYNC_JOBS";
/// Resume requests for jobs whose events go to the events stream, answered by a scheduler
/// replica from what the stream holds: `sy.resume.durable.<job>.<index>`.
pub const DURABLE_RESUMES: &str = "sy.resume.durable.*.*";

/// Reply subject of choice `index` of async job `job_id`: `sy.events.<job>.<index>`.
pub fn events(job_id: &str, index: usize) -> String {
    format!("sy.events.{}.{index}", encode_token(job_id))
}

/// Every event subject of async job `job_id`.
pub fn events_of(job_id: &str) -> String {
    format!("sy.events.{}.*", encode_token(job_id))
}

/// Resume subject of choice `index` of async job `job_id`.
pub fn durable_resume(job_id: &str, index: usize) -> String {
    format!("sy.resume.durable.{}.{index}", encode_token(job_id))
}

/// The events subject a [`durable_resume`] subject asks about.
pub fn events_of_resume(resume_subject: &str) -> Option<String> {
    let rest = resume_subject.strip_prefix("sy.resume.durable.")?;
    Some(format!("sy.events.{rest}"))
}

/// The choice index at the end of an [`events`] subject.
pub fn event_index_of(subject: &str) -> Option<usize> {
    subject.rsplit('.').next()?.parse().ok()
}

/// Wildcard an api instance subscribes to once, to receive the events of all its jobs.
pub fn replies_of(instance: &str) -> String {
    format!("sy.reply.{}.*", encode_token(instance))
}

/// Reply subject of one job owned by api instance `instance`.
pub fn reply(instance: &str, job_id: &str) -> String {
    format!("sy.reply.{}.{}", encode_token(instance), encode_token(job_id))
}

/// Wildcard an api instance answers resume requests on (see [`crate::ResumeState`]).
pub fn resumes_of(instance: &str) -> String {
    format!("sy.resume.{}.*", encode_token(instance))
}

/// Subject a worker that picks up a redelivered job asks for the text already streamed.
pub fn resume(instance: &str, job_id: &str) -> String {
    format!("sy.resume.{}.{}", encode_token(instance), encode_token(job_id))
}

/// Subject the cancellation of one job is announced on.
pub fn cancel(job_id: &str) -> String {
    format!("sy.cancel.{}", encode_token(job_id))
}

/// The job id at the end of a reply, resume or cancel subject.
pub fn job_id_of(subject: &str) -> Option<String> {
    decode_token(subject.rsplit('.').next()?)
}

/// Queue group of every scheduler replica: a message on its subscriptions reaches one replica.
pub const SCHEDULER_GROUP: &str = "sy-scheduler";

/// JetStream's advisory when a consumer gives up on a message after MaxDeliver attempts.
pub const MAX_DELIVERIES_ADVISORY: &str = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.SY_JOBS.*";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_stay_valid() {
        for name in ["Qwen/Qwen2.5-0.5B", "a b*c>d", "~x", "日本語", "plain-name_1", ""] {
            let token = encode_token(name);
            assert!(token.chars().all(|c| c.is_ascii_alphanumeric() || "-_~".contains(c)), "{token}");
            assert_eq!(decode_token(&token).as_deref(), Some(name));
        }
        assert_ne!(encode_token("a.b"), encode_token("a~2Eb"));
    }

    #[test]
    fn subjects_have_one_token_per_part() {
        let subject = job(Lane::Interactive, JobKind::Chat, "Qwen/Qwen2.5-0.5B");
        assert_eq!(subject, "sy.job.interactive.chat.Qwen~2FQwen2~2E5-0~2E5B");
        assert_eq!(job(Lane::Batch, JobKind::Embedding, "m"), "sy.job.batch.embedding.m");
        assert_eq!(job_consumer(Lane::Batch, JobKind::Chat, "m"), "sy-batch-chat-m");
        assert_eq!(job_id_of(&reply("api-1", "01J")), Some("01J".into()));
        assert!(!job_consumer(Lane::Interactive, JobKind::Embedding, "a/b.c").contains(['.', '/', '*', '>', ' ']));
        for (lane, kind, model) in [(Lane::Batch, JobKind::Tool, "a-b/c.d"), (Lane::Interactive, JobKind::Chat, "Qwen/Qwen2.5-0.5B")] {
            assert_eq!(parse_job_consumer(&job_consumer(lane, kind, model)), Some((lane, kind, model.to_string())));
        }
        assert_eq!(parse_job_consumer("sy-interactive-bogus-m"), None);
        assert_eq!(parse_job_consumer("other"), None);
    }

    #[test]
    fn malformed_tokens_are_rejected() {
        assert_eq!(decode_token("a.b"), None);
        assert_eq!(decode_token("~G1"), None);
        assert_eq!(decode_token("~4"), None);
    }
}
