//! The OpenAPI document of every route, generated from the handlers' annotations and the
//! request and response types of `switchyard-openai`, served at `GET /openapi.json`.

use switchyard_openai::request::*;
use switchyard_openai::response::*;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::routes::async_jobs::{CreateJob, JobObject, JobStatus};
use crate::routes::batches::{CreateBatch, ExpiresAfter};
use crate::routes::files::{FileDeleted, FileObject, Page};
use crate::routes::health::{Health, Readiness};
use crate::routes::tools::{FunctionDefinition, HostedTool, ToolList};
use crate::routes::{async_jobs, batches, embeddings, files, generate, health, models, tools};
use switchyard_scheduler::batches::object::{
    Batch, BatchError, BatchErrors, BatchStatus, LineError, LineResponse, OutputLine, RequestCounts,
};

#[derive(OpenApi)]
#[openapi(
    info(title = "Switchyard", description = "OpenAI-compatible api of Switchyard: chat, completions and embeddings served by workers behind NATS, and functions hosted on tool workers; files, batches and async jobs run on the same queue."),
    paths(
        models::list,
        models::retrieve,
        generate::chat_completions,
        generate::completions,
        embeddings::embeddings,
        tools::list,
        tools::list_model,
        tools::call,
        files::upload,
        files::list,
        files::retrieve,
        files::content,
        files::delete,
        batches::create,
        batches::list,
        batches::retrieve,
        batches::cancel,
        async_jobs::create,
        async_jobs::retrieve,
        async_jobs::events,
        async_jobs::cancel,
        health::health,
        health::ready,
    ),
    components(schemas(
        ChatCompletionRequest, CompletionRequest, EmbeddingRequest, Completion<ChatChoice>, Completion<TextChoice>, EmbeddingList, ModelList,
        ModelObject, ErrorResponse, ErrorObject, UsageOut, Health, Readiness, FileObject, FileDeleted, Page<FileObject>, Page<Batch>,
        CreateBatch, ExpiresAfter, Batch, BatchStatus, BatchErrors, BatchError, RequestCounts, OutputLine, LineResponse, LineError,
        CreateJob, JobObject, JobStatus, ToolList, HostedTool, FunctionDefinition, HostedToolCallOut, ToolType
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
