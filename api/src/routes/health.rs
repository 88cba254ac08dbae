//! `/health` (the process is up) and `/ready` (NATS and Redis both answer).

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::AppState;

#[utoipa::path(get, path = "/health", tag = "health", security(()), responses((status = 200, description = "The process is up")))]
pub async fn health() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

#[utoipa::path(get, path = "/ready", tag = "health", security(()), responses((status = 200, description = "NATS and Redis answer"), (status = 503, description = "NATS or Redis is unreachable")))]
pub async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let nats = matches!(state.nats.connection_state(), async_nats::connection::State::Connected)
        && tokio::time::timeout(Duration::from_secs(1), state.nats.flush()).await.is_ok_and(|r| r.is_ok());
    let mut redis = state.redis.clone();
    let redis = tokio::time::timeout(Duration::from_secs(1), redis::cmd("PING").query_async::<String>(&mut redis))
        .await
        .is_ok_and(|r| r.is_ok());
    let status = if nats && redis { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let word = |ok: bool| if ok { "ok" } else { "unreachable" };
    (status, Json(json!({ "status": if nats && redis { "ready" } else { "not ready" }, "nats": word(nats), "redis": word(redis) })))
}
