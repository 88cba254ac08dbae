//! Running batches: each replica takes the batches nobody runs (a [`Lease`]), and drives each
//! through validation, execution and finalization. Everything a run learns is written to NATS
//! before it counts as done, so a replica that dies mid-batch costs the lines it had in flight
//! a second run, never a lost or a second result.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use switchyard_broker::files::{FileRecord, FileStore};
use switchyard_broker::registry::Registry;
use switchyard_client::{JobError, Jobs};
use switchyard_openai::{JobFailure, JobOutput};
use switchyard_schemas::{ErrorCode, Lane, ModelCard};
use tokio::io::AsyncWriteExt;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use super::BatchOptions;
use super::input::{Checked, Lines, Problem, Rules, custom_id_of};
use super::lease::Lease;
use super::object::{BatchError, BatchErrors, BatchStatus, NotRun, OutputLine, RequestCounts};
use super::store::{BatchRecord, BatchStore, Results};
use switchyard_openai::endpoint::Endpoint;

/// Most validation errors a failed batch reports.
const MAX_REPORTED_ERRORS: usize = 1000;

/// Everything a scheduler replica needs to run batches.
pub struct Batches {
    pub(crate) instance: String,
    pub(crate) store: BatchStore,
    pub(crate) results: Results,
    pub(crate) files: FileStore,
    pub(crate) jobs: Arc<Jobs>,
    pub(crate) redis: switchyard_broker::Redis,
    pub(crate) registry: Registry,
    pub(crate) options: BatchOptions,
    /// Batches this replica is running.
    running: Mutex<HashSet<String>>,
    pub(crate) lines_done: AtomicU64,
}

