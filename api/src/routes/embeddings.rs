//! `/v1/embeddings`: one job for all inputs; vectors come back in order, as floats or as
//! base64 of little-endian f32 (what the OpenAI SDKs ask for by default).

use axum::extract::State;
use axum::response::Response;
use switchyard_openai::plan_embeddings;
use switchyard_openai::request::EmbeddingRequest;
use switchyard_openai::response::EmbeddingList;

use super::run::{Delivery, run};
use crate::error::{ApiError, ErrorResponses};
use crate::extract::OpenAiJson;
use crate::policy::Caller;
use crate::state::AppState;

#[utoipa::path(post, path = "/v1/embeddings", tag = "embeddings", request_body = EmbeddingRequest, responses((status = 200, body = EmbeddingList), ErrorResponses))]
pub async fn embeddings(
    caller: Caller,
    State(state): State<AppState>,
    OpenAiJson(request): OpenAiJson<EmbeddingRequest>,
) -> Result<Response, ApiError> {
    let model = state.model_for(&caller, &request.model).await?;
    let plan = plan_embeddings(request, &state.limits, &model.card)?;
    run(state, caller, model.card, plan, Delivery::Whole).await
}
