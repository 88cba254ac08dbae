//! The router: every route, and OpenAI-shaped answers for unknown routes and wrong methods.

pub(crate) mod async_jobs;
pub(crate) mod batches;
pub(crate) mod embeddings;
pub(crate) mod files;
pub(crate) mod generate;
pub(crate) mod health;
mod hosted;
pub mod mcp;
pub(crate) mod models;
mod run;
mod sse;
pub mod status;
pub(crate) mod tools;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::error::ApiError;
use crate::extract::BodyLimit;
use crate::state::AppState;

/// Every route; `openapi` is the document served at `GET /openapi.json`.
pub fn router(state: AppState, body_limit: usize, openapi: &utoipa::openapi::OpenApi) -> Router {
    let openapi = Bytes::from(serde_json::to_vec(openapi).expect("the OpenAPI document serializes"));
    // An upload streams through, so its own limit is the file limit (and a little for the form).
    let upload_limit = usize::try_from(state.files_limits.max_file_bytes).unwrap_or(usize::MAX).saturating_add(64 * 1024);
    Router::new()
        .route("/v1/files", post(files::upload).layer(DefaultBodyLimit::max(upload_limit)).get(files::list))
        .route("/v1/files/{file_id}", get(files::retrieve).delete(files::delete))
        .route("/v1/files/{file_id}/content", get(files::content))
        .route("/v1/batches", post(batches::create).get(batches::list))
        .route("/v1/batches/{batch_id}", get(batches::retrieve))
        .route("/v1/batches/{batch_id}/cancel", post(batches::cancel))
        .route("/v1/jobs", post(async_jobs::create))
        .route("/v1/jobs/{job_id}", get(async_jobs::retrieve).delete(async_jobs::cancel))
        .route("/v1/jobs/{job_id}/events", get(async_jobs::events))
        .route("/v1/models", get(models::list))
        .route("/v1/models/{*model}", get(models::retrieve))
        .route("/v1/chat/completions", post(generate::chat_completions))
        .route("/v1/completions", post(generate::completions))
        .route("/v1/embeddings", post(embeddings::embeddings))
        .route("/v1/tools", get(tools::list))
        .route("/v1/tools/{*path}", get(tools::list_model).post(tools::call))
        .merge(mcp::router(&state, body_limit))
        .route("/health", get(health::health))
        .route("/ready", get(health::ready))
        .route("/status", get(status::page))
        .route("/status/data", get(status::data))
        .route("/metrics", get(switchyard_telemetry::prometheus::metrics_handler))
        .route("/openapi.json", get(|| async move { ([(header::CONTENT_TYPE, "application/json")], openapi) }))
        .fallback(unknown_route)
        .layer(middleware::from_fn(openai_method_errors))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::Extension(BodyLimit(body_limit)))
        .with_state(state)
}

async fn unknown_route(request: Request) -> ApiError {
    ApiError::RouteNotFound { method: request.method().to_string(), path: request.uri().path().to_string() }
}

/// axum answers a wrong method with an empty 405; clients expect OpenAI's error body.
async fn openai_method_errors(request: Request, next: Next) -> Response {
    let method = request.method().to_string();
    let response = next.run(request).await;
    if response.status() == StatusCode::METHOD_NOT_ALLOWED {
        return ApiError::MethodNotAllowed(method).into_response();
    }
    response
}
