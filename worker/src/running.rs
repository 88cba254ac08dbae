//! The jobs a worker is running, and what it knows about cancellations.
//!
//! A job is cancelled two ways (see `switchyard_broker::cancel`): a flag in Redis and an
//! announcement on NATS. Every worker hears every announcement. One for a job running here
//! fires its token; one for any other job is remembered for a while, because that job may
//! still be in the queue and land here later, when it is skipped. So a job published after
//! this worker started listening, on its first delivery and not too old, has its answer here
//! already, and the Redis round trip stays off the path of nearly every job. Anything else —
//! a redelivery, a job older than the memory, a job published before we listened or while
//! the NATS connection was down — is checked against the Redis flag.
//!
//! The same table drives the in-progress acks that keep running jobs from being redelivered:
//! one task for the whole worker instead of a timer per job.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::Subject;
use async_nats::jetstream::AckKind;
use switchyard_schemas::now_ms;
use tokio_util::sync::CancellationToken;

/// How long an announcement for a job not running here is remembered.
const HEARD_FOR: Duration = Duration::from_secs(600);
/// At most this many remembered announcements; older ones are forgotten first.
const HEARD_MAX: usize = 100_000;
/// A job created longer ago than this (by the api's clock) is checked in Redis: its
/// announcement may be older than what we remember, even with some clock skew.
const TRUST_AGE_MS: u64 = 60_000;

/// What a pulled job's cancellation status is, as far as this worker can tell without Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Heard {
    /// Cancelled: skip it.
    Cancelled,
    /// Certainly not cancelled yet; a later announcement fires the job's token.
    NotCancelled,
    /// Unknown: check the Redis flag.
    AskRedis,
}

/// A pulled job as far as cancellation cares.
pub(crate) struct Pulled<'a> {
    pub job_id: &'a str,
    pub attempt: u32,
    pub stream_seq: u64,
    pub created_ms: u64,
}

pub(crate) struct RunningJobs {
    state: Mutex<State>,
    /// The NATS client's connect count when `listening_after_seq` was read: a reconnect since
    /// then may have lost announcements.
    connects_at_baseline: AtomicU64,
}

struct State {
    running: HashMap<String, Running>,
    heard: HashMap<String, Instant>,
    heard_order: VecDeque<(Instant, String)>,
    /// Announcements forgotten early (`HEARD_MAX`) until this instant: trust nothing we remember.
    forgetful_until: Option<Instant>,
    /// Jobs with a higher stream sequence were published while we were listening.
    listening_after_seq: u64,
}

struct Running {
    cancel: CancellationToken,
    ack_subject: Option<Subject>,
}

impl RunningJobs {
    pub fn new() -> Self {
        Self {
            state: Mutex::new(State {
                running: HashMap::new(),
                heard: HashMap::new(),
                heard_order: VecDeque::new(),
                forgetful_until: None,
                listening_after_seq: u64::MAX,
            }),
            connects_at_baseline: AtomicU64::new(u64::MAX),
        }
    }

    /// Records that announcements reach us for every job published after stream sequence
    /// `last_seq`, as of the client's `connects`-th connection.
    pub fn listening_after(&self, last_seq: u64, connects: u64) {
        self.state.lock().unwrap().listening_after_seq = last_seq;
        self.connects_at_baseline.store(connects, Ordering::SeqCst);
    }

    /// Whether the baseline is from an older connection than `connects` (announcements may
    /// have been lost in between, so it needs reading again).
    pub fn baseline_stale(&self, connects: u64) -> bool {
        self.connects_at_baseline.load(Ordering::SeqCst) != connects
    }

