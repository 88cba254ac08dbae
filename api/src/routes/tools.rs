//! `/v1/tools`: the functions hosted on tool workers — listed as OpenAI tool definitions, and
//! called over REST as one JSON value or an SSE stream of chunks. A call is a tool job on the
//! same queue as every model's (permissions, limits, redelivery, cancellation on disconnect).

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::Serialize;
use serde_json::Value;
use switchyard_openai::JobFailure;
use switchyard_schemas::{EventBody, FunctionSpec, JobRequest, Lane, ModelCard, ModelKind};
use utoipa::ToSchema;

use crate::directory::ModelEntry;
use crate::error::{ApiError, ErrorResponses};
use crate::policy::{Admission, Caller};
use crate::state::AppState;

#[derive(Debug, Serialize, ToSchema)]
pub struct ToolList {
    /// Always `list`.
    pub object: &'static str,
    pub data: Vec<HostedTool>,
}

/// A hosted function as an OpenAI tool definition, with the model that hosts it.
#[derive(Debug, Serialize, ToSchema)]
pub struct HostedTool {
    /// Always `function`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub function: FunctionDefinition,
    /// The tool model hosting it: call it at `POST /v1/tools/{model}/{name}`.
    pub model: String,
    /// It streams its output as chunks (call it with `"stream": true` to receive them as
    /// they come; without, they are answered together as one JSON array).
    pub streams: bool,
    /// JSON Schema of its result (of each chunk, when it streams), when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FunctionDefinition {
    pub name: String,
    pub description: String,
    /// JSON Schema of the arguments object.
    pub parameters: Value,
}

impl HostedTool {
    fn new(model: &str, spec: &FunctionSpec) -> HostedTool {
        HostedTool {
            kind: "function",
            function: FunctionDefinition {
                name: spec.name.clone(),
                description: spec.description.clone(),
                parameters: spec.parameters.clone(),
            },
            model: model.to_owned(),
            streams: spec.streams,
            result: spec.result.clone(),
        }
    }
}

fn tools_of(card: &ModelCard) -> impl Iterator<Item = HostedTool> + '_ {
    card.functions.iter().map(|spec| HostedTool::new(&card.name, spec))
}

pub(crate) fn is_tool_model(entry: &ModelEntry) -> bool {
    entry.card.kind == ModelKind::Tool
}

#[utoipa::path(get, path = "/v1/tools", tag = "tools", responses((status = 200, body = ToolList), ErrorResponses))]
/// Every function the key may call, across the tool models that have a live worker.
pub async fn list(caller: Caller, State(state): State<AppState>) -> Json<ToolList> {
    let data = visible(&state, &caller).into_iter().map(|(model, spec)| HostedTool::new(&model, &spec)).collect();
    Json(ToolList { object: "list", data })
}

/// Every function `caller` may call, with the tool model hosting it (models by name, then
/// functions in the order the worker declares them): what `GET /v1/tools` and MCP's
/// `tools/list` show.
pub(crate) fn visible(state: &AppState, caller: &Caller) -> Vec<(String, FunctionSpec)> {
    state
        .directory
        .live()
        .into_iter()
        .filter(|m| is_tool_model(m) && m.live_workers > 0 && caller.may_use(&m.card))
        .flat_map(|m| {
            let ModelCard { name, functions, .. } = m.card;
            functions.into_iter().map(move |spec| (name.clone(), spec))
        })
        .collect()
}

/// `GET /v1/tools/{model}` lists one tool model's functions; `POST /v1/tools/{model}/{function}`
/// calls one. Model names may contain `/`; function names never do.
#[utoipa::path(get, path = "/v1/tools/{model}", tag = "tools", params(("model" = String, Path, description = "Tool model name; may contain `/`")), responses((status = 200, body = ToolList), ErrorResponses))]
pub async fn list_model(caller: Caller, State(state): State<AppState>, Path(model): Path<String>) -> Result<Json<ToolList>, ApiError> {
    let entry = tool_model(&state, &caller, &model).await?;
    // Listed, like `/v1/models/{model}`, only while a worker serves it.
    if entry.live_workers == 0 {
        return Err(ApiError::ModelNotFound(model));
    }
    Ok(Json(ToolList { object: "list", data: tools_of(&entry.card).collect() }))
}

