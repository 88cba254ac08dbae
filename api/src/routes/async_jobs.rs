//! `/v1/jobs`: one request run without a client waiting on the connection. The job's record is
//! in a key-value bucket and its workers' events land in the events stream, so any api replica
//! answers for any job — its status, its result (exactly the body the synchronous endpoint
//! would have answered), its events as a resumable SSE stream — also after the replica that
//! took it has died. Jobs run in the batch lane.

use std::convert::Infallible;

use async_nats::jetstream::consumer;
use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::job_store::{JobRecord, part_id, unavailable};
use serde_json::value::RawValue;
use switchyard_client::Route;
use switchyard_openai::endpoint::Endpoint;
use switchyard_openai::response::ErrorResponse;
use switchyard_openai::{JobOutput, Reply};
use switchyard_schemas::{EventBody, FinishReason, Lane, StreamEvent, subject};

use super::files::owner_of;
use crate::error::{ApiError, ErrorResponses};
use crate::extract::OpenAiJson;
use crate::policy::Caller;
use crate::state::AppState;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct CreateJob {
    /// `/v1/chat/completions`, `/v1/completions` or `/v1/embeddings`.
    pub endpoint: String,
    /// The request, exactly as the endpoint takes it (without `stream`).
    #[schema(value_type = Object)]
    pub body: Box<RawValue>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Queued,
    InProgress,
    Completed,
    Failed,
    Cancelled,
}

/// An async job.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct JobObject {
    /// `job_` and a UUID v7.
    pub id: String,
    /// Always `job`.
    pub object: &'static str,
    pub endpoint: Endpoint,
    pub model: String,
    pub status: JobStatus,
    pub created_at: u64,
    pub cancelled_at: Option<u64>,
    /// When completed: the body the synchronous endpoint would have answered.
    #[schema(value_type = Option<Object>)]
    pub result: Option<serde_json::Value>,
    /// When failed: the error body the synchronous endpoint would have answered.
    pub error: Option<ErrorResponse>,
}

#[utoipa::path(post, path = "/v1/jobs", tag = "jobs", request_body = CreateJob, responses((status = 202, body = JobObject), ErrorResponses))]
pub async fn create(
    caller: Caller,
    State(state): State<AppState>,
    OpenAiJson(request): OpenAiJson<CreateJob>,
) -> Result<Response, ApiError> {
    let endpoint = Endpoint::parse(&request.endpoint).ok_or_else(|| Endpoint::unsupported("endpoint", &request.endpoint))?;
    let read = endpoint.read(request.body.get().as_bytes()).map_err(in_body)?;
    let model = read.model().to_string();
    let entry = state.model_for(&caller, &model).await?;
    let plan = read.plan(&state.limits, &entry.card).map_err(in_body)?;
    let (response_id, response_created) = match &plan.reply {
        Reply::Generation(generation) => (Some(generation.id.clone()), generation.created),
        Reply::Embeddings(_) => (None, 0),
    };
    // The key's requests and tokens per minute are charged at the estimate (nobody waits for the
    // real count); a concurrency cap is not held while the job waits in its lane.
    let (admission, ()) = state.gate.admit_and_dispatch(&caller, &entry.card, plan.estimate, async { Ok(()) }).await?;
    let headers = admission.headers().clone();
    admission.settle(plan.estimate);
    let jobs = &state.async_jobs;
    let id = switchyard_broker::new_id("job_");
    let record = JobRecord {
        id: id.clone(),
        owner: owner_of(&caller),
        endpoint,
        model: model.clone(),
        body: request.body,
        parts: plan.jobs.len(),
        response_id,
        response_created,
        created_at: switchyard_schemas::now_ms() / 1000,
        cancelled_at: None,
    };
    let value = serde_json::to_vec(&record).map_err(|e| ApiError::Internal(e.to_string()))?;
    jobs.records.create(&id, value.into()).await.map_err(unavailable)?;
    let deadline_ms = switchyard_schemas::now_ms() + jobs.retention.as_millis() as u64;
    let publish = plan.jobs.into_iter().enumerate().map(|(index, job)| {
        let route =
            Route { reply_to: subject::events(&id, index), resume_to: subject::durable_resume(&id, index), deadline_ms: Some(deadline_ms) };
        state.jobs.submit_detached(part_id(&id, index), Lane::Batch, &model, job, route)
    });
    futures::future::try_join_all(publish).await.map_err(|e| ApiError::Unavailable(e.to_string()))?;
    let object = JobObject {
        id,
        object: "job",
        endpoint,
        model,
        status: JobStatus::Queued,
        created_at: record.created_at,
        cancelled_at: None,
        result: None,
        error: None,
    };
    Ok((StatusCode::ACCEPTED, headers, Json(object)).into_response())
}

