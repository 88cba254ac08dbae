//! `/v1/embeddings`: one job for all inputs; vectors come back in order, as floats or as
//! base64 of little-endian f32 (what the OpenAI SDKs ask for by default).

use axum::Json;
use axum::extract::State;
use base64::Engine;
use serde_json::json;
use switchyard_schemas::{EventBody, JobRequest, ModelKind};

use axum::response::{IntoResponse, Response};

use super::{AppState, estimate_tokens};
use crate::policy::Caller;
use crate::error::ApiError;
use crate::openai::EmbeddingList;
use crate::openapi::ErrorResponses;
use crate::extract::OpenAiJson;
use crate::openai::{EmbeddingRequest, EncodingFormat, UsageOut};
use crate::validate;

#[utoipa::path(post, path = "/v1/embeddings", tag = "embeddings", request_body = EmbeddingRequest, responses((status = 200, body = EmbeddingList), ErrorResponses))]
pub async fn embeddings(
    caller: Caller,
    State(state): State<AppState>,
    OpenAiJson(request): OpenAiJson<EmbeddingRequest>,
) -> Result<Response, ApiError> {
    let model = state.model_for(&caller, &request.model, ModelKind::Embedding).await?;
    let input = validate::embedding(&request, &state.limits)?;
    let count = input.len();
    let estimate = estimate_tokens(input.iter().map(String::len).sum(), 0);
    let submit = state.jobs.submit(&request.model, JobRequest::Embedding { input });
    let (admission, mut handle) = state.gate.admit_and_dispatch(&caller, &model.card, estimate, submit).await?;
    let mut vectors: Vec<Option<Vec<f32>>> = vec![None; count];
    let usage = loop {
        match handle.next_output().await? {
            EventBody::Embeddings { first_index, vectors: batch } => {
                for (offset, vector) in batch.into_iter().enumerate() {
                    if let Some(slot) = vectors.get_mut(first_index as usize + offset) {
                        *slot = Some(vector);
                    }
                }
            }
            EventBody::Done { usage, .. } => break usage,
            EventBody::Error { code, message } => return Err(ApiError::from_job(code, message, "input")),
            EventBody::Started { .. } | EventBody::Delta { .. } => {}
        }
    };
    let format = request.encoding_format.unwrap_or(EncodingFormat::Float);
    let data = vectors
        .into_iter()
        .enumerate()
        .map(|(index, vector)| {
            let vector = vector.ok_or_else(|| ApiError::Internal(format!("the worker returned no vector for input {index}")))?;
            let embedding = match format {
                EncodingFormat::Float => json!(vector),
                EncodingFormat::Base64 => {
                    let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
                    json!(base64::engine::general_purpose::STANDARD.encode(bytes))
                }
            };
            Ok(json!({ "object": "embedding", "index": index, "embedding": embedding }))
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    let headers = admission.headers().clone();
    admission.settle(usage.prompt_tokens);
    let body = Json(json!({
        "object": "list",
        "data": data,
        "model": request.model,
        "usage": { "prompt_tokens": usage.prompt_tokens, "total_tokens": UsageOut::new(usage.prompt_tokens, 0).total_tokens },
    }));
    Ok((headers, body).into_response())
}
