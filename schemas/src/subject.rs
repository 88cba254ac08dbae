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
/// Key-value bucket of batch line results, keyed by [`batch_result_key`]; written once per line.
pub const BATCH_RESULTS_BUCKET: &str = "SY_BATCH_RESULTS";

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

/// Subject a dead job is kept under: `sy.dead.<kind>.<model token>`.
pub fn dead_letter(kind: JobKind, model: &str) -> String {
    format!("sy.dead.{}.{}", kind.as_str(), encode_token(model))
}

/// Key of the result of line `line` (0-based) of batch `batch_id`: `<batch id>.<line>`. Batch
/// ids are Switchyard's own (`batch_` and a UUID), already valid key tokens.
pub fn batch_result_key(batch_id: &str, line: u64) -> String {
    format!("{batch_id}.{line}")
}

/// Every result key of one batch (a key-value watch filter).
pub fn batch_results_of(batch_id: &str) -> String {
    format!("{batch_id}.*")
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
    }

    #[test]
    fn malformed_tokens_are_rejected() {
        assert_eq!(decode_token("a.b"), None);
        assert_eq!(decode_token("~G1"), None);
        assert_eq!(decode_token("~4"), None);
    }
}
