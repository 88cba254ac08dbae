//! Hosted functions resolved on the server (`tools` of type `hosted` in a chat request), as
//! OpenAI's Responses API runs remote MCP tools: [`resolve`] turns each into ordinary function
//! tools with the tool model's schemas before planning, and [`run`] runs the loop — the chat
//! job; when its answer calls only hosted functions, each call as a tool job on its tool model
//! (the caller's permissions and limits, a round's calls at once), the assistant message and one
//! `tool` message per call appended, and the chat job again, for at most `--max-tool-rounds`
//! rounds. Any other answer (plain text, a client's own function among the calls, the last
//! round's) goes to the client as it is.
//!
//! Every job of the loop is owned by the future that answers the request (the handler, or the
//! SSE body's stream): when the client goes away it is dropped, and with it every
//! [`JobHandle`], which cancels its job.

use std::collections::{HashMap, HashSet};

use axum::Json;
use axum::body::{Body, Bytes};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use futures::stream::FuturesOrdered;
use serde_json::{Value, json};
use switchyard_client::JobHandle;
use switchyard_openai::request::{ChatCompletionRequest, FunctionDefinition, ToolIn, ToolType};
use switchyard_openai::response::{ChatChunkChoice, ChatDelta, ChatLogprobs, FunctionDelta, HostedToolCallOut, ToolCallDelta, UsageOut};
use switchyard_openai::{Answer, Generation, JobOutput, Plan, Reply};
use switchyard_schemas::{
    ChatMessage, EventBody, FinishReason, FunctionSpec, JobRequest, Lane, ModelCard, ResponseFormat, SamplingParams, TokenLogprob,
    ToolCall, ToolUse, Usage,
};

use super::run::Delivery;
use super::sse::{first_output, write_event};
use super::tools::{Outputs, start_call, tool_model};
use crate::directory::ModelEntry;
use crate::error::ApiError;
use crate::policy::{Admission, Caller};
use crate::state::AppState;

/// The hosted functions a request offers its model, by function name.
pub(crate) struct Hosted {
    functions: HashMap<String, (ModelEntry, FunctionSpec)>,
}

/// Replaces the request's `hosted` tools by function tools with their functions' names,
/// descriptions and parameter schemas (in place, in order); `None` when it has none. A tool
/// model the caller may not use is `model_not_found`, like one that does not exist; an unknown
/// function or a name another tool has is a 400 naming it; `n` above 1 is refused.
pub(crate) async fn resolve(state: &AppState, caller: &Caller, request: &mut ChatCompletionRequest) -> Result<Option<Hosted>, ApiError> {
    if !request.tools.iter().flatten().any(|tool| tool.kind == ToolType::Hosted) {
        return Ok(None);
    }
    if request.n.is_some_and(|n| n > 1) {
        return Err(ApiError::invalid("n", "Invalid 'n': hosted tools answer one choice; 'n' must be 1."));
    }
    let tools = request.tools.take().unwrap_or_default();
    let client: HashSet<String> = tools.iter().filter_map(|tool| tool.function.as_ref().map(|f| f.name.clone())).collect();
    let mut functions = HashMap::new();
    let mut resolved = Vec::with_capacity(tools.len());
    for (i, tool) in tools.into_iter().enumerate() {
        if tool.kind != ToolType::Hosted {
            resolved.push(tool);
            continue;
        }
        let model = tool
            .model
            .ok_or_else(|| ApiError::invalid(format!("tools[{i}].model"), format!("Missing required parameter: 'tools[{i}].model'.")))?;
        let entry = tool_model(state, caller, &model).await?;
        let chosen: Vec<(String, FunctionSpec)> = match tool.functions {
            None => entry.card.functions.iter().map(|spec| (format!("tools[{i}]"), spec.clone())).collect(),
            Some(names) => {
                let mut chosen = Vec::with_capacity(names.len());
                for (j, name) in names.iter().enumerate() {
                    let param = format!("tools[{i}].functions[{j}]");
                    let Some(spec) = entry.card.functions.iter().find(|spec| spec.name == *name) else {
                        let message = format!("Invalid '{param}': the tool model `{model}` has no function `{name}`.");
                        return Err(ApiError::invalid(param, message));
                    };
                    chosen.push((param, spec.clone()));
                }
                chosen
            }
        };
        for (param, spec) in chosen {
            if client.contains(&spec.name) || functions.contains_key(&spec.name) {
                return Err(ApiError::invalid(
                    param.clone(),
                    format!("Invalid '{param}': the function name '{}' is already another tool's in 'tools'.", spec.name),
                ));
            }
            resolved.push(ToolIn {
                kind: ToolType::Function,
                function: Some(FunctionDefinition {
                    name: spec.name.clone(),
                    description: (!spec.description.is_empty()).then(|| spec.description.clone()),
                    parameters: Some(spec.parameters.clone()),
                    strict: None,
                }),
                model: None,
                functions: None,
            });
            functions.insert(spec.name.clone(), (entry.clone(), spec));
        }
    }
    request.tools = Some(resolved);
    Ok(Some(Hosted { functions }))
}

