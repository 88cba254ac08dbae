//! `/v1/files`: OpenAI's Files API. Bodies live in the NATS object store, so any api replica
//! serves any file; an upload streams through (the replica's memory does not grow with the
//! file). A file belongs to the user of the key that uploaded it: to anyone else it does not exist.

use axum::Json;
use axum::body::Body;
use axum::extract::{FromRequest, Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use switchyard_broker::files::{FileError, FileRecord, new_file_id};
use tokio_util::io::{ReaderStream, StreamReader};

use crate::error::{ApiError, ErrorResponses};
use crate::extract::{OpenAiMultipart, OpenAiQuery};
use crate::policy::Caller;
use crate::state::AppState;

/// OpenAI's file object.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FileObject {
    pub id: String,
    /// Always `file`.
    pub object: &'static str,
    pub bytes: u64,
    pub created_at: u64,
    pub expires_at: Option<u64>,
    pub filename: String,
    pub purpose: String,
    /// Always `processed`: a stored file is ready.
    pub status: &'static str,
    pub status_details: Option<String>,
}

impl From<FileRecord> for FileObject {
    fn from(record: FileRecord) -> Self {
        FileObject {
            id: record.id,
            object: "file",
            bytes: record.bytes,
            created_at: record.created_at,
            expires_at: record.expires_at,
            filename: record.filename,
            purpose: record.purpose,
            status: "processed",
            status_details: None,
        }
    }
}

/// A page of a list, as OpenAI pages files and batches.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Page<T> {
    /// Always `list`.
    pub object: &'static str,
    pub data: Vec<T>,
    pub first_id: Option<String>,
    pub last_id: Option<String>,
    pub has_more: bool,
}

impl<T> Page<T> {
    pub fn new(data: Vec<T>, has_more: bool, id: impl Fn(&T) -> &str) -> Self {
        let first_id = data.first().map(|item| id(item).to_string());
        let last_id = data.last().map(|item| id(item).to_string());
        Page { object: "list", data, first_id, last_id, has_more }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FileDeleted {
    pub id: String,
    /// Always `file`.
    pub object: &'static str,
    pub deleted: bool,
}

/// Purposes OpenAI accepts; Switchyard runs `batch` files and keeps the others as they are.
const PURPOSES: [&str; 6] = ["batch", "assistants", "fine-tune", "vision", "user_data", "evals"];

/// Shortest and longest `expires_after[seconds]` OpenAI allows: an hour to 30 days.
pub const EXPIRY_SECONDS: std::ops::RangeInclusive<u64> = 3600..=2_592_000;

/// How much of a refused upload is read before the refusal is sent.
const REFUSED_UPLOAD_READ: usize = 4 * 1024 * 1024;

/// The user whose files and batches a caller sees (one anonymous user with `--no-auth`).
pub fn owner_of(caller: &Caller) -> String {
    caller.key.as_ref().map_or_else(String::new, |key| key.user.clone())
}

#[utoipa::path(post, path = "/v1/files", tag = "files",
    request_body(content_type = "multipart/form-data", description = "Fields `purpose` (`batch`, …), then `file`; optional `expires_after[anchor]=created_at` and `expires_after[seconds]` before `file`."),
    responses((status = 200, body = FileObject), ErrorResponses))]
pub async fn upload(
    caller: Result<Caller, ApiError>,
    State(state): State<AppState>,
    request: axum::extract::Request,
) -> Result<Json<FileObject>, ApiError> {
    let caller = match caller {
        Ok(caller) => caller,
        Err(refused) => {
            // A client still sending its file when the refusal comes back would see the
            // connection close under it (a broken pipe) instead of the 401: read a little first.
            let body = axum::body::to_bytes(request.into_body(), REFUSED_UPLOAD_READ);
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), body).await;
            return Err(refused);
        }
    };
    let OpenAiMultipart(mut form) = OpenAiMultipart::from_request(request, &state).await?;
    let mut purpose = None;
    let mut expires_after = None;
    while let Some(field) = form.next_field().await.map_err(multipart_error)? {
        let name = field.name().unwrap_or_default().to_string();
        match name.as_str() {
            "purpose" => purpose = Some(field.text().await.map_err(multipart_error)?),
            "expires_after[anchor]" => {
                let anchor = field.text().await.map_err(multipart_error)?;
                if anchor != "created_at" {
                    return Err(ApiError::invalid("expires_after.anchor", "expires_after[anchor] must be `created_at`."));
                }
            }
            "expires_after[seconds]" => {
                let text = field.text().await.map_err(multipart_error)?;
                let seconds = text.trim().parse::<u64>().ok().filter(|s| EXPIRY_SECONDS.contains(s)).ok_or_else(|| {
                    ApiError::invalid(
                        "expires_after.seconds",
                        "expires_after[seconds] must be a whole number of seconds from 3600 to 2592000.",
                    )
                })?;
                expires_after = Some(seconds);
            }
            "file" => {
                let purpose = purpose.take().ok_or_else(|| {
                    ApiError::invalid("purpose", "Missing required parameter: 'purpose' (send it before the `file` field).")
                })?;
                if !PURPOSES.contains(&purpose.as_str()) {
                    return Err(ApiError::invalid(
                        "purpose",
                        format!("Invalid purpose {purpose:?}: expected one of {}.", PURPOSES.join(", ")),
                    ));
                }
                let filename = field.file_name().unwrap_or("upload").to_string();
                let now = now_secs();
                let record = FileRecord {
                    id: new_file_id(),
                    owner: owner_of(&caller),
                    filename,
                    purpose,
                    bytes: 0,
                    created_at: now,
                    expires_at: expires_after.map(|after| now + after),
                    lines: None,
                };
                let body = StreamReader::new(field.map_err(std::io::Error::other));
                let max = state.files_limits.max_file_bytes;
                let stored = state.files.put(record, body, max).await.map_err(|e| match e {
                    FileError::TooLarge { limit } => ApiError::PayloadTooLarge(limit as usize),
                    FileError::Io(reason) => ApiError::invalid("file", format!("The upload broke off: {reason}")),
                    other => ApiError::Unavailable(other.to_string()),
                })?;
                return Ok(Json(stored.into()));
            }
            _ => {}
        }
    }
    Err(ApiError::invalid("file", "Missing required parameter: 'file'."))
}

