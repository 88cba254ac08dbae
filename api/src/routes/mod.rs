//! The router: every route, the shared state, and OpenAI-shaped answers for unknown routes
//! and wrong methods.

mod embeddings;
mod generate;
mod health;
mod models;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::directory::Directory;
use crate::error::ApiError;
use crate::extract::BodyLimit;
use crate::jobs::Jobs;
use crate::validate::Limits;

#[derive(Clone)]
pub struct AppState {
    pub jobs: Arc<Jobs>,
    pub directory: Directory,
    pub limits: Limits,
    pub nats: async_nats::Client,
    pub redis: redis::aio::ConnectionManager,
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