/// Answers a planned chat request (one choice) whose tools include hosted functions.
pub(crate) async fn run(
    state: AppState,
    caller: Caller,
    card: ModelCard,
    plan: Plan,
    delivery: Delivery,
    hosted: Hosted,
) -> Result<Response, ApiError> {
    let Plan { jobs, estimate, reply } = plan;
    let (Reply::Generation(reply), Some(JobRequest::Chat { messages, params, tools, response_format })) = (reply, jobs.into_iter().next())
    else {
        return Err(ApiError::Internal("a chat request with hosted tools planned no chat job".into()));
    };
    let rounds_left = state.max_tool_rounds;
    let conversation = Conversation {
        state,
        caller,
        card,
        messages,
        params,
        tools,
        response_format,
        estimate,
        hosted,
        rounds_left,
        usage: Usage::default(),
        calls: Vec::new(),
    };
    let (admission, handle) = conversation.start_round().await?;
    let headers = admission.headers().clone();
    let response = match delivery {
        Delivery::Whole => Json(conversation.whole(reply, admission, handle).await?).into_response(),
        Delivery::Stream { include_usage } => conversation.stream(reply, include_usage, admission, handle).await?,
    };
    Ok((headers, response).into_response())
}

/// The loop's state: the conversation so far and what the rounds have cost.
struct Conversation {
    state: AppState,
    caller: Caller,
    card: ModelCard,
    messages: Vec<ChatMessage>,
    params: SamplingParams,
    tools: Option<ToolUse>,
    response_format: ResponseFormat,
    /// Tokens charged up front for the next chat job.
    estimate: u32,
    hosted: Hosted,
    rounds_left: u32,
    /// Every chat job's usage, summed.
    usage: Usage,
    calls: Vec<HostedToolCallOut>,
}

impl Conversation {
    /// Submits the chat job of the conversation so far, admitted against the caller's limits.
    async fn start_round(&self) -> Result<(Admission, JobHandle), ApiError> {
        let request = JobRequest::Chat {
            messages: self.messages.clone(),
            params: self.params.clone(),
            tools: self.tools.clone(),
            response_format: self.response_format.clone(),
        };
        let submit = async {
            Ok::<_, ApiError>(self.state.jobs.submit_since(Lane::Interactive, &self.card.name, request, self.caller.arrived).await?)
        };
        self.state.gate.admit_and_dispatch(&self.caller, &self.card, self.estimate, submit).await
    }

    /// Whether the api runs this answer's calls: all of them hosted, and a round left.
    fn runs_calls(&self, output: &JobOutput) -> bool {
        output.finish_reason == Some(FinishReason::ToolCalls)
            && !output.tool_calls.is_empty()
            && output.tool_calls.iter().all(|call| self.hosted.functions.contains_key(&call.name))
            && self.rounds_left > 0
    }

    /// Runs one call as a tool job on its tool model; a failure (of the function, or of
    /// the call: bad JSON, no capacity, a rate limit) is the record's `error`.
    async fn call(&self, call: &ToolCall) -> HostedToolCallOut {
        let (entry, spec) = &self.hosted.functions[&call.name];
        let outcome = async {
            let arguments: Value = serde_json::from_str(&call.arguments).map_err(|e| format!("The arguments are not JSON: {e}"))?;
            let (admission, handle) =
                start_call(&self.state, &self.caller, entry, &call.name, arguments).await.map_err(|e| e.to_string())?;
            Outputs::new(handle, admission, spec.streams).collect().await.map_err(|e| e.to_string())
        }
        .await;
        let (result, error) = match outcome {
            Ok(value) => (Some(value), None),
            Err(message) => (None, Some(message)),
        };
        HostedToolCallOut {
            id: call.id.clone(),
            model: entry.card.name.clone(),
            function: call.name.clone(),
            arguments: call.arguments.clone(),
            result,
            error,
        }
    }

