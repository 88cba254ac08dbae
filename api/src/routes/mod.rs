//! The router: every route, the shared state, and OpenAI-shaped answers for unknown routes
//! and wrong methods.

pub(crate) mod embeddings;
pub(crate) mod generate;
pub(crate) mod health;
pub(crate) mod models;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use switchyard_schemas::ModelKind;

use crate::directory::{Directory, ModelEntry};
use crate::error::ApiError;
use crate::extract::BodyLimit;
use crate::jobs::Jobs;
use crate::policy::{Caller, Gate};
use crate::validate::Limits;

/// What every handler shares; behind one `Arc` so that handing it to a request is one count.
pub type AppState = Arc<ApiState>;

pub struct ApiState {
    pub jobs: Arc<Jobs>,
    pub directory: Directory,
    pub gate: Arc<Gate>,
    pub limits: Limits,
    pub nats: async_nats::Client,
    pub redis: redis::aio::ConnectionManager,
}

impl ApiState {
    /// The model a request names, if the caller may use it (otherwise it does not exist, as far
    /// as this caller can tell), and if it serves `kind`.
    pub async fn model_for(&self, caller: &Caller, name: &str, kind: ModelKind) -> Result<ModelEntry, ApiError> {
        let entry = self.directory.lookup(name).await?;
        if !caller.may_use(&entry.card) {
            return Err(ApiError::ModelNotFound(name.to_string()));
        }
        if entry.card.kind != kind {
            let served = match entry.card.kind {
                ModelKind::Chat => "text generation (/v1/chat/completions, /v1/completions)",
                ModelKind::Embedding => "embeddings (/v1/embeddings)",
                ModelKind::Tool => "tool calls",
            };
            return Err(ApiError::invalid("model", format!("The model `{name}` serves {served}, not this endpoint.")));
        }
        Ok(entry)
    }
}

/// Token estimate for rate limiting before the real count is known: about four characters a
/// token, as OpenAI's guidance has it, plus what the completion may add.
pub fn estimate_tokens(prompt_chars: usize, completion_tokens: u32) -> u32 {
    (prompt_chars.div_ceil(4) as u32).saturating_add(completion_tokens)
}

pub fn router(state: AppState, body_limit: usize) -> Router {
    Router::new()
        .route("/v1/models", get(models::list))
        .route("/v1/models/{*model}", get(models::retrieve))
        .route("/v1/chat/completions", post(generate::chat_completions))
        .route("/v1/completions", post(generate::completions))
        .route("/v1/embeddings", post(embeddings::embeddings))
        .route("/health", get(health::health))
        .route("/ready", get(health::ready))
        .route("/openapi.json", get(openapi_json))
        .fallback(unknown_route)
        .layer(middleware::from_fn(openai_method_errors))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::Extension(BodyLimit(body_limit)))
        .with_state(state)
}

async fn openapi_json() -> axum::Json<utoipa::openapi::OpenApi> {
    use utoipa::OpenApi;
    axum::Json(crate::openapi::ApiDoc::openapi())
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
