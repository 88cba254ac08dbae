//! Submitting jobs to Switchyard's queue and receiving their events, for anyone who publishes
//! jobs: the api (interactive requests), the scheduler (batch lines), and services that talk to
//! NATS directly.
//!
//! Each [`Jobs`] instance subscribes once to `sy.reply.<instance>.*` and routes events to the
//! request waiting for them, checking sequence numbers on the way: a duplicate is dropped, a
//! gap ends the job with a `stream_gap` error. It also remembers what each job has delivered,
//! so when a worker dies and JetStream hands the job to another, that worker can ask (on
//! `sy.resume.<instance>.<job>`) where to continue — the client never sees text twice.
//!
//! A [`JobHandle`] dropped before its job finished (the client went away) cancels the job.
//!
//! A direct publisher on a secured broker (`broker-config/secure/`) connects as its own NATS
//! user, whose permissions name its instance: it may publish jobs for its models only, and
//! subscribe only to `sy.reply.<instance>.*`, `sy.resume.<instance>.*` and its own inbox prefix
//! (where JetStream's publish acknowledgements arrive). So it picks its instance name and inbox
//! prefix to match, and starts with [`Jobs::start_publisher`], which touches no JetStream API:
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use switchyard_client::{BrokerAuth, JobTimeouts, Jobs};
//! let auth = BrokerAuth { nats_inbox_prefix: Some("_INBOX_orders".into()), ..Default::default() };
//! let nats = switchyard_client::connect_nats("nats://orders:secret@nats:4222", "orders", &auth).await?;
//! // Optional: with Redis, a cancelled job is also skipped by workers that start later.
//! let redis = switchyard_client::connect_redis("redis://publisher:secret@redis:6379").await?;
//! let timeouts = JobTimeouts { queue: std::time::Duration::from_secs(30), idle: std::time::Duration::from_secs(120) };
//! let jobs = Jobs::start_publisher("orders".into(), nats, Some(redis), timeouts).await?;
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures::StreamExt;
use switchyard_schemas::{
    ErrorCode, EventBody, JobEnvelope, JobRequest, Lane, OUT_OF_BAND_SEQ, ResumeState, StreamEvent, WIRE_VERSION, decode, encode, now_ms,
    subject,
};
use switchyard_telemetry::jobs::{JobWatch, Unanswered};
use tokio::sync::mpsc;
use tracing::{debug, warn};

pub use switchyard_broker::{BrokerAuth, BrokerError, connect_nats, connect_redis};

/// Why a job's events stopped coming without a terminal event.
#[derive(Debug, Clone, thiserror::Error)]
pub enum JobError {
    /// NATS did not take the job.
    #[error("The job queue did not accept the job: {0}")]
    Unavailable(String),
    /// No worker started the job in time: the model has no live worker, or all are busy.
    #[error(
        "No worker took the job within {:.1}s: the model has no live worker, or all of its workers are busy. Try again later.",
        .0.as_secs_f64()
    )]
    NotStarted(Duration),
    /// The worker running the job sent nothing for too long.
    #[error("The worker running this job went silent for {:.0}s.", .0.as_secs_f64())]
    Silent(Duration),
    /// This client stopped routing the job's events (it is shutting down), or was misused.
    #[error("{0}")]
    Internal(String),
}

/// How long a job may wait: for a worker to start it, then between its events.
#[derive(Debug, Clone, Copy)]
pub struct JobTimeouts {
    /// How long a job waits for a worker to start it.
    pub queue: Duration,
    /// How long a started job may go without an event.
    pub idle: Duration,
}

/// Where a job's events and resume requests go, and when nobody wants it any more.
#[derive(Debug, Clone)]
pub struct Route {
    pub reply_to: String,
    pub resume_to: String,
    /// Unix ms after which a worker skips the job.
    pub deadline_ms: Option<u64>,
}

pub struct Jobs {
    instance: String,
    nats: async_nats::Client,
    js: jetstream::Context,
    /// Where cancel flags go; a publisher without Redis only announces cancellations.
    redis: Option<switchyard_broker::Redis>,
    inflight: Mutex<HashMap<String, Inflight>>,
    timeouts: JobTimeouts,
    /// Whether the servers form a cluster, where a job's publish is retried through a leader
    /// election (see [`PUBLISH_RETRY_WINDOW`]).
    clustered: bool,
}

struct Inflight {
    tx: mpsc::UnboundedSender<EventBody>,
    /// What was delivered so far (text, tool calls, chunks) and the next sequence number: what
    /// a resuming worker continues after.
    progress: ResumeState,
}