fn in_body(invalid: switchyard_openai::Invalid) -> ApiError {
    invalid.in_body().into()
}

/// The caller's job `id`, or 404 as if it did not exist.
async fn owned(state: &AppState, caller: &Caller, id: &str) -> Result<(JobRecord, u64), ApiError> {
    match state.async_jobs.record(id).await? {
        Some((record, revision)) if record.owner == owner_of(caller) => Ok((record, revision)),
        _ => Err(ApiError::NoSuchObject { kind: "Job", id: id.to_string() }),
    }
}

#[utoipa::path(get, path = "/v1/jobs/{job_id}", tag = "jobs", params(("job_id" = String, Path)), responses((status = 200, body = JobObject), ErrorResponses))]
pub async fn retrieve(caller: Caller, State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<JobObject>, ApiError> {
    let (record, _) = owned(&state, &caller, &id).await?;
    Ok(Json(object(&state, record).await?))
}

/// The job as its events tell it.
async fn object(state: &AppState, record: JobRecord) -> Result<JobObject, ApiError> {
    let messages = switchyard_broker::jobs::read_events(&state.async_jobs.js, subject::events_of(&record.id)).await?;
    let mut outputs = vec![JobOutput::default(); record.parts];
    let mut finished = vec![false; record.parts];
    let (mut started, mut failure) = (false, None);
    let card = state.card_of(&record.model).await;
    let plan =
        card.and_then(|card| record.endpoint.read(record.body.get().as_bytes()).and_then(|read| read.plan(&state.limits, &card)).ok());
    let prompt_param = plan.as_ref().map_or("messages", |plan| plan.reply.prompt_param());
    for (_, message) in messages {
        let index = message_index(&message, &record).unwrap_or(usize::MAX);
        let (Some(output), Some(done)) = (outputs.get_mut(index), finished.get_mut(index)) else { continue };
        for event in message.events {
            started |= matches!(event, EventBody::Started { .. });
            match output.push(event, prompt_param) {
                Ok(true) => *done = true,
                Ok(false) => {}
                Err(job_failure) => {
                    *done = true;
                    failure.get_or_insert(job_failure);
                }
            }
        }
    }
    let mut job = JobObject {
        id: record.id.clone(),
        object: "job",
        endpoint: record.endpoint,
        model: record.model.clone(),
        status: JobStatus::Queued,
        created_at: record.created_at,
        cancelled_at: record.cancelled_at,
        result: None,
        error: None,
    };
    // A cancelled job ends with a `cancelled` finish or error, or not at all; one that finished
    // before the cancel arrived keeps its result.
    let stopped =
        failure.is_some() || !finished.iter().all(|done| *done) || outputs.iter().any(|o| o.finish_reason == Some(FinishReason::Cancelled));
    job.status = if record.cancelled_at.is_some() && stopped {
        JobStatus::Cancelled
    } else if let Some(failure) = failure {
        job.error = Some(failure.body());
        JobStatus::Failed
    } else if finished.iter().all(|done| *done) {
        let mut plan = plan.ok_or_else(|| {
            ApiError::Unavailable(format!("The model `{}` is not known any more; its result cannot be put together.", record.model))
        })?;
        if let (Reply::Generation(generation), Some(id)) = (&mut plan.reply, &record.response_id) {
            generation.id = id.clone();
            generation.created = record.response_created;
        }
        let answer = plan.reply.assemble(outputs).map_err(|missing| ApiError::Internal(missing.to_string()))?;
        job.result = Some(serde_json::to_value(answer).map_err(|e| ApiError::Internal(e.to_string()))?);
        JobStatus::Completed
    } else if started {
        JobStatus::InProgress
    } else {
        JobStatus::Queued
    };
    Ok(job)
}

/// Which part of the job a message belongs to (from its worker job id, `<job>-<index>`).
fn message_index(message: &StreamEvent, record: &JobRecord) -> Option<usize> {
    message.job_id.strip_prefix(&record.id)?.strip_prefix('-')?.parse().ok()
}

#[utoipa::path(delete, path = "/v1/jobs/{job_id}", tag = "jobs", params(("job_id" = String, Path)), responses((status = 200, body = JobObject), ErrorResponses))]
pub async fn cancel(caller: Caller, State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<JobObject>, ApiError> {
    let (mut record, revision) = owned(&state, &caller, &id).await?;
    if record.cancelled_at.is_none() {
        record.cancelled_at = Some(switchyard_schemas::now_ms() / 1000);
        let value = serde_json::to_vec(&record).map_err(|e| ApiError::Internal(e.to_string()))?;
        // A concurrent cancel wrote first: it is cancelled either way.
        let _ = state.async_jobs.records.update(&id, value.into(), revision).await;
    }
    for index in 0..record.parts {
        state.jobs.cancel(&part_id(&id, index)).await?;
    }
    let job = object(&state, record).await?;
    Ok(Json(job))
}

#[utoipa::path(get, path = "/v1/jobs/{job_id}/events", tag = "jobs", params(("job_id" = String, Path), ("Last-Event-ID" = Option<u64>, Header, description = "Resume after this event")),
    responses((status = 200, description = "SSE: each event's `id:` is its position, `data:` `{\"index\", \"events\": [...]}` with the job's stream events; ends with `data: [DONE]`", content_type = "text/event-stream"), ErrorResponses))]
