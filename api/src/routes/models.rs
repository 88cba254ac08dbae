//! `/v1/models`: the models that have a live worker now.

use axum::Json;
use axum::extract::{Path, State};
use switchyard_openai::response::{ModelList, ModelObject};

use crate::directory::ModelEntry;
use crate::error::{ApiError, ErrorResponses};
use crate::policy::Caller;
use crate::state::AppState;

fn object(entry: ModelEntry) -> ModelObject {
    ModelObject::new(entry.card, entry.live_workers)
}

#[utoipa::path(get, path = "/v1/models", tag = "models", responses((status = 200, body = ModelList), ErrorResponses))]
pub async fn list(caller: Caller, State(state): State<AppState>) -> Json<ModelList> {
    Json(ModelList::new(state.directory.live().into_iter().filter(|m| caller.may_use(&m.card)).map(object).collect()))
}

#[utoipa::path(get, path = "/v1/models/{model}", tag = "models", params(("model" = String, Path, description = "Model name; may contain `/`")), responses((status = 200, body = ModelObject), ErrorResponses))]
pub async fn retrieve(caller: Caller, State(state): State<AppState>, Path(model): Path<String>) -> Result<Json<ModelObject>, ApiError> {
    match state.directory.lookup(&model).await {
        Ok(entry) if entry.live_workers > 0 && caller.may_use(&entry.card) => Ok(Json(object(entry))),
        _ => Err(ApiError::ModelNotFound(model)),
    }
}
