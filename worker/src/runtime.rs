//! The worker runtime: everything between JetStream and a [`Backend`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use futures::StreamExt;
pub use switchyard_broker::parse_duration;
use switchyard_broker::{cancel, jobs, registry::Registry};
use switchyard_schemas::{
    ErrorCode, EventBody, JobEnvelope, Lane, ModelCard, Permissions, RateLimits, ResumeState, StreamEvent, WIRE_VERSION, WorkerRecord,
    decode, encode, now_ms, subject,
};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, info_span, warn};

use crate::backend::{Backend, BackendError, Job};
use crate::observe::{self, WorkerMetrics};
use crate::running::{Heard, Pulled, RunningJobs};
use crate::sink::{self, EventSink};
use crate::slots::{Slot, Slots};

/// Flags every worker shares, whatever its backend.
#[derive(Debug, Clone, clap::Args)]
pub struct RuntimeOptions {
    /// NATS server URL.
    #[arg(long, env = "SWITCHYARD_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// Redis URL: `redis://` (one server), `redis+cluster://h1:6379,h2:6379,…` (a Redis Cluster) or
    /// `redis+sentinel://s1:26379,…/<master name>` (the master Sentinel names).
    #[arg(long, env = "SWITCHYARD_REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    #[command(flatten)]
    pub auth: switchyard_broker::BrokerAuth,
    /// Jobs this worker runs at once; it never pulls more than it has free slots for.
    /// Default: the backend's (echo and dummy 256; torch as many as its engine batches).
    #[arg(long, env = "SWITCHYARD_SLOTS")]
    pub slots: Option<u32>,
    /// Slots never given to batch jobs (batch lines, `/v1/jobs`), so an interactive request
    /// always finds one. Default: 1, or 0 on a one-slot worker (which then takes a batch job
    /// only when no interactive job is waiting). A reserve of all slots takes no batch work.
    #[arg(long, env = "SWITCHYARD_BATCH_RESERVE")]
    pub batch_reserve: Option<u32>,
    /// How often the worker refreshes its registry entry; it expires after three missed beats.
    #[arg(long, env = "SWITCHYARD_HEARTBEAT", default_value = "2s", value_parser = parse_duration)]
    pub heartbeat: Duration,
    /// On SIGTERM: how long to let running jobs finish before handing them back to the queue.
    #[arg(long, env = "SWITCHYARD_DRAIN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// How long a job may go without an in-progress ack before JetStream redelivers it.
    /// Must be the same for every worker of a model.
    #[arg(long, env = "SWITCHYARD_ACK_WAIT", default_value = "10s", value_parser = parse_duration)]
    pub ack_wait: Duration,
    /// Deliveries before a job is dead-lettered. Must be the same for every worker of a model.
    #[arg(long, env = "SWITCHYARD_MAX_DELIVER", default_value_t = 3)]
    pub max_deliver: i64,
    /// Who may use this worker's models, in HepAI's form: `groups: default; users: a, b; owner: c`.
    /// Keys created without `--group` are in group `default`, so the default lets every key in.
    #[arg(long, env = "SWITCHYARD_PERMISSIONS", default_value = "groups: default", value_parser = parse_permissions)]
    pub permissions: Permissions,
    /// Requests per minute each API key may send to this worker's models (on top of the key's own limit).
    #[arg(long, env = "SWITCHYARD_MODEL_RPM")]
    pub model_rpm: Option<u32>,
    /// Tokens per minute each API key may use on this worker's models (on top of the key's own limit).
    #[arg(long, env = "SWITCHYARD_MODEL_TPM")]
    pub model_tpm: Option<u32>,
    /// Serve `/metrics` (Prometheus), `/health` and `/ready` on this address. Off by default:
    /// several workers often share a machine, and each needs its own port.
    #[arg(long, env = "SWITCHYARD_METRICS_LISTEN")]
    pub metrics_listen: Option<std::net::SocketAddr>,
}

fn parse_permissions(text: &str) -> Result<Permissions, String> {
    text.parse()
}

/// Shared state of one running worker.
struct Worker {
    id: String,
    backend: Arc<dyn Backend>,
    nats: async_nats::Client,
    redis: switchyard_broker::Redis,
    options: RuntimeOptions,
    running: RunningJobs,
    busy: AtomicU32,
    metrics: WorkerMetrics,
    /// Set when the drain timed out: cancelled jobs go back to the queue instead of ending.
    handing_back: AtomicBool,
}

