//! Switchyard's scheduler: the work that outlives any one request and never sits on the
//! interactive path.
//!
//! * Dead letters: when JetStream gives up on a job after MaxDeliver attempts it publishes an
//!   advisory; the scheduler tells the waiting client (an error event on the job's reply
//!   subject), keeps the job in the `SY_DEAD` stream for inspection, and removes it from the
//!   work queue. No job ends silently.
//! * Registry reaping: expired worker entries, and model cards no worker has announced for the
//!   retention period.
//! * Batches ([`batches`]): OpenAI's Batch API, from validating the input file to writing
//!   the output and error files, with lines run as batch-lane jobs.
//! * Expired files (`/v1/files` with an expiry) are deleted.
//! * Resume answers for `/v1/jobs` jobs, whose events no api replica follows ([`resume`]).
//! * Health on HTTP (`GET /health`) and Prometheus metrics (`GET /metrics`, [`observe`]): lane
//!   depths, live workers and slots per model, batches, dead letters.
//!
//! Every task here is idempotent or claimed by one replica at a time, so several schedulers
//! can run side by side and any of them may be killed.

pub mod batches;
mod observe;
mod resume;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream;
use axum::Json;
use axum::extract::State;
use futures::StreamExt;
use switchyard_broker::parse_duration;
use switchyard_broker::registry::Registry;
use switchyard_schemas::{ErrorCode, EventBody, JobEnvelope, OUT_OF_BAND_SEQ, StreamEvent, decode, encode, subject};
use switchyard_telemetry::names;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

#[derive(Debug, Clone, clap::Args)]
pub struct SchedulerOptions {
    /// NATS server URL.
    #[arg(long, env = "SWITCHYARD_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// Redis URL: `redis://` (one server), `redis+cluster://h1:6379,h2:6379,…` (a Redis Cluster) or
    /// `redis+sentinel://s1:26379,…/<master name>` (the master Sentinel names).
    #[arg(long, env = "SWITCHYARD_REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    #[command(flatten)]
    pub auth: switchyard_broker::BrokerAuth,
    /// Address of the health endpoint.
    #[arg(long, env = "SWITCHYARD_SCHEDULER_LISTEN", default_value = "127.0.0.1:8081")]
    pub listen: SocketAddr,
    /// How often dead workers' registry entries are reaped.
    #[arg(long, env = "SWITCHYARD_REAP_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub reap_interval: Duration,
    /// How long a model without any live worker stays known (its requests queue, then 503)
    /// before it is forgotten (its requests get 404).
    #[arg(long, env = "SWITCHYARD_MODEL_RETENTION", default_value = "1h", value_parser = parse_duration)]
    pub model_retention: Duration,
    /// How often the lane, worker and batch gauges of `/metrics` are refreshed.
    #[arg(long, env = "SWITCHYARD_METRICS_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub metrics_interval: Duration,
    #[command(flatten)]
    pub batches: batches::BatchOptions,
}

#[derive(Default)]
struct Counters {
    dead_letters: AtomicU64,
    reaped_workers: AtomicU64,
    reaped_models: AtomicU64,
}

/// Runs the scheduler until `shutdown` fires.
pub async fn run_scheduler(options: SchedulerOptions, shutdown: CancellationToken) -> anyhow::Result<()> {
    let instance = format!("scheduler-{}", ulid::Ulid::new().to_string().to_lowercase());
    let nats = switchyard_broker::connect_nats(&options.nats_url, &instance, &options.auth).await?;
    let redis = switchyard_broker::connect_redis(&options.redis_url).await?;
    let js = jetstream::new(nats.clone());
    switchyard_broker::jobs::ensure_streams(&js).await?;
    let counters = Arc::new(Counters::default());
    // Batch lines wait in their lane as long as the batch's window lasts; its end cancels them.
    let timeouts = switchyard_client::JobTimeouts { queue: Duration::from_secs(24 * 3600), idle: options.batches.idle_timeout };
    let jobs = switchyard_client::Jobs::start(instance.clone(), nats.clone(), redis.clone(), timeouts).await?;
    let batches = batches::Batches::new(
        instance.clone(),
        batches::store::BatchStore::open(&js).await?,
        batches::store::Results::open(&js).await?,
        switchyard_broker::files::FileStore::open(&js).await?,
        jobs,
        redis.clone(),
        options.batches.clone(),
    );
    let batch_runner = tokio::spawn(batches.clone().run(shutdown.clone()));
    switchyard_telemetry::prometheus::install();
    let observer = tokio::spawn(observe::run(js.clone(), Registry::new(redis.clone()), batches.clone(), options.metrics_interval));
    let resumes = nats.queue_subscribe(subject::DURABLE_RESUMES, subject::SCHEDULER_GROUP.into()).await?;
    let resumer = tokio::spawn(resume::answer(js.clone(), nats.clone(), resumes));

    // One queue group for every scheduler replica: each advisory is handled once.
    let advisories = nats.queue_subscribe(subject::MAX_DELIVERIES_ADVISORY, subject::SCHEDULER_GROUP.into()).await?;
    let dead_letters = tokio::spawn(dead_letter_loop(js.clone(), nats.clone(), advisories, counters.clone()));
    let reaper = tokio::spawn(reap_loop(Registry::new(redis), options.reap_interval, options.model_retention, counters.clone()));

    let app = axum::Router::new()
        .route("/health", axum::routing::get(health))
        .route("/metrics", axum::routing::get(switchyard_telemetry::prometheus::metrics_handler))
        .with_state(Health { counters, batches });
    let listener = tokio::net::TcpListener::bind(options.listen).await.with_context(|| format!("cannot listen on {}", options.listen))?;
    info!(listen = %options.listen, "scheduler ready");
    axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await?;
    dead_letters.abort();
    observer.abort();
    reaper.abort();
    batch_runner.abort();
    resumer.abort();
    Ok(())
}