impl Batches {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        instance: String,
        store: BatchStore,
        results: Results,
        files: FileStore,
        jobs: Arc<Jobs>,
        redis: switchyard_broker::Redis,
        options: BatchOptions,
    ) -> Arc<Self> {
        let registry = Registry::new(redis.clone());
        Arc::new(Batches {
            instance,
            store,
            results,
            files,
            jobs,
            redis,
            registry,
            options,
            running: Mutex::new(HashSet::new()),
            lines_done: AtomicU64::new(0),
        })
    }

    /// Takes every batch nobody runs, whenever a batch record changes and every second, and
    /// deletes expired files, until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut watch = match self.store.watch().await {
            Ok(watch) => Some(watch),
            Err(e) => {
                warn!(error = %e, "cannot watch batch records; looking every second");
                None
            }
        };
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        let mut ticks = 0u64;
        loop {
            tokio::select! {
                _ = ticker.tick() => ticks += 1,
                Some(_) = async { match watch.as_mut() { Some(watch) => watch.next().await, None => None } } => {}
                _ = shutdown.cancelled() => return,
            }
            if let Err(e) = self.claim_unowned(&shutdown).await {
                warn!(error = %e, "looking for batches to run failed");
            }
            if ticks.is_multiple_of(60) {
                match self.files.delete_expired(now_secs()).await {
                    Ok(0) => {}
                    Ok(n) => info!(files = n, "deleted expired files"),
                    Err(e) => warn!(error = %e, "deleting expired files failed"),
                }
            }
        }
    }

    /// Every batch not in a terminal status ([`BatchStore::unfinished`]).
    pub async fn unfinished(&self) -> anyhow::Result<Vec<BatchRecord>> {
        Ok(self.store.unfinished().await?)
    }

    async fn claim_unowned(self: &Arc<Self>, shutdown: &CancellationToken) -> anyhow::Result<()> {
        let unowned = self.store.unfinished_except(|id| self.running.lock().unwrap().contains(id)).await?;
        for id in unowned.into_iter().map(|record| record.batch.id) {
            let Some(lease) = Lease::take(&self.redis, &id, &self.instance, self.options.lease).await? else { continue };
            self.running.lock().unwrap().insert(id.clone());
            let span = info_span!("batch", batch_id = %id);
            tokio::spawn(self.clone().drive(id, lease, shutdown.clone()).instrument(span));
        }
        Ok(())
    }

    /// Runs one batch while holding its lease.
    async fn drive(self: Arc<Self>, id: String, lease: Lease, shutdown: CancellationToken) {
        let lost = shutdown.child_token();
        let renewer = {
            let lost = lost.clone();
            let lease = &lease;
            async move {
                let mut ticker = tokio::time::interval(lease.ttl() / 3);
                ticker.tick().await;
                loop {
                    ticker.tick().await;
                    match lease.renew().await {
                        Ok(true) => {}
                        Ok(false) => {
                            warn!("lost the batch's lease; another replica runs it now");
                            lost.cancel();
                            return;
                        }
                        Err(e) => warn!(error = %e, "renewing the batch's lease failed"),
                    }
                }
            }
        };
        tokio::select! {
            result = self.advance(&id, &lost) => {
                if let Err(e) = result {
                    warn!(error = %e, "running the batch failed; retrying soon");
                }
            }
            () = renewer => {}
            _ = lost.cancelled() => {}
        }
        if let Err(e) = lease.release().await {
            warn!(error = %e, "releasing the batch's lease failed; it lapses by itself");
        }
        self.running.lock().unwrap().remove(&id);
    }

    /// Takes the batch from wherever it is to a terminal status.
    async fn advance(self: &Arc<Self>, id: &str, stop: &CancellationToken) -> anyhow::Result<()> {
        loop {
            let Some(record) = self.store.get(id).await? else { return Ok(()) };
            match record.batch.status {
                BatchStatus::Validating if past(record.batch.expires_at) => self.end_unrun(id, BatchStatus::Expired).await?,
                BatchStatus::Validating => self.validate(record).await?,
                BatchStatus::InProgress => self.execute(record, stop).await?,
                BatchStatus::Cancelling if record.batch.in_progress_at.is_none() => self.end_unrun(id, BatchStatus::Cancelled).await?,
                BatchStatus::Cancelling if record.ending.is_none() => self.stop_lines(record, NotRun::Cancelled).await?,
                BatchStatus::Cancelling | BatchStatus::Finalizing => self.finalize(record).await?,
                _ => return Ok(()),
            }
        }
    }

    /// Models as the registry knows them now.
    async fn models(&self) -> anyhow::Result<HashMap<String, ModelCard>> {
        Ok(self.registry.known_models().await?.into_iter().map(|card| (card.name.clone(), card)).collect())
    }

    /// Reads the whole input before anything runs: every line must be a valid request.
    async fn validate(&self, record: BatchRecord) -> anyhow::Result<()> {
        let batch = &record.batch;
        let endpoint = Endpoint::parse(&batch.endpoint).ok_or_else(|| anyhow::anyhow!("unknown endpoint {}", batch.endpoint))?;
        let models = self.models().await?;
        let rules = Rules { endpoint, owner: &record.owner, limits: &record.limits, models: &models };
        let mut errors = Vec::new();
        let mut custom_ids = HashSet::new();
        let mut count = 0u64;
        match self.files.content(&batch.input_file_id).await {
            Ok(content) => {
                let mut lines = Lines::new(content);
                while let Some((_, text)) = lines.next().await? {
                    count += 1;
                    if count > record.max_requests {
                        let message = format!("The input has more than {} requests, the most a batch may have.", record.max_requests);
                        errors.push(Problem { code: "too_many_requests", message, param: None }.at_line(lines.file_line));
                        break;
                    }
                    let problem = match rules.check(&text) {
                        Ok(checked) if !custom_ids.insert(checked.custom_id.clone()) => Some(Problem {
                            code: "duplicate_custom_id",
                            message: format!("The custom_id {:?} is used by more than one line; each must be unique.", checked.custom_id),
                            param: Some("custom_id".into()),
                        }),
                        Ok(_) => None,
                        Err(problem) => Some(problem),
                    };
                    if let Some(problem) = problem
                        && errors.len() < MAX_REPORTED_ERRORS
                    {
                        errors.push(problem.at_line(lines.file_line));
                    }
                }
                if count == 0 {
                    errors.push(BatchError::of_file("empty_file", "The input file has no requests."));
                }
            }
            Err(switchyard_broker::files::FileError::NotFound) => {
                errors.push(BatchError::of_file("input_file_missing", "The input file was deleted before the batch ran."))
            }
            Err(e) => return Err(e.into()),
        }
        let now = now_secs();
        self.store
            .update(&batch.id, |record| {
                if record.batch.status != BatchStatus::Validating {
                    return false;
                }
                if errors.is_empty() {
                    record.batch.status = BatchStatus::InProgress;
                    record.batch.in_progress_at = Some(now);
                    record.batch.request_counts = RequestCounts { total: count, completed: 0, failed: 0 };
                } else {
                    record.batch.status = BatchStatus::Failed;
                    record.batch.failed_at = Some(now);
                    record.batch.errors = Some(BatchErrors { object: "list".into(), data: errors.clone() });
                }
                true
            })
            .await?;
        info!(requests = count, errors = errors.len(), "validated");
        Ok(())
    }

    /// Runs every line that has no result yet, a bounded window at a time, until all have one
    /// or the batch is cancelled or runs out of time.
    async fn execute(self: &Arc<Self>, record: BatchRecord, stop: &CancellationToken) -> anyhow::Result<()> {
        let record = Arc::new(record);
        let id = record.batch.id.clone();
        let total = record.batch.request_counts.total;
        let mut done = vec![false; total as usize];
        let counts = Arc::new(Counts::default());
        let mut recorded = self.results.read(&id, false).await?;
        while let Some(line) = recorded.try_next().await? {
            if let Some(slot) = done.get_mut(line.line as usize) {
                *slot = true;
                counts.add(line.succeeded);
            }
        }
        let already = counts.total();
        let endpoint =
            Endpoint::parse(&record.batch.endpoint).ok_or_else(|| anyhow::anyhow!("unknown endpoint {}", record.batch.endpoint))?;
        let models = Arc::new(self.models().await?);
        let window = Arc::new(Semaphore::new(self.options.window));
        let halt = stop.child_token();
        let why = Arc::new(Mutex::new(None::<NotRun>));
        let progress = self.watch_progress(&record, counts.clone(), halt.clone(), why.clone());
        let dispatch = async {
            let mut lines = Lines::new(self.files.content(&record.batch.input_file_id).await?);
            let mut tasks = JoinSet::new();
            while let Some((index, text)) = lines.next().await? {
                if done.get(index as usize).copied().unwrap_or(true) {
                    continue;
                }
                let permit = tokio::select! {
                    permit = window.clone().acquire_owned() => permit?,
                    _ = halt.cancelled() => break,
                };
                let line =
                    LineRun { batches: self.clone(), record: record.clone(), endpoint, models: models.clone(), counts: counts.clone() };
                tasks.spawn(async move {
                    line.run(index, text).await;
                    drop(permit);
                });
                while tasks.try_join_next().is_some() {}
            }
            tokio::select! {
                _ = async { while tasks.join_next().await.is_some() {} } => {}
                _ = halt.cancelled() => {
                    // Dropping a line's job handles cancels its jobs.
                    tasks.abort_all();
                    while tasks.join_next().await.is_some() {}
                }
            }
            anyhow::Ok(())
        };
        let (dispatched, ()) = tokio::join!(
            async {
                let result = dispatch.await;
                halt.cancel();
                result
            },
            progress
        );
        dispatched?;
        if stop.is_cancelled() {
            return Ok(());
        }
        let ran = counts.total() - already;
        info!(lines = ran, "lines run");
        let reason = *why.lock().unwrap();
        match reason {
            Some(why) => {
                let record = self.store.get(&id).await?.ok_or_else(|| anyhow::anyhow!("the batch vanished"))?;
                self.stop_lines(record, why).await
            }
            None => {
                let now = now_secs();
                self.store
                    .update(&id, |record| {
                        if record.batch.status != BatchStatus::InProgress {
                            return false;
                        }
                        record.batch.status = BatchStatus::Finalizing;
                        record.batch.finalizing_at = Some(now);
                        record.ending = Some(BatchStatus::Completed);
                        record.batch.request_counts.completed = counts.completed.load(Ordering::Relaxed);
                        record.batch.request_counts.failed = counts.failed.load(Ordering::Relaxed);
                        true
                    })
                    .await?;
                Ok(())
            }
        }
    }

    /// While lines run: writes the counts into the record twice a second, and halts the run
    /// when the batch is cancelled or its window ends.
    async fn watch_progress(&self, record: &BatchRecord, counts: Arc<Counts>, halt: CancellationToken, why: Arc<Mutex<Option<NotRun>>>) {
        let mut ticker = tokio::time::interval(Duration::from_millis(500));
        let id = record.batch.id.clone();
        loop {
            tokio::select! { _ = ticker.tick() => {}, _ = halt.cancelled() => return }
            if past(record.batch.expires_at) {
                *why.lock().unwrap() = Some(NotRun::Expired);
                halt.cancel();
                return;
            }
            let (completed, failed) = (counts.completed.load(Ordering::Relaxed), counts.failed.load(Ordering::Relaxed));
            let updated = self
                .store
                .update(&id, |record| {
                    let changed = record.batch.request_counts.completed != completed || record.batch.request_counts.failed != failed;
                    record.batch.request_counts.completed = completed;
                    record.batch.request_counts.failed = failed;
                    changed && record.batch.status == BatchStatus::InProgress
                })
                .await;
            match updated {
                Ok(Some(record)) if record.batch.status == BatchStatus::Cancelling => {
                    *why.lock().unwrap() = Some(NotRun::Cancelled);
                    halt.cancel();
                    return;
                }
                Ok(_) => {}
                Err(e) => warn!(error = %e, "writing batch progress failed"),
            }
        }
    }

    /// Gives every line without a result its `batch_expired` or `batch_cancelled` line, then
    /// moves the batch on to finalization.
    async fn stop_lines(&self, record: BatchRecord, why: NotRun) -> anyhow::Result<()> {
        let id = &record.batch.id;
        let mut done = vec![false; record.batch.request_counts.total as usize];
        let mut recorded = self.results.read(id, false).await?;
        while let Some(line) = recorded.try_next().await? {
            if let Some(slot) = done.get_mut(line.line as usize) {
                *slot = true;
            }
        }
        let mut lines = Lines::new(self.files.content(&record.batch.input_file_id).await?);
        let mut writes = futures::stream::FuturesUnordered::new();
        while let Some((index, text)) = lines.next().await? {
            if done.get(index as usize).copied().unwrap_or(true) {
                continue;
            }
            let output = OutputLine::not_run(custom_id_of(&text), why);
            writes.push(async move { self.results.record(id, index, &output).await });
            if writes.len() >= self.options.window {
                writes.next().await.transpose()?;
            }
        }
        while writes.next().await.transpose()?.is_some() {}
        let now = now_secs();
        self.store
            .update(id, |record| {
                if record.batch.status.is_terminal() || record.ending.is_some() {
                    return false;
                }
                match why {
                    NotRun::Expired => {
                        record.batch.status = BatchStatus::Finalizing;
                        record.batch.finalizing_at = Some(now);
                        record.ending = Some(BatchStatus::Expired);
                    }
                    NotRun::Cancelled => {
                        record.batch.status = BatchStatus::Cancelling;
                        record.ending = Some(BatchStatus::Cancelled);
                    }
                }
                true
            })
            .await?;
        Ok(())
    }

    /// A batch that ends before any line ran (cancelled or expired while validating): no files.
    async fn end_unrun(&self, id: &str, status: BatchStatus) -> anyhow::Result<()> {
        let now = now_secs();
        self.store
            .update(id, |record| {
                if record.batch.status.is_terminal() {
                    return false;
                }
                record.batch.status = status;
                match status {
                    BatchStatus::Expired => record.batch.expired_at = Some(now),
                    _ => record.batch.cancelled_at = Some(now),
                }
                true
            })
            .await?;
        Ok(())
    }

    /// Writes the output and error files from the recorded lines, then ends the batch.
    async fn finalize(&self, record: BatchRecord) -> anyhow::Result<()> {
        let batch = &record.batch;
        let ending = record.ending.unwrap_or(BatchStatus::Completed);
        let now = now_secs();
        let file = |id: &str, kind: &str| FileRecord {
            id: id.to_string(),
            owner: record.owner.user.clone(),
            filename: format!("{}_{kind}.jsonl", batch.id),
            purpose: "batch_output".into(),
            bytes: 0,
            created_at: now,
            expires_at: record.output_expires_after.map(|after| now + after),
            lines: None,
        };
        let (mut output_in, output_out) = tokio::io::duplex(256 * 1024);
        let (mut errors_in, errors_out) = tokio::io::duplex(256 * 1024);
        let unlimited = u64::MAX;
        let put_output = self.files.put(file(&record.output_file, "output"), output_out, unlimited);
        let put_errors = self.files.put(file(&record.error_file, "error"), errors_out, unlimited);
        let copy = async {
            let mut counts = RequestCounts::default();
            let mut recorded = self.results.read(&batch.id, true).await?;
            while let Some(line) = recorded.try_next().await? {
                let sink = if line.succeeded { &mut output_in } else { &mut errors_in };
                sink.write_all(&line.body).await?;
                sink.write_all(b"\n").await?;
                if line.succeeded { counts.completed += 1 } else { counts.failed += 1 }
            }
            output_in.shutdown().await?;
            errors_in.shutdown().await?;
            drop((output_in, errors_in));
            anyhow::Ok(counts)
        };
        let (counts, output, errors) = tokio::join!(copy, put_output, put_errors);
        let (counts, output, errors) = (counts?, output?, errors?);
        let keep = |stored: &FileRecord, lines: u64| (lines > 0).then(|| stored.id.clone());
        let output_file_id = keep(&output, counts.completed);
        let error_file_id = keep(&errors, counts.failed);
        for (stored, kept) in [(&output, &output_file_id), (&errors, &error_file_id)] {
            if kept.is_none() {
                self.files.delete(&stored.id).await?;
            }
        }
        let total = batch.request_counts.total;
        self.store
            .update(&batch.id, |record| {
                if record.batch.status.is_terminal() {
                    return false;
                }
                record.batch.status = ending;
                record.batch.output_file_id = output_file_id.clone();
                record.batch.error_file_id = error_file_id.clone();
                record.batch.request_counts = RequestCounts { total, ..counts };
                match ending {
                    BatchStatus::Expired => record.batch.expired_at = Some(now),
                    BatchStatus::Cancelled => record.batch.cancelled_at = Some(now),
                    _ => record.batch.completed_at = Some(now),
                }
                true
            })
            .await?;
        self.results.purge(&batch.id).await?;
        info!(status = ?ending, completed = counts.completed, failed = counts.failed, "batch ended");
        Ok(())
    }
}