/// Runs `backend` until `shutdown` fires, then drains. Returns when every job has finished
/// or been handed back, and the worker has left the registry.
pub async fn run_worker(backend: Arc<dyn Backend>, options: RuntimeOptions, shutdown: CancellationToken) -> anyhow::Result<()> {
    // Who may use the models and how fast is the operator's call, made here for every backend.
    let models: Vec<ModelCard> = backend
        .models()
        .into_iter()
        .map(|card| ModelCard {
            permissions: options.permissions.clone(),
            limits: RateLimits { rpm: options.model_rpm, tpm: options.model_tpm },
            ..card
        })
        .collect();
    anyhow::ensure!(!models.is_empty(), "backend {} serves no model", backend.name());
    let slots = options.slots.unwrap_or(1).max(1);
    let ready = Arc::new(AtomicBool::new(false));
    // Up until the drain has ended (a liveness probe must not fail a draining worker).
    let probes = CancellationToken::new();
    let _stop_probes = probes.clone().drop_guard();
    if let Some(listen) = options.metrics_listen {
        // Installed here for embedders of the runtime; `switchyard worker` already has, before
        // its backend made any metric handle.
        switchyard_telemetry::prometheus::install();
        observe::serve(listen, ready.clone(), probes).await?;
    }
    let id = format!("{}-{}-{}", backend.name(), std::process::id(), ulid::Ulid::new().to_string().to_lowercase());
    let nats = switchyard_broker::connect_nats(&options.nats_url, &id, &options.auth).await?;
    let redis = switchyard_broker::connect_redis(&options.redis_url).await?;
    let js = jetstream::new(nats.clone());
    jobs::ensure_streams(&js).await?;
    let policy = jobs::QueuePolicy { ack_wait: options.ack_wait, max_deliver: options.max_deliver };
    let mut consumers = Vec::new();
    for card in &models {
        for lane in Lane::ALL {
            consumers.push((card.name.clone(), lane, jobs::ensure_consumer(&js, lane, card.kind.job_kind(), &card.name, policy).await?));
        }
    }

    let worker = Arc::new(Worker {
        id: id.clone(),
        backend,
        nats: nats.clone(),
        redis: redis.clone(),
        options: options.clone(),
        running: RunningJobs::new(),
        busy: AtomicU32::new(0),
        metrics: WorkerMetrics::new(slots, &models),
        handing_back: AtomicBool::new(false),
    });
    let registry = Registry::new(redis);
    let record = WorkerRecord {
        v: WIRE_VERSION,
        worker_id: id.clone(),
        backend: worker.backend.name().into(),
        host: hostname(),
        pid: std::process::id(),
        slots,
        busy: 0,
        models: models.clone(),
        started_ms: now_ms(),
        heartbeat_ms: now_ms(),
    };
    registry.heartbeat(&record, options.heartbeat * 3).await?;
    info!(worker_id = %id, slots, batch_reserve = options.batch_reserve, models = ?models.iter().map(|m| &m.name).collect::<Vec<_>>(), "worker ready");

    let mut cancels = nats.subscribe(subject::CANCEL_ALL).await?;
    // Every job published after this baseline is one whose cancellation we will hear.
    switchyard_broker::sync_with_server(&nats).await?;
    read_cancel_baseline(&worker, &js).await;
    let watcher = {
        let worker = worker.clone();
        tokio::spawn(async move {
            while let Some(message) = cancels.next().await {
                if let Some(job_id) = subject::job_id_of(&message.subject) {
                    worker.running.announced(&job_id);
                }
            }
        })
    };
    // Keeps running jobs alive in JetStream, and the cancel baseline current across reconnects.
    let housekeeping = {
        let worker = worker.clone();
        let js = js.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(worker.options.ack_wait / 3);
            loop {
                ticker.tick().await;
                worker.running.keep_alive(&worker.nats).await;
                if worker.running.baseline_stale(worker.nats_connects()) {
                    read_cancel_baseline(&worker, &js).await;
                }
            }
        })
    };

    let heartbeat = {
        let worker = worker.clone();
        let shutdown = shutdown.clone();
        let interval = options.heartbeat;
        let record = record.clone();
        let registry = registry.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.tick().await;
            while !shutdown.is_cancelled() {
                tokio::select! { _ = ticker.tick() => {}, _ = shutdown.cancelled() => break }
                let record = WorkerRecord { busy: worker.busy.load(Ordering::Relaxed), heartbeat_ms: now_ms(), ..record.clone() };
                if let Err(e) = registry.heartbeat(&record, interval * 3).await {
                    warn!(error = %e, "heartbeat failed");
                }
            }
        })
    };

    let reserve = options.batch_reserve.unwrap_or(if slots > 1 { 1 } else { 0 });
    let slots_free = Slots::new(slots as usize, reserve as usize);
    let jobs = TaskTracker::new();
    let share = (slots as usize / models.len()).max(1);
    let pullers: Vec<_> = consumers
        .into_iter()
        .map(|(model, lane, consumer)| {
            let puller = Puller { model, lane, consumer, slots_free: slots_free.clone(), share };
            tokio::spawn(pull_jobs(worker.clone(), puller, jobs.clone(), shutdown.clone()))
        })
        .collect();

    ready.store(true, Ordering::Relaxed);
    shutdown.cancelled().await;
    ready.store(false, Ordering::Relaxed);
    info!("draining: no new jobs; waiting up to {:?} for {} running", options.drain_timeout, worker.busy.load(Ordering::Relaxed));
    for puller in pullers {
        let _ = puller.await;
    }
    jobs.close();
    if tokio::time::timeout(options.drain_timeout, jobs.wait()).await.is_err() {
        warn!("drain timed out: handing running jobs back to the queue");
        worker.handing_back.store(true, Ordering::SeqCst);
        worker.running.cancel_all();
        jobs.wait().await;
    }
    heartbeat.abort();
    watcher.abort();
    housekeeping.abort();
    registry.deregister(&id).await?;
    nats.flush().await?;
    info!("worker stopped");
    Ok(())
}

