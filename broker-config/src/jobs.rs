//! JetStream layout for jobs.
//!
//! `SY_JOBS` is a work-queue stream over `sy.job.>`: a job stays until one worker acknowledges
//! it. Each lane of each (kind, model) has one durable pull consumer that all its workers share
//! (the interactive and the batch lane are two consumers on disjoint subjects), so JetStream
//! hands each job to exactly one of them and redelivers it when that worker dies (its ack wait
//! lapses without an in-progress ack). After `max_deliver` attempts JetStream gives up and
//! publishes an advisory; the scheduler turns that into an error event and a dead letter.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use switchyard_schemas::{JobKind, Lane, subject};

use crate::BrokerError;
pub use crate::placement::ensure_stream;

/// How jobs are acknowledged and retried. Every worker of a model must agree, so the defaults
/// are what all parts use unless an operator overrides them everywhere.
#[derive(Debug, Clone, Copy)]
pub struct QueuePolicy {
    /// How long a worker may stay silent about a job before it is redelivered. Workers send
    /// in-progress acks at a third of this while they run a job.
    pub ack_wait: Duration,
    /// Attempts before a job is given up on and dead-lettered.
    pub max_deliver: i64,
}

impl Default for QueuePolicy {
    fn default() -> Self {
        Self { ack_wait: Duration::from_secs(10), max_deliver: 3 }
    }
}

/// Creates or updates both streams, with the replica count of [`crate::placement::replicas`]
/// (R1 on one server, R3 on a cluster, or `--stream-replicas`). Fails with
/// [`BrokerError::JetStreamOff`] when the server has JetStream disabled, rather than a cryptic
/// timeout later, and with [`BrokerError::Placement`] when the servers cannot hold the replicas.
pub async fn ensure_streams(js: &jetstream::Context) -> Result<(), BrokerError> {
    query_account(js).await?;
    ensure_stream(
        js,
        stream::Config {
            name: subject::JOBS_STREAM.into(),
            subjects: vec![subject::JOBS_SUBJECTS.into()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            // A job nobody picks up in a day is not wanted any more.
            max_age: Duration::from_secs(24 * 3600),
            // The job id is the message id: a publish retried after a lost ack is not run twice.
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        },
    )
    .await?;
    ensure_stream(
        js,
        stream::Config {
            name: subject::DEAD_LETTER_STREAM.into(),
            subjects: vec![subject::DEAD_LETTER_SUBJECTS.into()],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            max_age: Duration::from_secs(7 * 24 * 3600),
            ..Default::default()
        },
    )
    .await?;
    Ok(())
}

/// Checks that JetStream answers, waiting (up to [`crate::placement::PLACEMENT_WAIT`]) for a
/// cluster that is still electing its meta leader; [`BrokerError::JetStreamOff`] otherwise.
pub(crate) async fn query_account(js: &jetstream::Context) -> Result<(), BrokerError> {
    let start = std::time::Instant::now();
    loop {
        match js.query_account().await {
            Ok(_) => return Ok(()),
            // A server without JetStream says so at once ("no responders"); a cluster still
            // electing its meta leader does not answer.
            Err(e) if !e.to_string().contains("timed out") || start.elapsed() >= crate::placement::PLACEMENT_WAIT => {
                return Err(BrokerError::JetStreamOff(e.to_string()));
            }
            Err(e) => {
                tracing::debug!("JetStream not answering yet ({e}); retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Creates or updates the shared durable consumer of `lane` of (`kind`, `model`).
pub async fn ensure_consumer(
    js: &jetstream::Context,
    lane: Lane,
    kind: JobKind,
    model: &str,
    policy: QueuePolicy,
) -> Result<consumer::PullConsumer, BrokerError> {
    let name = subject::job_consumer(lane, kind, model);
    let stream = js
        .get_stream(subject::JOBS_STREAM)
        .await
        .map_err(|e| BrokerError::JetStream(format!("opening stream {}: {e}", subject::JOBS_STREAM)))?;
    stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some(name.clone()),
            filter_subject: subject::job(lane, kind, model),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: policy.ack_wait,
            max_deliver: policy.max_deliver,
            // Pull requests from every worker of a model wait here at once.
            max_waiting: 4096,
            max_ack_pending: 100_000,
            // A consumer whose workers are all gone for a day is cleaned up by the server.
            inactive_threshold: Duration::from_secs(24 * 3600),
            ..Default::default()
        })
        .await
        .map_err(|e| BrokerError::JetStream(format!("creating consumer {name}: {e}")))
}

/// Creates or updates the stream that keeps the events of jobs that outlive their request
/// (`/v1/jobs`) for `retention`. Workers publish those events as usual; the stream captures them.
pub async fn ensure_events_stream(js: &jetstream::Context, retention: Duration) -> Result<(), BrokerError> {
    ensure_stream(
        js,
        stream::Config {
            name: subject::EVENTS_STREAM.into(),
            subjects: vec![subject::EVENTS_SUBJECTS.into()],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            max_age: retention,
            ..Default::default()
        },
    )
    .await?;
    Ok(())
}

/// Every message on `subject` of the events stream so far, in order, decoded.
pub async fn read_events(js: &jetstream::Context, subject: String) -> Result<Vec<(u64, switchyard_schemas::StreamEvent)>, BrokerError> {
    use futures::StreamExt;
    let fail = |e: &dyn std::fmt::Display| BrokerError::JetStream(format!("reading {subject}: {e}"));
    let stream = js.get_stream(subject::EVENTS_STREAM).await.map_err(|e| fail(&e))?;
    let mut consumer = stream
        .create_consumer(consumer::pull::OrderedConfig { filter_subject: subject.clone(), ..Default::default() })
        .await
        .map_err(|e| fail(&e))?;
    let pending = consumer.info().await.map_err(|e| fail(&e))?.num_pending as usize;
    let mut messages = consumer.messages().await.map_err(|e| fail(&e))?.take(pending);
    let mut events = Vec::with_capacity(pending);
    while let Some(message) = messages.next().await {
        let message = message.map_err(|e| fail(&e))?;
        let seq = message.info().map(|info| info.stream_sequence).unwrap_or(0);
        if let Ok(event) = switchyard_schemas::decode(&message.payload) {
            events.push((seq, event));
        }
    }
    Ok(events)
}
