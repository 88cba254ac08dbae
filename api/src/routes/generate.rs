//! `/v1/chat/completions` and `/v1/completions`: the request becomes one job per choice (of `n`,
//! of every prompt), answered with one JSON body or with SSE chunks exactly as OpenAI frames
//! them, ending in `data: [DONE]`.

use axum::extract::State;
use axum::response::Response;
use switchyard_openai::request::{ChatCompletionRequest, CompletionRequest};
use switchyard_openai::response::{ChatChoice, Completion, StreamEvent, TextChoice};
use switchyard_openai::{plan_chat, plan_completion};

use super::hosted;
use super::run::{Delivery, run};
use crate::error::{ApiError, ErrorResponses};
use crate::extract::OpenAiJson;
use crate::policy::Caller;
use crate::state::AppState;

#[utoipa::path(post, path = "/v1/chat/completions", tag = "generation", request_body = ChatCompletionRequest,
    responses((status = 200, description = "One JSON body, or with `stream: true` SSE `chat.completion.chunk`s ending in `data: [DONE]`",
        content((Completion<ChatChoice> = "application/json"), (StreamEvent = "text/event-stream"))), ErrorResponses))]
pub async fn chat_completions(
    caller: Caller,
    State(state): State<AppState>,
    OpenAiJson(mut request): OpenAiJson<ChatCompletionRequest>,
) -> Result<Response, ApiError> {
    let model = state.model_for(&caller, &request.model).await?;
    let delivery = Delivery::of(request.stream, request.stream_options.as_ref());
    let hosted = hosted::resolve(&state, &caller, &mut request).await?;
    let plan = plan_chat(request, &state.limits, &model.card)?;
    match hosted {
        Some(hosted) => hosted::run(state, caller, model.card, plan, delivery, hosted).await,
        None => run(state, caller, model.card, plan, delivery).await,
    }
}

#[utoipa::path(post, path = "/v1/completions", tag = "generation", request_body = CompletionRequest,
    responses((status = 200, description = "One JSON body, or with `stream: true` SSE `text_completion` chunks ending in `data: [DONE]`",
        content((Completion<TextChoice> = "application/json"), (StreamEvent = "text/event-stream"))), ErrorResponses))]
pub async fn completions(
    caller: Caller,
    State(state): State<AppState>,
    OpenAiJson(request): OpenAiJson<CompletionRequest>,
) -> Result<Response, ApiError> {
    let model = state.model_for(&caller, &request.model).await?;
    let delivery = Delivery::of(request.stream, request.stream_options.as_ref());
    let plan = plan_completion(request, &state.limits, &model.card)?;
    run(state, caller, model.card, plan, delivery).await
}
