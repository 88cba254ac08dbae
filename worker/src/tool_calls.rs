//! A chat job's tool calls, from the model's text to the job's events: the part every backend
//! that lets a model call tools shares (the torch backend with a model's own call format, the
//! echo backend's debugging tool-call mode).
//!
//! ```text
//! let mut calls = ToolCallStream::new(format, &tools, sink, resume)?;
//! prompt += calls.forced_prefix();           // a named or required `tool_choice`
//! while generating { calls.push(piece, tokens)?; if !calls.wants_more() { break } }
//! let reason = calls.finish(reason)?;        // `tool_calls` when the model called any
//! ```
//!
//! Text outside calls goes out as `Delta`s; a call goes out as `ToolCallStart` (its id and
//! name) and then `ToolCallArguments` pieces, as the model writes them. When a call ends its
//! name is checked against the request's tools and its arguments against the function's JSON
//! Schema: a call that is not one ends the job with `malformed_tool_call`, never as a call the
//! client would run.

use std::collections::HashMap;

use switchyard_schemas::{ErrorCode, FinishReason, ResumeState, ToolChoice, ToolUse};
use switchyard_tool_parser::{Format, ParseError, Parsed, Parser};

use crate::{BackendError, EventSink};

pub use switchyard_tool_parser::Format as ToolFormat;

pub struct ToolCallStream<'a> {
    sink: &'a EventSink,
    parser: Parser,
    choice: ToolChoice,
    parallel: bool,
    /// Argument validators by function name (`None`: the tool declared no parameters schema).
    schemas: HashMap<String, Option<jsonschema::Validator>>,
    forced: Option<String>,
    /// The calls so far: name and arguments text.
    calls: Vec<(String, String)>,
    /// Tokens pushed that no event has carried yet.
    tokens: u32,
    /// What a previous worker already delivered, not to be sent again.
    skip: Skip,
    /// A call ended and the request allows only one.
    closed: bool,
}

/// The delivered part of a redelivered job: the backend regenerates the answer and keeps
/// quiet until it is past what the client has. A regeneration that does not reproduce it (an
/// unseeded sample) is an error, never a spliced answer.
#[derive(Default)]
struct Skip {
    text: Delivered,
    /// Per delivered call: its arguments as delivered.
    calls: Vec<Delivered>,
}

/// Delivered text not yet matched by the regenerated one.
#[derive(Default)]
struct Delivered {
    text: String,
    matched: usize,
}

impl Delivered {
    fn new(text: &str) -> Delivered {
        Delivered { text: text.to_owned(), matched: 0 }
    }

    /// The part of the regenerated `piece` past what was delivered.
    fn rest<'p>(&mut self, piece: &'p str) -> Result<&'p str, BackendError> {
        let left = &self.text[self.matched..];
        let common = left.len().min(piece.len());
        if left.as_bytes()[..common] != piece.as_bytes()[..common] {
            return Err(BackendError::new(
                ErrorCode::BackendError,
                "the redelivered job's answer differs from what its first worker delivered (an unseeded sample cannot be resumed)",
            ));
        }
        self.matched += common;
        Ok(&piece[common..])
    }
}

impl<'a> ToolCallStream<'a> {
    /// A stream whose answer, when `tool_choice` forces a call, begins with the format's
    /// opening of it ([`Format::forced_call`] / [`Format::forced_opening`]).
    pub fn new(format: Format, tools: &ToolUse, sink: &'a EventSink, resume: Option<&ResumeState>) -> Result<Self, BackendError> {
        let forced = match &tools.choice {
            ToolChoice::Function(name) => Some(format.forced_call(name)),
            ToolChoice::Required => Some(format.forced_opening().to_owned()),
            ToolChoice::None | ToolChoice::Auto => None,
        };
        Self::with_prefix(format, tools, sink, resume, forced)
    }

    /// A stream whose answer begins with `forced` (e.g. only the call's tag, when the backend
    /// has the call object itself written under a constraint).
    pub fn with_prefix(
        format: Format,
        tools: &ToolUse,
        sink: &'a EventSink,
        resume: Option<&ResumeState>,
        forced: Option<String>,
    ) -> Result<Self, BackendError> {
        let mut schemas = HashMap::new();
        for tool in &tools.tools {
            let validator =
                match &tool.parameters {
                    Some(schema) => Some(jsonschema::validator_for(schema).map_err(|e| {
                        BackendError::invalid(format!("the parameters schema of tool `{}` does not compile: {e}", tool.name))
                    })?),
                    None => None,
                };
            schemas.insert(tool.name.clone(), validator);
        }
        let skip = resume
            .map(|state| Skip {
                text: Delivered::new(&state.text),
                calls: state.tool_calls.iter().map(|c| Delivered::new(&c.arguments)).collect(),
            })
            .unwrap_or_default();
        let mut stream = ToolCallStream {
            sink,
            parser: Parser::new(format),
            choice: tools.choice.clone(),
            parallel: tools.parallel,
            schemas,
            forced: forced.clone(),
            calls: Vec::new(),
            tokens: 0,
            skip,
            closed: false,
        };
        if let Some(forced) = forced {
            // The forced text is the answer's beginning: the parser reads it as the model's.
            let parsed = stream.parser.push(&forced).map_err(malformed)?;
            stream.emit(parsed)?;
        }
        Ok(stream)
    }