impl Jobs {
    /// Starts routing the events of jobs submitted through this instance, after creating or
    /// updating the job streams (the api and the scheduler; needs the JetStream API).
    /// `instance` names the reply subjects (`sy.reply.<instance>.*`): unique per process.
    pub async fn start(
        instance: String,
        nats: async_nats::Client,
        redis: switchyard_broker::Redis,
        timeouts: JobTimeouts,
    ) -> Result<Arc<Jobs>, switchyard_broker::BrokerError> {
        switchyard_broker::jobs::ensure_streams(&jetstream::new(nats.clone())).await?;
        // Placing the streams showed whether the servers form a cluster.
        let clustered = switchyard_broker::placement::replicas().0 > 1;
        Self::start_routing(instance, nats, Some(redis), timeouts, clustered).await
    }

    /// Starts a direct publisher: like [`Jobs::start`], but it leaves the streams to the parts
    /// that own them and uses no JetStream API, only publishes (of jobs and cancellations) and
    /// its own reply, resume and inbox subjects — what the secured broker's publisher role
    /// allows. `instance` must be the one its permissions name. Without `redis` a cancellation
    /// is only announced (see [`switchyard_broker::cancel::announce_cancel`]).
    pub async fn start_publisher(
        instance: String,
        nats: async_nats::Client,
        redis: Option<switchyard_broker::Redis>,
        timeouts: JobTimeouts,
    ) -> Result<Arc<Jobs>, switchyard_broker::BrokerError> {
        let clustered = nats.server_info().cluster.is_some();
        Self::start_routing(instance, nats, redis, timeouts, clustered).await
    }

    async fn start_routing(
        instance: String,
        nats: async_nats::Client,
        redis: Option<switchyard_broker::Redis>,
        timeouts: JobTimeouts,
        clustered: bool,
    ) -> Result<Arc<Jobs>, switchyard_broker::BrokerError> {
        let js = jetstream::new(nats.clone());
        let jobs = Arc::new(Jobs { instance, nats: nats.clone(), js, redis, inflight: Mutex::new(HashMap::new()), timeouts, clustered });
        let subscribe_err = |e: async_nats::SubscribeError| switchyard_broker::BrokerError::Nats(format!("cannot subscribe: {e}"));
        let replies = nats.subscribe(subject::replies_of(&jobs.instance)).await.map_err(subscribe_err)?;
        let resumes = nats.subscribe(subject::resumes_of(&jobs.instance)).await.map_err(subscribe_err)?;
        tokio::spawn(route_events(Arc::downgrade(&jobs), replies));
        tokio::spawn(answer_resumes(Arc::downgrade(&jobs), resumes));
        Ok(jobs)
    }

    /// The instance name of this client's reply and resume subjects.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Publishes a job in `lane` and returns the handle its events arrive on. The job is in
    /// JetStream (acknowledged) when this returns.
    pub async fn submit(self: &Arc<Self>, lane: Lane, model: &str, request: JobRequest) -> Result<JobHandle, JobError> {
        self.submit_since(lane, model, request, Instant::now()).await
    }

    /// [`Self::submit`] for a request that arrived at `arrived`: its time to first token and
    /// end-to-end latency ([`switchyard_telemetry::jobs`]) count from then.
    pub async fn submit_since(
        self: &Arc<Self>,
        lane: Lane,
        model: &str,
        request: JobRequest,
        arrived: Instant,
    ) -> Result<JobHandle, JobError> {
        let id = ulid::Ulid::new().to_string();
        let timeouts = self.timeouts;
        let deadline = now_ms() + timeouts.idle.as_millis() as u64 + timeouts.queue.as_millis() as u64;
        let route = Route {
            reply_to: subject::reply(&self.instance, &id),
            resume_to: subject::resume(&self.instance, &id),
            deadline_ms: Some(deadline),
        };
        let (tx, rx) = mpsc::unbounded_channel();
        // Listen before publishing: a fast worker may answer before the publish ack arrives.
        self.inflight.lock().unwrap().insert(id.clone(), Inflight { tx, progress: ResumeState::start() });
        let watch = JobWatch::submitted(model, lane, arrived);
        let mut handle = JobHandle { id: id.clone(), rx, jobs: self.clone(), started: false, finished: false, watch };
        if let Err(e) = self.publish(id, lane, model, request, route).await {
            handle.watch.unanswered(Unanswered::NotQueued);
            handle.finished = true;
            return Err(e);
        }
        Ok(handle)
    }

    /// Publishes a job whose events go where `route` says (the events stream, for a job that
    /// outlives its request) instead of to this instance; nothing here follows them.
    pub async fn submit_detached(&self, id: String, lane: Lane, model: &str, request: JobRequest, route: Route) -> Result<(), JobError> {
        self.publish(id, lane, model, request, route).await
    }