#[derive(Clone)]
struct Health {
    counters: Arc<Counters>,
    batches: Arc<batches::Batches>,
}

/// What `GET /health` answers: counters since this replica started.
#[derive(serde::Serialize)]
struct HealthBody {
    status: &'static str,
    dead_letters: u64,
    reaped_workers: u64,
    reaped_models: u64,
    batch_lines_recorded: u64,
}

async fn health(State(health): State<Health>) -> Json<HealthBody> {
    let counters = &health.counters;
    Json(HealthBody {
        status: "ok",
        dead_letters: counters.dead_letters.load(Ordering::Relaxed),
        reaped_workers: counters.reaped_workers.load(Ordering::Relaxed),
        reaped_models: counters.reaped_models.load(Ordering::Relaxed),
        batch_lines_recorded: health.batches.lines_done.load(Ordering::Relaxed),
    })
}

async fn reap_loop(registry: Registry, every: Duration, retention: Duration, counters: Arc<Counters>) {
    let mut ticker = tokio::time::interval(every);
    loop {
        ticker.tick().await;
        match registry.reap(retention).await {
            Ok(reaped) => {
                if reaped.workers + reaped.models > 0 {
                    info!(workers = reaped.workers, models = reaped.models, "reaped registry entries");
                }
                counters.reaped_workers.fetch_add(reaped.workers as u64, Ordering::Relaxed);
                counters.reaped_models.fetch_add(reaped.models as u64, Ordering::Relaxed);
            }
            Err(e) => warn!(error = %e, "reaping the registry failed"),
        }
    }
}

#[derive(serde::Deserialize)]
struct MaxDeliveriesAdvisory {
    stream_seq: u64,
    deliveries: u64,
}

async fn dead_letter_loop(
    js: jetstream::Context,
    nats: async_nats::Client,
    mut advisories: async_nats::Subscriber,
    counters: Arc<Counters>,
) {
    while let Some(message) = advisories.next().await {
        let Ok(advisory) = serde_json::from_slice::<MaxDeliveriesAdvisory>(&message.payload) else {
            warn!("unreadable max-deliveries advisory");
            continue;
        };
        match dead_letter(&js, &nats, &advisory).await {
            Ok(envelope) => {
                let job_id = envelope.id;
                counters.dead_letters.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(names::DEAD_LETTERS, "model" => envelope.model, "kind" => envelope.kind.as_str()).increment(1);
                warn!(job_id, deliveries = advisory.deliveries, "job failed every delivery; dead-lettered");
            }
            Err(e) => warn!(stream_seq = advisory.stream_seq, error = %e, "dead-lettering failed"),
        }
    }
}

/// Tells the client, keeps the job in `SY_DEAD`, removes it from the work queue.
async fn dead_letter(js: &jetstream::Context, nats: &async_nats::Client, advisory: &MaxDeliveriesAdvisory) -> anyhow::Result<JobEnvelope> {
    let stream = js.get_stream(subject::JOBS_STREAM).await?;
    let message = stream.get_raw_message(advisory.stream_seq).await?;
    let envelope: JobEnvelope = decode(&message.payload)?;
    let error = StreamEvent::single(
        envelope.id.clone(),
        OUT_OF_BAND_SEQ,
        EventBody::error(
            ErrorCode::MaxDeliveriesExceeded,
            format!(
                "The job failed on {} workers in a row (each stopped without finishing it); it was moved to the dead letters.",
                advisory.deliveries
            ),
        ),
    );
    nats.publish(envelope.reply_to.clone(), encode(&error)?.into()).await?;
    js.publish(subject::dead_letter(envelope.kind, &envelope.model), message.payload.clone()).await?.await?;
    stream.delete_message(advisory.stream_seq).await?;
    Ok(envelope)
}