/// A tool model the registry knows and the caller may use. Like a chat model's, its calls
/// are queued even while no worker is live: one that starts within the queue timeout takes
/// them, else they are answered 503.
pub(crate) async fn tool_model(state: &AppState, caller: &Caller, model: &str) -> Result<ModelEntry, ApiError> {
    match state.model_for(caller, model).await {
        Ok(entry) if is_tool_model(&entry) => Ok(entry),
        _ => Err(ApiError::ModelNotFound(model.to_owned())),
    }
}

/// Calls a hosted function with the body's arguments. The answer is the function's result
/// as JSON — or, with `"stream": true` in the body (when the function has no argument of
/// that name) or `Accept: text/event-stream`, an SSE stream of its chunks (`data: <json>`),
/// ending with `data: [DONE]`.
#[utoipa::path(
    post,
    path = "/v1/tools/{model}/{function}",
    tag = "tools",
    params(
        ("model" = String, Path, description = "Tool model name; may contain `/`"),
        ("function" = String, Path, description = "Function name"),
    ),
    request_body(content = Object, description = "The function's arguments, by name"),
    responses(
        (status = 200, description = "The function's result (any JSON value), or an SSE stream of its chunks", body = Object),
        (status = 500, description = "The function failed (`function_failed`)", body = switchyard_openai::response::ErrorResponse),
        ErrorResponses
    )
)]
pub async fn call(
    caller: Caller,
    State(state): State<AppState>,
    Path(path): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (model, function) =
        path.rsplit_once('/').ok_or_else(|| ApiError::RouteNotFound { method: "POST".into(), path: format!("/v1/tools/{path}") })?;
    let (entry, spec) = function_of(&state, &caller, model, function).await?;
    let mut arguments = arguments(&body)?;
    let wants_sse = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|accept| accept.contains("text/event-stream"));
    let stream = wants_sse || take_stream_flag(&mut arguments, &spec)?;
    let (admission, handle) = start_call(&state, &caller, &entry, function, arguments).await?;
    let limit_headers = admission.headers().clone();
    let response = if stream {
        stream_call(handle, admission).await?
    } else {
        Json(Outputs::new(handle, admission, spec.streams).collect().await?).into_response()
    };
    Ok((limit_headers, response).into_response())
}

/// A function the caller may call, with its tool model; a model the caller may not use is
/// `model_not_found`, like one that does not exist.
pub(crate) async fn function_of(
    state: &AppState,
    caller: &Caller,
    model: &str,
    function: &str,
) -> Result<(ModelEntry, FunctionSpec), ApiError> {
    let entry = tool_model(state, caller, model).await?;
    let spec = entry
        .card
        .functions
        .iter()
        .find(|f| f.name == function)
        .cloned()
        .ok_or_else(|| ApiError::ToolNotFound { model: model.to_owned(), function: function.to_owned() })?;
    Ok((entry, spec))
}

/// Submits a call of `function` as a tool job, admitted against the caller's and the
/// model's limits (429 when refused). Dropping the handle cancels the call.
pub(crate) async fn start_call(
    state: &AppState,
    caller: &Caller,
    entry: &ModelEntry,
    function: &str,
    arguments: Value,
) -> Result<(Admission, switchyard_client::JobHandle), ApiError> {
    let request = JobRequest::Tool { function: function.to_owned(), arguments };
    let submit = async { Ok::<_, ApiError>(state.jobs.submit_since(Lane::Interactive, &entry.card.name, request, caller.arrived).await?) };
    state.gate.admit_and_dispatch(caller, &entry.card, 0, submit).await
}

/// The body as the arguments object; an empty body is no arguments.
fn arguments(body: &[u8]) -> Result<Value, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Object(Default::default()));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(value @ Value::Object(_)) => Ok(value),
        Ok(_) => Err(ApiError::invalid("arguments", "The body must be a JSON object of the function's arguments.")),
        Err(e) => Err(ApiError::invalid("arguments", format!("The body is not valid JSON: {e}"))),
    }
}

/// Removes and reads a top-level `"stream"` — unless the function takes an argument of
/// that name, which then stays an argument.
fn take_stream_flag(arguments: &mut Value, spec: &FunctionSpec) -> Result<bool, ApiError> {
    let declared = spec.parameters.pointer("/properties/stream").is_some();
    let Some(object) = arguments.as_object_mut().filter(|_| !declared) else { return Ok(false) };
    match object.remove("stream") {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(b),
        Some(_) => Err(ApiError::invalid("stream", "`stream` must be a boolean.")),
    }
}