    /// Registers a pulled job as running (so announcements from now on fire `cancel`) and says
    /// whether it was cancelled before. `connects` is the NATS client's connect count now.
    pub fn start(&self, job: &Pulled, connects: u64, cancel: CancellationToken, ack_subject: Option<Subject>) -> Heard {
        let mut state = self.state.lock().unwrap();
        state.running.insert(job.job_id.to_string(), Running { cancel, ack_subject });
        if state.heard.contains_key(job.job_id) {
            return Heard::Cancelled;
        }
        let young = now_ms().abs_diff(job.created_ms) < TRUST_AGE_MS;
        let listened_throughout = job.stream_seq > state.listening_after_seq && !self.baseline_stale(connects);
        let remembers_all = state.forgetful_until.is_none_or(|until| Instant::now() >= until);
        if job.attempt == 1 && young && listened_throughout && remembers_all { Heard::NotCancelled } else { Heard::AskRedis }
    }

    pub fn finish(&self, job_id: &str) {
        self.state.lock().unwrap().running.remove(job_id);
    }

    /// Handles a cancel announcement.
    pub fn announced(&self, job_id: &str) {
        let mut state = self.state.lock().unwrap();
        if let Some(job) = state.running.get(job_id) {
            tracing::info!(job_id, "cancel announced");
            job.cancel.cancel();
            return;
        }
        let now = Instant::now();
        while let Some((at, _)) = state.heard_order.front() {
            let too_many = state.heard_order.len() >= HEARD_MAX;
            if now.duration_since(*at) < HEARD_FOR && !too_many {
                break;
            }
            if too_many {
                state.forgetful_until = Some(now + HEARD_FOR);
            }
            let (_, old) = state.heard_order.pop_front().expect("front exists");
            state.heard.remove(&old);
        }
        state.heard.insert(job_id.to_string(), now);
        state.heard_order.push_back((now, job_id.to_string()));
    }

    /// Cancels every running job (a drain that timed out).
    pub fn cancel_all(&self) {
        for job in self.state.lock().unwrap().running.values() {
            job.cancel.cancel();
        }
    }

    /// Sends an in-progress ack for every running job.
    pub async fn keep_alive(&self, nats: &async_nats::Client) {
        let subjects: Vec<Subject> = self.state.lock().unwrap().running.values().filter_map(|job| job.ack_subject.clone()).collect();
        for subject in subjects {
            let _ = nats.publish(subject, AckKind::Progress.into()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pulled(job_id: &str, stream_seq: u64) -> Pulled<'_> {
        Pulled { job_id, attempt: 1, stream_seq, created_ms: now_ms() }
    }

    #[test]
    fn only_jobs_published_while_listening_skip_redis() {
        let jobs = RunningJobs::new();
        assert_eq!(jobs.start(&pulled("a", 5), 1, CancellationToken::new(), None), Heard::AskRedis, "no baseline yet");
        jobs.listening_after(10, 1);
        assert_eq!(jobs.start(&pulled("b", 10), 1, CancellationToken::new(), None), Heard::AskRedis, "published before");
        assert_eq!(jobs.start(&pulled("c", 11), 1, CancellationToken::new(), None), Heard::NotCancelled);
        assert_eq!(jobs.start(&pulled("d", 12), 2, CancellationToken::new(), None), Heard::AskRedis, "reconnected since");
        let redelivered = Pulled { attempt: 2, ..pulled("e", 13) };
        assert_eq!(jobs.start(&redelivered, 1, CancellationToken::new(), None), Heard::AskRedis);
        let old = Pulled { created_ms: now_ms() - 2 * TRUST_AGE_MS, ..pulled("f", 14) };
        assert_eq!(jobs.start(&old, 1, CancellationToken::new(), None), Heard::AskRedis);
    }

    #[test]
    fn announcements_cancel_running_jobs_and_are_remembered_for_queued_ones() {
        let jobs = RunningJobs::new();
        jobs.listening_after(0, 1);
        let token = CancellationToken::new();
        assert_eq!(jobs.start(&pulled("running", 1), 1, token.clone(), None), Heard::NotCancelled);
        jobs.announced("running");
        assert!(token.is_cancelled());
        jobs.announced("queued");
        assert_eq!(jobs.start(&pulled("queued", 2), 1, CancellationToken::new(), None), Heard::Cancelled);
    }
}
