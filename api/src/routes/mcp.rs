//! `/mcp`: the hosted functions as an MCP server (Streamable HTTP, the official `rmcp` SDK).
//! What `/v1/tools` lists and calls, the same way: keys (`Authorization: Bearer`), permissions,
//! rate limits, and one tool job per `tools/call` (see [`super::tools`]).
//!
//! * Every HTTP request is authenticated by the [`Gate`](crate::policy::Gate) before rmcp
//!   sees it (401 with OpenAI's error body and `WWW-Authenticate: Bearer`); the [`Caller`] rides
//!   in the request's extensions to the handler, so each call is checked with the key that
//!   sent it.
//! * `tools/list`: every function the key may call. A tool's name is the function's when no
//!   other visible tool model has a function of that name, else `{model}.{function}` (the
//!   model with characters outside `[A-Za-z0-9_.-]` written `_`); the prefixed name is always
//!   accepted by `tools/call`.
//! * `tools/call`: the result as JSON text content (and `structuredContent` when it is an
//!   object); a streaming function's chunks as `notifications/progress` (with the request's
//!   `progressToken`, `message` = the chunk's JSON) and all of them as the result. A failed
//!   function (`function_failed`, `invalid_arguments`) is a tool result with `isError: true`
//!   and the message; an unknown tool is JSON-RPC error -32602; a refused or unservable call
//!   (429, 503, …) is JSON-RPC error -32603 with OpenAI's error body and the status in `data`.
//! * `notifications/cancelled` cancels the call's job (its handle is dropped).
//!
//! Sessions are rmcp's, in this replica's memory; a client whose session lives on another
//! replica is answered 404 and re-initializes.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, ErrorCode, Implementation, ListToolsResult,
    PaginatedRequestParams, ProgressNotificationParam, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, RoleServer, ServerHandler};
use serde_json::{Value, json};
use switchyard_schemas::FunctionSpec;
use tokio_util::sync::CancellationToken;

use super::tools::{self, Outputs};
use crate::error::ApiError;
use crate::policy::Caller;
use crate::state::AppState;

/// Cancelled at shutdown ([`end_sessions`]): open sessions and their streams end, so the
/// server's graceful shutdown does not wait on them.
static SESSIONS: LazyLock<CancellationToken> = LazyLock::new(CancellationToken::new);

/// Ends every MCP session of this process (at shutdown).
pub fn end_sessions() {
    SESSIONS.cancel();
}

/// The `/mcp` route, authenticated; `body_limit` bounds a POST's JSON-RPC message.
pub(crate) fn router(state: &AppState, body_limit: usize) -> Router<AppState> {
    let handler = Mcp { state: state.clone() };
    let config = StreamableHttpServerConfig::default()
        // Keys guard the api as they do every /v1 route; its host names are the operator's.
        .disable_allowed_hosts()
        .with_max_request_body_bytes(body_limit)
        .with_sse_keep_alive(Some(Duration::from_secs(15)))
        // No priming event before each answer: it cost every call an extra write and an extra
        // client wake-up, and a client that reconnects finds its call cancelled anyway (a
        // disconnect cancels the job).
        .with_sse_retry(None)
        .with_cancellation_token(SESSIONS.child_token());
    let service = StreamableHttpService::new(move || Ok(handler.clone()), Arc::new(LocalSessionManager::default()), config);
    Router::new().route_service("/mcp", service).layer(middleware::from_fn_with_state(state.clone(), authenticate))
}