pub async fn events(
    caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (record, _) = owned(&state, &caller, &id).await?;
    let after = headers.get("last-event-id").and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok());
    let deliver_policy = match after {
        Some(seq) => consumer::DeliverPolicy::ByStartSequence { start_sequence: seq + 1 },
        None => consumer::DeliverPolicy::All,
    };
    let stream = state.async_jobs.js.get_stream(subject::EVENTS_STREAM).await.map_err(unavailable)?;
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig { filter_subject: subject::events_of(&id), deliver_policy, ..Default::default() })
        .await
        .map_err(unavailable)?;
    let messages = consumer.messages().await.map_err(unavailable)?;
    // Parts that already ended before `after` must not keep the stream open.
    let mut open: Vec<bool> = vec![true; record.parts];
    if after.is_some() {
        for (seq, message) in switchyard_broker::jobs::read_events(&state.async_jobs.js, subject::events_of(&id)).await? {
            if Some(seq) <= after
                && message.events.iter().any(EventBody::is_terminal)
                && let Some(slot) = message_index(&message, &record).and_then(|i| open.get_mut(i))
            {
                *slot = false;
            }
        }
    }
    #[derive(Serialize)]
    struct Frame<'a> {
        index: usize,
        events: &'a [EventBody],
    }
    let body = futures::stream::unfold((messages, open, record, false), |(mut messages, mut open, record, done)| async move {
        if done {
            return None;
        }
        if !open.iter().any(|o| *o) {
            return Some((Ok::<_, Infallible>(Bytes::from_static(b"data: [DONE]\n\n")), (messages, open, record, true)));
        }
        let message = messages.next().await?.ok()?;
        let seq = message.info().map(|info| info.stream_sequence).unwrap_or(0);
        let Ok(event) = switchyard_schemas::decode::<StreamEvent>(&message.payload) else {
            return Some((Ok(Bytes::new()), (messages, open, record, false)));
        };
        let index = message_index(&event, &record).unwrap_or(0);
        if event.events.iter().any(EventBody::is_terminal)
            && let Some(slot) = open.get_mut(index)
        {
            *slot = false;
        }
        let frame = serde_json::to_string(&Frame { index, events: &event.events }).unwrap_or_default();
        Some((Ok(Bytes::from(format!("id: {seq}\ndata: {frame}\n\n"))), (messages, open, record, false)))
    });
    Ok(([(header::CONTENT_TYPE, "text/event-stream"), (header::CACHE_CONTROL, "no-cache")], Body::from_stream(body)).into_response())
}