fn multipart_error(error: axum::extract::multipart::MultipartError) -> ApiError {
    ApiError::invalid("file", format!("The multipart body is malformed: {}", error.body_text()))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListFiles {
    /// Only files of this purpose.
    purpose: Option<String>,
    /// 1 to 10,000 (default 10,000).
    limit: Option<usize>,
    /// A file id: the page starts after it.
    after: Option<String>,
    /// `desc` (default, newest first) or `asc`.
    order: Option<String>,
}

#[utoipa::path(get, path = "/v1/files", tag = "files", params(ListFiles), responses((status = 200, body = Page<FileObject>), ErrorResponses))]
pub async fn list(
    caller: Caller,
    State(state): State<AppState>,
    OpenAiQuery(query): OpenAiQuery<ListFiles>,
) -> Result<Json<Page<FileObject>>, ApiError> {
    let limit = query.limit.unwrap_or(10_000);
    if !(1..=10_000).contains(&limit) {
        return Err(ApiError::invalid("limit", "limit must be from 1 to 10000."));
    }
    let ascending = match query.order.as_deref() {
        None | Some("desc") => false,
        Some("asc") => true,
        Some(_) => return Err(ApiError::invalid("order", "order must be `asc` or `desc`.")),
    };
    let (records, has_more) = state
        .files
        .list(&owner_of(&caller), query.purpose.as_deref(), query.after.as_deref(), limit, ascending)
        .await
        .map_err(unavailable)?;
    Ok(Json(Page::new(records.into_iter().map(FileObject::from).collect(), has_more, |file| &file.id)))
}

/// The caller's file `id`, or 404 as if it did not exist.
async fn owned(state: &AppState, caller: &Caller, id: &str) -> Result<FileRecord, ApiError> {
    match state.files.get(id).await.map_err(unavailable)? {
        Some(record) if record.owner == owner_of(caller) => Ok(record),
        _ => Err(ApiError::NoSuchObject { kind: "File", id: id.to_string() }),
    }
}

#[utoipa::path(get, path = "/v1/files/{file_id}", tag = "files", params(("file_id" = String, Path)), responses((status = 200, body = FileObject), ErrorResponses))]
pub async fn retrieve(caller: Caller, State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<FileObject>, ApiError> {
    Ok(Json(owned(&state, &caller, &id).await?.into()))
}

#[utoipa::path(get, path = "/v1/files/{file_id}/content", tag = "files", params(("file_id" = String, Path)),
    responses((status = 200, description = "The file's bytes, streamed", content_type = "application/octet-stream"), ErrorResponses))]
pub async fn content(caller: Caller, State(state): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let record = owned(&state, &caller, &id).await?;
    let reader = state.files.content(&record.id).await.map_err(|e| match e {
        FileError::NotFound => ApiError::NoSuchObject { kind: "File", id: id.clone() },
        other => unavailable(other),
    })?;
    let disposition = format!("attachment; filename=\"{}\"", record.filename.replace(['"', '\\', '\r', '\n'], "_"));
    let headers = [
        (header::CONTENT_TYPE, "application/octet-stream".to_string()),
        (header::CONTENT_LENGTH, record.bytes.to_string()),
        (header::CONTENT_DISPOSITION, disposition),
    ];
    Ok((headers, Body::from_stream(ReaderStream::with_capacity(reader, 128 * 1024))).into_response())
}

#[utoipa::path(delete, path = "/v1/files/{file_id}", tag = "files", params(("file_id" = String, Path)), responses((status = 200, body = FileDeleted), ErrorResponses))]
pub async fn delete(caller: Caller, State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<FileDeleted>, ApiError> {
    let record = owned(&state, &caller, &id).await?;
    let deleted = state.files.delete(&record.id).await.map_err(unavailable)?;
    Ok(Json(FileDeleted { id: record.id, object: "file", deleted }))
}

fn unavailable(error: FileError) -> ApiError {
    ApiError::Unavailable(error.to_string())
}

fn now_secs() -> u64 {
    switchyard_schemas::now_ms() / 1000
}