/// What one lane of one model pulls through, and how much of the worker it may ask for.
struct Puller {
    model: String,
    lane: Lane,
    consumer: PullConsumer,
    slots_free: Arc<Slots>,
    share: usize,
}

/// Pulls jobs for one lane of one model, never more than that lane has free slots for, and
/// none while the backend has paused the model.
async fn pull_jobs(worker: Arc<Worker>, puller: Puller, jobs: TaskTracker, shutdown: CancellationToken) {
    let Puller { model, lane, consumer, slots_free, share } = puller;
    let keepalive_every = worker.options.ack_wait / 3;
    while !shutdown.is_cancelled() {
        if let Some(pause) = worker.backend.paused(&model) {
            tokio::select! { _ = tokio::time::sleep(pause) => continue, _ = shutdown.cancelled() => return }
        }
        // Wait until a slot is open to this lane without taking it: the other consumers of this
        // worker may be waiting for it too, and a slot held by an idle pull request would starve them.
        let open = tokio::select! {
            open = slots_free.wait_gathered(lane, gather_for(lane)) => open,
            _ = shutdown.cancelled() => return,
        };
        // An interactive lane asks for its model's share, so each model's requests find a slot
        // here. A batch lane asks for every slot open to it (gathered for a moment): its jobs
        // wait anyway, and pulling them a few at a time made the pull cycle, not the slots, the
        // limit (bench/README.md).
        let wanted = match lane {
            Lane::Interactive => open.clamp(1, share),
            Lane::Batch => open.max(1),
        };
        let batch = consumer.batch().max_messages(wanted).expires(Duration::from_secs(2)).messages().await;
        let mut batch = match batch {
            Ok(batch) => batch,
            Err(e) => {
                warn!(error = %e, "pull request failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        loop {
            let next = tokio::select! { next = batch.next() => next, _ = shutdown.cancelled() => None };
            match next {
                Some(Ok(message)) => {
                    // With one consumer a slot is always free here. With several (lanes, models),
                    // another's job may have taken it since the pull: the few jobs pulled that way
                    // wait here, kept alive, instead of being pulled while nothing is free.
                    let Some(slot) = slot_for(&slots_free, lane, &message, keepalive_every, &shutdown).await else { break };
                    jobs.spawn(handle_job(worker.clone(), message, slot));
                }
                Some(Err(e)) => {
                    warn!(error = %e, "pull failed");
                    break;
                }
                None => break,
            }
        }
    }
}

/// How long a lane's puller waits for more slots to open before it pulls: never for
/// interactive jobs, a moment for batch jobs.
fn gather_for(lane: Lane) -> Duration {
    match lane {
        Lane::Interactive => Duration::ZERO,
        Lane::Batch => Duration::from_millis(2),
    }
}

/// A slot for a pulled job, keeping the job alive in JetStream while every slot is busy.
/// On shutdown the job goes back to the queue and `None` is returned.
async fn slot_for(
    slots_free: &Arc<Slots>,
    lane: Lane,
    message: &jetstream::Message,
    keepalive_every: Duration,
    shutdown: &CancellationToken,
) -> Option<Slot> {
    let take = slots_free.take(lane);
    tokio::pin!(take);
    loop {
        tokio::select! {
            slot = &mut take => return Some(slot),
            _ = tokio::time::sleep(keepalive_every) => {
                let _ = message.ack_with(AckKind::Progress).await;
            }
            _ = shutdown.cancelled() => {
                let _ = message.ack_with(AckKind::Nak(None)).await;
                return None;
            }
        }
    }
}

/// Runs one delivered job from decode to ack.
async fn handle_job(worker: Arc<Worker>, message: jetstream::Message, _slot: Slot) {
    let envelope: JobEnvelope = match decode(&message.payload) {
        Ok(envelope) => envelope,
        Err(e) => {
            // Without an envelope there is no reply subject to report to; never retry it.
            warn!(subject = %message.subject, error = %e, "malformed job dropped");
            let _ = message.ack_with(AckKind::Term).await;
            return;
        }
    };
    let (attempt, stream_seq) = message.info().map(|info| (info.delivered as u32, info.stream_sequence)).unwrap_or((1, 0));
    let span = info_span!("job", job_id = %envelope.id, model = %envelope.model, lane = envelope.lane.as_str(), attempt);
    switchyard_telemetry::trace_context::continue_trace(&span, envelope.traceparent.as_deref());
    worker.busy.fetch_add(1, Ordering::Relaxed);
    worker.metrics.started(&envelope.model, envelope.lane, attempt);
    let (job_id, model) = (envelope.id.clone(), envelope.model.clone());
    let outcome = run_job(&worker, envelope, attempt, stream_seq, message.reply.clone()).instrument(span).await;
    worker.busy.fetch_sub(1, Ordering::Relaxed);
    worker.metrics.ended(&model, matches!(outcome, Outcome::HandedBack(_)));
    let ack = match outcome {
        Outcome::Finished => AckKind::Ack,
        Outcome::HandedBack(after) => AckKind::Nak(after),
    };
    if let Err(e) = message.ack_with(ack).await {
        warn!(job_id, error = %e, "acknowledging job failed");
    }
}

enum Outcome {
    /// Done, failed or skipped: never deliver it again.
    Finished,
    /// Interrupted by a drain, or given back by its backend: let a worker continue it (after
    /// this long, if set).
    HandedBack(Option<Duration>),
}

async fn run_job(
    worker: &Arc<Worker>,
    envelope: JobEnvelope,
    attempt: u32,
    stream_seq: u64,
    ack_subject: Option<async_nats::Subject>,
) -> Outcome {
    let job_id = envelope.id.clone();
    let cancel = CancellationToken::new();
    let pulled = Pulled { job_id: &job_id, attempt, stream_seq, created_ms: envelope.created_ms };
    let connects = worker.nats_connects();
    // Registered before anything else: a cancel announced from here on fires `cancel`.
    let heard = worker.running.start(&pulled, connects, cancel.clone(), ack_subject);
    let _unregister = Unregister { worker, job_id: &job_id };

    let cancelled_while_queued = match heard {
        Heard::Cancelled => true,
        Heard::NotCancelled => false,
        Heard::AskRedis => cancel::is_cancelled(&worker.redis, &job_id).await.unwrap_or_else(|e| {
            warn!(error = %e, "cannot read the cancel flag; running the job");
            false
        }),
    };
    if cancelled_while_queued {
        info!("cancelled while queued; skipped");
        return Outcome::Finished;
    }
    if envelope.deadline_ms.is_some_and(|deadline| deadline < now_ms()) {
        info!("deadline passed before the job started; skipped");
        let error = EventBody::error(ErrorCode::DeadlineExceeded, "the job's deadline passed before a worker could start it");
        publish_alone(worker, &envelope, error).await;
        return Outcome::Finished;
    }
    let resume = if attempt > 1 {
        match ask_resume(worker, &envelope).await {
            Some(state) if state.wanted => Some(state),
            _ => {
                info!("redelivered job nobody waits for any more; skipped");
                return Outcome::Finished;
            }
        }
    } else {
        None
    };

    let first_seq = resume.as_ref().map_or(0, |state| state.next_seq);
    let reply_to = async_nats::Subject::from(envelope.reply_to.as_str());
    let (sink, events) = EventSink::new();
    let job = Job { envelope, attempt, resume };
    // The backend and the publisher share this task: what the backend produced by the time it
    // waits (or ends) goes out as one message.
    let produce = async {
        sink.send(EventBody::Started { worker_id: worker.id.clone(), attempt, prompt_tokens: None });
        let backend = worker.backend.clone();
        // A panicking backend must still produce an error event and free its slot.
        let run = std::panic::AssertUnwindSafe(backend.run(job, &sink, cancel.clone()));
        let result = match futures::FutureExt::catch_unwind(run).await {
            Ok(result) => result,
            Err(_) => Err(BackendError::new(ErrorCode::BackendError, "the backend panicked while running this job")),
        };
        let drained = worker.handing_back.load(Ordering::SeqCst) && cancel.is_cancelled();
        let handed_back = match result {
            _ if drained => Some(None),
            // The backend gives the job back (its upstream is cooling down, say) while it has
            // deliveries left; its last delivery reports the error.
            Err(BackendError { hand_back: Some(after), .. }) if i64::from(attempt) < worker.options.max_deliver => {
                info!(after = ?after, "the backend gave the job back");
                Some(Some(after))
            }
            Ok(finish) => {
                sink.send(EventBody::Done { finish_reason: finish.reason, usage: finish.usage });
                None
            }
            Err(error) => {
                warn!(code = error.code.as_str(), message = %error.message, "job failed");
                sink.send(EventBody::Error { code: error.code, message: error.message, upstream: error.upstream.map(|u| *u) });
                None
            }
        };
        drop(sink);
        handed_back
    };
    let publish = sink::publish(&worker.nats, &job_id, reply_to, first_seq, events);
    let (handed_back, ()) = futures::future::join(produce, publish).await;
    if let Some(after) = handed_back {
        info!("handed back to the queue");
        Outcome::HandedBack(after)
    } else {
        if cancel.is_cancelled() {
            info!("cancelled while running");
        }
        Outcome::Finished
    }
}

impl Worker {
    /// How many times the NATS client has connected: a change means announcements sent while
    /// it was away were never heard.
    fn nats_connects(&self) -> u64 {
        self.nats.statistics().connects.load(Ordering::SeqCst)
    }
}

/// Reads which jobs were published before this worker could hear their cancellation.
async fn read_cancel_baseline(worker: &Worker, js: &jetstream::Context) {
    let connects = worker.nats_connects();
    let last_seq = match js.get_stream(subject::JOBS_STREAM).await {
        Ok(mut stream) => stream.info().await.map(|info| info.state.last_sequence).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match last_seq {
        Ok(last_seq) => worker.running.listening_after(last_seq, connects),
        Err(e) => warn!(error = %e, "cannot read the job stream's state; cancel flags are read from Redis until it can"),
    }
}

/// Asks the api that owns a redelivered job what its client already has.
async fn ask_resume(worker: &Worker, envelope: &JobEnvelope) -> Option<ResumeState> {
    let request = worker.nats.request(envelope.resume_to.clone(), Default::default());
    match tokio::time::timeout(Duration::from_secs(2), request).await {
        Ok(Ok(reply)) => decode(&reply.payload).ok(),
        _ => None,
    }
}

/// Publishes the only event of a job that never reached a backend.
async fn publish_alone(worker: &Worker, envelope: &JobEnvelope, body: EventBody) {
    let event = StreamEvent::single(envelope.id.clone(), 0, body);
    if let Ok(bytes) = encode(&event) {
        let _ = worker.nats.publish(envelope.reply_to.clone(), bytes.into()).await;
    }
}

struct Unregister<'a> {
    worker: &'a Worker,
    job_id: &'a str,
}

impl Drop for Unregister<'_> {
    fn drop(&mut self) {
        self.worker.running.finish(self.job_id);
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "unknown".into())
}