#[derive(Default)]
struct Counts {
    completed: AtomicU64,
    failed: AtomicU64,
}

impl Counts {
    fn add(&self, succeeded: bool) {
        let counter = if succeeded { &self.completed } else { &self.failed };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn total(&self) -> u64 {
        self.completed.load(Ordering::Relaxed) + self.failed.load(Ordering::Relaxed)
    }
}

/// One line of a running batch.
struct LineRun {
    batches: Arc<Batches>,
    record: Arc<BatchRecord>,
    endpoint: Endpoint,
    models: Arc<HashMap<String, ModelCard>>,
    counts: Arc<Counts>,
}

/// How one attempt at a line ended, when it did not answer.
enum Failure {
    /// Worth another attempt: the worker or the queue failed, not the request.
    Transient(u16, serde_json::Value),
    /// The request itself is at fault: another attempt would fail alike.
    Final(u16, serde_json::Value),
}

impl LineRun {
    async fn run(self, index: u64, text: String) {
        let batches = &self.batches;
        let mut attempt = 0u32;
        let output = loop {
            let checked = Rules { endpoint: self.endpoint, owner: &self.record.owner, limits: &self.record.limits, models: &self.models }
                .check(&text);
            let checked = match checked {
                Ok(checked) => checked,
                Err(problem) => break OutputLine::answered(custom_id_of(&text), problem.status(), json(&problem.body())),
            };
            let custom_id = checked.custom_id.clone();
            match self.attempt(checked).await {
                Ok(body) => break OutputLine::answered(custom_id, 200, body),
                Err(Failure::Final(status, body)) => break OutputLine::answered(custom_id, status, body),
                Err(Failure::Transient(status, body)) if attempt >= batches.options.retries => {
                    break OutputLine::answered(custom_id, status, body);
                }
                Err(Failure::Transient(..)) => {
                    let backoff = batches.options.retry_backoff * 2u32.saturating_pow(attempt);
                    attempt += 1;
                    tokio::time::sleep(backoff.min(Duration::from_secs(60))).await;
                }
            }
        };
        // A line counts once its result is durable; a line another replica recorded first is its.
        loop {
            match batches.results.record(&self.record.batch.id, index, &output).await {
                Ok(recorded) => {
                    if recorded {
                        self.counts.add(output.succeeded());
                        batches.lines_done.fetch_add(1, Ordering::Relaxed);
                    }
                    return;
                }
                Err(e) => {
                    warn!(line = index, error = %e, "recording a line's result failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// Runs the line's jobs once and builds the response body.
    async fn attempt(&self, checked: Checked) -> Result<serde_json::Value, Failure> {
        let Checked { model, plan, .. } = checked;
        let prompt_param = plan.reply.prompt_param();
        let jobs = &self.batches.jobs;
        let handles = futures::future::try_join_all(plan.jobs.into_iter().map(|job| jobs.submit(Lane::Batch, &model, job)))
            .await
            .map_err(job_error)?;
        let outputs = futures::future::try_join_all(handles.into_iter().map(|mut handle| async move {
            let mut output = JobOutput::default();
            loop {
                let event = handle.next().await.map_err(job_error)?;
                match output.push(event, prompt_param) {
                    Ok(true) => return Ok(output),
                    Ok(false) => {}
                    Err(failure) => return Err(job_failure(failure)),
                }
            }
        }))
        .await?;
        let answer =
            plan.reply.assemble(outputs).map_err(|missing| Failure::Transient(502, server_error(&missing.to_string(), "backend_error")))?;
        Ok(json(&answer))
    }
}

fn job_error(error: JobError) -> Failure {
    Failure::Transient(503, server_error(&error.to_string(), "model_unavailable"))
}

fn job_failure(failure: JobFailure) -> Failure {
    let (status, body) = (failure.status(), json(&failure.body()));
    match failure.code {
        ErrorCode::BackendError | ErrorCode::MaxDeliveriesExceeded | ErrorCode::StreamGap | ErrorCode::DeadlineExceeded => {
            Failure::Transient(status, body)
        }
        ErrorCode::InvalidRequest
        | ErrorCode::ContextLengthExceeded
        | ErrorCode::Cancelled
        | ErrorCode::UnknownFunction
        | ErrorCode::InvalidArguments
        | ErrorCode::FunctionFailed
        | ErrorCode::MalformedToolCall => Failure::Final(status, body),
        // An upstream that is down or busy may serve the line later; one that refused it, never.
        ErrorCode::Upstream if status == 429 || status >= 500 => Failure::Transient(status, body),
        ErrorCode::Upstream => Failure::Final(status, body),
    }
}

fn server_error(message: &str, code: &'static str) -> serde_json::Value {
    json(&switchyard_openai::response::ErrorResponse::new(message.to_string(), "server_error", None, Some(code)))
}

fn json(value: &impl serde::Serialize) -> serde_json::Value {
    serde_json::to_value(value).expect("response bodies serialize")
}

fn now_secs() -> u64 {
    switchyard_schemas::now_ms() / 1000
}

fn past(deadline: Option<u64>) -> bool {
    deadline.is_some_and(|deadline| now_secs() >= deadline)
}