    /// What the answer is made to begin with (append it to the prompt), if `tool_choice`
    /// forces a call: the model then writes only the rest of it.
    pub fn forced_prefix(&self) -> &str {
        self.forced.as_deref().unwrap_or("")
    }

    /// The next piece of the model's text, `tokens` tokens long. An error ends the job.
    pub fn push(&mut self, text: &str, tokens: u32) -> Result<(), BackendError> {
        self.tokens += tokens;
        let parsed = self.parser.push(text).map_err(malformed)?;
        self.emit(parsed)
    }

    /// False once the answer is complete as far as the request goes (one call ended and
    /// `parallel_tool_calls` is false): stop generating.
    pub fn wants_more(&self) -> bool {
        !self.closed
    }

    /// The generation ended for `reason`: flushes held-back text and checks what the request
    /// demanded. Returns the job's finish reason.
    pub fn finish(mut self, reason: FinishReason) -> Result<FinishReason, BackendError> {
        if reason == FinishReason::Cancelled {
            return Ok(reason);
        }
        let parsed = self.parser.finish().map_err(|e| match (e, reason) {
            (ParseError::Unterminated { index }, FinishReason::Length) => BackendError::new(
                ErrorCode::MalformedToolCall,
                format!("the model's tool call {index} was cut off by max_tokens before it was complete"),
            ),
            (e, _) => malformed(e),
        })?;
        self.emit(parsed)?;
        if self.calls.is_empty() {
            if matches!(self.choice, ToolChoice::Required | ToolChoice::Function(_)) {
                return Err(BackendError::new(ErrorCode::MalformedToolCall, "tool_choice requires a tool call, and the model made none"));
            }
            return Ok(reason);
        }
        Ok(FinishReason::ToolCalls)
    }

    fn emit(&mut self, parsed: Vec<Parsed>) -> Result<(), BackendError> {
        for event in parsed {
            match event {
                Parsed::Text(text) => {
                    if self.closed {
                        continue;
                    }
                    let text = self.skip.text.rest(&text)?;
                    if !text.is_empty() || self.tokens > 0 {
                        self.sink.delta(text, std::mem::take(&mut self.tokens));
                    }
                }
                Parsed::CallStart { index, name } => {
                    if self.closed {
                        continue;
                    }
                    if !self.schemas.contains_key(&name) {
                        return Err(BackendError::new(
                            ErrorCode::MalformedToolCall,
                            format!("the model called `{name}`, which is not one of the request's tools"),
                        ));
                    }
                    if let ToolChoice::Function(forced) = &self.choice
                        && *forced != name
                    {
                        return Err(BackendError::new(
                            ErrorCode::MalformedToolCall,
                            format!("tool_choice names `{forced}`, and the model called `{name}`"),
                        ));
                    }
                    if (index as usize) >= self.skip.calls.len() {
                        let id = format!("call_{}", ulid::Ulid::new().to_string().to_lowercase());
                        self.sink.tool_call_start(index, id, name.clone());
                    }
                    self.calls.push((name, String::new()));
                }
                Parsed::Arguments { index, delta } => {
                    if self.closed {
                        continue;
                    }
                    let Some((_, arguments)) = self.calls.get_mut(index as usize) else { continue };
                    arguments.push_str(&delta);
                    let delta = match self.skip.calls.get_mut(index as usize) {
                        Some(delivered) => delivered.rest(&delta)?,
                        None => &delta,
                    };
                    if !delta.is_empty() {
                        self.sink.tool_call_arguments(index, delta, std::mem::take(&mut self.tokens));
                    }
                }
                Parsed::CallEnd { index } => {
                    if self.closed {
                        continue;
                    }
                    let (name, arguments) = &self.calls[index as usize];
                    self.check(name, arguments)?;
                    if !self.parallel {
                        self.closed = true;
                    }
                }
            }
        }
        Ok(())
    }

    fn check(&self, name: &str, arguments: &str) -> Result<(), BackendError> {
        let value: serde_json::Value = serde_json::from_str(arguments).map_err(|e| {
            BackendError::new(ErrorCode::MalformedToolCall, format!("the arguments of the model's call of `{name}` are not JSON: {e}"))
        })?;
        if let Some(Some(validator)) = self.schemas.get(name)
            && let Some(error) = validator.iter_errors(&value).next()
        {
            let at = error.instance_path().to_string();
            let at = if at.is_empty() { String::new() } else { format!(" at `{at}`") };
            return Err(BackendError::new(
                ErrorCode::MalformedToolCall,
                format!("the model's call of `{name}` does not match its parameters schema{at}: {error}"),
            ));
        }
        Ok(())
    }
}

fn malformed(error: ParseError) -> BackendError {
    BackendError::new(ErrorCode::MalformedToolCall, format!("the model wrote a tool call that is not valid: {error}"))
}