    async fn publish(&self, id: String, lane: Lane, model: &str, request: JobRequest, route: Route) -> Result<(), JobError> {
        let kind = request.kind();
        let envelope = JobEnvelope {
            v: WIRE_VERSION,
            id: id.clone(),
            kind,
            model: model.to_string(),
            request,
            lane,
            deadline_ms: route.deadline_ms,
            reply_to: route.reply_to,
            resume_to: route.resume_to,
            // The submitting span (the api's request) continues in the worker's.
            traceparent: switchyard_telemetry::trace_context::traceparent(&tracing::Span::current()),
            created_ms: now_ms(),
        };
        tracing::Span::current().record("job_id", id.as_str());
        let payload = encode(&envelope).map_err(|e| JobError::Internal(e.to_string()))?;
        let job_subject = subject::job(lane, kind, model);
        let payload = bytes::Bytes::from(payload);
        // On a cluster a publish is retried through an election, so it carries the job id as its
        // message id: the jobs stream drops a second copy of a job whose first was stored but
        // not acknowledged. One server never retries, and spares the stream that bookkeeping.
        let clustered = self.clustered;
        let mut headers = async_nats::HeaderMap::new();
        if clustered {
            headers.insert("Nats-Msg-Id", id.as_str());
        }
        let give_up = Instant::now() + PUBLISH_RETRY_WINDOW.min(self.timeouts.queue);
        let mut pause = Duration::from_millis(100);
        loop {
            let published = async {
                self.js.publish_with_headers(job_subject.clone(), headers.clone(), payload.clone()).await?.await?;
                Ok::<_, async_nats::jetstream::context::PublishError>(())
            };
            match published.await {
                Ok(()) => break,
                Err(e) if clustered && retry_publish(&e) && Instant::now() + pause < give_up => {
                    debug!(job_id = %id, model, error = %e, "the jobs stream did not take the job; retrying while JetStream elects a leader");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
                Err(e) => return Err(JobError::Unavailable(describe_publish_error(&job_subject, &e))),
            }
        }
        debug!(job_id = %id, model, "job queued");
        Ok(())
    }

    /// Cancels a job (queued or running) by id, whoever submitted it.
    pub async fn cancel(&self, job_id: &str) -> Result<(), switchyard_broker::BrokerError> {
        match &self.redis {
            Some(redis) => switchyard_broker::cancel::cancel_job(redis, &self.nats, job_id).await,
            None => switchyard_broker::cancel::announce_cancel(&self.nats, job_id).await,
        }
    }

    fn cancel_in_background(self: &Arc<Self>, job_id: String) {
        let jobs = self.clone();
        tokio::spawn(async move {
            if let Err(e) = jobs.cancel(&job_id).await {
                warn!(job_id, error = %e, "cancelling job failed");
            }
        });
    }
}

/// How long a job's publish is retried on a NATS cluster when the jobs stream does not take it:
/// while JetStream elects a new leader for the stream after its node died (nats-server's
/// election timers run out in 4 to 9 s), nobody answers on the job subjects, or nobody in time.
/// Never longer than the queue timeout.
const PUBLISH_RETRY_WINDOW: Duration = Duration::from_secs(12);

/// Whether a publish to a cluster that failed with `error` is worth retrying: no stream answered,
/// or none acknowledged in time — what a client sees while the jobs stream has no leader.
fn retry_publish(error: &async_nats::jetstream::context::PublishError) -> bool {
    use async_nats::jetstream::context::PublishErrorKind;
    matches!(error.kind(), PublishErrorKind::StreamNotFound | PublishErrorKind::TimedOut)
}

/// Why a job's publish was not acknowledged, with what to check. A permission violation is not
/// answered (the server drops the message and reports it on the connection), so on a secured
/// broker a job for a model the publisher is not granted ends in a timeout here.
fn describe_publish_error(job_subject: &str, error: &async_nats::jetstream::context::PublishError) -> String {
    use async_nats::jetstream::context::PublishErrorKind;
    match error.kind() {
        PublishErrorKind::TimedOut => format!(
            "{error}: no acknowledgement for {job_subject}. JetStream may be unavailable, or this connection may not publish \
             there (on a secured broker: the model is not granted to this publisher, or its inbox prefix is not its own)"
        ),
        PublishErrorKind::StreamNotFound => {
            format!("{error}: no stream takes {job_subject}; the api, scheduler and workers create it when they start")
        }
        _ => format!("{error} (publishing {job_subject})"),
    }
}

/// One job's events, in order, ending with `Done` or `Error`.
pub struct JobHandle {
    id: String,
    rx: mpsc::UnboundedReceiver<EventBody>,
    jobs: Arc<Jobs>,
    started: bool,
    finished: bool,
    /// Its metrics; dropped unfinished, it counts the job as cancelled.
    watch: JobWatch,
}

impl JobHandle {
    /// The job's id (its cancellation and its log lines carry it).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The next event. Fails with 503 if no worker starts the job within the queue timeout,
    /// and with an error if a started job goes silent for longer than the idle timeout.
    pub async fn next(&mut self) -> Result<EventBody, JobError> {
        if self.finished {
            return Err(JobError::Internal("read past the end of a job".into()));
        }
        let wait = if self.started { self.jobs.timeouts.idle } else { self.jobs.timeouts.queue };
        // Events often arrive together (one message holds several): no timer for those waiting.
        let received = match self.rx.try_recv() {
            Ok(event) => Ok(Some(event)),
            Err(_) => tokio::time::timeout(wait, self.rx.recv()).await,
        };
        match received {
            Ok(Some(event)) => {
                if matches!(event, EventBody::Started { .. }) {
                    self.started = true;
                }
                self.watch.event(&event);
                self.finished = event.is_terminal();
                // A gap is terminal for the client, but the worker is still running: cancel it.
                if matches!(event, EventBody::Error { code: ErrorCode::StreamGap, .. }) {
                    self.jobs.cancel_in_background(self.id.clone());
                }
                Ok(event)
            }
            Ok(None) => Err(JobError::Internal("the job's event route closed".into())),
            Err(_) if !self.started => {
                self.watch.unanswered(Unanswered::QueueTimeout);
                Err(JobError::NotStarted(wait))
            }
            Err(_) => {
                self.watch.unanswered(Unanswered::IdleTimeout);
                Err(JobError::Silent(wait))
            }
        }
    }

