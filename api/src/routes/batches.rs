//! `/v1/batches`: OpenAI's Batch API. The api only stores and reads batch records; a scheduler
//! replica validates and runs them (`switchyard_scheduler::batches`), so no batch depends on the
//! replica that took it, and results never pass through one.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use serde::Deserialize;
use switchyard_broker::new_id;
use switchyard_openai::endpoint::Endpoint;
use switchyard_scheduler::batches::object::{Batch, BatchStatus, RequestCounts};
use switchyard_scheduler::batches::store::{BatchRecord, Owner};

use super::files::{EXPIRY_SECONDS, Page, owner_of};
use crate::error::{ApiError, ErrorResponses};
use crate::extract::{OpenAiJson, OpenAiQuery};
use crate::policy::Caller;
use crate::state::AppState;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct CreateBatch {
    /// A file uploaded with purpose `batch`: one request per line.
    pub input_file_id: String,
    /// `/v1/chat/completions`, `/v1/completions` or `/v1/embeddings`.
    pub endpoint: String,
    /// `24h` (an operator may allow other windows with `--batch-completion-windows`).
    pub completion_window: String,
    /// Up to 16 pairs; keys up to 64 characters, values up to 512.
    pub metadata: Option<BTreeMap<String, String>>,
    /// When the output and error files expire.
    pub output_expires_after: Option<ExpiresAfter>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct ExpiresAfter {
    /// Always `created_at`.
    pub anchor: String,
    /// 3600 to 2592000.
    pub seconds: u64,
}

#[utoipa::path(post, path = "/v1/batches", tag = "batches", request_body = CreateBatch, responses((status = 200, body = Batch), ErrorResponses))]
pub async fn create(
    caller: Caller,
    State(state): State<AppState>,
    OpenAiJson(request): OpenAiJson<CreateBatch>,
) -> Result<Json<Batch>, ApiError> {
    let endpoint = Endpoint::parse(&request.endpoint).ok_or_else(|| Endpoint::unsupported("endpoint", &request.endpoint))?;
    let window = window(&state.batch_windows, &request.completion_window)?;
    if let Some(metadata) = &request.metadata {
        check_metadata(metadata)?;
    }
    let output_expires_after = match request.output_expires_after {
        Some(ExpiresAfter { anchor, .. }) if anchor != "created_at" => {
            return Err(ApiError::invalid("output_expires_after.anchor", "output_expires_after.anchor must be `created_at`."));
        }
        Some(ExpiresAfter { seconds, .. }) if !EXPIRY_SECONDS.contains(&seconds) => {
            return Err(ApiError::invalid("output_expires_after.seconds", "output_expires_after.seconds must be from 3600 to 2592000."));
        }
        Some(ExpiresAfter { seconds, .. }) => Some(seconds),
        None => None,
    };
    let owner = owner_of(&caller);
    let input = state.files.get(&request.input_file_id).await.map_err(|e| ApiError::Unavailable(e.to_string()))?;
    let input = match input {
        Some(file) if file.owner == owner => file,
        _ => return Err(ApiError::invalid("input_file_id", format!("No such File object: {}", request.input_file_id))),
    };
    if input.purpose != "batch" {
        return Err(ApiError::invalid(
            "input_file_id",
            format!("The file {} has purpose {:?}; a batch's input needs purpose `batch`.", input.id, input.purpose),
        ));
    }
    let max_requests = state.files_limits.max_batch_requests;
    if input.lines.is_some_and(|lines| lines > max_requests) {
        return Err(ApiError::invalid(
            "input_file_id",
            format!("The file has {} requests; a batch may have at most {max_requests}.", input.lines.unwrap_or(0)),
        ));
    }
    let now = switchyard_schemas::now_ms() / 1000;
    let batch = Batch {
        id: new_id("batch_"),
        object: "batch".into(),
        endpoint: endpoint.as_str().into(),
        errors: None,
        input_file_id: input.id,
        completion_window: request.completion_window,
        status: BatchStatus::Validating,
        output_file_id: None,
        error_file_id: None,
        created_at: now,
        in_progress_at: None,
        expires_at: Some(now + window.as_secs().max(1)),
        finalizing_at: None,
        completed_at: None,
        failed_at: None,
        expired_at: None,
        cancelling_at: None,
        cancelled_at: None,
        request_counts: RequestCounts::default(),
        metadata: request.metadata,
    };
    let owner = match &caller.key {
        Some(key) => Owner { user: key.user.clone(), groups: key.groups.clone(), unrestricted: false },
        None => Owner { user: owner, groups: Vec::new(), unrestricted: true },
    };
    let record = BatchRecord {
        batch,
        owner,
        limits: state.limits,
        max_requests,
        output_file: switchyard_broker::files::new_file_id(),
        error_file: switchyard_broker::files::new_file_id(),
        output_expires_after,
        ending: None,
    };
    state.batches.create(&record).await.map_err(|e| ApiError::Unavailable(e.to_string()))?;
    Ok(Json(record.batch))
}

/// The completion window asked for, if the operator allows it.
fn window(allowed: &[(String, Duration)], asked: &str) -> Result<Duration, ApiError> {
    allowed.iter().find(|(text, _)| text == asked).map(|(_, window)| *window).ok_or_else(|| {
        let names: Vec<_> = allowed.iter().map(|(text, _)| text.as_str()).collect();
        ApiError::invalid("completion_window", format!("Unsupported completion_window {asked:?}: expected {}.", names.join(" or ")))
    })
}

fn check_metadata(metadata: &BTreeMap<String, String>) -> Result<(), ApiError> {
    if metadata.len() > 16 {
        return Err(ApiError::invalid("metadata", "metadata may have at most 16 pairs."));
    }
    if let Some((key, _)) = metadata.iter().find(|(key, value)| key.chars().count() > 64 || value.chars().count() > 512) {
        return Err(ApiError::invalid(format!("metadata.{key}"), "metadata keys may be up to 64 characters and values up to 512."));
    }
    Ok(())
}

/// The caller's batch `id`, or 404 as if it did not exist.
async fn owned(state: &AppState, caller: &Caller, id: &str) -> Result<BatchRecord, ApiError> {
    match state.batches.get(id).await.map_err(|e| ApiError::Unavailable(e.to_string()))? {
        Some(record) if record.owner.user == owner_of(caller) => Ok(record),
        _ => Err(ApiError::NoSuchObject { kind: "Batch", id: id.to_string() }),
    }
}

#[utoipa::path(get, path = "/v1/batches/{batch_id}", tag = "batches", params(("batch_id" = String, Path)), responses((status = 200, body = Batch), ErrorResponses))]
pub async fn retrieve(caller: Caller, State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<Batch>, ApiError> {
    Ok(Json(owned(&state, &caller, &id).await?.batch))
}

#[utoipa::path(post, path = "/v1/batches/{batch_id}/cancel", tag = "batches", params(("batch_id" = String, Path)), responses((status = 200, body = Batch), ErrorResponses))]
pub async fn cancel(caller: Caller, State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<Batch>, ApiError> {
    owned(&state, &caller, &id).await?;
    let now = switchyard_schemas::now_ms() / 1000;
    let updated = state
        .batches
        .update(&id, |record| match record.batch.status {
            BatchStatus::Validating | BatchStatus::InProgress => {
                record.batch.status = BatchStatus::Cancelling;
                record.batch.cancelling_at = Some(now);
                true
            }
            _ => false,
        })
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?
        .ok_or_else(|| ApiError::NoSuchObject { kind: "Batch", id: id.clone() })?;
    match updated.batch.status {
        BatchStatus::Cancelling | BatchStatus::Cancelled => Ok(Json(updated.batch)),
        status => Err(ApiError::Conflict(format!(
            "Cannot cancel a batch with status {}.",
            serde_json::to_value(status).unwrap_or_default().as_str().unwrap_or("?")
        ))),
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListBatches {
    /// A batch id: the page starts after it.
    after: Option<String>,
    /// 1 to 100 (default 20).
    limit: Option<usize>,
}

#[utoipa::path(get, path = "/v1/batches", tag = "batches", params(ListBatches), responses((status = 200, body = Page<Batch>), ErrorResponses))]
pub async fn list(
    caller: Caller,
    State(state): State<AppState>,
    OpenAiQuery(query): OpenAiQuery<ListBatches>,
) -> Result<Json<Page<Batch>>, ApiError> {
    let limit = query.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::invalid("limit", "limit must be from 1 to 100."));
    }
    let owner = owner_of(&caller);
    let mut batches: Vec<Batch> = state
        .batches
        .list()
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?
        .into_iter()
        .filter(|r| r.owner.user == owner)
        .map(|r| r.batch)
        .collect();
    // Newest first; ids are UUID v7, so they sort by creation too.
    batches.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));
    if let Some(after) = &query.after
        && let Some(position) = batches.iter().position(|batch| &batch.id == after)
    {
        batches.drain(..=position);
    }
    let has_more = batches.len() > limit;
    batches.truncate(limit);
    Ok(Json(Page::new(batches, has_more, |batch| &batch.id)))
}
