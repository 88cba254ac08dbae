//! `/v1/models`: the models that have a live worker now.

use axum::Json;
use axum::extract::{Path, State};
use serde_json::{Value, json};
use switchyard_schemas::ModelKind;

use super::AppState;
use crate::directory::ModelEntry;
use crate::error::ApiError;
use crate::openai::{ModelList, ModelObject};
use crate::openapi::ErrorResponses;
use crate::policy::Caller;

fn object(entry: ModelEntry) -> ModelObject {
    ModelObject {
        id: entry.card.name,
        object: "model",
        created: entry.card.created,
        owned_by: entry.card.owned_by,
        kind: match entry.card.kind {
            ModelKind::Chat => "chat",
            ModelKind::Embedding => "embedding",
            ModelKind::Tool => "tool",
        },
        context_length: entry.card.context_length,
        live_workers: entry.live_workers,
    }
}

#[utoipa::path(get, path = "/v1/models", tag = "models", responses((status = 200, body = ModelList), ErrorResponses))]
pub async fn list(caller: Caller, State(state): State<AppState>) -> Json<Value> {
    let data: Vec<ModelObject> = state.directory.live().into_iter().filter(|m| caller.may_use(&m.card)).map(object).collect();
    Json(json!({ "object": "list", "data": data }))
}

#[utoipa::path(get, path = "/v1/models/{model}", tag = "models", params(("model" = String, Path, description = "Model name; may contain `/`")), responses((status = 200, body = ModelObject), ErrorResponses))]
pub async fn retrieve(caller: Caller, State(state): State<AppState>, Path(model): Path<String>) -> Result<Json<ModelObject>, ApiError> {
    match state.directory.lookup(&model).await {
        Ok(entry) if entry.live_workers > 0 && caller.may_use(&entry.card) => Ok(Json(object(entry))),
        _ => Err(ApiError::ModelNotFound(model)),
    }
}