/// The gate's check of the key, as on every REST route; the caller goes on to the handler.
async fn authenticate(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    match state.gate.authenticate(request.headers().get(header::AUTHORIZATION)).await {
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(error) => {
            let unauthorized = matches!(error, ApiError::Unauthorized(_));
            let mut response = error.into_response();
            if unauthorized {
                response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            response
        }
    }
}

#[derive(Clone)]
struct Mcp {
    state: AppState,
}

/// The caller the [`authenticate`] layer put on the HTTP request of this MCP request.
fn caller_of(context: &RequestContext<RoleServer>) -> Result<Caller, ErrorData> {
    context
        .extensions
        .get::<axum::http::request::Parts>()
        .and_then(|parts| parts.extensions.get::<Caller>())
        .cloned()
        .ok_or_else(|| ErrorData::internal_error("the request was not authenticated", None))
}

/// A visible function under its MCP name.
struct Named {
    name: String,
    model: String,
    spec: FunctionSpec,
}

/// `{model}.{function}`, the model's characters outside `[A-Za-z0-9_.-]` written `_`.
fn prefixed(model: &str, function: &str) -> String {
    let model: String = model.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') { c } else { '_' }).collect();
    format!("{model}.{function}")
}

/// The caller's functions under their MCP names: the function's own when unique among them,
/// else prefixed with the model.
fn named(state: &AppState, caller: &Caller) -> Vec<Named> {
    let visible = tools::visible(state, caller);
    let mut count = std::collections::HashMap::<&str, usize>::new();
    for (_, spec) in &visible {
        *count.entry(spec.name.as_str()).or_default() += 1;
    }
    let names: Vec<String> = visible
        .iter()
        .map(|(model, spec)| if count[spec.name.as_str()] == 1 { spec.name.clone() } else { prefixed(model, &spec.name) })
        .collect();
    visible.into_iter().zip(names).map(|((model, spec), name)| Named { name, model, spec }).collect()
}

/// The (model, function) an MCP tool name stands for among the caller's functions, by the
/// naming of [`named`], found on every call without copying the registry's cards.
fn resolve(state: &AppState, caller: &Caller, name: &str) -> Option<(String, String)> {
    let (mut bare, mut bare_count, mut exact) = (None, 0, None);
    state.directory.visit_live(|entry| {
        if !tools::is_tool_model(entry) || !caller.may_use(&entry.card) {
            return;
        }
        for spec in &entry.card.functions {
            if spec.name == name {
                bare_count += 1;
                bare = Some(entry.card.name.clone());
            } else if name.len() == entry.card.name.len() + 1 + spec.name.len()
                && name.ends_with(spec.name.as_str())
                && prefixed(&entry.card.name, &spec.name) == name
            {
                exact = Some((entry.card.name.clone(), spec.name.clone()));
            }
        }
    });
    match bare {
        Some(model) if bare_count == 1 => Some((model, name.to_owned())),
        // A name several models share is only reachable prefixed, as `named` lists it.
        _ => exact,
    }
}

fn tool_of(named: &Named) -> Tool {
    let schema = match &named.spec.parameters {
        Value::Object(schema) => schema.clone(),
        _ => json!({"type": "object"}).as_object().cloned().unwrap_or_default(),
    };
    let description = if named.spec.description.is_empty() {
        format!("`{}` of the tool model `{}`.", named.spec.name, named.model)
    } else {
        named.spec.description.clone()
    };
    let mut tool = Tool::new(named.name.clone(), description, Arc::new(schema));
    // An object result is also the call's structuredContent; MCP's output schemas are objects.
    if !named.spec.streams
        && let Some(result @ Value::Object(schema)) = &named.spec.result
        && result.get("type").and_then(Value::as_str) == Some("object")
    {
        tool.output_schema = Some(Arc::new(schema.clone()));
    }
    tool
}

/// An error of the api that is not the function's, as JSON-RPC's internal error with
/// OpenAI's body and the HTTP status REST would have answered.
fn rpc_error(error: ApiError) -> ErrorData {
    let data = json!({"status": error.status().as_u16(), "error": error.body().error});
    ErrorData::new(ErrorCode::INTERNAL_ERROR, error.to_string(), Some(data))
}

impl Mcp {
    async fn call(&self, request: CallToolRequestParams, context: &RequestContext<RoleServer>) -> Result<CallToolResult, ErrorData> {
        let caller = caller_of(context)?;
        let name = request.name.as_ref();
        let Some((model, function)) = resolve(&self.state, &caller, name) else {
            return Err(ErrorData::invalid_params(format!("Unknown tool: {name}"), None));
        };
        let arguments = Value::Object(request.arguments.unwrap_or_default());
        let (entry, spec) = match tools::function_of(&self.state, &caller, &model, &function).await {
            Ok(found) => found,
            Err(ApiError::ModelNotFound(_) | ApiError::ToolNotFound { .. }) => {
                return Err(ErrorData::invalid_params(format!("Unknown tool: {name}"), None));
            }
            Err(error) => return Err(rpc_error(error)),
        };
        let (admission, handle) = tools::start_call(&self.state, &caller, &entry, &spec.name, arguments).await.map_err(rpc_error)?;
        let mut outputs = Outputs::new(handle, admission, spec.streams);
        let progress_token = context.meta.get_progress_token();
        let mut sent = 0u64;
        let ended = loop {
            match outputs.next_chunk().await {
                Ok(Some(chunk)) => {
                    let Some(token) = &progress_token else { continue };
                    sent += 1;
                    let mut progress = ProgressNotificationParam::new(token.clone(), sent as f64);
                    progress.message = Some(chunk.to_string());
                    // A client gone is the cancellation's business, not this loop's.
                    let _ = context.peer.notify_progress(progress).await;
                }
                Ok(None) => break Ok(()),
                Err(error) => break Err(error),
            }
        };
        match ended {
            Ok(()) => {
                let value = outputs.into_value();
                let mut result = CallToolResult::success(vec![ContentBlock::text(value.to_string())]);
                if value.is_object() {
                    result.structured_content = Some(value);
                }
                Ok(result)
            }
            Err(error @ ApiError::Job(_)) => Ok(CallToolResult::error(vec![ContentBlock::text(error.to_string())])),
            Err(error) => Err(rpc_error(error)),
        }
    }
}

impl ServerHandler for Mcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("switchyard", env!("CARGO_PKG_VERSION")))
            .with_instructions("The functions hosted on Switchyard's tool workers that this API key may call.")
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let caller = caller_of(&context)?;
        Ok(ListToolsResult::with_all_items(named(&self.state, &caller).iter().map(tool_of).collect()))
    }

    async fn call_tool(&self, request: CallToolRequestParams, context: RequestContext<RoleServer>) -> Result<CallToolResponse, ErrorData> {
        // A cancellation drops the call, and with it the job's handle: the job is cancelled.
        let ct = context.ct.clone();
        tokio::select! {
            result = self.call(request, &context) => result.map(CallToolResponse::from),
            () = ct.cancelled() => Err(ErrorData::new(ErrorCode::INTERNAL_ERROR, "cancelled", None)),
        }
    }
}

/// The OpenAPI document with `/mcp` described: a tag (JSON-RPC over Streamable HTTP is not
/// an operation OpenAPI can state), and a line in the document's description.
pub fn described(mut openapi: utoipa::openapi::OpenApi) -> utoipa::openapi::OpenApi {
    const MCP: &str = "`/mcp` serves the same functions as `/v1/tools` to MCP clients (Model Context Protocol, \
        Streamable HTTP transport: JSON-RPC 2.0 in `POST /mcp`, server messages as SSE): `tools/list`, and `tools/call` \
        as a tool job with the same keys, permissions and rate limits. Authenticate with `Authorization: Bearer <key>`; \
        without a valid key it answers 401 with OpenAI's error body.";
    let tag = utoipa::openapi::tag::TagBuilder::new().name("mcp").description(Some(MCP)).build();
    openapi.tags.get_or_insert_with(Vec::new).push(tag);
    let description = openapi.info.description.take().unwrap_or_default();
    openapi.info.description = Some(format!("{description} {MCP}").trim().to_owned());
    openapi
}