    /// Appends the answer that made the calls, and their answers, for the next round.
    fn append(&mut self, output: JobOutput, records: Vec<HostedToolCallOut>) {
        let before: usize = self.messages.iter().map(|m| m.content.len()).sum();
        let assistant =
            ChatMessage { role: "assistant".into(), content: output.text, name: None, tool_calls: output.tool_calls, tool_call_id: None };
        self.messages.push(assistant);
        for record in &records {
            let content = match (&record.result, &record.error) {
                (_, Some(error)) => json!({ "error": error }).to_string(),
                (Some(value), None) => value.to_string(),
                (None, None) => Value::Null.to_string(),
            };
            let tool = ChatMessage {
                role: "tool".into(),
                content,
                name: Some(record.function.clone()),
                tool_calls: Vec::new(),
                tool_call_id: Some(record.id.clone()),
            };
            self.messages.push(tool);
        }
        let added: usize =
            self.messages.iter().map(|m| m.content.len() + m.tool_calls.iter().map(|c| c.arguments.len()).sum::<usize>()).sum::<usize>()
                - before;
        self.estimate = self.estimate.saturating_add(switchyard_openai::estimate_tokens(added, 0));
        self.rounds_left -= 1;
        self.calls.extend(records);
    }

    fn add_usage(&mut self, usage: Usage) {
        self.usage.prompt_tokens += usage.prompt_tokens;
        self.usage.completion_tokens += usage.completion_tokens;
    }

    fn summed_usage(&self) -> UsageOut {
        UsageOut::new(self.usage.prompt_tokens, self.usage.completion_tokens)
    }

    /// The non-streamed answer: the last round's message, the summed usage, and the hosted
    /// calls made on the way.
    async fn whole(mut self, reply: Generation, mut admission: Admission, mut handle: JobHandle) -> Result<Answer, ApiError> {
        loop {
            let output = collect(&mut handle, admission).await?;
            self.add_usage(output.usage);
            if !self.runs_calls(&output) {
                let mut answer =
                    Reply::Generation(reply).assemble(vec![output]).map_err(|missing| ApiError::Internal(missing.to_string()))?;
                if let Answer::Chat(completion) = &mut answer {
                    completion.usage = self.summed_usage();
                    if let Some(choice) = completion.choices.first_mut() {
                        choice.message.hosted_tool_calls = std::mem::take(&mut self.calls);
                    }
                }
                return Ok(answer);
            }
            let records = futures::future::join_all(output.tool_calls.iter().map(|call| self.call(call))).await;
            self.append(output, records);
            (admission, handle) = self.start_round().await?;
        }
    }

    /// The streamed answer. The status line waits for the first round's first output, so an
    /// error before any is an ordinary HTTP error; the rounds then run in the body's stream.
    async fn stream(
        self,
        reply: Generation,
        include_usage: bool,
        admission: Admission,
        mut handle: JobHandle,
    ) -> Result<Response, ApiError> {
        let first = handle.next_output().await.map_err(ApiError::from);
        let (first, admission) = first_output(Some(first), "messages", admission)?;
        let (tx, rx) = futures::channel::mpsc::unbounded::<String>();
        let writer = Writer { reply, include_usage, tx, role_sent: false };
        let rounds = self.stream_rounds(writer, admission, handle, first);
        // The rounds are polled by the body itself: dropping the body drops them, and their jobs.
        let frames = futures::stream::select(rx.map(Ok), futures::stream::once(rounds).filter_map(|()| async { None }))
            .map(|frame: Result<String, std::convert::Infallible>| frame.map(Bytes::from));
        Ok(([(header::CONTENT_TYPE, "text/event-stream"), (header::CACHE_CONTROL, "no-cache")], Body::from_stream(frames)).into_response())
    }