/// What a call answers, read as it comes: a streaming function's chunks one by one, then the
/// whole value. The admission is settled when the job ends (or when this is dropped, which
/// also cancels the job).
pub(crate) struct Outputs {
    handle: switchyard_client::JobHandle,
    admission: Option<Admission>,
    streams: bool,
    chunks: Vec<Value>,
    result: Option<Value>,
}

impl Outputs {
    pub(crate) fn new(handle: switchyard_client::JobHandle, admission: Admission, streams: bool) -> Outputs {
        Outputs { handle, admission: Some(admission), streams, chunks: Vec::new(), result: None }
    }

    /// The next chunk, or `None` once the call has ended well; a failed function is
    /// [`ApiError::Job`] (`function_failed`, `invalid_arguments`).
    pub(crate) async fn next_chunk(&mut self) -> Result<Option<Value>, ApiError> {
        if self.admission.is_none() {
            return Ok(None);
        }
        let outcome = loop {
            match self.handle.next_output().await {
                Ok(EventBody::ToolResult { value }) => self.result = Some(value),
                Ok(EventBody::ToolChunk { value }) => {
                    self.chunks.push(value.clone());
                    return Ok(Some(value));
                }
                Ok(EventBody::Done { .. }) => break Ok(None),
                Ok(EventBody::Error { code, message, upstream }) => break Err(JobFailure::new(code, message, upstream, "arguments").into()),
                Ok(_) => {}
                Err(e) => break Err(ApiError::from(e)),
            }
        };
        if let Some(admission) = self.admission.take() {
            admission.settle(0);
        }
        outcome
    }

    /// Reads the call to its end: its result, or a streaming function's chunks as one array.
    pub(crate) async fn collect(mut self) -> Result<Value, ApiError> {
        while self.next_chunk().await?.is_some() {}
        Ok(self.into_value())
    }

    /// What the call answered so far: its result, or the chunks as one array (a function that
    /// returned nothing: `null`).
    pub(crate) fn into_value(self) -> Value {
        match self.result {
            Some(value) if self.chunks.is_empty() => value,
            None if self.streams || !self.chunks.is_empty() => Value::Array(self.chunks),
            _ => Value::Null,
        }
    }
}

/// The chunks (or the one result) as SSE, each a `data:` frame of its JSON value. An error
/// before any output is an ordinary HTTP error; after, it is a last frame named `event: error`
/// holding the OpenAI error body, so no chunk a function yields (a `{"error": …}` object, say)
/// can be mistaken for it.
async fn stream_call(handle: switchyard_client::JobHandle, admission: Admission) -> Result<Response, ApiError> {
    let mut events = Box::pin(handle.into_stream());
    let first = events.next().await.map(|event| event.map_err(ApiError::from));
    let (first, admission) = super::sse::first_output(first, "arguments", admission)?;
    let mut admission = Some(admission);
    let frames = futures::stream::iter([Ok(first)]).chain(events).map(move |event| {
        // Each event is one frame; the job's last one settles the admission.
        let (frame, last) = match event {
            Ok(EventBody::ToolChunk { value } | EventBody::ToolResult { value }) => (format!("data: {value}\n\n"), false),
            Ok(EventBody::Done { .. }) => ("data: [DONE]\n\n".to_owned(), true),
            Ok(EventBody::Error { code, message, upstream }) => {
                (error_frame(JobFailure::new(code, message, upstream, "arguments").into()), true)
            }
            Ok(_) => (String::new(), false),
            Err(e) => (error_frame(e.into()), true),
        };
        if last && let Some(admission) = admission.take() {
            admission.settle(0);
        }
        Ok::<_, std::convert::Infallible>(Bytes::from(frame))
    });
    Ok(([(header::CONTENT_TYPE, "text/event-stream"), (header::CACHE_CONTROL, "no-cache")], Body::from_stream(frames)).into_response())
}

fn error_frame(error: ApiError) -> String {
    format!("event: error\ndata: {}\n\n", serde_json::to_string(&error.body()).unwrap_or_default())
}
