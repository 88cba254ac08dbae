//! The OpenAPI document of every route, generated from the handlers' annotations and the
//! request and response types of `switchyard-openai`, served at `GET /openapi.json`.

use switchyard_openai::request::*;
use switchyard_openai::response::*;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::routes::health::{Health, Readiness};
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
        ModelObject, ErrorResponse, ErrorObject, UsageOut, Health, Readiness
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