    async fn stream_rounds(mut self, mut out: Writer, mut admission: Admission, mut handle: JobHandle, first: EventBody) {
        let mut first = Some(first);
        loop {
            let mut output = JobOutput::default();
            let ended = loop {
                let event = match first.take() {
                    Some(event) => event,
                    None => match handle.next_output().await {
                        Ok(event) => event,
                        Err(e) => break Err(ApiError::from(e)),
                    },
                };
                match &event {
                    EventBody::Delta { text, logprobs, .. } => out.content(text, logprobs),
                    // A round's calls wait for its end: only then is it known who runs them.
                    EventBody::ToolCallStart { .. } => out.role(),
                    _ => {}
                }
                match output.push(event, "messages") {
                    Ok(true) => break Ok(()),
                    Ok(false) => {}
                    Err(failure) => break Err(failure.into()),
                }
            };
            if let Err(error) = ended {
                admission.settle(0);
                return out.fail(error);
            }
            admission.settle(output.usage.prompt_tokens + output.usage.completion_tokens);
            self.add_usage(output.usage);
            if !self.runs_calls(&output) {
                let usage = self.summed_usage();
                return out.finish(&output, usage);
            }
            let mut records = Vec::with_capacity(output.tool_calls.len());
            let mut calls: FuturesOrdered<_> = output.tool_calls.iter().map(|call| self.call(call)).collect();
            while let Some(record) = calls.next().await {
                out.hosted(&record);
                records.push(record);
            }
            drop(calls);
            self.append(output, records);
            match self.start_round().await {
                Ok((next_admission, next_handle)) => (admission, handle) = (next_admission, next_handle),
                Err(error) => return out.fail(error),
            }
        }
    }
}

/// One chat job's output; its admission settled with what it used (nothing when it failed).
async fn collect(handle: &mut JobHandle, admission: Admission) -> Result<JobOutput, ApiError> {
    let mut output = JobOutput::default();
    loop {
        let pushed = match handle.next_output().await {
            Ok(event) => output.push(event, "messages").map_err(ApiError::from),
            Err(e) => Err(ApiError::from(e)),
        };
        match pushed {
            Ok(true) => break,
            Ok(false) => {}
            Err(error) => {
                admission.settle(0);
                return Err(error);
            }
        }
    }
    admission.settle(output.usage.prompt_tokens + output.usage.completion_tokens);
    Ok(output)
}

/// Frames the loop's answer as one choice's `chat.completion.chunk`s.
struct Writer {
    reply: Generation,
    include_usage: bool,
    tx: futures::channel::mpsc::UnboundedSender<String>,
    role_sent: bool,
}

impl Writer {
    fn chunk(&self, delta: ChatDelta<'_>, logprobs: Option<ChatLogprobs>, finish_reason: Option<&'static str>) {
        let mut out = String::new();
        let choices = [ChatChunkChoice { index: 0, delta, logprobs, finish_reason }];
        write_event(&mut out, &self.reply.chunk(&choices, self.include_usage.then_some(None)));
        self.send(out);
    }

    fn send(&self, frame: String) {
        // A closed channel is a body already dropped: nobody is left to tell.
        let _ = self.tx.unbounded_send(frame);
    }

    /// The first chunk, with the role, once.
    fn role(&mut self) {
        if !std::mem::replace(&mut self.role_sent, true) {
            self.chunk(ChatDelta { role: Some("assistant"), content: Some(""), refusal: Some(None), ..Default::default() }, None, None);
        }
    }

    fn content(&mut self, text: &str, logprobs: &[TokenLogprob]) {
        self.role();
        let logprobs = self.reply.logprobs.then(|| ChatLogprobs::new(logprobs));
        self.chunk(ChatDelta { content: Some(text), ..Default::default() }, logprobs, None);
    }

    fn hosted(&mut self, record: &HostedToolCallOut) {
        self.role();
        self.chunk(ChatDelta { hosted_tool_call: Some(record), ..Default::default() }, None, None);
    }

    /// The last round's calls (for the client to run), its finish, the usage, `[DONE]`.
    fn finish(mut self, output: &JobOutput, usage: UsageOut) {
        self.role();
        for (index, call) in output.tool_calls.iter().enumerate() {
            let function = FunctionDelta { name: Some(&call.name), arguments: &call.arguments };
            let call = ToolCallDelta { index: index as u32, id: Some(&call.id), kind: Some("function"), function };
            self.chunk(ChatDelta { tool_calls: Some([call]), ..Default::default() }, None, None);
        }
        self.chunk(ChatDelta::default(), None, output.finish_reason.map(FinishReason::as_str));
        if self.include_usage {
            let mut out = String::new();
            write_event(&mut out, &self.reply.chunk::<ChatChunkChoice>(&[], Some(Some(usage))));
            self.send(out);
        }
        self.send("data: [DONE]\n\n".into());
    }

    fn fail(self, error: ApiError) {
        tracing::warn!(error = %error, "stream ended with an error");
        let mut out = String::new();
        write_event(&mut out, &error.body());
        out.push_str("data: [DONE]\n\n");
        self.send(out);
    }
}
