//! The OpenAPI document of every route, generated from the handlers' annotations and the
//! request types, served at `GET /openapi.json`.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::openai::*;
use crate::routes::{embeddings, generate, health, models};

#[derive(OpenApi)]
#[openapi(
    info(title = "Switchyard", description = "OpenAI-compatible api of Switchyard: chat, completions and embeddings served by workers behind NATS."),
    paths(
        models::list,
        models::retrieve,
        generate::chat_completions,
        generate::completions,
        embeddings::embeddings,
        health::health,
        health::ready,
    ),
    components(schemas(
        ChatCompletionRequest, CompletionRequest, EmbeddingRequest, Completion<ChatChoice>, Completion<TextChoice>, EmbeddingList, ModelList,
        ModelObject, ErrorResponse, ErrorObject, UsageOut
    )),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearer", SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()));
    }
}

/// The error statuses every `/v1` route may answer with, each in OpenAI's error body.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub enum ErrorResponses {
    /// Malformed JSON, a wrong field type, or a parameter out of range (`param` names it).
    #[response(status = 400)]
    BadRequest(ErrorResponse),
    /// Missing, unknown, revoked or expired API key.
    #[response(status = 401)]
    Unauthorized(ErrorResponse),
    /// Unknown model, or one this key may not use.
    #[response(status = 404)]
    NotFound(ErrorResponse),
    /// Body over the configured limit.
    #[response(status = 413)]
    TooLarge(ErrorResponse),
    /// A rate limit refused the request (`Retry-After`, `x-ratelimit-*` headers).
    #[response(status = 429)]
    RateLimited(ErrorResponse),
    /// No worker took the job in time, or NATS/Redis is unreachable.
    #[response(status = 503)]
    Unavailable(ErrorResponse),
}
