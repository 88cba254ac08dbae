//! `/health` (the process is up) and `/ready` (NATS and Redis both answer).

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;

use crate::state::AppState;

/// `/health`.
#[derive(Serialize, ToSchema)]
pub struct Health {
    /// `ok`.
    pub status: &'static str,
}

/// `/ready`.
#[derive(Serialize, ToSchema)]
pub struct Readiness {
    /// `ready` or `not ready`.
    pub status: &'static str,
    /// `ok` or `unreachable`.
    pub nats: &'static str,
    /// `ok` or `unreachable`.
    pub redis: &'static str,
}

#[utoipa::path(get, path = "/health", tag = "health", security(()), responses((status = 200, description = "The process is up", body = Health)))]
pub async fn health() -> Json<Health> {
    Json(Health { status: "ok" })
}

#[utoipa::path(get, path = "/ready", tag = "health", security(()),
    responses((status = 200, description = "NATS and Redis answer", body = Readiness), (status = 503, description = "NATS or Redis is unreachable", body = Readiness)))]
pub async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Readiness>) {
    let nats = matches!(state.nats.connection_state(), async_nats::connection::State::Connected)
        && tokio::time::timeout(Duration::from_secs(1), state.nats.flush()).await.is_ok_and(|r| r.is_ok());
    let mut redis = state.redis.clone();
    let redis =
        tokio::time::timeout(Duration::from_secs(1), redis::cmd("PING").query_async::<String>(&mut redis)).await.is_ok_and(|r| r.is_ok());
    let status = if nats && redis { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let word = |ok: bool| if ok { "ok" } else { "unreachable" };
    (status, Json(Readiness { status: if nats && redis { "ready" } else { "not ready" }, nats: word(nats), redis: word(redis) }))
}