    /// Like [`Self::next`], but skips `Started`.
    pub async fn next_output(&mut self) -> Result<EventBody, JobError> {
        loop {
            match self.next().await? {
                EventBody::Started { .. } => continue,
                event => return Ok(event),
            }
        }
    }

    /// Turns the handle into a stream of output events that ends after the terminal one (an
    /// `Err` is terminal too).
    pub fn into_stream(self) -> impl futures::Stream<Item = Result<EventBody, JobError>> + Send {
        futures::stream::unfold(Some(self), |handle| async move {
            let mut handle = handle?;
            let event = handle.next_output().await;
            let done = event.as_ref().map_or(true, EventBody::is_terminal);
            Some((event, if done { None } else { Some(handle) }))
        })
    }
}

impl Drop for JobHandle {
    fn drop(&mut self) {
        self.jobs.inflight.lock().unwrap().remove(&self.id);
        if !self.finished {
            debug!(job_id = %self.id, "request ended before its job: cancelling");
            self.jobs.cancel_in_background(self.id.clone());
        }
    }
}

async fn route_events(jobs: std::sync::Weak<Jobs>, mut replies: async_nats::Subscriber) {
    while let Some(message) = replies.next().await {
        let Some(jobs) = jobs.upgrade() else { return };
        let message: StreamEvent = match decode(&message.payload) {
            Ok(message) => message,
            Err(e) => {
                warn!(subject = %message.subject, error = %e, "undecodable event dropped");
                continue;
            }
        };
        let mut inflight = jobs.inflight.lock().unwrap();
        let Some(job) = inflight.get_mut(&message.job_id) else { continue };
        let expected = job.progress.next_seq;
        if message.seq != OUT_OF_BAND_SEQ {
            if message.seq < expected {
                debug!(job_id = %message.job_id, seq = message.seq, "duplicate message dropped");
                continue;
            }
            if message.seq > expected {
                let text = format!(
                    "Lost messages {expected}..{} of this job between worker and api; the output would be incomplete.",
                    message.seq
                );
                let _ = job.tx.send(EventBody::error(ErrorCode::StreamGap, text));
                job.progress.next_seq = u64::MAX - 1;
                continue;
            }
            job.progress.next_seq += 1;
        }
        for event in message.events {
            job.progress.record(&event);
            let _ = job.tx.send(event);
        }
    }
}

async fn answer_resumes(jobs: std::sync::Weak<Jobs>, mut requests: async_nats::Subscriber) {
    while let Some(request) = requests.next().await {
        let Some(jobs) = jobs.upgrade() else { return };
        let Some(reply) = request.reply else { continue };
        let state = subject::job_id_of(&request.subject)
            .and_then(|id| {
                // Still in flight, so still wanted, whatever it streamed.
                jobs.inflight.lock().unwrap().get(&id).map(|job| ResumeState { wanted: true, ..job.progress.clone() })
            })
            .unwrap_or(ResumeState { v: WIRE_VERSION, ..Default::default() });
        if let Ok(bytes) = encode(&state) {
            let _ = jobs.nats.publish(reply, bytes.into()).await;
        }
    }
}
